//! Search parameters and values as a client sends them (a query string, for a type picked by the first
//! byte): parsing never panics, and every query that parses compiles to SQL that SQLite runs on an empty
//! database of the real schema without an error (an error there would be a 500 for the client).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use store::Store;

const TYPES: &[&str] =
    &["Patient", "Observation", "Condition", "Encounter", "MedicationRequest", "AuditEvent", "DocumentReference", "Group", "Practitioner", "Procedure"];

struct Env {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn Store>,
    _dir: std::path::PathBuf,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kindling-fuzz-search-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let clock: fhir::time::SharedClock = Arc::new(fhir::time::SystemClock);
        let config = store::sqlite::SqliteConfig { path: dir.join("fuzz.db"), base_url: Some("http://fuzz.example/fhir".into()), writer_cache_mib: 8 };
        let store: Arc<dyn Store> = Arc::new(store::sqlite::SqliteStore::open(config, clock).expect("store"));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Env { rt, store, _dir: dir }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let ty = TYPES[first as usize % TYPES.len()];
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(rest).into_owned().collect();
    let opts = fhir::query::ParseOptions { lenient: first & 0x80 != 0, base: Some("http://fuzz.example/fhir"), now_ms: 1_796_500_000_000 };
    let Ok(query) = fhir::query::parse(ty, &pairs, opts) else { return };
    let env = env();
    if let Err(e) = env.rt.block_on(env.store.search(&query)) {
        panic!("{ty}?{}: the store failed a parsed query: {e}", String::from_utf8_lossy(rest));
    }
});
