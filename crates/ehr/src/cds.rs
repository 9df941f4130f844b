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
use client::cds::{Card, Discovery, HookRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// The store kind of registered services.
const SERVICE_KIND: &str = "cds-service";
/// The store kind of the cards a chart showed (for their SMART links), kept half an hour.
const CARDS_KIND: &str = "cds-cards";
const CARDS_TTL_MS: i64 = 30 * 60 * 1000;
/// How long the chart waits for one service.
pub const TIMEOUT: Duration = Duration::from_millis(2500);
/// The most a discovery document or an answer may weigh.
const MAX_BODY: usize = 256 * 1024;

/// A decision-support service registered with the EHR: its discovery base (`…/cds-services`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CdsEndpoint {
    /// A short name for it (a slug).
    pub id: String,
    /// Its name for people.
    pub name: String,
    /// Its discovery URL (`https://cds.example/cds-services`).
    pub url: String,
    /// A disabled service is not called.
    #[serde(default)]
    pub disabled: bool,
}

/// Registers (or updates) a service.
pub async fn register(s: &Shared, endpoint: &CdsEndpoint) -> Result<(), String> {
    let valid = url::Url::parse(&endpoint.url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
    if !valid {
        return Err(format!("the CDS service URL '{}' must be an http(s) URL", endpoint.url));
    }
    if endpoint.id.is_empty() || !endpoint.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!("the CDS service id '{}' must be letters, digits and '-'", endpoint.id));
    }
    let value = serde_json::to_string(endpoint).map_err(|e| e.to_string())?;
    s.store.auth_put(SERVICE_KIND, &endpoint.id, &value, None, None).await.map_err(|e| e.to_string())
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

fn http() -> &'static reqwest::Client {
    static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    HTTP.get_or_init(|| {
        reqwest::Client::builder().timeout(TIMEOUT).redirect(reqwest::redirect::Policy::none()).build().unwrap_or_else(|_| reqwest::Client::new())
    })
}

/// What one service's call came to, for the chart.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
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

/// One prefetch: a read (`Type/id`) or a search (`Type?…`) of the record, as the user may let an app see
/// it (a type their rights bound away, or narrow by category, is `null`).
async fn prefetch(s: &Shared, user: &auth::model::User, query: &str) -> Value {
    let (ty, params) = query.split_once('?').unwrap_or((query, ""));
    let read_id = ty.split_once('/').map(|(t, id)| (t.to_string(), id.to_string()));
    let ty = read_id.as_ref().map_or(ty, |(t, _)| t.as_str());
    if !fhir::types::is_storable_type(ty) {
        return Value::Null;
    }
    if let Some(rights) = &user.rights {
        let interaction = if read_id.is_some() { smart::Interaction::Read } else { smart::Interaction::Search };
        let allowed = smart::ScopeSet::parse(rights).access(smart::Level::User, ty, interaction);
        // Only a bound with no conditions is honoured here (a category-narrowed one prefetches nothing).
        if !allowed.is_some_and(|alts| alts.is_empty() || alts.iter().any(|c| c.is_empty())) {
            return Value::Null;
        }
    }
    if let Some((_, id)) = &read_id {
        return match s.store.read(ty, id).await {
            Ok(Some(r)) if !r.deleted => serde_json::from_str(&r.json).unwrap_or(Value::Null),
            _ => Value::Null,
        };
    }
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(params.as_bytes()).into_owned().collect();
    let opts = fhir::query::ParseOptions { lenient: false, base: Some(&s.config.fhir_base), now_ms: s.now_ms() };
    let Ok(q) = fhir::query::parse(ty, &pairs, opts) else { return Value::Null };
    let Ok(keys) = s.store.search(&q).await else { return Value::Null };
    let count = q.count.min(100);
    let Ok(found) = s.store.fetch(&keys[..keys.len().min(count)]).await else { return Value::Null };
    let entries: Vec<Value> = found
        .into_iter()
        .filter_map(|r| {
            let resource: Value = serde_json::from_str(&r.json).ok()?;
            Some(json!({"fullUrl": format!("{}/{}/{}", s.config.fhir_base, r.resource_type, r.id), "resource": resource}))
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "searchset", "total": keys.len(), "entry": entries})
}

/// Reads a service's answer: the cards it sent that hold together, and how many did not.
fn read_cards(body: &Value) -> Option<(Vec<Card>, usize)> {
    let raw = body.get("cards")?.as_array()?;
    let mut good = Vec::new();
    for c in raw {
        match serde_json::from_value::<Card>(c.clone()) {
            Ok(mut card) if !card.summary.trim().is_empty() && matches!(card.indicator.as_str(), "info" | "warning" | "critical") => {
                if card.summary.chars().count() > 140 {
                    card.summary = card.summary.chars().take(139).chain(['…']).collect();
                }
                good.push(card);
            }
            _ => {}
        }
    }
    let bad = raw.len() - good.len();
    Some((good, bad))
}

/// Calls one registered service's `patient-view` hooks for `patient`, as `user`.
async fn call_endpoint(s: &Shared, endpoint: &CdsEndpoint, user: &auth::model::User, patient: &str) -> Vec<Outcome> {
    let named = |problem: String| vec![Outcome { service: endpoint.name.clone(), cards: Vec::new(), problem: Some(problem) }];
    let discovery = match fetch_json(http().get(&endpoint.url)).await {
        Ok(v) => match serde_json::from_value::<Discovery>(v) {
            Ok(d) => d,
            Err(_) => return named(format!("{} sent a service list Kindling cannot read.", endpoint.name)),
        },
        Err(problem) => return named(problem.described(&endpoint.name)),
    };
    let mut out = Vec::new();
    for service in discovery.services.iter().filter(|sv| sv.hook == "patient-view") {
        let label = service.title.clone().unwrap_or_else(|| service.id.clone());
        let url = format!("{}/{}", endpoint.url.trim_end_matches('/'), service.id);
        let mut filled = Map::new();
        for (key, template) in &service.prefetch {
            let value = match template.as_str().and_then(|t| fill_template(t, patient, &user.fhir_user)) {
                Some(q) => prefetch(s, user, &q).await,
                None => Value::Null,
            };
            filled.insert(key.clone(), value);
        }
        let mut context = Map::new();
        context.insert("userId".into(), json!(user.fhir_user));
        context.insert("patientId".into(), json!(patient));
        let request = HookRequest {
            hook: "patient-view".into(),
            hook_instance: uuid::Uuid::new_v4().to_string(),
            fhir_server: Some(s.config.fhir_base.clone()),
            fhir_authorization: None,
            context,
            prefetch: filled,
        };
        let now = s.now_ms() / 1000;
        let claims = json!({"iss": s.config.fhir_base, "aud": url, "exp": now + 300, "iat": now, "jti": uuid::Uuid::new_v4().to_string()});
        let jwt = match s.keys.sign_jwt_rs384(&claims, &s.config.endpoint("jwks")) {
            Ok(j) => j,
            Err(e) => {
                out.push(Outcome { service: label, cards: Vec::new(), problem: Some(format!("The call could not be signed ({e}).")) });
                continue;
            }
        };
        let started = std::time::Instant::now();
        let outcome = match fetch_json(http().post(&url).bearer_auth(jwt).json(&request)).await {
            Ok(body) => match read_cards(&body) {
                Some((cards, 0)) => Outcome { service: label.clone(), cards, problem: None },
                Some((cards, bad)) => {
                    Outcome { service: label.clone(), cards, problem: Some(format!("{label} sent {bad} card(s) Kindling cannot read; they are not shown.")) }
                }
                None => Outcome { service: label.clone(), cards: Vec::new(), problem: Some(format!("{label} sent an answer Kindling cannot read.")) },
            },
            Err(problem) => Outcome { service: label.clone(), cards: Vec::new(), problem: Some(problem.described(&label)) },
        };
        s.audit("cds-hook").user(user.username.as_str()).patient(Some(patient)).record(format!(
            "patient-view to {url}: {} card(s){} in {:.0} ms",
            outcome.cards.len(),
            outcome.problem.as_deref().map(|p| format!(" ({p})")).unwrap_or_default(),
            started.elapsed().as_secs_f64() * 1000.0
        ));
        out.push(outcome);
    }
    out
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

async fn fetch_json(request: reqwest::RequestBuilder) -> Result<Value, CallProblem> {
    let response = request.send().await.map_err(|e| if e.is_timeout() { CallProblem::Slow } else { CallProblem::Unreachable })?;
    if !response.status().is_success() {
        return Err(CallProblem::Status(response.status().as_u16()));
    }
    let bytes = response.bytes().await.map_err(|e| if e.is_timeout() { CallProblem::Slow } else { CallProblem::Garbled })?;
    if bytes.len() > MAX_BODY {
        return Err(CallProblem::Garbled);
    }
    serde_json::from_slice(&bytes).map_err(|_| CallProblem::Garbled)
}

/// Every enabled service's `patient-view` cards for `patient`, called at once.
pub async fn patient_view(s: &Shared, user: &auth::model::User, patient: &str) -> Vec<Outcome> {
    let endpoints = match endpoints(s).await {
        Ok(e) => e,
        Err(e) => {
            return vec![Outcome { service: "Decision support".into(), cards: Vec::new(), problem: Some(format!("The services could not be listed ({e}).")) }];
        }
    };
    let mut calls = tokio::task::JoinSet::new();
    for (i, endpoint) in endpoints.into_iter().filter(|e| !e.disabled).enumerate() {
        let (s, user, patient) = (s.clone(), user.clone(), patient.to_string());
        calls.spawn(async move { (i, call_endpoint(&s, &endpoint, &user, &patient).await) });
    }
    let mut results = Vec::new();
    while let Some(done) = calls.join_next().await {
        if let Ok(r) = done {
            results.push(r);
        }
    }
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().flat_map(|(_, o)| o).collect()
}

/// The cards a chart showed, kept for their SMART links.
#[derive(Debug, Serialize, Deserialize)]
struct ShownCards {
    username: String,
    patient: String,
    cards: Vec<Card>,
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
}

fn web_url(u: &str) -> Option<String> {
    url::Url::parse(u).ok().filter(|u| matches!(u.scheme(), "http" | "https")).map(|u| u.to_string())
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
    let sess = match clinician(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if !fhir::types::is_valid_id(&id) || s.store.read("Patient", &id).await.ok().flatten().is_none_or(|r| r.deleted) {
        return (StatusCode::NOT_FOUND, Html("<p class=\"muted\">No such patient.</p>".to_string())).into_response();
    }
    let outcomes = patient_view(&s, &sess.user, &id).await;
    let services = outcomes.len();
    let problems: Vec<String> = outcomes.iter().filter_map(|o| o.problem.clone()).collect();
    let cards: Vec<Card> = outcomes.into_iter().flat_map(|o| o.cards).collect();
    let reference = auth::crypto::random_token();
    if !cards.is_empty() {
        let shown = ShownCards { username: sess.user.username.clone(), patient: id.clone(), cards: cards.clone() };
        let value = serde_json::to_string(&shown).unwrap_or_default();
        if let Err(e) = s.store.auth_put(CARDS_KIND, &auth::crypto::token_hash(&reference), &value, None, Some(s.now_ms() + CARDS_TTL_MS)).await {
            return internal(e);
        }
    }
    let views = cards
        .into_iter()
        .enumerate()
        .map(|(index, c)| CardView {
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
                    "smart" => Some(LinkView { index: li, label: l.label, url: l.url, smart: true }),
                    _ => web_url(&l.url).map(|url| LinkView { index: li, label: l.label, url, smart: false }),
                })
                .collect(),
        })
        .collect();
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
    let Some(link) = index("card").and_then(|c| shown.cards.get(c)).and_then(|c| index("link").and_then(|l| c.links.get(l))).filter(|l| l.kind == "smart")
    else {
        return message(nav, StatusCode::BAD_REQUEST, "This link cannot be opened", "The card has no such app link.", "Go back to the chart.", &back);
    };
    let norm = |u: &str| u.trim_end_matches('/').to_string();
    let client = match auth::registry::list_clients(s.store.as_ref()).await {
        Ok(all) => all.into_iter().find(|c| !c.disabled && !c.self_registered && c.launch_url.as_deref().map(norm) == Some(norm(&link.url))),
        Err(e) => return internal(e),
    };
    let Some(client) = client else {
        return message(
            nav,
            StatusCode::BAD_REQUEST,
            "The card links to an app this EHR does not know",
            &format!("No registered app opens at {}.", link.url),
            "Ask an administrator to register the app, or open it another way.",
            &back,
        );
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
    s.audit("cds-launch")
        .launch(Some(created.id.as_str()))
        .client(client.client_id.as_str())
        .user(sess.user.username.as_str())
        .patient(Some(shown.patient.as_str()))
        .record(format!("launched from a decision-support card: {}", link.label));
    Redirect::to(url.as_str()).into_response()
}

/// A card's Markdown detail as HTML that carries nothing but text: everything is escaped, then paragraphs,
/// `-`/`*` lists, `**bold**` and `*emphasis*` are made from the escaped text, and `[text](https://…)` links
/// open in a new tab. No raw HTML, images or other schemes survive.
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
            match url::Url::parse(target).ok().filter(|u| matches!(u.scheme(), "http" | "https")) {
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
    fn emphasis(escaped: &str) -> String {
        let mut out = String::new();
        for (i, part) in escaped.split("**").enumerate() {
            if i % 2 == 1 {
                out.push_str("<strong>");
                out.push_str(part);
                out.push_str("</strong>");
            } else {
                out.push_str(part);
            }
        }
        if escaped.matches("**").count() % 2 == 1 {
            // An unpaired marker: leave the text as it was.
            return escaped.to_string();
        }
        out
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
        assert_eq!(read_cards(&long).unwrap().0[0].summary.chars().count(), 140);
    }
}
