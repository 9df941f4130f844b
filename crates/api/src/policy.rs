//! The FHIR access policy: what a token's grants allow, decided without looking anything up.
//!
//! `patient/` scopes confine to the context patient's compartment (resources of types outside any
//! compartment, such as Medication, are readable when their type is granted, never written); `user/` and
//! `system/` scopes act on every resource of the type; `?param=value` constraints (granular scopes) filter
//! searches and refuse non-matching reads. The `fhirUser` resource is always readable. Every function here
//! is pure: [`crate::access`] wires them to requests, and asks the store the one question a rule may leave
//! open (whether a stored resource is in the patient's compartment, [`Verdict::Probe`]).

use crate::access::TokenAccess;
use fhir::params;
use fhir::query::{Filter, ParseOptions, SearchQuery};
use serde_json::Value;
use smart::{Interaction, Level};
use std::borrow::Cow;

/// Why the policy refuses: a sentence for the OperationOutcome (HTTP 403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn denied(message: impl Into<String>) -> Denied {
    Denied(message.into())
}

fn verb(i: Interaction) -> &'static str {
    match i {
        Interaction::Create => "create",
        Interaction::Read => "read",
        Interaction::Update => "update",
        Interaction::Delete => "delete",
        Interaction::Search => "search",
    }
}

/// A resource to judge: already parsed (about to be written) or as stored (parsed only when a constraint
/// or a compartment must be read from it, so unconstrained grants cost no JSON parsing).
#[derive(Clone, Copy)]
pub enum Content<'a> {
    /// About to be written.
    Parsed(&'a Value),
    /// As stored (JSON text).
    Stored(&'a str),
}

impl Content<'_> {
    fn value(&self) -> Option<Cow<'_, Value>> {
        match self {
            Content::Parsed(v) => Some(Cow::Borrowed(*v)),
            Content::Stored(s) => serde_json::from_str(s).ok().map(Cow::Owned),
        }
    }
}

/// How the compartment question is answered when a resource is judged.
#[derive(Clone, Copy, Debug)]
pub enum Compartment {
    /// From the content itself (a past version, or a resource about to be written).
    Content,
    /// From the current version's index rows, which the caller looks up when told to
    /// ([`Verdict::Probe`]).
    Ask,
    /// Already looked up.
    Known(bool),
}

/// What judging a resource needs, short of refusing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The interaction may happen.
    Allowed,
    /// The answer depends on whether the stored resource is in the context patient's compartment: ask
    /// the store, and decide again with [`Compartment::Known`].
    Probe,
}

/// Types outside every patient compartment that patient-level tokens may read: the practitioners,
/// organisations, locations and medications that records point to, and terminology-like resources.
/// Any other type outside a compartment is refused to patient-level tokens.
pub fn is_shared_type(resource_type: &str) -> bool {
    matches!(
        resource_type,
        "Practitioner"
            | "PractitionerRole"
            | "Organization"
            | "Location"
            | "Medication"
            | "HealthcareService"
            | "Endpoint"
            | "Substance"
            | "Questionnaire"
            | "ValueSet"
            | "CodeSystem"
            | "StructureDefinition"
    )
}

/// Whether content written (or deleted) with a patient-level token belongs to `patient`: its `patient`
/// search parameter (the subject/patient element) points to them, and no element of it points to any
/// other patient (a performer, author or participant `Patient/B` would put it in B's compartment).
fn written_for_patient(resource_type: &str, v: &Value, patient: &str, base: &str) -> bool {
    let Ok(rows) = fhir::extract::extract(resource_type, v, Some(base)) else { return false };
    if !names_no_other_patient(&rows, patient) {
        return false;
    }
    match params::find(resource_type, "patient") {
        Some(p) => {
            let targets: Vec<&fhir::extract::ReferenceRow> =
                rows.references.iter().filter(|r| r.key == p.index_key && r.target_type.as_deref() == Some("Patient")).collect();
            !targets.is_empty() && targets.iter().all(|r| r.target_id.as_deref() == Some(patient) && r.url.is_none())
        }
        None => !rows.patient_compartments.is_empty() && rows.patient_compartments.iter().all(|p| p == patient),
    }
}

/// Whether every patient the content points to (in any reference) is `patient`.
fn names_no_other_patient(rows: &fhir::extract::IndexRows, patient: &str) -> bool {
    rows.referenced_patients.iter().all(|p| p == patient)
}

/// Whether this content (one version of a resource) is in `patient`'s compartment.
fn content_in_compartment(resource_type: &str, v: &Value, patient: &str, base: &str) -> bool {
    fhir::extract::extract(resource_type, v, Some(base)).is_ok_and(|rows| rows.patient_compartments.iter().any(|p| p == patient))
}

/// Whether `resource` satisfies one of the constraint sets (each a list of `param=value` that must all hold).
fn matches_constraints(resource_type: &str, resource: &Value, sets: &[Vec<(String, String)>], base: &str) -> bool {
    let Ok(rows) = fhir::extract::extract(resource_type, resource, Some(base)) else { return false };
    sets.iter().any(|set| {
        set.iter().all(|(name, value)| {
            let Some(p) = params::find(resource_type, name) else { return false };
            let (system, code) = match value.split_once('|') {
                Some((s, c)) => (Some(s), c),
                None => (None, value.as_str()),
            };
            rows.tokens.iter().any(|t| {
                t.key == p.index_key
                    && t.code.as_deref() == Some(code)
                    && system.is_none_or(|s| (s.is_empty() && t.system.is_none()) || t.system.as_deref() == Some(s))
            })
        })
    })
}

/// May `interaction` happen on this resource (`resource_type/id`, as stored or as about to be written)?
/// `base` is the server's FHIR base (absolute references to it are local). [`Verdict::Probe`] only with
/// [`Compartment::Ask`].
pub fn decide(
    t: &TokenAccess,
    base: &str,
    interaction: Interaction,
    resource_type: &str,
    id: &str,
    compartment: Compartment,
    content: Content<'_>,
) -> Result<Verdict, Denied> {
    if interaction == Interaction::Read && t.fhir_user.as_deref() == Some(&format!("{resource_type}/{id}")) {
        return Ok(Verdict::Allowed);
    }
    for level in [Level::System, Level::User] {
        if let Some(sets) = t.scopes.access(level, resource_type, interaction)
            && (sets.is_empty() || content.value().is_some_and(|v| matches_constraints(resource_type, &v, &sets, base)))
        {
            return Ok(Verdict::Allowed);
        }
    }
    if let Some(sets) = t.scopes.access(Level::Patient, resource_type, interaction) {
        let Some(patient) = t.patient.as_deref() else {
            return Err(denied("patient-level scopes need a patient in context"));
        };
        let writing = matches!(interaction, Interaction::Create | Interaction::Update | Interaction::Delete);
        let in_compartment = if resource_type == "Patient" {
            // A patient's own record may not be written to point at another patient either (a
            // `link.other` would put it in that patient's compartment).
            id == patient
                && (!writing
                    || content
                        .value()
                        .is_some_and(|v| fhir::extract::extract(resource_type, &v, Some(base)).is_ok_and(|rows| names_no_other_patient(&rows, patient))))
        } else if is_shared_type(resource_type) {
            // Reference data every record points to: readable, never written with patient scopes.
            !writing
        } else if !params::in_patient_compartment(resource_type) {
            false
        } else if writing {
            // Content written or deleted must be about the context patient (its subject/patient
            // element), not merely mention them as performer or author, and mention no other patient.
            content.value().is_some_and(|v| written_for_patient(resource_type, &v, patient, base))
        } else {
            match compartment {
                Compartment::Known(inside) => inside,
                Compartment::Ask => return Ok(Verdict::Probe),
                Compartment::Content => content.value().is_some_and(|v| content_in_compartment(resource_type, &v, patient, base)),
            }
        };
        if in_compartment && (sets.is_empty() || content.value().is_some_and(|v| matches_constraints(resource_type, &v, &sets, base))) {
            return Ok(Verdict::Allowed);
        }
        return Err(denied(format!("the granted scopes do not allow {} of this {resource_type}", verb(interaction))));
    }
    Err(denied(format!("no granted scope allows {} of {resource_type}", verb(interaction))))
}

/// Whether every result of a search of `resource_type` narrowed by [`restrict_search`] may be read
/// without another look: the token's read grants for the type are its search grants, so the compartment
/// and constraint filters the query carried are the read rules. Not for `Patient`, where a patient-level
/// read reaches only the context patient's own record while their compartment also holds records that
/// link to it.
pub fn search_implies_read(t: &TokenAccess, resource_type: &str) -> bool {
    resource_type != "Patient"
        && [Level::System, Level::User, Level::Patient]
            .iter()
            .all(|l| t.scopes.access(*l, resource_type, Interaction::Search) == t.scopes.access(*l, resource_type, Interaction::Read))
}

/// Narrows a search of `q.resource_type` to what the token may see, or refuses it. `now_ms` is the time
/// relative dates in a constraint would be read against.
pub fn restrict_search(t: &TokenAccess, base: &str, now_ms: i64, q: &mut SearchQuery) -> Result<(), Denied> {
    // A chain or `_has` searches another type: it is held to what the token may search there, so that
    // it never tells about resources the token could not find directly.
    for f in q.filters.iter_mut() {
        if let Some((inner_type, filters)) = f.inner_mut() {
            let mut inner = SearchQuery::new(inner_type);
            inner.filters = std::mem::take(filters);
            restrict_search(t, base, now_ms, &mut inner).map_err(|e| denied(format!("a chained or _has search of {inner_type}: {e}")))?;
            *filters = inner.filters;
        }
    }
    let ty = q.resource_type.clone();
    for level in [Level::System, Level::User] {
        if let Some(sets) = t.scopes.access(level, &ty, Interaction::Search) {
            return add_constraint_filter(base, now_ms, q, &sets);
        }
    }
    if let Some(sets) = t.scopes.access(Level::Patient, &ty, Interaction::Search) {
        let Some(patient) = t.patient.clone() else {
            return Err(denied("patient-level scopes need a patient in context"));
        };
        if ty == "Patient" {
            // The Patient compartment also holds the records that link to the patient, which a
            // patient-level read refuses: the search is held to what the token may read (its patient,
            // and its user's own record), so that neither a page, its total, nor a chain through
            // Patient tells about the others.
            let mut ids = vec![patient];
            if let Some(own) = t.fhir_user.as_deref().and_then(|u| u.strip_prefix("Patient/"))
                && !ids.iter().any(|i| i == own)
            {
                ids.push(own.to_string());
            }
            q.filters.push(Filter::Ids { resource_type: "Patient".into(), ids });
        } else if params::in_patient_compartment(&ty) {
            q.filters.push(Filter::PatientCompartment(patient));
        } else if !is_shared_type(&ty) {
            return Err(denied(format!("{ty} is outside the patient's record; patient-level scopes cannot search it")));
        }
        return add_constraint_filter(base, now_ms, q, &sets);
    }
    Err(denied(format!("no granted scope allows searching {ty}")))
}

/// Granular scopes become one token filter when they all constrain the same single parameter (the shape
/// SMART uses, e.g. several `?category=` grants); other shapes are refused rather than half-enforced.
fn add_constraint_filter(base: &str, now_ms: i64, q: &mut SearchQuery, sets: &[Vec<(String, String)>]) -> Result<(), Denied> {
    if sets.is_empty() {
        return Ok(());
    }
    let name = &sets[0].first().map(|(n, _)| n.clone()).unwrap_or_default();
    if !sets.iter().all(|s| s.len() == 1 && &s[0].0 == name) {
        return Err(denied("these granular scopes combine several parameters; search each granted subset separately"));
    }
    // Only what a read can check too: a plain token parameter (no modifier, no result parameter).
    if params::find(&q.resource_type, name).is_none_or(|p| p.kind != params::ParamKind::Token) {
        return Err(denied(format!("the granted scope constraint '{name}' is not a token search parameter of {}; it cannot be enforced", q.resource_type)));
    }
    let values: Vec<String> = sets.iter().map(|s| s[0].1.replace(',', "\\,")).collect();
    let pairs = vec![(name.clone(), values.join(","))];
    let parsed = fhir::query::parse(&q.resource_type, &pairs, ParseOptions { lenient: false, base: Some(base), now_ms })
        .map_err(|e| denied(format!("a granted scope constraint cannot be applied: {e}")))?;
    q.filters.extend(parsed.filters);
    Ok(())
}

/// The context patient when `resource_type` is reachable for `interaction` only through patient-level
/// scopes (no `user/` or `system/` grant): a compartment search of another patient is then refused before
/// anything is looked up, so that its answer does not tell whether that patient exists.
pub fn patient_only<'t>(t: &'t TokenAccess, resource_type: &str, interaction: Interaction) -> Option<Option<&'t str>> {
    if [Level::System, Level::User].iter().any(|l| t.scopes.access(*l, resource_type, interaction).is_some()) {
        return None;
    }
    Some(t.patient.as_deref())
}

/// A patient-level token reading (or deleting...) another patient's Patient record is refused before the
/// lookup, so that 403 and 404 do not tell whether that patient exists (its own fhirUser record excepted).
pub fn check_patient_id(t: &TokenAccess, resource_type: &str, id: &str, interaction: Interaction) -> Result<(), Denied> {
    if resource_type != "Patient" || t.fhir_user.as_deref() == Some(&format!("Patient/{id}")) {
        return Ok(());
    }
    match patient_only(t, "Patient", interaction) {
        Some(own) if own != Some(id) => Err(denied("patient-level scopes reach only the patient in context")),
        _ => Ok(()),
    }
}

/// Interactions on resources not known in advance (conditional update or delete) need an unconstrained
/// user/ or system/ scope for the type.
pub fn check_type_wide(t: &TokenAccess, resource_type: &str, interaction: Interaction) -> Result<(), Denied> {
    if [Level::System, Level::User].iter().any(|l| t.scopes.access(*l, resource_type, interaction).is_some_and(|sets| sets.is_empty())) {
        return Ok(());
    }
    Err(denied(format!("{} of {resource_type} by criteria needs an unconstrained user/ or system/ scope", verb(interaction))))
}

/// Whether any scope at all allows `interaction` on the type (for deleting what is already gone).
pub fn check_any(t: &TokenAccess, resource_type: &str, interaction: Interaction) -> Result<(), Denied> {
    if [Level::System, Level::User, Level::Patient].iter().any(|l| t.scopes.access(*l, resource_type, interaction).is_some()) {
        Ok(())
    } else {
        Err(denied(format!("no granted scope allows {} of {resource_type}", verb(interaction))))
    }
}

/// History across many resources (of one type, or of all with `None`) is only for user- and system-level
/// search grants.
pub fn check_history(t: &TokenAccess, resource_type: Option<&str>) -> Result<(), Denied> {
    let ty = resource_type.unwrap_or("*");
    let allowed = [Level::System, Level::User].iter().any(|l| {
        t.scopes.resource_scopes().any(|s| {
            s.level == *l
                && s.constraints.is_empty()
                && s.permissions.allows(Interaction::Search)
                && (s.resource_type.is_none() || s.resource_type.as_deref() == Some(ty))
        })
    });
    if allowed { Ok(()) } else { Err(denied("history across resources needs an unconstrained user/ or system/ search scope")) }
}

#[cfg(test)]
mod tests;
