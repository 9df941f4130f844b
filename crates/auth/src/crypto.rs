//! Randomness, hashing and password handling (aws-lc-rs and argon2).

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Base64url without padding.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding.
pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

/// 256 random bits, base64url: tokens, codes, launch handles, session ids.
pub fn random_token() -> String {
    let mut buf = [0u8; 32];
    // The system RNG failing is not recoverable; aws-lc aborts itself in that case.
    let _ = SystemRandom::new().fill(&mut buf);
    b64url(&buf)
}

/// How secrets are stored and looked up: SHA-256, hex. Tokens are 256-bit random values, so a fast hash is
/// enough (no dictionary to attack); passwords use argon2 instead.
pub fn token_hash(token: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in digest(&SHA256, token.as_bytes()).as_ref() {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

/// Hex digits of the issue time at the front of an [`ordered_token`].
const ORDER_PREFIX: usize = 12;

/// A code, access or refresh token whose store key sorts by issue time: 12 lower-case hex digits of the
/// issue millisecond, then 256 random bits (55 characters). The time is no secret (`expires_in` says as
/// much); the random part is what makes the token unguessable.
pub fn ordered_token(now_ms: i64) -> String {
    format!("{:012x}{}", now_ms.clamp(0, 0xffff_ffff_ffff), random_token())
}

/// The store key of a token: [`token_hash`], after the issue time of an [`ordered_token`].
///
/// Keys of tokens issued together are neighbours in the index, so the records of a burst of tokens fill
/// one B-tree page after another instead of touching one random page each: on SQLite every touched page
/// is written to the log again at each commit (8 KiB), and that write was the largest cost of issuing a
/// token. A token without the prefix (issued before) keys by its hash alone, as it always did.
pub fn token_key(token: &str) -> String {
    let ordered = token.len() == ORDER_PREFIX + 43 && token.as_bytes()[..ORDER_PREFIX].iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ordered { format!("{}{}", &token[..ORDER_PREFIX], token_hash(token)) } else { token_hash(token) }
}

/// `BASE64URL(SHA256(verifier))`, the PKCE S256 transform (RFC 7636 §4.2).
pub fn pkce_s256(verifier: &str) -> String {
    b64url(digest(&SHA256, verifier.as_bytes()).as_ref())
}

/// RFC 7636 §4.1: 43–128 characters of `[A-Za-z0-9-._~]`.
pub fn valid_pkce_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Whether two byte strings are equal, in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// An argon2id hash of a password (a person's choice), with a random salt.
pub fn hash_password(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    let _ = SystemRandom::new().fill(&mut salt);
    let salt = SaltString::encode_b64(&salt).unwrap_or_else(|_| SaltString::from_b64("a2luZGxpbmdzYWx0").expect("static salt"));
    argon2::Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).unwrap_or_default()
}

/// The stored form of a client secret the server generated ([`random_token`], 256 random bits): its
/// SHA-256. A slow password hash protects what a person chose; a secret of 256 random bits cannot be
/// guessed from its digest, and an argon2 verification on every token request cost ~19 MiB and
/// milliseconds of CPU each (and kept the memory of a process that started the reference app).
pub fn hash_generated_secret(secret: &str) -> String {
    format!("sha256${}", b64url(digest(&SHA256, secret.as_bytes()).as_ref()))
}

/// Whether `secret` matches a client's stored secret hash: a generated secret's SHA-256
/// ([`hash_generated_secret`], compared in constant time), or an argon2 hash (secrets supplied by an
/// apps file, and every secret stored before).
pub fn verify_client_secret(secret: &str, hash: &str) -> bool {
    match hash.strip_prefix("sha256$") {
        Some(expected) => constant_time_eq(b64url(digest(&SHA256, secret.as_bytes()).as_ref()).as_bytes(), expected.as_bytes()),
        None => verify_password(secret, hash),
    }
}

/// Whether `password` matches its argon2 hash.
pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_rfc7636_appendix_b() {
        assert_eq!(pkce_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        assert!(valid_pkce_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"));
        assert!(!valid_pkce_verifier("short"));
        assert!(!valid_pkce_verifier(&"a b".repeat(20)));
    }

    #[test]
    fn passwords_and_tokens() {
        let h = hash_password("correct horse");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert_ne!(random_token(), random_token());
        assert_eq!(random_token().len(), 43);
        assert_eq!(token_hash("x"), "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881");
    }

    #[test]
    fn client_secrets_generated_here_are_checked_by_digest_and_older_argon2_ones_still_verify() {
        let secret = random_token();
        let h = hash_generated_secret(&secret);
        assert!(h.starts_with("sha256$") && !h.contains(&secret));
        assert!(verify_client_secret(&secret, &h));
        assert!(!verify_client_secret(&random_token(), &h));
        assert!(!verify_client_secret("", &h));
        // Stored before (and secrets from an apps file): argon2.
        let old = hash_password("from-an-apps-file");
        assert!(verify_client_secret("from-an-apps-file", &old));
        assert!(!verify_client_secret("wrong", &old));
        // A digest is never taken for an argon2 hash or the other way round.
        assert!(!verify_client_secret(&secret, "sha256$"));
        assert!(!verify_client_secret(&h, &h));
    }

    #[test]
    fn ordered_tokens_key_by_issue_time_then_hash() {
        let (a, b) = (ordered_token(1_700_000_000_000), ordered_token(1_700_000_000_001));
        assert_eq!(a.len(), 55);
        assert!(a.starts_with("018bcfe56800"), "{a}");
        assert_ne!(a[12..], b[12..], "the secret part is random");
        let (ka, kb) = (token_key(&a), token_key(&b));
        assert!(ka < kb, "later tokens sort after earlier ones");
        assert_eq!(ka, format!("018bcfe56800{}", token_hash(&a)));
        assert!(!ka.contains(&a[12..]), "the key holds no secret");
        // Tokens without the prefix (older ones, other shapes) key by their hash alone.
        let plain = random_token();
        assert_eq!(token_key(&plain), token_hash(&plain));
        assert_eq!(token_key(&format!("018BCFE56800{}", &a[12..])), token_hash(&format!("018BCFE56800{}", &a[12..])));
        assert_eq!(token_key(""), token_hash(""));
    }
}
