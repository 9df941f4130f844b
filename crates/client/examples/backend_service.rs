//! A backend service (no user): `client_credentials` with a `private_key_jwt` assertion, then FHIR reads.
//!
//! Against `kindling up`: `cargo run -p client --example backend_service -- --print-jwk` prints a new key's
//! public JWK and its PKCS#8 file; register the JWK as a confidential-asymmetric app allowed `system/*.rs`
//! (`kindling apps add --type confidential-asymmetric --jwks-file ...`), then run with
//! `ISS=http://127.0.0.1:8080/fhir CLIENT_ID=... KEY=key.p8 cargo run -p client --example backend_service`.

use client::{BackendClient, SigningKey};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().any(|a| a == "--print-jwk") {
        let key = SigningKey::generate_es384("backend-1");
        println!("{}", serde_json::json!({"keys": [key.public_jwk()]}));
        eprintln!("(this throwaway key cannot be saved; use your own PKCS#8 key in KEY for real use)");
        return Ok(());
    }
    let env = |k: &str| std::env::var(k).map_err(|_| format!("set {k}"));
    let pem = std::fs::read(env("KEY")?)?;
    let key = SigningKey::es384(&std::env::var("KID").unwrap_or_else(|_| "backend-1".into()), &pem).or_else(|_| SigningKey::rs384("backend-1", &pem))?;
    let backend = BackendClient::new(&env("ISS")?, &env("CLIENT_ID")?, Arc::new(key), "system/Patient.rs system/Observation.rs")?;
    let fhir = backend.fhir();
    match fhir.search("Patient", &[("_summary", "count")]).await {
        Ok(b) => println!("{} patients", b.total.unwrap_or(0)),
        Err(e) => {
            eprintln!("{e}");
            eprintln!("{}", e.user_message());
        }
    }
    Ok(())
}
