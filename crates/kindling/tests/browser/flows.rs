//! The EHR simulator as people use it: clinician chart → app, patient portal → app, injected faults,
//! embedded launches, several tabs, narrow screens.

use crate::{Browser, Sandbox, browser, sandbox};
use serde_json::Value;

const DEMO: &str = "kindling-demo";

/// The seeded patients as (id, "Given Family", family), in id order.
async fn patients(s: &Sandbox) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for n in 0..3 {
        let id = synth::patient_id(1, n);
        let r = s.store.read("Patient", &id).await.expect("read").expect("seeded patient");
        let v: Value = serde_json::from_str(&r.json).expect("json");
        let given = v["name"][0]["given"].as_array().expect("given").iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" ");
        let family = v["name"][0]["family"].as_str().expect("family").to_string();
        out.push((id, format!("{given} {family}"), family));
    }
    out
}

async fn sign_in(b: &Browser, s: &Sandbox, path: &str, user: &str, password: &str) {
    b.goto(&format!("{}{path}", s.url)).await;
    b.axe(path).await;
    b.fill("#username", user).await;
    b.fill("#password", password).await;
    b.click("main form button.primary").await;
}

async fn sign_in_clinician(b: &Browser, s: &Sandbox) {
    sign_in(b, s, "/ehr/login", "clinician", "kindling-clinician").await;
    b.wait_text("h1", |t| t == "Patients").await;
}

/// Opens a patient's chart the way a clinician does: search by family name, click the name.
async fn open_chart(b: &Browser, s: &Sandbox, id: &str, name: &str, family: &str) {
    b.goto(&format!("{}/ehr/patients", s.url)).await;
    b.fill("#name", family).await;
    b.click("form.search button.primary").await;
    // The live search tells screen readers what it found, in the status region it keeps (family names are
    // unique among the seeded patients).
    let mut said = String::new();
    for _ in 0..50 {
        let v = b.c.execute("const e = document.querySelector('#result-count[role=status]'); return e ? e.textContent : ''", vec![]).await.expect("script");
        said = v.as_str().unwrap_or_default().to_string();
        if said == "1 patient found" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(said, "1 patient found");
    b.click(&format!("#results a[href='/ehr/patients/{id}']")).await;
    let banner = b.wait_text(".banner .name", |t| !t.is_empty()).await;
    assert_eq!(banner, name);
}

/// Clicks an app's Launch button in the chart (a new tab) and switches to that tab.
async fn launch_in_new_tab(b: &Browser, value: &str) {
    let before = b.c.windows().await.expect("windows").len();
    b.click(&format!("button[value='{value}']")).await;
    b.to_new_window(before).await;
}

async fn approve(b: &Browser) {
    b.wait_text("h1", |t| t.contains("would like to")).await;
    b.click("button[value=allow]").await;
}

async fn app_shows_patient(b: &Browser, name: &str) {
    b.wait_text("#section-patient", |t| t.contains(name)).await;
}

async fn back_to_first_window(b: &Browser) {
    let windows = b.c.windows().await.expect("windows");
    b.c.switch_to_window(windows[0].clone()).await.expect("switch");
}

#[tokio::test]
async fn clinician_launches_the_demo_app_from_the_chart() {
    let s = sandbox().await;
    let Some(b) = browser().await else { return };
    let ps = patients(&s).await;
    let (id, name, family) = &ps[1];
    sign_in_clinician(&b, &s).await;
    b.screenshot("ehr-patients").await;
    open_chart(&b, &s, id, name, family).await;
    // The chart reads the record: problems, vital signs.
    assert!(!b.text("#h-vitals + ul").await.contains("No vital signs"), "the seeded patient has vital signs");
    b.screenshot("ehr-chart").await;
    b.click("details summary").await;
    b.screenshot("ehr-launcher").await;
    b.click("details summary").await;
    launch_in_new_tab(&b, &format!("tab|{DEMO}")).await;
    // Signed in to the EHR: no second sign-in, straight to consent.
    b.wait_text("h1", |t| t.contains("would like to")).await;
    b.screenshot("consent").await;
    approve(&b).await;
    app_shows_patient(&b, name).await;
    assert_eq!(b.text("#ctx-patient").await, *id);
    assert_eq!(b.text("#ctx-banner").await, "true", "a new-tab launch asks for the patient banner");
    let url = b.c.current_url().await.expect("url");
    assert!(url.query().is_none(), "the code leaves the address bar: {url}");
    b.screenshot("demo-app").await;

    // Consent was given before: one click from the chart to the running app.
    back_to_first_window(&b).await;
    launch_in_new_tab(&b, &format!("tab|{DEMO}")).await;
    app_shows_patient(&b, name).await;

    // The launch inspector shows the handshake and the app's FHIR calls.
    back_to_first_window(&b).await;
    b.goto(&format!("{}/ehr/launches", s.url)).await;
    b.axe("launches").await;
    b.click("main table a").await;
    let steps = b.wait_text(".steps", |t| t.contains("FHIR read")).await;
    for expected in
        ["Launch context created by the EHR", "The app asked for authorisation", "Consent", "Authorisation code issued", "Token exchange", "FHIR read"]
    {
        assert!(steps.contains(expected), "inspector lacks {expected:?}:\n{steps}");
    }
    assert!(steps.contains("remembered from an earlier decision"), "the second launch reused the consent:\n{steps}");
    assert!(!steps.contains("access_token="), "no token values:\n{steps}");
    b.screenshot("ehr-inspector").await;
    // The app registration pages and the clinician's connected apps.
    for (path, title) in [("/ehr/apps", "Apps"), ("/ehr/apps/new", "Register an app"), ("/ehr/users", "Users"), ("/ehr/connected", "Connected apps")] {
        b.goto(&format!("{}{path}", s.url)).await;
        b.find("h1").await;
        b.axe(title).await;
    }
}

#[tokio::test]
async fn patient_portal_launches_a_patient_app_on_their_own_record() {
    let s = sandbox().await;
    let Some(b) = browser().await else { return };
    let ps = patients(&s).await;
    let (own_id, own_name, _) = &ps[0];
    sign_in(&b, &s, "/portal/login", "patient", "kindling-patient").await;
    assert_eq!(b.wait_text(".banner .name", |t| !t.is_empty()).await, *own_name);
    b.axe("portal").await;
    // The clinicians' EHR is not for patients.
    b.goto(&format!("{}/ehr/patients", s.url)).await;
    b.wait_text("h1", |t| t.contains("for clinicians")).await;
    b.axe("refusal page").await;
    b.goto(&format!("{}/portal", s.url)).await;
    launch_in_new_tab(&b, &format!("tab|{DEMO}")).await;
    approve(&b).await;
    app_shows_patient(&b, own_name).await;
    assert_eq!(b.text("#ctx-patient").await, *own_id);
    // The patient's connected apps, with the app just allowed.
    back_to_first_window(&b).await;
    b.goto(&format!("{}/ehr/connected", s.url)).await;
    b.wait_text("h1", |t| t == "Connected apps").await;
    assert!(b.text("main").await.contains("Withdraw"));
    b.axe("connected apps").await;
}

/// Sets the launcher's fault options on a freshly loaded chart.
async fn with_faults(b: &Browser, s: &Sandbox, id: &str, set: &[(&str, &str)]) {
    b.goto(&format!("{}/ehr/patients/{id}", s.url)).await;
    b.click("details summary").await;
    for (field, value) in set {
        let e = b.find(&format!("[name={field}]")).await;
        match e.attr("type").await.expect("type").as_deref() {
            Some("checkbox") => e.click().await.expect("tick"),
            _ if e.tag_name().await.expect("tag") == "select" => {
                e.select_by_value(value).await.expect("select");
            }
            _ => {
                e.clear().await.expect("clear");
                e.send_keys(value).await.expect("type");
            }
        }
    }
}

#[tokio::test]
async fn injected_faults_behave_like_a_real_server() {
    let s = sandbox().await;
    let Some(b) = browser().await else { return };
    let ps = patients(&s).await;
    let (id, name, family) = &ps[2];
    sign_in_clinician(&b, &s).await;
    open_chart(&b, &s, id, name, family).await;
    // First launch gives consent, so the fault runs below are not interrupted by it.
    launch_in_new_tab(&b, &format!("tab|{DEMO}")).await;
    approve(&b).await;
    app_shows_patient(&b, name).await;

    // 1. The launch handle is already expired.
    back_to_first_window(&b).await;
    with_faults(&b, &s, id, &[("expired_launch", "1")]).await;
    launch_in_new_tab(&b, &format!("tab|{DEMO}")).await;
    b.wait_text("#status", |t| t.contains("This launch has expired. Relaunch the app from the patient's chart.")).await;
    b.screenshot("fault-expired-launch").await;

    // 2. The user denies Observation: that section degrades, the rest works.
    back_to_first_window(&b).await;
    with_faults(&b, &s, id, &[("deny", "Observation")]).await;
    launch_in_new_tab(&b, &format!("tab|{DEMO}")).await;
    app_shows_patient(&b, name).await;
    b.wait_text("#section-vitals", |t| t.contains("not given access")).await;
    assert!(!b.text("#ctx-scope").await.contains("Observation"));

    // 3. The FHIR API answers 503 to every request (Retry-After honoured once, then the app gives up).
    back_to_first_window(&b).await;
    with_faults(&b, &s, id, &[("fhir_error_status", "503"), ("fhir_error_percent", "100")]).await;
    launch_in_new_tab(&b, &format!("tab|{DEMO}")).await;
    b.wait_text("#section-patient", |t| t.contains("(FHIR answered 503)")).await;

    // 4. 429 on every third request: the app's one retry after Retry-After gets through.
    back_to_first_window(&b).await;
    with_faults(&b, &s, id, &[("fhir_error_status", "429"), ("fhir_error_percent", "34")]).await;
    launch_in_new_tab(&b, &format!("tab|{DEMO}")).await;
    b.wait_text("#status", |t| t == "Ready.").await;
    let all = b.text("#sections").await;
    assert!(all.contains("after a retry"), "{all}");

    // 5. Refresh fails.
    back_to_first_window(&b).await;
    with_faults(&b, &s, id, &[("refresh_fails", "1")]).await;
    launch_in_new_tab(&b, &format!("tab|{DEMO}")).await;
    app_shows_patient(&b, name).await;
    b.click("#refresh").await;
    b.wait_text("#refresh-result", |t| t.contains("could not be renewed")).await;
    assert_eq!(b.find("#refresh-result").await.attr("data-error").await.expect("attr").as_deref(), Some("invalid_grant"));
    b.screenshot("fault-refresh-fails").await;

    // 6. No encounter context although one was chosen.
    back_to_first_window(&b).await;
    with_faults(&b, &s, id, &[("no_encounter", "1")]).await;
    b.find("#encounter").await.select_by_index(1).await.expect("choose an encounter");
    launch_in_new_tab(&b, &format!("tab|{DEMO}")).await;
    app_shows_patient(&b, name).await;
    assert!(b.text("#ctx-encounter").await.starts_with("none"));
}

#[tokio::test]
async fn embedded_launch_and_two_tabs_with_two_patients() {
    let s = sandbox().await;
    let Some(b) = browser().await else { return };
    let ps = patients(&s).await;
    sign_in_clinician(&b, &s).await;
    let (a_id, a_name, a_family) = &ps[0];
    let (b_id, b_name, b_family) = &ps[1];
    open_chart(&b, &s, a_id, a_name, a_family).await;
    // Embedded in the chart, with an encounter chosen: consent happens inside the frame.
    b.find("#encounter").await.select_by_index(1).await.expect("choose an encounter");
    let encounter = b.c.execute("return document.getElementById('encounter').value", vec![]).await.expect("js").as_str().expect("encounter id").to_string();
    assert!(!encounter.is_empty());
    b.click(&format!("button[value='embed|{DEMO}']")).await;
    let frame = b.find("iframe.embedded").await;
    frame.enter_frame().await.expect("enter frame");
    approve(&b).await;
    app_shows_patient(&b, a_name).await;
    assert_eq!(b.text("#ctx-banner").await, "false", "embedded: the EHR shows the banner");
    assert!(!b.find("#banner").await.is_displayed().await.expect("displayed"), "the app hides its own banner");
    assert_eq!(b.text("#ctx-encounter").await, encounter);
    b.c.enter_parent_frame().await.expect("parent frame");
    b.screenshot("ehr-embedded").await;

    // Two tabs, two patients: neither sees the other's.
    open_chart(&b, &s, a_id, a_name, a_family).await;
    launch_in_new_tab(&b, &format!("tab|{DEMO}")).await;
    app_shows_patient(&b, a_name).await;
    let tab_a = b.c.window().await.expect("window");
    back_to_first_window(&b).await;
    open_chart(&b, &s, b_id, b_name, b_family).await;
    launch_in_new_tab(&b, &format!("tab|{DEMO}")).await;
    app_shows_patient(&b, b_name).await;
    b.c.switch_to_window(tab_a).await.expect("switch");
    b.click("#reload").await;
    b.wait_text("#status", |t| t == "Ready.").await;
    assert_eq!(b.text("#ctx-patient").await, *a_id);
    app_shows_patient(&b, a_name).await;
}

#[tokio::test]
async fn pages_work_on_a_narrow_screen() {
    let s = sandbox().await;
    let Some(b) = browser().await else { return };
    b.c.set_window_size(390, 844).await.expect("resize");
    let ps = patients(&s).await;
    let (id, name, family) = &ps[0];
    sign_in_clinician(&b, &s).await;
    open_chart(&b, &s, id, name, family).await;
    let fits = b.c.execute("return document.documentElement.scrollWidth <= window.innerWidth + 1", vec![]).await.expect("js");
    assert_eq!(fits, Value::Bool(true), "no horizontal scrolling at 390 px");
    assert!(b.find(&format!("button[value='tab|{DEMO}']")).await.is_displayed().await.expect("displayed"));
    // Every form control has a label.
    let unlabelled = b
        .c
        .execute(
            "return [...document.querySelectorAll('input:not([type=hidden]),select,textarea')].filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.name)",
            vec![],
        )
        .await
        .expect("js");
    assert_eq!(unlabelled, Value::Array(vec![]), "controls without labels");
    b.screenshot("ehr-chart-narrow").await;
}
