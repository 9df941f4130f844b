//! Consent: what the app may be granted, in plain words, the person's decision, and the code it ends in.

use super::*;

const OBSERVATION_CATEGORIES: &[(&str, &str)] = &[
    ("http://terminology.hl7.org/CodeSystem/observation-category|vital-signs", "Vital signs"),
    ("http://terminology.hl7.org/CodeSystem/observation-category|laboratory", "Laboratory results"),
    ("http://terminology.hl7.org/CodeSystem/observation-category|social-history", "Social history"),
    ("http://terminology.hl7.org/CodeSystem/observation-category|survey", "Surveys and assessments"),
    ("http://terminology.hl7.org/CodeSystem/observation-category|procedure", "Clinical tests"),
    ("http://hl7.org/fhir/us/core/CodeSystem/us-core-category|sdoh", "Social determinants of health"),
];

const CONDITION_CATEGORIES: &[(&str, &str)] = &[
    ("http://terminology.hl7.org/CodeSystem/condition-category|problem-list-item", "Problem list"),
    ("http://terminology.hl7.org/CodeSystem/condition-category|encounter-diagnosis", "Encounter diagnoses"),
    ("http://hl7.org/fhir/us/core/CodeSystem/condition-category|health-concern", "Health concerns"),
];

pub(crate) fn explain(scope: &Scope) -> String {
    match scope {
        Scope::OpenId | Scope::Profile => "Know who you are".into(),
        Scope::FhirUser => "Know your user record (who you are in the record system)".into(),
        Scope::OfflineAccess => "Keep access when you are not signed in, until you withdraw it".into(),
        Scope::OnlineAccess => "Keep access while you are signed in".into(),
        Scope::Launch => "Open with the patient and encounter you are working on".into(),
        Scope::LaunchContext { context, .. } => format!("Know which {context} is selected"),
        Scope::Resource(r) => {
            let what = match r.resource_type.as_deref() {
                Some(t) => format!("{t} records"),
                None => "all kinds of records".to_string(),
            };
            let whose = match r.level {
                smart::Level::Patient => "for this patient",
                smart::Level::User => "that you can see",
                smart::Level::System => "for every patient",
            };
            let mut verbs = Vec::new();
            for (i, v) in [
                (smart::Interaction::Read, "read"),
                (smart::Interaction::Search, "search"),
                (smart::Interaction::Create, "create"),
                (smart::Interaction::Update, "change"),
                (smart::Interaction::Delete, "delete"),
            ] {
                if r.permissions.allows(i) {
                    verbs.push(v);
                }
            }
            let only = if r.constraints.is_empty() {
                String::new()
            } else {
                format!(" (only {})", r.constraints.iter().map(|(_, v)| v.rsplit('|').next().unwrap_or(v)).collect::<Vec<_>>().join(", "))
            };
            format!("{} {what} {whose}{only}", capitalise(&verbs.join(", ")))
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

fn categories_for(resource_type: Option<&str>) -> &'static [(&'static str, &'static str)] {
    match resource_type {
        Some("Observation") => OBSERVATION_CATEGORIES,
        Some("Condition") => CONDITION_CATEGORIES,
        _ => &[],
    }
}

/// What may be granted to this user through this app: requested ∩ the app's allowance, and for patient
/// users only patient-level resource scopes (their `user/` access would be every record; `system/` is for
/// backend services only).
pub(crate) fn grantable(client: &Client, user: &User, requested: &str) -> ScopeSet {
    let mut granted = ScopeSet::parse(&client.allowed_scope).narrow(&ScopeSet::parse(requested));
    let patient_user = user.role == UserRole::Patient;
    granted.scopes.retain(|s| match s {
        Scope::Resource(r) => r.level == smart::Level::Patient || (r.level == smart::Level::User && !patient_user),
        _ => true,
    });
    match &user.rights {
        Some(rights) => within_rights(&ScopeSet::parse(rights), &granted),
        None => granted,
    }
}

/// What of `granted` a user's rights allow: each resource scope narrowed by the rights at its own level
/// (the rights' level does not matter: they say which types and actions the person may reach); a
/// wildcard grant becomes the types the rights name. Other scopes (`openid`, `launch`, ...) stay.
pub(crate) fn within_rights(rights: &ScopeSet, granted: &ScopeSet) -> ScopeSet {
    let mut out = ScopeSet::default();
    for sc in &granted.scopes {
        let Scope::Resource(g) = sc else {
            out.scopes.push(sc.clone());
            continue;
        };
        for r in rights.resource_scopes() {
            let right = smart::ResourceScope { level: g.level, ..r.clone() };
            let asked = match (&g.resource_type, &r.resource_type) {
                (None, Some(t)) => smart::ResourceScope { resource_type: Some(t.clone()), ..g.clone() },
                _ => g.clone(),
            };
            if let Some(n) = right.narrow(&asked)
                && !out.scopes.contains(&Scope::Resource(n.clone()))
            {
                out.scopes.push(Scope::Resource(n));
            }
        }
    }
    out
}

pub(super) fn consent_items(granted: &ScopeSet) -> Vec<ConsentItem> {
    granted
        .scopes
        .iter()
        .map(|sc| {
            let categories = match sc {
                Scope::Resource(r) if r.constraints.is_empty() => {
                    categories_for(r.resource_type.as_deref()).iter().map(|(v, l)| (v.to_string(), l.to_string())).collect()
                }
                _ => Vec::new(),
            };
            ConsentItem { scope: sc.to_string(), explanation: explain(sc), optional: matches!(sc, Scope::Resource(_)), categories }
        })
        .collect()
}

/// Consent submission: the ticked scopes (with category sub-scopes in place of whole types), or a denial.
pub async fn consent(State(s): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    // Repeated fields (`scope`, `category`) need the raw pairs.
    let Some(pairs) = crate::token::request::form_pairs(&body) else { return unreadable_form(&s) };
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let request_id = get("request").unwrap_or_default();
    let pending = match bound_request(&s, &headers, &request_id, Awaiting::Consent).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    // The decision is the signed-in user's own, or nobody's: it is what the remembered consent records.
    let session = match acting_user(&s, &headers, &pending).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let user = &session.user;
    // Single use: of two posts of one form, only the first decides.
    match s.store.auth_consume(REQUEST_KIND, &token_hash(&request_id)).await {
        Ok(Some(r)) if !r.used => {}
        Ok(_) => return expired_request(&s),
        Err(e) => return internal(&s, e),
    }
    if get("decision").as_deref() != Some("allow") {
        tracing::info!(client = %pending.client_id, user = %user.username, "consent denied");
        s.audit("consent")
            .launch(pending.launch_id())
            .client(pending.client_id.as_str())
            .user(user.username.as_str())
            .patient(pending.patient.as_deref())
            .refused()
            .record("the user denied access");
        return redirect_error(
            &s,
            pending.launch.as_ref().and_then(|l| l.id.as_deref()),
            &pending.redirect_uri,
            pending.state.as_deref(),
            pending.profile.as_ref(),
            &s.config.issuer_for(&pending.profile.clone().unwrap_or_default()),
            super::request::Refusal::new(ErrorCode::AccessDenied, "the user did not allow access"),
        );
    }
    let client = match registry::get_client(s.store.as_ref(), &pending.client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => return expired_request(&s),
        Err(e) => return internal(&s, e),
    };
    let granted = grantable(&client, user, &pending.scope);
    let ticked: Vec<String> = pairs.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.clone()).collect();
    let categories: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k == "category")
        .filter_map(|(_, v)| {
            // "<scope>|<system>|<code>": the scope is everything before the category's system.
            let (scope, rest) = v.split_once('|')?;
            Some((scope.to_string(), rest.to_string()))
        })
        .collect();
    let mut approved: Vec<String> = Vec::new();
    for sc in &granted.scopes {
        let text = sc.to_string();
        match sc {
            Scope::Resource(r) => {
                if !ticked.contains(&text) {
                    continue;
                }
                // Only the offered category codes are accepted: the value becomes part of a scope.
                let offered = categories_for(r.resource_type.as_deref());
                let chosen: Vec<&String> = categories.iter().filter(|(s, c)| *s == text && offered.iter().any(|(v, _)| v == c)).map(|(_, c)| c).collect();
                if chosen.is_empty() || !r.constraints.is_empty() {
                    approved.push(text);
                } else {
                    for c in chosen {
                        let mut narrowed = r.clone();
                        narrowed.v1 = false;
                        narrowed.constraints = vec![("category".into(), c.clone())];
                        approved.push(narrowed.to_string());
                    }
                }
            }
            _ => approved.push(text),
        }
    }
    let scope = approved.join(" ");
    let decision = crate::grants::ConsentDecision { offered: granted.to_string(), approved: scope.clone(), at: Some(s.now_ms()) };
    if let Err(e) = crate::grants::remember_consent(s.store.as_ref(), &user.username, &client.client_id, &decision).await {
        return internal(&s, e);
    }
    tracing::info!(client = %client.client_id, user = %user.username, "consent given");
    s.audit("consent")
        .launch(pending.launch_id())
        .client(client.client_id.as_str())
        .user(user.username.as_str())
        .patient(pending.patient.as_deref())
        .record(format!("approved: {scope}"));
    issue_code(&s, pending, &session, scope).await
}

pub(super) async fn issue_code(s: &Shared, pending: PendingAuthorization, session: &Session, approved: String) -> Response {
    let user = &session.user;
    let code = crate::crypto::ordered_token(s.now_ms());
    let profile = pending.profile.clone().unwrap_or_default();
    let faults = pending.launch.as_ref().map(|l| l.faults.clone()).unwrap_or_default();
    let scope = crate::profile::shape_granted(s.config.profiles.rules(&profile), &faults, &approved);
    let trace = pending.launch.as_ref().and_then(|l| l.id.clone());
    if !faults.deny.is_empty() {
        s.audit("consent")
            .launch(trace.as_deref())
            .client(pending.client_id.as_str())
            .user(user.username.as_str())
            .patient(pending.patient.as_deref())
            .record(format!("injected fault: the user denied {}", faults.deny.join(", ")));
    }
    let mut grant = Grant {
        grant_id: uuid::Uuid::now_v7().to_string(),
        client_id: pending.client_id.clone(),
        scope,
        username: Some(user.username.clone()),
        fhir_user: Some(user.fhir_user.clone()),
        patient: pending.patient.clone(),
        encounter: pending.launch.as_ref().and_then(|l| l.encounter.clone()),
        launch: pending.launch.clone(),
        nonce: pending.nonce.clone(),
        redirect_uri: Some(pending.redirect_uri.clone()),
        state: pending.state.clone(),
        code_challenge: Some(pending.code_challenge.clone()),
        expires: None,
        revoke_at: None,
        profile: Some(profile),
        session: None,
    };
    let granted = ScopeSet::parse(&grant.scope);
    if granted.contains(&Scope::OnlineAccess) && !granted.contains(&Scope::OfflineAccess) {
        // Online access lasts while the user is signed in (SMART App Launch): its refresh token is tied
        // to this sign-in, and stops working when it ends.
        grant.session = Some(session.key.clone());
    }
    let value = match serde_json::to_string(&grant) {
        Ok(v) => v,
        Err(e) => return internal(s, e),
    };
    let expires = s.now_ms() + s.config.code_secs * 1000;
    if let Err(e) = s.store.auth_put("code", &crate::crypto::token_key(&code), &value, Some(&grant.grant_id), Some(expires)).await {
        return internal(s, e);
    }
    let role = match user.role {
        UserRole::Clinician => "clinician",
        UserRole::Patient => "patient",
    };
    tracing::info!(client = %grant.client_id, user = %user.username, role, patient = ?grant.patient, "authorisation code issued");
    s.audit("code")
        .launch(trace.as_deref())
        .client(grant.client_id.as_str())
        .user(user.username.as_str())
        .patient(grant.patient.as_deref())
        .record(format!("code issued (lives {} s) for scope: {}", s.config.code_secs, grant.scope));
    let Ok(mut url) = url::Url::parse(&pending.redirect_uri) else { return internal(s, "stored redirect URI no longer parses") };
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("code", &code);
        if let Some(st) = &pending.state {
            q.append_pair("state", st);
        }
        q.append_pair("iss", &s.config.issuer_for(&grant.profile()));
    }
    Redirect::to(url.as_str()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(rights: &str, granted: &str) -> String {
        within_rights(&ScopeSet::parse(rights), &ScopeSet::parse(granted)).to_string()
    }

    #[test]
    fn a_users_rights_bound_what_any_app_is_granted() {
        let desk = "user/Patient.rs user/Appointment.rs";
        // A wildcard becomes the types the rights name, at the grant's own level.
        assert_eq!(within(desk, "openid launch patient/*.rs"), "openid launch patient/Patient.rs patient/Appointment.rs");
        assert_eq!(within(desk, "user/*.cruds"), "user/Patient.rs user/Appointment.rs");
        // A named type outside the rights is gone; inside them, the common actions stay.
        assert_eq!(within(desk, "user/Observation.rs user/Patient.r"), "user/Patient.r");
        // Write rights for one type only: reading everything, writing Observations.
        let nurse = "user/*.rs user/Observation.c";
        assert_eq!(within(nurse, "patient/*.cruds"), "patient/*.rs patient/Observation.c");
        assert_eq!(within(nurse, "user/Condition.cu"), "");
        // Granular constraints survive.
        assert_eq!(within(nurse, "patient/Observation.rs?category=vital-signs"), "patient/Observation.rs?category=vital-signs");
        // Wildcards in the rights; v1 grants.
        assert_eq!(within("user/*.rs", "patient/*.read patient/Condition.write"), "patient/*.read");
        assert_eq!(within(desk, "patient/*.*"), "patient/Patient.read patient/Appointment.read", "a v1 grant stays v1");
    }
}
