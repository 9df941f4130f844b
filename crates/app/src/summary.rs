//! The first screen: every section fetched in parallel, each gated on what was granted first, each
//! degrading on its own with a short explanation in clinical language.

use crate::svg;
use client::types::{AllergyIntolerance, Bundle, Condition, Encounter, MedicationRequest, Observation, Patient, Quantity};
use client::{Error, Interaction, Session};

/// A section's content, or why it is not shown.
pub struct Section<T> {
    /// What the section shows, when it could be loaded.
    pub data: Option<T>,
    /// Why it is not shown, in a clinician's words.
    pub message: Option<String>,
}

impl<T> Section<T> {
    fn ready(data: T) -> Self {
        Section { data: Some(data), message: None }
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Section { data: None, message: Some(message.into()) }
    }

    /// Whether the section failed because the session ended (the page then asks for a relaunch).
    fn from_error(e: &Error, what: &str) -> Self {
        let text = match e {
            Error::Fhir { status: 403, .. } | Error::NotGranted(_) => format!("{what} were not shared with this app at launch."),
            Error::Busy { .. } => format!("{what} could not be loaded: the record system is busy. Reload the page in a moment."),
            Error::SessionEnded { .. } | Error::RefreshFailed { .. } => format!("{what} could not be loaded: the session with the record system has ended."),
            _ => format!("{what} could not be loaded just now."),
        };
        Section::unavailable(text)
    }
}

/// One line of a list: what a clinician reads first, and the details beside it.
pub struct Row {
    /// The display text (a problem, a medication, an allergy).
    pub text: String,
    /// Dates, status, dosage or reaction.
    pub detail: String,
}

/// The patient banner.
pub struct PatientBanner {
    /// Given and family name.
    pub name: String,
    /// As recorded.
    pub gender: String,
    /// `YYYY-MM-DD`.
    pub birth_date: String,
    /// The medical record number.
    pub identifier: String,
}

/// One vital sign over time.
pub struct VitalChart {
    /// What it is (e.g. Blood pressure), with its unit.
    pub title: String,
    /// The latest value and its date.
    pub latest: String,
    /// The trend as an inline SVG.
    pub svg: String,
}

/// One laboratory result.
pub struct Lab {
    /// The test's display name.
    pub name: String,
    /// The value with its unit.
    pub value: String,
    /// The reference range, when given.
    pub range: String,
    /// "High", "Low", "Abnormal" or "".
    pub flag: String,
    /// When it was taken.
    pub date: String,
}

/// The patient summary page, section by section.
pub struct Summary {
    /// The banner.
    pub patient: Section<PatientBanner>,
    /// The encounter of the launch, when the EHR gave one.
    pub encounter: Option<Section<Row>>,
    /// Active problems.
    pub problems: Section<Vec<Row>>,
    /// Active medications.
    pub medications: Section<Vec<Row>>,
    /// Allergies and intolerances.
    pub allergies: Section<Vec<Row>>,
    /// Vital signs over time.
    pub vitals: Section<Vec<VitalChart>>,
    /// Recent laboratory results.
    pub labs: Section<Vec<Lab>>,
    /// Some section failed because the session ended: the page offers a relaunch.
    pub session_ended: bool,
}

fn day(s: &Option<String>) -> String {
    s.as_deref().map(|d| d.chars().take(10).collect()).unwrap_or_default()
}

fn not_shared(what: &str) -> String {
    format!("{what} were not shared with this app at launch.")
}

/// The vital signs charted: LOINC codes (any of them) and a title.
const VITALS: &[(&[&str], &str)] = &[(BLOOD_PRESSURE_PANELS, "Blood pressure"), (&["8867-4"], "Heart rate"), (&["29463-7"], "Weight"), (&["39156-5"], "BMI")];

/// Loads the summary for the session's patient.
pub async fn load(session: &Session) -> Summary {
    let ctx = session.context();
    let g = &ctx.granted;
    let fhir = session.fhir();
    let patient_id = ctx.patient.clone().unwrap_or_default();
    let pid = patient_id.as_str();
    let can = |ty: &str| g.allows(ty, Interaction::Search);
    let patient = async {
        if !g.allows("Patient", Interaction::Read) {
            return Section::unavailable(not_shared("The patient's demographics"));
        }
        match fhir.read::<Patient>("Patient", pid).await {
            Ok(p) => Section::ready(PatientBanner {
                name: p.display_name(),
                gender: p.gender.clone().unwrap_or_else(|| "unknown".into()),
                birth_date: p.birth_date.clone().unwrap_or_default(),
                identifier: p.mrn().unwrap_or_default().to_string(),
            }),
            Err(e) => Section::from_error(&e, "The patient's demographics"),
        }
    };
    let encounter = async {
        let id = ctx.encounter.clone()?;
        if !g.allows("Encounter", Interaction::Read) {
            return Some(Section::unavailable(not_shared("Encounter details")));
        }
        Some(match fhir.read::<Encounter>("Encounter", &id).await {
            Ok(e) => Section::ready(Row {
                text: e.type_.first().map(|t| t.display()).unwrap_or_else(|| "Encounter".into()),
                detail: format!("{} · {}", day(&e.period.as_ref().and_then(|p| p.start.clone())), e.status.unwrap_or_default()),
            }),
            Err(e) => Section::from_error(&e, "Encounter details"),
        })
    };
    let problems = async {
        if !can("Condition") {
            return Section::unavailable(not_shared("Problems"));
        }
        match fhir.search("Condition", &[("patient", pid), ("clinical-status", display::CURRENT_PROBLEMS), ("_count", "100")]).await {
            Ok(b) => Section::ready(
                b.matches::<Condition>("Condition")
                    .into_iter()
                    .map(|c| Row { text: c.code.map(|x| x.display()).unwrap_or_default(), detail: format!("since {}", day(&c.onset_date_time)) })
                    .collect(),
            ),
            Err(e) => Section::from_error(&e, "Problems"),
        }
    };
    let medications = async {
        if !can("MedicationRequest") {
            return Section::unavailable(not_shared("Medications"));
        }
        match fhir.search("MedicationRequest", &[("patient", pid), ("status", "active"), ("_count", "100")]).await {
            Ok(b) => Section::ready(
                b.matches::<MedicationRequest>("MedicationRequest")
                    .into_iter()
                    .map(|m| Row {
                        text: m
                            .medication_codeable_concept
                            .map(|x| x.display())
                            .or_else(|| m.medication_reference.and_then(|r| r.display))
                            .unwrap_or_else(|| "Medication (not named)".into()),
                        detail: m.dosage_instruction.first().and_then(|d| d.text.clone()).unwrap_or_default(),
                    })
                    .collect(),
            ),
            Err(e) => Section::from_error(&e, "Medications"),
        }
    };
    let allergies = async {
        if !can("AllergyIntolerance") {
            return Section::unavailable(not_shared("Allergies"));
        }
        match fhir.search("AllergyIntolerance", &[("patient", pid), ("_count", "100")]).await {
            Ok(b) => Section::ready(
                b.matches::<AllergyIntolerance>("AllergyIntolerance")
                    .into_iter()
                    .filter_map(|a| {
                        // Refuted or entered in error: not an allergy. Unconfirmed or no longer active: said so.
                        let note = display::allergy_note(
                            a.clinical_status.as_ref().and_then(|c| c.code_in("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical")),
                            a.verification_status.as_ref().and_then(|c| c.code_in("http://terminology.hl7.org/CodeSystem/allergyintolerance-verification")),
                        )?;
                        let detail = [a.criticality.map(|c| format!("criticality {c}")).unwrap_or_default(), note.to_string()];
                        Some(Row {
                            text: a.code.map(|x| x.display()).unwrap_or_default(),
                            detail: detail.into_iter().filter(|d| !d.is_empty()).collect::<Vec<_>>().join(" · "),
                        })
                    })
                    .collect(),
            ),
            Err(e) => Section::from_error(&e, "Allergies"),
        }
    };
    let vitals = async {
        if !g.allows_search_with("Observation", "category", "vital-signs") {
            return Section::unavailable(not_shared("Vital signs"));
        }
        match fhir.search("Observation", &[("patient", pid), ("category", "vital-signs"), ("_sort", "-date"), ("_count", "200")]).await {
            Ok(b) => Section::ready(vital_charts(&b)),
            Err(e) => Section::from_error(&e, "Vital signs"),
        }
    };
    let labs = async {
        if !g.allows_search_with("Observation", "category", "laboratory") {
            return Section::unavailable(not_shared("Laboratory results"));
        }
        match fhir.search("Observation", &[("patient", pid), ("category", "laboratory"), ("_sort", "-date"), ("_count", "20")]).await {
            Ok(b) => Section::ready(b.matches::<Observation>("Observation").iter().filter(|o| display::is_result(o.status.as_deref())).map(lab_row).collect()),
            Err(e) => Section::from_error(&e, "Laboratory results"),
        }
    };
    let (patient, encounter, problems, medications, allergies, vitals, labs) = tokio::join!(patient, encounter, problems, medications, allergies, vitals, labs);
    let ended = |m: &Option<String>| m.as_deref().is_some_and(|m| m.contains("session with the record system has ended"));
    let session_ended = ended(&patient.message)
        || ended(&problems.message)
        || ended(&medications.message)
        || ended(&allergies.message)
        || ended(&vitals.message)
        || ended(&labs.message);
    Summary { patient, encounter, problems, medications, allergies, vitals, labs, session_ended }
}

use fhir::display::{self, BLOOD_PRESSURE_PANELS, DIASTOLIC, LOINC, SYSTOLIC};

fn number(v: f64) -> String {
    display::number(v)
}

/// What a Quantity's unit is, to compare two of them: its UCUM code when it has one ("beats/minute" and
/// "/min" written as `/min` are one unit), else its printed form.
fn unit_key(q: &Quantity) -> String {
    q.code.clone().filter(|c| !c.is_empty()).unwrap_or_else(|| unit_of(q))
}

/// A Quantity's unit as people print it (`mm[Hg]` → mmHg, `Cel` → °C).
fn unit_of(q: &Quantity) -> String {
    display::unit(q.unit.as_deref(), q.code.as_deref())
}

/// The value of the component with a LOINC code, wherever it sits in the array.
fn component<'a>(o: &'a Observation, code: &str) -> Option<&'a Quantity> {
    o.component.iter().find(|c| c.code.as_ref().is_some_and(|x| x.has_code(LOINC, code)))?.value_quantity.as_ref()
}

fn is_vital(o: &Observation, codes: &[&str]) -> bool {
    o.code.as_ref().is_some_and(|c| codes.iter().any(|code| c.has_code(LOINC, code)))
}

fn vital_charts(b: &Bundle) -> Vec<VitalChart> {
    let obs: Vec<Observation> = b.matches("Observation");
    let mut charts = Vec::new();
    for (codes, title) in VITALS {
        let blood_pressure = *codes == BLOOD_PRESSURE_PANELS;
        // Newest first, as searched; each point's series by code (systolic, diastolic), a missing one empty.
        let mut points: Vec<(String, Vec<Option<f64>>, String, String)> = obs
            .iter()
            .filter(|o| is_vital(o, codes) && display::is_result(o.status.as_deref()))
            .filter_map(|o| {
                let when = day(&o.effective_date_time);
                if blood_pressure {
                    let (sys, dia) = (component(o, SYSTOLIC), component(o, DIASTOLIC));
                    let (unit, key) = sys.or(dia).map(|q| (unit_of(q), unit_key(q))).unwrap_or_default();
                    let values = vec![sys.and_then(|q| q.value), dia.and_then(|q| q.value)];
                    values.iter().any(Option::is_some).then_some((when, values, unit, key))
                } else {
                    let q = o.value_quantity.as_ref()?;
                    Some((when, vec![Some(q.value?)], unit_of(q), unit_key(q)))
                }
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        // One axis, one unit: only the readings in the latest reading's unit (a weight in lb among kg would
        // be drawn as if it were kg).
        let (unit, key) = points.first().map(|p| (p.2.clone(), p.3.clone())).unwrap_or_default();
        points.retain(|p| p.3 == key);
        points.truncate(12);
        points.reverse(); // oldest first
        let recent: Vec<(String, Vec<Option<f64>>)> = points.into_iter().map(|(d, v, _, _)| (d, v)).collect();
        let (last_day, last) = recent.last().cloned().unwrap_or_default();
        let shown: Vec<String> =
            last.iter().map(|v| v.map(|v| if blood_pressure { format!("{v:.0}") } else { number(v) }).unwrap_or_else(|| "—".into())).collect();
        let latest = format!("{} on {last_day}", display::with_unit(&shown.join("/"), &unit));
        let series: &[&str] = if blood_pressure { &["Systolic", "Diastolic"] } else { &[] };
        charts.push(VitalChart { title: title.to_string(), svg: svg::trend(title, &unit, series, &recent), latest });
    }
    charts
}

fn lab_row(o: &Observation) -> Lab {
    let q = o.value_quantity.as_ref();
    let value = q
        .and_then(|q| Some(display::with_unit(&display::compared(q.comparator.as_deref(), q.value?), &unit_of(q))))
        .or_else(|| o.value_codeable_concept.as_ref().map(|c| c.display()))
        .or_else(|| o.value_string.clone())
        .or_else(|| o.data_absent_reason.as_ref().map(|r| format!("no value ({})", r.display().to_lowercase())))
        .unwrap_or_default();
    // A preliminary result is not the final word.
    let value = if o.status.as_deref() == Some("preliminary") { format!("{value} (preliminary)") } else { value };
    let range = o
        .reference_range
        .first()
        .and_then(|r| {
            let unit = r.high.as_ref().or(r.low.as_ref()).map(unit_of).unwrap_or_default();
            match (r.low.as_ref().and_then(|l| l.value), r.high.as_ref().and_then(|h| h.value)) {
                (Some(l), Some(h)) => Some(display::with_unit(&format!("{}–{}", number(l), number(h)), &unit)),
                (None, Some(h)) => Some(display::with_unit(&format!("≤ {}", number(h)), &unit)),
                (Some(l), None) => Some(display::with_unit(&format!("≥ {}", number(l)), &unit)),
                (None, None) => r.text.clone(),
            }
        })
        .unwrap_or_default();
    let interpretation = o.interpretation.first().and_then(|i| i.coding.first()).and_then(|c| c.code.clone()).unwrap_or_default();
    // A bound (`<5`, `>600`) is flagged only where it settles it: `>600` is above a high of 99, `<5` is not.
    let comparator = q.and_then(|q| q.comparator.as_deref());
    let (up, down) = match comparator {
        None => (true, true),
        Some(">" | ">=") => (true, false),
        Some(_) => (false, true),
    };
    let bound = matches!(comparator, Some(">" | "<"));
    let computed = match (q.and_then(|q| q.value), o.reference_range.first()) {
        // `>99` against a high of 99 is above it; an exact 99 is not.
        (Some(v), Some(r)) if up && r.high.as_ref().and_then(|h| h.value).is_some_and(|h| v > h || (bound && v >= h)) => "H",
        (Some(v), Some(r)) if down && r.low.as_ref().and_then(|l| l.value).is_some_and(|l| v < l || (bound && v <= l)) => "L",
        _ => "",
    };
    let flag = match if interpretation.is_empty() { computed } else { interpretation.as_str() } {
        "HH" => "Critical high",
        "LL" => "Critical low",
        "H" => "High",
        "L" => "Low",
        "A" | "AA" => "Abnormal",
        _ => "",
    };
    Lab { name: o.code.as_ref().map(|c| c.display()).unwrap_or_default(), value, range, flag: flag.into(), date: day(&o.effective_date_time) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vital(code: &str, when: &str, value: f64, unit: &str, ucum: &str) -> serde_json::Value {
        json!({"fullUrl": format!("urn:{when}"), "search": {"mode": "match"}, "resource": {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}]}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": ucum}}})
    }

    /// A trend is drawn in one unit: readings in another are left out, but the same UCUM unit written in
    /// other words is the same unit.
    #[test]
    fn a_trend_keeps_the_readings_in_the_latest_unit() {
        let bundle: Bundle = serde_json::from_value(json!({"resourceType": "Bundle", "type": "searchset", "entry": [
            vital("8867-4", "2026-03-01", 72.0, "beats/minute", "/min"),
            vital("8867-4", "2026-02-01", 70.0, "/min", "/min"),
            vital("29463-7", "2026-03-01", 80.0, "kg", "kg"),
            vital("29463-7", "2026-02-01", 180.0, "lb", "[lb_av]"),
        ]}))
        .unwrap();
        let charts = vital_charts(&bundle);
        let chart = |title: &str| charts.iter().find(|c| c.title == title).unwrap();
        assert_eq!(chart("Heart rate").svg.matches("<circle").count(), 2, "one unit in two spellings");
        assert_eq!(chart("Weight").svg.matches("<circle").count(), 1, "180 lb is not drawn as 180 kg");
        assert!(chart("Weight").latest.starts_with("80 kg"), "{}", chart("Weight").latest);
    }
}
