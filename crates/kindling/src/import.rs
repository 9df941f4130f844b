//! `kindling import`: FHIR Bundles (transaction, batch, collection), single resources and NDJSON, plain or
//! gzip-compressed. Files are read and parsed on a blocking thread while the previous one is written.

use api::AppState;
use flate2::read::GzDecoder;
use serde_json::{Value, json};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct ImportSummary {
    pub files: usize,
    pub resources: usize,
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

impl ImportSummary {
    pub fn rate(&self) -> f64 {
        self.resources as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Expands directories into the importable files below them, sorted for a repeatable order.
pub fn collect_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
            entries.sort();
            out.extend(collect_files(&entries)?);
        } else if p.is_file() {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if [".json", ".json.gz", ".ndjson", ".ndjson.gz"].iter().any(|s| name.ends_with(s)) {
                out.push(p.clone());
            }
        } else {
            anyhow::bail!("{} does not exist", p.display());
        }
    }
    Ok(out)
}

/// One unit of work: a Bundle to process as a transaction (or batch).
struct Unit {
    file: String,
    bundles: Vec<Value>,
    error: Option<String>,
}

fn read_file(path: &Path) -> Unit {
    let file = path.display().to_string();
    let result = (|| -> anyhow::Result<Vec<Value>> {
        let raw = std::fs::read(path)?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let text = if name.ends_with(".gz") {
            let mut s = String::new();
            GzDecoder::new(&raw[..]).read_to_string(&mut s)?;
            s
        } else {
            String::from_utf8(raw)?
        };
        if name.trim_end_matches(".gz").ends_with(".ndjson") {
            let mut resources = Vec::new();
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let v: Value = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("line {}: {e}", i + 1))?;
                resources.push(v);
            }
            Ok(resources.chunks(500).map(|c| as_transaction(c.to_vec())).collect())
        } else {
            let v: Value = serde_json::from_str(&text)?;
            Ok(vec![normalise(v)])
        }
    })();
    match result {
        Ok(bundles) => Unit { file, bundles, error: None },
        Err(e) => Unit { file, bundles: Vec::new(), error: Some(e.to_string()) },
    }
}

/// Wraps resources into a transaction: `PUT Type/id` when they carry an id, else `POST Type`.
fn as_transaction(resources: Vec<Value>) -> Value {
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let ty = r.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_string();
            let request = match r.get("id").and_then(Value::as_str) {
                Some(id) => json!({"method": "PUT", "url": format!("{ty}/{id}")}),
                None => json!({"method": "POST", "url": ty}),
            };
            json!({"resource": r, "request": request})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// Transaction and batch Bundles are processed as they are; a collection (or any other Bundle) keeps its
/// `fullUrl`s so `urn:uuid:` references still resolve; a single resource becomes a one-entry transaction.
fn normalise(v: Value) -> Value {
    if v.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return as_transaction(vec![v]);
    }
    match v.get("type").and_then(Value::as_str) {
        Some("transaction") | Some("batch") => v,
        _ => {
            let entries: Vec<Value> = v
                .get("entry")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|e| {
                            let r = e.get("resource")?.clone();
                            let mut t = as_transaction(vec![r]);
                            let mut entry = t["entry"][0].take();
                            if let Some(full) = e.get("fullUrl") {
                                entry["fullUrl"] = full.clone();
                            }
                            Some(entry)
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        }
    }
}

/// Imports `files` into the store behind `state`. `progress` is called after each file.
pub async fn import_files(state: &AppState, files: Vec<PathBuf>, mut progress: impl FnMut(&ImportSummary)) -> anyhow::Result<ImportSummary> {
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Unit>(8);
    let reader = tokio::task::spawn_blocking(move || {
        for f in files {
            if tx.blocking_send(read_file(&f)).is_err() {
                break;
            }
        }
    });
    let mut summary = ImportSummary::default();
    while let Some(unit) = rx.recv().await {
        summary.files += 1;
        if let Some(e) = unit.error {
            summary.errors.push(format!("{}: {e}", unit.file));
        }
        for b in unit.bundles {
            let n = b.get("entry").and_then(Value::as_array).map_or(0, Vec::len);
            match api::bundle::process(state, b).await {
                Ok(_) => summary.resources += n,
                Err(e) => summary.errors.push(format!("{}: {}", unit.file, e.message)),
            }
        }
        summary.elapsed = started.elapsed();
        progress(&summary);
    }
    reader.await?;
    state.store.optimize().await?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}
