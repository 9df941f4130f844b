//! Verification of `private_key_jwt` client assertions (RFC 7523, SMART Backend Services and
//! client-confidential-asymmetric): RS384 and ES384 only, the key chosen by `kid` from the client's
//! registered JWKS with a `kty` that fits the algorithm, and every claim checked.

use crate::crypto::b64url_decode;
use crate::model::Client;
use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

/// Seconds of clock skew tolerated on `exp`.
pub(crate) const SKEW: i64 = 60;
/// Assertions may live at most this long (SMART: `exp` no more than five minutes ahead).
const MAX_LIFETIME: i64 = 300;

/// A verified client assertion (RFC 7523): who signed it, and what makes it single-use.
#[derive(Debug)]
pub struct Assertion {
    /// The client (`iss` = `sub`).
    pub client_id: String,
    /// Its `jti`, recorded until it expires.
    pub jti: String,
    /// Its expiry (Unix seconds).
    pub exp: i64,
}

fn part(s: &str) -> Result<Value, String> {
    let bytes = b64url_decode(s).ok_or("the assertion is not base64url")?;
    serde_json::from_slice(&bytes).map_err(|_| "the assertion is not JSON".to_string())
}

/// The `iss` of an assertion whose claims can be read, whatever the rest: which client it names (for the
/// audit trail of an assertion that cannot be read as a whole).
pub fn claimed_issuer(jwt: &str) -> Option<String> {
    let claims = jwt.split('.').nth(1)?;
    part(claims).ok()?.get("iss")?.as_str().map(str::to_string)
}

/// An assertion read but not verified yet: its header and claims are parsed once, for the claimed issuer
/// (which client's keys to verify with) and for [`Unverified::verify`].
pub struct Unverified<'a> {
    /// What the signature covers (`header.claims`, as sent).
    signed: &'a str,
    signature: &'a str,
    header: Value,
    claims: Value,
}

impl<'a> Unverified<'a> {
    /// Reads a compact JWS.
    pub fn read(jwt: &'a str) -> Result<Unverified<'a>, String> {
        let mut split = jwt.split('.');
        let (Some(h), Some(c), Some(sig), None) = (split.next(), split.next(), split.next(), split.next()) else {
            return Err("the assertion is not a compact JWS".into());
        };
        Ok(Unverified { signed: &jwt[..h.len() + 1 + c.len()], signature: sig, header: part(h)?, claims: part(c)? })
    }

    /// The `iss` it claims, unverified: which client claims to speak.
    pub fn issuer(&self) -> Option<&str> {
        self.claims["iss"].as_str()
    }
}

/// Parsed public keys by algorithm and JWK value: parsing (the modulus of an RSA key, the point of an EC
/// key, with its validation) cost about as much as verifying a signature, and a backend client signs
/// every assertion with the same key. Keyed by the key material itself, so an entry can never stand for
/// another key; cleared when full.
static PARSED: LazyLock<Mutex<HashMap<String, Arc<ParsedPublicKey>>>> = LazyLock::new(Default::default);
const PARSED_MAX: usize = 1024;

/// How many keys of a JWK Set can verify client assertions here: RSA keys (RS384, 2048 bits or more) and
/// EC P-384 keys (ES384) whose public parts parse. Checked at registration, so that a wrong JWKS is told at
/// once rather than at the first token request.
pub fn usable_keys(jwks: &Value) -> usize {
    jwks["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter(|k| match (k["kty"].as_str(), k["alg"].as_str()) {
                    (Some("RSA"), None | Some("RS384")) => parsed_key("RS384", k).is_ok(),
                    (Some("EC"), None | Some("ES384")) => k["crv"] == "P-384" && parsed_key("ES384", k).is_ok(),
                    _ => false,
                })
                .count()
        })
        .unwrap_or(0)
}

fn parsed_key(alg: &str, key: &Value) -> Result<Arc<ParsedPublicKey>, String> {
    let text = |name: &str| key[name].as_str().ok_or_else(|| format!("the registered key has no valid '{name}'"));
    let id = match alg {
        "RS384" => format!("RS384|{}|{}", text("n")?, text("e")?),
        _ => format!("ES384|{}|{}", text("x")?, text("y")?),
    };
    if let Some(k) = PARSED.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
        return Ok(k.clone());
    }
    let field = |name: &str| text(name).and_then(|t| b64url_decode(t).ok_or_else(|| format!("the registered key has no valid '{name}'")));
    let parsed = match alg {
        "RS384" => {
            let (n, e) = (field("n")?, field("e")?);
            RsaPublicKeyComponents { n: &n, e: &e }.to_parsed_public_key(&signature::RSA_PKCS1_2048_8192_SHA384)
        }
        _ => {
            let (x, y) = (field("x")?, field("y")?);
            let mut point = Vec::with_capacity(97);
            point.push(4u8);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            ParsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, &point)
        }
    };
    let parsed = Arc::new(parsed.map_err(|_| "the registered key is not a valid public key".to_string())?);
    let mut cache = PARSED.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= PARSED_MAX {
        cache.clear();
    }
    cache.insert(id, parsed.clone());
    Ok(parsed)
}

/// Verifies `jwt` as an assertion of `client` for the token endpoint `token_url` at `now` (Unix seconds),
/// with the client's keys `jwks` (registered by value, or fetched from its registered JWKS URL).
pub fn verify(jwt: &str, client: &Client, jwks: &Value, token_url: &str, now: i64) -> Result<Assertion, String> {
    Unverified::read(jwt)?.verify(client, jwks, token_url, now)
}

impl Unverified<'_> {
    /// [`verify`] of what was read.
    pub fn verify(&self, client: &Client, jwks: &Value, token_url: &str, now: i64) -> Result<Assertion, String> {
        let (header, claims) = (&self.header, &self.claims);
        let alg = header["alg"].as_str().unwrap_or("");
        let kty = match alg {
            "RS384" => "RSA",
            "ES384" => "EC",
            _ => return Err(format!("alg '{alg}' is not accepted; use RS384 or ES384")),
        };
        // RFC 7515 §4.1.11: a `crit` header names extensions the verifier must understand; this one
        // understands none, so any `crit` (even an empty or malformed one) is refused.
        if header.get("crit").is_some() {
            return Err("the assertion's crit header names extensions this server does not support".into());
        }
        let kid = header["kid"].as_str().ok_or("the assertion header has no kid")?;
        if let Some(jku) = header.get("jku")
            && jku.as_str() != client.jwks_url.as_deref()
        {
            return Err("the jku header is not the client's registered JWKS URL".into());
        }
        let candidates: Vec<&Value> = jwks["keys"].as_array().map(|k| k.iter().filter(|k| k["kid"] == kid && k["kty"] == kty).collect()).unwrap_or_default();
        let key = match candidates.as_slice() {
            [k] => *k,
            [] => return Err(format!("no {kty} key with kid '{kid}' is registered")),
            _ => return Err(format!("several keys have kid '{kid}'")),
        };
        let sig = b64url_decode(self.signature).ok_or("the signature is not base64url")?;
        if alg == "ES384" && key["crv"] != "P-384" {
            return Err("ES384 needs a P-384 key".into());
        }
        let public = parsed_key(alg, key)?;
        if public.verify_sig(self.signed.as_bytes(), &sig).is_err() {
            return Err("the assertion's signature does not verify".into());
        }
        let iss = claims["iss"].as_str().unwrap_or("");
        if iss != client.client_id || claims["sub"].as_str() != Some(iss) {
            return Err("iss and sub must both be the client id".into());
        }
        let aud_ok = match &claims["aud"] {
            Value::String(a) => a == token_url,
            Value::Array(a) => a.iter().any(|x| x.as_str() == Some(token_url)),
            _ => false,
        };
        if !aud_ok {
            return Err("aud must be the token endpoint URL".into());
        }
        let exp = claims["exp"].as_i64().ok_or("exp is missing")?;
        if exp + SKEW < now {
            return Err("the assertion has expired".into());
        }
        if exp > now + MAX_LIFETIME + SKEW {
            return Err("exp may be at most five minutes ahead".into());
        }
        // RFC 7519 §4.1.5: not before `nbf` (with the same small skew as `exp`).
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_i64().ok_or("nbf must be a number of seconds")?;
            if nbf > now + SKEW {
                return Err("the assertion is not valid yet (nbf is in the future)".into());
            }
        }
        let jti = claims["jti"].as_str().filter(|j| !j.is_empty()).ok_or("jti is missing")?;
        Ok(Assertion { client_id: iss.to_string(), jti: jti.to_string(), exp })
    }
}
