//! Integration tests: the whole server on port 0, driven over real HTTP.
#![allow(clippy::unwrap_used)] // a test fails loudly where it unwraps

// Tests start their manual clocks at the real now, and compare with it.
#![allow(clippy::disallowed_methods)]

mod adversarial;
mod apps;
mod backend;
mod bundles;
mod cds;
mod clinical;
mod concurrency;
mod crud;
mod ehr_pages;
mod errors;
mod export;
mod history;
mod import;
mod migrations;
mod multi_node;
mod openapi;
mod orders;
mod profiles;
mod races;
mod reference_app;
mod review;
mod sdk;
mod search;
mod smart_flows;
mod statements;
mod tls;
mod us_core_kit;
mod users;

use fhir::time::{ManualClock, SharedClock};
use kindling::{Application, ServerConfig};
use serde_json::{Value, json};
use std::sync::Arc;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub app_state: api::AppState,
    pub auth: auth::Shared,
    pub reference_app: Option<app::App>,
    _dir: tempfile::TempDir,
}

/// A registration for a test: `kind`, the redirect URI the flow helpers use (`smart_flows::REDIRECT`),
/// `allowed_scope`; no secret, keys, launch URL or profile (set what a test needs on the result).
pub fn test_client(client_id: &str, kind: auth::model::ClientKind, allowed_scope: &str) -> auth::model::Client {
    auth::model::Client {
        client_id: client_id.into(),
        name: format!("App {client_id}"),
        kind,
        secret_hash: None,
        redirect_uris: vec![smart_flows::REDIRECT.into()],
        launch_url: None,
        allowed_scope: allowed_scope.into(),
        jwks: None,
        jwks_url: None,
        icon: None,
        disabled: false,
        profile: None,
        self_registered: false,
    }
}

/// The FHIR API in open-sandbox mode (no tokens), for the FHIR-only tests.
pub async fn spawn_app() -> TestApp {
    spawn(true).await
}

/// The whole platform with the authorisation server enforcing tokens.
pub async fn spawn_secured_app() -> TestApp {
    spawn(false).await
}

/// The whole platform, tokens enforced, on the given database (e.g. a [`ScratchPostgres`] URL).
pub async fn spawn_secured_on(database: &str) -> TestApp {
    spawn_on(false, None, Some(database.to_string()), None).await
}

/// The whole platform, tokens enforced, with the vendor profiles of `dir` added (`--profiles DIR`).
pub async fn spawn_secured_with_profiles(dir: std::path::PathBuf) -> TestApp {
    spawn_on(false, None, test_database().await, Some(dir)).await
}

/// The whole platform with the reference clinician app mounted under `/app`.
pub async fn spawn_with_reference_app() -> TestApp {
    spawn_inner(false, Some(None)).await
}

/// The same with the app's sessions in `database` (e.g. a PostgreSQL URL).
pub async fn spawn_with_reference_app_on(database: &str) -> TestApp {
    spawn_inner(false, Some(Some(database.to_string()))).await
}

async fn spawn(open_sandbox: bool) -> TestApp {
    spawn_inner(open_sandbox, None).await
}

/// `reference_app`: not mounted (`None`), mounted on SQLite (`Some(None)`) or on the given database.
async fn spawn_inner(open_sandbox: bool, reference_app: Option<Option<String>>) -> TestApp {
    spawn_on(open_sandbox, reference_app, test_database().await, None).await
}

async fn spawn_on(
    open_sandbox: bool,
    reference_app: Option<Option<String>>,
    database_url: Option<String>,
    profiles_dir: Option<std::path::PathBuf>,
) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let shared: SharedClock = clock.clone();
    let config = ServerConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        public_url: None,
        data_dir: dir.path().to_path_buf(),
        writer_cache_mib: ServerConfig::SERVE_CACHE_MIB,
        open_sandbox,
        tls: None,
        database_url,
        export_ttl_secs: None,
        export_faults: true,
        profiles_dir,
    };
    let mut app = Application::build(&config, shared).await.expect("build app");
    match &reference_app {
        None => {}
        Some(None) => app.mount_reference_app().await.expect("reference app"),
        Some(Some(db)) => app.mount_reference_app_on(db).await.expect("reference app"),
    }
    let base = app.base_url().to_string();
    let app_state = app.state.clone();
    let auth = app.auth.clone();
    let reference_app = app.reference_app.clone();
    tokio::spawn(app.run_until(std::future::pending()));
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    TestApp { base, client, clock, app_state, auth, reference_app, _dir: dir }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.get(path).await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client.post(self.url(path)).header("content-type", "application/fhir+json").body(body.to_string()).send().await.expect("POST")
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client.put(self.url(path)).header("content-type", "application/fhir+json").body(body.to_string()).send().await.expect("PUT")
    }

    /// Creates a resource and returns it as stored.
    pub async fn create(&self, resource: Value) -> Value {
        let ty = resource["resourceType"].as_str().expect("resourceType").to_string();
        let r = self.post_json(&ty, &resource).await;
        assert_eq!(r.status().as_u16(), 201, "create {ty}");
        r.json().await.expect("json")
    }

    /// Searches and returns the bundle, asserting 200.
    pub async fn search(&self, query: &str) -> Value {
        let (status, b) = self.get_json(query).await;
        assert_eq!(status, 200, "{query}: {b}");
        b
    }
}

/// With `KINDLING_TEST_POSTGRES` set to an administrative PostgreSQL URL (e.g.
/// `postgres://postgres@127.0.0.1:5432/test`), every test server runs on a fresh PostgreSQL database of its
/// own, named `kindling_it_…` (`./test.sh` drops them after the run); otherwise on SQLite.
async fn test_database() -> Option<String> {
    let admin = std::env::var("KINDLING_TEST_POSTGRES").ok().filter(|u| !u.is_empty())?;
    let name = format!("kindling_it_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::PgPool::connect(&admin).await.expect("KINDLING_TEST_POSTGRES is not reachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await.expect("create test database");
    pool.close().await;
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or(admin);
    Some(format!("{base}/{name}"))
}

/// A database of its own on the local PostgreSQL, for the tests that need PostgreSQL whichever backend the
/// suite runs on. Dropped by [`ScratchPostgres::drop_database`] at the end of the test.
pub struct ScratchPostgres {
    admin: sqlx::PgPool,
    name: String,
    pub url: String,
}

impl ScratchPostgres {
    const ADMIN: &'static str = "postgres://postgres@127.0.0.1:5432/test";

    /// Creates `kindling_it_<prefix>_<uuid>`. `None`, with a message, when PostgreSQL is not reachable,
    /// except in CI, where that fails the test.
    pub async fn create(prefix: &str) -> Option<ScratchPostgres> {
        let admin = match sqlx::PgPool::connect(Self::ADMIN).await {
            Ok(p) => p,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("skipping a PostgreSQL test ({prefix}): PostgreSQL is not reachable: {e}");
                return None;
            }
            Err(e) => panic!("PostgreSQL is not reachable in CI: {e}"),
        };
        let name = format!("kindling_it_{prefix}_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.expect("create the test database");
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        Some(ScratchPostgres { admin, name, url })
    }

    /// Makes the database unreachable for the servers using it (as an outage would): no new connections,
    /// and the open ones are closed.
    pub async fn cut(&self) {
        sqlx::query(sqlx::AssertSqlSafe(format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false", self.name)))
            .execute(&self.admin)
            .await
            .expect("refuse connections");
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
            .bind(&self.name)
            .execute(&self.admin)
            .await
            .expect("close connections");
    }

    /// Ends [`ScratchPostgres::cut`].
    pub async fn restore(&self) {
        sqlx::query(sqlx::AssertSqlSafe(format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true", self.name)))
            .execute(&self.admin)
            .await
            .expect("accept connections");
    }

    pub async fn drop_database(self) {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
            .execute(&self.admin)
            .await
            .expect("drop the test database");
    }
}

/// Whether the suite runs on PostgreSQL (some checks are SQLite-specific).
pub fn on_postgres() -> bool {
    std::env::var("KINDLING_TEST_POSTGRES").is_ok_and(|u| !u.is_empty())
}

/// The ids of the entries of a searchset with mode `match`.
pub fn ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["search"]["mode"] == "match").filter_map(|e| e["resource"]["id"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

pub fn patient(family: &str, given: &str, gender: &str, birth: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test:mrn", "value": format!("{family}-{given}")}],
        "name": [{"family": family, "given": [given]}],
        "gender": gender,
        "birthDate": birth
    })
}

pub fn observation(patient_id: &str, category: &str, loinc: &str, when: &str, value: f64, unit: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}], "text": format!("code {loinc}")},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    })
}

/// A browser for the sign-in pages: keeps the cookies servers set (by name and path, honouring
/// `Max-Age=0`) and sends them back, as Chromium would. Each `Browser` is a browser of its own: flows
/// that must not share a session use two.
#[derive(Clone, Default)]
pub struct Browser {
    jar: Arc<std::sync::Mutex<Vec<(String, String, String)>>>,
    /// The `Origin` of the pages the forms are posted from, when it is not the URL posted to (a node
    /// reached directly behind a shared public URL).
    origin: Option<String>,
}

impl Browser {
    pub fn new() -> Browser {
        Browser::default()
    }

    pub fn with_origin(origin: &str) -> Browser {
        Browser { origin: Some(url::Url::parse(origin).expect("origin").origin().ascii_serialization()), ..Browser::default() }
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client")
    }

    /// The `Cookie` header for a request to `url`.
    pub fn cookie_header(&self, url: &str) -> String {
        let path = url::Url::parse(url).map(|u| u.path().to_string()).unwrap_or_default();
        self.jar.lock().unwrap().iter().filter(|(_, _, p)| path.starts_with(p.as_str())).map(|(n, v, _)| format!("{n}={v}")).collect::<Vec<_>>().join("; ")
    }

    /// Keeps the cookies a response sets.
    pub fn keep(&self, r: &reqwest::Response) {
        let mut jar = self.jar.lock().unwrap();
        for set in r.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()) {
            let mut parts = set.split(';').map(str::trim);
            let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else { continue };
            let attrs: Vec<&str> = parts.collect();
            let path = attrs.iter().find_map(|a| a.strip_prefix("Path=")).unwrap_or("/").to_string();
            jar.retain(|(n, _, p)| !(n == name && *p == path));
            if !attrs.contains(&"Max-Age=0") && !value.is_empty() {
                jar.push((name.to_string(), value.to_string(), path));
            }
        }
    }

    pub fn has_cookie(&self, name: &str) -> bool {
        self.jar.lock().unwrap().iter().any(|(n, _, _)| n == name)
    }

    pub async fn get(&self, url: impl reqwest::IntoUrl) -> reqwest::Response {
        let url = url.into_url().expect("url");
        let cookies = self.cookie_header(url.as_str());
        let mut req = Self::client().get(url);
        if !cookies.is_empty() {
            req = req.header("cookie", cookies);
        }
        let r = req.send().await.expect("GET");
        self.keep(&r);
        r
    }

    /// Posts a form as the browser would from one of the server's own pages (with its `Origin`).
    pub async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let origin = self.origin.clone().unwrap_or_else(|| url::Url::parse(url).expect("url").origin().ascii_serialization());
        let cookies = self.cookie_header(url);
        let mut req = Self::client().post(url).header("content-type", "application/x-www-form-urlencoded").header("origin", origin).body(body);
        if !cookies.is_empty() {
            req = req.header("cookie", cookies);
        }
        let r = req.send().await.expect("POST");
        self.keep(&r);
        r
    }
}
