//! The `kindling` command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use fhir::time::{SharedClock, SystemClock};
use indicatif::{ProgressBar, ProgressStyle};
use kindling::{Application, ServerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// glibc's allocator contends when JSON parsed on one thread is freed on another (import, request
/// handling across workers); mimalloc does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "kindling", version, about = "Kindling: a SMART on FHIR sandbox and platform in one binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// Settings from a TOML file (listen, public_url, database_url, data, apps, tls_cert, tls_key, export_ttl_secs,
    /// export_faults); flags and environment variables given as well take precedence.
    #[arg(long, env = "KINDLING_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "KINDLING_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory for the SQLite database [default: ./kindling-data].
    #[arg(long, env = "KINDLING_DATA")]
    data: Option<PathBuf>,
    /// The externally visible base URL (default: http://<listen>).
    #[arg(long, env = "KINDLING_PUBLIC_URL")]
    public_url: Option<String>,
    /// Open sandbox: serve the FHIR API without access tokens (off by default; never expose such a server).
    #[arg(long, env = "KINDLING_OPEN_SANDBOX")]
    open_sandbox: bool,
    /// Apps to register at start (TOML); `config/apps.dev.toml` is used when it exists and none is given.
    #[arg(long, env = "KINDLING_APPS")]
    apps: Option<PathBuf>,
    /// Serve HTTPS (TLS 1.2 and 1.3) with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "KINDLING_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "KINDLING_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The database: `postgres://user@host:port/db` (several nodes share it), or `sqlite://path`; default
    /// the SQLite file in --data.
    #[arg(long, env = "KINDLING_DATABASE_URL")]
    database_url: Option<String>,
    /// How long a Bulk Data export and its files are kept after the kick-off, in seconds [default: 3600].
    #[arg(long, env = "KINDLING_EXPORT_TTL_SECS")]
    export_ttl_secs: Option<u64>,
    /// Honour the `Kindling-Export-Fault` header of Bulk Data kick-offs, so clients can rehearse failures
    /// (always on in `kindling up`).
    #[arg(long, env = "KINDLING_EXPORT_FAULTS")]
    export_faults: bool,
    /// A directory of vendor profiles (`*.toml`, as in `config/profiles/`): each file adds a profile or
    /// replaces the shipped one of its name.
    #[arg(long, env = "KINDLING_PROFILES")]
    profiles: Option<PathBuf>,
}

/// The settings of a `--config` file.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    public_url: Option<String>,
    database_url: Option<String>,
    data: Option<PathBuf>,
    apps: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    export_ttl_secs: Option<u64>,
    export_faults: Option<bool>,
    profiles: Option<PathBuf>,
}

/// Serving settings after flags, environment, `--config` file and defaults are combined.
struct Serve {
    listen: SocketAddr,
    data: PathBuf,
    public_url: Option<String>,
    open_sandbox: bool,
    apps: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    database_url: Option<String>,
    export_ttl_secs: Option<u64>,
    export_faults: bool,
    profiles: Option<PathBuf>,
}

impl ServeArgs {
    fn resolve(self) -> anyhow::Result<Serve> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                toml::from_str::<FileConfig>(&text).with_context(|| format!("{} is not a valid Kindling configuration", path.display()))?
            }
            None => FileConfig::default(),
        };
        let tls_cert = self.tls_cert.or(file.tls_cert);
        let tls_key = self.tls_key.or(file.tls_key);
        if tls_cert.is_some() != tls_key.is_some() {
            anyhow::bail!("tls_cert and tls_key go together");
        }
        Ok(Serve {
            listen: self.listen.or(file.listen).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            data: self.data.or(file.data).unwrap_or_else(|| PathBuf::from("./kindling-data")),
            public_url: self.public_url.or(file.public_url),
            open_sandbox: self.open_sandbox,
            apps: self.apps.or(file.apps),
            tls_cert,
            tls_key,
            database_url: self.database_url.or(file.database_url),
            export_ttl_secs: self.export_ttl_secs.or(file.export_ttl_secs),
            export_faults: self.export_faults || file.export_faults.unwrap_or(false),
            profiles: self.profiles.or(file.profiles),
        })
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    Rotate,
    /// Remove keys older than the current one by more than two hours (id_tokens live one hour).
    Prune,
}

#[derive(Subcommand)]
enum AppsCommand {
    /// List registered apps.
    List,
    /// Register an app; prints its client id (and, for a confidential-symmetric app, its secret, once).
    Add {
        #[arg(long)]
        name: String,
        /// public, confidential-symmetric or confidential-asymmetric
        #[arg(long = "type", default_value = "public")]
        kind: String,
        #[arg(long = "redirect-uri", required = true)]
        redirect_uris: Vec<String>,
        /// The most the app may be granted.
        #[arg(long, default_value = "launch launch/patient launch/encounter openid fhirUser offline_access patient/*.rs user/*.rs")]
        scope: String,
        #[arg(long)]
        launch_url: Option<String>,
        /// A JWKS file (asymmetric apps).
        #[arg(long)]
        jwks_file: Option<PathBuf>,
        #[arg(long)]
        client_id: Option<String>,
    },
    /// Remove an app.
    Remove { client_id: String },
}

#[derive(Subcommand)]
enum CdsCommand {
    /// List the decision-support services the EHR calls (id, name, discovery URL, disabled).
    List,
    /// Register (or update) a CDS Hooks service by its discovery URL (`https://…/cds-services`).
    Add {
        id: String,
        #[arg(long)]
        name: String,
        /// `https://…/cds-services` (`http` only on this machine).
        #[arg(long)]
        url: String,
        /// A registered app (client id) its cards' SMART links may open; repeat for several. None: any.
        #[arg(long = "app")]
        apps: Vec<String>,
        /// The service's own registered client (client id): its calls then carry `fhirAuthorization`, a
        /// five-minute read token for the chart's patient.
        #[arg(long)]
        client: Option<String>,
    },
    /// Inject a fault into the EHR's calls to a service, to rehearse: none, slow, error, garbled or
    /// bad-jwt (signed for another service's URL).
    Fault { id: String, fault: String },
    /// Stop calling a service (its registration stays).
    Disable { id: String },
    /// Call a disabled service again.
    Enable { id: String },
    /// Remove a service.
    Remove { id: String },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// List the accounts (user name, role, linked record, name, rights, administrator, disabled).
    List,
    /// Add an account; its password is read from the environment variable --password-env names.
    Add {
        username: String,
        /// The name shown in the EHR.
        #[arg(long)]
        name: String,
        /// clinician or patient
        #[arg(long)]
        role: String,
        /// The linked record: Practitioner/ID for a clinician, Patient/ID for a patient.
        #[arg(long)]
        fhir_user: String,
        #[arg(long, default_value = "KINDLING_PASSWORD")]
        password_env: String,
    },
    /// Disable an account: no sign-in, and its tokens stop working now.
    Disable { username: String },
    /// Enable a disabled account.
    Enable { username: String },
    /// Set a new password, read from the environment variable --password-env names.
    Passwd {
        username: String,
        #[arg(long, default_value = "KINDLING_PASSWORD")]
        password_env: String,
    },
    /// Make a clinician an administrator (manages apps and accounts in the EHR), or with --revoke no longer one.
    Admin {
        username: String,
        #[arg(long)]
        revoke: bool,
    },
    /// Bound what the user may let any app do, as resource scopes (e.g. "user/Patient.rus
    /// user/Appointment.rs"; applied at the patient level too); without --scope, lift the bound.
    Rights {
        username: String,
        #[arg(long)]
        scope: Option<String>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the sandbox: FHIR server with synthetic patients (seeded on first start).
    Up {
        #[command(flatten)]
        serve: ServeArgs,
        /// Patients to seed when the data directory is new.
        #[arg(long, default_value_t = 25)]
        patients: usize,
        /// Seed of the synthetic population.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run the server on an existing data directory without seeding.
    Serve {
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Add deterministic synthetic patients.
    Seed {
        #[arg(long, default_value = "./kindling-data")]
        data: PathBuf,
        #[arg(long, default_value_t = 25)]
        patients: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Import FHIR Bundles, resources or NDJSON files (optionally .gz), or directories of them.
    Import {
        #[arg(long, default_value = "./kindling-data")]
        data: PathBuf,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Benchmark import, reads and searches on the Synthea sample set (prints throughput and latencies).
    Bench(kindling::bench::BenchArgs),
    /// Rotate the RS256 signing keys: `rotate` adds a new current key (servers use it from their next
    /// start; older keys stay in the JWKS), `prune` drops keys that no live token can need any more.
    Keys {
        #[arg(long, default_value = "./kindling-data")]
        data: PathBuf,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Apply pending database migrations and exit (PostgreSQL or SQLite).
    Migrate {
        /// `postgres://…` or `sqlite://path`.
        #[arg(long, env = "KINDLING_DATABASE_URL")]
        database_url: String,
        /// The servers' public URL: absolute references to it are indexed as local when a migration
        /// rebuilds search-index rows.
        #[arg(long, env = "KINDLING_PUBLIC_URL", default_value = "http://localhost")]
        public_url: String,
    },
    /// Run the reference clinician app on its own against any SMART EHR (`config/app.dev.toml`).
    App {
        /// The app's configuration (TOML): listen, public_url, database, EHRs and the environment
        /// variables holding its secrets.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print an access token for curl, without the browser flow (sandbox databases, made by `kindling up`,
    /// only): what USER could be granted through APP, with PATIENT in context.
    Token {
        #[arg(long, default_value = "./kindling-data")]
        data: PathBuf,
        /// The app (client id) the token is for.
        #[arg(long, default_value = "kindling-demo")]
        app: String,
        /// The user the token acts for.
        #[arg(long, default_value = "clinician")]
        user: String,
        /// The patient in context (needed for patient/ scopes; a patient user's own record always).
        #[arg(long)]
        patient: Option<String>,
        #[arg(long, default_value = "openid fhirUser user/*.rs")]
        scope: String,
        /// The FHIR base the printed curl line uses.
        #[arg(long, default_value = "http://127.0.0.1:8080/fhir")]
        base: String,
    },
    /// Manage user accounts (clinicians and patients) on this database, SQLite or PostgreSQL.
    Users {
        #[arg(long, default_value = "./kindling-data")]
        data: PathBuf,
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Manage registered apps.
    Apps {
        #[arg(long, default_value = "./kindling-data")]
        data: PathBuf,
        #[command(subcommand)]
        command: AppsCommand,
    },
    /// Manage the decision-support (CDS Hooks) services the EHR's charts call.
    Cds {
        #[arg(long, default_value = "./kindling-data")]
        data: PathBuf,
        #[command(subcommand)]
        command: CdsCommand,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KINDLING_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}

/// For the commands that work on the database without serving: `KINDLING_DATABASE_URL` selects
/// PostgreSQL (or another SQLite file) as for `serve`.
fn offline_config(data: PathBuf) -> ServerConfig {
    let database_url = std::env::var("KINDLING_DATABASE_URL").ok().filter(|u| !u.is_empty());
    ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        public_url: None,
        data_dir: data,
        writer_cache_mib: ServerConfig::IMPORT_CACHE_MIB,
        open_sandbox: false,
        tls: None,
        database_url,
        export_ttl_secs: None,
        export_faults: false,
        profiles_dir: None,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let cli = Cli::parse();
    let clock: SharedClock = Arc::new(SystemClock);
    match cli.command {
        Command::Up { serve, patients, seed } => {
            let serve = serve.resolve()?;
            let started = Instant::now();
            // The sandbox: clients may rehearse export failures.
            let mut app = Application::build(&ServerConfig { export_faults: true, ..config(&serve) }, clock).await?;
            let counts = app.store().counts().await?;
            if !counts.iter().any(|(t, n)| t == "Patient" && *n > 0) {
                eprintln!("First start: seeding {patients} synthetic patients (seed {seed}) into {} ...", serve.data.display());
                let n = kindling::seed(&app.state, patients, seed).await?;
                eprintln!("Seeded {n} resources.");
            }
            kindling::ensure_demo_users(&app.state, seed).await?;
            kindling::mark_sandbox(&app.auth).await?;
            ehr::register_demo_app(&app.auth).await?;
            app.mount_reference_app().await?;
            load_apps(&app, serve.apps.as_deref()).await?;
            print_ready(&app, started);
            println!("  EHR (clinicians):    {}/ehr", app.public_url);
            println!("  Patient portal:      {}/portal", app.public_url);
            println!("  Reference app:       {}/app/launch (launch it from a chart: \"Patient summary\")", app.public_url);
            println!("  SMART discovery:     {}/.well-known/smart-configuration", app.base_url());
            println!("  Demo accounts (user name / password):");
            for (user, password, role, name) in kindling::DEMO_USERS {
                println!("    {user} / {password}  ({role}: {name})");
            }
            if serve.open_sandbox {
                println!("  OPEN SANDBOX: the FHIR API answers without access tokens.");
            }
            app.run_until(shutdown_signal()).await
        }
        Command::Serve { serve } => {
            let serve = serve.resolve()?;
            let started = Instant::now();
            let app = Application::build(&config(&serve), clock).await?;
            load_apps(&app, serve.apps.as_deref()).await?;
            print_ready(&app, started);
            app.run_until(shutdown_signal()).await
        }
        Command::Token { data, app: client_id, user, patient, scope, base } => {
            let app = Application::build(&offline_config(data), clock).await?;
            let t = kindling::sandbox_token(&app.auth, &client_id, &user, patient.as_deref(), &scope).await?;
            let token = t["access_token"].as_str().unwrap_or_default();
            eprintln!(
                "Access token for {user} through {client_id}, valid {} s; scope: {}{}",
                t["expires_in"],
                t["scope"].as_str().unwrap_or_default(),
                t["patient"].as_str().map(|p| format!("; patient {p}")).unwrap_or_default()
            );
            println!("{token}");
            eprintln!("\nFor example:\n  curl -H \"Authorization: Bearer {token}\" \"{base}/Patient?_count=5\"");
            Ok(())
        }
        Command::Seed { data, patients, seed } => {
            let app = Application::build(&offline_config(data), clock).await?;
            let n = kindling::seed(&app.state, patients, seed).await?;
            println!("Seeded {patients} patients ({n} resources, seed {seed}).");
            Ok(())
        }
        Command::Import { data, paths } => {
            let files = kindling::import::collect_files(&paths)?;
            let app = Application::build(&offline_config(data), clock).await?;
            let bar = ProgressBar::new(files.len() as u64);
            bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} files {msg}").context("progress template")?);
            let summary = kindling::import::import_files(&app.state, files, |s| {
                bar.set_position(s.files as u64);
                bar.set_message(format!("{} resources, {:.0}/s", s.resources, s.rate()));
            })
            .await?;
            bar.finish_and_clear();
            println!(
                "Imported {} resources ({} created, {} updated, {} unchanged) from {} files in {:.1} s ({:.0} resources/s); {} errors.",
                summary.resources,
                summary.created,
                summary.updated,
                summary.unchanged,
                summary.files,
                summary.elapsed.as_secs_f64(),
                summary.rate(),
                summary.errors.len()
            );
            for e in &summary.errors {
                println!("  error: {e}");
            }
            if summary.errors.is_empty() { Ok(()) } else { std::process::exit(1) }
        }
        Command::Bench(args) => kindling::bench::run(args).await,
        Command::Apps { data, command } => apps(data, command, clock).await,
        Command::Cds { data, command } => cds(data, command, clock).await,
        Command::Users { data, command } => {
            let app = Application::build(&offline_config(data), clock).await?;
            let password = |var: &str| {
                std::env::var(var).map_err(|_| anyhow::anyhow!("set the password in the environment variable {var} (it is never taken on the command line)"))
            };
            match command {
                UsersCommand::List => {
                    for line in kindling::users::list(&app.auth).await? {
                        println!("{line}");
                    }
                }
                UsersCommand::Add { username, name, role, fhir_user, password_env } => {
                    let u = kindling::users::add(&app.auth, &username, &name, &role, &fhir_user, &password(&password_env)?).await?;
                    println!("Added {} ({}).", u.username, u.fhir_user);
                }
                UsersCommand::Disable { username } => {
                    let n = kindling::users::disable(&app.auth, &username).await?;
                    println!("Disabled {username}; {n} grant(s) revoked.");
                }
                UsersCommand::Enable { username } => {
                    kindling::users::enable(&app.auth, &username).await?;
                    println!("Enabled {username}.");
                }
                UsersCommand::Passwd { username, password_env } => {
                    kindling::users::passwd(&app.auth, &username, &password(&password_env)?).await?;
                    println!("Changed the password of {username}.");
                }
                UsersCommand::Admin { username, revoke } => {
                    kindling::users::set_admin(&app.auth, &username, !revoke).await?;
                    println!("{username} is {}an administrator.", if revoke { "no longer " } else { "" });
                }
                UsersCommand::Rights { username, scope } => match kindling::users::set_rights(&app.auth, &username, scope.as_deref()).await? {
                    Some(rights) => println!("{username} may let apps do at most: {rights}"),
                    None => println!("{username} may let apps do whatever the role allows."),
                },
            }
            Ok(())
        }
        Command::Migrate { database_url, public_url } => {
            let mut cfg = offline_config(PathBuf::from("."));
            cfg.database_url = Some(database_url);
            kindling::open_store(&cfg, &format!("{}/fhir", public_url.trim_end_matches('/')), clock).await?;
            println!("The database is up to date.");
            Ok(())
        }
        Command::App { config } => {
            let text = std::fs::read_to_string(&config).with_context(|| format!("cannot read {}", config.display()))?;
            let cfg = app::config::AppConfig::from_toml(&text).map_err(|e| anyhow::anyhow!(e))?;
            let key = match &cfg.session_key_env {
                Some(var) => match std::env::var(var) {
                    Ok(v) => app::key_from_base64(&v).map_err(|e| anyhow::anyhow!("{var}: {e}"))?,
                    Err(_) => {
                        eprintln!("{var} is not set: using a random session key (sessions end when the app restarts)");
                        app::random_key()
                    }
                },
                None => app::random_key(),
            };
            let listen = cfg.listen.clone();
            let public = cfg.public_url.clone();
            let reference = app::App::new(cfg, key, |var| std::env::var(var).ok()).await.map_err(|e| anyhow::anyhow!(e))?;
            let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
            println!("Reference app serving at {public} (launch URL {public}/app/launch, redirect URI {public}/app/callback)");
            axum::serve(listener, reference.router()).with_graceful_shutdown(shutdown_signal()).await?;
            Ok(())
        }
        Command::Keys { data, command } => {
            let app = Application::build(&offline_config(data), clock.clone()).await?;
            let store = app.state.store.as_ref();
            match command {
                KeysCommand::Rotate => println!("new signing key: {}", auth::keys::rotate(store, fhir::time::unix_ms(clock.now())).await?),
                KeysCommand::Prune => println!("removed keys: {:?}", auth::keys::prune(store, 2 * 3600 * 1000).await?),
            }
            Ok(())
        }
    }
}

async fn load_apps(app: &Application, path: Option<&std::path::Path>) -> anyhow::Result<()> {
    let default = PathBuf::from("config/apps.dev.toml");
    let path = match path {
        Some(p) => p.to_path_buf(),
        None if default.is_file() => default,
        None => return Ok(()),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let ids = auth::apps::load_apps_file(app.state.store.as_ref(), &text, |v| std::env::var(v).ok()).await.with_context(|| format!("in {}", path.display()))?;
    tracing::info!(apps = ids.len(), file = %path.display(), "apps registered from configuration");
    let services = ehr::cds::load_services_file(&app.auth, &text).await.map_err(|e| anyhow::anyhow!(e)).with_context(|| format!("in {}", path.display()))?;
    if !services.is_empty() {
        tracing::info!(services = services.len(), file = %path.display(), "decision-support services registered from configuration");
    }
    Ok(())
}

async fn apps(data: PathBuf, command: AppsCommand, clock: SharedClock) -> anyhow::Result<()> {
    let app = Application::build(&offline_config(data), clock).await?;
    let store = app.state.store.as_ref();
    match command {
        AppsCommand::List => {
            for c in auth::registry::list_clients(store).await? {
                println!("{}\t{:?}\t{}\t{}", c.client_id, c.kind, c.name, c.redirect_uris.join(" "));
            }
        }
        AppsCommand::Add { name, kind, redirect_uris, scope, launch_url, jwks_file, client_id } => {
            let kind: auth::model::ClientKind = serde_json::from_value(serde_json::Value::String(kind.clone()))
                .map_err(|_| anyhow::anyhow!("--type must be public, confidential-symmetric or confidential-asymmetric, not '{kind}'"))?;
            let jwks = match jwks_file {
                Some(f) => Some(serde_json::from_str(&std::fs::read_to_string(&f)?).with_context(|| format!("{} is not a JWKS", f.display()))?),
                None => None,
            };
            let client = auth::model::Client {
                client_id: client_id.unwrap_or_else(auth::apps::new_client_id),
                name,
                kind,
                secret_hash: None,
                redirect_uris,
                launch_url,
                allowed_scope: scope,
                jwks,
                jwks_url: None,
                icon: None,
                disabled: false,
                profile: None,
                self_registered: false,
            };
            let id = client.client_id.clone();
            let secret = auth::apps::register(store, client).await?;
            println!("client_id: {id}");
            if let Some(s) = secret {
                println!("client_secret: {s}");
                println!("(the secret is shown only now; it is stored hashed)");
            }
        }
        AppsCommand::Remove { client_id } => {
            if auth::registry::stored_client(store, &client_id).await?.is_none() {
                anyhow::bail!("no app '{client_id}' is registered (kindling apps list shows them)");
            }
            let revoked = auth::apps::remove(&app.auth, &client_id, None).await?;
            println!("removed {client_id} ({revoked} grant(s) revoked: its tokens no longer work)");
        }
    }
    Ok(())
}

/// A runtime change (fault, disabled) to a CDS service, made on its registration as it is now.
async fn change_cds(auth: &auth::Shared, id: &str, change: impl Fn(&mut ehr::cds::CdsEndpoint)) -> anyhow::Result<ehr::cds::CdsEndpoint> {
    ehr::cds::change_endpoint(auth, id, change)
        .await
        .map_err(anyhow::Error::msg)?
        .ok_or_else(|| anyhow::anyhow!("no CDS service '{id}' is registered (kindling cds list shows them)"))
}

async fn cds(data: PathBuf, command: CdsCommand, clock: SharedClock) -> anyhow::Result<()> {
    let app = Application::build(&offline_config(data), clock).await?;
    let existing = |id: &str| {
        let auth = app.auth.clone();
        let id = id.to_string();
        async move {
            ehr::cds::endpoints(&auth)
                .await?
                .into_iter()
                .find(|e| e.id == id)
                .ok_or_else(|| anyhow::anyhow!("no CDS service '{id}' is registered (kindling cds list shows them)"))
        }
    };
    match command {
        CdsCommand::List => {
            for e in ehr::cds::endpoints(&app.auth).await? {
                let apps = if e.apps.is_empty() { "any app".to_string() } else { e.apps.join(",") };
                let mut client = e.client_id.as_deref().map(|c| format!("\tfhirAuthorization as {c}")).unwrap_or_default();
                if !e.fault.is_none() {
                    client.push_str(&format!("\tinjected fault: {}", e.fault.name()));
                }
                println!("{}\t{}\t{}\t{apps}{client}{}", e.id, e.name, e.url, if e.disabled { "\tdisabled" } else { "" });
            }
        }
        CdsCommand::Add { id, name, url, apps, client } => {
            for client in apps.iter().chain(client.iter()) {
                if auth::registry::stored_client(app.state.store.as_ref(), client).await?.is_none() {
                    anyhow::bail!("no app '{client}' is registered (kindling apps list shows them)");
                }
            }
            ehr::cds::register(
                &app.auth,
                &ehr::cds::CdsEndpoint { id: id.clone(), name, url, disabled: false, apps, client_id: client, fault: Default::default() },
            )
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
            println!("registered {id}");
        }
        CdsCommand::Fault { id, fault } => {
            let fault = ehr::cds::CdsFault::parse(&fault).ok_or_else(|| anyhow::anyhow!("no fault '{fault}': none, slow, error, garbled or bad-jwt"))?;
            change_cds(&app.auth, &id, |e| e.fault = fault).await?;
            println!("{id}: injected fault {}", fault.name());
        }
        CdsCommand::Disable { id } => {
            change_cds(&app.auth, &id, |e| e.disabled = true).await?;
            println!("disabled {id}");
        }
        CdsCommand::Enable { id } => {
            change_cds(&app.auth, &id, |e| e.disabled = false).await?;
            println!("enabled {id}");
        }
        CdsCommand::Remove { id } => {
            existing(&id).await?;
            ehr::cds::remove(&app.auth, &id).await?;
            println!("removed {id}");
        }
    }
    Ok(())
}

fn config(serve: &Serve) -> ServerConfig {
    ServerConfig {
        listen: serve.listen,
        public_url: serve.public_url.clone(),
        data_dir: serve.data.clone(),
        writer_cache_mib: ServerConfig::SERVE_CACHE_MIB,
        open_sandbox: serve.open_sandbox,
        tls: match (&serve.tls_cert, &serve.tls_key) {
            (Some(cert), Some(key)) => Some(kindling::TlsFiles { cert: cert.clone(), key: key.clone() }),
            _ => None,
        },
        database_url: serve.database_url.clone(),
        export_ttl_secs: serve.export_ttl_secs,
        export_faults: serve.export_faults,
        profiles_dir: serve.profiles.clone(),
    }
}

fn print_ready(app: &Application, started: Instant) {
    println!("Kindling is serving at {} (ready in {} ms, listening on {})", app.public_url, started.elapsed().as_millis(), app.addr);
    println!("  FHIR R4 base:        {}", app.base_url());
    println!("  CapabilityStatement: {}/metadata", app.base_url());
    println!("  Health:              {}/healthz", app.public_url);
}
