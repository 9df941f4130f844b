//! Deterministic synthetic patients for Kindling's sandbox.
//!
//! [`generate`] returns FHIR R4 transaction Bundles: first one with what the patients share (the hospital and
//! the family practice, payers, locations, practitioners with NPIs and their roles, endpoints, hospital
//! medicines), then one per patient holding a coherent history over the years before `today`: encounters
//! (ambulatory, emergency, inpatient), problems and their medicines (ordered and dispensed), allergies,
//! immunisations by age, procedures, laboratory panels with specimens, orders and reference ranges, vital
//! signs with growth that follows age and sex, social history, a food-insecurity screen, care plans, goals,
//! care team, coverage, clinical notes with their documents, related persons, devices and provenance. The
//! resources are shaped after the US Core 6.1 profiles.
//!
//! Ages are spread from newborns to the very old by the patient's index; the first patient of every
//! twenty-five is the demo patient, with active problems, medicines, allergies and abnormal results. Every
//! entry is a `PUT` with a stable id, so seeding twice updates rather than duplicates. The same
//! `(seed, patients, today)` always gives the same output, byte for byte.
#![deny(missing_docs)]

mod codes;
mod growth;
mod patient;
mod rng;

use codes::*;
use serde_json::{Value, json};
use time::{Date, PrimitiveDateTime};

/// What to generate.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many patients.
    pub patients: usize,
    /// The seed: the same seed gives the same population.
    pub seed: u64,
    /// Dates are generated up to this day.
    pub today: Date,
}

/// A clinician of the sandbox: given, family, gender, NUCC taxonomy code and display, organisation index
/// (0 the hospital, 1 the family practice), location id, credential.
pub(crate) struct Clinician {
    pub given: &'static str,
    pub family: &'static str,
    pub gender: &'static str,
    pub taxonomy: (&'static str, &'static str),
    pub org: usize,
    pub location: &'static str,
    pub credential: &'static str,
}

const fn clinician(
    given: &'static str,
    family: &'static str,
    gender: &'static str,
    taxonomy: (&'static str, &'static str),
    org: usize,
    location: &'static str,
    credential: &'static str,
) -> Clinician {
    Clinician { given, family, gender, taxonomy, org, location, credential }
}

/// The sandbox's clinicians; the first is Dr. Alice Carter, the demo clinician.
pub(crate) const CLINICIANS: &[Clinician] = &[
    clinician("Alice", "Carter", "female", ("207Q00000X", "Family Medicine"), 1, "kp-location-2", "MD"),
    clinician("Ben", "Okafor", "male", ("207R00000X", "Internal Medicine"), 0, "kp-location-1", "MD"),
    clinician("Chen", "Li", "female", ("208000000X", "Pediatrics"), 1, "kp-location-2", "MD"),
    clinician("Diego", "Ramírez", "male", ("207P00000X", "Emergency Medicine"), 0, "kp-location-ed", "MD"),
    clinician("Eva", "Novak", "female", ("208M00000X", "Hospitalist"), 0, "kp-location-ward", "MD"),
    clinician("Farid", "Haddad", "male", ("207RC0000X", "Cardiovascular Disease"), 0, "kp-location-1", "MD"),
    clinician("Grace", "Whitfield", "female", ("363LF0000X", "Nurse Practitioner, Family"), 1, "kp-location-2", "NP"),
    clinician("Hana", "Sato", "female", ("207V00000X", "Obstetrics & Gynecology"), 1, "kp-location-2", "MD"),
    // Staff of the family practice who sign in as the sandbox's personas: a registered nurse, and the front
    // desk (registration and scheduling: no taxonomy, no credential, no clinical role).
    clinician("Rosa", "Mendes", "female", ("163W00000X", "Registered Nurse"), 1, "kp-location-2", "RN"),
    clinician("Sam", "Doyle", "male", ("", "Front desk (registration and scheduling)"), 1, "kp-location-2", ""),
];
/// The registered nurse (the `nurse` persona of `kindling up`).
pub const REGISTERED_NURSE: usize = 8;
/// The front-desk clerk (the `frontdesk` persona of `kindling up`).
pub const FRONT_DESK: usize = 9;
pub(crate) const FAMILY_DOCTOR: usize = 0;
pub(crate) const INTERNIST: usize = 1;
pub(crate) const PEDIATRICIAN: usize = 2;
pub(crate) const EMERGENCY_DOCTOR: usize = 3;
pub(crate) const HOSPITALIST: usize = 4;
pub(crate) const CARDIOLOGIST: usize = 5;
pub(crate) const NURSE_PRACTITIONER: usize = 6;
pub(crate) const OBSTETRICIAN: usize = 7;

/// How many practitioners the sandbox has (their ids are `synth::practitioner_id(0..PRACTITIONERS)`).
pub const PRACTITIONERS: usize = CLINICIANS.len();

/// (id, name, city, street address, postal code, phone)
pub(crate) const PROVIDERS: [(&str, &str, &str, &str, &str, &str); 2] = [
    ("kp-org-1", "Kindling General Hospital", "Boston", "100 Harrison Avenue", "02118", "(617) 555-0100"),
    ("kp-org-2", "Harbor Family Practice", "Cambridge", "45 Mount Auburn Street", "02138", "(617) 555-0142"),
];

/// (id, name, payer type code, payer type display)
pub(crate) const PAYERS: [(&str, &str, &str, &str); 3] = [
    ("kp-payer-1", "Bay State Health Plan", "5", "PRIVATE HEALTH INSURANCE"),
    ("kp-payer-2", "Medicare", "1", "MEDICARE"),
    ("kp-payer-3", "MassHealth", "2", "MEDICAID"),
];

/// Stable id of the n-th (0-based) practitioner, for linking users to them.
pub fn practitioner_id(n: usize) -> String {
    format!("kp-practitioner-{}", n + 1)
}

/// Stable id of the n-th (0-based) patient of a seed.
pub fn patient_id(seed: u64, n: usize) -> String {
    format!("kp-{seed}-{:04}", n + 1)
}

pub(crate) struct Bundle {
    entries: Vec<Value>,
}

impl Bundle {
    pub(crate) fn new() -> Self {
        Bundle { entries: Vec::new() }
    }
    pub(crate) fn put(&mut self, resource: Value) {
        let ty = resource["resourceType"].as_str().unwrap_or_default().to_string();
        let id = resource["id"].as_str().unwrap_or_default().to_string();
        self.entries.push(json!({
            "fullUrl": format!("urn:kindling:{ty}/{id}"),
            "resource": resource,
            "request": {"method": "PUT", "url": format!("{ty}/{id}")}
        }));
    }
    pub(crate) fn finish(self) -> Value {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": self.entries})
    }
}

pub(crate) fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"system": system, "code": code, "display": display})
}

pub(crate) fn cc(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [coding(system, code, display)], "text": display})
}

pub(crate) fn reference(ty: &str, id: &str) -> Value {
    json!({"reference": format!("{ty}/{id}")})
}

pub(crate) fn named_reference(ty: &str, id: &str, display: &str) -> Value {
    json!({"reference": format!("{ty}/{id}"), "display": display})
}

pub(crate) fn date_str(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day())
}

pub(crate) fn datetime_str(d: PrimitiveDateTime) -> String {
    format!("{}T{:02}:{:02}:00Z", date_str(d.date()), d.hour(), d.minute())
}

pub(crate) fn round(v: f64, decimals: u32) -> f64 {
    let f = 10f64.powi(decimals as i32);
    (v * f).round() / f
}

/// A 10-digit NPI with its Luhn check digit (computed with the 80840 prefix, as CMS specifies).
pub(crate) fn npi(base: u64) -> String {
    let body = format!("{:09}", base % 1_000_000_000);
    let digits: Vec<u32> = format!("80840{body}").chars().filter_map(|c| c.to_digit(10)).collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

/// Dr. Alice Carter and colleagues as they sign: "Dr. Alice Carter" or "Grace Whitfield, NP".
pub(crate) fn clinician_name(i: usize) -> String {
    let c = &CLINICIANS[i];
    match c.credential {
        "MD" => format!("Dr. {} {}", c.given, c.family),
        "" => format!("{} {}", c.given, c.family),
        credential => format!("{} {}, {credential}", c.given, c.family),
    }
}

/// Generates the Bundles.
pub fn generate(opts: &Options) -> Vec<Value> {
    let mut out = vec![shared_resources()];
    for n in 0..opts.patients {
        out.push(patient::bundle(opts.seed, n, opts.today));
    }
    out
}

/// Groups over the patients of one seed, as an EHR keeps them for population health and Bulk Data
/// `Group/[id]/$export`: the panel of the first practitioner (`kp-{seed}-panel`, the patients whose
/// general practitioner they are) and a registry of the patients with active type 2 diabetes
/// (`kp-{seed}-diabetes`).
/// `patient_bundles` are the patient Bundles [`generate`] made (after its first, shared one).
pub fn groups(seed: u64, patient_bundles: &[Value]) -> Value {
    let gp = format!("Practitioner/{}", practitioner_id(0));
    let (mut panel, mut diabetes) = (Vec::new(), Vec::new());
    for bundle in patient_bundles {
        let resources: Vec<&Value> = bundle["entry"].as_array().into_iter().flatten().map(|e| &e["resource"]).collect();
        let Some(patient) = resources.iter().find(|r| r["resourceType"] == "Patient") else { continue };
        let member = named_reference("Patient", patient["id"].as_str().unwrap_or_default(), &patient_name(patient));
        if patient["generalPractitioner"][0]["reference"] == gp.as_str() {
            panel.push(json!({"entity": member.clone()}));
        }
        let diabetic = resources.iter().any(|r| {
            r["resourceType"] == "Condition"
                && r["clinicalStatus"]["coding"][0]["code"] == "active"
                && r["code"]["coding"].as_array().is_some_and(|c| c.iter().any(|c| c["code"] == "44054006"))
        });
        if diabetic {
            diabetes.push(json!({"entity": member}));
        }
    }
    let mut b = Bundle::new();
    b.put(json!({
        "resourceType": "Group", "id": format!("kp-{seed}-panel"), "active": true, "type": "person", "actual": true,
        "code": cc("http://snomed.info/sct", "158965000", "Medical practitioner"),
        "name": format!("Panel of {}", clinician_name(0)),
        "managingEntity": named_reference("Practitioner", &practitioner_id(0), &clinician_name(0)),
        "quantity": panel.len(),
        "member": panel
    }));
    b.put(json!({
        "resourceType": "Group", "id": format!("kp-{seed}-diabetes"), "active": true, "type": "person", "actual": true,
        "name": "Type 2 diabetes registry",
        "managingEntity": named_reference("Organization", PROVIDERS[1].0, PROVIDERS[1].1),
        "characteristic": [{
            "code": cc("http://loinc.org", "11450-4", "Problem list - Reported"),
            "valueCodeableConcept": cc("http://snomed.info/sct", "44054006", "Diabetes mellitus type 2 (disorder)"),
            "exclude": false
        }],
        "quantity": diabetes.len(),
        "member": diabetes
    }));
    b.finish()
}

/// "Given Family" of a generated Patient.
fn patient_name(patient: &Value) -> String {
    let name = &patient["name"][0];
    let given: Vec<&str> = name["given"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    format!("{} {}", given.join(" "), name["family"].as_str().unwrap_or_default()).trim().to_string()
}

fn address(line: &str, city: &str, zip: &str) -> Value {
    json!({"use": "work", "line": [line], "city": city, "state": "MA", "postalCode": zip, "country": "US"})
}

fn shared_resources() -> Value {
    let mut b = Bundle::new();
    for (i, (id, name, city, line, zip, phone)) in PROVIDERS.iter().enumerate() {
        let endpoint = format!("kp-endpoint-{}", i + 1);
        b.put(json!({
            "resourceType": "Organization", "id": id, "active": true,
            "identifier": [{"system": NPI, "value": npi(174_000_000 + i as u64 * 7_919)}],
            "type": [cc("http://terminology.hl7.org/CodeSystem/organization-type", "prov", "Healthcare Provider")],
            "name": name,
            "telecom": [{"system": "phone", "value": phone, "use": "work"}],
            "address": [address(line, city, zip)],
            "endpoint": [reference("Endpoint", &endpoint)]
        }));
        b.put(json!({
            "resourceType": "Endpoint", "id": endpoint, "status": "active",
            "connectionType": coding("http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "direct-project", "Direct Project"),
            "name": format!("{name} Direct messaging"),
            "managingOrganization": reference("Organization", id),
            "payloadType": [cc("http://terminology.hl7.org/CodeSystem/endpoint-payload-type", "any", "Any")],
            "payloadMimeType": ["application/pdf", "text/plain"],
            "address": format!("mailto:referrals@{}.direct.kindling.example", name.to_lowercase().replace(' ', "-"))
        }));
    }
    for (id, name, code, display) in PAYERS {
        b.put(json!({
            "resourceType": "Organization", "id": id, "active": true,
            "type": [cc("http://terminology.hl7.org/CodeSystem/organization-type", "pay", "Payer")],
            "name": name,
            "telecom": [{"system": "phone", "value": "(800) 555-0199", "use": "work"}],
            "address": [address("1 Insurance Plaza", "Boston", "02110")],
            "extension": [{"url": "http://kindling.example/fhir/StructureDefinition/payer-type", "valueCodeableConcept": cc(PAYER_TYPE, code, display)}]
        }));
    }
    // (id, name, RoleCode, RoleCode display, organisation index, phone)
    let locations = [
        ("kp-location-1", "Kindling General Hospital – Outpatient Clinic", "GIM", "General internal medicine clinic", 0, "(617) 555-0110"),
        ("kp-location-2", "Harbor Family Practice", "FMC", "Family medicine clinic", 1, "(617) 555-0142"),
        ("kp-location-ed", "Kindling General Hospital – Emergency Department", "ER", "Emergency room", 0, "(617) 555-0111"),
        ("kp-location-ward", "Kindling General Hospital – 4 West Medical Unit", "HU", "Hospital unit", 0, "(617) 555-0114"),
    ];
    for (id, name, code, display, org, phone) in locations {
        let (org_id, _, city, line, zip, _) = PROVIDERS[org];
        b.put(json!({
            "resourceType": "Location", "id": id, "status": "active", "name": name,
            "type": [cc(ROLE_CODE, code, display)],
            "telecom": [{"system": "phone", "value": phone, "use": "work"}],
            "address": address(line, city, zip),
            "managingOrganization": reference("Organization", org_id)
        }));
    }
    for (id, rx, display, _) in HOSPITAL_MEDICATIONS {
        b.put(json!({"resourceType": "Medication", "id": id, "status": "active", "code": cc(RXNORM, rx, display)}));
    }
    for (i, c) in CLINICIANS.iter().enumerate() {
        let id = practitioner_id(i);
        let (org_id, _, city, line, zip, phone) = PROVIDERS[c.org];
        let email = format!("{}.{}@kindling.example", c.given.to_lowercase(), patient::ascii_lower(c.family));
        let mut practitioner = json!({
            "resourceType": "Practitioner", "id": id, "active": true,
            "identifier": [{"system": NPI, "value": npi(123_456_000 + i as u64 * 1_013)}],
            "name": [{"use": "official", "family": c.family, "given": [c.given], "prefix": if c.credential == "MD" { json!(["Dr."]) } else { json!([]) }, "suffix": [c.credential]}],
            "gender": c.gender,
            "telecom": [{"system": "phone", "value": phone, "use": "work"}, {"system": "email", "value": email, "use": "work"}],
            "address": [address(line, city, zip)]
        });
        let qualification = match c.credential {
            "MD" => Some("Doctor of Medicine"),
            "NP" => Some("Nurse Practitioner"),
            "RN" => Some("Registered Nurse"),
            _ => None,
        };
        match qualification {
            Some(display) => practitioner["qualification"] = json!([{"code": cc("http://terminology.hl7.org/CodeSystem/v2-0360", c.credential, display)}]),
            // Front-desk staff: no credential and no NPI (only providers have one): the practice's staff
            // number identifies them (US Core requires an identifier, the NPI slice only where there is one).
            None => {
                practitioner["identifier"] = json!([{"system": "https://kindling.example/fhir/sid/staff-id", "value": format!("STAFF-{:04}", i + 1)}]);
                practitioner["name"][0]["suffix"] = json!([]);
            }
        }
        b.put(practitioner);
        // A role without a provider taxonomy is said in words (US Core binds PractitionerRole.code extensibly).
        let role_code =
            if c.taxonomy.0.is_empty() { json!({"text": c.taxonomy.1}) } else { cc("http://nucc.org/provider-taxonomy", c.taxonomy.0, c.taxonomy.1) };
        let mut role = json!({
            "resourceType": "PractitionerRole", "id": format!("kp-role-{}", i + 1), "active": true,
            "practitioner": named_reference("Practitioner", &id, &clinician_name(i)),
            "organization": reference("Organization", org_id),
            "location": [reference("Location", c.location)],
            "code": [role_code],
            "telecom": [{"system": "phone", "value": phone, "use": "work"}, {"system": "email", "value": email, "use": "work"}],
            "endpoint": [reference("Endpoint", &format!("kp-endpoint-{}", c.org + 1))]
        });
        if !c.taxonomy.0.is_empty() {
            role["specialty"] = json!([cc("http://nucc.org/provider-taxonomy", c.taxonomy.0, c.taxonomy.1)]);
        }
        b.put(role);
    }
    let mut out = b.finish();
    // Empty prefixes and suffixes are left out rather than sent as [].
    for e in out["entry"].as_array_mut().into_iter().flatten() {
        // (`get_mut`, not indexing: indexing a missing member inserts a null.)
        if let Some(name) = e["resource"].get_mut("name").and_then(|n| n.get_mut(0)).and_then(Value::as_object_mut) {
            for key in ["prefix", "suffix"] {
                if name.get(key).is_some_and(|p| p.as_array().is_some_and(Vec::is_empty)) {
                    name.remove(key);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
