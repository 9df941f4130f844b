//! The patient portal's home: the patient's own record and their apps.

use super::*;

pub(crate) async fn portal(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let Some(sess) = session::current(&s, &headers).await else { return Redirect::to("/portal/login").into_response() };
    let Some(own) = sess.user.own_patient().map(str::to_string) else { return Redirect::to("/ehr/patients").into_response() };
    let patient = match s.store.read("Patient", &own).await {
        Ok(Some(r)) if !r.deleted => chart::patient_facts(&own, &serde_json::from_str(&r.json).unwrap_or_default(), today(&s)),
        Ok(_) => {
            return message(
                Nav::of(&sess),
                StatusCode::NOT_FOUND,
                "Your record was not found",
                "Your account is not linked to a record here.",
                "Contact the practice.",
                "/portal",
            );
        }
        Err(e) => return internal(e),
    };
    let apps = match launchable_apps(&s, true).await {
        Ok(a) => a,
        Err(e) => return internal(e),
    };
    render(StatusCode::OK, &PortalPage { nav: Nav::of(&sess), patient, apps, profiles: profiles(&s) })
}
