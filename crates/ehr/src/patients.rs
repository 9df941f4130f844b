//! The patient list (search, paging) and the chart with its Apps panel.

use super::*;

pub(crate) const PAGE_SIZE: usize = 20;

pub(crate) fn today(s: &Shared) -> time::Date {
    s.clock.now().date()
}

pub(crate) async fn patients(State(s): State<Shared>, headers: HeaderMap, Query(p): Query<Params>) -> Response {
    let sess = match clinician(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let q = PatientQuery {
        name: p.get("name").map(|v| v.trim().to_string()).unwrap_or_default(),
        birthdate: p.get("birthdate").map(|v| v.trim().to_string()).unwrap_or_default(),
        identifier: p.get("identifier").map(|v| v.trim().to_string()).unwrap_or_default(),
    };
    let page: usize = p.get("page").and_then(|v| v.parse().ok()).filter(|&n| n >= 1).unwrap_or(1).min(100_000);
    let mut pairs: Vec<(String, String)> = vec![("_sort".into(), "family,given".into())];
    for (k, v) in [("name", &q.name), ("birthdate", &q.birthdate), ("identifier", &q.identifier)] {
        if !v.is_empty() {
            pairs.push((k.into(), v.clone()));
        }
    }
    let mut error = None;
    let (total, rows) = match fhir::query::parse("Patient", &pairs, fhir::query::ParseOptions { lenient: false, base: None, now_ms: s.now_ms() }) {
        Err(_) => {
            error = Some("Birth dates are written YYYY-MM-DD (or YYYY, or YYYY-MM).".to_string());
            (0, Vec::new())
        }
        Ok(query) => match s.store.search(&query).await {
            Err(e) => return internal(e),
            Ok(keys) => {
                let start = ((page - 1) * PAGE_SIZE).min(keys.len());
                let end = (start + PAGE_SIZE).min(keys.len());
                match s.store.fetch(&keys[start..end]).await {
                    Err(e) => return internal(e),
                    Ok(found) => {
                        let today = today(&s);
                        let rows = found.iter().map(|r| chart::patient_facts(&r.id, &serde_json::from_str(&r.json).unwrap_or_default(), today)).collect();
                        (keys.len(), rows)
                    }
                }
            }
        },
    };
    let link = |n: usize| {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [("name", &q.name), ("birthdate", &q.birthdate), ("identifier", &q.identifier)] {
            if !v.is_empty() {
                ser.append_pair(k, v);
            }
        }
        ser.append_pair("page", &n.to_string());
        format!("/ehr/patients?{}", ser.finish())
    };
    let first = (page - 1) * PAGE_SIZE + 1;
    let last = ((page - 1) * PAGE_SIZE + rows.len()).max(first.saturating_sub(1));
    let page_view = PatientsPage {
        nav: Nav::of(&sess),
        prev: (page > 1).then(|| link(page - 1)),
        next: (page * PAGE_SIZE < total).then(|| link(page + 1)),
        q,
        patients: rows,
        total,
        first,
        last,
        error,
    };
    render(StatusCode::OK, &page_view)
}

/// Apps that can be launched from a chart (`patient` = for the patient portal).
pub(crate) async fn launchable_apps(s: &Shared, for_patients: bool) -> Result<Vec<AppView>, store::StoreError> {
    let mut apps: Vec<AppView> = auth::registry::list_clients(s.store.as_ref())
        .await?
        .into_iter()
        // An app that registered itself (RFC 7591) is not offered to clinicians or patients until an
        // administrator has reviewed and saved it on the Apps page: anyone may register, under any name.
        .filter(|c| !c.disabled && !c.self_registered && c.launch_url.is_some())
        .filter(|c| !for_patients || smart::ScopeSet::parse(&c.allowed_scope).resource_scopes().any(|r| r.level == smart::Level::Patient))
        .map(|c| AppView { client_id: c.client_id, name: c.name, icon: c.icon })
        .collect();
    apps.sort_by_key(|a| a.name.to_lowercase());
    Ok(apps)
}

pub(crate) async fn patient_chart(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let sess = match clinician(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    chart_page(&s, &sess, &id, None).await
}

pub(crate) async fn chart_page(s: &Shared, sess: &Session, id: &str, embed: Option<(String, String)>) -> Response {
    if !fhir::types::is_valid_id(id) {
        return message(
            Nav::of(sess),
            StatusCode::NOT_FOUND,
            "No such patient",
            "That patient id is not valid.",
            "Find the patient in the patient list.",
            "/ehr/patients",
        );
    }
    let chart = match chart::load(s.store.as_ref(), id, today(s)).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return message(
                Nav::of(sess),
                StatusCode::NOT_FOUND,
                "No such patient",
                "This patient is not in the record system.",
                "Find the patient in the patient list.",
                "/ehr/patients",
            );
        }
        Err(e) => return internal(e),
    };
    let apps = match launchable_apps(s, false).await {
        Ok(a) => a,
        Err(e) => return internal(e),
    };
    let (embed_src, embed_name) = match embed {
        Some((src, name)) => (Some(src), name),
        None => (None, String::new()),
    };
    render(StatusCode::OK, &ChartPage { nav: Nav::of(sess), chart, apps, profiles: profiles(s), embed: embed_src, embed_name })
}
