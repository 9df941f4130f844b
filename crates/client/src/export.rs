//! Bulk Data `$export` (FHIR Bulk Data Access 2.0) for backend services: kick-off, polling that honours
//! `Retry-After`, and files streamed resource by resource (a large export never sits in memory).

use crate::backend::BackendClient;
use crate::error::{Error, Result};
use crate::session::TokenSource;
use crate::types::OperationOutcome;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which resources an export is about.
#[derive(Debug, Clone, Default)]
pub enum ExportLevel {
    /// `[base]/$export`: everything the client may read.
    #[default]
    System,
    /// `[base]/Patient/$export`: every patient's compartment.
    Patients,
    /// `[base]/Group/[id]/$export`: the compartments of the Group's members.
    Group(String),
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// System, patient or Group level.
    pub level: ExportLevel,
    /// `_type`: only these resource types (all when empty).
    pub types: Vec<String>,
    /// `_since`: only resources changed after this instant (e.g. `2024-01-01T00:00:00Z`).
    pub since: Option<String>,
    /// `_typeFilter`: `Type?search` criteria.
    pub type_filters: Vec<String>,
    /// How long to wait for the export to complete before giving up (the job is then cancelled).
    pub max_wait: Duration,
    /// Failures for a Kindling sandbox to inject into this export, to rehearse them (the
    /// `Kindling-Export-Fault` header: `slow=N`, `kickoff-429`, `fail`, `file-404-once`, `expire=N`).
    pub fault: Option<String>,
}

impl Default for ExportRequest {
    fn default() -> Self {
        ExportRequest { level: ExportLevel::System, types: Vec::new(), since: None, type_filters: Vec::new(), max_wait: Duration::from_secs(600), fault: None }
    }
}

/// One file of a completed export.
#[derive(Debug, Clone)]
pub struct ExportFile {
    /// The resource type the file holds (`OperationOutcome` for error files).
    pub resource_type: String,
    /// Where to download it.
    pub url: String,
    /// How many resources the server says it holds.
    pub count: Option<u64>,
}

/// The manifest of a completed export.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The instant the export reflects.
    pub transaction_time: String,
    /// The kick-off URL.
    pub request: String,
    /// Whether the files need the access token (sent only to URLs under the FHIR base).
    pub requires_access_token: bool,
    /// The files, by type.
    pub output: Vec<ExportFile>,
    /// OperationOutcome files: what the server could not export, and why.
    pub error: Vec<ExportFile>,
}

/// A completed export: its manifest, its files to stream, and its status URL to cancel (delete) it with.
pub struct Export {
    client: Arc<BackendClient>,
    /// The job's status URL.
    pub status_url: String,
    /// What the export holds.
    pub manifest: Manifest,
}

fn files(v: &Value) -> Vec<ExportFile> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| Some(ExportFile { resource_type: f["type"].as_str()?.to_string(), url: f["url"].as_str()?.to_string(), count: f["count"].as_u64() }))
        .collect()
}

fn retry_after(r: &reqwest::Response) -> Duration {
    r.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok()).map_or(Duration::from_secs(1), Duration::from_secs)
}

async fn refusal(r: reqwest::Response) -> Error {
    let status = r.status().as_u16();
    let detail = r.json::<OperationOutcome>().await.ok().and_then(|o| o.issue.into_iter().find_map(|i| i.diagnostics)).unwrap_or_default();
    match status {
        401 => Error::SessionEnded { detail },
        403 => Error::NotGranted(detail),
        _ => Error::Fhir { status, detail },
    }
}

impl BackendClient {
    /// Runs a Bulk Data export: kicks it off (`Prefer: respond-async`), polls its status URL as long as the
    /// server says (`Retry-After`; a 429 or 503 waits likewise) up to `request.max_wait`, and returns the
    /// completed export. Stream its files with [`Export::resources`].
    pub async fn export(self: &Arc<Self>, request: &ExportRequest) -> Result<Export> {
        let base = self.base().to_string();
        let path = match &request.level {
            ExportLevel::System => "$export".to_string(),
            ExportLevel::Patients => "Patient/$export".to_string(),
            ExportLevel::Group(id) => format!("Group/{}/$export", url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()),
        };
        let mut url = url::Url::parse(&format!("{base}/{path}")).map_err(|e| Error::Config(e.to_string()))?;
        {
            let mut q = url.query_pairs_mut();
            if !request.types.is_empty() {
                q.append_pair("_type", &request.types.join(","));
            }
            if let Some(since) = &request.since {
                q.append_pair("_since", since);
            }
            for f in &request.type_filters {
                q.append_pair("_typeFilter", f);
            }
        }
        let deadline = Instant::now() + request.max_wait;
        let mut renewed = false;
        let status_url = loop {
            let token = self.token().await?;
            let mut kick_off =
                self.http().get(url.as_str()).bearer_auth(token.expose()).header("accept", "application/fhir+json").header("prefer", "respond-async");
            if let Some(fault) = &request.fault {
                kick_off = kick_off.header("kindling-export-fault", fault);
            }
            let r = kick_off.send().await.map_err(Error::transport)?;
            match r.status().as_u16() {
                202 => {
                    let location = r.headers().get("content-location").and_then(|v| v.to_str().ok());
                    break location.ok_or_else(|| Error::Transport("the kick-off answered 202 without Content-Location".into()))?.to_string();
                }
                401 if !renewed => {
                    renewed = true;
                    self.renew(&token).await?;
                }
                429 | 503 if Instant::now() + retry_after(&r) < deadline => tokio::time::sleep(retry_after(&r)).await,
                429 | 503 => return Err(Error::Busy { status: r.status().as_u16(), attempts: 0 }),
                _ => return Err(refusal(r).await),
            }
        };
        let export = |manifest: Manifest| Export { client: self.clone(), status_url: status_url.clone(), manifest };
        loop {
            let token = self.token().await?;
            let r = self.http().get(&status_url).bearer_auth(token.expose()).send().await.map_err(Error::transport)?;
            match r.status().as_u16() {
                200 => {
                    let v: Value = r.json().await.map_err(Error::transport)?;
                    return Ok(export(Manifest {
                        transaction_time: v["transactionTime"].as_str().unwrap_or_default().to_string(),
                        request: v["request"].as_str().unwrap_or_default().to_string(),
                        requires_access_token: v["requiresAccessToken"].as_bool().unwrap_or(true),
                        output: files(&v["output"]),
                        error: files(&v["error"]),
                    }));
                }
                202 | 429 | 503 => {
                    let wait = retry_after(&r);
                    if Instant::now() + wait >= deadline {
                        // Not complete in time: the job is cancelled rather than left running.
                        let _ = export(Manifest {
                            transaction_time: String::new(),
                            request: String::new(),
                            requires_access_token: true,
                            output: Vec::new(),
                            error: Vec::new(),
                        })
                        .cancel()
                        .await;
                        return Err(Error::Fhir { status: 202, detail: format!("the export did not complete within {} s", request.max_wait.as_secs()) });
                    }
                    tokio::time::sleep(wait).await;
                }
                _ => return Err(refusal(r).await),
            }
        }
    }
}

impl Export {
    /// Streams one file (an output or an error file), calling `each` for every resource as its line
    /// arrives; returns how many there were. The token goes only to URLs under the FHIR base. A file that
    /// answers 404, 429 or 503 before its first byte is asked for once more after `Retry-After` (a storage
    /// that has not caught up, a busy server); a second failure is the error.
    pub async fn resources(&self, file: &ExportFile, mut each: impl FnMut(Value) -> Result<()>) -> Result<u64> {
        let base = self.client.base();
        let within = file.url.starts_with(&format!("{base}/"));
        if self.manifest.requires_access_token && !within {
            return Err(Error::OutsideBase { url: file.url.clone() });
        }
        let mut attempt = 0;
        let mut r = loop {
            attempt += 1;
            // A file may take long to stream: the client's 15 s budget is for single requests.
            let mut req = self.client.http().get(&file.url).header("accept", "application/fhir+ndjson").timeout(Duration::from_secs(3600));
            if self.manifest.requires_access_token {
                req = req.bearer_auth(self.client.token().await?.expose());
            }
            let r = req.send().await.map_err(Error::transport)?;
            match r.status().as_u16() {
                200..=299 => break r,
                404 | 429 | 503 if attempt == 1 => tokio::time::sleep(retry_after(&r).min(Duration::from_secs(30))).await,
                _ => return Err(refusal(r).await),
            }
        };
        let (mut pending, mut count) = (Vec::<u8>::new(), 0u64);
        let mut line = |bytes: &[u8]| -> Result<()> {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(());
            }
            let v: Value = serde_json::from_slice(bytes).map_err(|e| Error::Transport(format!("{}: line {}: {e}", file.url, count + 1)))?;
            count += 1;
            each(v)
        };
        while let Some(chunk) = r.chunk().await.map_err(Error::transport)? {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                line(&pending[..end])?;
                pending.drain(..=end);
            }
        }
        line(&pending)?;
        Ok(count)
    }

    /// Cancels the job: the server deletes it and its files.
    pub async fn cancel(self) -> Result<()> {
        let token = self.client.token().await?;
        let r = self.client.http().delete(&self.status_url).bearer_auth(token.expose()).send().await.map_err(Error::transport)?;
        if r.status().is_success() { Ok(()) } else { Err(refusal(r).await) }
    }
}
