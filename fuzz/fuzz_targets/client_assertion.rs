//! `private_key_jwt` client assertions (what `/auth/token` takes from backend services and confidential
//! apps): verification never panics, and nothing but a correctly signed, correctly addressed, unexpired
//! assertion of the client is accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use std::sync::OnceLock;

const TOKEN_URL: &str = "https://ehr.example/auth/token";
const NOW: i64 = 1_796_500_010;

fn client() -> &'static (auth::model::Client, Value) {
    static CLIENT: OnceLock<(auth::model::Client, Value)> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let jwks: Value = serde_json::from_str(include_str!("jwks.json")).unwrap();
        let client = serde_json::from_value(json!({
            "client_id": "fuzz-app", "name": "Fuzz", "kind": "confidential-asymmetric", "redirect_uris": [],
            "allowed_scope": "system/*.rs", "jwks": jwks
        }))
        .expect("client");
        (client, jwks)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(jwt) = std::str::from_utf8(data) else { return };
    if let Ok(u) = auth::jose::Unverified::read(jwt) {
        let _ = u.issuer();
    }
    let (client, jwks) = client();
    if let Ok(a) = auth::jose::verify(jwt, client, jwks, TOKEN_URL, NOW) {
        // Accepted: it must be one of the seed assertions signed with the fuzz keys (the fuzzer cannot
        // forge a signature), so its claims are the client's.
        assert_eq!(a.client_id, "fuzz-app");
        assert!(a.exp > NOW);
    }
});
