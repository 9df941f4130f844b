//! Two `kindling` processes on one PostgreSQL database, as behind a load balancer: separate processes,
//! pools and caches, one public URL. A flow started on one node finishes on the other; revocation and refresh-token
//! reuse are seen across nodes; concurrent `If-Match` updates through both nodes lose nothing.
//! Skipped with a message without PostgreSQL, except in CI.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use store::Store;

/// A `kindling` process serving one node.
struct Node {
    /// Where this node listens.
    addr: String,
    /// The deployment's public URL as this node sees it.
    public: String,
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kindling <args>` and waits for its ready line.
fn node(args: &[&str]) -> Node {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kindling"))
        .args(args)
        .env("KINDLING_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kindling");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("Kindling is serving at ") {
                let public = rest.split(' ').next().unwrap_or_default().to_string();
                let addr = rest.split("listening on ").nth(1).unwrap_or_default().trim_end_matches(')').to_string();
                let _ = tx.send((public, addr));
            }
        }
    });
    let (public, addr) = rx.recv_timeout(Duration::from_secs(60)).expect("the node did not become ready");
    Node { addr: format!("http://{addr}"), public, child }
}

fn hidden(html: &str, name: &str) -> String {
    let key = format!("name=\"{name}\" value=\"");
    let start = html.find(&key).unwrap_or_else(|| panic!("no {name} in {html}")) + key.len();
    html[start..start + html[start..].find('"').unwrap()].to_string()
}

async fn form(http: &reqwest::Client, url: &str, pairs: &[(&str, &str)]) -> reqwest::Response {
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
    http.post(url).header("content-type", "application/x-www-form-urlencoded").body(body).send().await.unwrap()
}

#[tokio::test]
async fn two_nodes_share_every_flow() {
    let Some(db) = crate::ScratchPostgres::create("nodes").await else { return };
    let url = db.url.clone();
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    // Node A seeds the deployment (`kindling up`: one synthetic patient, the demo users); node B joins
    // with A's public URL, as every node behind one load balancer would.
    let a = node(&["up", "--listen", "127.0.0.1:0", "--data", dir_a.path().to_str().unwrap(), "--database-url", &url, "--patients", "1", "--seed", "9"]);
    let public = a.public.clone();
    let b = node(&["serve", "--listen", "127.0.0.1:0", "--data", dir_b.path().to_str().unwrap(), "--database-url", &url, "--public-url", &public]);
    assert_eq!(b.public, public);
    let base = format!("{public}/fhir");
    let patient = synth::patient_id(9, 0);
    let clock: fhir::time::SharedClock = std::sync::Arc::new(fhir::time::SystemClock);
    let store = std::sync::Arc::new(
        store::postgres::PostgresStore::connect(store::postgres::PostgresConfig { url: url.clone(), base_url: Some(base.clone()), max_connections: 2 }, clock)
            .await
            .unwrap(),
    );
    let client = auth::model::Client {
        client_id: "nodes-app".into(),
        name: "Nodes".into(),
        kind: auth::model::ClientKind::Public,
        secret_hash: None,
        redirect_uris: vec!["https://app.example/cb".into()],
        launch_url: None,
        allowed_scope: "launch openid fhirUser offline_access patient/*.rs patient/*.cu".into(),
        jwks: None,
        jwks_url: None,
        icon: None,
        disabled: false,
        profile: None,
        self_registered: false,
    };
    auth::registry::put_client(store.as_ref(), client).await.unwrap();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();

    // A launch created on node A is authorised on node B, and its code exchanged on node A.
    let r = http
        .post(format!("{}/auth/launch", a.addr))
        .basic_auth("clinician", Some("kindling-clinician"))
        .json(&json!({"patient": patient}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let handle = r.json::<Value>().await.unwrap()["launch"].as_str().unwrap().to_string();
    let verifier = "a-verifier-that-is-long-enough-for-pkce-0123456789";
    let mut authorize = url::Url::parse(&format!("{}/auth/authorize", b.addr)).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", "nodes-app")
        .append_pair("redirect_uri", "https://app.example/cb")
        .append_pair("scope", "launch openid fhirUser offline_access patient/*.rs patient/*.cu")
        .append_pair("state", "s1")
        .append_pair("aud", &base)
        .append_pair("launch", &handle)
        .append_pair("code_challenge", &auth::crypto::pkce_s256(verifier))
        .append_pair("code_challenge_method", "S256");
    // One browser: the binding cookie set by node B is sent back to node B (and A: same host).
    let browser = crate::Browser::with_origin(&a.public);
    let html = browser.get(authorize).await.text().await.unwrap();
    let r = browser
        .post_form(&format!("{}/auth/login", b.addr), &[("request", &hidden(&html, "request")), ("username", "clinician"), ("password", "kindling-clinician")])
        .await;
    let html = r.text().await.unwrap();
    let mut consent = vec![("request".to_string(), hidden(&html, "request")), ("decision".into(), "allow".into())];
    for s in html.split("name=\"scope\" value=\"").skip(1) {
        consent.push(("scope".into(), s[..s.find('"').unwrap()].to_string()));
    }
    let pairs: Vec<(&str, &str)> = consent.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = browser.post_form(&format!("{}/auth/consent", b.addr), &pairs).await;
    assert_eq!(r.status(), 303);
    let loc = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let code = loc.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    let r = form(
        &http,
        &format!("{}/auth/token", a.addr),
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "https://app.example/cb"),
            ("code_verifier", verifier),
            ("client_id", "nodes-app"),
        ],
    )
    .await;
    assert_eq!(r.status(), 200, "node A exchanges the code node B issued");
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["patient"], json!(patient));
    let access = t["access_token"].as_str().unwrap().to_string();
    let rt1 = t["refresh_token"].as_str().unwrap().to_string();

    // A token revoked on node B is refused by node A within one second.
    let read = |node: &str| http.get(format!("{node}/fhir/Patient/{patient}")).bearer_auth(&access).send();
    assert_eq!(read(&a.addr).await.unwrap().status(), 200, "node A has resolved (and cached) the token");
    let r = form(&http, &format!("{}/auth/revoke", b.addr), &[("token", &access), ("client_id", "nodes-app")]).await;
    assert_eq!(r.status(), 200);
    let revoked_at = Instant::now();
    loop {
        if read(&a.addr).await.unwrap().status() == 401 {
            break;
        }
        assert!(revoked_at.elapsed() < Duration::from_millis(1100), "node A still accepts a token revoked on node B");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(revoked_at.elapsed() <= Duration::from_millis(1100));

    // A refresh-token reuse is detected across nodes. (Revocation above revoked the whole grant, so start
    // a new one through the same nodes.)
    let _ = rt1;
    let mut authorize = url::Url::parse(&format!("{}/auth/authorize", a.addr)).unwrap();
    let r = http
        .post(format!("{}/auth/launch", b.addr))
        .basic_auth("clinician", Some("kindling-clinician"))
        .json(&json!({"patient": patient}))
        .send()
        .await
        .unwrap();
    let handle = r.json::<Value>().await.unwrap()["launch"].as_str().unwrap().to_string();
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", "nodes-app")
        .append_pair("redirect_uri", "https://app.example/cb")
        .append_pair("scope", "launch openid fhirUser offline_access patient/*.rs patient/*.cu")
        .append_pair("state", "s2")
        .append_pair("aud", &base)
        .append_pair("launch", &handle)
        .append_pair("code_challenge", &auth::crypto::pkce_s256(verifier))
        .append_pair("code_challenge_method", "S256");
    let browser = crate::Browser::with_origin(&a.public);
    let html = browser.get(authorize).await.text().await.unwrap();
    let r = browser
        .post_form(&format!("{}/auth/login", a.addr), &[("request", &hidden(&html, "request")), ("username", "clinician"), ("password", "kindling-clinician")])
        .await;
    assert_eq!(r.status(), 303, "consent remembered across nodes");
    let loc = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let code = loc.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    let t: Value = form(
        &http,
        &format!("{}/auth/token", b.addr),
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "https://app.example/cb"),
            ("code_verifier", verifier),
            ("client_id", "nodes-app"),
        ],
    )
    .await
    .json()
    .await
    .unwrap();
    let rt1 = t["refresh_token"].as_str().unwrap().to_string();
    let r2: Value = form(&http, &format!("{}/auth/token", a.addr), &[("grant_type", "refresh_token"), ("refresh_token", &rt1), ("client_id", "nodes-app")])
        .await
        .json()
        .await
        .unwrap();
    let rt2 = r2["refresh_token"].as_str().unwrap().to_string();
    let reuse = form(&http, &format!("{}/auth/token", b.addr), &[("grant_type", "refresh_token"), ("refresh_token", &rt1), ("client_id", "nodes-app")]).await;
    assert_eq!(reuse.status(), 400);
    assert_eq!(reuse.json::<Value>().await.unwrap()["error"], "invalid_grant");
    let after = form(&http, &format!("{}/auth/token", a.addr), &[("grant_type", "refresh_token"), ("refresh_token", &rt2), ("client_id", "nodes-app")]).await;
    assert_eq!(after.status(), 400, "the reuse on node B revoked the grant for node A too");

    // Concurrent If-Match updates of one resource through both nodes: one wins, the other gets 412.
    let fresh = store.read("Patient", &patient).await.unwrap().unwrap();
    let body: Value = serde_json::from_str(&fresh.json).unwrap();
    let etag = format!("W/\"{}\"", fresh.version);
    let backend_key = aws_lc_rs::signature::EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
    let point = aws_lc_rs::signature::KeyPair::public_key(&backend_key).as_ref().to_vec();
    let jwks =
        json!({"keys": [{"kty": "EC", "crv": "P-384", "kid": "k1", "x": auth::crypto::b64url(&point[1..49]), "y": auth::crypto::b64url(&point[49..97])}]});
    let backend = auth::model::Client {
        client_id: "nodes-backend".into(),
        name: "Nodes backend".into(),
        kind: auth::model::ClientKind::ConfidentialAsymmetric,
        secret_hash: None,
        redirect_uris: vec![],
        launch_url: None,
        allowed_scope: "system/Patient.rus".into(),
        jwks: Some(jwks),
        jwks_url: None,
        icon: None,
        disabled: false,
        profile: None,
        self_registered: false,
    };
    auth::registry::put_client(store.as_ref(), backend).await.unwrap();
    let token_url = format!("{public}/auth/token");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let header = json!({"alg": "ES384", "kid": "k1", "typ": "JWT"});
    let claims = json!({"iss": "nodes-backend", "sub": "nodes-backend", "aud": token_url, "exp": now + 240, "jti": uuid::Uuid::new_v4().to_string()});
    let input = format!("{}.{}", auth::crypto::b64url(header.to_string().as_bytes()), auth::crypto::b64url(claims.to_string().as_bytes()));
    let sig = backend_key.sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes()).unwrap();
    let assertion = format!("{input}.{}", auth::crypto::b64url(sig.as_ref()));
    let r = form(
        &http,
        &format!("{}/auth/token", b.addr),
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/Patient.rus"),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", &assertion),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    let system_token = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
    let put = |node: String, family: &'static str| {
        let mut doc = body.clone();
        doc["name"][0]["family"] = json!(family);
        let (http, etag, patient, token) = (http.clone(), etag.clone(), patient.clone(), system_token.clone());
        async move {
            http.put(format!("{node}/fhir/Patient/{patient}"))
                .bearer_auth(token)
                .header("content-type", "application/fhir+json")
                .header("if-match", etag)
                .body(doc.to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let (sa, sb) = tokio::join!(put(a.addr.clone(), "Through-A"), put(b.addr.clone(), "Through-B"));
    let mut statuses = vec![sa, sb];
    statuses.sort();
    assert_eq!(statuses, vec![200, 412], "exactly one update wins");
    let now_stored = store.read("Patient", &patient).await.unwrap().unwrap();
    assert_eq!(now_stored.version, fresh.version + 1, "one new version, nothing lost");
    let v: Value = serde_json::from_str(&now_stored.json).unwrap();
    let winner = v["name"][0]["family"].as_str().unwrap();
    assert!(winner == "Through-A" || winner == "Through-B");
    assert!(store.vread("Patient", &patient, fresh.version).await.unwrap().is_some(), "the previous version is kept in history");

    drop(store);
    drop((a, b));
    db.drop_database().await;
}
