//! The client SDK (`client` crate) against a running Kindling: every launch type and client
//! authentication, the callback's checks, context parsing, refresh paths, scope checks, paging, retries on
//! injected 429/503, backend services, and vendor profiles.

use crate::{TestApp, spawn_secured_app};
use auth::model::{Client, ClientKind, UserRole};
use client::{ClientAuth, EhrConfig, Error, Interaction, MemoryPendingStore, SigningKey, SmartClient};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

const REDIRECT: &str = "https://app.example/callback";
const SCOPE: &str = "launch/patient openid fhirUser offline_access patient/*.rs";
const EHR_SCOPE: &str = "launch openid fhirUser offline_access patient/*.rs";

struct Fix {
    app: TestApp,
    p: String,
}

async fn fix() -> Fix {
    let app = spawn_secured_app().await;
    kindling::seed(&app.app_state, 2, 5).await.unwrap();
    let store = app.auth.store.as_ref();
    auth::registry::put_user(store, "doc", "Dr Doc", UserRole::Clinician, "doc-pass", &format!("Practitioner/{}", synth::practitioner_id(0))).await.unwrap();
    let p = synth::patient_id(5, 1);
    auth::registry::put_user(store, "pat", "Pat", UserRole::Patient, "pat-pass", &format!("Patient/{p}")).await.unwrap();
    Fix { app, p }
}

async fn register(app: &TestApp, id: &str, kind: ClientKind, jwks: Option<Value>) -> Option<String> {
    let c = Client {
        client_id: id.into(),
        name: id.into(),
        kind,
        secret_hash: None,
        redirect_uris: vec![REDIRECT.into()],
        launch_url: None,
        allowed_scope: "launch launch/patient openid fhirUser offline_access patient/*.rs system/*.rs".into(),
        jwks,
        jwks_url: None,
        icon: None,
        disabled: false,
        profile: None,
        self_registered: false,
    };
    auth::registry::put_client(app.auth.store.as_ref(), c).await.unwrap()
}

/// An SDK client configured for the server's FHIR base and each vendor profile's own.
fn smart(app: &TestApp, client_id: &str, auth: ClientAuth) -> SmartClient {
    smart_with_scope(app, client_id, auth, EHR_SCOPE)
}

/// [`smart`], asking `ehr_scope` at EHR launches.
fn smart_with_scope(app: &TestApp, client_id: &str, auth: ClientAuth, ehr_scope: &str) -> SmartClient {
    let ehrs = app
        .auth
        .config
        .fhir_bases()
        .into_iter()
        .map(|iss| EhrConfig {
            iss,
            client_id: client_id.into(),
            auth: auth.clone(),
            redirect_uri: REDIRECT.into(),
            ehr_scope: ehr_scope.into(),
            standalone_scope: SCOPE.into(),
        })
        .collect();
    SmartClient::new(ehrs, Arc::new(MemoryPendingStore::new())).unwrap()
}

/// The `iss` of launches under `profile` (its own FHIR base, or the server's).
fn base_of(app: &TestApp, profile: &str) -> String {
    app.auth.config.fhir_base_for(&auth::model::Profile::named(profile))
}

fn root(app: &TestApp) -> String {
    app.base.trim_end_matches("/fhir").to_string()
}

fn hidden(html: &str, name: &str) -> String {
    let key = format!("name=\"{name}\" value=\"");
    let start = html.find(&key).unwrap_or_else(|| panic!("no {name} in {html}")) + key.len();
    html[start..start + html[start..].find('"').unwrap()].to_string()
}

async fn post(app: &TestApp, b: &crate::Browser, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
    b.post_form(&format!("{}{path}", root(app)), form).await
}

/// Plays the person at the browser: signs in, allows (or denies) at consent; returns the callback's query.
async fn browser(app: &TestApp, request: &client::AuthorizationRequest, user: &str, password: &str, allow: bool) -> HashMap<String, String> {
    let b = crate::Browser::new();
    let mut r = match request {
        client::AuthorizationRequest::Redirect { url, .. } => b.get(url).await,
        client::AuthorizationRequest::Post { url, fields, .. } => {
            let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields.iter()).finish();
            let r = app.client.post(url).header("content-type", "application/x-www-form-urlencoded").body(body).send().await.unwrap();
            b.keep(&r);
            r
        }
    };
    if r.status() == 200 {
        let html = r.text().await.unwrap();
        assert!(html.contains("Sign in"), "{html}");
        r = post(app, &b, "/auth/login", &[("request", &hidden(&html, "request")), ("username", user), ("password", password)]).await;
    }
    if r.status() == 200 {
        let html = r.text().await.unwrap();
        assert!(html.contains("would like to"), "{html}");
        let mut form = vec![("request".to_string(), hidden(&html, "request")), ("decision".into(), if allow { "allow" } else { "deny" }.into())];
        for s in html.split("name=\"scope\" value=\"").skip(1) {
            form.push(("scope".into(), s[..s.find('"').unwrap()].replace("&#x2f;", "/").replace("&#47;", "/")));
        }
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        r = post(app, &b, "/auth/consent", &pairs).await;
    }
    assert_eq!(r.status(), 303);
    let loc = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert!(loc.as_str().starts_with(REDIRECT));
    loc.query_pairs().into_owned().collect()
}

async fn ehr_handle(app: &TestApp, ctx: Value) -> String {
    let r = app.client.post(format!("{}/auth/launch", root(app))).basic_auth("doc", Some("doc-pass")).json(&ctx).send().await.unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["launch"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn ehr_launch_context_fhir_access_and_scope_checks() {
    let f = fix().await;
    let app = &f.app;
    register(app, "pub", ClientKind::Public, None).await;
    let s = smart(app, "pub", ClientAuth::Public);
    let enc = app
        .app_state
        .store
        .search(
            &fhir::query::parse("Encounter", &[("patient".into(), f.p.clone())], fhir::query::ParseOptions { lenient: false, base: None, now_ms: 0 }).unwrap(),
        )
        .await
        .unwrap();
    let encounter = app.app_state.store.fetch(&enc[..1]).await.unwrap().remove(0).id;
    let handle =
        ehr_handle(app, json!({"patient": f.p, "encounter": encounter, "tenant": "t-1", "fhirContext": [{"reference": format!("Encounter/{encounter}")}]}))
            .await;
    let req = s.ehr_launch(&app.base, &handle).await.unwrap();
    let client::AuthorizationRequest::Redirect { url, state } = &req else { panic!() };
    assert!(state.len() >= 32, "≥ 128 bits of state");
    let q: HashMap<String, String> = url::Url::parse(url).unwrap().query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["aud"], app.base);
    assert_eq!(q["launch"], handle);
    assert!(q.contains_key("nonce"));
    let params = browser(app, &req, "doc", "doc-pass", true).await;
    let session = s.callback(&params).await.unwrap();
    let ctx = session.context();
    assert_eq!(ctx.patient.as_deref(), Some(f.p.as_str()));
    assert_eq!(ctx.encounter.as_deref(), Some(encounter.as_str()));
    assert_eq!(ctx.fhir_user.as_deref(), Some(format!("Practitioner/{}", synth::practitioner_id(0)).as_str()), "absolute fhirUser made relative");
    assert_eq!(ctx.tenant.as_deref(), Some("t-1"));
    assert_eq!(ctx.fhir_context.len(), 1);
    assert!(session.id_claims().is_some(), "id_token verified");
    assert!(ctx.granted.allows("Observation", Interaction::Search));
    assert!(ctx.granted.allows_search_with("Observation", "category", "vital-signs"));
    assert!(!ctx.granted.allows("Observation", Interaction::Create));
    assert!(!format!("{session:?}").contains(&params["code"]));
    // The same callback again: the state was used.
    assert!(matches!(s.callback(&params).await, Err(Error::UnknownState)));

    // Typed reads, searches, paging.
    let fhir = session.fhir();
    let patient: client::types::Patient = fhir.read("Patient", &f.p).await.unwrap();
    assert!(!patient.display_name().is_empty());
    let pages = fhir.search_all("Observation", &[("patient", &f.p), ("category", "vital-signs"), ("_count", "5")], 3).await.unwrap();
    assert_eq!(pages.len(), 3, "followed next links");
    let obs: Vec<client::types::Observation> = pages[1].matches("Observation");
    assert_eq!(obs.len(), 5);
    // _include resolution.
    let b = fhir.search("Encounter", &[("_id", &encounter), ("_include", "Encounter:subject")]).await.unwrap();
    let subject = b.matches::<client::types::Encounter>("Encounter")[0].subject.clone().unwrap().reference.unwrap();
    assert_eq!(b.resolve(&subject).unwrap()["id"], json!(f.p));
    // Never outside the FHIR base.
    assert!(matches!(fhir.get("https://evil.example/fhir/Patient").await, Err(Error::OutsideBase { .. })));
    assert!(matches!(fhir.get(&format!("{}-evil/Patient", app.base)).await, Err(Error::OutsideBase { .. })));
    // Not granted → typed 403.
    let e = fhir
        .create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{}", f.p)}}))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Fhir { status: 403, .. }), "{e}");
    assert_eq!(e.user_message(), "This app was not given access to this part of the record.");
    session.revoke().await.unwrap();
    assert!(fhir.read::<Value>("Patient", &f.p).await.is_err(), "revoked at sign-out");
}

#[tokio::test]
async fn unknown_issuers_state_iss_and_denials_are_refused() {
    let f = fix().await;
    let app = &f.app;
    register(app, "pub", ClientKind::Public, None).await;
    let s = smart(app, "pub", ClientAuth::Public);
    let e = s.ehr_launch("https://evil.example/fhir", "x").await.unwrap_err();
    assert!(matches!(e, Error::UnknownIssuer { .. }));
    assert!(!e.needs_relaunch() && e.user_message().contains("does not know"));
    assert!(matches!(s.callback(&HashMap::from([("state".to_string(), "forged".to_string()), ("code".into(), "c".into())])).await, Err(Error::UnknownState)));
    // A callback whose iss is another server's (mix-up).
    let req = s.standalone_launch(&app.base).await.unwrap();
    let mut params = browser(app, &req, "pat", "pat-pass", true).await;
    params.insert("iss".into(), "https://other.example/fhir".into());
    assert!(matches!(s.callback(&params).await, Err(Error::IssuerMismatch { .. })));
    // ... or has none, from a server that says it always sends one (RFC 9207: a mix-up strips it).
    let req = s.standalone_launch(&app.base).await.unwrap();
    let mut params = browser(app, &req, "pat", "pat-pass", true).await;
    assert!(params.remove("iss").is_some());
    assert!(matches!(s.callback(&params).await, Err(Error::IssuerMismatch { .. })));
    // The user denies (another app, so no earlier consent stands).
    register(app, "pub-deny", ClientKind::Public, None).await;
    let s = smart(app, "pub-deny", ClientAuth::Public);
    let req = s.standalone_launch(&app.base).await.unwrap();
    let b = crate::Browser::new();
    let mut r = b
        .get(match &req {
            client::AuthorizationRequest::Redirect { url, .. } => url.clone(),
            _ => unreachable!(),
        })
        .await;
    let html = r.text().await.unwrap();
    r = post(app, &b, "/auth/login", &[("request", &hidden(&html, "request")), ("username", "pat"), ("password", "pat-pass")]).await;
    let html = r.text().await.unwrap();
    let r = post(app, &b, "/auth/consent", &[("request", &hidden(&html, "request")), ("decision", "deny")]).await;
    let params: HashMap<String, String> = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap().query_pairs().into_owned().collect();
    let e = s.callback(&params).await.unwrap_err();
    assert!(matches!(e, Error::AccessDenied { .. }) && e.needs_relaunch());
    // An expired launch.
    let handle = ehr_handle(app, json!({"patient": f.p, "faults": {"expired_launch": true}})).await;
    let req = s.ehr_launch(&app.base, &handle).await.unwrap();
    let r = app
        .client
        .get(match &req {
            client::AuthorizationRequest::Redirect { url, .. } => url.clone(),
            _ => unreachable!(),
        })
        .send()
        .await
        .unwrap();
    let params: HashMap<String, String> = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap().query_pairs().into_owned().collect();
    let e = s.callback(&params).await.unwrap_err();
    assert!(matches!(e, Error::LaunchExpired { .. }), "{e}");
    assert_eq!(e.user_message(), "This launch has expired. Relaunch the app from the patient's chart.");
}

#[tokio::test]
async fn every_client_authentication_and_refresh_path() {
    let f = fix().await;
    let app = &f.app;
    // client_secret_basic and client_secret_post.
    let secret = register(app, "sym", ClientKind::ConfidentialSymmetric, None).await.unwrap();
    for auth in [ClientAuth::SecretBasic(client::Secret::new(&secret)), ClientAuth::SecretPost(client::Secret::new(&secret))] {
        let s = smart(app, "sym", auth);
        let req = s.standalone_launch(&app.base).await.unwrap();
        let session = s.callback(&browser(app, &req, "pat", "pat-pass", true).await).await.unwrap();
        assert_eq!(session.context().patient.as_deref(), Some(f.p.as_str()));
        session.refresh().await.unwrap();
    }
    let wrong = smart(app, "sym", ClientAuth::SecretBasic(client::Secret::new("wrong")));
    let req = wrong.standalone_launch(&app.base).await.unwrap();
    let e = wrong.callback(&browser(app, &req, "pat", "pat-pass", true).await).await.unwrap_err();
    assert!(matches!(e, Error::OAuth { ref code, .. } if code == "invalid_client"), "{e}");

    // private_key_jwt (ES384 and RS384): code exchange and refresh each sign a fresh assertion.
    for key in [SigningKey::generate_es384("k-ec"), SigningKey::generate_rs384("k-rsa")] {
        let id = format!("asym-{}", key.alg());
        register(app, &id, ClientKind::ConfidentialAsymmetric, Some(json!({"keys": [key.public_jwk()]}))).await;
        let s = smart(app, &id, ClientAuth::PrivateKeyJwt(Arc::new(key)));
        let req = s.standalone_launch(&app.base).await.unwrap();
        let session = s.callback(&browser(app, &req, "pat", "pat-pass", true).await).await.unwrap();
        session.refresh().await.unwrap();
        session.refresh().await.unwrap();
        assert!(session.fhir().read::<Value>("Patient", &f.p).await.is_ok());
    }

    // 401 → one refresh → the call succeeds.
    register(app, "pub", ClientKind::Public, None).await;
    let s = smart(app, "pub", ClientAuth::Public);
    let req = s.standalone_launch(&app.base).await.unwrap();
    let session = s.callback(&browser(app, &req, "pat", "pat-pass", true).await).await.unwrap();
    app.clock.advance(time::Duration::seconds(3700));
    assert!(session.fhir().read::<Value>("Patient", &f.p).await.is_ok(), "renewed after the server's 401");

    // Refresh fails (injected): a typed error that asks for a relaunch.
    let handle = ehr_handle(app, json!({"patient": f.p, "faults": {"refresh_fails": true}})).await;
    let req = s.ehr_launch(&app.base, &handle).await.unwrap();
    let session = s.callback(&browser(app, &req, "doc", "doc-pass", true).await).await.unwrap();
    let e = session.refresh().await.unwrap_err();
    assert!(matches!(e, Error::RefreshFailed { .. }) && e.needs_relaunch());
    // Tokens revoked by the server: FHIR calls end the session with a typed error.
    let handle = ehr_handle(app, json!({"patient": f.p, "faults": {"revoke_after_secs": 5}})).await;
    let req = s.ehr_launch(&app.base, &handle).await.unwrap();
    let session = s.callback(&browser(app, &req, "doc", "doc-pass", true).await).await.unwrap();
    app.clock.advance(time::Duration::seconds(6));
    let e = session.fhir().read::<Value>("Patient", &f.p).await.unwrap_err();
    assert!(matches!(e, Error::SessionEnded { .. }), "{e}");
    assert!(e.user_message().contains("Relaunch"));
}

#[tokio::test]
async fn retries_on_injected_429_and_503_and_vendor_profiles() {
    let f = fix().await;
    let app = &f.app;
    register(app, "pub", ClientKind::Public, None).await;
    let s = smart(app, "pub", ClientAuth::Public);
    let launch = |faults: Value, profile: &str| ehr_handle(app, json!({"patient": f.p, "faults": faults, "profile": profile}));
    // Every second request fails with 503: retried (Retry-After honoured, capped here) and succeeds.
    let req = s.ehr_launch(&app.base, &launch(json!({"fhir_error_status": 503, "fhir_error_rate": 0.5}), "strict").await).await.unwrap();
    let session = s.callback(&browser(app, &req, "doc", "doc-pass", true).await).await.unwrap();
    let mut fhir = session.fhir();
    fhir.max_wait = std::time::Duration::from_millis(20);
    for _ in 0..3 {
        assert!(fhir.read::<Value>("Patient", &f.p).await.is_ok());
    }
    // Always 429: gives up after three attempts with a typed error.
    let req = s.ehr_launch(&app.base, &launch(json!({"fhir_error_status": 429, "fhir_error_rate": 1.0}), "strict").await).await.unwrap();
    let session = s.callback(&browser(app, &req, "doc", "doc-pass", true).await).await.unwrap();
    let mut fhir = session.fhir();
    fhir.max_wait = std::time::Duration::from_millis(20);
    let e = fhir.read::<Value>("Patient", &f.p).await.unwrap_err();
    assert!(matches!(e, Error::Busy { status: 429, attempts: 3 }), "{e}");

    // Epic-style: string boolean, vendor fields, no refresh rotation — the old refresh token is kept.
    let req = s.ehr_launch(&base_of(app, "epic"), &launch(json!({}), "epic").await).await.unwrap();
    let session = s.callback(&browser(app, &req, "doc", "doc-pass", true).await).await.unwrap();
    assert!(!session.context().need_patient_banner, "\"false\" read as false");
    assert!(session.context().extra.contains_key("__epic.dstu2.patient"));
    assert!(session.context().granted.allows("Observation", Interaction::Read), "expanded v1 grant understood");
    session.refresh().await.unwrap();
    session.refresh().await.unwrap();
    // NextGen-style: practice identifiers; Oracle-style: 570 s tokens and no wildcard.
    let req = s.ehr_launch(&base_of(app, "nextgen"), &launch(json!({}), "nextgen").await).await.unwrap();
    let session = s.callback(&browser(app, &req, "doc", "doc-pass", true).await).await.unwrap();
    assert!(session.context().extra.contains_key("practice_id"));
    session.refresh().await.unwrap();
    let req = s.ehr_launch(&base_of(app, "oracle"), &launch(json!({}), "oracle").await).await.unwrap();
    let session = s.callback(&browser(app, &req, "doc", "doc-pass", true).await).await.unwrap();
    assert!(session.expires_in().await.unwrap() <= 570);
    assert!(!session.context().granted.allows("Observation", Interaction::Read), "the wildcard was dropped");
}

/// The SDK on every vendor profile the server offers: launch, context, a read, a search, two refreshes.
#[tokio::test]
async fn the_sdk_works_under_every_vendor_profile() {
    let f = fix().await;
    let app = &f.app;
    register(app, "pub", ClientKind::Public, None).await;
    // Named types as well as the wildcard: a profile that drops wildcards (Oracle) still grants these.
    let s = smart_with_scope(app, "pub", ClientAuth::Public, &format!("{EHR_SCOPE} patient/Patient.rs patient/Observation.rs"));
    let profiles: Vec<String> = app.auth.config.profiles.all().iter().map(|p| p.name.clone()).collect();
    for profile in profiles {
        let handle = ehr_handle(app, json!({"patient": f.p, "profile": profile, "need_patient_banner": true})).await;
        let req = s.ehr_launch(&base_of(app, &profile), &handle).await.unwrap();
        let session = s.callback(&browser(app, &req, "doc", "doc-pass", true).await).await.unwrap_or_else(|e| panic!("{profile}: {e}"));
        let ctx = session.context();
        assert_eq!(ctx.patient.as_deref(), Some(f.p.as_str()), "{profile}");
        assert!(ctx.need_patient_banner, "{profile}: the banner flag is read whatever its type");
        assert!(session.expires_in().await.unwrap() > 0, "{profile}");
        let fhir = session.fhir();
        let patient = fhir.read::<Value>("Patient", &f.p).await;
        assert!(
            ctx.granted.allows("Patient", Interaction::Read) && ctx.granted.allows("Observation", Interaction::Search),
            "{profile}: {}",
            ctx.granted.as_str()
        );
        assert_eq!(patient.unwrap_or_else(|e| panic!("{profile}: {e}"))["id"], f.p.as_str(), "{profile}");
        fhir.search("Observation", &[("patient", f.p.as_str())]).await.unwrap_or_else(|e| panic!("{profile}: {e}"));
        session.refresh().await.unwrap_or_else(|e| panic!("{profile}: {e}"));
        app.clock.advance(time::Duration::seconds(61));
        session.refresh().await.unwrap_or_else(|e| panic!("{profile}: second refresh: {e}"));
        assert!(fhir.read::<Value>("Patient", &f.p).await.is_ok(), "{profile}: after refreshes");
    }
}

#[tokio::test]
async fn backend_services_client() {
    let f = fix().await;
    let app = &f.app;
    let key = SigningKey::generate_es384("backend-1");
    register(app, "backend", ClientKind::ConfidentialAsymmetric, Some(json!({"keys": [key.public_jwk()]}))).await;
    let backend = client::BackendClient::new(&app.base, "backend", Arc::new(key), "system/*.rs").unwrap();
    let fhir = backend.fhir();
    let b = fhir.search("Patient", &[]).await.unwrap();
    assert_eq!(b.total, Some(2));
    let t1 = client::TokenSource::token(backend.as_ref()).await.unwrap();
    let t2 = client::TokenSource::token(backend.as_ref()).await.unwrap();
    assert_eq!(t1, t2, "cached until it nears expiry");
    let wrong = client::BackendClient::new(&app.base, "backend", Arc::new(SigningKey::generate_es384("backend-1")), "system/*.rs").unwrap();
    let e = wrong.fhir().search("Patient", &[]).await.unwrap_err();
    assert!(matches!(e, Error::OAuth { ref code, .. } if code == "invalid_client"), "{e}");
}

#[tokio::test]
async fn post_authorisation_and_sessions_restored_elsewhere() {
    let f = fix().await;
    let app = &f.app;
    register(app, "pub", ClientKind::Public, None).await;
    let s = smart(app, "pub", ClientAuth::Public).with_post_threshold(0);
    let req = s.standalone_launch(&app.base).await.unwrap();
    assert!(matches!(req, client::AuthorizationRequest::Post { .. }), "authorize-post is advertised");
    let session = s.callback(&browser(app, &req, "pat", "pat-pass", true).await).await.unwrap();
    // Saved by one node of the app and restored by another (a new SmartClient): same context, working tokens.
    let stored = session.to_stored().await;
    let text = serde_json::to_string(&stored).unwrap();
    assert!(!text.contains("\"id_token\""), "the id_token itself is not kept");
    let other = smart(app, "pub", ClientAuth::Public);
    let restored = other.restore(serde_json::from_str(&text).unwrap()).unwrap();
    assert_eq!(restored.context().patient, session.context().patient);
    assert_eq!(restored.context().granted.as_str(), session.context().granted.as_str());
    assert!(restored.fhir().read::<Value>("Patient", &f.p).await.is_ok());
    restored.refresh().await.unwrap();
    assert!(restored.fhir().read::<Value>("Patient", &f.p).await.is_ok());
    assert!(format!("{stored:?}").contains("***") && !format!("{stored:?}").contains(stored.access_token.expose()));
}
