//! The server's signing keys: RSA-2048, generated on first start and persisted in the auth store, used for
//! RS256 id_tokens and RS384 CDS Hooks requests, and published as a JWKS (each key twice: `kid` for RS256,
//! `{kid}-rs384` for RS384, so that a verifier that holds a key to one algorithm finds its own). Every stored
//! key stays in the JWKS, so tokens signed before a rotation still verify.

use crate::crypto::{b64url, b64url_decode};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256, RSA_PKCS1_SHA384};
use serde_json::{Value, json};
use store::AuthStore;

const KIND: &str = "signing_key";

/// The server's signing key (RS256 id_tokens).
pub struct SigningKey {
    /// Its key id (`kid`).
    pub kid: String,
    pair: KeyPair,
}

/// The current signing key and the public JWKS of every key kept.
pub struct Keys {
    current: SigningKey,
    /// Public JWKs of every key, current first.
    jwks: Value,
}

/// Why the keys could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Key generation or parsing failed.
    #[error("key generation or parsing failed")]
    Crypto,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// The `kid` under which a key is published for RS384.
fn rs384_kid(kid: &str) -> String {
    format!("{kid}-rs384")
}

fn public_jwk(key: &SigningKey, alg: &str, kid: &str) -> Value {
    let public = key.pair.public_key();
    json!({
        "kty": "RSA",
        "use": "sig",
        "alg": alg,
        "kid": kid,
        "n": b64url(public.modulus().big_endian_without_leading_zero()),
        "e": b64url(public.exponent().big_endian_without_leading_zero()),
    })
}

/// Generates a new signing key and stores it; servers use it as their current key from their next start,
/// while every older key stays in the JWKS.
pub async fn rotate(store: &dyn AuthStore, now_ms: i64) -> Result<String, KeyError> {
    let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Crypto)?;
    let der = pair.as_der().map_err(|_| KeyError::Crypto)?;
    let kid = crate::crypto::random_token()[..16].to_string();
    let value = json!({"pkcs8": b64url(der.as_ref()), "created": now_ms}).to_string();
    store.auth_put(KIND, &kid, &value, None, None).await?;
    tracing::info!(kid, "rotated: new RS256 signing key");
    Ok(kid)
}

/// Removes keys older than the newest one by more than `keep_ms` (longer than any token they signed
/// lives); returns the removed kids.
pub async fn prune(store: &dyn AuthStore, keep_ms: i64) -> Result<Vec<String>, KeyError> {
    let mut keys: Vec<(i64, String)> = Vec::new();
    for (kid, record) in store.auth_list(KIND).await? {
        let v: Value = serde_json::from_str(&record.value).map_err(|_| KeyError::Crypto)?;
        keys.push((v["created"].as_i64().unwrap_or(0), kid));
    }
    let Some(newest) = keys.iter().map(|(c, _)| *c).max() else { return Ok(Vec::new()) };
    let mut removed = Vec::new();
    for (created, kid) in keys {
        if created < newest - keep_ms {
            store.auth_delete(KIND, &kid).await?;
            removed.push(kid);
        }
    }
    Ok(removed)
}

impl Keys {
    /// Loads the stored keys, generating and storing one when there is none.
    pub async fn load_or_create(store: &dyn AuthStore, now_ms: i64) -> Result<Keys, KeyError> {
        let mut stored: Vec<(i64, SigningKey)> = Vec::new();
        for (kid, record) in store.auth_list(KIND).await? {
            let v: Value = serde_json::from_str(&record.value).map_err(|_| KeyError::Crypto)?;
            let der = v["pkcs8"].as_str().and_then(b64url_decode).ok_or(KeyError::Crypto)?;
            let pair = KeyPair::from_pkcs8(&der).map_err(|_| KeyError::Crypto)?;
            stored.push((v["created"].as_i64().unwrap_or(0), SigningKey { kid, pair }));
        }
        if stored.is_empty() {
            let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Crypto)?;
            let der = pair.as_der().map_err(|_| KeyError::Crypto)?;
            let kid = crate::crypto::random_token()[..16].to_string();
            let value = json!({"pkcs8": b64url(der.as_ref()), "created": now_ms}).to_string();
            store.auth_put(KIND, &kid, &value, None, None).await?;
            tracing::info!(kid, "generated a new RS256 signing key");
            stored.push((now_ms, SigningKey { kid, pair }));
        }
        stored.sort_by_key(|(created, _)| std::cmp::Reverse(*created));
        let jwks =
            json!({"keys": stored.iter().flat_map(|(_, k)| [public_jwk(k, "RS256", &k.kid), public_jwk(k, "RS384", &rs384_kid(&k.kid))]).collect::<Vec<_>>()});
        let current = stored.into_iter().next().map(|(_, k)| k).ok_or(KeyError::Crypto)?;
        Ok(Keys { current, jwks })
    }

    /// The public JWK Set (`/auth/jwks`).
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// The current key's id.
    pub fn kid(&self) -> &str {
        &self.current.kid
    }

    /// A compact RS256 JWS of `claims`.
    pub fn sign_jwt(&self, claims: &Value) -> Result<String, KeyError> {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": self.current.kid});
        self.sign(&header, claims, &RSA_PKCS1_SHA256)
    }

    /// A compact RS384 JWS of `claims` (CDS Hooks asks for RS384 or ES384), naming `jku`, the JWKS URL.
    pub fn sign_jwt_rs384(&self, claims: &Value, jku: &str) -> Result<String, KeyError> {
        let header = json!({"alg": "RS384", "typ": "JWT", "kid": rs384_kid(&self.current.kid), "jku": jku});
        self.sign(&header, claims, &RSA_PKCS1_SHA384)
    }

    fn sign(&self, header: &Value, claims: &Value, alg: &'static dyn aws_lc_rs::signature::RsaEncoding) -> Result<String, KeyError> {
        let signing_input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
        let mut sig = vec![0u8; self.current.pair.public_modulus_len()];
        self.current.pair.sign(alg, &SystemRandom::new(), signing_input.as_bytes(), &mut sig).map_err(|_| KeyError::Crypto)?;
        Ok(format!("{signing_input}.{}", b64url(&sig)))
    }
}
