//! Deterministic synthetic patients for Kindling's sandbox.
//!
//! [`generate`] returns FHIR R4 transaction Bundles: first one with the shared organisations, locations and
//! practitioners, then one per patient with encounters, conditions (SNOMED CT), medication requests (RxNorm),
//! allergies, immunisations (CVX), vital signs and laboratory results (LOINC, UCUM units, reference ranges
//! and abnormal flags), spread over the years before `today`. Every entry is a `PUT` with a stable id, so
//! seeding twice with the same seed updates rather than duplicates. The same `(seed, today)` always gives
//! the same output.

mod codes;
mod rng;

use codes::*;
use rng::Rng;
use serde_json::{Value, json};
use time::{Date, Duration, PrimitiveDateTime, Time};

#[derive(Debug, Clone)]
pub struct Options {
    pub patients: usize,
    pub seed: u64,
    /// Dates are generated up to this day.
    pub today: Date,
}

pub const ORGANIZATIONS: usize = 2;
pub const PRACTITIONERS: usize = 6;

/// Stable id of the n-th (0-based) practitioner, for linking users to them.
pub fn practitioner_id(n: usize) -> String {
    format!("kp-practitioner-{}", n + 1)
}

/// Stable id of the n-th (0-based) patient of a seed.
pub fn patient_id(seed: u64, n: usize) -> String {
    format!("kp-{seed}-{:04}", n + 1)
}

struct Bundle {
    entries: Vec<Value>,
}

impl Bundle {
    fn new() -> Self {
        Bundle { entries: Vec::new() }
    }
    fn put(&mut self, resource: Value) {
        let ty = resource["resourceType"].as_str().unwrap_or_default().to_string();
        let id = resource["id"].as_str().unwrap_or_default().to_string();
        self.entries.push(json!({
            "fullUrl": format!("urn:kindling:{ty}/{id}"),
            "resource": resource,
            "request": {"method": "PUT", "url": format!("{ty}/{id}")}
        }));
    }
    fn finish(self) -> Value {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": self.entries})
    }
}

fn cc(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}], "text": display})
}

fn reference(ty: &str, id: &str) -> Value {
    json!({"reference": format!("{ty}/{id}")})
}

fn date_str(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day())
}

fn datetime_str(d: PrimitiveDateTime) -> String {
    format!("{}T{:02}:{:02}:00Z", date_str(d.date()), d.hour(), d.minute())
}

fn round(v: f64, decimals: u32) -> f64 {
    let f = 10f64.powi(decimals as i32);
    (v * f).round() / f
}

/// Generates the Bundles.
pub fn generate(opts: &Options) -> Vec<Value> {
    let mut out = vec![shared_resources()];
    for n in 0..opts.patients {
        let mut rng = Rng::new(opts.seed.wrapping_mul(1_000_003).wrapping_add(n as u64));
        out.push(patient_bundle(&mut rng, &patient_id(opts.seed, n), opts.today));
    }
    out
}

fn shared_resources() -> Value {
    let mut b = Bundle::new();
    let orgs = [("kp-org-1", "Kindling General Hospital", "Boston"), ("kp-org-2", "Harbor Family Practice", "Cambridge")];
    for (i, (id, name, city)) in orgs.iter().enumerate() {
        b.put(json!({
            "resourceType": "Organization", "id": id, "active": true,
            "identifier": [{"system": NPI, "value": format!("19{:08}", 40_000_000 + i)}],
            "type": [cc("http://terminology.hl7.org/CodeSystem/organization-type", "prov", "Healthcare Provider")],
            "name": name,
            "telecom": [{"system": "phone", "value": format!("617-555-01{:02}", i)}],
            "address": [{"line": [format!("{} Main Street", 100 + i)], "city": city, "state": "MA", "postalCode": "02118", "country": "US"}]
        }));
        b.put(json!({
            "resourceType": "Location", "id": format!("kp-location-{}", i + 1), "status": "active",
            "name": format!("{name} – Clinic"),
            "address": {"line": [format!("{} Main Street", 100 + i)], "city": city, "state": "MA", "postalCode": "02118", "country": "US"},
            "managingOrganization": reference("Organization", id)
        }));
    }
    let names = [("Alice", "Carter", "female"), ("Ben", "Okafor", "male"), ("Chen", "Li", "female"), ("Diego", "Ramírez", "male"), ("Eva", "Novak", "female"), ("Farid", "Haddad", "male")];
    let specialties = [("207Q00000X", "Family Medicine"), ("207R00000X", "Internal Medicine"), ("208D00000X", "General Practice")];
    for (i, (given, family, gender)) in names.iter().enumerate() {
        let id = practitioner_id(i);
        b.put(json!({
            "resourceType": "Practitioner", "id": id, "active": true,
            "identifier": [{"system": NPI, "value": format!("99{:08}", 10_000_000 + i)}],
            "name": [{"use": "official", "family": family, "given": [given], "prefix": ["Dr."]}],
            "gender": gender,
            "telecom": [{"system": "email", "value": format!("{}.{}@kindling.example", given.to_lowercase(), family.to_lowercase())}]
        }));
        let (code, display) = specialties[i % specialties.len()];
        b.put(json!({
            "resourceType": "PractitionerRole", "id": format!("kp-role-{}", i + 1), "active": true,
            "practitioner": reference("Practitioner", &id),
            "organization": reference("Organization", orgs[i % ORGANIZATIONS].0),
            "location": [reference("Location", &format!("kp-location-{}", i % ORGANIZATIONS + 1))],
            "code": [cc("http://nucc.org/provider-taxonomy", code, display)],
            "specialty": [cc("http://nucc.org/provider-taxonomy", code, display)]
        }));
    }
    b.finish()
}

struct Ctx<'a> {
    pid: &'a str,
    counter: usize,
}

impl Ctx<'_> {
    fn id(&mut self, kind: &str) -> String {
        self.counter += 1;
        format!("{}-{kind}-{}", self.pid, self.counter)
    }
}

fn patient_bundle(rng: &mut Rng, pid: &str, today: Date) -> Value {
    let mut b = Bundle::new();
    let mut ctx = Ctx { pid, counter: 0 };
    let male = rng.chance(0.5);
    let given = *rng.pick(if male { GIVEN_MALE } else { GIVEN_FEMALE });
    let middle = *rng.pick(if male { GIVEN_MALE } else { GIVEN_FEMALE });
    let family = *rng.pick(FAMILY);
    let age_years = rng.range(2, 90);
    let birth = today - Duration::days(age_years * 365 + rng.range(0, 364));
    let (city, state, zip) = *rng.pick(CITIES);
    let org = format!("kp-org-{}", rng.range(1, ORGANIZATIONS as i64));
    let gp = practitioner_id(rng.below(PRACTITIONERS as u64) as usize);
    let mrn = format!("MRN{:07}", rng.below(10_000_000));
    b.put(json!({
        "resourceType": "Patient", "id": pid, "active": true,
        "identifier": [{
            "use": "usual",
            "type": cc("http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "Medical Record Number"),
            "system": MRN_SYSTEM, "value": mrn
        }],
        "name": [{"use": "official", "family": family, "given": [given, middle]}],
        "telecom": [
            {"system": "phone", "value": format!("555-{:03}-{:04}", rng.below(1000), rng.below(10000)), "use": "home"},
            {"system": "email", "value": format!("{}.{}@example.com", given.to_lowercase(), family.to_lowercase().replace('\'', ""))}
        ],
        "gender": if male { "male" } else { "female" },
        "birthDate": date_str(birth),
        "address": [{"use": "home", "line": [format!("{} {}", rng.range(1, 999), rng.pick(STREETS))], "city": city, "state": state, "postalCode": zip, "country": "US"}],
        "generalPractitioner": [reference("Practitioner", &gp)],
        "managingOrganization": reference("Organization", &org)
    }));

    // Chronic conditions fixed for the patient; acute ones come with encounters.
    let chronic: Vec<usize> = CONDITIONS
        .iter()
        .enumerate()
        .filter(|(_, c)| c.2 && age_years >= 18 && rng.chance(0.18 + age_years as f64 / 400.0))
        .map(|(i, _)| i)
        .take(4)
        .collect();
    let hypertensive = chronic.contains(&0);
    let diabetic = chronic.contains(&1);

    let history_start = std::cmp::max(birth, today - Duration::days(6 * 365));
    let span = (today - history_start).whole_days().max(30);
    let n_enc = rng.range(4, 12) as usize;
    let mut enc_days: Vec<i64> = (0..n_enc).map(|_| rng.range(0, span - 1)).collect();
    enc_days.sort_unstable();
    // The most recent encounter is recent, so the chart has current vitals.
    if let Some(last) = enc_days.last_mut() {
        *last = span - rng.range(1, 20).min(span - 1);
    }
    let base_weight = if age_years < 14 { 12.0 + age_years as f64 * 3.2 } else { rng.normal(if male { 84.0 } else { 70.0 }, 12.0) };
    let height_cm = if age_years < 14 { 85.0 + age_years as f64 * 6.0 } else { rng.normal(if male { 176.0 } else { 163.0 }, 7.0) };
    let mut chronic_started = vec![false; chronic.len()];

    for (k, day) in enc_days.iter().enumerate() {
        let start_date = history_start + Duration::days(*day);
        let start = PrimitiveDateTime::new(start_date, Time::from_hms(rng.range(8, 16) as u8, [0u8, 15, 30, 45][rng.below(4) as usize], 0).unwrap_or(Time::MIDNIGHT));
        let emergency = rng.chance(0.08);
        let wellness = !emergency && (k % 2 == 0 || k + 1 == n_enc);
        let end = start + Duration::minutes(if emergency { rng.range(120, 480) } else { rng.range(15, 45) });
        let enc_id = ctx.id("enc");
        let practitioner = if rng.chance(0.7) { gp.clone() } else { practitioner_id(rng.below(PRACTITIONERS as u64) as usize) };
        let (class_code, class_display) = if emergency { ("EMER", "emergency") } else { ("AMB", "ambulatory") };
        let (type_code, type_display) = if emergency {
            ("50849002", "Emergency room admission (procedure)")
        } else if wellness {
            ("162673000", "General examination of patient (procedure)")
        } else {
            ("185345009", "Encounter for symptom (procedure)")
        };
        let acute = if !wellness {
            let acute_ix: Vec<usize> = CONDITIONS.iter().enumerate().filter(|(_, c)| !c.2).map(|(i, _)| i).collect();
            Some(*rng.pick(&acute_ix))
        } else {
            None
        };
        let mut encounter = json!({
            "resourceType": "Encounter", "id": enc_id, "status": "finished",
            "class": {"system": ACT_CODE, "code": class_code, "display": class_display},
            "type": [cc(SNOMED, type_code, type_display)],
            "subject": reference("Patient", pid),
            "participant": [{
                "type": [cc("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "PPRF", "primary performer")],
                "individual": reference("Practitioner", &practitioner)
            }],
            "period": {"start": datetime_str(start), "end": datetime_str(end)},
            "location": [{"location": reference("Location", &format!("kp-location-{}", org.trim_start_matches("kp-org-")))}],
            "serviceProvider": reference("Organization", &org)
        });
        if let Some(a) = acute {
            encounter["reasonCode"] = json!([cc(SNOMED, CONDITIONS[a].0, CONDITIONS[a].1)]);
        }
        b.put(encounter);
        let when = datetime_str(start);

        // Chronic problems are diagnosed at some encounter and stay active.
        for (ci, &cond) in chronic.iter().enumerate() {
            if !chronic_started[ci] && (rng.chance(0.35) || k + 1 == n_enc) {
                chronic_started[ci] = true;
                condition(&mut b, &mut ctx, rng, pid, &enc_id, cond, &when, None, &practitioner);
            }
        }
        if let Some(a) = acute {
            let resolved = start_date + Duration::days(rng.range(5, 21));
            let abatement = if resolved < today { Some(date_str(resolved)) } else { None };
            condition(&mut b, &mut ctx, rng, pid, &enc_id, a, &when, abatement, &practitioner);
        }

        // Vital signs at every encounter.
        let trend = *day as f64 / span as f64;
        let weight = round(base_weight + rng.normal(0.0, 1.5) + trend * 2.0, 1);
        let bmi = round(weight / (height_cm / 100.0).powi(2), 1);
        let systolic = round(rng.normal(if hypertensive { 148.0 } else { 118.0 }, 9.0), 0);
        let diastolic = round(rng.normal(if hypertensive { 92.0 } else { 76.0 }, 6.0), 0);
        let vitals = [
            ("8867-4", "Heart rate", rng.normal(74.0, 9.0), "/min", "/min", 0),
            ("9279-1", "Respiratory rate", rng.normal(15.0, 2.0), "/min", "/min", 0),
            ("8310-5", "Body temperature", rng.normal(36.8, 0.3), "Cel", "Cel", 1),
            ("29463-7", "Body weight", weight, "kg", "kg", 1),
            ("8302-2", "Body height", height_cm, "cm", "cm", 1),
            ("39156-5", "Body mass index (BMI) [Ratio]", bmi, "kg/m2", "kg/m2", 1),
            ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", rng.normal(97.5, 1.2).min(100.0), "%", "%", 0),
        ];
        for (code, display, value, unit, ucum, dec) in vitals {
            let id = ctx.id("obs");
            b.put(json!({
                "resourceType": "Observation", "id": id, "status": "final",
                "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}],
                "code": cc(LOINC, code, display),
                "subject": reference("Patient", pid),
                "encounter": reference("Encounter", &enc_id),
                "effectiveDateTime": when,
                "issued": format!("{}.000Z", when.trim_end_matches('Z')),
                "performer": [reference("Practitioner", &practitioner)],
                "valueQuantity": {"value": round(value, dec), "unit": unit, "system": UCUM, "code": ucum}
            }));
        }
        let bp_id = ctx.id("obs");
        let component = |code: &str, display: &str, v: f64| {
            json!({"code": cc(LOINC, code, display), "valueQuantity": {"value": v, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}})
        };
        let mut bp = json!({
            "resourceType": "Observation", "id": bp_id, "status": "final",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}],
            "code": cc(LOINC, "85354-9", "Blood pressure panel with all children optional"),
            "subject": reference("Patient", pid),
            "encounter": reference("Encounter", &enc_id),
            "effectiveDateTime": when,
            "performer": [reference("Practitioner", &practitioner)],
            "component": [component("8480-6", "Systolic blood pressure", systolic), component("8462-4", "Diastolic blood pressure", diastolic)]
        });
        if systolic >= 140.0 || diastolic >= 90.0 {
            bp["interpretation"] = json!([cc(INTERPRETATION, "H", "High")]);
        }
        b.put(bp);

        if wellness && age_years >= 12 {
            labs(&mut b, &mut ctx, rng, pid, &enc_id, &when, diabetic, &practitioner);
        }
        if wellness && (rng.chance(0.6) || k + 1 == n_enc) {
            let (code, display) = if rng.chance(0.7) { VACCINES[0] } else { *rng.pick(VACCINES) };
            let id = ctx.id("imm");
            b.put(json!({
                "resourceType": "Immunization", "id": id, "status": "completed",
                "vaccineCode": cc(CVX, code, display),
                "patient": reference("Patient", pid),
                "encounter": reference("Encounter", &enc_id),
                "occurrenceDateTime": when,
                "primarySource": true,
                "lotNumber": format!("LOT{:05}", rng.below(100_000)),
                "location": reference("Location", &format!("kp-location-{}", org.trim_start_matches("kp-org-"))),
                "performer": [{"actor": reference("Practitioner", &practitioner)}]
            }));
        }
        if wellness {
            let id = ctx.id("proc");
            b.put(json!({
                "resourceType": "Procedure", "id": id, "status": "completed",
                "code": cc(SNOMED, "430193006", "Medication Reconciliation (procedure)"),
                "subject": reference("Patient", pid),
                "encounter": reference("Encounter", &enc_id),
                "performedPeriod": {"start": datetime_str(start), "end": datetime_str(end)},
                "performer": [{"actor": reference("Practitioner", &practitioner)}]
            }));
        }
    }

    let n_allergies = if rng.chance(0.45) { rng.range(1, 2) } else { 0 };
    for _ in 0..n_allergies {
        let (code, display, category, criticality, rcode, rdisplay) = *rng.pick(ALLERGIES);
        let id = ctx.id("allergy");
        let recorded = history_start + Duration::days(rng.range(0, span - 1));
        b.put(json!({
            "resourceType": "AllergyIntolerance", "id": id,
            "clinicalStatus": cc(ALLERGY_CLINICAL, "active", "Active"),
            "verificationStatus": cc(ALLERGY_VER, "confirmed", "Confirmed"),
            "type": "allergy", "category": [category], "criticality": criticality,
            "code": cc(SNOMED, code, display),
            "patient": reference("Patient", pid),
            "recordedDate": date_str(recorded),
            "reaction": [{"manifestation": [cc(SNOMED, rcode, rdisplay)], "severity": if criticality == "high" { "severe" } else { "mild" }}]
        }));
    }
    b.finish()
}

#[allow(clippy::too_many_arguments)]
fn condition(b: &mut Bundle, ctx: &mut Ctx<'_>, rng: &mut Rng, pid: &str, enc_id: &str, cond: usize, when: &str, abatement: Option<String>, practitioner: &str) {
    let (code, display, chronic, med) = CONDITIONS[cond];
    let id = ctx.id("cond");
    let (status, status_display) = if abatement.is_some() { ("resolved", "Resolved") } else { ("active", "Active") };
    let mut c = json!({
        "resourceType": "Condition", "id": id,
        "clinicalStatus": cc(CONDITION_CLINICAL, status, status_display),
        "verificationStatus": cc(CONDITION_VER, "confirmed", "Confirmed"),
        "category": [cc(CONDITION_CATEGORY, if chronic { "problem-list-item" } else { "encounter-diagnosis" }, if chronic { "Problem List Item" } else { "Encounter Diagnosis" })],
        "code": cc(SNOMED, code, display),
        "subject": reference("Patient", pid),
        "encounter": reference("Encounter", enc_id),
        "onsetDateTime": when,
        "recordedDate": when,
        "asserter": reference("Practitioner", practitioner)
    });
    if let Some(a) = &abatement {
        c["abatementDateTime"] = json!(a);
    }
    b.put(c);
    if let Some(m) = med {
        let (rx, rx_display, dosage) = MEDICATIONS[m];
        let id = ctx.id("medrx");
        b.put(json!({
            "resourceType": "MedicationRequest", "id": id,
            "status": if chronic { "active" } else { "completed" },
            "intent": "order",
            "category": [cc("http://terminology.hl7.org/CodeSystem/medicationrequest-category", if chronic { "community" } else { "outpatient" }, if chronic { "Community" } else { "Outpatient" })],
            "medicationCodeableConcept": cc(RXNORM, rx, rx_display),
            "subject": reference("Patient", pid),
            "encounter": reference("Encounter", enc_id),
            "authoredOn": when,
            "requester": reference("Practitioner", practitioner),
            "reasonReference": [reference("Condition", &format!("{}-cond-{}", pid, ctx.counter - 1))],
            "dosageInstruction": [{"text": dosage, "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}}],
            "dispenseRequest": {"numberOfRepeatsAllowed": if chronic { rng.range(2, 11) } else { 0 }}
        }));
    }
}

#[allow(clippy::too_many_arguments)]
fn labs(b: &mut Bundle, ctx: &mut Ctx<'_>, rng: &mut Rng, pid: &str, enc_id: &str, when: &str, diabetic: bool, practitioner: &str) {
    let mut results = Vec::new();
    for &(code, display, unit, low, high, mean, sd, dec) in LABS {
        if !rng.chance(0.7) {
            continue;
        }
        let shift = if diabetic && (code == "2339-0" || code == "4548-4") { 1.35 } else { 1.0 };
        let value = round((rng.normal(mean, sd) * shift).max(0.0), dec);
        let (flag, flag_display) = if value > high { ("H", "High") } else if value < low { ("L", "Low") } else { ("N", "Normal") };
        let id = ctx.id("obs");
        b.put(json!({
            "resourceType": "Observation", "id": id, "status": "final",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory", "display": "Laboratory"}]}],
            "code": cc(LOINC, code, display),
            "subject": reference("Patient", pid),
            "encounter": reference("Encounter", enc_id),
            "effectiveDateTime": when,
            "issued": format!("{}.000Z", when.trim_end_matches('Z')),
            "performer": [reference("Practitioner", practitioner)],
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
            "interpretation": [cc(INTERPRETATION, flag, flag_display)],
            "referenceRange": [{
                "low": {"value": low, "unit": unit, "system": UCUM, "code": unit},
                "high": {"value": high, "unit": unit, "system": UCUM, "code": unit},
                "text": format!("{low}–{high} {unit}")
            }]
        }));
        results.push(reference("Observation", &id));
    }
    if results.is_empty() {
        return;
    }
    let id = ctx.id("report");
    b.put(json!({
        "resourceType": "DiagnosticReport", "id": id, "status": "final",
        "category": [cc("http://terminology.hl7.org/CodeSystem/v2-0074", "LAB", "Laboratory")],
        "code": cc(LOINC, "24323-8", "Comprehensive metabolic 2000 panel - Serum or Plasma"),
        "subject": reference("Patient", pid),
        "encounter": reference("Encounter", enc_id),
        "effectiveDateTime": when,
        "issued": format!("{}.000Z", when.trim_end_matches('Z')),
        "performer": [reference("Practitioner", practitioner)],
        "result": results
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Month;

    fn opts() -> Options {
        Options { patients: 3, seed: 42, today: Date::from_calendar_date(2026, Month::June, 15).unwrap() }
    }

    #[test]
    fn deterministic() {
        assert_eq!(generate(&opts()), generate(&opts()));
        let other = Options { seed: 43, ..opts() };
        assert_ne!(generate(&opts())[1], generate(&other)[1]);
    }

    #[test]
    fn realistic_shapes() {
        let bundles = generate(&opts());
        assert_eq!(bundles.len(), 4);
        let all: Vec<&Value> = bundles.iter().flat_map(|b| b["entry"].as_array().unwrap().iter()).map(|e| &e["resource"]).collect();
        let count = |t: &str| all.iter().filter(|r| r["resourceType"] == t).count();
        assert_eq!(count("Patient"), 3);
        assert_eq!(count("Practitioner"), PRACTITIONERS);
        assert!(count("Encounter") >= 12);
        assert!(count("Observation") > 50);
        let lab = all.iter().find(|r| r["category"][0]["coding"][0]["code"] == "laboratory").unwrap();
        assert!(lab["referenceRange"][0]["low"]["value"].is_number());
        assert!(lab["interpretation"][0]["coding"][0]["code"].is_string());
        for r in &all {
            fhir_like_checks(r);
        }
    }

    fn fhir_like_checks(r: &Value) {
        assert!(r["id"].as_str().is_some_and(|id| id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')));
    }
}
