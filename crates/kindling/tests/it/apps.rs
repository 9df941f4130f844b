//! App registration: the version-controlled apps file and RFC 7591 dynamic registration.

use crate::spawn_secured_app;
use serde_json::{Value, json};

#[tokio::test]
async fn apps_file_registers_apps_with_secrets_from_the_environment() {
    let app = spawn_secured_app().await;
    let store = app.auth.store.as_ref();
    let file = r#"
        [[app]]
        client_id = "cfg-public"
        name = "Configured public app"
        type = "public"
        redirect_uris = ["https://cfg.example/cb"]
        scope = "launch/patient patient/*.rs"

        [[app]]
        client_id = "cfg-secret"
        name = "Configured confidential app"
        type = "confidential-symmetric"
        redirect_uris = ["http://localhost:3000/cb"]
        scope = "launch openid fhirUser user/*.rs"
        secret_env = "CFG_SECRET"
    "#;
    let ids = auth::apps::load_apps_file(store, file, |v| (v == "CFG_SECRET").then(|| "s3cret".to_string())).await.unwrap();
    assert_eq!(ids, vec!["cfg-public", "cfg-secret"]);
    let c = auth::registry::get_client(store, "cfg-secret").await.unwrap().unwrap();
    assert!(auth::crypto::verify_password("s3cret", c.secret_hash.as_deref().unwrap()));
    assert!(!serde_json::to_string(&c).unwrap().contains("s3cret"), "only the hash is stored");
    // Missing secret variable, bad redirect URI, unknown field, bad scope: refused with the reason.
    let missing = auth::apps::load_apps_file(store, file, |_| None).await.unwrap_err().to_string();
    assert!(missing.contains("CFG_SECRET"), "{missing}");
    let bad = file.replace("https://cfg.example/cb", "http://cfg.example/cb");
    assert!(auth::apps::load_apps_file(store, &bad, |_| Some("x".into())).await.unwrap_err().to_string().contains("redirect URI"));
    let unknown = file.replace("scope = \"launch/patient patient/*.rs\"", "scope = \"launch/patient patient/*.rs\"\ncolour = \"red\"");
    assert!(auth::apps::load_apps_file(store, &unknown, |_| Some("x".into())).await.is_err());
    let scope = file.replace("patient/*.rs\"", "patient/*.rw\"");
    assert!(auth::apps::load_apps_file(store, &scope, |_| Some("x".into())).await.unwrap_err().to_string().contains("scope"));
    // A secret for an app that has no use for one is a mistake said at once.
    let public_with_secret = file.replace("scope = \"launch/patient patient/*.rs\"", "scope = \"launch/patient patient/*.rs\"\nsecret_env = \"CFG_SECRET\"");
    let err = auth::apps::load_apps_file(store, &public_with_secret, |_| Some("x".into())).await.unwrap_err().to_string();
    assert!(err.contains("secret_env is for confidential-symmetric apps only"), "{err}");
    // A backend app: no redirect URIs, its JWKS written as a TOML table, checked for a usable key.
    use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    let key = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
    let point = key.public_key().as_ref();
    let (x, y) = (auth::crypto::b64url(&point[1..49]), auth::crypto::b64url(&point[49..97]));
    let backend = |x: &str| {
        format!(
            "[[app]]\nclient_id = \"cfg-backend\"\nname = \"Nightly export\"\ntype = \"confidential-asymmetric\"\nscope = \"system/*.rs\"\n\n[app.jwks]\nkeys = [{{ kty = \"EC\", crv = \"P-384\", kid = \"k1\", x = \"{x}\", y = \"{y}\" }}]\n"
        )
    };
    assert_eq!(auth::apps::load_apps_file(store, &backend(&x), |_| None).await.unwrap(), vec!["cfg-backend"]);
    assert_eq!(auth::registry::get_client(store, "cfg-backend").await.unwrap().unwrap().jwks.unwrap()["keys"][0]["kid"], "k1");
    let err = auth::apps::load_apps_file(store, &backend("AAAA"), |_| None).await.unwrap_err().to_string();
    assert!(err.contains("no usable public key"), "{err}");

    // The repository's own development apps file is valid; Inferno's app starts disabled (no local Inferno,
    // no dead launch in the charts).
    let dev = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/apps.dev.toml")).unwrap();
    assert!(!auth::apps::load_apps_file(store, &dev, |_| None).await.unwrap().is_empty());
    assert!(auth::registry::stored_client(store, "inferno-local").await.unwrap().unwrap().disabled);
    assert!(auth::registry::get_client(store, "inferno-local").await.unwrap().is_none(), "a disabled app cannot be used");

    // What the EHR changed at run time stands when the file is loaded again (the next start): the file adds
    // and updates what it states, it never re-enables an app or resets its profile.
    let mut c = auth::registry::get_client(store, "cfg-public").await.unwrap().unwrap();
    c.disabled = true;
    c.profile = Some(auth::model::Profile::named("epic"));
    auth::registry::put_client_as_is(store, &c).await.unwrap();
    let renamed = file.replace("Configured public app", "Renamed public app");
    auth::apps::load_apps_file(store, &renamed, |_| Some("x".into())).await.unwrap();
    let c = auth::registry::stored_client(store, "cfg-public").await.unwrap().unwrap();
    assert_eq!(c.name, "Renamed public app", "the file updates what it states");
    assert!(c.disabled, "a runtime disable stands");
    assert_eq!(c.profile, Some(auth::model::Profile::named("epic")), "the runtime profile stands");
    let mut inferno = auth::registry::stored_client(store, "inferno-local").await.unwrap().unwrap();
    inferno.disabled = false;
    auth::registry::put_client_as_is(store, &inferno).await.unwrap();
    auth::apps::load_apps_file(store, &dev, |_| None).await.unwrap();
    assert!(!auth::registry::get_client(store, "inferno-local").await.unwrap().unwrap().disabled, "enabled in the EHR, stays enabled");
}

#[tokio::test]
async fn dynamic_registration() {
    let app = spawn_secured_app().await;
    let root = app.base.trim_end_matches("/fhir").to_string();
    let (_, d) = app.get_json(".well-known/smart-configuration").await;
    let endpoint = d["registration_endpoint"].as_str().unwrap().to_string();
    assert_eq!(endpoint, format!("{root}/auth/register"));
    let r = app
        .client
        .post(&endpoint)
        .json(&json!({"client_name": "Dyn", "redirect_uris": ["https://dyn.example/cb"], "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let reg: Value = r.json().await.unwrap();
    assert!(reg.get("client_secret").is_none());
    let client_id = reg["client_id"].as_str().unwrap();
    assert!(auth::registry::get_client(app.auth.store.as_ref(), client_id).await.unwrap().is_some());
    let r = app
        .client
        .post(&endpoint)
        .json(&json!({"client_name": "Dyn2", "redirect_uris": ["https://dyn.example/cb"], "token_endpoint_auth_method": "client_secret_basic"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let reg: Value = r.json().await.unwrap();
    let secret = reg["client_secret"].as_str().unwrap();
    // The secret works for client authentication (introspection accepts authenticated clients).
    let r = app
        .client
        .post(format!("{root}/auth/introspect"))
        .basic_auth(reg["client_id"].as_str().unwrap(), Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for bad in [
        json!({"redirect_uris": ["http://evil.example/cb"], "token_endpoint_auth_method": "none"}),
        json!({"redirect_uris": ["https://a.example/cb#frag"], "token_endpoint_auth_method": "none"}),
        json!({"redirect_uris": [], "token_endpoint_auth_method": "none"}),
    ] {
        let r = app.client.post(&endpoint).json(&bad).send().await.unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_redirect_uri");
    }
    let r = app
        .client
        .post(&endpoint)
        .json(&json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "tls_client_auth"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client_metadata");
}

#[test]
fn apps_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kindling")).args(args).env("KINDLING_LOG", "warn").output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let added = run(&[
        "apps",
        "--data",
        data,
        "add",
        "--name",
        "CLI app",
        "--type",
        "confidential-symmetric",
        "--redirect-uri",
        "https://cli.example/cb",
        "--client-id",
        "cli-app",
    ]);
    assert!(added.contains("client_id: cli-app"));
    assert!(added.contains("client_secret: "), "the secret is shown once");
    let listed = run(&["apps", "--data", data, "list"]);
    assert!(listed.contains("cli-app") && !listed.contains("client_secret"));
    run(&["apps", "--data", data, "remove", "cli-app"]);
    assert!(!run(&["apps", "--data", data, "list"]).contains("cli-app"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kindling"))
        .args(["apps", "--data", data, "add", "--name", "x", "--redirect-uri", "http://evil.example/cb"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
