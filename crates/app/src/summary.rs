//! The first screen: every section fetched in parallel, each gated on what was granted first, each
//! degrading on its own with a short explanation in clinical language.

use crate::svg;
use client::types::{AllergyIntolerance, Bundle, Condition, Encounter, MedicationRequest, Observation, Patient};
use client::{Error, Interaction, Session};

/// A section's content, or why it is not shown.
pub struct Section<T> {
    pub data: Option<T>,
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

pub struct Row {
    pub text: String,
    pub detail: String,
}

pub struct PatientBanner {
    pub name: String,
    pub gender: String,
    pub birth_date: String,
    pub identifier: String,
}

pub struct VitalChart {
    pub title: String,
    pub latest: String,
    pub svg: String,
}

pub struct Lab {
    pub name: String,
    pub value: String,
    pub range: String,
    /// "High", "Low", "Abnormal" or "".
    pub flag: String,
    pub date: String,
}

pub struct Summary {
    pub patient: Section<PatientBanner>,
    pub encounter: Option<Section<Row>>,
    pub problems: Section<Vec<Row>>,
    pub medications: Section<Vec<Row>>,
    pub allergies: Section<Vec<Row>>,
    pub vitals: Section<Vec<VitalChart>>,
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

const VITALS: &[(&str, &str)] = &[("85354-9", "Blood pressure"), ("8867-4", "Heart rate"), ("29463-7", "Weight"), ("39156-5", "BMI")];
const LOINC: &str = "http://loinc.org";

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
                identifier: p.identifier.first().and_then(|i| i.value.clone()).unwrap_or_default(),
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
        match fhir.search("Condition", &[("patient", pid), ("clinical-status", "active"), ("_count", "100")]).await {
            Ok(b) => Section::ready(b.matches::<Condition>("Condition").into_iter().map(|c| Row { text: c.code.map(|x| x.display()).unwrap_or_default(), detail: format!("since {}", day(&c.onset_date_time)) }).collect()),
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
                    .map(|m| Row { text: m.medication_codeable_concept.map(|x| x.display()).unwrap_or_else(|| "Medication".into()), detail: m.dosage_instruction.first().and_then(|d| d.text.clone()).unwrap_or_default() })
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
            Ok(b) => Section::ready(b.matches::<AllergyIntolerance>("AllergyIntolerance").into_iter().map(|a| Row { text: a.code.map(|x| x.display()).unwrap_or_default(), detail: a.criticality.map(|c| format!("criticality {c}")).unwrap_or_default() }).collect()),
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
            Ok(b) => Section::ready(b.matches::<Observation>("Observation").iter().map(lab_row).collect()),
            Err(e) => Section::from_error(&e, "Laboratory results"),
        }
    };
    let (patient, encounter, problems, medications, allergies, vitals, labs) = tokio::join!(patient, encounter, problems, medications, allergies, vitals, labs);
    let ended = |m: &Option<String>| m.as_deref().is_some_and(|m| m.contains("session with the record system has ended"));
    let session_ended = ended(&patient.message) || ended(&problems.message) || ended(&medications.message) || ended(&allergies.message) || ended(&vitals.message) || ended(&labs.message);
    Summary { patient, encounter, problems, medications, allergies, vitals, labs, session_ended }
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.1}") }
}

fn vital_charts(b: &Bundle) -> Vec<VitalChart> {
    let obs: Vec<Observation> = b.matches("Observation");
    let mut charts = Vec::new();
    for (code, title) in VITALS {
        let mut points: Vec<(String, Vec<f64>)> = obs
            .iter()
            .filter(|o| o.code.as_ref().is_some_and(|c| c.has_code(LOINC, code)))
            .filter_map(|o| {
                let when = day(&o.effective_date_time);
                if *code == "85354-9" {
                    let sys = o.component.iter().find(|c| c.code.as_ref().is_some_and(|x| x.has_code(LOINC, "8480-6")))?.value_quantity.as_ref()?.value?;
                    let dia = o.component.iter().find(|c| c.code.as_ref().is_some_and(|x| x.has_code(LOINC, "8462-4")))?.value_quantity.as_ref()?.value?;
                    Some((when, vec![sys, dia]))
                } else {
                    Some((when, vec![o.value_quantity.as_ref()?.value?]))
                }
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        points.reverse(); // oldest first
        let recent: Vec<(String, Vec<f64>)> = points.iter().rev().take(12).rev().cloned().collect();
        let unit = obs
            .iter()
            .find(|o| o.code.as_ref().is_some_and(|c| c.has_code(LOINC, code)))
            .and_then(|o| o.value_quantity.as_ref().and_then(|q| q.unit.clone()).or_else(|| o.component.first().and_then(|c| c.value_quantity.as_ref()?.unit.clone())))
            .unwrap_or_default();
        let (last_day, last) = recent.last().cloned().unwrap_or_default();
        let latest = format!("{} {unit} on {last_day}", last.iter().map(|v| number(*v)).collect::<Vec<_>>().join("/"));
        charts.push(VitalChart { title: title.to_string(), svg: svg::trend(title, &unit, &recent), latest });
    }
    charts
}

fn lab_row(o: &Observation) -> Lab {
    let q = o.value_quantity.as_ref();
    let value = q.and_then(|q| q.value).map(|v| format!("{} {}", number(v), q.and_then(|q| q.unit.clone()).unwrap_or_default())).unwrap_or_else(|| o.value_string.clone().unwrap_or_default());
    let range = o
        .reference_range
        .first()
        .map(|r| r.text.clone().unwrap_or_else(|| format!("{}–{}", r.low.as_ref().and_then(|l| l.value).map(number).unwrap_or_default(), r.high.as_ref().and_then(|h| h.value).map(number).unwrap_or_default())))
        .unwrap_or_default();
    let interpretation = o.interpretation.first().and_then(|i| i.coding.first()).and_then(|c| c.code.clone()).unwrap_or_default();
    let computed = match (q.and_then(|q| q.value), o.reference_range.first()) {
        (Some(v), Some(r)) if r.high.as_ref().and_then(|h| h.value).is_some_and(|h| v > h) => "H",
        (Some(v), Some(r)) if r.low.as_ref().and_then(|l| l.value).is_some_and(|l| v < l) => "L",
        _ => "",
    };
    let flag = match if interpretation.is_empty() { computed } else { interpretation.as_str() } {
        "H" | "HH" => "High",
        "L" | "LL" => "Low",
        "A" | "AA" => "Abnormal",
        _ => "",
    };
    Lab { name: o.code.as_ref().map(|c| c.display()).unwrap_or_default(), value, range, flag: flag.into(), date: day(&o.effective_date_time) }
}
