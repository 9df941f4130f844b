//! The search parameters this server supports: a hand-written table of the US Core parameters for each
//! supported resource type, with simple element paths (see [`crate::extract`] for the path syntax).

use std::collections::HashMap;
use std::sync::OnceLock;

/// A search parameter's type (FHIR R4 §3.1.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// `string`.
    String,
    /// `token`.
    Token,
    /// `reference`.
    Reference,
    /// `date`.
    Date,
    /// `quantity`.
    Quantity,
    /// `number`.
    Number,
    /// `uri`.
    Uri,
}

impl ParamKind {
    /// The FHIR name of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamKind::String => "string",
            ParamKind::Token => "token",
            ParamKind::Reference => "reference",
            ParamKind::Date => "date",
            ParamKind::Quantity => "quantity",
            ParamKind::Number => "number",
            ParamKind::Uri => "uri",
        }
    }
}

/// One search parameter of one resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchParam {
    /// The resource type it belongs to.
    pub resource: &'static str,
    /// Its name in a query (`patient`, `code`...).
    pub name: &'static str,
    /// Its type.
    pub kind: ParamKind,
    /// Alternatives separated by `|`; each a dotted path from the resource root, where a step may carry a
    /// filter `step[field=value]`.
    pub paths: &'static str,
    /// For reference parameters: the resource types the reference may point to (`None` = any).
    pub targets: Option<&'static [&'static str]>,
    /// `Type.name`.
    pub key: std::string::String,
    /// The key under which this parameter's index rows are stored. A reference parameter that reads the
    /// same element as a broader one and allows a single target type (Observation `patient` beside
    /// `subject`) shares the broader one's rows, filtered by that type, so they are written only once.
    pub index_key: std::string::String,
}

impl SearchParam {
    /// The target type a query must add when this parameter shares another's index rows.
    pub fn shared_target(&self) -> Option<&'static str> {
        if self.index_key != self.key { self.targets.map(|t| t[0]) } else { None }
    }
}

use ParamKind::*;

const PATIENT: &[&str] = &["Patient"];
const PRACTITIONER_LIKE: &[&str] = &["Practitioner", "PractitionerRole", "Organization", "Patient", "RelatedPerson", "Device"];

type Row = (&'static str, &'static str, ParamKind, &'static str, Option<&'static [&'static str]>);

/// Clinical resources whose subject is a patient share these parameter shapes.
///
/// Adding or changing a row (or a compartment rule below) changes the index rows of that type: stored
/// resources keep their old rows until a migration lists the type in `reindex_pending`, which the store
/// drains when it opens (see the store's migrations).
#[rustfmt::skip]
const TABLE: &[Row] = &[
    // Patient
    ("Patient", "identifier", Token, "identifier", None),
    ("Patient", "name", String, "name", None),
    ("Patient", "family", String, "name.family", None),
    ("Patient", "given", String, "name.given", None),
    ("Patient", "birthdate", Date, "birthDate", None),
    ("Patient", "gender", Token, "gender", None),
    ("Patient", "active", Token, "active", None),
    ("Patient", "address", String, "address", None),
    ("Patient", "address-city", String, "address.city", None),
    ("Patient", "address-state", String, "address.state", None),
    ("Patient", "address-postalcode", String, "address.postalCode", None),
    ("Patient", "telecom", Token, "telecom", None),
    ("Patient", "phone", Token, "telecom[system=phone]", None),
    ("Patient", "email", Token, "telecom[system=email]", None),
    ("Patient", "death-date", Date, "deceasedDateTime", None),
    ("Patient", "general-practitioner", Reference, "generalPractitioner", Some(&["Practitioner", "PractitionerRole", "Organization"])),
    ("Patient", "organization", Reference, "managingOrganization", Some(&["Organization"])),
    // Practitioner
    ("Practitioner", "identifier", Token, "identifier", None),
    ("Practitioner", "name", String, "name", None),
    ("Practitioner", "family", String, "name.family", None),
    ("Practitioner", "given", String, "name.given", None),
    ("Practitioner", "active", Token, "active", None),
    ("Practitioner", "telecom", Token, "telecom", None),
    // PractitionerRole
    ("PractitionerRole", "identifier", Token, "identifier", None),
    ("PractitionerRole", "practitioner", Reference, "practitioner", Some(&["Practitioner"])),
    ("PractitionerRole", "organization", Reference, "organization", Some(&["Organization"])),
    ("PractitionerRole", "location", Reference, "location", Some(&["Location"])),
    ("PractitionerRole", "specialty", Token, "specialty", None),
    ("PractitionerRole", "role", Token, "code", None),
    ("PractitionerRole", "active", Token, "active", None),
    ("PractitionerRole", "endpoint", Reference, "endpoint", Some(&["Endpoint"])),
    // Organization
    ("Organization", "identifier", Token, "identifier", None),
    ("Organization", "name", String, "name|alias", None),
    ("Organization", "address", String, "address", None),
    ("Organization", "active", Token, "active", None),
    ("Organization", "type", Token, "type", None),
    ("Organization", "partof", Reference, "partOf", Some(&["Organization"])),
    // Location
    ("Location", "identifier", Token, "identifier", None),
    ("Location", "name", String, "name|alias", None),
    ("Location", "address", String, "address", None),
    ("Location", "address-city", String, "address.city", None),
    ("Location", "address-state", String, "address.state", None),
    ("Location", "address-postalcode", String, "address.postalCode", None),
    ("Location", "organization", Reference, "managingOrganization", Some(&["Organization"])),
    ("Location", "type", Token, "type", None),
    ("Location", "status", Token, "status", None),
    // Encounter
    ("Encounter", "identifier", Token, "identifier", None),
    ("Encounter", "patient", Reference, "subject", Some(PATIENT)),
    ("Encounter", "subject", Reference, "subject", Some(&["Patient", "Group"])),
    ("Encounter", "date", Date, "period", None),
    ("Encounter", "status", Token, "status", None),
    ("Encounter", "class", Token, "class", None),
    ("Encounter", "type", Token, "type", None),
    ("Encounter", "location", Reference, "location.location", Some(&["Location"])),
    ("Encounter", "participant", Reference, "participant.individual", Some(&["Practitioner", "PractitionerRole", "RelatedPerson"])),
    ("Encounter", "practitioner", Reference, "participant.individual", Some(&["Practitioner"])),
    ("Encounter", "service-provider", Reference, "serviceProvider", Some(&["Organization"])),
    ("Encounter", "reason-code", Token, "reasonCode", None),
    ("Encounter", "length", Quantity, "length", None),
    ("Encounter", "discharge-disposition", Token, "hospitalization.dischargeDisposition", None),
    // Condition
    ("Condition", "identifier", Token, "identifier", None),
    ("Condition", "patient", Reference, "subject", Some(PATIENT)),
    ("Condition", "subject", Reference, "subject", Some(&["Patient", "Group"])),
    ("Condition", "category", Token, "category", None),
    ("Condition", "clinical-status", Token, "clinicalStatus", None),
    ("Condition", "verification-status", Token, "verificationStatus", None),
    ("Condition", "code", Token, "code", None),
    ("Condition", "onset-date", Date, "onsetDateTime|onsetPeriod", None),
    ("Condition", "abatement-date", Date, "abatementDateTime|abatementPeriod", None),
    ("Condition", "recorded-date", Date, "recordedDate", None),
    ("Condition", "asserted-date", Date, "extension[url=http://hl7.org/fhir/StructureDefinition/condition-assertedDate].valueDateTime", None),
    ("Condition", "encounter", Reference, "encounter", Some(&["Encounter"])),
    // Observation
    ("Observation", "identifier", Token, "identifier", None),
    ("Observation", "patient", Reference, "subject", Some(PATIENT)),
    ("Observation", "subject", Reference, "subject", Some(&["Patient", "Group", "Device", "Location"])),
    ("Observation", "category", Token, "category", None),
    ("Observation", "code", Token, "code", None),
    ("Observation", "date", Date, "effectiveDateTime|effectivePeriod|effectiveInstant", None),
    ("Observation", "status", Token, "status", None),
    ("Observation", "encounter", Reference, "encounter", Some(&["Encounter"])),
    ("Observation", "performer", Reference, "performer", Some(PRACTITIONER_LIKE)),
    ("Observation", "value-quantity", Quantity, "valueQuantity", None),
    ("Observation", "value-concept", Token, "valueCodeableConcept", None),
    ("Observation", "value-string", String, "valueString", None),
    ("Observation", "component-code", Token, "component.code", None),
    ("Observation", "component-value-quantity", Quantity, "component.valueQuantity", None),
    ("Observation", "based-on", Reference, "basedOn", None),
    ("Observation", "derived-from", Reference, "derivedFrom", None),
    ("Observation", "has-member", Reference, "hasMember", None),
    // MedicationRequest
    ("MedicationRequest", "identifier", Token, "identifier", None),
    ("MedicationRequest", "patient", Reference, "subject", Some(PATIENT)),
    ("MedicationRequest", "subject", Reference, "subject", Some(&["Patient", "Group"])),
    ("MedicationRequest", "status", Token, "status", None),
    ("MedicationRequest", "intent", Token, "intent", None),
    ("MedicationRequest", "authoredon", Date, "authoredOn", None),
    ("MedicationRequest", "encounter", Reference, "encounter", Some(&["Encounter"])),
    ("MedicationRequest", "medication", Reference, "medicationReference", Some(&["Medication"])),
    ("MedicationRequest", "code", Token, "medicationCodeableConcept", None),
    ("MedicationRequest", "requester", Reference, "requester", Some(PRACTITIONER_LIKE)),
    ("MedicationRequest", "category", Token, "category", None),
    // Medication
    ("Medication", "identifier", Token, "identifier", None),
    ("Medication", "code", Token, "code", None),
    ("Medication", "status", Token, "status", None),
    ("Medication", "form", Token, "form", None),
    ("Medication", "ingredient-code", Token, "ingredient.itemCodeableConcept", None),
    // AllergyIntolerance
    ("AllergyIntolerance", "identifier", Token, "identifier", None),
    ("AllergyIntolerance", "patient", Reference, "patient", Some(PATIENT)),
    ("AllergyIntolerance", "clinical-status", Token, "clinicalStatus", None),
    ("AllergyIntolerance", "verification-status", Token, "verificationStatus", None),
    ("AllergyIntolerance", "code", Token, "code|reaction.substance", None),
    ("AllergyIntolerance", "category", Token, "category", None),
    ("AllergyIntolerance", "criticality", Token, "criticality", None),
    ("AllergyIntolerance", "type", Token, "type", None),
    ("AllergyIntolerance", "date", Date, "recordedDate", None),
    ("AllergyIntolerance", "onset", Date, "reaction.onset", None),
    // Immunization
    ("Immunization", "identifier", Token, "identifier", None),
    ("Immunization", "patient", Reference, "patient", Some(PATIENT)),
    ("Immunization", "date", Date, "occurrenceDateTime", None),
    ("Immunization", "status", Token, "status", None),
    ("Immunization", "vaccine-code", Token, "vaccineCode", None),
    ("Immunization", "location", Reference, "location", Some(&["Location"])),
    ("Immunization", "performer", Reference, "performer.actor", Some(PRACTITIONER_LIKE)),
    ("Immunization", "lot-number", String, "lotNumber", None),
    // Procedure
    ("Procedure", "identifier", Token, "identifier", None),
    ("Procedure", "patient", Reference, "subject", Some(PATIENT)),
    ("Procedure", "subject", Reference, "subject", Some(&["Patient", "Group"])),
    ("Procedure", "date", Date, "performedDateTime|performedPeriod", None),
    ("Procedure", "code", Token, "code", None),
    ("Procedure", "status", Token, "status", None),
    ("Procedure", "encounter", Reference, "encounter", Some(&["Encounter"])),
    ("Procedure", "performer", Reference, "performer.actor", Some(PRACTITIONER_LIKE)),
    ("Procedure", "reason-code", Token, "reasonCode", None),
    ("Procedure", "category", Token, "category", None),
    // DiagnosticReport
    ("DiagnosticReport", "identifier", Token, "identifier", None),
    ("DiagnosticReport", "patient", Reference, "subject", Some(PATIENT)),
    ("DiagnosticReport", "subject", Reference, "subject", Some(&["Patient", "Group", "Device", "Location"])),
    ("DiagnosticReport", "category", Token, "category", None),
    ("DiagnosticReport", "code", Token, "code", None),
    ("DiagnosticReport", "date", Date, "effectiveDateTime|effectivePeriod", None),
    ("DiagnosticReport", "issued", Date, "issued", None),
    ("DiagnosticReport", "status", Token, "status", None),
    ("DiagnosticReport", "encounter", Reference, "encounter", Some(&["Encounter"])),
    ("DiagnosticReport", "result", Reference, "result", Some(&["Observation"])),
    ("DiagnosticReport", "performer", Reference, "performer", Some(PRACTITIONER_LIKE)),
    ("DiagnosticReport", "based-on", Reference, "basedOn", None),
    // DocumentReference
    ("DocumentReference", "identifier", Token, "identifier|masterIdentifier", None),
    ("DocumentReference", "patient", Reference, "subject", Some(PATIENT)),
    ("DocumentReference", "subject", Reference, "subject", Some(&["Patient", "Group", "Device", "Practitioner"])),
    ("DocumentReference", "category", Token, "category", None),
    ("DocumentReference", "type", Token, "type", None),
    ("DocumentReference", "date", Date, "date", None),
    ("DocumentReference", "period", Date, "context.period", None),
    ("DocumentReference", "status", Token, "status", None),
    ("DocumentReference", "encounter", Reference, "context.encounter", Some(&["Encounter", "EpisodeOfCare"])),
    ("DocumentReference", "author", Reference, "author", Some(PRACTITIONER_LIKE)),
    ("DocumentReference", "contenttype", Token, "content.attachment.contentType", None),
    // CarePlan
    ("CarePlan", "identifier", Token, "identifier", None),
    ("CarePlan", "patient", Reference, "subject", Some(PATIENT)),
    ("CarePlan", "subject", Reference, "subject", Some(&["Patient", "Group"])),
    ("CarePlan", "category", Token, "category", None),
    ("CarePlan", "date", Date, "period", None),
    ("CarePlan", "status", Token, "status", None),
    ("CarePlan", "intent", Token, "intent", None),
    ("CarePlan", "encounter", Reference, "encounter", Some(&["Encounter"])),
    ("CarePlan", "activity-code", Token, "activity.detail.code", None),
    ("CarePlan", "care-team", Reference, "careTeam", Some(&["CareTeam"])),
    // CareTeam
    ("CareTeam", "identifier", Token, "identifier", None),
    ("CareTeam", "patient", Reference, "subject", Some(PATIENT)),
    ("CareTeam", "subject", Reference, "subject", Some(&["Patient", "Group"])),
    ("CareTeam", "status", Token, "status", None),
    ("CareTeam", "category", Token, "category", None),
    ("CareTeam", "participant", Reference, "participant.member", Some(PRACTITIONER_LIKE)),
    ("CareTeam", "date", Date, "period", None),
    ("CareTeam", "encounter", Reference, "encounter", Some(&["Encounter"])),
    ("CareTeam", "role", Token, "participant.role", None),
    // Goal
    ("Goal", "identifier", Token, "identifier", None),
    ("Goal", "patient", Reference, "subject", Some(PATIENT)),
    ("Goal", "subject", Reference, "subject", Some(&["Patient", "Group", "Organization"])),
    ("Goal", "lifecycle-status", Token, "lifecycleStatus", None),
    ("Goal", "achievement-status", Token, "achievementStatus", None),
    ("Goal", "category", Token, "category", None),
    ("Goal", "target-date", Date, "target.dueDate", None),
    ("Goal", "start-date", Date, "startDate", None),
    ("Goal", "description", Token, "description", None),
    // Device
    ("Device", "identifier", Token, "identifier", None),
    ("Device", "patient", Reference, "patient", Some(PATIENT)),
    ("Device", "type", Token, "type", None),
    ("Device", "status", Token, "status", None),
    ("Device", "udi-di", String, "udiCarrier.deviceIdentifier", None),
    ("Device", "device-name", String, "deviceName.name", None),
    ("Device", "organization", Reference, "owner", Some(&["Organization"])),
    // ServiceRequest
    ("ServiceRequest", "identifier", Token, "identifier", None),
    ("ServiceRequest", "patient", Reference, "subject", Some(PATIENT)),
    ("ServiceRequest", "subject", Reference, "subject", Some(&["Patient", "Group", "Device", "Location"])),
    ("ServiceRequest", "category", Token, "category", None),
    ("ServiceRequest", "code", Token, "code", None),
    ("ServiceRequest", "authored", Date, "authoredOn", None),
    ("ServiceRequest", "occurrence", Date, "occurrenceDateTime|occurrencePeriod", None),
    ("ServiceRequest", "status", Token, "status", None),
    ("ServiceRequest", "intent", Token, "intent", None),
    ("ServiceRequest", "encounter", Reference, "encounter", Some(&["Encounter"])),
    ("ServiceRequest", "requester", Reference, "requester", Some(PRACTITIONER_LIKE)),
    ("ServiceRequest", "performer", Reference, "performer", Some(PRACTITIONER_LIKE)),
    ("ServiceRequest", "based-on", Reference, "basedOn", None),
    // Coverage
    ("Coverage", "identifier", Token, "identifier", None),
    ("Coverage", "patient", Reference, "beneficiary", Some(PATIENT)),
    ("Coverage", "beneficiary", Reference, "beneficiary", Some(PATIENT)),
    ("Coverage", "subscriber", Reference, "subscriber", Some(&["Patient", "RelatedPerson"])),
    ("Coverage", "policy-holder", Reference, "policyHolder", Some(&["Patient", "RelatedPerson", "Organization"])),
    ("Coverage", "payor", Reference, "payor", Some(&["Organization", "Patient", "RelatedPerson"])),
    ("Coverage", "type", Token, "type", None),
    ("Coverage", "status", Token, "status", None),
    // Provenance
    ("Provenance", "target", Reference, "target", None),
    ("Provenance", "patient", Reference, "target", Some(PATIENT)),
    ("Provenance", "agent", Reference, "agent.who", Some(PRACTITIONER_LIKE)),
    ("Provenance", "recorded", Date, "recorded", None),
    ("Provenance", "entity", Reference, "entity.what", None),
    // RelatedPerson
    ("RelatedPerson", "identifier", Token, "identifier", None),
    ("RelatedPerson", "patient", Reference, "patient", Some(PATIENT)),
    ("RelatedPerson", "name", String, "name", None),
    ("RelatedPerson", "relationship", Token, "relationship", None),
    ("RelatedPerson", "active", Token, "active", None),
    ("RelatedPerson", "telecom", Token, "telecom", None),
    // Specimen
    ("Specimen", "identifier", Token, "identifier", None),
    ("Specimen", "accession", Token, "accessionIdentifier", None),
    ("Specimen", "patient", Reference, "subject", Some(PATIENT)),
    ("Specimen", "subject", Reference, "subject", Some(&["Patient", "Group", "Device", "Substance", "Location"])),
    ("Specimen", "type", Token, "type", None),
    ("Specimen", "status", Token, "status", None),
    ("Specimen", "collected", Date, "collection.collectedDateTime|collection.collectedPeriod", None),
    // MedicationDispense
    ("MedicationDispense", "identifier", Token, "identifier", None),
    ("MedicationDispense", "patient", Reference, "subject", Some(PATIENT)),
    ("MedicationDispense", "subject", Reference, "subject", Some(&["Patient", "Group"])),
    ("MedicationDispense", "status", Token, "status", None),
    ("MedicationDispense", "type", Token, "type", None),
    ("MedicationDispense", "code", Token, "medicationCodeableConcept", None),
    ("MedicationDispense", "medication", Reference, "medicationReference", Some(&["Medication"])),
    ("MedicationDispense", "prescription", Reference, "authorizingPrescription", Some(&["MedicationRequest"])),
    ("MedicationDispense", "whenhandedover", Date, "whenHandedOver", None),
    ("MedicationDispense", "whenprepared", Date, "whenPrepared", None),
    ("MedicationDispense", "performer", Reference, "performer.actor", Some(PRACTITIONER_LIKE)),
    // RiskAssessment (a number parameter)
    ("RiskAssessment", "patient", Reference, "subject", Some(PATIENT)),
    ("RiskAssessment", "probability", Number, "prediction.probabilityDecimal", None),
    ("RiskAssessment", "date", Date, "occurrenceDateTime|occurrencePeriod", None),
    ("RiskAssessment", "condition", Reference, "condition", Some(&["Condition"])),
    // Synthea also produces these; patient search keeps their compartment navigable.
    ("Claim", "patient", Reference, "patient", Some(PATIENT)),
    ("Claim", "status", Token, "status", None),
    ("Claim", "created", Date, "created", None),
    ("ExplanationOfBenefit", "patient", Reference, "patient", Some(PATIENT)),
    ("ExplanationOfBenefit", "status", Token, "status", None),
    ("ExplanationOfBenefit", "created", Date, "created", None),
    ("ImagingStudy", "patient", Reference, "subject", Some(PATIENT)),
    ("ImagingStudy", "started", Date, "started", None),
    ("ImagingStudy", "status", Token, "status", None),
    ("ImagingStudy", "modality", Token, "series.modality", None),
    // Terminology-light canonical lookups
    ("Questionnaire", "url", Uri, "url", None),
    ("Questionnaire", "status", Token, "status", None),
    ("QuestionnaireResponse", "patient", Reference, "subject", Some(PATIENT)),
    ("QuestionnaireResponse", "questionnaire", Uri, "questionnaire", None),
    ("QuestionnaireResponse", "status", Token, "status", None),
    ("QuestionnaireResponse", "authored", Date, "authored", None),
];

/// Resource types with type-specific search parameters (the rest support `_id` and `_lastUpdated` only).
pub fn types_with_params() -> Vec<&'static str> {
    let mut v: Vec<&str> = TABLE.iter().map(|r| r.0).collect();
    v.dedup();
    v
}

struct Registry {
    by_type: HashMap<&'static str, Vec<SearchParam>>,
}

fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| {
        let mut by_type: HashMap<&'static str, Vec<SearchParam>> = HashMap::new();
        for &(resource, name, kind, paths, targets) in TABLE {
            by_type.entry(resource).or_default().push(SearchParam {
                resource,
                name,
                kind,
                paths,
                targets,
                key: format!("{resource}.{name}"),
                index_key: format!("{resource}.{name}"),
            });
        }
        for list in by_type.values_mut() {
            let snapshot = list.clone();
            for p in list.iter_mut() {
                let Some([single]) = p.targets else { continue };
                if p.kind != Reference {
                    continue;
                }
                let broader = snapshot
                    .iter()
                    .find(|q| q.name != p.name && q.kind == Reference && q.paths == p.paths && q.targets.is_none_or(|t| t.len() > 1 && t.contains(single)));
                if let Some(q) = broader {
                    p.index_key = q.key.clone();
                }
            }
        }
        Registry { by_type }
    })
}

/// The type-specific parameters of `resource_type` (empty for types without any).
pub fn params_for(resource_type: &str) -> &'static [SearchParam] {
    registry().by_type.get(resource_type).map(Vec::as_slice).unwrap_or(&[])
}

/// The parameter `name` of `resource_type`, when the server supports it.
pub fn find(resource_type: &str, name: &str) -> Option<&'static SearchParam> {
    params_for(resource_type).iter().find(|p| p.name == name)
}

/// Paths (reference elements) that place a resource of this type in a patient's compartment, after the R4
/// Patient CompartmentDefinition, restricted to the elements that can point to a Patient.
pub fn patient_compartment_paths(resource_type: &str) -> &'static [&'static str] {
    match resource_type {
        "AllergyIntolerance" => &["patient", "recorder", "asserter"],
        "CarePlan"
        | "CareTeam"
        | "Goal"
        | "Specimen"
        | "MedicationRequest"
        | "DiagnosticReport"
        | "Encounter"
        | "Condition"
        | "Procedure"
        | "ServiceRequest"
        | "ImagingStudy"
        | "RiskAssessment"
        | "QuestionnaireResponse"
        | "MedicationStatement"
        | "Flag"
        | "List"
        | "Composition"
        | "DeviceRequest"
        | "NutritionOrder"
        | "ClinicalImpression"
        | "FamilyMemberHistory"
        | "MedicationAdministration" => &["subject", "patient"],
        "Observation" => &["subject", "performer"],
        "MedicationDispense" => &["subject", "receiver"],
        "DocumentReference" => &["subject", "author"],
        "Immunization" | "Device" | "RelatedPerson" | "Claim" | "ExplanationOfBenefit" | "Account" | "AdverseEvent" | "Appointment" => {
            &["patient", "subject", "participant.actor"]
        }
        "Coverage" => &["beneficiary", "subscriber", "policyHolder", "payor"],
        "Provenance" => &["target"],
        // Not in R4's CompartmentDefinition, but `securityContext` is how R4 says whose a Binary is: a
        // clinical note's document belongs to the patient of its DocumentReference.
        "Binary" => &["securityContext"],
        "Patient" => &["link.other"],
        _ => &[],
    }
}

/// Token parameters whose rows are also indexed per patient (see `sp_token_patient` in the PostgreSQL
/// migrations): `category` splits a patient's record into sections (vital signs, laboratory, problem list
/// items, …). Such a value matches a large share of all resources, so its own index cannot start a search;
/// per patient it picks out a few dozen of the patient's resources instead of all of them. And
/// [`PATIENTS_BY_CODE`].
pub fn indexed_per_patient(token_key: &str) -> bool {
    token_key == PATIENTS_BY_CODE || token_key.rsplit_once('.').is_some_and(|(_, name)| name == "category")
}

/// The token parameter whose per-patient rows also have an index by code (a partial index of
/// `sp_token_patient` on `(code, system, patient_id, via)` where `p` is this key): the patients who have
/// an observation with a code, without looking up each observation's patient reference
/// (`Patient?_has:Observation:patient:code=…`). Per patient, its rows answer `Observation?patient=X&code=…`.
pub const PATIENTS_BY_CODE: &str = "Observation.code";

/// Date parameters whose range is carried on each per-patient token row (`date_lo`, `date_hi` of
/// `sp_token_patient`): `date`, the clinical date of a resource, by which a patient's section is listed
/// (`Observation?patient=X&category=vital-signs&_sort=-date`). Sorting from the row needs no probe of the
/// date index per result.
pub fn dated_per_patient(date_key: &str) -> bool {
    date_key.rsplit_once('.').is_some_and(|(_, name)| name == "date")
}

/// Whether resources of this type can belong to a patient compartment at all.
pub fn in_patient_compartment(resource_type: &str) -> bool {
    resource_type == "Patient" || !patient_compartment_paths(resource_type).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::is_known_type;

    #[test]
    fn table_is_consistent() {
        let mut seen = std::collections::HashSet::new();
        for &(resource, name, kind, paths, targets) in TABLE {
            assert!(is_known_type(resource), "{resource}");
            assert!(seen.insert((resource, name)), "duplicate {resource}.{name}");
            assert!(!paths.is_empty());
            if let Some(t) = targets {
                assert_eq!(kind, Reference);
                assert!(t.iter().all(|t| is_known_type(t)));
            }
        }
        assert!(types_with_params().len() >= 25);
        assert_eq!(find("Observation", "category").map(|p| p.kind), Some(Token));
        assert!(indexed_per_patient("Observation.category") && indexed_per_patient("Observation.code") && !indexed_per_patient("Condition.code"));
        assert!(dated_per_patient("Observation.date") && !dated_per_patient("Condition.onset-date"));
        let patient = find("Observation", "patient").unwrap();
        assert_eq!(patient.index_key, "Observation.subject");
        assert_eq!(patient.shared_target(), Some("Patient"));
        assert_eq!(find("Observation", "subject").unwrap().shared_target(), None);
        // Shared rows always belong to a parameter that indexes itself.
        for t in types_with_params() {
            for p in params_for(t) {
                assert_eq!(params_for(t).iter().find(|q| q.key == p.index_key).unwrap().index_key, p.index_key);
            }
        }
    }
}
