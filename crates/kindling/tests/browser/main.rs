//! Browser tests: headless Chromium (Debian's chromium + chromium-driver, installed by `./test.sh`) drives
//! the EHR the way a clinician or a patient would — sign in, find the patient, open the chart, launch the
//! demo app, approve — against the whole server on port 0. Each test has its own server, chromedriver and
//! browser profile, so they run in parallel.
//!
//! With `KINDLING_SCREENSHOTS=<dir>` the tests also save the screenshots referenced from the README.
#![allow(clippy::unwrap_used)] // a test fails loudly where it unwraps

mod flows;
mod reference_app;

use fantoccini::{Client, ClientBuilder, Locator};
use fhir::time::{SharedClock, SystemClock};
use kindling::{Application, ServerConfig};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Sandbox {
    pub url: String,
    pub store: Arc<dyn store::Store>,
    /// The FHIR API's state, for writing data as an integration would.
    pub state: api::AppState,
    _dir: tempfile::TempDir,
}

/// `kindling up` in miniature: three synthetic patients, the demo users and the demo app.
pub async fn sandbox() -> Sandbox {
    sandbox_on(Arc::new(SystemClock)).await
}

/// [`sandbox`] on `clock` (the server's, and the reference app's it hosts): a test moves a
/// `ManualClock` instead of sleeping.
pub async fn sandbox_on(clock: SharedClock) -> Sandbox {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = ServerConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        public_url: None,
        data_dir: dir.path().to_path_buf(),
        writer_cache_mib: ServerConfig::SERVE_CACHE_MIB,
        open_sandbox: false,
        tls: None,
        database_url: None,
        export_ttl_secs: None,
        export_faults: true,
        profiles_dir: None,
    };
    let app = Application::build(&config, clock).await.expect("build");
    kindling::seed(&app.state, 3, 1).await.expect("seed");
    kindling::ensure_demo_users(&app.state, 1).await.expect("users");
    ::ehr::register_demo_app(&app.auth).await.expect("demo app");
    let mut app = app;
    app.mount_reference_app().await.expect("reference app");
    let url = app.public_url.clone();
    let store = app.store();
    let state = app.state.clone();
    tokio::spawn(app.run_until(std::future::pending()));
    Sandbox { url, store, state, _dir: dir }
}

pub struct Browser {
    pub c: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    /// The Chromium that chromedriver started goes with it (its helpers follow the browser process), even
    /// when a test panics before closing the session.
    fn drop(&mut self) {
        let _ = Command::new("pkill").args(["-KILL", "-P", &self.driver.id().to_string()]).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Whether the browser tests can run; in CI they must.
fn chromium_available() -> bool {
    let ok = Command::new("chromedriver").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!("chromedriver is missing in CI: ./test.sh installs chromium and chromium-driver");
    }
    if !ok {
        eprintln!("skipping browser test: chromedriver is not installed (./test.sh installs it)");
    }
    ok
}

/// A headless Chromium at 1280×800 behind its own chromedriver; `None` when not installed (outside CI).
pub async fn browser() -> Option<Browser> {
    if !chromium_available() {
        return None;
    }
    let mut driver = Command::new("chromedriver").arg("--port=0").stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start chromedriver");
    let stdout = driver.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(port) = line.split("started successfully on port ").nth(1) {
                let _ = tx.send(port.trim_end_matches('.').trim().to_string());
            }
        }
    });
    let port = rx.recv_timeout(Duration::from_secs(20)).expect("chromedriver did not start");
    let profile = tempfile::tempdir().expect("profile dir");
    let args = vec![
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--disable-dev-shm-usage".into(),
        "--window-size=1280,800".into(),
        format!("--user-data-dir={}", profile.path().display()),
    ];
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), serde_json::json!({"args": args, "binary": "/usr/bin/chromium"}));
    let c = ClientBuilder::rustls().expect("tls").capabilities(caps).connect(&format!("http://127.0.0.1:{port}")).await.expect("connect to chromedriver");
    Some(Browser { c, driver, _profile: profile })
}

/// axe-core's script, from the npm registry (`./test.sh` installs it in `target/interop-npm`;
/// `KINDLING_AXE_JS` names another copy). Without it the accessibility checks are skipped with a message,
/// except in CI, where that fails.
fn axe_source() -> Option<&'static str> {
    static SOURCE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    SOURCE
        .get_or_init(|| {
            let path = std::env::var("KINDLING_AXE_JS")
                .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/interop-npm/node_modules/axe-core/axe.min.js").to_string());
            match std::fs::read_to_string(&path) {
                Ok(s) => Some(s),
                Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("axe-core is missing at {path} ({e}); ./test.sh installs it"),
                Err(_) => {
                    eprintln!("SKIPPED accessibility checks: axe-core not found at {path} (./test.sh installs it)");
                    None
                }
            }
        })
        .as_deref()
}

impl Browser {
    /// Runs axe-core's WCAG 2.1 A and AA rules on the page as it is now, and fails on any serious or
    /// critical violation, naming the rule and the elements.
    pub async fn axe(&self, page: &str) {
        let Some(source) = axe_source() else { return };
        self.c.execute(source, vec![]).await.expect("load axe-core");
        let found = self
            .c
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})
                   .then(r => done(r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
                     .map(v => ({rule: v.id, impact: v.impact, help: v.help, where: v.nodes.slice(0, 5).map(n => n.target.join(' '))}))))
                   .catch(e => done([{rule: 'axe-error', help: String(e)}]));",
                vec![],
            )
            .await
            .expect("run axe-core");
        let violations = found.as_array().cloned().unwrap_or_default();
        assert!(
            violations.is_empty(),
            "{page}: WCAG 2.1 AA violations (serious or critical):\n{}",
            serde_json::to_string_pretty(&violations).unwrap_or_default()
        );
    }

    pub async fn goto(&self, url: &str) {
        self.c.goto(url).await.unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self.c.wait().at_most(Duration::from_secs(15)).for_element(Locator::Css(css)).await {
            Ok(e) => e,
            Err(e) => {
                let url = self.c.current_url().await.map(|u| u.to_string()).unwrap_or_default();
                let page = self.c.source().await.unwrap_or_default();
                panic!("{css} not found on {url}: {e}\n{}", &page[..page.len().min(3000)]);
            }
        }
    }

    /// Clicks an element; when htmx swapped it out between finding and clicking, finds it again.
    pub async fn click(&self, css: &str) {
        for attempt in 0.. {
            match self.find(css).await.click().await {
                Ok(()) => return,
                Err(e) if attempt < 5 && e.to_string().contains("stale") => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => panic!("click {css}: {e}"),
            }
        }
    }

    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        e.clear().await.expect("clear");
        e.send_keys(text).await.unwrap_or_else(|err| panic!("type into {css}: {err}"));
    }

    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("text")
    }

    /// Waits until the element's text satisfies `want` (apps load asynchronously); returns it.
    pub async fn wait_text(&self, css: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = match self.c.find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if want(&text) {
                return text;
            }
            if Instant::now() > deadline {
                let url = self.c.current_url().await.map(|u| u.to_string()).unwrap_or_default();
                let page = self.c.source().await.unwrap_or_default();
                panic!("{css} never matched; last text {text:?} on {url}\n{}", &page[..page.len().min(3000)]);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Switches to the newest window (a launch opened in a new tab).
    pub async fn to_new_window(&self, known: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let windows = self.c.windows().await.expect("windows");
            if windows.len() > known {
                self.c.switch_to_window(windows.last().expect("window").clone()).await.expect("switch");
                return;
            }
            assert!(Instant::now() < deadline, "no new window opened");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A page state people see: checked with axe-core (see [`Browser::axe`]) and, with
    /// `KINDLING_SCREENSHOTS`, saved as `{name}.png`.
    pub async fn screenshot(&self, name: &str) {
        self.axe(name).await;
        if let Some(dir) = std::env::var_os("KINDLING_SCREENSHOTS") {
            let png = self.c.screenshot().await.expect("screenshot");
            std::fs::create_dir_all(&dir).expect("screenshot dir");
            std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).expect("write screenshot");
        }
    }
}
