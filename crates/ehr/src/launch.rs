//! Launching an app from the chart: the launch context with its faults and vendor profile, and the launch inspector that shows the SMART handshake as it happened.

use super::*;
use auth::launch::ContextProblem;

/// The vendor profiles a launch or an app may follow, as (name, label), strict first.
pub(crate) fn profiles(s: &auth::AuthServer) -> Vec<(String, String)> {
    s.config.profiles.all().iter().map(|p| (p.name.clone(), p.label.clone())).collect()
}

/// Reads the launcher's fault fields.
pub(crate) fn faults_from(p: &Params) -> Result<Faults, String> {
    let flag = |k: &str| p.get(k).is_some_and(|v| v == "1" || v == "on");
    let num = |k: &str| -> Result<Option<i64>, String> {
        match p.get(k).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| format!("{k} must be a whole number")),
        }
    };
    let status = match p.get("fhir_error_status").map(String::as_str).unwrap_or("") {
        "" => None,
        v => Some(v.parse::<u16>().map_err(|_| "the FHIR error status must be 429 or 503".to_string())?),
    };
    let rate = match status {
        None => None,
        Some(_) => Some(num("fhir_error_percent")?.unwrap_or(50) as f64 / 100.0),
    };
    let faults = Faults {
        expired_launch: flag("expired_launch"),
        deny: p.get("deny").map(|v| v.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect()).unwrap_or_default(),
        no_encounter: flag("no_encounter"),
        token_secs: num("token_secs")?,
        refresh_fails: flag("refresh_fails"),
        revoke_after_secs: num("revoke_after_secs")?,
        fhir_error_status: status,
        fhir_error_rate: rate,
        fhir_delay_ms: num("fhir_delay_ms")?.map(|v| v.max(0) as u64),
    };
    faults.validate()?;
    Ok(faults)
}

pub(crate) async fn launch(State(s): State<Shared>, headers: HeaderMap, axum::Form(p): axum::Form<Params>) -> Response {
    let Some(sess) = session::current(&s, &headers).await else { return Redirect::to("/ehr/login").into_response() };
    if let Some(r) = csrf_refusal(&sess, &p) {
        return r;
    }
    let nav = Nav::of(&sess);
    let back = if sess.user.role == UserRole::Patient {
        "/portal".to_string()
    } else {
        format!("/ehr/patients/{}", p.get("patient").map(String::as_str).unwrap_or(""))
    };
    let Some((mode, client_id)) = p.get("launch").and_then(|v| v.split_once('|')) else {
        return message(nav, StatusCode::BAD_REQUEST, "Choose an app", "No app was chosen.", "Click the Launch button next to an app.", &back);
    };
    let client = match auth::registry::get_client(s.store.as_ref(), client_id).await {
        Ok(Some(c)) if c.launch_url.is_some() && !c.self_registered => c,
        Ok(_) => {
            return message(
                nav,
                StatusCode::NOT_FOUND,
                "This app cannot be launched",
                "The app is not registered, is disabled, or has no launch URL.",
                "Ask your administrator to check the app's registration.",
                &back,
            );
        }
        Err(e) => return internal(e),
    };
    let patient = match sess.user.own_patient() {
        Some(own) => {
            // Patients launch only the apps the portal offers them.
            if !smart::ScopeSet::parse(&client.allowed_scope).resource_scopes().any(|r| r.level == smart::Level::Patient) {
                return message(
                    nav,
                    StatusCode::FORBIDDEN,
                    "This app is not for patients",
                    "The app is not offered in the patient portal.",
                    "Choose one of the apps listed in your portal.",
                    &back,
                );
            }
            own.to_string()
        }
        None => match p.get("patient").filter(|v| fhir::types::is_valid_id(v)) {
            Some(v) => v.clone(),
            None => {
                return message(
                    nav,
                    StatusCode::BAD_REQUEST,
                    "Open a chart first",
                    "Apps are launched from a patient's chart.",
                    "Open the patient's chart and launch the app there.",
                    "/ehr/patients",
                );
            }
        },
    };
    let encounter = p.get("encounter").filter(|v| !v.is_empty() && fhir::types::is_valid_id(v)).cloned();
    let embed = mode == "embed" && sess.user.role == UserRole::Clinician;
    let mut context = LaunchContext {
        client_id: Some(client.client_id.clone()),
        username: Some(sess.user.username.clone()),
        patient: Some(patient.clone()),
        encounter,
        need_patient_banner: Some(!embed),
        smart_style_url: embed.then(|| s.config.endpoint("style.json")),
        // A chosen profile goes to the launch check (an unknown name is refused there); the app's default
        // only while the server still knows it (else the launch follows strict SMART, as its tokens would).
        profile: p
            .get("profile")
            .filter(|v| !v.is_empty())
            .map(|v| Profile::named(v))
            .or(client.profile.clone().filter(|d| s.config.profiles.get(d.as_str()).is_some()))
            // Fixed now, strict when neither names one: the launch's `iss` and the `aud` it needs follow it.
            .or(Some(Profile::strict())),
        ..LaunchContext::default()
    };
    // The launch API's check, with a page for the clinician.
    match auth::launch::check_context(&s, &context).await {
        Ok(Ok(())) => {}
        Ok(Err(ContextProblem::PatientInvalid | ContextProblem::PatientMissing)) => {
            return message(
                nav,
                StatusCode::NOT_FOUND,
                "No such patient",
                "This patient is not in the record system.",
                "Find the patient in the patient list.",
                "/ehr/patients",
            );
        }
        Ok(Err(ContextProblem::EncounterMissing | ContextProblem::EncounterOfAnotherPatient | ContextProblem::EncounterInvalid)) => {
            return message(
                nav,
                StatusCode::BAD_REQUEST,
                "That encounter is not this patient's",
                "The chosen encounter belongs to another patient.",
                "Choose one of the encounters listed in the chart.",
                &back,
            );
        }
        Ok(Err(problem)) => {
            return message(nav, StatusCode::BAD_REQUEST, "This launch cannot be made", &problem.to_string(), "Go back to the chart and try again.", &back);
        }
        Err(e) => return internal(e),
    }
    context.faults = match faults_from(&p) {
        Ok(f) => f,
        Err(why) => {
            return message(nav, StatusCode::BAD_REQUEST, "These launch options do not fit together", &why, "Go back and correct the injected faults.", &back);
        }
    };
    let created = match auth::launch::new_launch(&s, &context).await {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    let Some(url) = client.launch_url.as_deref().and_then(|u| url::Url::parse(u).ok()) else {
        return message(
            nav,
            StatusCode::BAD_REQUEST,
            "This app's launch URL is not valid",
            "The registered launch URL cannot be opened.",
            "Ask your administrator to correct the app's registration.",
            &back,
        );
    };
    let mut url = url;
    // The launch's `iss` is the FHIR base of the EHR its profile reproduces (Epic's, Oracle's tenant path).
    let iss = s.config.fhir_base_for(&context.profile.clone().unwrap_or_default());
    url.query_pairs_mut().append_pair("iss", &iss).append_pair("launch", &created.handle);
    tracing::info!(client = %client.client_id, user = %sess.user.username, launch = %created.id, embed, "app launched from the EHR");
    if embed { chart_page(&s, &sess, &patient, Some((url.to_string(), client.name.clone()))).await } else { Redirect::to(url.as_str()).into_response() }
}

pub(crate) async fn launches(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let Some(sess) = session::current(&s, &headers).await else { return Redirect::to("/ehr/login").into_response() };
    let filter = store::audit::AuditFilter { username: Some(sess.user.username.clone()), limit: 500, ..Default::default() };
    let events = match s.store.audit_events(&filter).await {
        Ok(e) => e,
        Err(e) => return internal(e),
    };
    let rows = events
        .into_iter()
        .filter(|(_, r)| r.action == "launch" && r.launch.is_some())
        .take(50)
        .map(|(_, r)| LaunchRow {
            id: r.launch.unwrap_or_default(),
            when: clock_time(r.recorded, true),
            app: r.client_id.unwrap_or_default(),
            patient: r.patient.unwrap_or_default(),
        })
        .collect();
    render(StatusCode::OK, &LaunchesPage { nav: Nav::of(&sess), launches: rows })
}

pub(crate) fn clock_time(ms: i64, with_date: bool) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = if with_date {
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]")
    } else {
        time::macros::format_description!("[hour]:[minute]:[second].[subsecond digits:3]")
    };
    t.format(&f).unwrap_or_default()
}

pub(crate) async fn inspector(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let Some(sess) = session::current(&s, &headers).await else { return Redirect::to("/ehr/login").into_response() };
    let filter = store::audit::AuditFilter { launch: Some(id.clone()), limit: 1000, ..Default::default() };
    let mut events = match s.store.audit_events(&filter).await {
        Ok(e) => e,
        Err(e) => return internal(e),
    };
    events.reverse();
    // In the order things happened (a decision-support call recorded at launch time happened before it).
    events.sort_by_key(|(_, r)| r.recorded);
    // Clinicians see every launch; a patient only the launches made on their own record.
    let visible = match sess.user.own_patient() {
        None => true,
        Some(own) => events.iter().any(|(_, r)| r.action == "launch" && r.patient.as_deref() == Some(own)),
    };
    if events.is_empty() || !visible {
        return message(
            Nav::of(&sess),
            StatusCode::NOT_FOUND,
            "No such launch",
            "Nothing was recorded for this launch, or it is not yours to see.",
            "Pick a launch from the list.",
            "/ehr/launches",
        );
    }
    let start = events.first().map(|(_, r)| r.recorded).unwrap_or(0);
    let steps = events.iter().map(|(_, r)| pages::step(r, start, clock_time(r.recorded, false))).collect();
    render(StatusCode::OK, &InspectorPage { nav: Nav::of(&sess), id, steps })
}
