//! SMART Backend Services: `client_credentials` with `private_key_jwt` (ES384 and RS384) and every way an
//! assertion must be refused.

use crate::{TestApp, spawn_secured_app};
use auth::crypto::b64url;
use auth::model::{Client, ClientKind};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

const CLIENT: &str = "backend-app";

struct Keys {
    ec: EcdsaKeyPair,
    rsa: aws_lc_rs::rsa::KeyPair,
}

fn jwks(keys: &Keys) -> Value {
    let point = keys.ec.public_key().as_ref();
    let rsa = keys.rsa.public_key();
    json!({"keys": [
        {"kty": "EC", "crv": "P-384", "kid": "ec-1", "x": b64url(&point[1..49]), "y": b64url(&point[49..97])},
        {"kty": "RSA", "kid": "rsa-1", "n": b64url(rsa.modulus().big_endian_without_leading_zero()), "e": b64url(rsa.exponent().big_endian_without_leading_zero())}
    ]})
}

async fn setup() -> (TestApp, Keys) {
    let app = spawn_secured_app().await;
    kindling::seed(&app.app_state, 2, 3).await.unwrap();
    let keys = Keys {
        ec: EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap(),
        rsa: aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap(),
    };
    let client = Client {
        client_id: CLIENT.into(),
        name: "Nightly export".into(),
        kind: ClientKind::ConfidentialAsymmetric,
        secret_hash: None,
        redirect_uris: vec!["https://backend.example/cb".into()],
        launch_url: None,
        allowed_scope: "system/*.rs system/Observation.rs".into(),
        jwks: Some(jwks(&keys)),
        jwks_url: Some("https://backend.example/jwks.json".into()),
        icon: None,
        disabled: false,
        profile: None,
        self_registered: false,
    };
    auth::registry::put_client(app.auth.store.as_ref(), client).await.unwrap();
    (app, keys)
}

fn token_url(app: &TestApp) -> String {
    format!("{}/auth/token", app.base.trim_end_matches("/fhir"))
}

fn now(app: &TestApp) -> i64 {
    fhir::time::unix_ms(fhir::time::Clock::now(&*app.clock)) / 1000
}

fn sign(keys: &Keys, header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
    let sig = match header["alg"].as_str() {
        Some("RS384") => {
            let mut sig = vec![0u8; keys.rsa.public_modulus_len()];
            keys.rsa.sign(&signature::RSA_PKCS1_SHA384, &SystemRandom::new(), input.as_bytes(), &mut sig).unwrap();
            sig
        }
        _ => keys.ec.sign(&SystemRandom::new(), input.as_bytes()).unwrap().as_ref().to_vec(),
    };
    format!("{input}.{}", b64url(&sig))
}

fn claims(app: &TestApp) -> Value {
    json!({"iss": CLIENT, "sub": CLIENT, "aud": token_url(app), "exp": now(app) + 300, "jti": uuid::Uuid::new_v4().simple().to_string()})
}

fn header(alg: &str, kid: &str) -> Value {
    json!({"alg": alg, "kid": kid, "typ": "JWT"})
}

async fn request(app: &TestApp, assertion: &str, scope: &str) -> reqwest::Response {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "client_credentials"),
            ("scope", scope),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", assertion),
        ])
        .finish();
    app.client
        .post(token_url(app))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn es384_and_rs384_assertions_get_system_tokens() {
    let (app, keys) = setup().await;
    for (alg, kid) in [("ES384", "ec-1"), ("RS384", "rsa-1")] {
        let r = request(&app, &sign(&keys, &header(alg, kid), &claims(&app)), "system/*.rs").await;
        assert_eq!(r.status(), 200, "{alg}");
        assert_eq!(r.headers()["cache-control"], "no-store");
        let t: Value = r.json().await.unwrap();
        assert_eq!(t["token_type"], "Bearer");
        assert!(t["expires_in"].as_i64().unwrap() <= 300);
        assert_eq!(t["scope"], "system/*.rs");
        assert!(t.get("refresh_token").is_none(), "backend services get no refresh token");
        let token = t["access_token"].as_str().unwrap();
        let r = app.client.get(app.url("Observation?_count=5")).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = app.client.get(app.url(&format!("Patient/{}", synth::patient_id(3, 1)))).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), 200, "system scopes reach every patient");
        let r = app
            .client
            .post(app.url("Patient"))
            .bearer_auth(token)
            .header("content-type", "application/fhir+json")
            .body(r#"{"resourceType":"Patient"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "read-only system scopes");
    }
    // v1 system scopes are accepted and answered in v1; scopes beyond the registration are not granted.
    let t: Value = request(&app, &sign(&keys, &header("ES384", "ec-1"), &claims(&app)), "system/*.read system/Patient.write").await.json().await.unwrap();
    assert_eq!(t["scope"], "system/*.read");
    let r = request(&app, &sign(&keys, &header("ES384", "ec-1"), &claims(&app)), "system/Patient.cud").await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_scope");
}

#[tokio::test]
async fn bad_grant_types_and_assertion_types() {
    let (app, keys) = setup().await;
    let assertion = sign(&keys, &header("ES384", "ec-1"), &claims(&app));
    let body = format!(
        "grant_type=not_a_grant_type&scope=system/*.rs&client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer&client_assertion={assertion}"
    );
    let r = app.client.post(token_url(&app)).header("content-type", "application/x-www-form-urlencoded").body(body).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unsupported_grant_type");
    let body = format!("grant_type=client_credentials&scope=system/*.rs&client_assertion_type=not_an_assertion_type&client_assertion={assertion}");
    let r = app.client.post(token_url(&app)).header("content-type", "application/x-www-form-urlencoded").body(body).send().await.unwrap();
    assert!(r.status() == 400 || r.status() == 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
}

#[tokio::test]
async fn every_bad_assertion_is_refused() {
    let (app, keys) = setup().await;
    let other = Keys {
        ec: EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap(),
        rsa: aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap(),
    };
    let good = claims(&app);
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c["jti"] = json!(uuid::Uuid::new_v4().to_string());
        c
    };
    let without = |k: &str| {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let unsigned = |h: Value, c: &Value| format!("{}.{}.", b64url(h.to_string().as_bytes()), b64url(c.to_string().as_bytes()));
    let cases: Vec<(&str, String)> = vec![
        ("signed by another key", sign(&other, &header("ES384", "ec-1"), &with("jti", json!("a")))),
        ("alg none", unsigned(json!({"alg": "none", "kid": "ec-1"}), &with("jti", json!("b")))),
        ("HS256", unsigned(json!({"alg": "HS256", "kid": "ec-1"}), &with("jti", json!("c")))),
        ("alg that does not fit the key", sign(&keys, &header("RS384", "ec-1"), &with("jti", json!("d")))),
        ("unknown kid", sign(&keys, &header("ES384", "nope"), &with("jti", json!("e")))),
        ("foreign jku", sign(&keys, &json!({"alg": "ES384", "kid": "ec-1", "jku": "https://evil.example/jwks.json"}), &with("jti", json!("f")))),
        ("wrong aud", sign(&keys, &header("ES384", "ec-1"), &with("aud", json!("https://other.example/token")))),
        ("iss differs from sub", sign(&keys, &header("ES384", "ec-1"), &with("sub", json!("someone-else")))),
        (
            "unknown issuer",
            sign(&keys, &header("ES384", "ec-1"), &json!({"iss": "nobody", "sub": "nobody", "aud": token_url(&app), "exp": now(&app) + 60, "jti": "g"})),
        ),
        ("expired", sign(&keys, &header("ES384", "ec-1"), &with("exp", json!(now(&app) - 120)))),
        ("exp too far ahead", sign(&keys, &header("ES384", "ec-1"), &with("exp", json!(now(&app) + 3600)))),
        ("no exp", sign(&keys, &header("ES384", "ec-1"), &without("exp"))),
        ("no jti", sign(&keys, &header("ES384", "ec-1"), &without("jti"))),
        // RFC 7519 §4.1.5: not valid before nbf (a minute of skew allowed).
        ("nbf in the future", sign(&keys, &header("ES384", "ec-1"), &with("nbf", json!(now(&app) + 600)))),
        ("nbf not a number", sign(&keys, &header("ES384", "ec-1"), &with("nbf", json!("soon")))),
        // RFC 7515 §4.1.11: a critical extension this server does not understand.
        ("crit header", sign(&keys, &json!({"alg": "ES384", "kid": "ec-1", "crit": ["exp"], "exp": 1}), &with("jti", json!("h")))),
        ("empty crit header", sign(&keys, &json!({"alg": "ES384", "kid": "ec-1", "crit": []}), &with("jti", json!("i")))),
    ];
    for (label, assertion) in cases {
        let r = request(&app, &assertion, "system/*.rs").await;
        assert!(r.status() == 400 || r.status() == 401, "{label}: {}", r.status());
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client", "{label}");
    }
    // Assertions that cannot be read as a whole are refused too, and land on the audit trail of the
    // registered client whose claims they carry.
    let readable_claims = b64url(with("jti", json!("j")).to_string().as_bytes());
    for (label, assertion, why) in [
        ("header not base64url", format!("!!!.{readable_claims}.c2ln"), "not base64url"),
        ("four parts", format!("{}.{readable_claims}.c2ln.c2ln", b64url(header("ES384", "ec-1").to_string().as_bytes())), "not a compact JWS"),
    ] {
        let r = request(&app, &assertion, "system/*.rs").await;
        assert_eq!(r.status(), 401, "{label}");
        let body = r.json::<Value>().await.unwrap();
        assert!(body["error_description"].as_str().unwrap().contains(why), "{label}: {body}");
        let filter = store::audit::AuditFilter { client_id: Some(CLIENT.into()), limit: 200, ..Default::default() };
        let mut audited = false;
        for _ in 0..100 {
            let events = app.app_state.store.audit_events(&filter).await.unwrap();
            audited = events.iter().any(|(_, e)| e.action == "client-authentication" && e.detail.as_deref().is_some_and(|d| d.contains(why)));
            if audited {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(audited, "{label}: on the client's audit trail");
    }
    // The same jti twice while the assertion lives: a replay.
    let once = sign(&keys, &header("ES384", "ec-1"), &claims(&app));
    assert_eq!(request(&app, &once, "system/*.rs").await.status(), 200);
    let r = request(&app, &once, "system/*.rs").await;
    assert_eq!(r.status(), 401, "replayed jti");
    // The jti is recorded with the token it bought: of concurrent replays one gets a token.
    let raced = sign(&keys, &header("RS384", "rsa-1"), &claims(&app));
    let one = || request(&app, &raced, "system/*.rs");
    let (a, b, c, d) = tokio::join!(one(), one(), one(), one());
    let mut statuses: Vec<u16> = [a, b, c, d].iter().map(|r| r.status().as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 401, 401, 401], "one token per assertion");
    // A refused request uses its assertion up too: it cannot be replayed with another scope.
    let refused = sign(&keys, &header("ES384", "ec-1"), &claims(&app));
    assert_eq!(request(&app, &refused, "system/Patient.cud").await.status(), 400);
    let r = request(&app, &refused, "system/*.rs").await;
    assert_eq!(r.status(), 401, "the refused request's jti is used up");
    assert_eq!(r.json::<Value>().await.unwrap()["error_description"], "this assertion's jti was already used");
    // nbf in the past, or within the skew, is fine.
    for nbf in [now(&app) - 30, now(&app) + 30] {
        let mut c = claims(&app);
        c["nbf"] = json!(nbf);
        assert_eq!(request(&app, &sign(&keys, &header("ES384", "ec-1"), &c), "system/*.rs").await.status(), 200, "nbf {nbf}");
    }
    // The registered jku is accepted.
    let jku = sign(&keys, &json!({"alg": "ES384", "kid": "ec-1", "jku": "https://backend.example/jwks.json"}), &claims(&app));
    assert_eq!(request(&app, &jku, "system/*.rs").await.status(), 200);
    // The last second an assertion is accepted (exp plus the minute's skew) its jti is still on record:
    // a replay then is refused, not taken for a first use.
    let c = claims(&app);
    let last = sign(&keys, &header("ES384", "ec-1"), &c);
    assert_eq!(request(&app, &last, "system/*.rs").await.status(), 200);
    let now_ms = fhir::time::unix_ms(fhir::time::Clock::now(&*app.clock));
    app.clock.advance(time::Duration::milliseconds((c["exp"].as_i64().unwrap() + 60) * 1000 + 500 - now_ms));
    let r = request(&app, &last, "system/*.rs").await;
    assert_eq!(r.status(), 401, "replayed in the last accepted second");
    assert_eq!(r.json::<Value>().await.unwrap()["error_description"], "this assertion's jti was already used");
}

/// SMART S-68: an asymmetric client runs the code flow and refreshes with client assertions only.
#[tokio::test]
async fn asymmetric_client_code_flow_and_refresh() {
    let (app, keys) = setup().await;
    let store = app.auth.store.as_ref();
    auth::registry::put_user(store, "pat3", "Pat", auth::model::UserRole::Patient, "pw", &format!("Patient/{}", synth::patient_id(3, 0))).await.unwrap();
    let mut client = auth::registry::get_client(store, CLIENT).await.unwrap().unwrap();
    client.allowed_scope = "launch/patient openid fhirUser offline_access patient/*.rs system/*.rs".into();
    auth::registry::put_client_as_is(store, &client).await.unwrap();
    let root = app.base.trim_end_matches("/fhir").to_string();
    let verifier = format!("{}-verifier", auth::crypto::random_token());
    let mut url = url::Url::parse(&format!("{root}/auth/authorize")).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT)
        .append_pair("redirect_uri", "https://backend.example/cb")
        .append_pair("scope", "launch/patient openid fhirUser offline_access patient/*.rs")
        .append_pair("state", "s")
        .append_pair("aud", &app.base)
        .append_pair("code_challenge", &auth::crypto::pkce_s256(&verifier))
        .append_pair("code_challenge_method", "S256");
    let browser = crate::Browser::new();
    let page = browser.get(url).await.text().await.unwrap();
    let req = page.split("name=\"request\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let form = |pairs: &[(&str, &str)]| url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
    let post =
        |path: &str, body: String| app.client.post(format!("{root}{path}")).header("content-type", "application/x-www-form-urlencoded").body(body).send();
    let consent_page =
        browser.post_form(&format!("{root}/auth/login"), &[("request", &req), ("username", "pat3"), ("password", "pw")]).await.text().await.unwrap();
    assert!(consent_page.contains("would like to"));
    let r = browser.post_form(&format!("{root}/auth/consent"), &[("request", &req), ("decision", "allow"), ("scope", "patient/*.rs")]).await;
    let location = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let code = location.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    let assertion_type = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
    let a1 = sign(&keys, &header("ES384", "ec-1"), &claims(&app));
    let r = post(
        "/auth/token",
        form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "https://backend.example/cb"),
            ("code_verifier", &verifier),
            ("client_assertion_type", assertion_type),
            ("client_assertion", &a1),
        ]),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    assert!(t["id_token"].is_string() && t["refresh_token"].is_string());
    let a2 = sign(&keys, &header("RS384", "rsa-1"), &claims(&app));
    let r = post(
        "/auth/token",
        form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", t["refresh_token"].as_str().unwrap()),
            ("client_assertion_type", assertion_type),
            ("client_assertion", &a2),
        ]),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    // Without an assertion the refresh is refused: this client must authenticate.
    let t2: Value = r.json().await.unwrap();
    let r = post("/auth/token", form(&[("grant_type", "refresh_token"), ("refresh_token", t2["refresh_token"].as_str().unwrap()), ("client_id", CLIENT)]))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// SMART S-65: keys registered by URL are fetched, and not kept beyond what Cache-Control allows.
#[tokio::test]
async fn keys_registered_by_url_are_fetched_and_not_cached_without_max_age() {
    let (app, keys) = setup().await;
    let served = std::sync::Arc::new(std::sync::Mutex::new(jwks(&keys)));
    let state = served.clone();
    let jwks_app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let state = state.clone();
            async move { ([("cache-control", "no-store")], axum::Json(state.lock().unwrap().clone())) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, jwks_app).await });
    let store = app.auth.store.as_ref();
    let mut client = auth::registry::get_client(store, CLIENT).await.unwrap().unwrap();
    client.jwks = None;
    client.jwks_url = Some(jwks_url.clone());
    auth::registry::put_client_as_is(store, &client).await.unwrap();
    let r = request(&app, &sign(&keys, &header("ES384", "ec-1"), &claims(&app)), "system/*.rs").await;
    assert_eq!(r.status(), 200);
    // The client rotates its keys at the URL: the new key works at once, the old one no longer.
    let rotated = Keys {
        ec: EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap(),
        rsa: aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap(),
    };
    *served.lock().unwrap() = jwks(&rotated);
    assert_eq!(request(&app, &sign(&rotated, &header("ES384", "ec-1"), &claims(&app)), "system/*.rs").await.status(), 200);
    assert_eq!(request(&app, &sign(&keys, &header("ES384", "ec-1"), &claims(&app)), "system/*.rs").await.status(), 401);
    // A jku naming the registered URL is accepted; another is not.
    let ok = sign(&rotated, &json!({"alg": "ES384", "kid": "ec-1", "jku": jwks_url}), &claims(&app));
    assert_eq!(request(&app, &ok, "system/*.rs").await.status(), 200);
}

/// The security issue's finding 2: a self-registered app's JWKS URL cannot reach into the server's
/// network (SSRF). Registration takes https URLs only; at fetch time loopback, private and link-local
/// addresses are refused without a connection, and the app learns nothing about what is there: one
/// generic error, whatever the target.
#[tokio::test]
async fn self_registered_jwks_urls_cannot_reach_the_servers_network() {
    let (app, keys) = setup().await;
    let root = app.base.trim_end_matches("/fhir").to_string();
    // A service on loopback that counts the connections it gets.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((_socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let register = |jwks_uri: String| {
        let body = json!({"client_name": "Probe", "token_endpoint_auth_method": "private_key_jwt", "jwks_uri": jwks_uri, "redirect_uris": ["https://probe.example/cb"]});
        app.client.post(format!("{root}/auth/register")).json(&body).send()
    };
    // Plain http is refused at registration, even on loopback.
    let r = register(format!("http://127.0.0.1:{port}/jwks.json")).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client_metadata");
    let mut errors = Vec::new();
    for target in [
        format!("https://127.0.0.1:{port}/jwks.json"),
        format!("https://localhost:{port}/jwks.json"),
        format!("https://[::1]:{port}/jwks.json"),
        format!("https://127.0.0.1:{}/closed", port.wrapping_add(1).max(1024)),
        "https://169.254.169.254/latest/meta-data/".to_string(),
        "https://10.0.0.1/jwks.json".to_string(),
        "https://0.0.0.0/jwks.json".to_string(),
    ] {
        let r = register(target.clone()).await.unwrap();
        assert_eq!(r.status(), 201, "{target}: an https URL is taken at registration");
        let client_id = r.json::<Value>().await.unwrap()["client_id"].as_str().unwrap().to_string();
        let c = json!({"iss": client_id, "sub": client_id, "aud": token_url(&app), "exp": now(&app) + 300, "jti": uuid::Uuid::new_v4().to_string()});
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("grant_type", "authorization_code"),
                ("code", "x"),
                ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                ("client_assertion", &sign(&keys, &header("ES384", "ec-1"), &c)),
            ])
            .finish();
        let started = std::time::Instant::now();
        let r = app.client.post(token_url(&app)).header("content-type", "application/x-www-form-urlencoded").body(body).send().await.unwrap();
        assert_eq!(r.status(), 401, "{target}");
        assert!(started.elapsed() < std::time::Duration::from_secs(4), "{target}: the fetch is bounded in time");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "invalid_client", "{target}");
        errors.push(v["error_description"].as_str().unwrap().to_string());
    }
    errors.dedup();
    assert_eq!(errors.len(), 1, "one error whatever the target: {errors:?}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0, "the server connected to a loopback service for a self-registered app");
}
