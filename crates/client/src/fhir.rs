//! FHIR access with a token: read, search, paging through `next` links, create and update. Retries 429
//! and 503 honouring `Retry-After` (bounded), renews the token once on 401, and never sends the token
//! anywhere but the FHIR base.

use crate::error::{Error, Result};
use crate::session::TokenSource;
use crate::types::{Bundle, OperationOutcome};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// FHIR calls for one token source (a [`crate::Session`] or a [`crate::BackendClient`]).
#[derive(Clone)]
pub struct Fhir {
    http: reqwest::Client,
    source: Arc<dyn TokenSource>,
    /// Attempts on 429/503 before giving up (default 3).
    pub max_attempts: u32,
    /// Longest wait honoured from `Retry-After` (default 10 s).
    pub max_wait: Duration,
    /// Per-request timeout (default 20 s).
    pub timeout: Duration,
}

impl Fhir {
    /// FHIR access through `http` with tokens from `source`.
    pub fn new(http: reqwest::Client, source: Arc<dyn TokenSource>) -> Fhir {
        Fhir { http, source, max_attempts: 3, max_wait: Duration::from_secs(10), timeout: Duration::from_secs(20) }
    }

    fn base(&self) -> String {
        self.source.base().trim_end_matches('/').to_string()
    }

    /// `GET {base}/{type}/{id}` as `T`.
    pub async fn read<T: DeserializeOwned>(&self, resource_type: &str, id: &str) -> Result<T> {
        let v = self.get(&format!("{}/{resource_type}/{}", self.base(), enc(id))).await?;
        serde_json::from_value(v).map_err(|e| Error::Fhir { status: 200, detail: format!("unexpected {resource_type}: {e}") })
    }

    /// A search (`GET {base}/{type}?params`); one page.
    pub async fn search(&self, resource_type: &str, params: &[(&str, &str)]) -> Result<Bundle> {
        let mut url = url::Url::parse(&format!("{}/{resource_type}", self.base())).map_err(|e| Error::Config(e.to_string()))?;
        url.query_pairs_mut().extend_pairs(params.iter());
        self.bundle(url.as_str()).await
    }

    /// Every page of a search, following `next` links; stops after `max_pages`.
    pub async fn search_all(&self, resource_type: &str, params: &[(&str, &str)], max_pages: usize) -> Result<Vec<Bundle>> {
        let mut pages = Pages {
            fhir: self.clone(),
            next: None,
            first: Some((resource_type.to_string(), params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())),
        };
        let mut out = Vec::new();
        while out.len() < max_pages {
            match pages.next().await {
                Some(p) => out.push(p?),
                None => break,
            }
        }
        Ok(out)
    }

    /// Pages of a search, one at a time.
    pub fn pages(&self, resource_type: &str, params: &[(&str, &str)]) -> Pages {
        Pages { fhir: self.clone(), next: None, first: Some((resource_type.to_string(), params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())) }
    }

    async fn bundle(&self, url: &str) -> Result<Bundle> {
        let v = self.get(url).await?;
        serde_json::from_value(v).map_err(|e| Error::Fhir { status: 200, detail: format!("not a Bundle: {e}") })
    }

    /// `GET` any URL under the FHIR base (e.g. a `next` link) as JSON.
    pub async fn get(&self, url: &str) -> Result<Value> {
        self.send(reqwest::Method::GET, url, None).await
    }

    /// `POST {base}/{type}`; returns the created resource.
    pub async fn create(&self, resource: &Value) -> Result<Value> {
        let ty = resource["resourceType"].as_str().ok_or_else(|| Error::Config("the resource has no resourceType".into()))?;
        self.send(reqwest::Method::POST, &format!("{}/{ty}", self.base()), Some(resource)).await
    }

    /// `PUT {base}/{type}/{id}`; returns the stored resource.
    pub async fn update(&self, resource: &Value) -> Result<Value> {
        let ty = resource["resourceType"].as_str().ok_or_else(|| Error::Config("the resource has no resourceType".into()))?;
        let id = resource["id"].as_str().ok_or_else(|| Error::Config("the resource has no id".into()))?;
        self.send(reqwest::Method::PUT, &format!("{}/{ty}/{}", self.base(), enc(id)), Some(resource)).await
    }

    async fn send(&self, method: reqwest::Method, url: &str, body: Option<&Value>) -> Result<Value> {
        let base = self.base();
        if !(url.starts_with(&format!("{base}/")) || url.starts_with(&format!("{base}?"))) {
            return Err(Error::OutsideBase { url: url.split('?').next().unwrap_or(url).to_string() });
        }
        let mut renewed = false;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let token = self.source.token().await?;
            let mut req = self.http.request(method.clone(), url).bearer_auth(token.expose()).header("accept", "application/fhir+json").timeout(self.timeout);
            if let Some(b) = body {
                req = req.header("content-type", "application/fhir+json").body(b.to_string());
            }
            let r = req.send().await.map_err(Error::transport)?;
            let status = r.status().as_u16();
            match status {
                200..=299 => return r.json().await.map_err(Error::transport),
                401 if !renewed => {
                    renewed = true;
                    self.source.renew(&token).await?;
                    continue;
                }
                401 => return Err(Error::SessionEnded { detail: "the server refused the renewed token".into() }),
                429 | 503 if attempt < self.max_attempts => {
                    let wait = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs)
                        .unwrap_or_else(|| Duration::from_millis(250 * 2u64.pow(attempt)))
                        .min(self.max_wait);
                    tracing::info!(status, attempt, wait_ms = wait.as_millis() as u64, "FHIR server busy; retrying");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                429 | 503 => return Err(Error::Busy { status, attempts: attempt }),
                _ => {
                    let detail = r.json::<OperationOutcome>().await.ok().and_then(|o| o.issue.into_iter().find_map(|i| i.diagnostics)).unwrap_or_default();
                    return Err(Error::Fhir { status, detail });
                }
            }
        }
    }
}

fn enc(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

/// Pages of a search; `next()` yields each page until there is no `next` link.
pub struct Pages {
    fhir: Fhir,
    first: Option<(String, Vec<(String, String)>)>,
    next: Option<String>,
}

impl Pages {
    /// The next page; `None` after the last.
    pub async fn next(&mut self) -> Option<Result<Bundle>> {
        let result = if let Some((ty, params)) = self.first.take() {
            let p: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            self.fhir.search(&ty, &p).await
        } else {
            let url = self.next.take()?;
            self.fhir.bundle(&url).await
        };
        if let Ok(b) = &result {
            self.next = b.next_link().map(str::to_string);
        }
        Some(result)
    }
}
