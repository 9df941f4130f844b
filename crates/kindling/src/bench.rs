//! `kindling bench`: imports the Synthea sample set, starts `kindling serve` as a separate process and
//! measures start-up time, idle memory, read-by-id and the vital-signs search at 1 and 32 clients over
//! keep-alive HTTP/1.1 connections on loopback. Prints one line per measurement.

use anyhow::{Context, bail};
use fhir::time::{SharedClock, SystemClock};
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
}

struct ServerProcess {
    child: Child,
    base: String,
    startup: Duration,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(data: &std::path::Path) -> anyhow::Result<ServerProcess> {
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let mut child = Command::new(exe)
        .args(["serve", "--open-sandbox", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env("KINDLING_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
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
    Ok(ServerProcess { child, base, startup })
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// One keep-alive connection.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: String,
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
    async fn get(&mut self, path: &str) -> anyhow::Result<(u16, Bytes)> {
        self.sender.ready().await?;
        let req = Request::get(path).header("host", &self.host).header("accept", "application/fhir+json").body(Empty::new())?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
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

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if !args.reuse {
        if !args.synthea.is_dir() {
            bail!("the Synthea directory {} does not exist (use --synthea)", args.synthea.display());
        }
        if args.data.exists() {
            std::fs::remove_dir_all(&args.data)?;
        }
        let clock: SharedClock = Arc::new(SystemClock);
        let app = crate::Application::build(&crate::ServerConfig { listen: ([127, 0, 0, 1], 0).into(), public_url: None, data_dir: args.data.clone(), writer_cache_mib: crate::ServerConfig::IMPORT_CACHE_MIB, open_sandbox: false }, clock).await?;
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
    let server = start_server(&args.data)?;
    println!("startup                      ready_in={} ms (existing data directory)", server.startup.as_millis());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = server.child.id();
    if let Some(kib) = rss_kib(pid) {
        println!("idle_memory                  rss={:.1} MB", kib as f64 / 1024.0);
    }
    let base_path = url::Url::parse(&server.base)?;
    let mut conn = connect(&server.base).await?;
    let (_, body) = conn.get("/fhir/Patient?_count=200&_elements=id").await?;
    let bundle: Value = serde_json::from_slice(&body)?;
    let patients: Vec<String> = bundle["entry"].as_array().map(|a| a.iter().filter_map(|e| e["resource"]["id"].as_str().map(str::to_string)).collect()).unwrap_or_default();
    if patients.is_empty() {
        bail!("no patients in {}", args.data.display());
    }
    let mut observations = Vec::new();
    for p in patients.iter().take(100) {
        let (_, body) = conn.get(&format!("/fhir/Observation?patient={p}&_count=3&_elements=id")).await?;
        let b: Value = serde_json::from_slice(&body)?;
        observations.extend(b["entry"].as_array().into_iter().flatten().filter_map(|e| e["resource"]["id"].as_str().map(str::to_string)));
    }
    let _ = base_path;
    let reads = Arc::new(observations.iter().map(|id| format!("/fhir/Observation/{id}")).collect::<Vec<_>>());
    let searches = Arc::new(patients.iter().map(|p| format!("/fhir/Observation?patient={p}&category=vital-signs&_sort=-date&_count=50")).collect::<Vec<_>>());
    for clients in [1, 32] {
        let s = load(&server.base, reads.clone(), clients, args.seconds).await?;
        report("read Observation by id", clients, &s);
    }
    for clients in [1, 32] {
        let s = load(&server.base, searches.clone(), clients, args.seconds).await?;
        report("vital-signs search", clients, &s);
    }
    if let Some(kib) = rss_kib(pid) {
        println!("memory_after_load            rss={:.1} MB", kib as f64 / 1024.0);
    }
    Ok(())
}
