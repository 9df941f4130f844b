//! `kindling import`: FHIR Bundles (transaction, batch, collection), single resources and NDJSON, plain or
//! gzip-compressed. Files are read and parsed on a blocking thread while the previous one is written.

use api::AppState;
use api::bundle::{Preparation, PreparedBundle};
use flate2::read::GzDecoder;
use serde_json::{Value, json};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportSummary {
    /// Files read.
    pub files: usize,
    /// Resources imported (created + updated + unchanged).
    pub resources: usize,
    /// Resources that did not exist before.
    pub created: usize,
    /// Resources that existed and got a new version (a re-import of the same files updates in place).
    pub updated: usize,
    /// Resources already stored with the same content, left as they were (no new version).
    pub unchanged: usize,
    /// One line per entry or file that could not be imported.
    pub errors: Vec<String>,
    /// How long the import took.
    pub elapsed: Duration,
}

impl ImportSummary {
    fn add(&mut self, w: api::bundle::Written) {
        self.resources += w.total();
        self.created += w.created;
        self.updated += w.updated;
        self.unchanged += w.unchanged;
    }
    /// Resources imported per second.
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

/// One file's work: Bundles prepared on the reading thread where possible, the rest as they are.
struct Unit {
    file: String,
    prepared: Vec<api::bundle::PreparedBundle>,
    bundles: Vec<Value>,
    errors: Vec<String>,
}

/// The transaction Bundles a file holds, as the import writes them: a Bundle as it is (a collection made a
/// transaction, Synthea's `urn:uuid:` names kept as ids), NDJSON in transactions of 500 resources.
pub fn read_bundles(path: &Path) -> anyhow::Result<Vec<Value>> {
    let raw = std::fs::read(path)?;
    parse_bundles(path.file_name().and_then(|n| n.to_str()).unwrap_or_default(), &raw)
}

/// [`read_bundles`] of a file's bytes, read by its name (`.json`, `.ndjson`, either with `.gz`).
pub fn parse_bundles(name: &str, raw: &[u8]) -> anyhow::Result<Vec<Value>> {
    let text = if name.ends_with(".gz") {
        let mut s = String::new();
        GzDecoder::new(raw).read_to_string(&mut s)?;
        s
    } else {
        String::from_utf8(raw.to_vec())?
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
}

fn read_file(path: &Path, base_url: &str) -> Unit {
    let file = path.display().to_string();
    let result = read_bundles(path);
    let mut unit = Unit { file, prepared: Vec::new(), bundles: Vec::new(), errors: Vec::new() };
    match result {
        Ok(bundles) => {
            for b in bundles {
                match api::bundle::prepare_transaction(base_url, b) {
                    Preparation::Ready(p) => unit.prepared.push(p),
                    Preparation::NeedsDatabase(b) => unit.bundles.push(b),
                    Preparation::Invalid(e) => unit.errors.push(e.message),
                }
            }
        }
        Err(e) => unit.errors.push(e.to_string()),
    }
    unit
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
/// Then every plain create of an entry named `urn:uuid:X` becomes an update of `Type/X`, see [`stable_ids`].
fn normalise(v: Value) -> Value {
    if v.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return as_transaction(vec![v]);
    }
    let mut bundle = match v.get("type").and_then(Value::as_str) {
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
    };
    stable_ids(&mut bundle);
    bundle
}

/// Keeps the identities a Bundle gives its resources, so that importing the same files again updates
/// them in place instead of creating copies: an unconditional `POST Type` whose entry is named
/// `urn:uuid:X` (Synthea names every resource so) becomes `PUT Type/X`. References to `urn:uuid:X` in the
/// other entries still resolve through the `fullUrl`. Conditional creates (`ifNoneExist`) stay as they are.
fn stable_ids(bundle: &mut Value) {
    let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) else { return };
    for entry in entries {
        let Some(uuid) = entry.get("fullUrl").and_then(Value::as_str).and_then(|u| u.strip_prefix("urn:uuid:")).map(str::to_string) else { continue };
        let request = &entry["request"];
        let ty = match (request["method"].as_str(), request["url"].as_str()) {
            (Some("POST"), Some(url)) if request.get("ifNoneExist").is_none() && !url.contains(['?', '/']) => url.to_string(),
            _ => continue,
        };
        let valid_id = !uuid.is_empty() && uuid.len() <= 64 && uuid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid_id || entry["resource"]["resourceType"].as_str() != Some(ty.as_str()) {
            continue;
        }
        entry["resource"]["id"] = Value::String(uuid.clone());
        entry["request"] = json!({"method": "PUT", "url": format!("{ty}/{uuid}")});
    }
}

const READERS: usize = 2;

/// Entries written per store transaction during import, where the store has one writer (SQLite: each
/// commit rewrites the same index pages, so few large groups).
const GROUP_ENTRIES: usize = 40000;
/// The same where groups are written concurrently (PostgreSQL). Smaller groups start the database's work
/// sooner, leave less of it for the end, when nothing else is left to prepare, and hold less memory
/// (measured in BENCHMARKS.md, PostgreSQL, session 6: faster, and half the peak memory).
const CONCURRENT_GROUP_ENTRIES: usize = 10000;

/// What one written group adds to the summary: resources written, and errors by file.
type GroupResult = anyhow::Result<(api::bundle::Written, Vec<String>)>;

async fn write_group(state: AppState, group: Vec<(String, PreparedBundle)>) -> GroupResult {
    let (files, bundles): (Vec<String>, Vec<PreparedBundle>) = group.into_iter().unzip();
    let results = api::bundle::import_prepared(&state, bundles).await.map_err(|e| anyhow::anyhow!("import failed: {}", e.message))?;
    let (mut written, mut errors) = (api::bundle::Written::default(), Vec::new());
    for (file, r) in files.iter().zip(results) {
        match r {
            Ok(w) => {
                written.created += w.created;
                written.updated += w.updated;
                written.unchanged += w.unchanged;
            }
            Err(e) => errors.push(format!("{file}: {}", e.message)),
        }
    }
    Ok((written, errors))
}

fn add(summary: &mut ImportSummary, done: Result<GroupResult, tokio::task::JoinError>) -> anyhow::Result<()> {
    let (written, errors) = done??;
    summary.add(written);
    summary.errors.extend(errors);
    Ok(())
}

/// Writes `group`: at once where the store has one writer, else in the background once a writer is free.
async fn flush(
    state: &AppState,
    group: &mut Vec<(String, PreparedBundle)>,
    writing: &mut tokio::task::JoinSet<GroupResult>,
    summary: &mut ImportSummary,
) -> anyhow::Result<()> {
    if group.is_empty() {
        return Ok(());
    }
    // On PostgreSQL two groups are written at once, overlapping the database's work on one with this
    // process's work on the other (one writer left a core idle a fifth of the time: 7.5k -> 12k
    // resources/s). SQLite has one writer.
    let writers = state.store.concurrent_writers();
    if writers <= 1 {
        return add(summary, Ok(write_group(state.clone(), std::mem::take(group)).await));
    }
    while writing.len() >= writers {
        if let Some(done) = writing.join_next().await {
            add(summary, done)?;
        }
    }
    writing.spawn(write_group(state.clone(), std::mem::take(group)));
    Ok(())
}

/// Waits for the groups being written.
async fn drain(writing: &mut tokio::task::JoinSet<GroupResult>, summary: &mut ImportSummary) -> anyhow::Result<()> {
    while let Some(done) = writing.join_next().await {
        add(summary, done)?;
    }
    Ok(())
}

/// Imports `files` into the store behind `state`. `progress` is called after each file.
pub async fn import_files(state: &AppState, files: Vec<PathBuf>, mut progress: impl FnMut(&ImportSummary)) -> anyhow::Result<ImportSummary> {
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Unit>(8);
    // Two readers: reading, inflating, parsing and preparing are about as costly as writing, so the
    // single writer is kept busy while the other core prepares the next files.
    let queue = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(files)));
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let queue = queue.clone();
        let tx = tx.clone();
        let base_url = state.base_url.clone();
        readers.push(tokio::task::spawn_blocking(move || {
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some(f) = next else { break };
                if tx.blocking_send(read_file(&f, &base_url)).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    let mut summary = ImportSummary::default();
    // Transaction Bundles are written in groups, one store transaction per group with a savepoint per
    // Bundle: far fewer commits (each rewrites the same index pages) while each Bundle stays atomic.
    let mut group: Vec<(String, PreparedBundle)> = Vec::new();
    let mut group_entries = 0;
    let group_limit = if state.store.concurrent_writers() > 1 { CONCURRENT_GROUP_ENTRIES } else { GROUP_ENTRIES };
    let mut writing = tokio::task::JoinSet::new();
    while let Some(unit) = rx.recv().await {
        summary.files += 1;
        summary.errors.extend(unit.errors.iter().map(|e| format!("{}: {e}", unit.file)));
        for p in unit.prepared {
            group_entries += p.len();
            group.push((unit.file.clone(), p));
            if group_entries >= group_limit {
                flush(state, &mut group, &mut writing, &mut summary).await?;
                group_entries = 0;
            }
        }
        if !unit.bundles.is_empty() {
            // These read the database (conditional references): what was flushed before is committed first.
            drain(&mut writing, &mut summary).await?;
        }
        for b in unit.bundles {
            match api::bundle::import_bundle(state, b).await {
                Ok((written, failed)) => {
                    summary.add(written);
                    summary.errors.extend(failed.iter().map(|e| format!("{}: {}", unit.file, e.message)));
                }
                Err(e) => summary.errors.push(format!("{}: {}", unit.file, e.message)),
            }
        }
        summary.elapsed = started.elapsed();
        progress(&summary);
    }
    flush(state, &mut group, &mut writing, &mut summary).await?;
    drain(&mut writing, &mut summary).await?;
    for r in readers {
        r.await?;
    }
    state.store.optimize().await?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}
