//! The JOSE the client needs: signing `private_key_jwt` assertions (RS384, ES384) and verifying the
//! server's RS256 `id_token` against its JWKS.

use crate::clock::Clock;
use crate::error::{Error, Result};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaPublicKeyComponents};
use base64::Engine;
use serde_json::{Value, json};

pub(crate) fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// Random bytes as base64url (`n` bytes of entropy).
pub fn random(n: usize) -> String {
    let mut buf = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut buf).expect("system randomness");
    b64url(&buf)
}

/// `BASE64URL(SHA256(verifier))`, the PKCE S256 challenge.
pub fn pkce_challenge(verifier: &str) -> String {
    b64url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref())
}

enum Key {
    Rsa(aws_lc_rs::rsa::KeyPair),
    Ec(EcdsaKeyPair),
}

/// The client's private key for `private_key_jwt` (RS384 or ES384), with the `kid` it is registered under.
pub struct SigningKey {
    kid: String,
    key: Key,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({} {}, private parts hidden)", self.alg(), self.kid)
    }
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body.trim()).map_err(|_| Error::Config("the private key is not PEM".into()))
}

impl SigningKey {
    /// An RSA private key (PKCS#8, PEM or DER) for RS384.
    pub fn rs384(kid: &str, pkcs8: &[u8]) -> Result<SigningKey> {
        let der = if pkcs8.starts_with(b"-----") { pem_to_der(&String::from_utf8_lossy(pkcs8))? } else { pkcs8.to_vec() };
        let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(&der).map_err(|_| Error::Config("not an RSA PKCS#8 private key".into()))?;
        Ok(SigningKey { kid: kid.into(), key: Key::Rsa(pair) })
    }

    /// A P-384 private key (PKCS#8, PEM or DER) for ES384.
    pub fn es384(kid: &str, pkcs8: &[u8]) -> Result<SigningKey> {
        let der = if pkcs8.starts_with(b"-----") { pem_to_der(&String::from_utf8_lossy(pkcs8))? } else { pkcs8.to_vec() };
        let pair =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &der).map_err(|_| Error::Config("not a P-384 PKCS#8 private key".into()))?;
        Ok(SigningKey { kid: kid.into(), key: Key::Ec(pair) })
    }

    /// A new random P-384 key (for development and tests; register [`SigningKey::public_jwk`]).
    pub fn generate_es384(kid: &str) -> SigningKey {
        let pair = EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING).expect("key generation");
        SigningKey { kid: kid.into(), key: Key::Ec(pair) }
    }

    /// A new random RSA-2048 key for RS384.
    pub fn generate_rs384(kid: &str) -> SigningKey {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("key generation");
        SigningKey { kid: kid.into(), key: Key::Rsa(pair) }
    }

    /// `RS384` or `ES384`.
    pub fn alg(&self) -> &'static str {
        match self.key {
            Key::Rsa(_) => "RS384",
            Key::Ec(_) => "ES384",
        }
    }

    /// The public key as a JWK, for the app's registration (JWKS or JWKS URL).
    pub fn public_jwk(&self) -> Value {
        match &self.key {
            Key::Rsa(pair) => {
                let public = pair.public_key();
                json!({"kty": "RSA", "kid": self.kid, "alg": "RS384", "use": "sig",
                    "n": b64url(public.modulus().big_endian_without_leading_zero()), "e": b64url(public.exponent().big_endian_without_leading_zero())})
            }
            Key::Ec(pair) => {
                let point = pair.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-384", "kid": self.kid, "alg": "ES384", "use": "sig", "x": b64url(&point[1..49]), "y": b64url(&point[49..97])})
            }
        }
    }

    /// Signs `claims` as a compact JWS.
    pub fn sign(&self, claims: &Value) -> Result<String> {
        let header = json!({"alg": self.alg(), "kid": self.kid, "typ": "JWT"});
        let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
        let rng = SystemRandom::new();
        let sig = match &self.key {
            Key::Rsa(pair) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA384, &rng, input.as_bytes(), &mut sig).map_err(|_| Error::Config("RSA signing failed".into()))?;
                sig
            }
            Key::Ec(pair) => pair.sign(&rng, input.as_bytes()).map_err(|_| Error::Config("EC signing failed".into()))?.as_ref().to_vec(),
        };
        Ok(format!("{input}.{}", b64url(&sig)))
    }

    /// A `private_key_jwt` client assertion for `token_url`, valid four minutes from now (the system's
    /// clock), with a fresh `jti`.
    pub fn client_assertion(&self, client_id: &str, token_url: &str) -> Result<String> {
        self.client_assertion_at(client_id, token_url, crate::clock::SystemClock.now_secs())
    }

    /// [`SigningKey::client_assertion`] issued at `now` (Unix seconds).
    pub fn client_assertion_at(&self, client_id: &str, token_url: &str, now: i64) -> Result<String> {
        self.sign(&json!({"iss": client_id, "sub": client_id, "aud": token_url, "exp": now + 240, "iat": now, "jti": random(24)}))
    }
}

/// Checks an RS256 `id_token`: the signature with the key its `kid` names in `jwks`, then `iss`, `aud`,
/// `exp` (60 s skew) and `nonce`. Returns the claims.
pub fn verify_id_token(jwt: &str, jwks: &Value, issuer: &str, client_id: &str, nonce: Option<&str>, now: i64) -> Result<Value> {
    let bad = |m: &str| Error::IdToken(m.to_string());
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return Err(bad("not a compact JWS"));
    }
    let header: Value = b64url_decode(parts[0]).and_then(|b| serde_json::from_slice(&b).ok()).ok_or_else(|| bad("unreadable header"))?;
    let claims: Value = b64url_decode(parts[1]).and_then(|b| serde_json::from_slice(&b).ok()).ok_or_else(|| bad("unreadable claims"))?;
    if header["alg"] != "RS256" {
        return Err(bad("alg must be RS256"));
    }
    let key = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kty"] == "RSA" && (header.get("kid").is_none() || k["kid"] == header["kid"])))
        .ok_or_else(|| bad("no matching key in the issuer's JWKS"))?;
    let n = key["n"].as_str().and_then(b64url_decode).ok_or_else(|| bad("bad key"))?;
    let e = key["e"].as_str().and_then(b64url_decode).ok_or_else(|| bad("bad key"))?;
    let sig = b64url_decode(parts[2]).ok_or_else(|| bad("bad signature encoding"))?;
    RsaPublicKeyComponents { n: &n, e: &e }
        .verify(&signature::RSA_PKCS1_2048_8192_SHA256, format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .map_err(|_| bad("the signature does not verify"))?;
    if claims["iss"].as_str().map(|i| i.trim_end_matches('/')) != Some(issuer.trim_end_matches('/')) {
        return Err(bad("iss is not the issuer"));
    }
    let aud_ok = match &claims["aud"] {
        Value::String(a) => a == client_id,
        Value::Array(a) => a.iter().any(|x| x == client_id),
        _ => false,
    };
    if !aud_ok {
        return Err(bad("aud is not this client"));
    }
    if claims["exp"].as_i64().is_none_or(|exp| exp + 60 < now) {
        return Err(bad("expired"));
    }
    if let Some(n) = nonce
        && claims["nonce"].as_str() != Some(n)
    {
        return Err(bad("nonce does not match"));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_rfc_7636_appendix_b() {
        assert_eq!(pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn assertions_carry_the_registered_claims() {
        for key in [SigningKey::generate_es384("k1"), SigningKey::generate_rs384("k2")] {
            let jwt = key.client_assertion("app", "https://ehr.example/token").unwrap();
            let claims: Value = serde_json::from_slice(&b64url_decode(jwt.split('.').nth(1).unwrap()).unwrap()).unwrap();
            assert_eq!(claims["iss"], "app");
            assert_eq!(claims["sub"], "app");
            assert_eq!(claims["aud"], "https://ehr.example/token");
            assert!(claims["exp"].as_i64().unwrap() - crate::clock::SystemClock.now_secs() <= 300);
            let again = key.client_assertion("app", "https://ehr.example/token").unwrap();
            let claims2: Value = serde_json::from_slice(&b64url_decode(again.split('.').nth(1).unwrap()).unwrap()).unwrap();
            assert_ne!(claims["jti"], claims2["jti"], "fresh jti each time");
            assert!(!format!("{key:?}").contains("BEGIN"));
        }
    }
}
