//! A population-level backend service: a Bulk Data export of every patient's record, streamed resource by
//! resource and counted by type.
//!
//! Against `kindling up`: make a key and register it as in `backend_service.rs` (a confidential-asymmetric
//! app allowed `system/*.rs`), then run
//! `ISS=http://127.0.0.1:8080/fhir CLIENT_ID=... KEY=key.p8 cargo run -p client --example bulk_export`
//! (add `GROUP=kp-1-diabetes` to export one Group's members only).

use client::{BackendClient, ExportLevel, ExportRequest, SigningKey};
use std::collections::BTreeMap;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |k: &str| std::env::var(k).map_err(|_| format!("set {k}"));
    let pem = std::fs::read(env("KEY")?)?;
    let key = SigningKey::es384(&std::env::var("KID").unwrap_or_else(|_| "backend-1".into()), &pem).or_else(|_| SigningKey::rs384("backend-1", &pem))?;
    let backend = BackendClient::new(&env("ISS")?, &env("CLIENT_ID")?, Arc::new(key), "system/*.rs")?;
    let level = match std::env::var("GROUP") {
        Ok(id) => ExportLevel::Group(id),
        Err(_) => ExportLevel::Patients,
    };
    let export = match backend.export(&ExportRequest { level, ..Default::default() }).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{e}\n{}", e.user_message());
            return Ok(());
        }
    };
    println!("export as of {}", export.manifest.transaction_time);
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    for file in &export.manifest.output {
        let n = export.resources(file, |_resource| Ok(())).await?;
        *by_type.entry(file.resource_type.clone()).or_default() += n;
    }
    for (ty, n) in &by_type {
        println!("{ty:<24} {n}");
    }
    for file in &export.manifest.error {
        export
            .resources(file, |outcome| {
                eprintln!("not exported: {}", outcome["issue"][0]["diagnostics"].as_str().unwrap_or_default());
                Ok(())
            })
            .await?;
    }
    export.cancel().await?;
    Ok(())
}
