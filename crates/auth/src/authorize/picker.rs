//! The patient picker (a clinician's standalone launch that asks for a patient).

use super::*;

/// Patient picker submission.
pub async fn pick(State(s): State<Shared>, headers: HeaderMap, Form(p): Form<Params>) -> Response {
    let request_id = p.get("request").cloned().unwrap_or_default();
    let mut pending = match bound_request(&s, &headers, &request_id, Awaiting::Patient).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let session = match acting_user(&s, &headers, &pending).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let picker = &session.user;
    let Some(patient) = p.get("patient").filter(|v| fhir::types::is_valid_id(v)) else { return expired_request(&s) };
    match s.store.read("Patient", patient).await {
        Ok(Some(r)) if !r.deleted => {}
        Ok(_) => {
            return error_page(
                &s,
                StatusCode::BAD_REQUEST,
                "That patient was not found",
                "The chosen patient does not exist.",
                "Go back and choose another patient.",
            );
        }
        Err(e) => return internal(&s, e),
    }
    // Only a clinician chooses a patient, and only while no patient is set for the request.
    if picker.role != UserRole::Clinician || pending.patient.is_some() {
        return expired_request(&s);
    }
    pending.patient = Some(patient.clone());
    let client = match registry::get_client(s.store.as_ref(), &pending.client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => return expired_request(&s),
        Err(e) => return internal(&s, e),
    };
    proceed(&s, Some(session), &request_id, pending, &client).await
}

pub(super) async fn patient_choices(s: &Shared) -> Result<Vec<(String, String)>, store::StoreError> {
    let mut q = fhir::query::SearchQuery::new("Patient");
    q.sort.push(fhir::query::Sort { key: fhir::query::SortKey::Param { key: "Patient.family", kind: fhir::params::ParamKind::String }, descending: false });
    let keys = s.store.search(&q).await?;
    let patients = s.store.fetch(&keys[..keys.len().min(200)]).await?;
    Ok(patients.iter().map(|r| (r.id.clone(), label_of(&r.json, &r.id))).collect())
}

fn label_of(json: &str, id: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let name = &v["name"][0];
    let given = name["given"].as_array().map(|g| g.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(" ")).unwrap_or_default();
    let family = name["family"].as_str().unwrap_or("");
    let birth = v["birthDate"].as_str().unwrap_or("unknown");
    format!("{given} {family} (born {birth}, id {id})").trim().to_string()
}

pub(super) async fn patient_label(s: &Shared, id: &str) -> Option<String> {
    let r = s.store.read("Patient", id).await.ok()??;
    Some(label_of(&r.json, id))
}
