//! `kindling bench`: imports the Synthea sample set, starts `kindling serve` as a separate process and
//! measures start-up time, idle memory, read-by-id and the vital-signs search at 1 and 32 clients over
//! keep-alive HTTP/1.1 connections on loopback. Prints one line per measurement.

use anyhow::{Context, bail};
use fhir::time::{SharedClock, SystemClock};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What `kindling bench` measures, and on which data.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Directory of Synthea bundles to import.
    #[arg(long, default_value = "../shared/data/synthea-r4")]
    pub synthea: PathBuf,
    /// Data directory for the benchmark (wiped unless --reuse).
    #[arg(long, default_value = "./target/bench-data")]
    pub data: PathBuf,
    /// Reuse an already imported data directory.
    #[arg(long)]
    pub reuse: bool,
    /// Seconds per load scenario.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Benchmark on PostgreSQL instead of SQLite: `postgres://…` of a database the benchmark may wipe.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Run only these parts (comma-separated): `fhir` (reads and searches), `tokens` (client_credentials),
    /// `code` (authorize + code exchange), `overhead` (token check on a read), `api-load` (the Synthea set
    /// loaded through the FHIR API into a fresh sandbox, then US-Core-style searches), `scoped` (one
    /// search with a patient-, a user- and a system-level token in turn), `export` (a system-level Bulk
    /// Data export of everything, kicked off and downloaded), `chained` (chained-parameter and `_has`
    /// searches), `writes` (conditional creates and transactions at 1 and 8 clients, then a duplicate
    /// check), `ehr-launch` (an EHR launch as the SMART JavaScript client makes it, request by request).
    /// All when absent.
    #[arg(long, value_delimiter = ',', value_parser = ["fhir", "tokens", "code", "overhead", "api-load", "scoped", "export", "chained", "writes", "ehr-launch"])]
    pub only: Vec<String>,
}

impl BenchArgs {
    fn runs(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

struct ServerProcess {
    child: Child,
    base: String,
    startup: Duration,
    /// SQL statements the server ran, when it was started to count them (PostgreSQL).
    statements: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(data: &std::path::Path, open_sandbox: bool, database_url: Option<&str>) -> anyhow::Result<ServerProcess> {
    start_server_counting(data, open_sandbox, database_url, false)
}

/// [`start_server`], counting the SQL statements it runs when `count_statements` (from sqlx's own
/// statement log, target `sqlx::query`, which is then on: a server to count with, not to time).
fn start_server_counting(data: &std::path::Path, open_sandbox: bool, database_url: Option<&str>, count_statements: bool) -> anyhow::Result<ServerProcess> {
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
    if open_sandbox {
        args.insert(1, "--open-sandbox");
    }
    if let Some(url) = database_url {
        args.extend(["--database-url", url]);
    }
    let log = if count_statements { "warn,sqlx::query=trace" } else { "warn" };
    let stderr = if count_statements { Stdio::piped() } else { Stdio::inherit() };
    let mut child = Command::new(exe).args(args).arg("--data").arg(data).env("KINDLING_LOG", log).stdout(Stdio::piped()).stderr(stderr).spawn()?;
    let statements = match child.stderr.take() {
        Some(err) => {
            let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let c = counter.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if line.contains("sqlx::query") {
                        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    } else {
                        eprintln!("{line}");
                    }
                }
            });
            Some(counter)
        }
        None => None,
    };
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        let Some(line) = lines.next() else { bail!("the server exited before it was ready") };
        let line = line?;
        if let Some(rest) = line.strip_prefix("Kindling is serving at ") {
            break rest.split_whitespace().next().unwrap_or_default().to_string();
        }
    };
    let startup = started.elapsed();
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(ServerProcess { child, base, startup, statements })
}

/// CPU time (user and system) the process has used so far, in clock ticks of 10 ms (Linux).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces, so after its closing parenthesis).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Bytes the process has handed to `write` and its kin so far (the WAL and the checkpoints' copies into
/// the database, for a SQLite server; its responses too).
fn written_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines().find_map(|l| l.strip_prefix("wchar:"))?.trim().parse().ok()
}

/// What the server spent between two readings of ([`cpu_ticks`], [`written_bytes`]): CPU time in
/// microseconds and bytes written in KiB, per request.
fn spent_per_request(before: (Option<u64>, Option<u64>), after: (Option<u64>, Option<u64>), requests: usize) -> String {
    let mut line = String::new();
    if let (Some(b), Some(a)) = (before.0, after.0)
        && requests > 0
    {
        line.push_str(&format!("  server_cpu={:.0} us/req", (a - b) as f64 * 10_000.0 / requests as f64));
    }
    if let (Some(b), Some(a)) = (before.1, after.1)
        && requests > 0
    {
        line.push_str(&format!(" written={:.1} KiB/req", (a - b) as f64 / 1024.0 / requests as f64));
    }
    line
}

/// The readings [`spent_per_request`] compares.
fn server_spent(pid: u32) -> (Option<u64>, Option<u64>) {
    (cpu_ticks(pid), written_bytes(pid))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// One keep-alive connection.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

/// A response as the benchmark needs it.
struct Reply {
    status: u16,
    location: Option<String>,
    content_location: Option<String>,
    set_cookie: Option<String>,
    body: Bytes,
}

async fn connect(base: &str) -> anyhow::Result<Conn> {
    let url = url::Url::parse(base)?;
    let host = format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(80));
    let stream = tokio::net::TcpStream::connect(&host).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(Conn { sender, host })
}

impl Conn {
    async fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<String>) -> anyhow::Result<Reply> {
        self.sender.ready().await?;
        let mut req = Request::builder().method(method).uri(path).header("host", &self.host).header("accept", "application/fhir+json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if body.is_some() && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            req = req.header("content-type", "application/x-www-form-urlencoded");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (location, content_location, set_cookie) = (header("location"), header("content-location"), header("set-cookie"));
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Reply { status, location, content_location, set_cookie, body })
    }

    async fn get(&mut self, path: &str) -> anyhow::Result<(u16, Bytes)> {
        let r = self.send("GET", path, &[], None).await?;
        Ok((r.status, r.body))
    }
}

struct Stats {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn load(base: &str, paths: Arc<Vec<String>>, clients: usize, seconds: u64) -> anyhow::Result<Stats> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let base = base.to_string();
        let paths = paths.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = connect(&base).await?;
            let mut lat = Vec::new();
            let mut errors = 0;
            let mut i = c;
            // Bounded: stops at the deadline or after 5 million requests.
            while Instant::now() < deadline && lat.len() < 5_000_000 {
                let path = &paths[i % paths.len()];
                i += clients;
                let t = Instant::now();
                let (status, _) = conn.get(path).await?;
                lat.push(t.elapsed().as_micros() as u64);
                if status != 200 {
                    errors += 1;
                }
            }
            anyhow::Ok((lat, errors))
        }));
    }
    collect(tasks, started).await
}

fn report(name: &str, clients: usize, s: &Stats) {
    println!(
        "{name:<28} clients={clients:<3} requests={:<8} errors={:<4} throughput={:>9.0} req/s  p50={:>7.3} ms  p99={:>7.3} ms",
        s.requests,
        s.errors,
        s.requests as f64 / s.elapsed.as_secs_f64(),
        percentile(&s.latencies_us, 0.50),
        percentile(&s.latencies_us, 0.99)
    );
}

/// Runs the benchmark: prints one line per measurement.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.runs("api-load") {
        api_load(&args).await?;
        if args.only.iter().all(|p| p == "api-load") {
            return Ok(());
        }
    }
    if !args.reuse {
        if !args.synthea.is_dir() {
            bail!("the Synthea directory {} does not exist (use --synthea)", args.synthea.display());
        }
        if args.data.exists() {
            std::fs::remove_dir_all(&args.data)?;
        }
        if let Some(url) = &args.database_url {
            store::postgres::reset_database(url).await?;
        }
        let clock: SharedClock = Arc::new(SystemClock);
        let app = crate::Application::build(
            &crate::ServerConfig {
                listen: ([127, 0, 0, 1], 0).into(),
                public_url: None,
                data_dir: args.data.clone(),
                writer_cache_mib: crate::ServerConfig::IMPORT_CACHE_MIB,
                open_sandbox: false,
                tls: None,
                database_url: args.database_url.clone(),
                export_ttl_secs: None,
                export_faults: false,
                profiles_dir: None,
            },
            clock,
        )
        .await?;
        let files = crate::import::collect_files(std::slice::from_ref(&args.synthea))?;
        let summary = crate::import::import_files(&app.state, files, |_| {}).await?;
        println!(
            "import                       files={} resources={} errors={} seconds={:.1} rate={:.0} resources/s",
            summary.files,
            summary.resources,
            summary.errors.len(),
            summary.elapsed.as_secs_f64(),
            summary.rate()
        );
    }
    let server = start_server(&args.data, true, args.database_url.as_deref())?;
    println!(
        "startup                      ready_in={} ms (existing {})",
        server.startup.as_millis(),
        if args.database_url.is_some() { "PostgreSQL database" } else { "data directory" }
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = server.child.id();
    if let Some(kib) = rss_kib(pid) {
        println!("idle_memory                  rss={:.1} MB", kib as f64 / 1024.0);
    }
    let mut conn = connect(&server.base).await?;
    let (_, body) = conn.get("/fhir/Patient?_count=200&_elements=id").await?;
    let bundle: Value = serde_json::from_slice(&body)?;
    let patients: Vec<String> =
        bundle["entry"].as_array().map(|a| a.iter().filter_map(|e| e["resource"]["id"].as_str().map(str::to_string)).collect()).unwrap_or_default();
    if patients.is_empty() {
        bail!("no patients in {}", args.data.display());
    }
    let mut observations = Vec::new();
    for p in patients.iter().take(100) {
        let (_, body) = conn.get(&format!("/fhir/Observation?patient={p}&_count=3&_elements=id")).await?;
        let b: Value = serde_json::from_slice(&body)?;
        observations.extend(b["entry"].as_array().into_iter().flatten().filter_map(|e| e["resource"]["id"].as_str().map(str::to_string)));
    }
    let reads = Arc::new(observations.iter().map(|id| format!("/fhir/Observation/{id}")).collect::<Vec<_>>());
    let searches = Arc::new(patients.iter().map(|p| format!("/fhir/Observation?patient={p}&category=vital-signs&_sort=-date&_count=50")).collect::<Vec<_>>());
    for clients in [1, 32].into_iter().filter(|_| args.runs("fhir")) {
        let s = load(&server.base, reads.clone(), clients, args.seconds).await?;
        report("read Observation by id", clients, &s);
    }
    for clients in [1, 32].into_iter().filter(|_| args.runs("fhir")) {
        let s = load(&server.base, searches.clone(), clients, args.seconds).await?;
        report("vital-signs search", clients, &s);
    }
    if args.runs("chained") {
        chained_searches(&server.base, &mut conn, args.seconds).await?;
    }
    if args.runs("writes") {
        writes(&server.base, &mut conn, args.seconds).await?;
    }
    if let Some(kib) = rss_kib(pid) {
        println!("memory_after_load            rss={:.1} MB", kib as f64 / 1024.0);
    }
    // Only one server runs while the authorisation server is measured: a second process on the same
    // SQLite database would checkpoint its log too (about 6% of the machine, measured).
    drop(server);
    auth_bench(&args, &reads, &patients).await
}

/// Chained parameters and `_has` on one connection: observations by their patient's identifier and by
/// their patient's family name, and patients by a laboratory code of their observations.
async fn chained_searches(base: &str, conn: &mut Conn, seconds: u64) -> anyhow::Result<()> {
    let (_, body) = conn.get("/fhir/Patient?_count=100&_elements=identifier,name").await?;
    let bundle: Value = serde_json::from_slice(&body)?;
    let patients: Vec<&Value> = bundle["entry"].as_array().into_iter().flatten().map(|e| &e["resource"]).collect();
    let by_identifier: Vec<String> = patients
        .iter()
        .filter_map(|p| {
            let i = &p["identifier"][0];
            Some(format!("/fhir/Observation?patient.identifier={}|{}&_count=50", i["system"].as_str()?, i["value"].as_str()?))
        })
        .collect();
    let by_name: Vec<String> = patients
        .iter()
        .filter_map(|p| Some(format!("/fhir/Observation?subject:Patient.family={}&category=vital-signs&_count=50", p["name"][0]["family"].as_str()?)))
        .collect();
    let has: Vec<String> = ["4548-4", "2339-0", "8302-2", "72166-2", "2093-3", "39156-5"]
        .iter()
        .map(|c| format!("/fhir/Patient?_has:Observation:patient:code=http://loinc.org|{c}&_count=50"))
        .collect();
    for (label, paths) in [("chain patient.identifier", by_identifier), ("chain subject:Patient.family", by_name), ("_has Observation code", has)] {
        if paths.is_empty() {
            bail!("no patients to build the {label} searches from");
        }
        let s = load(base, Arc::new(paths), 1, seconds).await?;
        report(label, 1, &s);
    }
    Ok(())
}

/// One write of a write load: method, path, extra headers, body.
type Write = (&'static str, String, Vec<(&'static str, String)>, String);

/// Like [`load`], for writes: every client sends `make(0)`, `make(1)`, … in the same order, so that the
/// clients ask for the same thing at about the same time; `ok` statuses are not errors. Also returns how
/// many answers were `created` (that status).
async fn load_writes(
    base: &str,
    clients: usize,
    seconds: u64,
    make: Arc<dyn Fn(usize) -> Write + Send + Sync>,
    ok: &'static [u16],
    created: u16,
) -> anyhow::Result<(Stats, usize)> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (base, make, made) = (base.to_string(), make.clone(), made.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = connect(&base).await?;
            let (mut lat, mut errors) = (Vec::new(), 0);
            while Instant::now() < deadline && lat.len() < 1_000_000 {
                let (method, path, headers, body) = make(lat.len());
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let t = Instant::now();
                let r = conn.send(method, &path, &headers, Some(body)).await?;
                lat.push(t.elapsed().as_micros() as u64);
                if !ok.contains(&r.status) {
                    errors += 1;
                }
                if r.status == created {
                    made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            anyhow::Ok((lat, errors))
        }));
    }
    let stats = collect(tasks, started).await?;
    Ok((stats, made.load(std::sync::atomic::Ordering::Relaxed)))
}

/// The write paths integrations take, on the imported data: conditional creates (`If-None-Exist` on an
/// identifier) and transactions (a conditionally created patient with three observations), at 1 and 8
/// clients. Every client walks the same keys in the same order, so the clients ask for each key at about
/// the same time: the first of them creates it, the others must find it. Each key is new for the first
/// KEYS requests of a client and known after. Then every key of the run is searched: more than one
/// patient per identifier is a duplicate.
async fn writes(base: &str, conn: &mut Conn, seconds: u64) -> anyhow::Result<()> {
    const KEYS: usize = 400;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    const SYSTEM: &str = "https://bench.kindling.example/mrn";
    let system = SYSTEM;
    let patient = move |key: String| serde_json::json!({"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": key}], "name": [{"family": "Bench", "given": ["Write"]}], "gender": "unknown"});
    for clients in [1, 8] {
        let run = run.clone();
        let make: Arc<dyn Fn(usize) -> Write + Send + Sync> = Arc::new(move |i| {
            let key = format!("{run}-c{clients}-{}", i % KEYS);
            let headers = vec![("content-type", "application/fhir+json".to_string()), ("if-none-exist", format!("identifier={system}|{key}"))];
            ("POST", "/fhir/Patient".to_string(), headers, patient(key).to_string())
        });
        let (s, created) = load_writes(base, clients, seconds, make, &[200, 201], 201).await?;
        report("conditional create", clients, &s);
        // Each key is created once (201) whoever asks first; every other request finds it (200).
        println!("conditional create           clients={clients:<3} created={created} keys={KEYS} (one 201 per key expected; more is a duplicate)");
    }
    for clients in [1, 8] {
        let run = run.clone();
        let make: Arc<dyn Fn(usize) -> Write + Send + Sync> = Arc::new(move |i| {
            let key = format!("{run}-t{clients}-{}", i % KEYS);
            let subject = format!("urn:uuid:{}", uuid::Uuid::new_v4());
            let mut entries = vec![serde_json::json!({"fullUrl": subject, "resource": patient(key.clone()),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier={system}|{key}")}})];
            for (code, display, value, unit) in
                [("8867-4", "Heart rate", 72, "/min"), ("9279-1", "Respiratory rate", 16, "/min"), ("8310-5", "Body temperature", 37, "Cel")]
            {
                entries.push(serde_json::json!({"resource": {"resourceType": "Observation", "status": "final",
                    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
                    "subject": {"reference": subject}, "effectiveDateTime": "2026-12-06T10:00:00Z",
                    "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}},
                    "request": {"method": "POST", "url": "Observation"}}));
            }
            let bundle = serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
            ("POST", "/fhir".to_string(), vec![("content-type", "application/fhir+json".to_string())], bundle.to_string())
        });
        let (s, _) = load_writes(base, clients, seconds, make, &[200], 0).await?;
        report("transaction (1+3 entries)", clients, &s);
    }
    let (mut keys, mut duplicates) = (0, 0);
    for prefix in ["c1", "c8", "t1", "t8"] {
        for k in 0..KEYS {
            let (status, body) = conn.get(&format!("/fhir/Patient?identifier={system}|{run}-{prefix}-{k}&_summary=count")).await?;
            anyhow::ensure!(status == 200, "the duplicate check's search failed with {status}");
            let total = serde_json::from_slice::<Value>(&body)?["total"].as_u64().unwrap_or(0);
            keys += usize::from(total > 0);
            duplicates += total.saturating_sub(1) as usize;
        }
    }
    println!("write_duplicates             identifiers={keys} duplicates={duplicates}");
    Ok(())
}

/// Data that arrives through the API: a fresh sandbox (one seeded patient, statistics taken then, as
/// `kindling up` does), the Synthea set PUT through `POST /fhir` transactions by 4 clients, as an
/// integration engine would, then a set of US-Core-style searches, each run once, timed one by one. On
/// PostgreSQL (`--database-url`) the database is emptied first.
async fn api_load(args: &BenchArgs) -> anyhow::Result<()> {
    let data = args.data.with_extension("api");
    if data.exists() {
        std::fs::remove_dir_all(&data)?;
    }
    if let Some(url) = &args.database_url {
        store::postgres::reset_database(url).await?;
    }
    {
        let clock: SharedClock = Arc::new(SystemClock);
        let config = crate::ServerConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            public_url: None,
            data_dir: data.clone(),
            writer_cache_mib: crate::ServerConfig::SERVE_CACHE_MIB,
            open_sandbox: true,
            tls: None,
            database_url: args.database_url.clone(),
            export_ttl_secs: None,
            export_faults: false,
            profiles_dir: None,
        };
        let app = crate::Application::build(&config, clock).await?;
        crate::seed(&app.state, 0, 1).await?;
    }
    let server = start_server(&data, true, args.database_url.as_deref())?;
    let files = crate::import::collect_files(std::slice::from_ref(&args.synthea))?;
    let queue = Arc::new(std::sync::Mutex::new(files));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (base, queue) = (server.base.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = connect(&base).await?;
            let (mut resources, mut errors) = (0usize, 0usize);
            loop {
                let Some(file) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop() else { break };
                for bundle in crate::import::read_bundles(&file)? {
                    resources += bundle["entry"].as_array().map_or(0, Vec::len);
                    let r = conn.send("POST", "/fhir", &[("content-type", "application/fhir+json")], Some(bundle.to_string())).await?;
                    if r.status != 200 {
                        errors += 1;
                        let said = String::from_utf8_lossy(&r.body[..r.body.len().min(300)]).to_string();
                        println!("# {}: {} {said}", file.display(), r.status);
                    }
                }
            }
            anyhow::Ok((resources, errors))
        }));
    }
    let (mut resources, mut errors) = (0, 0);
    for t in tasks {
        let (r, e) = t.await??;
        resources += r;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "api_load                     resources={resources} failed_bundles={errors} seconds={elapsed:.1} rate={:.0} resources/s",
        resources as f64 / elapsed
    );

    let mut conn = connect(&server.base).await?;
    let (_, body) = conn.get("/fhir/Patient?_count=10&_elements=id&_sort=_id").await?;
    let bundle: Value = serde_json::from_slice(&body)?;
    let patients: Vec<String> =
        bundle["entry"].as_array().map(|a| a.iter().filter_map(|e| e["resource"]["id"].as_str().map(str::to_string)).collect()).unwrap_or_default();
    let mut searches = vec![
        "/fhir/Encounter?class=IMP&date=ge2016-01-01&date=lt2017-01-01".to_string(),
        "/fhir/Observation?code=http://loinc.org|4548-4".to_string(),
        "/fhir/Condition?clinical-status=active&code=http://snomed.info/sct|44054006".to_string(),
        "/fhir/Patient?gender=female&birthdate=ge1980".to_string(),
        "/fhir/Immunization?date=ge2019-01-01".to_string(),
    ];
    for p in &patients {
        searches.extend([
            format!("/fhir/Observation?patient={p}&category=laboratory"),
            format!("/fhir/Observation?patient={p}&code=http://loinc.org|4548-4"),
            format!("/fhir/Observation?patient={p}&date=1979"),
            format!("/fhir/Condition?patient={p}&category=problem-list-item"),
            format!("/fhir/Encounter?patient={p}&date=ge2015-01-01"),
        ]);
    }
    let (mut total, mut slowest, mut worst, mut failed) = (Duration::ZERO, Duration::ZERO, String::new(), 0);
    for path in &searches {
        let t = Instant::now();
        let (status, _) = conn.get(path).await?;
        let took = t.elapsed();
        failed += usize::from(status != 200);
        total += took;
        if took > slowest {
            (slowest, worst) = (took, path.clone());
        }
    }
    println!(
        "searches_after_api_load      searches={} failed={failed} total={:.1} ms slowest={:.1} ms ({worst})",
        searches.len(),
        total.as_secs_f64() * 1000.0,
        slowest.as_secs_f64() * 1000.0
    );
    Ok(())
}

const BENCH_REDIRECT: &str = "https://bench.example/cb";
const BENCH_LAUNCH: &str = "https://bench.example/launch";

/// The authorisation server: backend-services tokens, full code flows and the cost of checking a token on a
/// FHIR read, against a `kindling serve` that enforces tokens.
async fn auth_bench(args: &BenchArgs, reads: &Arc<Vec<String>>, patients: &[String]) -> anyhow::Result<()> {
    use auth::model::{Client, ClientKind, UserRole};
    let mut scoped_tokens: Vec<(&str, String)> = Vec::new();
    // The backend clients' keys, one per algorithm SMART asks servers to accept, through the SDK.
    let es384 = client::SigningKey::generate_es384("bench-es");
    let rs384 = client::SigningKey::generate_rs384("bench-rs");
    {
        let clock: SharedClock = Arc::new(SystemClock);
        let config = crate::ServerConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            public_url: None,
            data_dir: args.data.clone(),
            writer_cache_mib: 32,
            open_sandbox: false,
            tls: None,
            database_url: args.database_url.clone(),
            export_ttl_secs: None,
            export_faults: false,
            profiles_dir: None,
        };
        let app = crate::Application::build(&config, clock).await?;
        let store = app.state.store.as_ref();
        let client = |id: &str, kind, scope: &str, jwks: Option<Value>| Client {
            client_id: id.into(),
            name: id.into(),
            kind,
            secret_hash: None,
            redirect_uris: vec![BENCH_REDIRECT.into()],
            launch_url: None,
            allowed_scope: scope.into(),
            jwks,
            jwks_url: None,
            icon: None,
            disabled: false,
            profile: None,
            self_registered: false,
        };
        auth::registry::put_client(
            store,
            client("bench-backend", ClientKind::ConfidentialAsymmetric, "system/*.rs", Some(serde_json::json!({"keys": [es384.public_jwk()]}))),
        )
        .await?;
        auth::registry::put_client(
            store,
            client("bench-backend-rs", ClientKind::ConfidentialAsymmetric, "system/*.rs", Some(serde_json::json!({"keys": [rs384.public_jwk()]}))),
        )
        .await?;
        auth::registry::put_client(store, client("bench-public", ClientKind::Public, "launch/patient openid fhirUser user/*.rs patient/*.rs", None)).await?;
        let mut ehr_app = client("bench-ehr", ClientKind::Public, "launch openid fhirUser offline_access patient/*.rs", None);
        ehr_app.launch_url = Some(BENCH_LAUNCH.into());
        auth::registry::put_client(store, ehr_app).await?;
        auth::registry::put_user(store, "bench-doc", "Bench", UserRole::Clinician, "bench-pass", "Practitioner/bench").await?;
        if args.runs("scoped") {
            let patient = patients.first().map(String::as_str);
            let mint = async |scope: &str, patient: Option<&str>| -> anyhow::Result<String> {
                let t = auth::operator_tokens(&app.auth, "bench-public", "bench-doc", patient, scope).await.map_err(anyhow::Error::msg)?;
                Ok(t["access_token"].as_str().unwrap_or_default().to_string())
            };
            scoped_tokens = vec![("patient/*.rs", mint("patient/*.rs", patient).await?), ("user/*.rs", mint("user/*.rs", None).await?)];
        }
    }
    let server = start_server(&args.data, false, args.database_url.as_deref())?;
    let base = server.base.clone();
    let token_path = "/auth/token".to_string();
    let token_url = format!("{base}/auth/token");

    // client_credentials, each request with its own assertion (fresh jti), ES384 then RS384. The
    // assertions are signed before the clock starts (on every core), so the figure is the server's, not
    // the load generator's signing.
    for (name, key, client_id, count) in [
        ("client_credentials ES384", &es384, "bench-backend", 40_000),
        ("client_credentials RS384", &rs384, "bench-backend-rs", args.seconds as usize * 20_000),
    ]
    .into_iter()
    .filter(|_| args.runs("tokens"))
    {
        let signed = Arc::new(presign(key, client_id, &token_url, count)?);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for clients in [1, 32] {
            let deadline = Instant::now() + Duration::from_secs(args.seconds);
            let started = Instant::now();
            let spent_before = server_spent(server.child.id());
            let mut tasks = Vec::new();
            for _ in 0..clients {
                let (base, signed, next, token_path) = (base.clone(), signed.clone(), next.clone(), token_path.clone());
                tasks.push(tokio::spawn(async move {
                    let mut conn = connect(&base).await?;
                    let (mut lat, mut errors) = (Vec::new(), 0usize);
                    while Instant::now() < deadline {
                        let Some(assertion) = signed.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) else { break };
                        let t = Instant::now();
                        let body = format!("grant_type=client_credentials&scope=system%2F*.rs&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={assertion}");
                        let r = conn.send("POST", &token_path, &[], Some(body)).await?;
                        lat.push(t.elapsed().as_micros() as u64);
                        errors += usize::from(r.status != 200);
                    }
                    anyhow::Ok((lat, errors))
                }));
            }
            let s = collect(tasks, started).await?;
            if next.load(std::sync::atomic::Ordering::Relaxed) >= signed.len() {
                println!("# {name}: the {} pre-signed assertions ran out before the time was up; the figure below is a lower bound", signed.len());
            }
            let spent = spent_per_request(spent_before, server_spent(server.child.id()), s.requests);
            report(name, clients, &s);
            if !spent.is_empty() {
                println!("{name:<28} clients={clients:<3}{spent}");
            }
        }
        // The same at 32 connections from `wrk` (C, one thread), when it is installed: a lighter load
        // generator leaves more of the two cores to the server, as the issue's figures were measured.
        if let Some(line) = wrk_tokens(&base, server.child.id(), key, client_id, &token_url, args.seconds, &args.data).await? {
            println!("{name:<28} {line}");
        }
    }

    // One search with each kind of token, in turn on one connection, so that machine noise hits all alike.
    if args.runs("scoped") {
        let mut conn = connect(&base).await?;
        scoped_tokens.push(("system/*.rs", system_token(&mut conn, &rs384, &token_url).await?));
        let patient = patients.first().cloned().unwrap_or_default();
        let path = format!("/fhir/Observation?patient={patient}&category=vital-signs&_sort=-date&_count=50");
        let bearers: Vec<String> = scoped_tokens.iter().map(|(_, t)| format!("Bearer {t}")).collect();
        let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); bearers.len()];
        let (mut errors, mut entries) = (0usize, vec![0usize; bearers.len()]);
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        while Instant::now() < deadline && latencies[0].len() < 1_000_000 {
            for (k, bearer) in bearers.iter().enumerate() {
                let t = Instant::now();
                let r = conn.send("GET", &path, &[("authorization", bearer)], None).await?;
                latencies[k].push(t.elapsed().as_micros() as u64);
                errors += usize::from(r.status != 200);
                if entries[k] == 0 {
                    let b: Value = serde_json::from_slice(&r.body)?;
                    entries[k] = b["entry"].as_array().map_or(0, Vec::len);
                }
            }
        }
        let system_p50 = {
            let mut l = latencies[bearers.len() - 1].clone();
            l.sort_unstable();
            percentile(&l, 0.5)
        };
        for ((scope, _), (mut l, n)) in scoped_tokens.iter().zip(latencies.into_iter().zip(entries)) {
            l.sort_unstable();
            let p50 = percentile(&l, 0.5);
            println!(
                "scoped search {scope:<14} requests={:<6} entries={n:<3} errors={errors:<3} p50={p50:>7.3} ms  p99={:>7.3} ms  vs system={:.2}x",
                l.len(),
                percentile(&l, 0.99),
                p50 / system_p50
            );
        }
        // On PostgreSQL: the statements a page costs with each token, on a second node started to count
        // them (its statement log would slow the timed one).
        if args.database_url.is_some() {
            let counting = start_server_counting(&args.data, false, args.database_url.as_deref(), true)?;
            let mut conn = connect(&counting.base).await?;
            let counter = counting.statements.clone().context("the counting server counts")?;
            let mut line = String::from("scoped search statements per page (PostgreSQL, 50-entry page):");
            for ((scope, _), bearer) in scoped_tokens.iter().zip(&bearers) {
                // A first page warms the node's caches (token resolution, registry).
                conn.send("GET", &path, &[("authorization", bearer)], None).await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
                let before = counter.load(std::sync::atomic::Ordering::Relaxed);
                let pages = 20u64;
                for _ in 0..pages {
                    let r = conn.send("GET", &path, &[("authorization", bearer)], None).await?;
                    anyhow::ensure!(r.status == 200, "a counted page failed: {}", r.status);
                }
                // The log lines arrive through a pipe: let them drain.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let spent = counter.load(std::sync::atomic::Ordering::Relaxed) - before;
                line.push_str(&format!(" {scope}={:.1}", spent as f64 / pages as f64));
            }
            println!("{line}");
        }
    }

    if args.runs("export") {
        export_bench(&server, &rs384, &token_url, reads).await?;
    }

    // Full authorization_code flows: authorise (signed-in session, consent remembered) then exchange
    // the code for tokens with an RS256 id_token.
    let scope = "openid fhirUser user/*.rs";
    let patient = patients.first().cloned().unwrap_or_default();
    let mut user_token = String::new();
    for clients in [1, 32].into_iter().filter(|_| args.runs("code")) {
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (base, patient) = (base.clone(), patient.clone());
            tasks.push(tokio::spawn(async move {
                let mut conn = connect(&base).await?;
                let cookie = sign_in(&mut conn, &base, scope, &patient).await?;
                let (mut lat, mut errors, mut last_token) = (Vec::new(), 0usize, String::new());
                while Instant::now() < deadline && lat.len() < 1_000_000 {
                    let t = Instant::now();
                    match code_flow(&mut conn, &base, scope, &cookie).await {
                        Ok(tok) => last_token = tok,
                        Err(_) => errors += 1,
                    }
                    lat.push(t.elapsed().as_micros() as u64);
                }
                anyhow::Ok((lat, errors, last_token))
            }));
        }
        let mut latencies_us = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e, tok) = t.await??;
            latencies_us.extend(l);
            errors += e;
            user_token = tok;
        }
        latencies_us.sort_unstable();
        let s = Stats { requests: latencies_us.len(), errors, elapsed: started.elapsed(), latencies_us };
        report("authorize + code exchange", clients, &s);
    }

    if args.runs("ehr-launch") {
        ehr_launch_bench(&base, &patient, args.seconds).await?;
    }

    // The cost of the token check on a FHIR read: one client reads the same resources alternately from
    // an open-sandbox server and from this one (same database, both running), so machine noise hits
    // both sides alike.
    if !args.runs("overhead") {
        return Ok(());
    }
    let open_server = start_server(&args.data, true, args.database_url.as_deref())?;
    let mut secured = connect(&base).await?;
    if user_token.is_empty() {
        let cookie = sign_in(&mut secured, &base, scope, &patient).await?;
        user_token = code_flow(&mut secured, &base, scope, &cookie).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut open = connect(&open_server.base).await?;
    let bearer = format!("Bearer {user_token}");
    let (mut with_token, mut without, mut errors) = (Vec::new(), Vec::new(), 0usize);
    let mut i = 0;
    while Instant::now() < deadline && i < 1_000_000 {
        let path = &reads[i % reads.len()];
        let t = Instant::now();
        let r = secured.send("GET", path, &[("authorization", &bearer)], None).await?;
        with_token.push(t.elapsed().as_micros() as u64);
        errors += usize::from(r.status != 200);
        let t = Instant::now();
        let r = open.send("GET", path, &[], None).await?;
        without.push(t.elapsed().as_micros() as u64);
        errors += usize::from(r.status != 200);
        i += 1;
    }
    with_token.sort_unstable();
    without.sort_unstable();
    println!(
        "token_check_overhead         reads={i} errors={errors} p50_with_token={:.3} ms p50_open={:.3} ms overhead={:.0} us",
        percentile(&with_token, 0.5),
        percentile(&without, 0.5),
        (percentile(&with_token, 0.5) - percentile(&without, 0.5)) * 1000.0
    );
    Ok(())
}

/// A `system/*.rs` token for the RS384 backend client `bench-backend-rs` (registered by [`auth_bench`]).
async fn system_token(conn: &mut Conn, key: &client::SigningKey, token_url: &str) -> anyhow::Result<String> {
    let assertion = key.client_assertion("bench-backend-rs", token_url).map_err(|e| anyhow::anyhow!("signing: {e}"))?;
    let body = format!(
        "grant_type=client_credentials&scope=system%2F*.rs&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={assertion}"
    );
    let r = conn.send("POST", "/auth/token", &[], Some(body)).await?;
    let token: Value = serde_json::from_slice(&r.body)?;
    token["access_token"].as_str().map(str::to_string).with_context(|| format!("no backend token: {}", String::from_utf8_lossy(&r.body)))
}

/// A system-level Bulk Data export of everything: the kick-off's time, then every file downloaded in
/// turn (resources/s), with the server's peak RSS sampled every 20 ms meanwhile.
async fn export_bench(server: &ServerProcess, key: &client::SigningKey, token_url: &str, reads: &Arc<Vec<String>>) -> anyhow::Result<()> {
    let mut conn = connect(&server.base).await?;
    let bearer = format!("Bearer {}", system_token(&mut conn, key, token_url).await?);
    let pid = server.child.id();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(rss_kib(pid).unwrap_or(0)));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let before = rss_kib(pid).unwrap_or(0);
    let t = Instant::now();
    let r = conn.send("GET", "/fhir/$export", &[("authorization", &bearer), ("prefer", "respond-async")], None).await?;
    let kick_off = t.elapsed();
    if r.status != 202 {
        bail!("the export kick-off answered {}: {}", r.status, String::from_utf8_lossy(&r.body));
    }
    let status_url = r.content_location.clone().context("no Content-Location")?;
    let path = |url: &str| url.find("/fhir/").map(|i| url[i..].to_string()).unwrap_or_default();
    let t = Instant::now();
    let mut r = conn.send("GET", &path(&status_url), &[("authorization", &bearer)], None).await?;
    let first_status = kick_off + t.elapsed();
    while r.status == 202 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        r = conn.send("GET", &path(&status_url), &[("authorization", &bearer)], None).await?;
    }
    let planned = kick_off + t.elapsed();
    let manifest: Value = serde_json::from_slice(&r.body)?;
    let files: Vec<String> = manifest["output"].as_array().into_iter().flatten().filter_map(|o| o["url"].as_str().map(str::to_string)).collect();
    let (mut resources, mut bytes) = (0usize, 0usize);
    let t = Instant::now();
    for url in &files {
        let r = conn.send("GET", &path(url), &[("authorization", &bearer)], None).await?;
        if r.status != 200 {
            bail!("{url} answered {}", r.status);
        }
        bytes += r.body.len();
        resources += r.body.iter().filter(|b| **b == b'\n').count();
    }
    let download = t.elapsed();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.await?;
    println!(
        "export                       kick_off={:.1} ms first_status={:.1} ms complete={:.0} ms files={} resources={resources} mb={:.0} download_s={:.1} rate={:.0} resources/s rss_before={:.1} MB rss_peak={:.1} MB",
        kick_off.as_secs_f64() * 1000.0,
        first_status.as_secs_f64() * 1000.0,
        planned.as_secs_f64() * 1000.0,
        files.len(),
        bytes as f64 / 1e6,
        download.as_secs_f64(),
        resources as f64 / download.as_secs_f64(),
        before as f64 / 1024.0,
        peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
    );

    // Reads by id on one connection, in alternating 1-second phases without and with 4 clients polling
    // the export's status URL 10 times a second each (every client of a real export polls about once a
    // second), so machine noise hits both alike.
    let status_path = path(&status_url);
    let mut polls = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        conn.send("GET", &status_path, &[("authorization", &bearer)], None).await?;
        polls.push(t.elapsed().as_micros() as u64);
    }
    polls.sort_unstable();
    let (mut quiet, mut polled) = (Vec::new(), Vec::new());
    let mut i = 0usize;
    for phase in 0..6 {
        let polling = Arc::new(std::sync::atomic::AtomicBool::new(phase % 2 == 1));
        let mut pollers = Vec::new();
        if phase % 2 == 1 {
            for _ in 0..4 {
                let (base, status_path, bearer, polling) = (server.base.clone(), status_path.clone(), bearer.clone(), polling.clone());
                pollers.push(tokio::spawn(async move {
                    let mut conn = connect(&base).await?;
                    while polling.load(std::sync::atomic::Ordering::Relaxed) {
                        conn.send("GET", &status_path, &[("authorization", &bearer)], None).await?;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    anyhow::Ok(())
                }));
            }
        }
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            let t = Instant::now();
            conn.send("GET", &reads[i % reads.len()], &[("authorization", &bearer)], None).await?;
            let us = t.elapsed().as_micros() as u64;
            if phase % 2 == 1 {
                polled.push(us)
            } else {
                quiet.push(us)
            }
            i += 1;
        }
        polling.store(false, std::sync::atomic::Ordering::Relaxed);
        for p in pollers {
            p.await??;
        }
    }
    quiet.sort_unstable();
    polled.sort_unstable();
    let (q, p) = (percentile(&quiet, 0.5), percentile(&polled, 0.5));
    println!(
        "export_status_polls          status_p50={:.3} ms reads_p50_quiet={q:.3} ms reads_p50_with_4_pollers_at_10_hz={p:.3} ms slowdown={:.1}%",
        percentile(&polls, 0.5),
        (p / q - 1.0) * 100.0
    );
    Ok(())
}

/// A load worker's result: its latencies (µs) and its error count.
type WorkerResult = anyhow::Result<(Vec<u64>, usize)>;

async fn collect(tasks: Vec<tokio::task::JoinHandle<WorkerResult>>, started: Instant) -> anyhow::Result<Stats> {
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await??;
        latencies_us.extend(l);
        errors += e;
    }
    latencies_us.sort_unstable();
    Ok(Stats { requests: latencies_us.len(), errors, elapsed: started.elapsed(), latencies_us })
}

/// The Lua script `wrk` runs: each request takes the next pre-signed body (its own `jti`) of the file
/// given after `--`.
const WRK_SCRIPT: &str = r#"
local bodies, i = {}, 0
init = function(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
end
request = function()
  i = i + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/x-www-form-urlencoded"}, bodies[((i - 1) % #bodies) + 1])
end
"#;

/// Backend tokens from `wrk -t1 -c32` for `seconds`, each request with its own pre-signed assertion;
/// `None` when `wrk` is not installed. The line has the fields of [`report`].
async fn wrk_tokens(
    base: &str,
    pid: u32,
    key: &client::SigningKey,
    client_id: &str,
    token_url: &str,
    seconds: u64,
    dir: &std::path::Path,
) -> anyhow::Result<Option<String>> {
    if Command::new("wrk").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        println!("# wrk is not installed (apt-get install wrk): no wrk figure");
        return Ok(None);
    }
    let count = seconds as usize * 25_000;
    let bodies: String = presign(key, client_id, token_url, count)?
        .into_iter()
        .map(|a| format!("grant_type=client_credentials&scope=system%2F*.rs&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={a}\n"))
        .collect();
    let (script, file) = (dir.join("wrk-tokens.lua"), dir.join(format!("wrk-{client_id}.txt")));
    std::fs::write(&script, WRK_SCRIPT)?;
    std::fs::write(&file, bodies)?;
    let mut wrk = Command::new("wrk");
    wrk.args(["-t1", "-c32", "--latency", &format!("-d{seconds}s"), "-s"]).arg(&script).arg(format!("{base}/auth/token")).arg("--").arg(&file);
    let spent_before = server_spent(pid);
    let out = tokio::task::spawn_blocking(move || wrk.output()).await??;
    let spent_after = server_spent(pid);
    let _ = std::fs::remove_file(&file);
    anyhow::ensure!(out.status.success(), "wrk failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| text.lines().map(str::trim).find_map(|l| l.strip_prefix(prefix)).map(|v| v.trim().to_string());
    let requests: usize =
        text.lines().find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.parse().ok())).context("wrk printed no request count")?;
    let errors: usize = field("Non-2xx or 3xx responses:").and_then(|v| v.parse().ok()).unwrap_or(0);
    let rate: f64 = field("Requests/sec:").and_then(|v| v.parse().ok()).context("wrk printed no rate")?;
    let ms = |p: &str| field(p).and_then(|v| wrk_ms(&v)).unwrap_or(f64::NAN);
    if requests > count {
        println!("# wrk: {requests} requests for {count} pre-signed assertions: the rest reused a jti and were refused (counted as errors)");
    }
    Ok(Some(format!(
        "clients=32  requests={requests:<8} errors={errors:<4} throughput={rate:>9.0} req/s  p50={:>7.3} ms  p99={:>7.3} ms  (wrk){}",
        ms("50%"),
        ms("99%"),
        spent_per_request(spent_before, spent_after, requests)
    )))
}

/// A duration as `wrk` prints it (`850.00us`, `1.23ms`, `2.00s`), in milliseconds.
fn wrk_ms(v: &str) -> Option<f64> {
    let (number, to_ms): (&str, fn(f64) -> f64) = if let Some(n) = v.strip_suffix("us") {
        (n, |us| us / 1000.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, |ms| ms)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, |s| s * 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(to_ms)
}

/// `count` client assertions for `client_id`, each with its own `jti`, signed on every core.
fn presign(key: &client::SigningKey, client_id: &str, token_url: &str, count: usize) -> anyhow::Result<Vec<String>> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let per = count.div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            (0..threads).map(|_| scope.spawn(move || (0..per).map(|_| key.client_assertion(client_id, token_url)).collect::<Result<Vec<_>, _>>())).collect();
        let mut all = Vec::with_capacity(count);
        for h in handles {
            all.extend(h.join().map_err(|_| anyhow::anyhow!("signing thread panicked"))?.map_err(|e| anyhow::anyhow!("signing: {e}"))?);
        }
        Ok(all)
    })
}

/// An EHR launch from the chart, request by request as the SMART JavaScript client (fhirclient 2.x) makes
/// them after the EHR's button: discovery, authorise (the clinician's EHR session, consent remembered),
/// the code exchange (with an id_token), three reads, a refresh. One client, one connection; prints each
/// step's median and the median of the whole launch's server time (loopback HTTP included).
async fn ehr_launch_bench(base: &str, patient: &str, seconds: u64) -> anyhow::Result<()> {
    const SCOPE: &str = "launch openid fhirUser offline_access patient/*.rs";
    let mut conn = connect(base).await?;
    // The clinician signs in to the EHR once (argon2, not part of a launch) and opens the chart.
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs([("username", "bench-doc"), ("password", "bench-pass")]).finish();
    let r = conn.send("POST", "/ehr/login", &[], Some(body)).await?;
    let session = r.set_cookie.context("no EHR session")?.split(';').next().unwrap_or_default().to_string();
    let chart = conn.send("GET", &format!("/ehr/patients/{patient}"), &[("cookie", &session)], None).await?;
    let csrf = hidden(&chart.body, "csrf").context("no CSRF token on the chart")?;
    let steps =
        ["EHR launch button", "smart-configuration", "authorize", "code exchange", "read Patient", "search vital signs", "search conditions", "refresh"];
    let mut times: Vec<Vec<u64>> = vec![Vec::new(); steps.len()];
    let mut totals = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut first = true;
    while Instant::now() < deadline && totals.len() < 100_000 {
        let mut took = [0u64; 8];
        let mut timed = async |i: usize, conn: &mut Conn, method: &str, path: &str, headers: &[(&str, &str)], body: Option<String>| -> anyhow::Result<Reply> {
            let t = Instant::now();
            let r = conn.send(method, path, headers, body).await?;
            took[i] = t.elapsed().as_micros() as u64;
            Ok(r)
        };
        let form = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([("patient", patient), ("encounter", ""), ("launch", "tab|bench-ehr"), ("csrf", csrf.as_str())])
            .finish();
        let r = timed(0, &mut conn, "POST", "/ehr/launch", &[("cookie", &session)], Some(form)).await?;
        let to = url::Url::parse(&r.location.context("the EHR did not launch the app")?)?;
        let handle = to.query_pairs().find(|(k, _)| k == "launch").map(|(_, v)| v.into_owned()).context("no launch handle")?;
        let r = timed(1, &mut conn, "GET", "/fhir/.well-known/smart-configuration", &[], None).await?;
        anyhow::ensure!(r.status == 200, "discovery failed");
        let verifier = format!("{}-bench-verifier", auth::crypto::random_token());
        let path = authorize_path_for(base, "bench-ehr", SCOPE, &auth::crypto::pkce_s256(&verifier), Some(&handle));
        let mut r = timed(2, &mut conn, "GET", &path, &[("cookie", &session)], None).await?;
        let consented = first && r.status == 200;
        if consented {
            // The first launch asks for consent; later ones remember it (as a clinician's second launch).
            let req = hidden(&r.body, "request").context("no consent page")?;
            let binding = r.set_cookie.clone().map(|c| c.split(';').next().unwrap_or_default().to_string()).unwrap_or_default();
            let cookies = format!("{binding}; {session}");
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs([("request", req.as_str()), ("decision", "allow"), ("scope", "patient/*.rs")])
                .finish();
            r = conn.send("POST", "/auth/consent", &[("cookie", &cookies)], Some(body)).await?;
        }
        first = false;
        let body = code_exchange_form(r.location.as_deref(), &verifier, "bench-ehr")?;
        let r = timed(3, &mut conn, "POST", "/auth/token", &[], Some(body)).await?;
        anyhow::ensure!(r.status == 200, "code exchange failed with {}", r.status);
        let tokens: Value = serde_json::from_slice(&r.body)?;
        let bearer = format!("Bearer {}", tokens["access_token"].as_str().unwrap_or_default());
        let auth_header = [("authorization", bearer.as_str())];
        for (i, path) in [
            (4, format!("/fhir/Patient/{patient}")),
            (5, format!("/fhir/Observation?patient={patient}&category=vital-signs&_sort=-date&_count=50")),
            (6, format!("/fhir/Condition?patient={patient}")),
        ] {
            let r = timed(i, &mut conn, "GET", &path, &auth_header, None).await?;
            anyhow::ensure!(r.status == 200, "{path} failed with {}", r.status);
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("grant_type", "refresh_token"),
                ("refresh_token", tokens["refresh_token"].as_str().unwrap_or_default()),
                ("client_id", "bench-ehr"),
            ])
            .finish();
        let r = timed(7, &mut conn, "POST", "/auth/token", &[], Some(body)).await?;
        anyhow::ensure!(r.status == 200, "refresh failed with {}", r.status);
        if consented {
            // The first launch showed the consent page: not what this measures.
            continue;
        }
        for (i, t) in took.iter().enumerate() {
            times[i].push(*t);
        }
        totals.push(took.iter().sum::<u64>());
    }
    for (name, mut t) in steps.iter().zip(times) {
        t.sort_unstable();
        println!("ehr launch step {name:<22} p50={:>7.3} ms  p99={:>7.3} ms", percentile(&t, 0.5), percentile(&t, 0.99));
    }
    totals.sort_unstable();
    println!(
        "ehr launch (8 requests)      launches={} server_time p50={:>7.3} ms  p99={:>7.3} ms",
        totals.len(),
        percentile(&totals, 0.5),
        percentile(&totals, 0.99)
    );
    Ok(())
}

fn authorize_path(base: &str, scope: &str, challenge: &str) -> String {
    authorize_path_for(base, "bench-public", scope, challenge, None)
}

/// The authorisation request of `client_id` (with an EHR `launch` handle when given), path and query.
fn authorize_path_for(base: &str, client_id: &str, scope: &str, challenge: &str, launch: Option<&str>) -> String {
    let mut url = url::Url::parse(&format!("{base}/auth/authorize")).expect("base URL");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", BENCH_REDIRECT)
        .append_pair("scope", scope)
        .append_pair("state", "s")
        .append_pair("aud", &format!("{base}/fhir"))
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256");
    if let Some(handle) = launch {
        url.query_pairs_mut().append_pair("launch", handle);
    }
    format!("{}?{}", url.path(), url.query().unwrap_or(""))
}

/// The code-exchange form for the code in the authorisation response's `location`.
fn code_exchange_form(location: Option<&str>, verifier: &str, client_id: &str) -> anyhow::Result<String> {
    let location = location.context("no redirect with a code")?;
    let code = url::Url::parse(location)?.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.into_owned()).context("no code")?;
    Ok(url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", BENCH_REDIRECT),
            ("code_verifier", verifier),
            ("client_id", client_id),
        ])
        .finish())
}

fn hidden(html: &[u8], name: &str) -> Option<String> {
    let html = String::from_utf8_lossy(html);
    let needle = format!("name=\"{name}\" value=\"");
    let start = html.find(&needle)? + needle.len();
    Some(html[start..].split('"').next()?.to_string())
}

/// Signs in once (and consents once), returning the session cookie.
async fn sign_in(conn: &mut Conn, base: &str, scope: &str, patient: &str) -> anyhow::Result<String> {
    let challenge = auth::crypto::pkce_s256(&format!("{}-bench-verifier", auth::crypto::random_token()));
    let page = conn.send("GET", &authorize_path(base, scope, &challenge), &[], None).await?;
    let req = hidden(&page.body, "request").context("no sign-in page")?;
    // The request is bound to this "browser": its forms go back with the binding cookie.
    let binding = page.set_cookie.clone().context("no binding cookie")?.split(';').next().unwrap_or_default().to_string();
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("request", req.as_str()), ("username", "bench-doc"), ("password", "bench-pass")])
        .finish();
    let r = conn.send("POST", "/auth/login", &[("cookie", &binding)], Some(body)).await?;
    let cookie = r.set_cookie.clone().context("no session cookie")?.split(';').next().unwrap_or_default().to_string();
    let both = format!("{binding}; {cookie}");
    let mut r = r;
    if hidden(&r.body, "patient").is_some() {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs([("request", req.as_str()), ("patient", patient)]).finish();
        r = conn.send("POST", "/auth/pick", &[("cookie", &both)], Some(body)).await?;
    }
    if r.status == 200 {
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("request", &req).append_pair("decision", "allow");
            for sc in scope.split(' ').filter(|s| s.contains('/') && !s.starts_with("launch")) {
                form.append_pair("scope", sc);
            }
            form.finish()
        };
        conn.send("POST", "/auth/consent", &[("cookie", &both)], Some(body)).await?;
    }
    Ok(cookie)
}

/// One full flow: authorise with the session, then exchange the code; returns the access token.
async fn code_flow(conn: &mut Conn, base: &str, scope: &str, cookie: &str) -> anyhow::Result<String> {
    let verifier = format!("{}-bench-verifier", auth::crypto::random_token());
    let challenge = auth::crypto::pkce_s256(&verifier);
    let r = conn.send("GET", &authorize_path(base, scope, &challenge), &[("cookie", cookie)], None).await?;
    let body = code_exchange_form(r.location.as_deref(), &verifier, "bench-public")?;
    let r = conn.send("POST", "/auth/token", &[], Some(body)).await?;
    anyhow::ensure!(r.status == 200, "token exchange failed with {}", r.status);
    let v: Value = serde_json::from_slice(&r.body)?;
    anyhow::ensure!(v["id_token"].is_string(), "no id_token");
    Ok(v["access_token"].as_str().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrk_durations_are_read_in_milliseconds() {
        assert_eq!(super::wrk_ms("850.00us"), Some(0.85));
        assert_eq!(super::wrk_ms("1.23ms"), Some(1.23));
        assert_eq!(super::wrk_ms("2.00s"), Some(2000.0));
        assert_eq!(super::wrk_ms("2.00m"), None);
        assert_eq!(super::wrk_ms("fast"), None);
    }
}
