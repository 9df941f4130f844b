//! The Kindling binary's library: assembling the server from its parts, seeding, importing and
//! benchmarking. `main.rs` is only the command line over this.
#![deny(missing_docs)]

pub mod bench;
pub mod import;
pub mod openapi;
pub mod users;
mod vendor_servers;

use anyhow::Context;
use api::AppState;
use axum::Router;
use axum::http::{HeaderName, Method, StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use fhir::time::SharedClock;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use store::Store;
use store::sqlite::{SqliteConfig, SqliteStore};
use tokio::net::TcpListener;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::decompression::RequestDecompressionLayer;

/// What a server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Externally visible base URL of the server (no trailing slash); derived from the bound address when absent.
    pub public_url: Option<String>,
    /// Where the SQLite database, keys and export files live.
    pub data_dir: PathBuf,
    /// SQLite writer page cache; large for bulk imports, small for serving.
    pub writer_cache_mib: u32,
    /// The explicit open-sandbox switch: the FHIR API answers without an access token.
    pub open_sandbox: bool,
    /// Terminate TLS (1.2 and 1.3 only) with this certificate chain and key, both PEM.
    pub tls: Option<TlsFiles>,
    /// `postgres://…` for PostgreSQL (several nodes share it), `sqlite://path`, or `None` for the SQLite
    /// file in `data_dir`.
    pub database_url: Option<String>,
    /// How long a Bulk Data export and its files are kept after the kick-off (default: an hour).
    pub export_ttl_secs: Option<u64>,
    /// Honour the `Kindling-Export-Fault` header of Bulk Data kick-offs (the sandbox's failure rehearsal;
    /// on in `kindling up`, off in `kindling serve` unless asked for).
    pub export_faults: bool,
    /// A directory of vendor profile files (TOML) adding to, or replacing, the shipped ones.
    pub profiles_dir: Option<PathBuf>,
}

/// A TLS certificate chain and its private key, both PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// A rustls acceptor for TLS 1.2 and 1.3 (older versions do not exist in rustls, so they are refused).
pub fn tls_acceptor(files: &TlsFiles) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("cannot read the certificate {}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", files.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key).with_context(|| format!("cannot read the private key {}", files.key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not form a usable pair")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

impl ServerConfig {
    /// The SQLite writer's page cache when serving.
    pub const SERVE_CACHE_MIB: u32 = 32;
    /// The SQLite writer's page cache for a bulk import.
    pub const IMPORT_CACHE_MIB: u32 = 256;
}

impl ServerConfig {
    /// The SQLite file in the data directory.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("kindling.db")
    }
}

/// Opens the configured database (running migrations): PostgreSQL for `postgres://` URLs, else SQLite.
pub async fn open_store(config: &ServerConfig, base_url: &str, clock: SharedClock) -> anyhow::Result<Arc<dyn Store>> {
    match config.database_url.as_deref() {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let store = store::postgres::PostgresStore::connect(
                store::postgres::PostgresConfig {
                    url: url.to_string(),
                    base_url: Some(base_url.to_string()),
                    max_connections: std::env::var("KINDLING_PG_POOL").ok().and_then(|v| v.parse().ok()).unwrap_or(16),
                },
                clock,
            )
            .await
            .context("cannot open the PostgreSQL database")?;
            Ok(Arc::new(store))
        }
        other => {
            let path = match other {
                Some(url) => {
                    PathBuf::from(url.strip_prefix("sqlite://").ok_or_else(|| anyhow::anyhow!("the database URL must start with postgres:// or sqlite://"))?)
                }
                None => config.database_path(),
            };
            let store = SqliteStore::open(SqliteConfig { path, base_url: Some(base_url.to_string()), writer_cache_mib: config.writer_cache_mib }, clock)
                .with_context(|| format!("cannot open the database in {}", config.data_dir.display()))?;
            Ok(Arc::new(store))
        }
    }
}

/// The server's clock, as the client SDK's: the reference app hosted in this process reads the same time.
#[derive(Debug)]
struct AppClock(SharedClock);

impl client::Clock for AppClock {
    fn now_ms(&self) -> i64 {
        fhir::time::unix_ms(self.0.now())
    }
}

/// A bound, not yet serving, Kindling server.
pub struct Application {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The bound address.
    pub addr: SocketAddr,
    /// e.g. `http://127.0.0.1:8080`
    pub public_url: String,
    /// The FHIR API's state (store, clock, base URL, token resolver).
    pub state: AppState,
    /// The authorisation server.
    pub auth: auth::Shared,
    /// The reference clinician app, when mounted (see [`Application::mount_reference_app`]).
    pub reference_app: Option<app::App>,
    data_dir: PathBuf,
}

/// The reference app's client id in the sandbox.
pub const REFERENCE_APP: &str = "kindling-summary";

impl Application {
    /// Registers the reference clinician app (a confidential client with a fresh secret each start) and
    /// serves it under `/app` on this server, as `kindling up` does.
    pub async fn mount_reference_app(&mut self) -> anyhow::Result<()> {
        let database = self.data_dir.join("app.db").display().to_string();
        self.mount_reference_app_on(&database).await
    }

    /// [`Application::mount_reference_app`] with the app's sessions in `database` (an SQLite path or a
    /// `postgres://` URL).
    pub async fn mount_reference_app_on(&mut self, database: &str) -> anyhow::Result<()> {
        let store = self.state.store.as_ref();
        let base = &self.public_url;
        let existing = auth::registry::stored_client(store, REFERENCE_APP).await?;
        let client = auth::model::Client {
            client_id: REFERENCE_APP.into(),
            name: "Patient summary (reference app)".into(),
            kind: auth::model::ClientKind::ConfidentialSymmetric,
            secret_hash: None,
            redirect_uris: vec![format!("{base}/app/callback")],
            launch_url: Some(format!("{base}/app/launch")),
            allowed_scope: app::config::ALLOWED_SCOPE.into(),
            jwks: None,
            jwks_url: None,
            icon: None,
            disabled: existing.as_ref().is_some_and(|c| c.disabled),
            profile: existing.and_then(|c| c.profile),
            self_registered: false,
        };
        let secret = auth::registry::put_client(store, client).await?.ok_or_else(|| anyhow::anyhow!("no secret generated"))?;
        let config = app::config::AppConfig {
            listen: self.addr.to_string(),
            public_url: base.clone(),
            database: database.to_string(),
            session_key_env: None,
            frame_ancestors: Vec::new(),
            // This server's FHIR base and each vendor profile's own: launches under a profile send its base.
            ehrs: self
                .auth
                .config
                .fhir_bases()
                .into_iter()
                .map(|iss| app::config::EhrEntry { iss, client_id: REFERENCE_APP.into(), client_secret_env: Some("secret".into()) })
                .collect(),
        };
        let clock: client::SharedClock = Arc::new(AppClock(self.state.clock.clone()));
        let app = app::App::with_clock(config, app::random_key(), move |_| Some(secret.clone()), clock).await.map_err(|e| anyhow::anyhow!(e))?;
        self.reference_app = Some(app);
        // Its decision-support service, registered with the EHR (a disabled registration stays disabled).
        let registered = ehr::cds::endpoints(&self.auth).await?.into_iter().find(|e| e.id == REFERENCE_APP);
        let endpoint = ehr::cds::CdsEndpoint {
            id: REFERENCE_APP.into(),
            name: "Patient summary (reference app)".into(),
            url: format!("{base}/app/cds-services"),
            disabled: registered.as_ref().is_some_and(|e| e.disabled),
            // Its cards open the reference app only.
            apps: vec![REFERENCE_APP.into()],
            // It reads only what is prefetched.
            client_id: None,
            // An injected fault stays until an administrator clears it.
            fault: registered.as_ref().map(|e| e.fault).unwrap_or_default(),
        };
        if let Err(e) = ehr::cds::register(&self.auth, &endpoint).await {
            tracing::warn!(error = %e, "the reference app's decision-support service was not registered");
        }
        Ok(())
    }

    /// Opens the store (running migrations) and binds the listener. Use port 0 in tests.
    pub async fn build(config: &ServerConfig, clock: SharedClock) -> anyhow::Result<Self> {
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let public_url = config.public_url.clone().unwrap_or_else(|| format!("{scheme}://{addr}")).trim_end_matches('/').to_string();
        let base_url = format!("{public_url}/fhir");
        let store = open_store(config, &base_url, clock.clone()).await?;
        let audit = store::audit::AuditSink::spawn(store.clone());
        // The EHR layer's page where users see and withdraw the apps they authorised.
        let profiles = match &config.profiles_dir {
            Some(dir) => auth::profile::Profiles::with_dir(dir).map_err(|e| anyhow::anyhow!("{e}"))?,
            None => auth::profile::Profiles::builtin(),
        };
        let auth_config =
            auth::AuthConfig { manage_url: Some(format!("{public_url}/ehr/connected")), profiles: Arc::new(profiles), ..auth::AuthConfig::new(&public_url) };
        let auth = auth::AuthServer::new(store.clone(), auth_config, clock.clone(), Some(audit.clone()), Arc::new(ehr::AuthPages))
            .await
            .map_err(|e| anyhow::anyhow!("cannot load or create the signing keys: {e}"))?;
        let access: Option<Arc<dyn api::access::AccessResolver>> = if config.open_sandbox {
            tracing::warn!("OPEN SANDBOX: the FHIR API answers without access tokens; never expose this server");
            None
        } else {
            Some(auth.clone())
        };
        // The open sandbox is unaudited at the FHIR API, like it is unauthenticated.
        let fhir_audit = (!config.open_sandbox).then_some(audit);
        let oauth = access.is_some().then(|| {
            let c = &auth.config;
            api::capability::OAuthUris {
                authorize: c.endpoint("authorize"),
                token: c.endpoint("token"),
                revoke: c.endpoint("revoke"),
                introspect: Some(c.endpoint("introspect")),
                register: c.endpoint("register"),
                manage: c.manage_url.clone(),
            }
        });
        let export_ttl_ms = config.export_ttl_secs.map_or(api::export::JOB_TTL_MS, |s| (s as i64).saturating_mul(1000));
        let state = AppState {
            store,
            local_base: base_url.clone(),
            base_url,
            clock,
            access,
            audit: fhir_audit,
            oauth,
            export_ttl_ms,
            export_faults: config.export_faults,
        };
        Ok(Application { listener, tls, addr, public_url, state, auth, reference_app: None, data_dir: config.data_dir.clone() })
    }

    /// The FHIR base URL (`…/fhir`).
    pub fn base_url(&self) -> &str {
        &self.state.base_url
    }

    /// The store the server uses.
    pub fn store(&self) -> Arc<dyn Store> {
        self.state.store.clone()
    }

    /// Serves until `shutdown` resolves.
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let purger = tokio::spawn(purge_expired_auth(self.state.store.clone(), self.state.clock.clone()));
        let result = self.serve(shutdown).await;
        purger.abort();
        result
    }

    async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let mut app = router(self.state, self.auth);
        if let Some(reference) = self.reference_app {
            app = app.merge(reference.router());
        }
        match self.tls {
            None => axum::serve(self.listener, app).with_graceful_shutdown(shutdown).await?,
            Some(acceptor) => serve_tls(self.listener, acceptor, app, shutdown).await?,
        }
        Ok(())
    }
}

/// Records the authorisation server no longer needs (codes, tokens, `jti`s, sessions) are deleted an hour
/// after they expired, every minute, in slices that leave the writer to requests in between. Every node
/// does it; the deletes do not conflict.
async fn purge_expired_auth(store: Arc<dyn Store>, clock: SharedClock) {
    const SLICE: usize = 2_000;
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        every.tick().await;
        let before = fhir::time::unix_ms(clock.now()) - 3_600_000;
        let mut purged = 0;
        loop {
            match store.auth_purge_expired(before, SLICE).await {
                Ok(n) => {
                    purged += n;
                    if n < SLICE as u64 {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "expired auth records could not be purged");
                    break;
                }
            }
        }
        if purged > 0 {
            tracing::info!(purged, "expired auth records purged");
        }
    }
}

/// Accepts TLS connections and serves HTTP/1.1 on them until `shutdown` resolves.
async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = &mut shutdown => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tls), service).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// CORS for browser apps: any origin may call the FHIR API with a bearer token; nothing uses cookies here.
pub(crate) fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::HEAD, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            HeaderName::from_static("prefer"),
            HeaderName::from_static("if-none-exist"),
        ])
        .expose_headers([header::LOCATION, header::ETAG, header::LAST_MODIFIED, header::CONTENT_LOCATION])
        .max_age(Duration::from_secs(3600))
}

async fn index(axum::extract::State(state): axum::extract::State<AppState>) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Kindling</title></head><body>\
         <h1>Kindling</h1><ul><li><a href=\"/ehr\">EHR (clinicians)</a></li><li><a href=\"/portal\">Patient portal</a></li>\
         <li>FHIR R4 base: <a href=\"{0}/metadata\">{0}</a></li></ul></body></html>",
        state.base_url
    ))
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(axum::extract::State(state): axum::extract::State<AppState>) -> impl IntoResponse {
    match state.store.read("Patient", "readiness-probe").await {
        Ok(_) => (StatusCode::OK, "ready"),
        Err(e) => {
            tracing::error!(error = %e, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
        }
    }
}

/// The most a request's header fields may hold in all (names and values): browsers' cookies and the
/// largest bearer tokens stay far below it. The HTTP layer itself refuses more than 100 fields (431) and a
/// request line of more than 64 KiB (414), without a body.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Refuses a request whose headers exceed [`MAX_HEADER_BYTES`] with `431`, in the error shape of the route
/// it was sent to: an OperationOutcome for the FHIR API, RFC 6749 JSON for the OAuth endpoints and
/// discovery, a page for people elsewhere.
async fn header_limit(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let size: usize = request.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if size <= MAX_HEADER_BYTES {
        return next.run(request).await;
    }
    let message = format!("the request's header fields hold {size} bytes; at most {} KiB are read", MAX_HEADER_BYTES / 1024);
    let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    let path = request.uri().path();
    if auth::answers_json(path) {
        auth::OAuthError::new(status, auth::ErrorCode::InvalidRequest, message).into_response()
    } else if path == "/fhir" || path.starts_with("/fhir/") {
        api::error::ApiError::new(status, "too-costly", message).into_response()
    } else {
        short_page(
            status,
            "This request is too large",
            "<p>The browser sent more header data (mostly cookies) than this server reads.</p><p>Clear this site's cookies in the browser and try again.</p>",
        )
    }
}

/// A page for a person met outside the EHR's and the app's own pages (their templates need a session).
fn short_page(status: StatusCode, heading: &str, body_html: &str) -> axum::response::Response {
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{heading}</title></head><body><h1>{heading}</h1>{body_html}\
         <p><a href=\"/ehr\">The EHR</a> · <a href=\"/portal\">the patient portal</a> · <a href=\"/\">Kindling</a></p></body></html>"
    );
    (status, Html(page)).into_response()
}

/// A URL no route serves: an OperationOutcome under `/fhir` (as the FHIR API's own fallback answers), a
/// page for a person elsewhere (a mistyped EHR or portal address).
/// A vendor profile's own server answers at and below its FHIR base.
async fn nothing_here(
    axum::extract::State(vendors): axum::extract::State<vendor_servers::VendorServers>,
    request: axum::extract::Request,
) -> axum::response::Response {
    let request = match vendor_servers::answer(&vendors, request).await {
        Ok(response) => return response,
        Err(request) => request,
    };
    let path = request.uri().path();
    if path == "/fhir" || path.starts_with("/fhir/") {
        return api::not_found().await.into_response();
    }
    short_page(StatusCode::NOT_FOUND, "Page not found", "<p>There is nothing at this URL.</p>")
}

/// The whole HTTP surface.
pub fn router(state: AppState, auth: auth::Shared) -> Router {
    let fhir = api::router(state.clone()).layer(cors());
    let (vendors, issuers) = vendor_servers::build(&state, &auth);
    let ehr = ehr::router(auth.clone());
    let auth = auth::router(auth).layer(cors());
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(|| async { axum::Json(openapi::document()) }))
        .with_state(state)
        .merge(auth)
        .merge(ehr)
        .merge(fhir)
        .merge(issuers.layer(cors()))
        .fallback_service(axum::routing::any(nothing_here).with_state(vendors))
        .layer(CompressionLayer::new().gzip(true))
        .layer(RequestDecompressionLayer::new().gzip(true))
        .layer(axum::middleware::from_fn(header_limit))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            // The path only: query strings are not logged.
            tracing::debug_span!("request", method = %req.method(), path = %req.uri().path())
        }))
}

/// Loads the deterministic synthetic population into the store.
pub async fn seed(state: &AppState, patients: usize, seed: u64) -> anyhow::Result<usize> {
    let today = state.clock.now().date();
    let mut bundles = synth::generate(&synth::Options { patients, seed, today });
    if patients > 0 {
        let groups = synth::groups(seed, &bundles[1..]);
        bundles.push(groups);
    }
    let mut resources = 0;
    for b in bundles {
        resources += b["entry"].as_array().map_or(0, Vec::len);
        api::bundle::process(state, b).await.map_err(|e| anyhow::anyhow!("seeding failed: {}", e.message))?;
    }
    state.store.optimize().await?;
    Ok(resources)
}

/// Demo accounts of the sandbox: (user name, password, role, display name).
pub const DEMO_USERS: &[(&str, &str, &str, &str)] = &[
    ("clinician", "kindling-clinician", "clinician", "Dr. Alice Carter, family physician and administrator: everything"),
    ("nurse", "kindling-nurse", "clinician", "Rosa Mendes, RN: lets apps read everything and record observations"),
    ("frontdesk", "kindling-frontdesk", "clinician", "Sam Doyle, front desk: lets apps see demographics, appointments and coverage only"),
    ("patient", "kindling-patient", "patient", "the first synthetic patient"),
];

/// What the nurse persona may let an app do: read everything, record observations (vital signs).
pub const NURSE_RIGHTS: &str = "user/*.rs user/Observation.c";
/// What the front-desk persona may let an app do: demographics, scheduling and coverage; no clinical
/// resources (not even Encounter, whose reasons and diagnoses are clinical). It bounds apps, not the EHR's
/// own chart.
pub const FRONT_DESK_RIGHTS: &str = "user/Patient.rus user/RelatedPerson.rs user/Appointment.rs user/Coverage.rs user/Practitioner.rs \
                                     user/PractitionerRole.rs user/Organization.rs user/Location.rs";

/// Marks the database as a sandbox (`kindling up` made it): developer shortcuts such as `kindling token`
/// work only on such a database.
pub async fn mark_sandbox(auth: &auth::Shared) -> anyhow::Result<()> {
    auth.store.auth_put("meta", "sandbox", "{\"made_by\":\"kindling up\"}", None, None).await?;
    Ok(())
}

/// An access token for `curl`, without the browser flow: only on a sandbox database (see [`mark_sandbox`]),
/// and only what the user could be granted through the app (see [`auth::operator_tokens`]).
pub async fn sandbox_token(auth: &auth::Shared, client_id: &str, username: &str, patient: Option<&str>, scope: &str) -> anyhow::Result<serde_json::Value> {
    if auth.store.auth_get("meta", "sandbox").await?.is_none() {
        anyhow::bail!(
            "this database was not made by `kindling up`: tokens for it come from the authorisation flow (or backend services), not from `kindling token`"
        );
    }
    auth::operator_tokens(auth, client_id, username, patient, scope).await.map_err(anyhow::Error::msg)
}

/// Creates the demo users when they do not exist: a clinician (and administrator) linked to the first practitioner, the
/// nurse and front-desk personas (with [`NURSE_RIGHTS`] and [`FRONT_DESK_RIGHTS`]) and a patient linked to
/// the first synthetic patient of `seed`.
pub async fn ensure_demo_users(state: &api::AppState, seed: u64) -> anyhow::Result<()> {
    let store = state.store.as_ref();
    // A sandbox always has an administrator (apps and accounts): the clinician, when nobody is one (a new
    // sandbox, or one made before the role existed). Once someone else is, the clinician is left as it is.
    let mut clinician = match auth::registry::stored_user(store, "clinician").await? {
        Some(u) => u,
        None => {
            auth::registry::put_user(
                store,
                "clinician",
                "Dr. Alice Carter",
                auth::model::UserRole::Clinician,
                "kindling-clinician",
                &format!("Practitioner/{}", synth::practitioner_id(0)),
            )
            .await?
        }
    };
    let has_admin = auth::registry::list_users(store).await?.iter().any(|u| u.admin && !u.disabled);
    if !has_admin && clinician.role == auth::model::UserRole::Clinician {
        clinician.admin = true;
        auth::registry::put_user_as_is(store, &clinician).await?;
    }
    // The personas' practitioners are part of the shared resources; a sandbox seeded before they existed
    // gets them now (the shared resources again: practitioners, organisations, locations).
    let staff = synth::practitioner_id(synth::FRONT_DESK);
    if state.store.read("Practitioner", &staff).await?.is_none_or(|r| r.deleted) {
        crate::seed(state, 0, seed).await?;
    }
    // Personas who may see less: apps can be tried with users whose rights bound what any app is granted.
    for (username, name, password, practitioner, rights) in [
        ("nurse", "Rosa Mendes, RN", "kindling-nurse", synth::REGISTERED_NURSE, NURSE_RIGHTS),
        ("frontdesk", "Sam Doyle (front desk)", "kindling-frontdesk", synth::FRONT_DESK, FRONT_DESK_RIGHTS),
    ] {
        // (`stored_user`, which also finds a disabled account: a persona disabled stays disabled.)
        if auth::registry::stored_user(store, username).await?.is_none() {
            let fhir_user = format!("Practitioner/{}", synth::practitioner_id(practitioner));
            let mut user = auth::registry::put_user(store, username, name, auth::model::UserRole::Clinician, password, &fhir_user).await?;
            user.rights = Some(rights.split_whitespace().collect::<Vec<_>>().join(" "));
            auth::registry::put_user_as_is(store, &user).await?;
        }
    }
    if auth::registry::stored_user(store, "patient").await?.is_none() {
        let id = synth::patient_id(seed, 0);
        auth::registry::put_user(store, "patient", "Synthetic patient", auth::model::UserRole::Patient, "kindling-patient", &format!("Patient/{id}")).await?;
    }
    Ok(())
}
