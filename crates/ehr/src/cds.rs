//! The EHR's CDS Hooks 2.0 client. Decision-support services are registered with the EHR (their discovery
//! base: `{base}/cds-services`); when a chart opens, the chart asks for its cards (`patient-view`) without
//! waiting for them. Every call:
//!
//! - fills the service's prefetch templates (`{{context.patientId}}`, `{{context.userId}}`,
//!   `{{userPractitionerId}}`) from the record, under the user's rights (what the user may not let an app
//!   read is prefetched as `null`);
//! - is signed with an RS384 JWT (`iss` = this FHIR base, `aud` = the service's URL, five minutes, a fresh
//!   `jti`, `kid` and `jku` naming this server's JWK Set);
//! - is bounded in time: a slow, failing or garbled service is named in plain words and the chart goes on.
//!
//! Cards show their summary, indicator, source, detail (Markdown, escaped and reduced to a safe subset) and
//! links: web pages open in a new tab; a `smart` link launches the registered app at that URL through the
//! authorisation server, with the card's `appContext` in its token response.

use super::*;
use client::cds::{Card, HookRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// The store kind of registered services.
const SERVICE_KIND: &str = "cds-service";
/// The store kind of the cards a chart showed (for their SMART links), kept half an hour.
const CARDS_KIND: &str = "cds-cards";
const CARDS_TTL_MS: i64 = 30 * 60 * 1000;
/// How long one request to a service may take.
pub const TIMEOUT: Duration = Duration::from_millis(2500);
/// How long the chart's cards may take altogether (discovery, prefetch and every call, made at once).
pub const DEADLINE: Duration = Duration::from_millis(3000);
/// The most a discovery document or an answer may weigh.
const MAX_BODY: usize = 256 * 1024;
/// The most `patient-view` services of one registration called per chart.
const MAX_SERVICES: usize = 10;
/// The most entries a search prefetch carries when its template sets no `_count` (beyond: left out).
const MAX_PREFETCH: usize = 100;
/// How long a discovery document is reused.
const DISCOVERY_TTL: Duration = Duration::from_secs(300);
/// The longest `appContext` a card may hand an app.
pub const MAX_APP_CONTEXT: usize = auth::launch::MAX_APP_CONTEXT;

/// A decision-support service registered with the EHR: its discovery base (`…/cds-services`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CdsEndpoint {
    /// A short name for it (a slug).
    pub id: String,
    /// Its name for people.
    pub name: String,
    /// Its discovery URL (`https://cds.example/cds-services`; `http` on this machine only).
    pub url: String,
    /// A disabled service is not called.
    #[serde(default)]
    pub disabled: bool,
    /// The registered apps (client ids) its cards' SMART links may open; empty: any registered app.
    #[serde(default)]
    pub apps: Vec<String>,
    /// The OAuth client this service is registered as with this authorisation server. When set, each
    /// call carries `fhirAuthorization`: a five-minute token of that client for the user on the chart's
    /// patient, read-only, for the types the service's prefetch templates name (and the Patient), within
    /// what the client is allowed and the user's rights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// A fault the EHR injects into its calls to this service (rehearsal).
    #[serde(default, skip_serializing_if = "CdsFault::is_none")]
    pub fault: CdsFault,
}

/// A fault the EHR injects into its calls to one service, so that a team can rehearse how the chart and
/// order entry cope (and whether their service checks the JWT), with the service as it is.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CdsFault {
    /// Calls as usual.
    #[default]
    None,
    /// The EHR holds the call past the time limit (nothing is sent).
    Slow,
    /// The call is answered as a service failure would be, HTTP 503 (nothing is sent).
    Error,
    /// The call is answered with cards that do not hold together (nothing is sent).
    Garbled,
    /// The call is sent, signed with a JWT whose `aud` is another service's URL: a service that checks the
    /// JWT, as it must, refuses it.
    BadJwt,
}

impl CdsFault {
    /// Every fault, as the forms and the command line name them.
    pub const ALL: [(CdsFault, &'static str, &'static str); 5] = [
        (CdsFault::None, "none", "None"),
        (CdsFault::Slow, "slow", "Slow (past 2.5 s)"),
        (CdsFault::Error, "error", "Error (HTTP 503)"),
        (CdsFault::Garbled, "garbled", "Garbled cards"),
        (CdsFault::BadJwt, "bad-jwt", "Bad JWT (wrong aud)"),
    ];

    /// Whether no fault is injected.
    pub fn is_none(&self) -> bool {
        *self == CdsFault::None
    }

    /// The fault a form or the command line names.
    pub fn parse(name: &str) -> Option<CdsFault> {
        CdsFault::ALL.iter().find(|(_, n, _)| *n == name).map(|(f, _, _)| *f)
    }

    /// Its name (`bad-jwt`).
    pub fn name(&self) -> &'static str {
        CdsFault::ALL.iter().find(|(f, _, _)| f == self).map_or("none", |(_, n, _)| n)
    }
}

/// The scopes a service's `fhirAuthorization` asks for: read and search, at the patient level, of the
/// Patient and of each type its prefetch templates name.
pub fn wanted_scopes(service: &client::cds::Service) -> String {
    let mut types = vec!["Patient".to_string()];
    for template in service.prefetch.values().filter_map(Value::as_str) {
        let ty = template.split(['?', '/']).next().unwrap_or_default();
        // Only types of the patient's record: a shared type (Practitioner, Medication) at the patient level
        // would reach every resource of it.
        if fhir::types::is_storable_type(ty) && ty != "Patient" && !fhir::params::patient_compartment_paths(ty).is_empty() && !types.iter().any(|t| t == ty) {
            types.push(ty.to_string());
        }
    }
    types.iter().map(|t| format!("patient/{t}.rs")).collect::<Vec<_>>().join(" ")
}

/// Whether `host` is this machine.
fn loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// One `[[cds_service]]` of an apps file: a decision-support service registered per environment, beside
/// the environment's apps.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    /// A short name (a slug).
    pub id: String,
    /// Its name for people.
    pub name: String,
    /// Its discovery URL.
    pub url: String,
    /// The registered apps its cards may open (none: any).
    #[serde(default)]
    pub apps: Vec<String>,
    /// Its own registered client, for `fhirAuthorization`.
    #[serde(default)]
    pub client: Option<String>,
    /// Registered disabled. Applies when first registered; afterwards the EHR's choice stands.
    #[serde(default)]
    pub disabled: bool,
}

#[derive(Debug, Deserialize)]
struct ServicesFile {
    /// The apps are the authorisation server's to read.
    #[serde(default, rename = "app")]
    _apps: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    cds_service: Vec<ServiceEntry>,
}

/// Registers (or updates) every `[[cds_service]]` of an apps file, once its apps are registered (the apps a
/// service names must exist). The file adds services and updates what it states; the EHR's runtime choices
/// (enabled or disabled, an injected fault) stand across restarts. Returns the ids.
pub async fn load_services_file(s: &Shared, text: &str) -> Result<Vec<String>, String> {
    let file: ServicesFile = toml::from_str(text).map_err(|e| format!("apps file: {e}"))?;
    let mut ids = Vec::new();
    for entry in file.cds_service {
        for app in entry.apps.iter().chain(entry.client.iter()) {
            if auth::registry::stored_client(s.store.as_ref(), app).await.map_err(|e| e.to_string())?.is_none() {
                return Err(format!("cds_service {}: no app '{app}' is registered", entry.id));
            }
        }
        let existing = endpoints(s).await.map_err(|e| e.to_string())?.into_iter().find(|e| e.id == entry.id);
        let endpoint = CdsEndpoint {
            disabled: existing.as_ref().map_or(entry.disabled, |e| e.disabled),
            fault: existing.as_ref().map(|e| e.fault).unwrap_or_default(),
            id: entry.id.clone(),
            name: entry.name,
            url: entry.url,
            apps: entry.apps,
            client_id: entry.client,
        };
        register(s, &endpoint).await.map_err(|e| format!("cds_service {}: {e}", entry.id))?;
        ids.push(entry.id);
    }
    Ok(ids)
}

/// Registers (or updates) a service. Its URL is `https` (health data goes there), or `http` on this
/// machine (a service under development) or on this server's own address (the reference app's).
pub async fn register(s: &Shared, endpoint: &CdsEndpoint) -> Result<(), String> {
    let Ok(u) = url::Url::parse(&endpoint.url) else {
        return Err(format!("the CDS service URL '{}' is not a URL", endpoint.url));
    };
    let own = endpoint.url.starts_with(&format!("{}/", s.config.public_url));
    if !(u.scheme() == "https" || (u.scheme() == "http" && (loopback(&u) || own))) {
        return Err(format!("the CDS service URL '{}' must be https (http only on this machine: patients' data is sent there)", endpoint.url));
    }
    if endpoint.id.is_empty() || !endpoint.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!("the CDS service id '{}' must be letters, digits and '-'", endpoint.id));
    }
    let value = serde_json::to_string(endpoint).map_err(|e| e.to_string())?;
    s.store.auth_put(SERVICE_KIND, &endpoint.id, &value, None, None).await.map_err(|e| e.to_string())
}

/// Changes one registered service with `change` applied to the record as it is now, written only if
/// nobody changed it meanwhile (else read and changed again): an administrator injecting a fault while
/// another disables the service (or `kindling cds` does) both stand. The changed registration, or `None`
/// when there is no such service.
pub async fn change_endpoint(s: &Shared, id: &str, change: impl Fn(&mut CdsEndpoint)) -> Result<Option<CdsEndpoint>, String> {
    for _ in 0..32 {
        let Some(record) = s.store.auth_get(SERVICE_KIND, id).await.map_err(|e| e.to_string())? else { return Ok(None) };
        let Ok(mut endpoint) = serde_json::from_str::<CdsEndpoint>(&record.value) else { return Ok(None) };
        change(&mut endpoint);
        let value = serde_json::to_string(&endpoint).map_err(|e| e.to_string())?;
        if s.store.auth_replace(SERVICE_KIND, id, &record.value, &value, None).await.map_err(|e| e.to_string())? {
            return Ok(Some(endpoint));
        }
    }
    Err("the service's registration kept changing; try again".into())
}

/// Removes a service.
pub async fn remove(s: &Shared, id: &str) -> Result<(), store::StoreError> {
    s.store.auth_delete(SERVICE_KIND, id).await
}

/// Every registered service.
pub async fn endpoints(s: &Shared) -> Result<Vec<CdsEndpoint>, store::StoreError> {
    let mut all: Vec<CdsEndpoint> = s.store.auth_list(SERVICE_KIND).await?.into_iter().filter_map(|(_, r)| serde_json::from_str(&r.value).ok()).collect();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(all)
}

/// The client every call goes through: the per-request timeout, no redirects. `None` if it cannot be made.
fn http() -> Option<&'static reqwest::Client> {
    static HTTP: std::sync::OnceLock<Option<reqwest::Client>> = std::sync::OnceLock::new();
    HTTP.get_or_init(|| match reqwest::Client::builder().timeout(TIMEOUT).redirect(reqwest::redirect::Policy::none()).build() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(error = %e, "the CDS Hooks HTTP client could not be made");
            None
        }
    })
    .as_ref()
}

/// What one service's call came to, for the chart.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The registration it belongs to.
    pub endpoint: String,
    /// The URL called.
    pub url: String,
    /// The service's id at that registration (what `url` was made from).
    pub service_id: String,
    /// The call's `hookInstance`.
    pub hook_instance: String,
    /// The service, as people know it.
    pub service: String,
    /// Its cards, read.
    pub cards: Vec<Card>,
    /// What went wrong, in plain words (the chart says it and goes on).
    pub problem: Option<String>,
}

/// Fills a prefetch template; `None` when it names a value this call does not have.
pub fn fill_template(template: &str, patient: &str, user: &str) -> Option<String> {
    let practitioner = user.strip_prefix("Practitioner/").unwrap_or_default();
    let mut out = template.replace("{{context.patientId}}", patient).replace("{{context.userId}}", user);
    if !practitioner.is_empty() {
        out = out.replace("{{userPractitionerId}}", practitioner);
    }
    (!out.contains("{{")).then_some(out)
}

/// The access a chart's prefetch has: the chart's patient only (their compartment), as the user's rights
/// let any app read it (rights bound apps at the patient level as at the user level), as the FHIR API
/// would judge a patient-scoped token of theirs.
fn prefetch_access(user: &auth::model::User, patient: &str) -> api::access::TokenAccess {
    let mut scopes = smart::ScopeSet::parse(user.rights.as_deref().unwrap_or("patient/*.rs"));
    for sc in scopes.scopes.iter_mut() {
        if let smart::Scope::Resource(r) = sc {
            r.level = smart::Level::Patient;
        }
    }
    api::access::TokenAccess {
        client_id: "kindling-cds-prefetch".into(),
        scopes,
        patient: Some(patient.to_string()),
        fhir_user: Some(user.fhir_user.clone()),
        launch: None,
        faults: None,
        vendor: None,
        audience: None,
    }
}

/// One prefetch: a read (`Type/id`) or a search (`Type?…`) of the chart's patient's record, judged by the
/// FHIR API's own policy for `access` (compartment, rights, chains and `_has` included). `None`: the key is
/// left out (not allowed, not supported, too large or failed, or not found other than the chart's patient
/// and the user's own record — CDS Hooks: a key the client does not satisfy is not sent); `Some(null)`: a
/// read of the chart's patient or the user's record that found nothing.
async fn prefetch(s: &Shared, access: &api::access::TokenAccess, query: &str) -> Option<Value> {
    use api::policy::{Compartment, Content, Verdict};
    let base = &s.config.fhir_base;
    let (path, params) = query.split_once('?').unwrap_or((query, ""));
    let patient = access.patient.as_deref().unwrap_or_default();
    if let Some((ty, id)) = path.split_once('/') {
        if !params.is_empty() || !fhir::types::is_storable_type(ty) || !fhir::types::is_valid_id(id) {
            return None;
        }
        let stored = match s.store.read(ty, id).await.ok()? {
            Some(r) if !r.deleted => r,
            // `null` (nothing there) only for the chart's own patient and the user's own record: for any
            // other id it would tell a service, from a template it wrote, whether that record exists while
            // one it may not read is left out. Left out, it tells nothing.
            _ if (ty == "Patient" && id == patient) || access.fhir_user.as_deref() == Some(path) => return Some(Value::Null),
            _ => return None,
        };
        let judge = |c: Compartment| api::policy::decide(access, base, smart::Interaction::Read, ty, id, c, Content::Stored(&stored.json));
        let allowed = match judge(Compartment::Ask).ok()? {
            Verdict::Allowed => true,
            Verdict::Probe => judge(Compartment::Known(s.store.in_patient_compartment(stored.key, patient).await.ok()?)) == Ok(Verdict::Allowed),
        };
        return if allowed { serde_json::from_str(&stored.json).ok() } else { None };
    }
    if !fhir::types::is_storable_type(path) {
        return None;
    }
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(params.as_bytes()).into_owned().collect();
    let explicit_count = pairs.iter().any(|(k, _)| k == "_count");
    let opts = fhir::query::ParseOptions { lenient: false, base: Some(base), now_ms: s.now_ms() };
    let mut q = fhir::query::parse(path, &pairs, opts).ok()?;
    if !q.include.is_empty() || !q.revinclude.is_empty() {
        // Not prefetched here: the key is left out rather than answered in part.
        return None;
    }
    api::policy::restrict_search(access, base, s.now_ms(), &mut q).ok()?;
    let keys = s.store.search(&q).await.ok()?;
    let limit = if explicit_count { q.count } else { MAX_PREFETCH };
    if !explicit_count && keys.len() > MAX_PREFETCH {
        return None;
    }
    let found = s.store.fetch(&keys[..keys.len().min(limit)]).await.ok()?;
    // Every result judged as a read of it would be (the search was already narrowed to what is allowed).
    let mut entries = Vec::new();
    for r in found {
        let judge = |c: Compartment| api::policy::decide(access, base, smart::Interaction::Read, &r.resource_type, &r.id, c, Content::Stored(&r.json));
        let allowed = match judge(Compartment::Ask) {
            Ok(Verdict::Allowed) => true,
            Ok(Verdict::Probe) => judge(Compartment::Known(s.store.in_patient_compartment(r.key, patient).await.ok()?)) == Ok(Verdict::Allowed),
            Err(_) => false,
        };
        if allowed && let Ok(resource) = serde_json::from_str::<Value>(&r.json) {
            entries.push(json!({"fullUrl": format!("{base}/{}/{}", r.resource_type, r.id), "resource": resource}));
        }
    }
    Some(json!({"resourceType": "Bundle", "type": "searchset", "total": keys.len(), "entry": entries}))
}

/// Reads a service's answer: the cards it sent that hold together, and how many did not.
fn read_cards(body: &Value) -> Option<(Vec<Card>, usize)> {
    let raw = body.get("cards")?.as_array()?;
    let mut good = Vec::new();
    for c in raw {
        match serde_json::from_value::<Card>(c.clone()) {
            Ok(mut card) if !card.summary.trim().is_empty() && matches!(card.indicator.as_str(), "info" | "warning" | "critical") => {
                // CDS Hooks: a summary under 140 characters.
                if card.summary.chars().count() >= 140 {
                    card.summary = card.summary.chars().take(138).chain(['…']).collect();
                }
                card.links.retain(|l| matches!(l.kind.as_str(), "absolute" | "smart"));
                good.push(card);
            }
            _ => {}
        }
    }
    let bad = raw.len() - good.len();
    Some((good, bad))
}

/// The services of a discovery document, read one by one (a malformed entry is skipped).
fn read_discovery(body: &Value) -> Option<Vec<client::cds::Service>> {
    Some(body.get("services")?.as_array()?.iter().filter_map(|v| serde_json::from_value(v.clone()).ok()).collect())
}

/// Text a service wrote, fit for one line of the audit trail or the chart: no control characters, bounded.
fn plain(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// A registration's discovery document, reused for a few minutes.
async fn discovery(endpoint: &CdsEndpoint) -> Result<Vec<client::cds::Service>, CallProblem> {
    type Cache = std::sync::Mutex<HashMap<String, (std::time::Instant, Vec<client::cds::Service>)>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some((at, services)) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&endpoint.url)
        && at.elapsed() < DISCOVERY_TTL
    {
        return Ok(services.clone());
    }
    let http = http().ok_or(CallProblem::Unreachable)?;
    let services = read_discovery(&fetch_json(http.get(&endpoint.url)).await?).ok_or(CallProblem::Garbled)?;
    cache.lock().unwrap_or_else(|p| p.into_inner()).insert(endpoint.url.clone(), (std::time::Instant::now(), services.clone()));
    Ok(services)
}

/// A service's URL: the registration's, then the service id as one path segment.
fn service_url(endpoint: &CdsEndpoint, id: &str) -> Option<String> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')) || id == "." || id == ".." {
        return None;
    }
    let mut u = url::Url::parse(&endpoint.url).ok()?;
    u.path_segments_mut().ok()?.pop_if_empty().push(id);
    Some(u.to_string())
}

/// The feedback address of a service at `service_url`: one more path segment, before any query string.
fn feedback_url(service_url: &str) -> Option<String> {
    let mut u = url::Url::parse(service_url).ok()?;
    u.path_segments_mut().ok()?.pop_if_empty().push("feedback");
    Some(u.to_string())
}

/// Calls one service's `hook` for `patient`, as `user`, with the hook's own `context` fields besides
/// `userId` and `patientId`.
async fn call_service(
    s: &Shared,
    endpoint: &CdsEndpoint,
    service: &client::cds::Service,
    user: &auth::model::User,
    patient: &str,
    extra: &Map<String, Value>,
    deadline: tokio::time::Instant,
) -> Outcome {
    let label = plain(service.title.as_deref().unwrap_or(&service.id));
    let hook_instance = uuid::Uuid::new_v4().to_string();
    let url = service_url(endpoint, &service.id);
    let failed = |problem: String| Outcome {
        endpoint: endpoint.id.clone(),
        url: url.clone().unwrap_or_default(),
        service_id: service.id.clone(),
        hook_instance: hook_instance.clone(),
        service: label.clone(),
        cards: Vec::new(),
        problem: Some(problem),
    };
    let Some(url) = url.clone() else {
        return failed(format!("{} lists a service whose id cannot be called.", plain(&endpoint.name)));
    };
    let Some(http) = http() else { return failed(format!("{label} could not be called.")) };
    let injected = |o: Outcome| Outcome { problem: o.problem.map(|p| format!("{p} (a fault injected by the EHR)")), ..o };
    let started = std::time::Instant::now();
    let audit = |outcome: &Outcome, prefetched: Vec<&String>, token_scope: Option<&str>| {
        s.audit("cds-hook").user(user.username.as_str()).patient(Some(patient)).record(format!(
            "{} to {url}{}: {} card(s){}, prefetched {prefetched:?}{}, in {:.0} ms",
            service.hook,
            if endpoint.fault.is_none() { String::new() } else { format!(" (injected fault: {})", endpoint.fault.name()) },
            outcome.cards.len(),
            outcome.problem.as_deref().map(|p| format!(" ({p})")).unwrap_or_default(),
            token_scope.map(|sc| format!(", fhirAuthorization {sc}")).unwrap_or_default(),
            started.elapsed().as_secs_f64() * 1000.0
        ));
    };
    // Faults the EHR answers itself: nothing is prefetched, no token made, nothing sent.
    let answered_here = match endpoint.fault {
        CdsFault::Slow => {
            // Held past the per-request limit, yet ended before the section's deadline so it is told.
            let until = (tokio::time::Instant::now() + TIMEOUT).min(deadline - Duration::from_millis(150));
            tokio::time::sleep_until(until).await;
            Some(injected(failed(CallProblem::Slow.described(&label))))
        }
        CdsFault::Error => Some(injected(failed(CallProblem::Status(503).described(&label)))),
        CdsFault::Garbled => {
            let (cards, bad) =
                read_cards(&json!({"cards": [{"summary": 3, "indicator": "info"}, {"summary": "No source", "indicator": "hard-stop"}]})).unwrap_or_default();
            Some(injected(Outcome {
                cards,
                problem: Some(format!("{label} sent {bad} card(s) Kindling cannot read; they are not shown.")),
                ..failed(String::new())
            }))
        }
        CdsFault::None | CdsFault::BadJwt => None,
    };
    if let Some(outcome) = answered_here {
        audit(&outcome, Vec::new(), None);
        return outcome;
    }
    let bad_jwt = endpoint.fault == CdsFault::BadJwt;
    let mut context = Map::new();
    context.insert("userId".into(), json!(user.fhir_user));
    context.insert("patientId".into(), json!(patient));
    let mut filled = Map::new();
    let mut fhir_authorization = None;
    // A call signed for another service carries no health data: no prefetch, no draft orders, no token.
    if !bad_jwt {
        context.extend(extra.clone());
        let access = prefetch_access(user, patient);
        for (key, template) in &service.prefetch {
            if let Some(q) = template.as_str().and_then(|t| fill_template(t, patient, &user.fhir_user))
                && let Some(value) = prefetch(s, &access, &q).await
            {
                filled.insert(key.clone(), value);
            }
        }
        // A token for the service's own FHIR reads, when it is registered as a client.
        if let Some(client) = &endpoint.client_id {
            match auth::cds_authorization(s, client, user, patient, &wanted_scopes(service)).await {
                Ok(token) => fhir_authorization = token,
                Err(e) => tracing::warn!(error = %e, service = %endpoint.id, "no fhirAuthorization for a CDS Hooks call"),
            }
        }
    }
    let request = HookRequest {
        hook: service.hook.clone(),
        hook_instance: hook_instance.clone(),
        fhir_server: Some(s.config.fhir_base.clone()),
        fhir_authorization,
        context,
        prefetch: filled,
    };
    let now = s.now_ms() / 1000;
    let audience = if bad_jwt { format!("{url}-another-service") } else { url.clone() };
    let claims = json!({"iss": s.config.fhir_base, "aud": audience, "exp": now + 300, "iat": now, "jti": uuid::Uuid::new_v4().to_string()});
    let outcome = match s.keys.sign_jwt_rs384(&claims, &s.config.endpoint("jwks")) {
        Err(e) => {
            tracing::error!(error = %e, "a CDS Hooks call could not be signed");
            failed(format!("The call to {label} could not be signed; the EHR works without it."))
        }
        Ok(jwt) => match fetch_json(http.post(&url).bearer_auth(jwt).json(&request)).await {
            // The rehearsal's point: a service that accepts a JWT for another audience has a bug to fix.
            Ok(_) if bad_jwt => failed(format!("{label} accepted a call whose JWT is for another service's URL: it does not check aud.")),
            Ok(body) => match read_cards(&body) {
                Some((cards, 0)) => Outcome { cards, problem: None, ..failed(String::new()) },
                Some((cards, bad)) => {
                    Outcome { cards, problem: Some(format!("{label} sent {bad} card(s) Kindling cannot read; they are not shown.")), ..failed(String::new()) }
                }
                None => failed(format!("{label} sent an answer Kindling cannot read.")),
            },
            Err(problem) => failed(problem.described(&label)),
        },
    };
    let outcome = if bad_jwt { injected(outcome) } else { outcome };
    audit(&outcome, request.prefetch.keys().collect(), request.fhir_authorization.as_ref().and_then(|a| a["scope"].as_str()));
    outcome
}

/// Why a call gave nothing.
enum CallProblem {
    Slow,
    Unreachable,
    Status(u16),
    Garbled,
}

impl CallProblem {
    fn described(&self, service: &str) -> String {
        let secs = TIMEOUT.as_millis() as f64 / 1000.0;
        match self {
            CallProblem::Slow => format!("{service} did not answer within {secs} seconds; the chart works without it."),
            CallProblem::Unreachable => format!("{service} could not be reached; the chart works without it."),
            CallProblem::Status(code) => format!("{service} failed (HTTP {code}); the chart works without it."),
            CallProblem::Garbled => format!("{service} sent an answer Kindling cannot read."),
        }
    }
}

/// A JSON answer of at most [`MAX_BODY`] bytes (read piece by piece: a larger one is refused as it comes).
async fn fetch_json(request: reqwest::RequestBuilder) -> Result<Value, CallProblem> {
    let slow_or = |e: reqwest::Error, other: CallProblem| if e.is_timeout() { CallProblem::Slow } else { other };
    let mut response = request.send().await.map_err(|e| slow_or(e, CallProblem::Unreachable))?;
    if !response.status().is_success() {
        return Err(CallProblem::Status(response.status().as_u16()));
    }
    if response.content_length().is_some_and(|n| n as usize > MAX_BODY) {
        return Err(CallProblem::Garbled);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| slow_or(e, CallProblem::Garbled))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            return Err(CallProblem::Garbled);
        }
    }
    serde_json::from_slice(&body).map_err(|_| CallProblem::Garbled)
}

/// Every enabled service's `patient-view` cards for `patient`: see [`fire`].
pub async fn patient_view(s: &Shared, user: &auth::model::User, patient: &str) -> Vec<Outcome> {
    fire(s, user, patient, "patient-view", &Map::new()).await
}

/// Every enabled service's cards for `hook` on `patient`, with the hook's own `context` fields (`extra`):
/// discovery, then every service of that hook called at once, all within [`DEADLINE`]; what has not
/// answered by then is named as slow.
pub async fn fire(s: &Shared, user: &auth::model::User, patient: &str, hook: &str, extra: &Map<String, Value>) -> Vec<Outcome> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let endpoints: Vec<CdsEndpoint> = match endpoints(s).await {
        Ok(e) => e.into_iter().filter(|e| !e.disabled).collect(),
        Err(e) => {
            tracing::error!(error = %e, "the CDS services could not be listed");
            return vec![Outcome {
                service: "Decision support".into(),
                problem: Some("The decision-support services could not be listed; the EHR works without them.".into()),
                ..Outcome::default()
            }];
        }
    };
    let mut outcomes = Vec::new();
    let mut found = tokio::task::JoinSet::new();
    for (i, endpoint) in endpoints.iter().cloned().enumerate() {
        found.spawn(async move { (i, discovery(&endpoint).await) });
    }
    let mut services: Vec<(usize, client::cds::Service)> = Vec::new();
    let mut answered = vec![false; endpoints.len()];
    while let Ok(Some(done)) = tokio::time::timeout_at(deadline, found.join_next()).await {
        let Ok((i, result)) = done else { continue };
        answered[i] = true;
        let endpoint = &endpoints[i];
        match result {
            Ok(list) => services.extend(list.into_iter().filter(|sv| sv.hook == hook).take(MAX_SERVICES).map(|sv| (i, sv))),
            Err(problem) => {
                let name = plain(&endpoint.name);
                s.audit("cds-hook").user(user.username.as_str()).patient(Some(patient)).record(format!(
                    "discovery of {}: {}",
                    endpoint.url,
                    problem.described(&name)
                ));
                outcomes.push((
                    i,
                    usize::MAX,
                    Outcome { endpoint: endpoint.id.clone(), service: name.clone(), problem: Some(problem.described(&name)), ..Outcome::default() },
                ));
            }
        }
    }
    found.abort_all();
    for (i, _) in endpoints.iter().enumerate().filter(|(i, _)| !answered[*i]) {
        let name = plain(&endpoints[i].name);
        outcomes.push((
            i,
            usize::MAX,
            Outcome { endpoint: endpoints[i].id.clone(), service: name.clone(), problem: Some(CallProblem::Slow.described(&name)), ..Outcome::default() },
        ));
    }
    let mut calls = tokio::task::JoinSet::new();
    let labels: Vec<String> = services.iter().map(|(_, sv)| plain(sv.title.as_deref().unwrap_or(&sv.id))).collect();
    for (n, (i, service)) in services.iter().cloned().enumerate() {
        let (s, user, patient, endpoint, extra) = (s.clone(), user.clone(), patient.to_string(), endpoints[i].clone(), extra.clone());
        calls.spawn(async move { (i, n, call_service(&s, &endpoint, &service, &user, &patient, &extra, deadline).await) });
    }
    let mut done = vec![false; services.len()];
    while let Ok(Some(result)) = tokio::time::timeout_at(deadline, calls.join_next()).await {
        if let Ok((i, n, outcome)) = result {
            done[n] = true;
            outcomes.push((i, n, outcome));
        }
    }
    calls.abort_all();
    for (n, (i, _)) in services.iter().enumerate().filter(|(n, _)| !done[*n]) {
        let outcome = Outcome {
            endpoint: endpoints[*i].id.clone(),
            service: labels[n].clone(),
            problem: Some(CallProblem::Slow.described(&labels[n])),
            ..Outcome::default()
        };
        outcomes.push((*i, n, outcome));
    }
    outcomes.sort_by_key(|(i, n, _)| (*i, *n));
    outcomes.into_iter().map(|(_, _, o)| o).collect()
}

/// The cards a chart showed, kept for their SMART links.
#[derive(Debug, Serialize, Deserialize)]
struct ShownCards {
    username: String,
    patient: String,
    /// When the chart showed them (Unix ms).
    shown_at: i64,
    cards: Vec<ShownCard>,
}

/// A card, with the call that brought it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ShownCard {
    /// The registration whose service sent it.
    pub endpoint: String,
    /// The service's URL.
    pub url: String,
    /// The service's id at that registration (records from before it have none: the URL's last segment).
    #[serde(default)]
    pub service_id: String,
    /// The call's `hookInstance`.
    pub hook_instance: String,
    /// The hook called (records from before order entry have none: `patient-view`).
    #[serde(default)]
    pub hook: String,
    pub card: Card,
}

impl ShownCard {
    /// The cards of every outcome, with the calls that brought them.
    pub fn of(outcomes: Vec<Outcome>, hook: &str) -> Vec<ShownCard> {
        outcomes
            .into_iter()
            .flat_map(|o| {
                o.cards.into_iter().map(move |card| ShownCard {
                    endpoint: o.endpoint.clone(),
                    url: o.url.clone(),
                    service_id: o.service_id.clone(),
                    hook_instance: o.hook_instance.clone(),
                    hook: hook.to_string(),
                    card,
                })
            })
            .collect()
    }
}

/// Keeps the cards a page shows for their SMART links (half an hour); returns the reference the page's
/// forms carry.
pub(crate) async fn keep_shown(s: &Shared, username: &str, patient: &str, cards: &[ShownCard]) -> Result<String, store::StoreError> {
    let reference = auth::crypto::random_token();
    if !cards.is_empty() {
        let shown = ShownCards { username: username.to_string(), patient: patient.to_string(), shown_at: s.now_ms(), cards: cards.to_vec() };
        let value = serde_json::to_string(&shown).unwrap_or_default();
        s.store.auth_put(CARDS_KIND, &auth::crypto::token_hash(&reference), &value, None, Some(s.now_ms() + CARDS_TTL_MS)).await?;
    }
    Ok(reference)
}

/// The apps a card's SMART link may open: enabled apps registered by an administrator, found by their
/// launch URL, and the registrations that say which of them their services' cards may open. Used both
/// to name the app on the card's button and to launch it, so the two never disagree.
pub(crate) struct Launchable {
    apps: Vec<auth::model::Client>,
    endpoints: Vec<CdsEndpoint>,
}

impl Launchable {
    pub async fn load(s: &Shared) -> Result<Launchable, store::StoreError> {
        let apps = auth::registry::list_clients(s.store.as_ref()).await?.into_iter().filter(|c| !c.disabled && !c.self_registered).collect();
        Ok(Launchable { apps, endpoints: endpoints(s).await? })
    }

    /// The app a link to `url` on a card from `endpoint`'s service opens, or why none does (in words).
    pub fn app_for(&self, endpoint: &str, url: &str) -> Result<&auth::model::Client, String> {
        let norm = |u: &str| u.trim_end_matches('/').to_string();
        let matching: Vec<&auth::model::Client> = self.apps.iter().filter(|c| c.launch_url.as_deref().map(norm) == Some(norm(url))).collect();
        let client = match matching.as_slice() {
            [one] => *one,
            [] => return Err(format!("No registered app opens at {}.", plain(url))),
            _ => return Err(format!("Several registered apps open at {}: which one is meant cannot be told.", plain(url))),
        };
        // The service's registration names the apps its cards may open (none named: any registered app).
        let allowed = self.endpoints.iter().find(|e| e.id == endpoint).is_some_and(|e| e.apps.is_empty() || e.apps.contains(&client.client_id));
        if !allowed {
            return Err(format!("This decision-support service may not open {}.", client.name));
        }
        Ok(client)
    }
}

/// A card as a page shows it; its SMART links name the app they open (or say why none opens).
pub(crate) fn card_view(index: usize, shown: ShownCard, apps: &Launchable) -> CardView {
    let (endpoint, c) = (shown.endpoint, shown.card);
    CardView {
        index,
        summary: c.summary,
        indicator_label: match c.indicator.as_str() {
            "critical" => "Critical",
            "warning" => "Warning",
            _ => "Information",
        },
        indicator: c.indicator,
        source_url: c.source.url.as_deref().and_then(web_url),
        source: c.source.label,
        detail: c.detail.as_deref().map(safe_markdown).unwrap_or_default(),
        links: c
            .links
            .into_iter()
            .enumerate()
            .filter_map(|(li, l)| match l.kind.as_str() {
                "smart" => {
                    let opens = apps.app_for(&endpoint, &l.url).map(|c| c.name.clone());
                    Some(LinkView { index: li, label: l.label, url: l.url, smart: true, opens })
                }
                "absolute" => web_url(&l.url).map(|url| LinkView { index: li, label: l.label, url, smart: false, opens: Ok(String::new()) }),
                _ => None,
            })
            .collect(),
    }
}

/// Posts feedback on a card to its service (`{service URL}/feedback`), signed as hook calls are, in the
/// background (the clinician does not wait for it); what came of it is audited. Cards without a `uuid`
/// cannot be told apart by their service and get none.
pub(crate) fn send_feedback(s: &Shared, username: &str, patient: &str, shown: &ShownCard, item: client::cds::FeedbackItem) {
    if shown.card.uuid.is_none() || shown.url.is_empty() {
        return;
    }
    let (s, username, patient, endpoint) = (s.clone(), username.to_string(), patient.to_string(), shown.endpoint.clone());
    let service_at = shown.url.clone();
    let id = match shown.service_id.as_str() {
        "" => service_at.rsplit('/').next().unwrap_or_default().to_string(),
        id => id.to_string(),
    };
    // `{service}/feedback`, as a path segment: a registration's URL may carry a query string.
    let url = feedback_url(&service_at).unwrap_or_default();
    tokio::spawn(async move {
        // Only to a service still registered, enabled and at the address that sent the card: a registration
        // pointed elsewhere since (cards are kept for hours) gets no clinician's comments for another host.
        let registered = endpoints(&s)
            .await
            .is_ok_and(|all| all.iter().any(|e| e.id == endpoint && !e.disabled && service_url(e, &id).as_deref() == Some(service_at.as_str())));
        let result = if !registered || url.is_empty() {
            Err("the service is no longer enabled at the address that sent the card".to_string())
        } else if let Some(http) = http() {
            let now = s.now_ms() / 1000;
            let claims = json!({"iss": s.config.fhir_base, "aud": url, "exp": now + 300, "iat": now, "jti": uuid::Uuid::new_v4().to_string()});
            match s.keys.sign_jwt_rs384(&claims, &s.config.endpoint("jwks")) {
                Ok(jwt) => match http.post(&url).bearer_auth(jwt).json(&client::cds::Feedback { feedback: vec![item.clone()] }).send().await {
                    Ok(r) if r.status().is_success() => Ok(r.status().as_u16()),
                    Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
                    Err(e) if e.is_timeout() => Err("no answer in time".into()),
                    Err(_) => Err("unreachable".into()),
                },
                Err(e) => Err(format!("not signed ({e})")),
            }
        } else {
            Err("no HTTP client".into())
        };
        let told = match result {
            Ok(code) => format!("HTTP {code}"),
            Err(problem) => format!("not delivered: {problem}"),
        };
        s.audit("cds-feedback").user(username.as_str()).patient(Some(patient.as_str())).record(format!("{} card {} to {url}: {told}", item.outcome, item.card));
    });
}

/// A card as the chart shows it.
pub(crate) struct CardView {
    pub index: usize,
    pub summary: String,
    pub indicator: String,
    pub indicator_label: &'static str,
    pub source: String,
    pub source_url: Option<String>,
    pub detail: String,
    pub links: Vec<LinkView>,
}

/// A card's link as the chart shows it.
pub(crate) struct LinkView {
    pub index: usize,
    pub label: String,
    pub url: String,
    pub smart: bool,
    /// For a SMART link: the name of the app it opens, or why none opens.
    pub opens: Result<String, String>,
}

/// A web address a card may link to: `https`, or `http` on this machine.
fn web_url(u: &str) -> Option<String> {
    url::Url::parse(u).ok().filter(|u| u.scheme() == "https" || (u.scheme() == "http" && loopback(u))).map(|u| u.to_string())
}

#[derive(Template)]
#[template(path = "cds_cards.html")]
struct CardsFragment {
    csrf: String,
    reference: String,
    cards: Vec<CardView>,
    problems: Vec<String>,
    services: usize,
}

/// `GET /ehr/patients/{id}/cds`: the chart's decision-support cards (an HTML fragment the chart loads).
pub(crate) async fn chart_cards(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let fragment = |html: &str| {
        let mut r = Html(format!("<div id=\"cds-cards\"><p class=\"muted\">{html}</p></div>")).into_response();
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    };
    let sess = match clinician(&s, &headers).await {
        Ok(x) => x,
        // Loaded into the chart by htmx: a sentence in its place, not the sign-in page inside the chart.
        Err(_) if headers.contains_key("hx-request") => return fragment("Your session has ended: sign in again to see decision support."),
        Err(r) => return r,
    };
    if !fhir::types::is_valid_id(&id) || s.store.read("Patient", &id).await.ok().flatten().is_none_or(|r| r.deleted) {
        return fragment("No such patient.");
    }
    let services = match endpoints(&s).await {
        Ok(e) => e.iter().filter(|e| !e.disabled).count(),
        Err(e) => return internal(e),
    };
    let outcomes = patient_view(&s, &sess.user, &id).await;
    let problems: Vec<String> = outcomes.iter().filter_map(|o| o.problem.clone()).collect();
    let cards = ShownCard::of(outcomes, "patient-view");
    let reference = match keep_shown(&s, &sess.user.username, &id, &cards).await {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let apps = match Launchable::load(&s).await {
        Ok(a) => a,
        Err(e) => return internal(e),
    };
    let views = cards.into_iter().enumerate().map(|(index, c)| card_view(index, c, &apps)).collect();
    let fragment = CardsFragment { csrf: sess.csrf.clone(), reference, cards: views, problems, services };
    match fragment.render() {
        Ok(html) => {
            let mut r = Html(html).into_response();
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => internal(e),
    }
}

/// `POST /ehr/cds/launch`: a card's SMART link, launched as the app registered at that URL, on the card's
/// patient, with the card's `appContext`.
pub(crate) async fn launch_from_card(State(s): State<Shared>, headers: HeaderMap, axum::Form(p): axum::Form<Params>) -> Response {
    let sess = match clinician(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Some(r) = csrf_refusal(&sess, &p) {
        return r;
    }
    let nav = Nav::of(&sess);
    let gone = |nav: Nav| {
        message(
            nav,
            StatusCode::NOT_FOUND,
            "This card is no longer available",
            "Cards are kept for half an hour after the chart showed them.",
            "Open the chart again to see current cards.",
            "/ehr/patients",
        )
    };
    let reference = p.get("ref").map(String::as_str).unwrap_or_default();
    let shown = match s.store.auth_get(CARDS_KIND, &auth::crypto::token_hash(reference)).await {
        Ok(Some(r)) => match serde_json::from_str::<ShownCards>(&r.value) {
            Ok(c) => c,
            Err(e) => return internal(e),
        },
        Ok(None) => return gone(nav),
        Err(e) => return internal(e),
    };
    // Cards are the user's who saw them.
    if shown.username != sess.user.username {
        return gone(nav);
    }
    let back = format!("/ehr/patients/{}", shown.patient);
    let index = |k: &str| p.get(k).and_then(|v| v.parse::<usize>().ok());
    let card = index("card").and_then(|c| shown.cards.get(c));
    let Some((shown_card, link)) = card.and_then(|c| index("link").and_then(|l| c.card.links.get(l)).map(|l| (c, l))).filter(|(_, l)| l.kind == "smart") else {
        return message(nav, StatusCode::BAD_REQUEST, "This link cannot be opened", "The card has no such app link.", "Go back to the chart.", &back);
    };
    let refuse = |why: String| {
        message(
            Nav::of(&sess),
            StatusCode::BAD_REQUEST,
            "The card links to an app this EHR will not open",
            &why,
            "Ask an administrator, or open the app from the chart's Apps panel.",
            &back,
        )
    };
    if link.app_context.as_ref().is_some_and(|c| c.len() > MAX_APP_CONTEXT) {
        return refuse(format!("The card hands the app more than {MAX_APP_CONTEXT} characters of context."));
    }
    let apps = match Launchable::load(&s).await {
        Ok(a) => a,
        Err(e) => return internal(e),
    };
    let client = match apps.app_for(&shown_card.endpoint, &link.url) {
        Ok(c) => c.clone(),
        Err(why) => return refuse(why),
    };
    let context = LaunchContext {
        client_id: Some(client.client_id.clone()),
        username: Some(sess.user.username.clone()),
        patient: Some(shown.patient.clone()),
        need_patient_banner: Some(true),
        app_context: link.app_context.clone(),
        profile: Some(client.profile.clone().filter(|d| s.config.profiles.get(d.as_str()).is_some()).unwrap_or_default()),
        ..LaunchContext::default()
    };
    match auth::launch::check_context(&s, &context).await {
        Ok(Ok(())) => {}
        Ok(Err(problem)) => return message(nav, StatusCode::BAD_REQUEST, "This launch cannot be made", &problem.to_string(), "Go back to the chart.", &back),
        Err(e) => return internal(e),
    }
    let created = match auth::launch::new_launch(&s, &context).await {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    let Some(mut url) = client.launch_url.as_deref().and_then(|u| url::Url::parse(u).ok()) else {
        return message(
            nav,
            StatusCode::BAD_REQUEST,
            "This app's launch URL is not valid",
            "The registered launch URL cannot be opened.",
            "Ask your administrator.",
            &back,
        );
    };
    let iss = s.config.fhir_base_for(&context.profile.clone().unwrap_or_default());
    url.query_pairs_mut().append_pair("iss", &iss).append_pair("launch", &created.handle);
    // The launch inspector tells the story from the call whose card led here.
    let c = &shown_card.card;
    s.audit("cds-hook").at(shown.shown_at).launch(Some(created.id.as_str())).user(sess.user.username.as_str()).patient(Some(shown.patient.as_str())).record(
        format!(
            "{} to {} (hookInstance {}) answered with the {} card “{}” from {}",
            if shown_card.hook.is_empty() { "patient-view" } else { shown_card.hook.as_str() },
            shown_card.url,
            shown_card.hook_instance,
            plain(&c.indicator),
            plain(&c.summary),
            plain(&c.source.label)
        ),
    );
    s.audit("cds-launch")
        .launch(Some(created.id.as_str()))
        .client(client.client_id.as_str())
        .user(sess.user.username.as_str())
        .patient(Some(shown.patient.as_str()))
        .record(format!(
            "“{}” opens {} with appContext {}",
            plain(&link.label),
            client.name,
            link.app_context.as_deref().map(plain).unwrap_or_else(|| "(none)".into())
        ));
    Redirect::to(url.as_str()).into_response()
}

/// `POST /ehr/cds/{id}/fault`: injects a fault into the EHR's calls to a service (or none).
pub(crate) async fn service_fault(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>, axum::Form(p): axum::Form<Params>) -> Response {
    let sess = match administrator(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Some(r) = csrf_refusal(&sess, &p) {
        return r;
    }
    let Some(fault) = p.get("fault").and_then(|f| CdsFault::parse(f)) else {
        return services_page(&s, &sess, StatusCode::BAD_REQUEST, Some("Choose a fault from the list.".into()), None, ServiceForm::default()).await;
    };
    let endpoint = match change_endpoint(&s, &id, |e| e.fault = fault).await {
        Ok(Some(e)) => e,
        Ok(None) => return no_such_service(&sess),
        Err(why) => return services_page(&s, &sess, StatusCode::CONFLICT, Some(why), None, ServiceForm::default()).await,
    };
    s.audit("cds-fault").user(sess.user.username.as_str()).record(format!("decision-support service {}: injected fault {}", endpoint.id, fault.name()));
    Redirect::to("/ehr/cds").into_response()
}

/// A registration as the services page lists it.
pub(crate) struct ServiceRow {
    pub id: String,
    pub name: String,
    pub url: String,
    pub apps: String,
    /// Its OAuth client (`fhirAuthorization`), or empty.
    pub client: String,
    /// The fault injected into calls to it (`none`).
    pub fault: &'static str,
    pub disabled: bool,
}

/// The services page's registration form, as typed.
#[derive(Default)]
pub(crate) struct ServiceForm {
    pub id: String,
    pub name: String,
    pub url: String,
    pub apps: String,
    pub client: String,
}

#[derive(Template)]
#[template(path = "cds_services.html")]
struct ServicesPage {
    nav: Nav,
    services: Vec<ServiceRow>,
    error: Option<String>,
    notice: Option<String>,
    form: ServiceForm,
    /// The faults that can be injected: (name, label).
    faults: Vec<(&'static str, &'static str)>,
}

async fn services_page(s: &Shared, sess: &Session, status: StatusCode, error: Option<String>, notice: Option<String>, form: ServiceForm) -> Response {
    let services = match endpoints(s).await {
        Ok(all) => all
            .into_iter()
            .map(|e| ServiceRow {
                apps: if e.apps.is_empty() { "any registered app".into() } else { e.apps.join(", ") },
                client: e.client_id.unwrap_or_default(),
                fault: e.fault.name(),
                id: e.id,
                name: e.name,
                url: e.url,
                disabled: e.disabled,
            })
            .collect(),
        Err(e) => return internal(e),
    };
    let faults = CdsFault::ALL.iter().map(|(_, n, l)| (*n, *l)).collect();
    render(status, &ServicesPage { nav: Nav::of(sess), services, error, notice, form, faults })
}

/// `GET /ehr/cds`: the registered decision-support services and a form to register one (administrators).
pub(crate) async fn services(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let sess = match administrator(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    services_page(&s, &sess, StatusCode::OK, None, None, ServiceForm::default()).await
}

/// `POST /ehr/cds`: registers (or updates) a service.
pub(crate) async fn service_create(State(s): State<Shared>, headers: HeaderMap, axum::Form(p): axum::Form<Params>) -> Response {
    let sess = match administrator(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Some(r) = csrf_refusal(&sess, &p) {
        return r;
    }
    let field = |k: &str| p.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
    let form = ServiceForm { id: field("id"), name: field("name"), url: field("url"), apps: field("apps"), client: field("client") };
    let apps: Vec<String> = form.apps.split_whitespace().map(str::to_string).collect();
    let mut problem = form.name.is_empty().then(|| "Give the service a name.".to_string());
    let client_id = Some(form.client.clone()).filter(|c| !c.is_empty());
    for app in apps.iter().chain(client_id.iter()) {
        match auth::registry::stored_client(s.store.as_ref(), app).await {
            Ok(Some(_)) => {}
            Ok(None) => problem = problem.or(Some(format!("No app '{app}' is registered."))),
            Err(e) => return internal(e),
        }
    }
    let endpoint = CdsEndpoint { id: form.id.clone(), name: form.name.clone(), url: form.url.clone(), disabled: false, apps, client_id, fault: CdsFault::None };
    if problem.is_none()
        && let Err(why) = register(&s, &endpoint).await
    {
        problem = Some(why);
    }
    if let Some(why) = problem {
        return services_page(&s, &sess, StatusCode::BAD_REQUEST, Some(why), None, form).await;
    }
    s.audit("cds-registered").user(sess.user.username.as_str()).record(format!("decision-support service {} at {}", endpoint.id, endpoint.url));
    let notice = format!("{} is registered: charts call it from now on.", endpoint.name);
    services_page(&s, &sess, StatusCode::CREATED, None, Some(notice), ServiceForm::default()).await
}

/// The page for a service id that is not registered.
fn no_such_service(sess: &Session) -> Response {
    message(Nav::of(sess), StatusCode::NOT_FOUND, "No such service", "No decision-support service has this id.", "Pick one from the list.", "/ehr/cds")
}

/// `POST /ehr/cds/{id}/status`: stops calling a service, or calls it again.
pub(crate) async fn service_status(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>, axum::Form(p): axum::Form<Params>) -> Response {
    let sess = match administrator(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Some(r) = csrf_refusal(&sess, &p) {
        return r;
    }
    let disabled = p.get("status").map(String::as_str) == Some("disable");
    let endpoint = match change_endpoint(&s, &id, |e| e.disabled = disabled).await {
        Ok(Some(e)) => e,
        Ok(None) => return no_such_service(&sess),
        Err(why) => return services_page(&s, &sess, StatusCode::CONFLICT, Some(why), None, ServiceForm::default()).await,
    };
    s.audit("cds-status").user(sess.user.username.as_str()).record(format!(
        "decision-support service {} {}",
        endpoint.id,
        if endpoint.disabled { "disabled" } else { "enabled" }
    ));
    Redirect::to("/ehr/cds").into_response()
}

/// A card's Markdown detail as HTML that carries nothing but text: everything is escaped, then paragraphs,
/// `-`/`*` lists, `**bold**` and `*emphasis*` are made from the escaped text, and `[text](https://…)` links
/// open in a new tab. No raw HTML, images or other schemes (`http` included) survive.
pub fn safe_markdown(text: &str) -> String {
    fn escape(s: &str) -> String {
        s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
    }
    fn inline(s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        // Links first (on the raw text), each part escaped on its own.
        while let Some(open) = rest.find('[') {
            let Some(close) = rest[open..].find("](").map(|i| open + i) else { break };
            let Some(end) = rest[close..].find(')').map(|i| close + i) else { break };
            let (label, target) = (&rest[open + 1..close], &rest[close + 2..end]);
            out.push_str(&emphasis(&escape(&rest[..open])));
            match url::Url::parse(target).ok().filter(|u| u.scheme() == "https") {
                Some(u) => {
                    out.push_str(&format!("<a href=\"{}\" target=\"_blank\" rel=\"noopener noreferrer\">{}</a>", escape(u.as_str()), emphasis(&escape(label))))
                }
                None => out.push_str(&emphasis(&escape(label))),
            }
            rest = &rest[end + 1..];
        }
        out.push_str(&emphasis(&escape(rest)));
        out
    }
    /// `open` + each odd part + `close`: markers paired from the left around non-empty text (a last
    /// unpaired one stays text; an empty pair leaves the whole text as it was).
    fn pairs(escaped: &str, marker: &str, open: &str, close: &str, inner: fn(&str) -> String) -> String {
        let mut parts: Vec<String> = escaped.split(marker).map(str::to_string).collect();
        if parts.len().is_multiple_of(2) {
            let last = parts.pop().unwrap_or_default();
            let before = parts.pop().unwrap_or_default();
            parts.push(format!("{before}{marker}{last}"));
        }
        if parts.iter().skip(1).step_by(2).any(|p| p.trim().is_empty()) {
            return inner(escaped);
        }
        parts.iter().enumerate().map(|(i, p)| if i % 2 == 1 { format!("{open}{}{close}", inner(p)) } else { inner(p) }).collect()
    }
    fn em(escaped: &str) -> String {
        pairs(escaped, "*", "<em>", "</em>", str::to_string)
    }
    fn emphasis(escaped: &str) -> String {
        if escaped.contains("**") { pairs(escaped, "**", "<strong>", "</strong>", em) } else { em(escaped) }
    }
    let mut html = String::new();
    for block in text.replace("\r\n", "\n").split("\n\n") {
        let lines: Vec<&str> = block.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
        if lines.is_empty() {
            continue;
        }
        if lines.iter().all(|l| l.trim_start().starts_with("- ") || l.trim_start().starts_with("* ")) {
            html.push_str("<ul>");
            for l in lines {
                html.push_str(&format!("<li>{}</li>", inline(&l.trim_start()[2..])));
            }
            html.push_str("</ul>");
        } else {
            let text: Vec<String> = lines.iter().map(|l| inline(l.trim_start_matches('#').trim())).collect();
            html.push_str(&format!("<p>{}</p>", text.join("<br>")));
        }
    }
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_is_escaped_and_reduced_to_a_safe_subset() {
        let html = safe_markdown(
            "Readings:\n\n- **152/96 mmHg** on 2026-11-02\n- 148/92\n\nSee [the guideline](https://www.ahajournals.org/x) <script>alert(1)</script>",
        );
        assert_eq!(
            html,
            "<p>Readings:</p><ul><li><strong>152/96 mmHg</strong> on 2026-11-02</li><li>148/92</li></ul><p>See <a href=\"https://www.ahajournals.org/x\" target=\"_blank\" rel=\"noopener noreferrer\">the guideline</a> &lt;script&gt;alert(1)&lt;/script&gt;</p>"
        );
        assert_eq!(safe_markdown("[x](javascript:alert(1))"), "<p>x)</p>", "no other schemes");
        assert_eq!(safe_markdown("<img src=x onerror=alert(1)>"), "<p>&lt;img src=x onerror=alert(1)&gt;</p>");
        assert_eq!(safe_markdown("a ** b"), "<p>a ** b</p>");
        assert_eq!(safe_markdown("**a** and *b* and 2*3"), "<p><strong>a</strong> and <em>b</em> and 2*3</p>");
        assert_eq!(safe_markdown("[plain](http://example.org/)"), "<p>plain</p>", "https only");
        assert_eq!(
            safe_markdown("[a \"b\"](https://x.example/?q=\"><script>)"),
            "<p><a href=\"https://x.example/?q=%22%3E%3Cscript%3E\" target=\"_blank\" rel=\"noopener noreferrer\">a &quot;b&quot;</a></p>"
        );
        assert!(!safe_markdown("[**x](https://e.example/)**").contains("<strong><a"), "markers never open a tag across a link");
        assert_eq!(safe_markdown("\"quoted\" & 'single'"), "<p>&quot;quoted&quot; &amp; &#39;single&#39;</p>");
    }

    #[test]
    fn prefetch_templates_are_filled_or_left_out() {
        assert_eq!(fill_template("Patient/{{context.patientId}}", "p1", "Practitioner/d1").as_deref(), Some("Patient/p1"));
        assert_eq!(
            fill_template("Observation?patient={{context.patientId}}&performer={{userPractitionerId}}", "p1", "Practitioner/d1").as_deref(),
            Some("Observation?patient=p1&performer=d1")
        );
        assert_eq!(fill_template("Encounter/{{context.encounterId}}", "p1", "Practitioner/d1"), None, "a value this call does not have");
        assert_eq!(fill_template("PractitionerRole?practitioner={{userPractitionerId}}", "p1", "Patient/p1"), None);
    }

    #[test]
    fn answers_are_read_card_by_card() {
        let body = json!({"cards": [
            {"summary": "ok", "indicator": "info", "source": {"label": "S"}},
            {"summary": "", "indicator": "info", "source": {"label": "S"}},
            {"summary": "bad indicator", "indicator": "hard-stop", "source": {"label": "S"}},
            {"summary": "no source", "indicator": "warning"}
        ]});
        let (cards, bad) = read_cards(&body).unwrap();
        assert_eq!((cards.len(), bad), (1, 3));
        assert!(read_cards(&json!({"nope": 1})).is_none());
        let long = json!({"cards": [{"summary": "x".repeat(200), "indicator": "info", "source": {"label": "S"}}]});
        assert_eq!(read_cards(&long).unwrap().0[0].summary.chars().count(), 139, "under 140");
    }
}
