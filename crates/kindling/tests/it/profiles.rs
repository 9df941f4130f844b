//! Vendor profiles as data (`config/profiles/*.toml`, `--profiles DIR`): the rules beyond the token
//! response that `smart_flows::vendor_profiles_reproduce_their_ehrs` checks — what the authorisation
//! endpoint refuses, refresh throttling, a read-only FHIR API with vendor parameters, a request budget —
//! and a profile of the user's own.

use crate::ehr_pages::{csrf, form, page, sign_in};
use crate::smart_flows::{ALL, Auth, Fixture, PUBLIC, ehr_tokens, fhir_get, fhir_get_at, fixture, fixture_with, location, query, refresh, root};
use crate::{TestApp, spawn_secured_with_profiles, test_client};
use auth::model::{Client, ClientKind, Profile};
use serde_json::{Value, json};

/// The FHIR base of the server `profile` reproduces (its `iss` and the `aud` its apps ask for).
fn vendor_base(app: &TestApp, profile: &str) -> String {
    app.auth.config.fhir_base_for(&Profile::named(profile))
}

/// Registers a public app that meets `profile` by default.
async fn app_with_profile(app: &TestApp, client_id: &str, profile: &str) {
    let client = Client { profile: Some(Profile::named(profile)), ..test_client(client_id, ClientKind::Public, ALL) };
    auth::registry::put_client(app.auth.store.as_ref(), client).await.unwrap();
}

#[tokio::test]
async fn the_authorisation_endpoint_refuses_what_the_vendor_refuses() {
    let f = fixture().await;
    let app = &f.app;
    // Oracle: a clinician's app (user/ scopes) without an EHR launch gets Oracle's URN, not a description.
    app_with_profile(app, "oracle-app", "oracle").await;
    let mut a = Auth::new(app, "oracle-app", "openid fhirUser user/Patient.rs");
    a.aud = vendor_base(app, "oracle");
    let q = query(&location(&a.start(app).await));
    assert_eq!(q.get("error").map(String::as_str), Some("invalid_request"));
    assert_eq!(q.get("error_uri").map(String::as_str), Some("urn:cerner:error:authorization-server:smart-v1:grant:launch:code-required"));
    assert!(!q.contains_key("error_description"));
    assert!(q.contains_key("state") && q.contains_key("iss"));
    // A patient's standalone launch is fine there (the sign-in page).
    let mut a = Auth::new(app, "oracle-app", "openid fhirUser launch/patient patient/Patient.rs");
    a.aud = vendor_base(app, "oracle");
    assert_eq!(a.start(app).await.status(), 200);
    // The same clinician request under the strict profile is accepted (the sign-in page).
    let a = Auth::new(app, PUBLIC, "openid fhirUser user/Patient.rs");
    assert_eq!(a.start(app).await.status(), 200);

    // Epic: POST to the authorisation endpoint for EHR launches only.
    app_with_profile(app, "epic-app", "epic").await;
    let mut a = Auth::new(app, "epic-app", "openid fhirUser launch/patient patient/Patient.rs");
    a.aud = vendor_base(app, "epic");
    let posted = |a: &Auth<'_>| {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(a.params()).finish();
        app.client.post(format!("{}/auth/authorize", root(app))).header("content-type", "application/x-www-form-urlencoded").body(body).send()
    };
    let r = posted(&a).await.unwrap();
    let q = query(&location(&r));
    assert_eq!(q.get("error").map(String::as_str), Some("invalid_request"));
    assert!(q["error_description"].contains("POST"), "{q:?}");
    assert_eq!(a.start(app).await.status(), 200, "GET is accepted");
    let a = Auth::new(app, PUBLIC, "openid fhirUser launch/patient patient/Patient.rs");
    assert_eq!(posted(&a).await.unwrap().status(), 200, "strict accepts POST (authorize-post)");

    // The launch API refuses a profile nobody defined.
    let r = app
        .client
        .post(format!("{}/auth/launch", root(app)))
        .basic_auth("doc", Some("doc-pass"))
        .json(&json!({"patient": f.p2, "profile": "nosuch"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.unwrap()["error_description"].as_str().unwrap().contains("nosuch"));
}

#[tokio::test]
async fn oracle_throttles_refreshes_to_one_a_minute_and_epic_pads_its_scope() {
    let f = fixture().await;
    let app = &f.app;
    let t = ehr_tokens(&f, json!({"patient": f.p2, "profile": "oracle"}), "launch openid fhirUser offline_access patient/Condition.rs").await;
    assert_eq!((t["username"].as_str(), t["user"].as_str()), (Some("doc"), Some(synth::practitioner_id(0).as_str())), "Oracle's user fields");
    let rt = t["refresh_token"].as_str().unwrap();
    assert_eq!(refresh(app, rt).await.status(), 200);
    app.clock.advance(time::Duration::seconds(30));
    let r = refresh(app, rt).await;
    assert_eq!(r.status(), 429, "a second refresh within the minute");
    assert_eq!(r.headers()["retry-after"], "30", "the time left");
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "temporarily_unavailable");
    app.clock.advance(time::Duration::seconds(31));
    assert_eq!(refresh(app, rt).await.status(), 200, "and again after the minute");

    let t = ehr_tokens(&f, json!({"patient": f.p2, "profile": "epic"}), "launch openid fhirUser patient/Condition.rs").await;
    let scope = t["scope"].as_str().unwrap();
    assert_eq!(scope, "launch openid fhirUser patient/Condition.Read patient/Condition.read ", "v1 names, each twice in two cases, a trailing space");
}

#[tokio::test]
async fn nextgen_serves_read_and_search_only_and_takes_maxresults() {
    let f = fixture().await;
    let app = &f.app;
    let t = ehr_tokens(&f, json!({"patient": f.p2, "profile": "nextgen"}), "launch openid fhirUser patient/*.cruds").await;
    let token = t["access_token"].as_str().unwrap();
    // NextGen Enterprise's own FHIR base (its tokens work there only).
    let nge = vendor_base(app, "nextgen");
    let (status, bundle) = fhir_at(app, &nge, &format!("Observation?patient={}&_maxresults=2", f.p2), Some(token)).await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(bundle["entry"].as_array().map(Vec::len), Some(2), "_maxresults is taken as _count");
    // The other parameters are kept as they were: the same page as with _count, filters and all.
    let (_, counted) = fhir_at(app, &nge, &format!("Observation?patient={}&category=vital-signs&_count=3", f.p2), Some(token)).await;
    let (_, aliased) = fhir_at(app, &nge, &format!("Observation?patient={}&category=vital-signs&_maxresults=3", f.p2), Some(token)).await;
    let ids = |b: &Value| b["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(ids(&counted), ids(&aliased));
    assert_eq!(ids(&aliased).len(), 3);
    assert!(aliased["entry"].as_array().unwrap().iter().all(|e| e["resource"]["category"][0]["coding"][0]["code"] == "vital-signs"));
    let (_, both) = fhir_at(app, &nge, &format!("Observation?patient={}&_maxresults=2&_count=4", f.p2), Some(token)).await;
    assert_eq!(both["entry"].as_array().map(Vec::len), Some(4), "the standard parameter wins when both are given");
    let (status, _) = fhir_at(app, &nge, &format!("Patient/{}", f.p2), Some(token)).await;
    assert_eq!(status, 200);
    let (status, oo) = fhir_at(app, &nge, &format!("Patient/{}/_history", f.p2), Some(token)).await;
    assert_eq!(status, 405, "{oo}");
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{}", f.p2)}});
    let r = app
        .client
        .post(url_at(&nge, "Observation"))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(obs.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405, "the granted write scope does not make a read-only API writable");
    let (_, patient) = fhir_at(app, &nge, &format!("Patient/{}", f.p2), Some(token)).await;
    let send = |method: reqwest::Method, path: String, body: Option<Value>| {
        let mut req = app.client.request(method, url_at(&nge, &path)).bearer_auth(token).header("content-type", "application/fhir+json");
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        req.send()
    };
    let transaction =
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": obs, "request": {"method": "POST", "url": "Observation"}}]});
    for (method, path, body) in [
        (reqwest::Method::PUT, format!("Patient/{}", f.p2), Some(patient.clone())),
        (reqwest::Method::PATCH, format!("Patient/{}", f.p2), Some(json!([]))),
        (reqwest::Method::DELETE, format!("Patient/{}", f.p2), None),
        (reqwest::Method::POST, String::new(), Some(transaction)),
        (reqwest::Method::GET, format!("Patient/{}/_history/1", f.p2), None),
        (reqwest::Method::GET, format!("Patient/{}/$everything", f.p2), None),
        (reqwest::Method::GET, "Patient/$export".to_string(), None),
    ] {
        let r = send(method.clone(), path.clone(), body).await.unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
    }
    let r = app
        .client
        .post(url_at(&nge, "Observation/_search"))
        .bearer_auth(token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("patient={}", f.p2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "search by POST is a search");
    assert_eq!(fhir_at(app, &nge, &format!("Patient/{}", f.p2), Some(token)).await.1, patient, "nothing changed");
    // The same grant under the strict profile may write.
    let t = ehr_tokens(&f, json!({"patient": f.p2}), "launch openid fhirUser patient/*.cruds").await;
    let r = app
        .client
        .post(app.url("Observation"))
        .bearer_auth(t["access_token"].as_str().unwrap())
        .header("content-type", "application/fhir+json")
        .body(obs.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (status, _) = fhir_get(app, &format!("Observation?patient={}&_maxresults=2", f.p2), t["access_token"].as_str()).await;
    assert_eq!(status, 400, "only the NextGen profile knows _maxresults");
}

#[tokio::test]
async fn nextgen_office_allows_twenty_requests_a_minute_per_app() {
    let f = fixture().await;
    let app = &f.app;
    // Two launches of one app share the budget.
    let a = ehr_tokens(&f, json!({"patient": f.p2, "profile": "nextgen-office"}), "launch openid fhirUser patient/*.rs").await;
    let b = ehr_tokens(&f, json!({"patient": f.p2, "profile": "nextgen-office"}), "launch openid fhirUser patient/*.rs").await;
    let path = format!("Patient/{}", f.p2);
    let ngo = vendor_base(app, "nextgen-office");
    for i in 0..20 {
        let token = if i % 2 == 0 { &a } else { &b };
        assert_eq!(fhir_at(app, &ngo, &path, token["access_token"].as_str()).await.0, 200, "request {i}");
    }
    let r = app.client.get(url_at(&ngo, &path)).bearer_auth(a["access_token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(r.json::<Value>().await.unwrap()["issue"][0]["code"], "throttled");
    app.clock.advance(time::Duration::seconds(wait as i64));
    assert_eq!(fhir_at(app, &ngo, &path, b["access_token"].as_str()).await.0, 200, "a new minute, a new budget");
}

#[tokio::test]
async fn a_profile_of_ones_own_is_loaded_from_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("acme.toml"),
        r#"name = "acme"
label = "Acme EHR"
about = "What our integration partner's EHR does."

[tokens.access_token_secs]
value = 120
source = "unverified: seen in our test tenant"

[[extra]]
name = "acme_site"
value = "{launch.site}"
default = "main"
source = "unverified"
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("rotator.toml"),
        "name = \"rotator\"\nlabel = \"Rotator\"\nabout = \"x\"\n[tokens.refresh]\nvalue = \"rotate\"\nsource = \"unverified\"\n\
         [tokens.min_refresh_interval_secs]\nvalue = 60\nsource = \"unverified\"\n",
    )
    .unwrap();
    let f: Fixture = fixture_with(spawn_secured_with_profiles(dir.path().to_path_buf()).await).await;
    let app = &f.app;
    let t = ehr_tokens(&f, json!({"patient": f.p2, "profile": "acme", "extra": {"site": "north"}}), "launch openid fhirUser patient/*.rs").await;
    assert_eq!(t["expires_in"], 120);
    assert_eq!(t["acme_site"], "north");

    // The EHR's launcher offers it; a name nobody defined is refused with a page.
    let cookie = sign_in(app, "/ehr/login", "doc", "doc-pass").await;
    let (status, chart) = page(app, &format!("/ehr/patients/{}", f.p2), &cookie).await;
    assert_eq!(status, 200);
    assert!(chart.contains("<option value=\"acme\">Acme EHR</option>"), "{chart}");
    let client = format!("tab|{PUBLIC}");
    let token = csrf(&chart);
    let launch = [("patient", f.p2.as_str()), ("encounter", ""), ("launch", client.as_str()), ("csrf", token.as_str()), ("profile", "nosuch")];
    let r = form(app, "/ehr/launch", Some(&cookie), &launch).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("there is no vendor profile"));

    // A throttled refresh of a rotating profile does not spend the refresh token.
    let t = ehr_tokens(&f, json!({"patient": f.p2, "profile": "rotator"}), "launch openid fhirUser offline_access patient/*.rs").await;
    let r1: Value = refresh(app, t["refresh_token"].as_str().unwrap()).await.json().await.unwrap();
    let rt2 = r1["refresh_token"].as_str().unwrap();
    assert_ne!(rt2, t["refresh_token"].as_str().unwrap(), "rotated");
    assert_eq!(refresh(app, rt2).await.status(), 429);
    app.clock.advance(time::Duration::seconds(61));
    assert_eq!(refresh(app, rt2).await.status(), 200, "the throttled request did not spend it");
}

#[tokio::test]
async fn epic_takes_backend_keys_from_a_jwk_set_url_only() {
    let f = fixture().await;
    let app = &f.app;
    let key = client::SigningKey::generate_rs384("epic-backend-key");
    let mut backend = Client {
        redirect_uris: vec![],
        jwks: Some(json!({"keys": [key.public_jwk()]})),
        profile: Some(Profile::named("epic")),
        ..test_client("epic-backend", ClientKind::ConfidentialAsymmetric, "system/*.rs")
    };
    auth::registry::put_client(app.auth.store.as_ref(), backend.clone()).await.unwrap();
    let service = client::BackendClient::new(&app.base, "epic-backend", std::sync::Arc::new(key), "system/*.rs").unwrap();
    let e = service.fhir().search("Patient", &[]).await.unwrap_err();
    assert!(matches!(e, client::Error::OAuth { ref code, ref description } if code == "invalid_client" && description.contains("JWK Set URL")), "{e:?}");
    // The same keys under the strict profile are accepted (the registry's cache forgets within a second).
    backend.profile = None;
    auth::registry::put_client_as_is(app.auth.store.as_ref(), &backend).await.unwrap();
    app.clock.advance(time::Duration::seconds(2));
    assert!(service.fhir().search("Patient", &[]).await.is_ok());
}

#[tokio::test]
async fn nextgen_office_serves_one_bulk_export_per_app_and_export_a_week() {
    let f = fixture().await;
    let app = &f.app;
    let token = |profile: &'static str| {
        let f = &f;
        async move {
            ehr_tokens(f, json!({"patient": f.p2, "profile": profile}), "launch openid fhirUser user/*.rs").await["access_token"].as_str().unwrap().to_string()
        }
    };
    // Each at its own FHIR base: NextGen Office's, or (at the end) NextGen Enterprise's.
    let get_at = |profile: &str, path: String, token: String| {
        app.client
            .get(url_at(&vendor_base(app, profile), &path))
            .bearer_auth(token)
            .header("prefer", "respond-async")
            .header("accept", "application/fhir+json")
            .send()
    };
    let get = |path: String, token: String| get_at("nextgen-office", path, token);
    let ngo = token("nextgen-office").await;
    let r = get("Patient/$export".into(), ngo.clone()).await.unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let status_url = r.headers()["content-location"].to_str().unwrap().to_string();
    // The read-only API still answers the export's status (a read), but not its cancellation.
    let r = app.client.get(&status_url).bearer_auth(&ngo).send().await.unwrap();
    assert!(r.status() == 200 || r.status() == 202, "{}", r.status());
    assert_eq!(app.client.delete(&status_url).bearer_auth(&ngo).send().await.unwrap().status(), 405);
    // A second kick-off of the same export within the week: 429 with the time left.
    let r = get("Patient/$export".into(), ngo.clone()).await.unwrap();
    assert_eq!(r.status(), 429);
    let wait: i64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((604_000..=604_800).contains(&wait), "{wait}");
    // Another export (a Group's) is another count.
    let group = "Group/kp-7-panel/$export".to_string();
    assert_eq!(get(group.clone(), ngo.clone()).await.unwrap().status(), 202);
    // A week later the same export is served again (with a token of the day).
    app.clock.advance(time::Duration::seconds(604_801));
    assert_eq!(get("Patient/$export".into(), token("nextgen-office").await).await.unwrap().status(), 202);
    // NextGen Enterprise's read-only API serves no operation at all.
    assert_eq!(get_at("nextgen", "Patient/$export".into(), token("nextgen").await).await.unwrap().status(), 405);
}

/// `path` at the FHIR base `base`.
fn url_at(base: &str, path: &str) -> String {
    if path.is_empty() { base.to_string() } else { format!("{base}/{path}") }
}

/// [`fhir_get`] at the FHIR base `base`.
async fn fhir_at(app: &TestApp, base: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    fhir_get_at(app, &url_at(base, path), token).await
}

#[tokio::test]
async fn each_vendor_answers_at_its_own_addresses() {
    let f = fixture().await;
    let app = &f.app;
    let root = root(app);

    // Epic: the FHIR base …/api/FHIR/R4, and an issuer that is not the FHIR base.
    let epic = vendor_base(app, "epic");
    assert_eq!(epic, format!("{root}/epic/api/FHIR/R4"));
    let issuer = format!("{root}/epic/oauth2");
    let (status, smart) = fhir_get_at(app, &format!("{epic}/.well-known/smart-configuration"), None).await;
    assert_eq!((status, smart["issuer"].as_str()), (200, Some(issuer.as_str())));
    assert_eq!(smart["token_endpoint"], format!("{root}/auth/token"));
    let (status, oidc) = fhir_get_at(app, &format!("{issuer}/.well-known/openid-configuration"), None).await;
    assert_eq!((status, oidc["issuer"].as_str()), (200, Some(issuer.as_str())));
    // A launch under the profile is sent with Epic's base, and its app asks for it as `aud`.
    let created: Value = app
        .client
        .post(format!("{root}/auth/launch"))
        .basic_auth("doc", Some("doc-pass"))
        .json(&json!({"patient": f.p2, "profile": "epic"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["iss"], epic);
    let t = ehr_tokens(&f, json!({"patient": f.p2, "profile": "epic"}), "launch openid fhirUser patient/Patient.rs patient/Observation.rs").await;
    let claims = crate::smart_flows::verify_id_token(app, t["id_token"].as_str().unwrap()).await;
    assert_eq!(claims["iss"], issuer, "Epic's id_token issuer is …/oauth2, not the FHIR base");
    assert_ne!(claims["iss"], epic);
    assert_eq!(claims["fhirUser"], format!("{epic}/Practitioner/{}", synth::practitioner_id(0)));
    // The FHIR API answers at Epic's base, with links and full URLs on it.
    let token = t["access_token"].as_str().unwrap();
    let (status, bundle) = fhir_get_at(app, &format!("{epic}/Observation?patient={}&_count=2", f.p2), Some(token)).await;
    assert_eq!(status, 200, "{bundle}");
    assert!(bundle["link"].as_array().unwrap().iter().all(|l| l["url"].as_str().unwrap().starts_with(&epic)), "{}", bundle["link"]);
    let next = bundle["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"].as_str().unwrap();
    let (status, page) = fhir_get_at(app, next, Some(token)).await;
    assert_eq!((status, page["entry"].as_array().map(Vec::len)), (200, Some(2)), "the next page is served at Epic's base: {page}");
    assert!(bundle["entry"][0]["fullUrl"].as_str().unwrap().starts_with(&format!("{epic}/Observation/")));
    let (status, patient) = fhir_get_at(app, &format!("{epic}/Patient/{}", f.p2), Some(token)).await;
    assert_eq!((status, patient["id"].as_str()), (200, Some(f.p2.as_str())));
    let (status, cs) = fhir_get_at(app, &format!("{epic}/metadata"), None).await;
    assert_eq!((status, cs["resourceType"].as_str()), (200, Some("CapabilityStatement")));
    let (status, outcome) = fhir_get_at(app, &format!("{epic}/NoSuchType/1/x/y"), Some(token)).await;
    assert_eq!((status, outcome["resourceType"].as_str()), (404, Some("OperationOutcome")));
    assert_eq!(fhir_get_at(app, &format!("{epic}/Patient/{}", f.p2), None).await.0, 401, "a token is needed there too");
    // An Epic app that asks for Kindling's own base, not the launch's `iss`, is refused.
    app_with_profile(app, "epic-app", "epic").await;
    let a = Auth::new(app, "epic-app", "openid fhirUser launch/patient patient/Patient.rs");
    let q = query(&location(&a.start(app).await));
    assert_eq!(q.get("error").map(String::as_str), Some("invalid_request"));
    assert!(q["error_description"].contains(&epic), "{q:?}");
    assert_eq!(q.get("iss"), Some(&app.base), "RFC 9207: the issuer of the base the app asked for");

    // Oracle: the tenant in the FHIR base, and in the token response.
    let oracle = vendor_base(app, "oracle");
    let tenant = "ec2458f2-1e24-41c8-b71b-0e701af7583d";
    assert_eq!(oracle, format!("{root}/oracle/r4/{tenant}"));
    let t = ehr_tokens(&f, json!({"patient": f.p2, "profile": "oracle"}), "launch openid fhirUser patient/Patient.rs").await;
    assert_eq!(t["tenant"], tenant);
    let claims = crate::smart_flows::verify_id_token(app, t["id_token"].as_str().unwrap()).await;
    assert_eq!(claims["iss"], oracle, "Oracle's issuer is its FHIR base");
    let (_, smart) = fhir_get_at(app, &format!("{oracle}/.well-known/smart-configuration"), None).await;
    assert_eq!(smart["issuer"], oracle);
    let (_, oidc) = fhir_get_at(app, &format!("{oracle}/.well-known/openid-configuration"), None).await;
    assert_eq!(oidc["issuer"], oracle);
    let (status, patient) = fhir_get_at(app, &format!("{oracle}/Patient/{}", f.p2), t["access_token"].as_str()).await;
    assert_eq!((status, patient["id"].as_str()), (200, Some(f.p2.as_str())));

    // NextGen Enterprise: no introspection advertised; revocation at …/token/revoke, which revokes.
    let nge = vendor_base(app, "nextgen");
    let (_, smart) = fhir_get_at(app, &format!("{nge}/.well-known/smart-configuration"), None).await;
    assert_eq!(smart["issuer"], format!("{root}/nextgen/nge/prod/patient-oauth"));
    assert!(smart.get("introspection_endpoint").is_none(), "{smart}");
    assert_eq!(smart["revocation_endpoint"], format!("{root}/auth/token/revoke"));
    let t = ehr_tokens(&f, json!({"patient": f.p2, "profile": "nextgen"}), "launch openid fhirUser patient/Patient.rs").await;
    let token = t["access_token"].as_str().unwrap();
    assert_eq!(fhir_get_at(app, &format!("{nge}/Patient/{}", f.p2), Some(token)).await.0, 200);
    assert_eq!(crate::smart_flows::post_form(app, "/auth/token/revoke", &[("token", token), ("client_id", PUBLIC)]).await.status(), 200);
    assert_eq!(fhir_get_at(app, &format!("{nge}/Patient/{}", f.p2), Some(token)).await.0, 401, "revoked");

    let (_, cs) = fhir_get_at(app, &format!("{nge}/metadata"), None).await;
    assert_eq!(cs["implementation"]["url"], nge);
    let uris: Vec<&str> = cs["rest"][0]["security"]["extension"][0]["extension"].as_array().unwrap().iter().map(|e| e["url"].as_str().unwrap()).collect();
    assert!(uris.contains(&"revoke") && !uris.contains(&"introspect"), "{uris:?}");
    let revoke = cs["rest"][0]["security"]["extension"][0]["extension"].as_array().unwrap().iter().find(|e| e["url"] == "revoke").unwrap()["valueUri"].clone();
    assert_eq!(revoke, format!("{root}/auth/token/revoke"));

    // Kindling's own discovery is SMART's, unchanged.
    let (_, smart) = fhir_get_at(app, &format!("{}/.well-known/smart-configuration", app.base), None).await;
    assert_eq!(smart["issuer"], app.base);
    assert_eq!(smart["introspection_endpoint"], format!("{root}/auth/introspect"));
    assert_eq!(smart["revocation_endpoint"], format!("{root}/auth/revoke"));
}

#[tokio::test]
async fn a_vendor_servers_tokens_references_and_refusals_stay_on_its_base() {
    let f = fixture().await;
    let app = &f.app;
    let root = root(app);
    let epic = vendor_base(app, "epic");
    let oracle = vendor_base(app, "oracle");
    let issuer = format!("{root}/epic/oauth2");
    let t = ehr_tokens(&f, json!({"patient": f.p2, "profile": "epic"}), "launch openid fhirUser patient/Patient.rs patient/Observation.cruds").await;
    let token = t["access_token"].as_str().unwrap();
    // A token works at the base it was issued for, and nowhere else.
    assert_eq!(fhir_get_at(app, &format!("{epic}/Patient/{}", f.p2), Some(token)).await.0, 200);
    for elsewhere in [app.base.clone(), oracle.clone()] {
        let (status, outcome) = fhir_get_at(app, &format!("{elsewhere}/Patient/{}", f.p2), Some(token)).await;
        assert_eq!(status, 401, "{elsewhere}: {outcome}");
        assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains(&epic), "{outcome}");
    }
    // Introspection names the token's issuer and audience.
    let body = url::form_urlencoded::Serializer::new(String::new()).append_pair("token", token).finish();
    let r = app
        .client
        .post(format!("{root}/auth/introspect"))
        .bearer_auth(token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let info: Value = r.json().await.unwrap();
    assert_eq!((info["active"].as_bool(), info["iss"].as_str(), info["aud"].as_str()), (Some(true), Some(issuer.as_str()), Some(epic.as_str())), "{info}");
    // A resource written at Epic's base with an absolute reference on it is the patient's own.
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "written at Epic's base"},
        "subject": {"reference": format!("{epic}/Patient/{}", f.p2)}});
    let r = app.client.post(format!("{epic}/Observation")).bearer_auth(token).header("content-type", "application/fhir+json").json(&obs).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let created_at = r.headers()["location"].to_str().unwrap().to_string();
    assert!(created_at.starts_with(&format!("{epic}/Observation/")), "{created_at}");
    let id = created_at.trim_start_matches(&format!("{epic}/Observation/")).split('/').next().unwrap().to_string();
    let subject = url::form_urlencoded::byte_serialize(format!("{epic}/Patient/{}", f.p2).as_bytes()).collect::<String>();
    for query in [format!("Observation?patient={}&_id={id}", f.p2), format!("Observation?subject={subject}&_id={id}")] {
        let (status, bundle) = fhir_get_at(app, &format!("{epic}/{query}"), Some(token)).await;
        assert_eq!((status, bundle["total"].as_u64()), (200, Some(1)), "{query}: {bundle}");
    }
    let stored = app.app_state.store.read("Observation", &id).await.unwrap().unwrap();
    assert!(app.app_state.store.in_patient_compartment(stored.key, &f.p2).await.unwrap(), "indexed in the patient's compartment");
    // Paths that only look like the vendor's base are not it; discovery documents it lacks are 404.
    assert_eq!(app.client.get(format!("{epic}x/Patient/{}", f.p2)).bearer_auth(token).send().await.unwrap().status(), 404);
    let (status, outcome) = fhir_get_at(app, &format!("{epic}/.well-known/openid-configuration"), None).await;
    assert_eq!((status, outcome["resourceType"].as_str()), (404, Some("OperationOutcome")), "Epic's issuer is elsewhere");
    // A launch made for an Epic app without naming a profile follows the app's: its `iss` is Epic's base.
    app_with_profile(app, "epic-app", "epic").await;
    let launch = |body: Value| {
        let url = format!("{root}/auth/launch");
        async move { app.client.post(url).basic_auth("doc", Some("doc-pass")).json(&body).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let created = launch(json!({"patient": f.p2, "client_id": "epic-app"})).await;
    assert_eq!(created["iss"], epic);
    // One that names no app follows strict SMART, whichever app redeems it: `iss` and `aud` agree.
    let created = launch(json!({"patient": f.p2})).await;
    assert_eq!(created["iss"], app.base);
    let mut a = Auth::new(app, "epic-app", "launch openid fhirUser patient/Patient.rs");
    a.launch = Some(created["launch"].as_str().unwrap().to_string());
    assert_eq!(a.start(app).await.status(), 200, "the sign-in page: the launch's iss is the aud");
    // A refusal names the issuer of the base the app asked for (RFC 9207), as its discovery told it.
    let created = launch(json!({"patient": f.p2, "profile": "epic"})).await;
    let mut a = Auth::new(app, PUBLIC, "launch openid fhirUser patient/Patient.rs");
    a.launch = Some(created["launch"].as_str().unwrap().to_string());
    a.aud = epic.clone();
    assert_eq!(a.start(app).await.status(), 200);
    let q = query(&location(&a.start(app).await));
    assert_eq!((q.get("error").map(String::as_str), q.get("iss")), (Some("invalid_request"), Some(&issuer)), "a reused launch, at Epic: {q:?}");
    let created = launch(json!({"patient": f.p2, "profile": "epic"})).await;
    let mut a = Auth::new(app, PUBLIC, "launch openid fhirUser patient/Patient.rs");
    a.launch = Some(created["launch"].as_str().unwrap().to_string());
    let q = query(&location(&a.start(app).await));
    assert_eq!(q.get("iss"), Some(&app.base), "the app asked for Kindling's own base: its issuer answers {q:?}");
    assert!(q["error_description"].contains(&epic), "{q:?}");
}
