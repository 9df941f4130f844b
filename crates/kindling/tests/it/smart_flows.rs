//! SMART App Launch against the running server: discovery, the authorisation code flow through the real
//! sign-in, picker and consent pages, tokens, refresh, introspection, revocation and enforcement at the
//! FHIR API. Each negative case checks the reason, not just the failure.

use crate::{Browser, TestApp, spawn_secured_app};
use auth::model::{Client, ClientKind, UserRole};
use serde_json::{Value, json};
use std::collections::HashMap;

pub(crate) const REDIRECT: &str = "https://app.example/callback";
pub(crate) const PUBLIC: &str = "public-app";
pub(crate) const CONFIDENTIAL: &str = "confidential-app";
pub(crate) const ALL: &str = "launch launch/patient launch/encounter openid fhirUser profile offline_access online_access patient/*.cruds user/*.cruds";

pub(crate) struct Fixture {
    pub(crate) app: TestApp,
    pub(crate) secret: String,
    pub(crate) p1: String,
    pub(crate) p2: String,
}

pub(crate) async fn fixture() -> Fixture {
    fixture_with(spawn_secured_app().await).await
}

/// The fixture's users, apps and patients on a server of the caller's.
pub(crate) async fn fixture_with(app: TestApp) -> Fixture {
    kindling::seed(&app.app_state, 2, 7).await.unwrap();
    let store = app.auth.store.as_ref();
    let client = |id: &str, kind| Client {
        client_id: id.into(),
        name: format!("App {id}"),
        kind,
        secret_hash: None,
        redirect_uris: vec![REDIRECT.into()],
        launch_url: Some("https://app.example/launch".into()),
        allowed_scope: ALL.into(),
        jwks: None,
        jwks_url: None,
        icon: None,
        disabled: false,
        profile: None,
        self_registered: false,
    };
    auth::registry::put_client(store, client(PUBLIC, ClientKind::Public)).await.unwrap();
    let secret = auth::registry::put_client(store, client(CONFIDENTIAL, ClientKind::ConfidentialSymmetric)).await.unwrap().unwrap();
    let p1 = synth::patient_id(7, 0);
    let p2 = synth::patient_id(7, 1);
    auth::registry::put_user(store, "doc", "Dr Doc", UserRole::Clinician, "doc-pass", &format!("Practitioner/{}", synth::practitioner_id(0))).await.unwrap();
    auth::registry::put_user(store, "pat", "Pat", UserRole::Patient, "pat-pass", &format!("Patient/{p1}")).await.unwrap();
    Fixture { app, secret, p1, p2 }
}

pub(crate) fn root(app: &TestApp) -> String {
    app.base.trim_end_matches("/fhir").to_string()
}

pub(crate) fn pkce() -> (String, String) {
    let verifier = format!("{}{}", auth::crypto::random_token(), "-verifier");
    let challenge = auth::crypto::pkce_s256(&verifier);
    (verifier, challenge)
}

pub(crate) fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// Values of the inputs named `name` in an HTML page.
pub(crate) fn inputs(html: &str, name: &str) -> Vec<String> {
    let needle = format!("name=\"{name}\" value=\"");
    html.match_indices(&needle)
        .map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            unescape(&rest[..rest.find('"').unwrap()])
        })
        .collect()
}

pub(crate) fn location(r: &reqwest::Response) -> url::Url {
    let loc = r.headers().get("location").unwrap_or_else(|| panic!("no redirect (status {})", r.status())).to_str().unwrap();
    url::Url::parse(loc).unwrap()
}

pub(crate) fn query(u: &url::Url) -> HashMap<String, String> {
    u.query_pairs().into_owned().collect()
}

pub(crate) struct Auth<'a> {
    client_id: &'a str,
    scope: String,
    state: String,
    challenge: String,
    pub(crate) verifier: String,
    pub(crate) launch: Option<String>,
    pub(crate) aud: String,
    /// The browser the flow runs in (its own cookies: binding cookie, session).
    pub(crate) browser: Browser,
}

impl<'a> Auth<'a> {
    pub(crate) fn new(app: &TestApp, client_id: &'a str, scope: &str) -> Self {
        let (verifier, challenge) = pkce();
        Auth { client_id, scope: scope.into(), state: "st-ü &=|x".into(), challenge, verifier, launch: None, aud: app.base.clone(), browser: Browser::new() }
    }

    pub(crate) fn params(&self) -> Vec<(String, String)> {
        let mut p = vec![
            ("response_type".into(), "code".into()),
            ("client_id".into(), self.client_id.into()),
            ("redirect_uri".into(), REDIRECT.into()),
            ("scope".into(), self.scope.clone()),
            ("state".into(), self.state.clone()),
            ("aud".into(), self.aud.clone()),
            ("code_challenge".into(), self.challenge.clone()),
            ("code_challenge_method".into(), "S256".into()),
            ("nonce".into(), "n-123".into()),
        ];
        if let Some(l) = &self.launch {
            p.push(("launch".into(), l.clone()));
        }
        p
    }

    pub(crate) async fn start(&self, app: &TestApp) -> reqwest::Response {
        let mut url = url::Url::parse(&format!("{}/auth/authorize", root(app))).unwrap();
        url.query_pairs_mut().extend_pairs(self.params());
        self.browser.get(url).await
    }
}

/// Posts a form of the sign-in pages from `browser`.
pub(crate) async fn browser_form(app: &TestApp, browser: &Browser, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
    browser.post_form(&format!("{}{path}", root(app)), form).await
}

pub(crate) async fn post_form(app: &TestApp, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    app.client.post(format!("{}{path}", root(app))).header("content-type", "application/x-www-form-urlencoded").body(body).send().await.unwrap()
}

pub(crate) async fn login(app: &TestApp, browser: &Browser, page: reqwest::Response, user: &str, password: &str) -> reqwest::Response {
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Sign in"), "{html}");
    let req = inputs(&html, "request").remove(0);
    browser_form(app, browser, "/auth/login", &[("request", &req), ("username", user), ("password", password)]).await
}

/// Submits the consent page: every scope ticked unless `untick` names it; `categories` as `scope|system|code`.
pub(crate) async fn consent(app: &TestApp, browser: &Browser, page: reqwest::Response, allow: bool, untick: &[&str], categories: &[&str]) -> reqwest::Response {
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("would like to"), "{html}");
    let req = inputs(&html, "request").remove(0);
    let scopes: Vec<String> = inputs(&html, "scope").into_iter().filter(|s| !untick.contains(&s.as_str())).collect();
    let mut form: Vec<(&str, &str)> = vec![("request", &req), ("decision", if allow { "allow" } else { "deny" })];
    for s in &scopes {
        form.push(("scope", s));
    }
    for c in categories {
        form.push(("category", c));
    }
    browser_form(app, browser, "/auth/consent", &form).await
}

/// Consents when the consent page is shown (it is not when the user decided before).
pub(crate) async fn consent_if_asked(app: &TestApp, browser: &Browser, r: reqwest::Response) -> reqwest::Response {
    if r.status() == 303 { r } else { consent(app, browser, r, true, &[], &[]).await }
}

/// The issuer of the authorisation server an app asking for `aud` talks to: Kindling's own (its FHIR
/// base), or that of the vendor profile whose FHIR base `aud` is.
pub(crate) fn issuer_of(app: &TestApp, aud: &str) -> String {
    let c = &app.auth.config;
    c.profiles
        .all()
        .iter()
        .map(|p| auth::model::Profile::named(&p.name))
        .find(|p| c.fhir_base_for(p) == aud)
        .map_or_else(|| app.base.clone(), |p| c.issuer_for(&p))
}

/// The code from the redirect to the app, after checking `state` and `iss`.
pub(crate) fn code(app: &TestApp, a: &Auth<'_>, r: &reqwest::Response) -> String {
    assert_eq!(r.status(), 303);
    let loc = location(r);
    assert!(loc.as_str().starts_with(REDIRECT), "{loc}");
    let q = query(&loc);
    assert_eq!(q.get("state"), Some(&a.state), "state is echoed byte for byte");
    assert_eq!(q.get("iss"), Some(&issuer_of(app, &a.aud)), "RFC 9207 iss");
    assert!(!q.contains_key("error"), "{q:?}");
    q["code"].clone()
}

pub(crate) async fn exchange(app: &TestApp, client_id: &str, code: &str, verifier: &str) -> reqwest::Response {
    post_form(
        app,
        "/auth/token",
        &[("grant_type", "authorization_code"), ("code", code), ("redirect_uri", REDIRECT), ("code_verifier", verifier), ("client_id", client_id)],
    )
    .await
}

/// Standalone launch as the patient user, consenting to everything.
pub(crate) async fn patient_tokens(f: &Fixture, scope: &str) -> Value {
    let a = Auth::new(&f.app, PUBLIC, scope);
    let page = a.start(&f.app).await;
    let after_login = login(&f.app, &a.browser, page, "pat", "pat-pass").await;
    let redirect = consent_if_asked(&f.app, &a.browser, after_login).await;
    let code = code(&f.app, &a, &redirect);
    let r = exchange(&f.app, PUBLIC, &code, &a.verifier).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// GETs an absolute FHIR URL (a vendor profile's base): the status and the JSON body.
pub(crate) async fn fhir_get_at(app: &TestApp, url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = app.client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn fhir_get(app: &TestApp, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = app.client.get(app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn discovery_documents() {
    let f = fixture().await;
    let app = &f.app;
    for accept in [None, Some("text/html"), Some("application/fhir+json"), Some("application/json")] {
        let mut req = app.client.get(app.url(".well-known/smart-configuration")).header("origin", "https://inferno.example");
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
        assert_eq!(r.headers()["access-control-allow-origin"], "https://inferno.example");
    }
    let (_, d) = app.get_json(".well-known/smart-configuration").await;
    assert!(d["capabilities"].as_array().unwrap().iter().all(Value::is_string));
    assert!(d["grant_types_supported"].as_array().unwrap().contains(&json!("authorization_code")));
    assert_eq!(d["code_challenge_methods_supported"], json!(["S256"]));
    for k in ["authorization_endpoint", "token_endpoint", "jwks_uri", "introspection_endpoint", "revocation_endpoint"] {
        assert!(d[k].as_str().unwrap().starts_with("http://127.0.0.1:"), "{k} is absolute");
    }
    assert_eq!(d["issuer"], json!(app.base));
    let oidc: Value = app.client.get(format!("{}/.well-known/openid-configuration", app.base)).send().await.unwrap().json().await.unwrap();
    for k in [
        "issuer",
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "response_types_supported",
        "subject_types_supported",
        "id_token_signing_alg_values_supported",
    ] {
        assert!(oidc.get(k).is_some(), "{k}");
    }
    assert_eq!(oidc["issuer"], d["issuer"]);
    let jwks: Value = app.client.get(d["jwks_uri"].as_str().unwrap()).send().await.unwrap().json().await.unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "RSA");
    assert!(key.get("n").is_some() && key.get("e").is_some() && key.get("d").is_none(), "public parts only");
    let (status, _) = app.get_json("metadata").await;
    assert_eq!(status, 200, "metadata stays public");
    let style = app.client.get(format!("{}/auth/style.json", root(app))).send().await.unwrap();
    assert_eq!(style.status(), 200);
}

/// Verifies an RS256 id_token against the server's JWKS and returns its claims.
pub(crate) async fn verify_id_token(app: &TestApp, jwt: &str) -> Value {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    let jwks: Value = app.client.get(format!("{}/auth/jwks", root(app))).send().await.unwrap().json().await.unwrap();
    let key = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == header["kid"]).expect("kid in JWKS");
    let n = b64.decode(key["n"].as_str().unwrap()).unwrap();
    let e = b64.decode(key["e"].as_str().unwrap()).unwrap();
    let components = aws_lc_rs::signature::RsaPublicKeyComponents { n: &n, e: &e };
    components
        .verify(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256, format!("{}.{}", parts[0], parts[1]).as_bytes(), &b64.decode(parts[2]).unwrap())
        .expect("signature verifies");
    serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap()
}

#[tokio::test]
async fn standalone_patient_launch_end_to_end() {
    let f = fixture().await;
    let app = &f.app;
    let t = patient_tokens(&f, "launch/patient openid fhirUser offline_access patient/*.rs").await;
    assert_eq!(t["token_type"], "Bearer");
    assert!(t["expires_in"].is_number());
    assert_eq!(t["patient"], json!(f.p1), "a patient user gets their own record");
    assert_eq!(t["scope"], "launch/patient openid fhirUser offline_access patient/*.rs");
    assert!(t["refresh_token"].is_string());
    assert_eq!(t["need_patient_banner"], true);
    assert!(t["smart_style_url"].as_str().unwrap().starts_with("http"));
    let claims = verify_id_token(app, t["id_token"].as_str().unwrap()).await;
    assert_eq!(claims["iss"], json!(app.base));
    assert_eq!(claims["aud"], PUBLIC);
    assert_eq!(claims["nonce"], "n-123");
    assert_eq!(claims["fhirUser"], json!(format!("{}/Patient/{}", app.base, f.p1)));
    let token = t["access_token"].as_str().unwrap();
    let (status, p) = fhir_get(app, &format!("Patient/{}", f.p1), Some(token)).await;
    assert_eq!((status, p["id"].as_str()), (200, Some(f.p1.as_str())));
    let (status, _) = fhir_get(app, &format!("Patient/{}", f.p2), Some(token)).await;
    assert_eq!(status, 403, "another patient is outside the compartment");
    let (status, b) = fhir_get(app, "Observation?category=vital-signs&_count=500", Some(token)).await;
    assert_eq!(status, 200);
    assert!(b["total"].as_u64().unwrap() > 0);
    assert!(b["entry"].as_array().unwrap().iter().all(|e| e["resource"]["subject"]["reference"] == json!(format!("Patient/{}", f.p1))));
    let (status, b) = fhir_get(app, &format!("Observation?patient={}", f.p2), Some(token)).await;
    assert_eq!((status, b["total"].as_u64()), (200, Some(0)), "searching another patient finds nothing");
    let (status, _) = fhir_get(app, &format!("Patient/{}/$everything", f.p2), Some(token)).await;
    assert_eq!(status, 403);
    let r = app
        .client
        .post(app.url("Patient"))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, ".rs grants no create");
    // The practitioner named in the record is outside the compartment but not of any patient: readable.
    let (status, _) = fhir_get(app, &format!("Practitioner/{}", synth::practitioner_id(0)), Some(token)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn fhir_api_needs_a_valid_token() {
    let f = fixture().await;
    let r = f.app.client.get(f.app.url(&format!("Patient/{}", f.p1))).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let r = f.app.client.get(f.app.url("Patient")).bearer_auth("not-a-token").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    // Expired tokens are refused.
    let t = patient_tokens(&f, "launch/patient patient/*.rs").await;
    f.app.clock.advance(time::Duration::seconds(3601));
    let (status, _) = fhir_get(&f.app, &format!("Patient/{}", f.p1), t["access_token"].as_str()).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn pkce_code_and_client_checks_at_the_token_endpoint() {
    let f = fixture().await;
    let app = &f.app;
    let get_code = |_: ()| async {
        let a = Auth::new(app, PUBLIC, "launch/patient patient/Patient.rs");
        let page = a.start(app).await;
        let r = consent_if_asked(app, &a.browser, login(app, &a.browser, page, "pat", "pat-pass").await).await;
        (code(app, &a, &r), a.verifier.clone(), a.challenge.clone())
    };
    for (label, verifier) in
        [("no verifier", None), ("empty verifier", Some(String::new())), ("wrong verifier", Some(format!("{}-{}", uuid::Uuid::new_v4(), uuid::Uuid::new_v4())))]
    {
        let (c, _, _) = get_code(()).await;
        let mut form = vec![("grant_type", "authorization_code"), ("code", c.as_str()), ("redirect_uri", REDIRECT), ("client_id", PUBLIC)];
        if let Some(v) = &verifier {
            form.push(("code_verifier", v));
        }
        let r = post_form(app, "/auth/token", &form).await;
        assert_eq!(r.status(), 400, "{label}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"], "invalid_grant", "{label}");
    }
    let (c, _, challenge) = get_code(()).await;
    let r = exchange(app, PUBLIC, &c, &challenge).await;
    assert_eq!(r.status(), 400, "the challenge itself is not a verifier (plain attack)");
    let r = exchange(app, PUBLIC, "BAD_CODE", "x".repeat(50).as_str()).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["cache-control"], "no-store");
    // Redirect URI must match the authorisation request.
    let (c, v, _) = get_code(()).await;
    let r = post_form(
        app,
        "/auth/token",
        &[("grant_type", "authorization_code"), ("code", &c), ("redirect_uri", "https://app.example/other"), ("code_verifier", &v), ("client_id", PUBLIC)],
    )
    .await;
    assert_eq!(r.status(), 400);
    // A replayed code fails and revokes the tokens of its first use.
    let (c, v, _) = get_code(()).await;
    let first: Value = exchange(app, PUBLIC, &c, &v).await.json().await.unwrap();
    let token = first["access_token"].as_str().unwrap().to_string();
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p1), Some(&token)).await.0, 200);
    let r = exchange(app, PUBLIC, &c, &v).await;
    assert_eq!(r.status(), 400);
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p1), Some(&token)).await.0, 401, "replay revoked the first tokens");
    // Expired codes (60 s).
    let (c, v, _) = get_code(()).await;
    app.clock.advance(time::Duration::seconds(61));
    assert_eq!(exchange(app, PUBLIC, &c, &v).await.status(), 400);
    // Unsupported grant type, unknown client, a confidential client without its secret.
    let r = post_form(app, "/auth/token", &[("grant_type", "password"), ("client_id", PUBLIC)]).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unsupported_grant_type");
    let r = app
        .client
        .post(format!("{}/auth/token", root(app)))
        .basic_auth("BAD_CLIENT_ID", Some("secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=authorization_code&code=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic"));
    let r = post_form(app, "/auth/token", &[("grant_type", "authorization_code"), ("code", "x"), ("client_id", CONFIDENTIAL)]).await;
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn authorize_errors_never_redirect_to_untrusted_addresses() {
    let f = fixture().await;
    let app = &f.app;
    let mut a = Auth::new(app, "nobody", "launch/patient");
    let r = a.start(app).await;
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
    assert!(r.text().await.unwrap().contains("not registered"));
    a.client_id = PUBLIC;
    let mut url = url::Url::parse(&format!("{}/auth/authorize", root(app))).unwrap();
    url.query_pairs_mut().extend_pairs(a.params().into_iter().map(|(k, v)| if k == "redirect_uri" { (k, format!("{v}/")) } else { (k, v) }));
    let r = app.client.get(url).send().await.unwrap();
    assert_eq!(r.status(), 400, "a redirect URI with an extra slash is not the registered one");
    assert!(r.headers().get("location").is_none());
    // From here errors go back to the app, with state and iss.
    let check = |r: reqwest::Response, error: &'static str| {
        assert_eq!(r.status(), 303);
        let q = query(&location(&r));
        assert_eq!(q.get("error").map(String::as_str), Some(error));
        assert_eq!(q.get("state").map(String::as_str), Some("st-ü &=|x"));
        assert!(!q.contains_key("code"));
    };
    let mut bad_aud = Auth::new(app, PUBLIC, "launch/patient");
    bad_aud.aud = "https://inferno.healthit.gov/invalid_aud".into();
    check(bad_aud.start(app).await, "invalid_request");
    let mut plain = Auth::new(app, PUBLIC, "launch/patient");
    plain.challenge = plain.verifier.clone();
    let mut url = url::Url::parse(&format!("{}/auth/authorize", root(app))).unwrap();
    url.query_pairs_mut().extend_pairs(plain.params().into_iter().map(|(k, v)| if k == "code_challenge_method" { (k, "plain".to_string()) } else { (k, v) }));
    check(app.client.get(url).send().await.unwrap(), "invalid_request");
    let mut url = url::Url::parse(&format!("{}/auth/authorize", root(app))).unwrap();
    url.query_pairs_mut().extend_pairs(Auth::new(app, PUBLIC, "launch/patient").params().into_iter().filter(|(k, _)| !k.starts_with("code_challenge")));
    check(app.client.get(url).send().await.unwrap(), "invalid_request");
    let mut url = url::Url::parse(&format!("{}/auth/authorize", root(app))).unwrap();
    url.query_pairs_mut().extend_pairs(
        Auth::new(app, PUBLIC, "launch/patient").params().into_iter().map(|(k, v)| if k == "response_type" { (k, "token".to_string()) } else { (k, v) }),
    );
    check(app.client.get(url).send().await.unwrap(), "unsupported_response_type");
    // Denied consent.
    let a = Auth::new(app, PUBLIC, "launch/patient patient/*.rs");
    let r = consent(app, &a.browser, login(app, &a.browser, a.start(app).await, "pat", "pat-pass").await, false, &[], &[]).await;
    check(r, "access_denied");
    // A wrong password shows the sign-in page again with an explanation.
    let b = Auth::new(app, PUBLIC, "launch/patient");
    let r = login(app, &b.browser, b.start(app).await, "pat", "wrong").await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("do not match"));
}

#[tokio::test]
async fn authorize_by_post_and_confidential_client_with_basic_auth() {
    let f = fixture().await;
    let app = &f.app;
    let a = Auth::new(app, CONFIDENTIAL, "launch/patient openid fhirUser patient/Patient.rs");
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(a.params()).finish();
    let page =
        app.client.post(format!("{}/auth/authorize", root(app))).header("content-type", "application/x-www-form-urlencoded").body(body).send().await.unwrap();
    a.browser.keep(&page);
    let r = consent(app, &a.browser, login(app, &a.browser, page, "pat", "pat-pass").await, true, &[], &[]).await;
    let c = code(app, &a, &r);
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("grant_type", "authorization_code"), ("code", c.as_str()), ("redirect_uri", REDIRECT), ("code_verifier", a.verifier.as_str())])
        .finish();
    let wrong = app
        .client
        .post(format!("{}/auth/token", root(app)))
        .basic_auth(CONFIDENTIAL, Some("wrong"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let ok = app
        .client
        .post(format!("{}/auth/token", root(app)))
        .basic_auth(CONFIDENTIAL, Some(&f.secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "a failed attempt does not burn the code");
    let t: Value = ok.json().await.unwrap();
    assert!(t["id_token"].is_string());
}

#[tokio::test]
async fn consent_unticking_categories_and_remembered_consent() {
    let f = fixture().await;
    let app = &f.app;
    let scope = "launch/patient patient/Patient.rs patient/Observation.rs patient/Condition.rs";
    let a = Auth::new(app, PUBLIC, scope);
    let page = login(app, &a.browser, a.start(app).await, "pat", "pat-pass").await;
    let vitals = "patient/Observation.rs|http://terminology.hl7.org/CodeSystem/observation-category|vital-signs";
    let r = consent(app, &a.browser, page, true, &["patient/Condition.rs"], &[vitals]).await;
    let c = code(app, &a, &r);
    let t: Value = exchange(app, PUBLIC, &c, &a.verifier).await.json().await.unwrap();
    assert_eq!(
        t["scope"],
        "launch/patient patient/Patient.rs patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"
    );
    let token = t["access_token"].as_str().unwrap();
    let (status, _) = fhir_get(app, &format!("Condition?patient={}", f.p1), Some(token)).await;
    assert_eq!(status, 403, "an unticked type is refused");
    let (status, b) = fhir_get(app, "Observation?_count=1000", Some(token)).await;
    assert_eq!(status, 200);
    let entries = b["entry"].as_array().unwrap();
    assert!(!entries.is_empty());
    assert!(entries.iter().all(|e| e["resource"]["category"][0]["coding"][0]["code"] == "vital-signs"), "only granted categories");
    let (_, labs) = fhir_get(app, &format!("Observation?patient={}&category=laboratory", f.p1), Some(token)).await;
    assert_eq!(labs["total"], 0);
    // A lab result read directly is refused.
    let lab_id = f
        .app
        .app_state
        .store
        .search(
            &fhir::query::parse(
                "Observation",
                &[("patient".into(), f.p1.clone()), ("category".into(), "laboratory".into())],
                fhir::query::ParseOptions { lenient: false, base: None, now_ms: 0 },
            )
            .unwrap(),
        )
        .await
        .unwrap();
    if let Some(key) = lab_id.first() {
        let lab = f.app.app_state.store.fetch(&[*key]).await.unwrap().remove(0);
        let (status, _) = fhir_get(app, &format!("Observation/{}", lab.id), Some(token)).await;
        assert_eq!(status, 403);
    }
    // The same request again: consent is remembered, no page.
    let again = Auth::new(app, PUBLIC, scope);
    let page = login(app, &again.browser, again.start(app).await, "pat", "pat-pass").await;
    let c = code(app, &again, &page);
    let t2: Value = exchange(app, PUBLIC, &c, &again.verifier).await.json().await.unwrap();
    assert_eq!(t2["scope"], t["scope"]);
}

#[tokio::test]
async fn ehr_launch_with_context_and_single_use_handle() {
    let f = fixture().await;
    let app = &f.app;
    let enc = app
        .app_state
        .store
        .search(
            &fhir::query::parse("Encounter", &[("patient".into(), f.p2.clone())], fhir::query::ParseOptions { lenient: false, base: None, now_ms: 0 }).unwrap(),
        )
        .await
        .unwrap();
    let encounter = app.app_state.store.fetch(&enc[..1]).await.unwrap().remove(0).id;
    let launch_ctx = json!({"patient": f.p2, "encounter": encounter, "need_patient_banner": false, "tenant": "practice-42", "intent": "reconcile-medications",
        "fhirContext": [{"reference": format!("Encounter/{encounter}")}], "extra": {"practice_id": "P-42"}});
    let r = app.client.post(format!("{}/auth/launch", root(app))).basic_auth("doc", Some("wrong")).json(&launch_ctx).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = app.client.post(format!("{}/auth/launch", root(app))).basic_auth("doc", Some("doc-pass")).json(&launch_ctx).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let handle = created["launch"].as_str().unwrap().to_string();
    assert_eq!(created["iss"], json!(app.base));
    let mut a = Auth::new(app, PUBLIC, "launch openid fhirUser user/*.rs");
    a.launch = Some(handle.clone());
    // The handle alone is not enough: without the EHR's session the launching user signs in, and nobody else may.
    let page = a.start(app).await;
    let wrong = login(app, &a.browser, page, "pat", "pat-pass").await;
    assert_eq!(wrong.status(), 401, "another user cannot continue the doctor's launch");
    let html = wrong.text().await.unwrap();
    assert!(html.contains("launched by another user"), "{html}");
    let req = inputs(&html, "request").remove(0);
    let r = browser_form(app, &a.browser, "/auth/login", &[("request", &req), ("username", "doc"), ("password", "doc-pass")]).await;
    let r = consent(app, &a.browser, r, true, &[], &[]).await;
    let c = code(app, &a, &r);
    let t: Value = exchange(app, PUBLIC, &c, &a.verifier).await.json().await.unwrap();
    assert_eq!(t["patient"], json!(f.p2));
    assert_eq!(t["encounter"], json!(encounter));
    assert_eq!(t["need_patient_banner"], false);
    assert_eq!(t["tenant"], "practice-42");
    assert_eq!(t["intent"], "reconcile-medications");
    assert_eq!(t["practice_id"], "P-42");
    assert_eq!(t["fhirContext"][0]["reference"], json!(format!("Encounter/{encounter}")));
    let claims = verify_id_token(app, t["id_token"].as_str().unwrap()).await;
    assert_eq!(claims["fhirUser"], json!(format!("{}/Practitioner/{}", app.base, synth::practitioner_id(0))));
    let token = t["access_token"].as_str().unwrap();
    assert_eq!(fhir_get(app, &format!("Encounter/{encounter}"), Some(token)).await.0, 200);
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p1), Some(token)).await.0, 200, "user/ scopes reach every patient");
    // The handle is single use.
    let mut again = Auth::new(app, PUBLIC, "launch openid fhirUser user/*.rs");
    again.launch = Some(handle);
    let r = again.start(app).await;
    assert_eq!(query(&location(&r)).get("error").map(String::as_str), Some("invalid_request"));
    // And expires.
    let r = app.client.post(format!("{}/auth/launch", root(app))).basic_auth("doc", Some("doc-pass")).json(&json!({"patient": f.p1})).send().await.unwrap();
    let handle: Value = r.json().await.unwrap();
    app.clock.advance(time::Duration::minutes(6));
    let mut late = Auth::new(app, PUBLIC, "launch user/*.rs");
    late.launch = Some(handle["launch"].as_str().unwrap().to_string());
    let r = late.start(app).await;
    assert_eq!(query(&location(&r)).get("error").map(String::as_str), Some("invalid_request"));
}

#[tokio::test]
async fn refresh_rotation_reuse_detection_and_scope_narrowing() {
    let f = fixture().await;
    let app = &f.app;
    let t = patient_tokens(&f, "launch/patient openid fhirUser offline_access patient/*.rs").await;
    let rt1 = t["refresh_token"].as_str().unwrap().to_string();
    let r = post_form(app, "/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", &rt1), ("client_id", PUBLIC)]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["pragma"], "no-cache");
    let t2: Value = r.json().await.unwrap();
    assert!(t2["expires_in"].is_number());
    assert_eq!(t2["scope"], t["scope"]);
    let rt2 = t2["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt2, "rotated");
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p1), t2["access_token"].as_str()).await.0, 200);
    // Narrowing with the full granted scope string (non-resource scopes included) and a subset.
    let r = post_form(
        app,
        "/auth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", &rt2), ("client_id", PUBLIC), ("scope", t["scope"].as_str().unwrap())],
    )
    .await;
    assert_eq!(r.status(), 200);
    let t3: Value = r.json().await.unwrap();
    let rt3 = t3["refresh_token"].as_str().unwrap().to_string();
    let r =
        post_form(app, "/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", &rt3), ("client_id", PUBLIC), ("scope", "patient/*.cruds")]).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_scope");
    let r = post_form(app, "/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", &rt3), ("client_id", PUBLIC), ("scope", "patient/Patient.rs")])
        .await;
    let t4: Value = r.json().await.unwrap();
    assert_eq!(t4["scope"], "patient/Patient.rs");
    // Reusing a rotated-out token revokes the whole grant.
    let r = post_form(app, "/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", &rt1), ("client_id", PUBLIC)]).await;
    assert_eq!(r.status(), 400);
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p1), t4["access_token"].as_str()).await.0, 401);
    let r =
        post_form(app, "/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", &uuid::Uuid::new_v4().to_string()), ("client_id", PUBLIC)]).await;
    assert_eq!(r.status(), 400);
    // Another client cannot use this client's refresh token.
    let t = patient_tokens(&f, "launch/patient offline_access patient/*.rs").await;
    let r = app
        .client
        .post(format!("{}/auth/token", root(app)))
        .basic_auth(CONFIDENTIAL, Some(&f.secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type=refresh_token&refresh_token={}", t["refresh_token"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn introspection_and_revocation() {
    let f = fixture().await;
    let app = &f.app;
    let t = patient_tokens(&f, "launch/patient openid fhirUser offline_access patient/*.rs").await;
    let token = t["access_token"].as_str().unwrap();
    let r = post_form(app, "/auth/introspect", &[("token", token)]).await;
    assert_eq!(r.status(), 401, "introspection needs authentication");
    let r = app
        .client
        .post(format!("{}/auth/introspect", root(app)))
        .bearer_auth(token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let i: Value = r.json().await.unwrap();
    assert_eq!(i["active"], true);
    assert_eq!(i["client_id"], PUBLIC);
    assert_eq!(i["scope"], t["scope"]);
    assert_eq!(i["patient"], t["patient"]);
    assert!(i["exp"].is_i64());
    let claims = verify_id_token(app, t["id_token"].as_str().unwrap()).await;
    assert_eq!(i["sub"], claims["sub"]);
    assert_eq!(i["iss"], claims["iss"]);
    let r = post_form(app, "/auth/introspect", &[("token", "invalid_token_value"), ("client_id", PUBLIC)]).await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"active": false}));
    // Revoking the refresh token ends the access token too, at once.
    let r = post_form(app, "/auth/revoke", &[("token", t["refresh_token"].as_str().unwrap()), ("client_id", PUBLIC)]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p1), Some(token)).await.0, 401);
    let r =
        post_form(app, "/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", t["refresh_token"].as_str().unwrap()), ("client_id", PUBLIC)]).await;
    assert_eq!(r.status(), 400);
    let r = post_form(app, "/auth/introspect", &[("token", token), ("client_id", PUBLIC)]).await;
    assert_eq!(r.json::<Value>().await.unwrap()["active"], false);
}

#[tokio::test]
async fn clinician_standalone_launch_picks_a_patient() {
    let f = fixture().await;
    let app = &f.app;
    let a = Auth::new(app, PUBLIC, "launch/patient openid fhirUser patient/*.rs");
    let page = login(app, &a.browser, a.start(app).await, "doc", "doc-pass").await;
    let html = page.text().await.unwrap();
    assert!(html.contains("Which patient"), "{html}");
    let req = inputs(&html, "request").remove(0);
    let patients = inputs(&html, "patient");
    assert!(patients.contains(&f.p2));
    let r = browser_form(app, &a.browser, "/auth/pick", &[("request", &req), ("patient", &f.p2)]).await;
    let r = consent(app, &a.browser, r, true, &[], &[]).await;
    let c = code(app, &a, &r);
    let t: Value = exchange(app, PUBLIC, &c, &a.verifier).await.json().await.unwrap();
    assert_eq!(t["patient"], json!(f.p2));
    // The fhirUser resource is readable with patient scopes.
    assert_eq!(fhir_get(app, &format!("Practitioner/{}", synth::practitioner_id(0)), t["access_token"].as_str()).await.0, 200);
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p1), t["access_token"].as_str()).await.0, 403);
}

#[tokio::test]
async fn revocation_by_another_node_takes_effect_within_a_second() {
    let f = fixture().await;
    let app = &f.app;
    let t = patient_tokens(&f, "launch/patient patient/*.rs").await;
    let token = t["access_token"].as_str().unwrap();
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p1), Some(token)).await.0, 200);
    // Another node revokes: only the shared store changes.
    let record = app.auth.store.auth_get("access", &auth::crypto::token_key(token)).await.unwrap().unwrap();
    app.auth.store.auth_revoke_grant(record.grant_id.as_deref().unwrap()).await.unwrap();
    app.clock.advance(time::Duration::milliseconds(1001));
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p1), Some(token)).await.0, 401);
}

#[tokio::test]
async fn every_decision_and_access_is_audited_without_token_material() {
    let f = fixture().await;
    let app = &f.app;
    let t = patient_tokens(&f, "launch/patient openid fhirUser offline_access patient/*.rs").await;
    let token = t["access_token"].as_str().unwrap();
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p1), Some(token)).await.0, 200);
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p2), Some(token)).await.0, 403);
    assert_eq!(fhir_get(app, "Patient", Some("garbage")).await.0, 401);
    // A clinician with user/ scopes reads the trail.
    let a = Auth::new(app, PUBLIC, "openid fhirUser user/*.rs");
    let r = consent_if_asked(app, &a.browser, login(app, &a.browser, a.start(app).await, "doc", "doc-pass").await).await;
    let c = code(app, &a, &r);
    let doc: Value = exchange(app, PUBLIC, &c, &a.verifier).await.json().await.unwrap();
    let doc_token = doc["access_token"].as_str().unwrap();
    let mut events = Value::Null;
    for _ in 0..40 {
        let (status, b) = fhir_get(app, "AuditEvent?_count=200", Some(doc_token)).await;
        assert_eq!(status, 200);
        let text = b.to_string();
        if text.contains("GET 403") && text.contains("consent") {
            events = b;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if events.is_null() {
        let (_, b) = fhir_get(app, "AuditEvent?_count=200", Some(doc_token)).await;
        panic!("audit events did not arrive: {}", &b.to_string()[..b.to_string().len().min(3000)]);
    }
    let text = events.to_string();
    for action in ["login", "consent", "code", "token", "read"] {
        assert!(text.contains(&format!("\"code\":\"{action}\"")), "{action} audited");
    }
    assert!(text.contains(&format!("Patient/{}", f.p2)) && text.contains("GET 403"), "the refused read is recorded");
    assert!(text.contains("GET 401"), "the request with a bad token is recorded");
    for secret in [token, t["refresh_token"].as_str().unwrap(), doc_token, t["id_token"].as_str().unwrap(), &c] {
        assert!(!text.contains(secret), "no token material in the audit trail");
    }
    let first_id = events["entry"][0]["resource"]["id"].as_str().unwrap();
    assert_eq!(fhir_get(app, &format!("AuditEvent/{first_id}"), Some(doc_token)).await.0, 200);
    // The trail is read-only, and a patient token without AuditEvent sees it only for its own patient.
    let r = app.client.post(app.url("AuditEvent")).bearer_auth(doc_token).header("content-type", "application/fhir+json").body("{}").send().await.unwrap();
    assert_eq!(r.status(), 405);
    let (status, own) = fhir_get(app, "AuditEvent", Some(token)).await;
    assert_eq!(status, 200);
    assert!(own["entry"].as_array().unwrap().iter().all(|e| e["resource"].to_string().contains(&format!("Patient/{}", f.p1))));
    assert_eq!(fhir_get(app, &format!("AuditEvent?patient={}", f.p2), Some(token)).await.0, 403);

    // Paging: small pages, followed by their next links, cover every record the large page had (records
    // written meanwhile are newer and do not shift the pages), newest first, with the total of the matches.
    let (_, all) = fhir_get(app, "AuditEvent?_count=1000", Some(doc_token)).await;
    let everything: Vec<i64> = all["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap().parse().unwrap()).collect();
    assert!(everything.len() > 6, "{}", everything.len());
    let (_, first) = fhir_get(app, "AuditEvent?_count=2", Some(doc_token)).await;
    assert!(first["total"].as_u64().unwrap() >= everything.len() as u64, "total counts the matches, not the page: {}", first["total"]);
    let mut paged: Vec<i64> = Vec::new();
    let mut page = first;
    loop {
        let entries = page["entry"].as_array().unwrap();
        assert!(entries.len() <= 2);
        paged.extend(entries.iter().map(|e| e["resource"]["id"].as_str().unwrap().parse::<i64>().unwrap()));
        let Some(next) = page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") else { break };
        let url = next["url"].as_str().unwrap();
        assert!(url.contains("_count=2"), "{url}");
        let r = app.client.get(url).bearer_auth(doc_token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        page = r.json().await.unwrap();
    }
    assert!(paged.windows(2).all(|w| w[0] > w[1]), "newest first, no repeats");
    for id in &everything {
        assert!(paged.contains(id), "AuditEvent/{id} was on no page");
    }
}

#[tokio::test]
async fn includes_and_bundle_entries_stay_in_the_compartment() {
    let f = fixture().await;
    let app = &f.app;
    let t = patient_tokens(&f, "launch/patient patient/*.cruds").await;
    let token = t["access_token"].as_str().unwrap();
    // Observations of every patient point to the practitioners; a revinclude must not leak them.
    let (status, b) = fhir_get(app, "Practitioner?_revinclude=Observation:performer&_count=10", Some(token)).await;
    assert_eq!(status, 200);
    let included: Vec<&Value> = b["entry"].as_array().unwrap().iter().filter(|e| e["search"]["mode"] == "include").collect();
    assert!(!included.is_empty());
    assert!(included.iter().all(|e| e["resource"]["subject"]["reference"] == json!(format!("Patient/{}", f.p1))), "only the context patient's");
    // A transaction writing into another patient's record fails as a whole.
    let obs = |p: &str| json!({"resourceType": "Observation", "status": "final", "code": {"text": "note"}, "subject": {"reference": format!("Patient/{p}")}});
    let tx = |entries: Vec<Value>| json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let post = |r: Value| json!({"resource": r, "request": {"method": "POST", "url": "Observation"}});
    let send = |body: Value| app.client.post(app.base.clone()).bearer_auth(token).header("content-type", "application/fhir+json").body(body.to_string()).send();
    let r = send(tx(vec![post(obs(&f.p1)), post(obs(&f.p2))])).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = send(tx(vec![post(obs(&f.p1))])).await.unwrap();
    assert_eq!(r.status(), 200);
    // In a batch each entry is judged alone.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": format!("Patient/{}", f.p2)}},
        {"request": {"method": "GET", "url": format!("Patient/{}", f.p1)}},
        post(obs(&f.p2)),
    ]});
    let r: Value = send(batch).await.unwrap().json().await.unwrap();
    let statuses: Vec<&str> = r["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert!(statuses[0].starts_with("403") && statuses[1].starts_with("200") && statuses[2].starts_with("403"), "{statuses:?}");
}

#[tokio::test]
async fn signing_keys_rotate_and_old_keys_stay_published() {
    let f = fixture().await;
    let app = &f.app;
    let store = app.auth.store.clone();
    let old_kid = app.auth.keys.kid().to_string();
    let t = patient_tokens(&f, "launch/patient openid fhirUser patient/*.rs").await;
    app.clock.advance(time::Duration::minutes(10));
    let new_kid = auth::keys::rotate(store.as_ref(), fhir::time::unix_ms(fhir::time::Clock::now(&*app.clock))).await.unwrap();
    // What a node sees after its next start.
    let restarted = auth::AuthServer::new(store.clone(), app.auth.config.clone(), app.clock.clone(), None, std::sync::Arc::new(ehr::AuthPages)).await.unwrap();
    assert_eq!(restarted.keys.kid(), new_kid);
    let kids: Vec<&str> = restarted.keys.jwks()["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    let (new_rs384, old_rs384) = (format!("{new_kid}-rs384"), format!("{old_kid}-rs384"));
    assert_eq!(kids, vec![new_kid.as_str(), new_rs384.as_str(), old_kid.as_str(), old_rs384.as_str()], "the old key stays published");
    let jwt = restarted.keys.sign_jwt(&json!({"iss": "x"})).unwrap();
    assert!(jwt.split('.').next().map(|h| String::from_utf8(auth::crypto::b64url_decode(h).unwrap()).unwrap().contains(&new_kid)).unwrap());
    // Pruning keeps keys younger than the window, then drops the old one.
    assert!(auth::keys::prune(store.as_ref(), 2 * 3600 * 1000).await.unwrap().is_empty());
    assert_eq!(auth::keys::prune(store.as_ref(), 60 * 1000).await.unwrap(), vec![old_kid]);
    let _ = t;
}

#[tokio::test]
async fn public_clients_may_refresh_without_identifying_themselves() {
    let f = fixture().await;
    let app = &f.app;
    let t = patient_tokens(&f, "launch/patient offline_access patient/*.rs").await;
    let rt = t["refresh_token"].as_str().unwrap();
    // RFC 6749 §6: the SMART JavaScript client refreshes without client_id; the token names its client.
    let r = post_form(app, "/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", rt)]).await;
    assert_eq!(r.status(), 200);
    // A confidential client's refresh token still needs the client's credentials.
    let a = Auth::new(app, CONFIDENTIAL, "launch/patient offline_access patient/*.rs");
    let r = consent_if_asked(app, &a.browser, login(app, &a.browser, a.start(app).await, "pat", "pat-pass").await).await;
    let c = code(app, &a, &r);
    let body = format!(
        "grant_type=authorization_code&code={c}&redirect_uri={}&code_verifier={}",
        url::form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>(),
        a.verifier
    );
    let t: Value = app
        .client
        .post(format!("{}/auth/token", root(app)))
        .basic_auth(CONFIDENTIAL, Some(&f.secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = post_form(app, "/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", t["refresh_token"].as_str().unwrap())]).await;
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn cors_on_discovery_metadata_and_the_token_endpoint() {
    let f = fixture().await;
    let app = &f.app;
    let origin = "https://inferno.example";
    for url in [app.url("metadata"), app.url(".well-known/smart-configuration"), format!("{}/auth/jwks", root(app))] {
        let r = app.client.get(&url).header("origin", origin).send().await.unwrap();
        assert_eq!(r.headers()["access-control-allow-origin"], origin, "{url}");
    }
    let r = app
        .client
        .request(reqwest::Method::OPTIONS, format!("{}/auth/token", root(app)))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "preflight answered");
    assert_eq!(r.headers()["access-control-allow-origin"], origin);
    // A public client's code exchange from a browser origin.
    let a = Auth::new(app, PUBLIC, "launch/patient patient/Patient.rs");
    let r = consent_if_asked(app, &a.browser, login(app, &a.browser, a.start(app).await, "pat", "pat-pass").await).await;
    let c = code(app, &a, &r);
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "authorization_code"),
            ("code", c.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", a.verifier.as_str()),
            ("client_id", PUBLIC),
        ])
        .finish();
    let r = app
        .client
        .post(format!("{}/auth/token", root(app)))
        .header("origin", origin)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], origin);
}

/// Regression tests for the holes a security review found.
#[tokio::test]
async fn consent_and_pick_forms_cannot_widen_the_grant() {
    let f = fixture().await;
    let app = &f.app;
    // A category value smuggling another scope in is ignored.
    let a = Auth::new(app, PUBLIC, "launch/patient patient/Observation.rs");
    let page = login(app, &a.browser, a.start(app).await, "pat", "pat-pass").await;
    let evil = "patient/Observation.rs|x system/*.cruds";
    let r = consent(app, &a.browser, page, true, &[], &[evil]).await;
    let c = code(app, &a, &r);
    let t: Value = exchange(app, PUBLIC, &c, &a.verifier).await.json().await.unwrap();
    assert_eq!(t["scope"], "launch/patient patient/Observation.rs");
    // A patient user asking for user/ scopes gets none (it would be every record).
    let t = patient_tokens(&f, "launch/patient user/*.rs patient/Patient.rs").await;
    assert_eq!(t["scope"], "launch/patient patient/Patient.rs");
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p2), t["access_token"].as_str()).await.0, 403);
    // A patient user cannot pick another patient.
    let a = Auth::new(app, PUBLIC, "launch/patient patient/*.rs");
    let page = login(app, &a.browser, a.start(app).await, "pat", "pat-pass").await;
    let html = page.text().await.unwrap();
    let req = inputs(&html, "request").remove(0);
    let r = browser_form(app, &a.browser, "/auth/pick", &[("request", &req), ("patient", &f.p2)]).await;
    assert_eq!(r.status(), 400);
    // Nor launch an app on another patient's record.
    let r = app.client.post(format!("{}/auth/launch", root(app))).basic_auth("pat", Some("pat-pass")).json(&json!({"patient": f.p2})).send().await.unwrap();
    assert_eq!(r.status(), 403);
    // Self-registered apps get no user/ or system/ access.
    let reg: Value = app
        .client
        .post(format!("{}/auth/register", root(app)))
        .json(&json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none", "scope": "system/*.cruds user/*.rs patient/*.rs"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reg["scope"], "patient/*.rs");
}

#[tokio::test]
async fn patient_tokens_stay_in_the_record_on_every_path() {
    let f = fixture().await;
    let app = &f.app;
    let t = patient_tokens(&f, "launch/patient patient/*.cruds").await;
    let token = t["access_token"].as_str().unwrap();
    let post = |ty: &'static str, body: Value, extra: Option<(&'static str, String)>| {
        let mut req = app.client.post(app.url(ty)).bearer_auth(token).header("content-type", "application/fhir+json");
        if let Some((k, v)) = extra {
            req = req.header(k, v);
        }
        req.body(body.to_string()).send()
    };
    // Types outside every compartment and not shared reference data are refused.
    assert_eq!(fhir_get(app, "Communication", Some(token)).await.0, 403);
    // Writing about another patient while naming oneself as performer is refused.
    let sneaky = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{}", f.p2)}, "performer": [{"reference": format!("Patient/{}", f.p1)}]});
    assert_eq!(post("Observation", sneaky, None).await.unwrap().status(), 403);
    // Shared reference data is readable but not writable.
    assert_eq!(post("Organization", json!({"resourceType": "Organization", "name": "x"}), None).await.unwrap().status(), 403);
    // If-None-Exist cannot fetch another patient's resource: its criteria see only this patient's record,
    // so another patient's match is no match, and the new resource is created.
    let other = app
        .app_state
        .store
        .search(
            &fhir::query::parse("Observation", &[("patient".into(), f.p2.clone())], fhir::query::ParseOptions { lenient: false, base: None, now_ms: 0 })
                .unwrap(),
        )
        .await
        .unwrap();
    let other_id = app.app_state.store.fetch(&other[..1]).await.unwrap().remove(0).id;
    let mine = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{}", f.p1)}});
    let r = post("Observation", mine, Some(("if-none-exist", format!("_id={other_id}")))).await.unwrap();
    assert_eq!(r.status(), 201);
    let text = r.text().await.unwrap();
    assert!(!text.contains(&f.p2) && !text.contains(&other_id), "{text}");
    // Conditional entries in bundles need a type-wide search scope.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient?_id={}", f.p2)}}, "request": {"method": "POST", "url": "Observation"}}]});
    assert_eq!(post("", tx, None).await.unwrap().status(), 403);
    // A conditional PUT with a body that is not an object is a clear 4xx, never a crash.
    let r = app.client.put(app.url("Observation?_id=x")).bearer_auth(token).header("content-type", "application/fhir+json").body("[1]").send().await.unwrap();
    assert!(r.status().is_client_error());
}

/// An EHR launch made through the launch API with `context`, run to tokens as the clinician `doc`.
pub(crate) async fn ehr_tokens(f: &Fixture, context: Value, scope: &str) -> Value {
    let app = &f.app;
    let r = app.client.post(format!("{}/auth/launch", root(app))).basic_auth("doc", Some("doc-pass")).json(&context).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let mut a = Auth::new(app, PUBLIC, scope);
    a.launch = Some(created["launch"].as_str().unwrap().to_string());
    // The launch's `iss` is the audience (a vendor profile's own FHIR base, under one that has it).
    a.aud = created["iss"].as_str().unwrap().to_string();
    let page = login(app, &a.browser, a.start(app).await, "doc", "doc-pass").await;
    let redirect = consent_if_asked(app, &a.browser, page).await;
    let c = code(app, &a, &redirect);
    let r = exchange(app, PUBLIC, &c, &a.verifier).await;
    assert_eq!(r.status(), 200);
    let mut t: Value = r.json().await.unwrap();
    t["launch_id"] = created["launch_id"].clone();
    t["request_state"] = json!(a.state);
    t
}

pub(crate) async fn refresh(app: &TestApp, rt: &str) -> reqwest::Response {
    post_form(app, "/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", rt), ("client_id", PUBLIC)]).await
}

#[tokio::test]
async fn vendor_profiles_reproduce_their_ehrs() {
    let f = fixture().await;
    let app = &f.app;
    let scope = "launch openid fhirUser offline_access patient/*.rs";
    // Epic-style: the banner flag as a string, vendor-prefixed fields, wildcards expanded to v1 names,
    // refresh responses without a new refresh token (the old one stays valid).
    let t = ehr_tokens(&f, json!({"patient": f.p2, "profile": "epic", "need_patient_banner": false}), scope).await;
    assert_eq!(t["need_patient_banner"], json!("false"));
    assert_eq!(t["__epic.dstu2.patient"], json!(format!("E{}", f.p2)));
    assert_eq!((t["token_type"].as_str(), t["expires_in"].as_i64()), (Some("bearer"), Some(3240)), "as Epic's documentation shows");
    assert!(t.get("__epic.user").is_none(), "no field without a public source");
    assert_eq!(t["state"], t["request_state"], "Epic echoes the request's state in the token response");
    let granted = t["scope"].as_str().unwrap();
    assert!(granted.contains("patient/Observation.read") && !granted.contains("patient/*"), "{granted}");
    let epic = app.auth.config.fhir_base_for(&auth::model::Profile::named("epic"));
    let (status, _) = fhir_get_at(app, &format!("{epic}/Observation?patient={}", f.p2), t["access_token"].as_str()).await;
    assert_eq!(status, 200, "the expanded grant still works");
    assert_eq!(fhir_get(app, &format!("Observation?patient={}", f.p2), t["access_token"].as_str()).await.0, 401, "at Epic's base only");
    let rt = t["refresh_token"].as_str().unwrap();
    let r1: Value = refresh(app, rt).await.json().await.unwrap();
    assert!(r1["access_token"].is_string() && r1.get("refresh_token").is_none(), "{r1}");
    assert!(r1.get("state").is_none(), "state belongs to the code exchange only");
    assert_eq!(refresh(app, rt).await.status(), 200, "the old refresh token stays valid");

    // NextGen-style: practice and enterprise identifiers, one-hour tokens, the same refresh token again.
    let t = ehr_tokens(&f, json!({"patient": f.p2, "profile": "nextgen", "extra": {"practice_id": "P-42"}}), scope).await;
    assert_eq!(t["practice_id"], "P-42");
    assert!(t["enterprise_id"].is_string());
    assert_eq!(t["expires_in"], 3600);
    let rt = t["refresh_token"].as_str().unwrap();
    let r1: Value = refresh(app, rt).await.json().await.unwrap();
    assert_eq!(r1["refresh_token"].as_str(), Some(rt), "no rotation");
    assert_eq!(refresh(app, rt).await.status(), 200);

    // Oracle Health-style: ~570 s tokens, wildcard scopes silently dropped, aud mandatory.
    let t = ehr_tokens(&f, json!({"patient": f.p2, "profile": "oracle"}), "launch openid fhirUser patient/*.rs patient/Condition.rs").await;
    assert_eq!(t["expires_in"], 570);
    assert_eq!(t["scope"], "launch openid fhirUser patient/Condition.rs");
    let oracle = app.auth.config.fhir_base_for(&auth::model::Profile::named("oracle"));
    assert_eq!(fhir_get_at(app, &format!("{oracle}/Observation?patient={}", f.p2), t["access_token"].as_str()).await.0, 403);
    let r = app
        .client
        .post(format!("{}/auth/launch", root(app)))
        .basic_auth("doc", Some("doc-pass"))
        .json(&json!({"patient": f.p2, "profile": "oracle"}))
        .send()
        .await
        .unwrap();
    let handle: Value = r.json().await.unwrap();
    let mut a = Auth::new(app, PUBLIC, scope);
    a.launch = Some(handle["launch"].as_str().unwrap().to_string());
    let mut url = url::Url::parse(&format!("{}/auth/authorize", root(app))).unwrap();
    url.query_pairs_mut().extend_pairs(a.params().into_iter().map(|(k, v)| if k == "aud" { ("resource".to_string(), v) } else { (k, v) }));
    let r = app.client.get(url).send().await.unwrap();
    // Oracle writes its errors as `error_uri` URNs, not `error_description`.
    let q = query(&location(&r));
    assert_eq!(q.get("error").map(String::as_str), Some("invalid_request"));
    assert_eq!(q.get("error_uri").map(String::as_str), Some("urn:cerner:error:authorization-server:smart-v1:aud:missing"));
    assert!(!q.contains_key("error_description"), "{q:?}");
    // Oracle's documentation: a refresh response carries no new refresh token; the old one stays valid.
    let t = ehr_tokens(&f, json!({"patient": f.p2, "profile": "oracle"}), "launch openid fhirUser offline_access patient/Condition.rs").await;
    let rt = t["refresh_token"].as_str().unwrap();
    let r1: Value = refresh(app, rt).await.json().await.unwrap();
    assert!(r1["access_token"].is_string() && r1.get("refresh_token").is_none(), "{r1}");
    // (Oracle throttles refreshes to one a minute: `profiles::oracle_throttles_refreshes_…`.)
    app.clock.advance(time::Duration::seconds(61));
    assert_eq!(refresh(app, rt).await.status(), 200, "the old refresh token stays valid");

    // Strict (the default): a boolean, rotation, no vendor fields.
    let t = ehr_tokens(&f, json!({"patient": f.p2}), scope).await;
    assert_eq!(t["need_patient_banner"], json!(false), "a boolean, not a string");
    assert!(t.get("practice_id").is_none() && t.get("__epic.dstu2.patient").is_none() && t.get("state").is_none());
    assert_eq!(t["scope"], scope);
}

#[tokio::test]
async fn injected_faults_behave_as_a_real_server_would() {
    let f = fixture().await;
    let app = &f.app;
    let scope = "launch openid fhirUser offline_access patient/*.rs";
    let launch = |ctx: Value| app.client.post(format!("{}/auth/launch", root(app))).basic_auth("doc", Some("doc-pass")).json(&ctx).send();
    // Faults a real server could not produce are refused.
    let r = launch(json!({"patient": f.p2, "faults": {"fhir_error_status": 500, "fhir_error_rate": 1.0}})).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = launch(json!({"patient": f.p2, "faults": {"no_such_fault": true}})).await.unwrap();
    assert_eq!(r.status(), 400, "unknown fault names are refused, not ignored");
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");

    // The launch handle is already expired.
    let r: Value = launch(json!({"patient": f.p2, "faults": {"expired_launch": true}})).await.unwrap().json().await.unwrap();
    let mut a = Auth::new(app, PUBLIC, scope);
    a.launch = Some(r["launch"].as_str().unwrap().to_string());
    let q = query(&location(&a.start(app).await));
    assert_eq!(q.get("error").map(String::as_str), Some("invalid_request"));
    assert!(q["error_description"].contains("expired"));

    // Short-lived access tokens.
    let t = ehr_tokens(&f, json!({"patient": f.p2, "faults": {"token_secs": 5}}), scope).await;
    assert_eq!(t["expires_in"], 5);
    let token = t["access_token"].as_str().unwrap();
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p2), Some(token)).await.0, 200);
    app.clock.advance(time::Duration::seconds(6));
    let (status, _) = fhir_get(app, &format!("Patient/{}", f.p2), Some(token)).await;
    assert_eq!(status, 401, "expired");
    assert_eq!(refresh(app, t["refresh_token"].as_str().unwrap()).await.status(), 200, "and the refresh works");

    // Tokens revoked by the server after N seconds: access and refresh both stop.
    let t = ehr_tokens(&f, json!({"patient": f.p2, "faults": {"revoke_after_secs": 10}}), scope).await;
    let token = t["access_token"].as_str().unwrap();
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p2), Some(token)).await.0, 200);
    app.clock.advance(time::Duration::seconds(11));
    // Introspection says so at once, before the FHIR API has seen the token again.
    let r: Value = post_form(app, "/auth/introspect", &[("token", token), ("client_id", PUBLIC)]).await.json().await.unwrap();
    assert_eq!(r["active"], false);
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p2), Some(token)).await.0, 401);
    let r: Value = refresh(app, t["refresh_token"].as_str().unwrap()).await.json().await.unwrap();
    assert_eq!(r["error"], "invalid_grant");

    // Refresh fails.
    let t = ehr_tokens(&f, json!({"patient": f.p2, "faults": {"refresh_fails": true}}), scope).await;
    let r = refresh(app, t["refresh_token"].as_str().unwrap()).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");

    // 429 on every request, with Retry-After and an OperationOutcome; then 503 on half of them.
    let t = ehr_tokens(&f, json!({"patient": f.p2, "faults": {"fhir_error_status": 429, "fhir_error_rate": 1.0}}), scope).await;
    let r = app.client.get(app.url(&format!("Patient/{}", f.p2))).bearer_auth(t["access_token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.json::<Value>().await.unwrap()["resourceType"], "OperationOutcome");
    let t = ehr_tokens(&f, json!({"patient": f.p2, "faults": {"fhir_error_status": 503, "fhir_error_rate": 0.5}}), scope).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(fhir_get(app, &format!("Patient/{}", f.p2), t["access_token"].as_str()).await.0);
    }
    assert_eq!(statuses, vec![200, 503, 200, 503]);

    // The user denies Observation (under a wildcard grant): every other type stays readable.
    let t = ehr_tokens(&f, json!({"patient": f.p2, "faults": {"deny": ["Observation"]}}), scope).await;
    let granted = t["scope"].as_str().unwrap();
    assert!(!granted.contains("Observation") && granted.contains("patient/Condition.rs"), "{granted}");
    assert_eq!(fhir_get(app, &format!("Observation?patient={}", f.p2), t["access_token"].as_str()).await.0, 403);
    assert_eq!(fhir_get(app, &format!("Condition?patient={}", f.p2), t["access_token"].as_str()).await.0, 200);

    // No encounter context, although the EHR chose one.
    let enc = app
        .app_state
        .store
        .search(
            &fhir::query::parse("Encounter", &[("patient".into(), f.p2.clone())], fhir::query::ParseOptions { lenient: false, base: None, now_ms: 0 }).unwrap(),
        )
        .await
        .unwrap();
    let encounter = app.app_state.store.fetch(&enc[..1]).await.unwrap().remove(0).id;
    let t = ehr_tokens(&f, json!({"patient": f.p2, "encounter": encounter, "faults": {"no_encounter": true}}), scope).await;
    assert!(t.get("encounter").is_none());

    // The launch's steps are in the audit trail under its id, for the inspector, without token values.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let steps = app
        .app_state
        .store
        .audit_events(&store::audit::AuditFilter { launch: t["launch_id"].as_str().map(str::to_string), limit: 100, ..Default::default() })
        .await
        .unwrap();
    let actions: Vec<&str> = steps.iter().rev().map(|(_, r)| r.action.as_str()).collect();
    for a in ["launch", "authorize-request", "code", "token"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let all = format!("{steps:?}");
    assert!(!all.contains(t["access_token"].as_str().unwrap()) && !all.contains(t["refresh_token"].as_str().unwrap()));
}

/// Expired auth records are deleted (both backends): only those expired before the cut, a slice at a time;
/// live ones and records without expiry stay.
#[tokio::test]
async fn expired_auth_records_are_purged() {
    let app = spawn_secured_app().await;
    let store = app.app_state.store.clone();
    let now = fhir::time::unix_ms(fhir::time::Clock::now(&*app.clock));
    for i in 0..3 {
        store.auth_put("purge-test", &format!("old{i}"), "{}", None, Some(now - 1)).await.unwrap();
    }
    store.auth_put("purge-test", "live", "{}", None, Some(now + 60_000)).await.unwrap();
    store.auth_put("purge-test", "forever", "{}", None, None).await.unwrap();
    assert_eq!(store.auth_purge_expired(now, 2).await.unwrap(), 2, "one slice");
    assert!(store.auth_purge_expired(now, 1_000).await.unwrap() >= 1, "the rest");
    assert_eq!(store.auth_purge_expired(now, 1_000).await.unwrap(), 0);
    assert!(store.auth_get("purge-test", "live").await.unwrap().is_some());
    assert!(store.auth_get("purge-test", "forever").await.unwrap().is_some());
}

/// Clinical notes as an app reads them: a patient token follows its DocumentReference's `attachment.url`
/// to the Binary, gets FHIR JSON by default and the document's own bytes and type when it asks for them,
/// and reaches no other patient's document either way.
#[tokio::test]
async fn notes_resolve_to_their_documents_within_the_patients_record() {
    use base64::Engine as _;
    let f = fixture().await;
    let app = &f.app;
    let t = patient_tokens(&f, "launch/patient patient/*.rs").await;
    let token = t["access_token"].as_str().unwrap();
    let (status, docs) = fhir_get(app, &format!("DocumentReference?patient={}", f.p1), Some(token)).await;
    assert_eq!(status, 200);
    let attachment = docs["entry"][0]["resource"]["content"][0]["attachment"].clone();
    let url = attachment["url"].as_str().unwrap();
    assert!(url.starts_with("Binary/"), "{attachment}");
    let (status, binary) = fhir_get(app, url, Some(token)).await;
    assert_eq!(status, 200, "{binary}");
    assert_eq!(binary["resourceType"], "Binary");
    let content_type = attachment["contentType"].as_str().unwrap();
    let r = app.client.get(app.url(url)).bearer_auth(token).header("accept", content_type).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], content_type);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["vary"], "Accept", "one URL, two forms: caches key on Accept");
    assert!(r.headers()["content-security-policy"].to_str().unwrap().contains("sandbox"));
    let bytes = r.bytes().await.unwrap();
    assert_eq!(bytes.as_ref(), base64::engine::general_purpose::STANDARD.decode(binary["data"].as_str().unwrap()).unwrap());
    assert_eq!(bytes.len() as u64, attachment["size"].as_u64().unwrap());
    // Another type than the document's: a 406 that says which it is.
    let r = app.client.get(app.url(url)).bearer_auth(token).header("accept", "image/png").send().await.unwrap();
    assert_eq!(r.status(), 406);
    assert!(r.text().await.unwrap().contains(content_type));
    // The other patient's discharge summary (a PDF): refused as JSON and as bytes, and not searchable.
    let theirs = ehr::chart::search(app.app_state.store.as_ref(), "DocumentReference", &[("patient", f.p2.as_str())], 100).await.unwrap();
    let pdf = theirs.iter().map(|(_, d)| d["content"][0]["attachment"].clone()).find(|a| a["contentType"] == "application/pdf").expect("a discharge summary");
    let other = pdf["url"].as_str().unwrap();
    assert_eq!(fhir_get(app, other, Some(token)).await.0, 403);
    let r = app.client.get(app.url(other)).bearer_auth(token).header("accept", "application/pdf").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers()["content-type"].to_str().unwrap().contains("json"), "the refusal is an OperationOutcome");
    let (status, found) = fhir_get(app, &format!("Binary?_id={}", other.trim_start_matches("Binary/")), Some(token)).await;
    assert_eq!(status, 200);
    assert_eq!(found["total"], 0);
    // Without a token, nothing.
    let r = app.client.get(app.url(other)).header("accept", "application/pdf").send().await.unwrap();
    assert_eq!(r.status(), 401);
}

/// "You can withdraw it at any time", kept: the patient's Connected apps page lists what each app may do,
/// and Withdraw stops its tokens at once (refresh included) and forgets the consent, so the next launch asks
/// again. Nobody else sees or withdraws another user's apps. Discovery and the CapabilityStatement name the
/// page as the management endpoint.
#[tokio::test]
async fn connected_apps_are_listed_and_withdrawn() {
    let f = fixture().await;
    let app = &f.app;
    let t = patient_tokens(&f, "launch/patient openid fhirUser offline_access patient/*.rs").await;
    let token = t["access_token"].as_str().unwrap();
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p1), Some(token)).await.0, 200);

    let portal = Browser::new();
    assert_eq!(portal.post_form(&format!("{}/portal/login", root(app)), &[("username", "pat"), ("password", "pat-pass")]).await.status(), 303);
    let html = portal.get(format!("{}/ehr/connected", root(app))).await.text().await.unwrap();
    assert!(html.contains(&format!("App {PUBLIC}")), "{html}");
    assert!(html.contains("Keep access when you are not signed in") && html.contains("Has access now"), "{html}");
    // The clinician has authorised nothing, and cannot withdraw the patient's app.
    let doc = Browser::new();
    assert_eq!(doc.post_form(&format!("{}/ehr/login", root(app)), &[("username", "doc"), ("password", "doc-pass")]).await.status(), 303);
    let doc_page = doc.get(format!("{}/ehr/connected", root(app))).await.text().await.unwrap();
    assert!(doc_page.contains("You have not allowed any app yet"), "{doc_page}");
    let doc_csrf = inputs(&doc_page, "csrf").remove(0);
    let r = doc.post_form(&format!("{}/ehr/connected/{PUBLIC}/withdraw", root(app)), &[("csrf", &doc_csrf)]).await;
    assert_eq!(r.status(), 303);
    app.clock.advance(time::Duration::milliseconds(1001));
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p1), Some(token)).await.0, 200, "doc's withdraw touched only doc's grants");

    // Without the page's CSRF token: refused.
    assert_eq!(portal.post_form(&format!("{}/ehr/connected/{PUBLIC}/withdraw", root(app)), &[]).await.status(), 403);
    let csrf = inputs(&html, "csrf").remove(0);
    let r = portal.post_form(&format!("{}/ehr/connected/{PUBLIC}/withdraw", root(app)), &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), 303);
    let after = portal.get(format!("{}{}", root(app), r.headers()["location"].to_str().unwrap())).await.text().await.unwrap();
    assert!(after.contains(&format!("Access withdrawn for {PUBLIC}")) && after.contains("You have not allowed any app yet"), "{after}");
    app.clock.advance(time::Duration::milliseconds(1001));
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p1), Some(token)).await.0, 401, "the access token stopped working");
    let r = refresh(app, t["refresh_token"].as_str().unwrap()).await;
    assert_eq!(r.status(), 400, "the refresh token too");
    // The next authorisation asks for consent again.
    let a = Auth::new(app, PUBLIC, "launch/patient openid fhirUser offline_access patient/*.rs");
    let page = login(app, &a.browser, a.start(app).await, "pat", "pat-pass").await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("would like to"), "consent is asked again");

    let smart: Value = app.client.get(app.url(".well-known/smart-configuration")).send().await.unwrap().json().await.unwrap();
    assert_eq!(smart["management_endpoint"], format!("{}/ehr/connected", root(app)));
    let cs: Value = app.client.get(app.url("metadata")).send().await.unwrap().json().await.unwrap();
    let uris = cs["rest"][0]["security"]["extension"][0]["extension"].as_array().unwrap();
    assert!(uris.iter().any(|u| u["url"] == "manage" && u["valueUri"] == smart["management_endpoint"]));
}

/// `kindling token`: a developer's token for curl, only on a sandbox database, and only what the user could
/// be granted through the app in the browser flow.
#[tokio::test]
async fn sandbox_tokens_for_curl_grant_no_more_than_the_flow() {
    let f = fixture().await;
    let app = &f.app;
    let err = kindling::sandbox_token(&app.auth, PUBLIC, "doc", None, "user/*.rs").await.unwrap_err().to_string();
    assert!(err.contains("not made by `kindling up`"), "{err}");
    kindling::mark_sandbox(&app.auth).await.unwrap();
    let t = kindling::sandbox_token(&app.auth, PUBLIC, "doc", None, "openid fhirUser user/*.rs").await.unwrap();
    let token = t["access_token"].as_str().unwrap();
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p2), Some(token)).await.0, 200);
    assert!(t["id_token"].is_string());
    // A patient user: their own record, whatever is asked, and never user/ access.
    let t = kindling::sandbox_token(&app.auth, PUBLIC, "pat", None, "patient/*.rs user/*.rs").await.unwrap();
    assert_eq!(t["patient"], f.p1);
    assert_eq!(t["scope"], "patient/*.rs");
    let token = t["access_token"].as_str().unwrap();
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p1), Some(token)).await.0, 200);
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p2), Some(token)).await.0, 403);
    for (user, patient, scope, says) in [
        ("pat", Some(f.p2.as_str()), "patient/*.rs", "their own record"),
        ("doc", None, "patient/*.rs", "need a patient"),
        ("doc", Some("no-such-patient"), "patient/*.rs", "no Patient/no-such-patient"),
        ("nobody", None, "user/*.rs", "no user"),
        ("doc", None, "system/*.rs", "may not be granted"),
    ] {
        let err = kindling::sandbox_token(&app.auth, PUBLIC, user, patient, scope).await.unwrap_err().to_string();
        assert!(err.contains(says), "{user} {scope}: {err}");
    }
    let err = kindling::sandbox_token(&app.auth, "no-such-app", "doc", None, "user/*.rs").await.unwrap_err().to_string();
    assert!(err.contains("no app"), "{err}");
}
