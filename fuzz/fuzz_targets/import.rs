//! The import reader (`kindling import`: FHIR Bundles, NDJSON, gzipped or not; the file kind picked by the
//! first byte) and the transaction preparation every Bundle goes through (validation, reference
//! resolution, index extraction): nothing panics on any file.
#![no_main]

use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &["fuzz.json", "fuzz.ndjson", "fuzz.json.gz", "fuzz.ndjson.gz"];

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let name = NAMES[first as usize % NAMES.len()];
    let Ok(bundles) = kindling::import::parse_bundles(name, rest) else { return };
    for b in bundles {
        let _ = api::bundle::prepare_transaction("http://fuzz.example/fhir", b);
    }
});
