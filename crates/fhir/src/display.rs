//! What a clinician reads: UCUM unit codes in their printed forms, numbers without false precision, and the
//! codes that give multi-component observations their meaning (a component is found by its code, never by
//! its position in the array).

use serde_json::Value;

/// The LOINC code system.
pub const LOINC: &str = "http://loinc.org";
/// Blood-pressure panels: the current LOINC panel and the older one Synthea (and many EHRs) still send.
pub const BLOOD_PRESSURE_PANELS: &[&str] = &["85354-9", "55284-4"];
/// LOINC: systolic blood pressure.
pub const SYSTOLIC: &str = "8480-6";
/// LOINC: diastolic blood pressure.
pub const DIASTOLIC: &str = "8462-4";

/// UCUM codes whose printed form differs from the code.
const UNITS: &[(&str, &str)] = &[
    ("Cel", "°C"),
    ("[degF]", "°F"),
    ("mm[Hg]", "mmHg"),
    ("kg/m2", "kg/m²"),
    ("m2", "m²"),
    ("[in_i]", "in"),
    ("[lb_av]", "lb"),
    ("[oz_av]", "oz"),
    ("10*3/uL", "×10³/µL"),
    ("10*6/uL", "×10⁶/µL"),
    ("10*9/L", "×10⁹/L"),
    ("10*12/L", "×10¹²/L"),
    ("uL", "µL"),
    ("ug", "µg"),
    ("ug/L", "µg/L"),
    ("ug/dL", "µg/dL"),
    ("ug/mL", "µg/mL"),
    ("umol/L", "µmol/L"),
    ("mL/min/{1.73_m2}", "mL/min/1.73 m²"),
    ("[iU]/L", "IU/L"),
    ("m[iU]/L", "mIU/L"),
    ("u[iU]/mL", "µIU/mL"),
    ("a", "years"),
    ("mo", "months"),
    ("wk", "weeks"),
    ("d", "days"),
    ("h", "h"),
    ("1", ""),
    ("(score)", ""),
];

/// A unit as people print it, from a Quantity's `unit` (preferred) or its UCUM `code`: `mm[Hg]` → mmHg,
/// `Cel` → °C, `{beats}/min` → /min; a unit that is already words is kept as it is.
pub fn unit(unit: Option<&str>, code: Option<&str>) -> String {
    let Some(u) = unit.filter(|u| !u.trim().is_empty()).or(code) else { return String::new() };
    let u = u.trim();
    if let Some((_, shown)) = UNITS.iter().find(|(c, _)| *c == u) {
        return (*shown).to_string();
    }
    // UCUM annotations ({score}, {beats}/min, {cells}/uL) carry no unit of their own.
    let mut out = String::with_capacity(u.len());
    let mut depth = 0;
    for ch in u.chars() {
        match ch {
            '{' => depth += 1,
            '}' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(ch),
            _ => {}
        }
    }
    match UNITS.iter().find(|(c, _)| *c == out) {
        Some((_, shown)) => (*shown).to_string(),
        None => out,
    }
}

/// A measured value: whole numbers as they are; otherwise one decimal from 10 up, two below 10 (a
/// creatinine of 0.87 must not read 0.9), without trailing zeros.
pub fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    let s = if v.abs() >= 10.0 { format!("{v:.1}") } else { format!("{v:.2}") };
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".to_string() } else { s.to_string() }
}

/// A value and its unit, separated as printed (`72 /min`, `36.6 °C`, `21 %` → `21%`).
pub fn with_unit(value: &str, unit: &str) -> String {
    match unit {
        "" => value.to_string(),
        "%" | "°C" | "°F" => format!("{value}{unit}"),
        _ => format!("{value} {unit}"),
    }
}

/// A FHIR Quantity (JSON) for people: `None` without a value. Its comparator stays in front: a glucose
/// meter's `>600 mg/dL` is not a reading of 600.
pub fn quantity(q: &Value) -> Option<String> {
    let value = q["value"].as_f64()?;
    Some(with_unit(&compared(q["comparator"].as_str(), value), &unit(q["unit"].as_str(), q["code"].as_str())))
}

/// A number with its Quantity comparator (`<`, `<=`, `>=`, `>`), as a lab prints it: `<5`, `≥90`.
pub fn compared(comparator: Option<&str>, value: f64) -> String {
    let c = match comparator {
        Some("<") => "<",
        Some("<=") => "≤",
        Some(">=") => "≥",
        Some(">") => ">",
        _ => "",
    };
    format!("{c}{}", number(value))
}

/// Why an Observation (JSON) has no value, in words (its `dataAbsentReason`): `None` when it gives none.
pub fn absent_reason(o: &Value) -> Option<String> {
    let r = &o["dataAbsentReason"];
    if !r.is_object() {
        return None;
    }
    let words = r["text"].as_str().or_else(|| r["coding"].as_array()?.iter().find_map(|c| c["display"].as_str().or(c["code"].as_str())));
    Some(format!("no value ({})", words.unwrap_or("reason not given").to_lowercase()))
}

/// Whether an Observation with this `status` is a result to show: not one entered in error, cancelled or
/// only registered (no result yet). A missing status is shown (it is required; the sender's slip).
pub fn is_result(status: Option<&str>) -> bool {
    !matches!(status, Some("entered-in-error" | "cancelled" | "registered"))
}

/// The code of the coding of a CodeableConcept (JSON) in `system`, else of one without a system (and a
/// code), wherever they sit.
fn code_in<'a>(concept: &'a Value, system: &str) -> Option<&'a str> {
    let codings = concept["coding"].as_array()?;
    let code = |pick: &dyn Fn(&Value) -> bool| codings.iter().filter(|c| pick(c)).find_map(|c| c["code"].as_str());
    code(&|c| c["system"] == system).or_else(|| code(&|c| c["system"].is_null()))
}

/// How an allergy is listed, from its clinical and verification status codes: `None` for one entered in
/// error or refuted (not an allergy at all); otherwise a note for one unconfirmed or no longer active
/// (empty for a current, confirmed one).
pub fn allergy_note(clinical: Option<&str>, verification: Option<&str>) -> Option<&'static str> {
    match (clinical, verification) {
        (_, Some("entered-in-error" | "refuted")) => None,
        (Some("inactive" | "resolved"), _) => Some("no longer active"),
        (_, Some("unconfirmed" | "presumed")) => Some("unconfirmed"),
        _ => Some(""),
    }
}

/// [`allergy_note`] of an AllergyIntolerance (JSON).
pub fn allergy_note_of(a: &Value) -> Option<&'static str> {
    allergy_note(
        code_in(&a["clinicalStatus"], "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"),
        code_in(&a["verificationStatus"], "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"),
    )
}

/// The Condition clinical statuses of a problem list's current problems (a search's token list).
pub const CURRENT_PROBLEMS: &str = "active,recurrence,relapse";

/// The medical record number of a Patient (JSON): the identifier typed `MR` (v2-0203), wherever it sits;
/// empty when none is (another identifier, an SSN or a system's UUID, is not an MRN).
pub fn mrn(patient: &Value) -> String {
    patient["identifier"]
        .as_array()
        .and_then(|ids| {
            ids.iter().find(|i| {
                has_code(&i["type"], "http://terminology.hl7.org/CodeSystem/v2-0203", "MR")
                    || i["type"]["coding"].as_array().is_some_and(|c| c.iter().any(|c| c["code"] == "MR" && c["system"].is_null()))
            })
        })
        .and_then(|i| i["value"].as_str())
        .unwrap_or("")
        .to_string()
}

/// A patient's age on `today` as a chart prints it: days under a month, weeks under three months, months
/// under two years, then whole years. `None` for a birth date that cannot be read or is after `today`.
pub fn age(birth: &str, today: time::Date) -> Option<String> {
    let mut parts = birth.split('-').map(|p| p.parse::<i32>().ok());
    let y = parts.next()??;
    let (m, d) = (parts.next().flatten(), parts.next().flatten());
    let mut months = (today.year() - y) * 12 + (today.month() as i32 - m.unwrap_or(1));
    if today.day() as i32 - d.unwrap_or(1) < 0 {
        months -= 1;
    }
    if months < 0 {
        return None;
    }
    if months < 24
        && let (Some(m), Some(d)) = (m, d)
        && let Ok(born) = time::Date::from_calendar_date(y, time::Month::try_from(u8::try_from(m).ok()?).ok()?, u8::try_from(d).ok()?)
    {
        let days = (today - born).whole_days();
        return match days {
            ..0 => None,
            0..31 if months == 0 => Some(format!("{days} d")),
            0..91 if months < 3 => Some(format!("{} wk", days / 7)),
            _ => Some(format!("{months} mo")),
        };
    }
    if months < 24 {
        return Some(format!("{months} mo"));
    }
    Some(format!("{} y", months / 12))
}

/// Whether a CodeableConcept (JSON) carries `system|code`.
pub fn has_code(concept: &Value, system: &str, code: &str) -> bool {
    concept["coding"].as_array().is_some_and(|c| c.iter().any(|c| c["system"] == system && c["code"] == code))
}

/// Whether an Observation (JSON) is a blood pressure: a panel code, or systolic/diastolic components.
pub fn is_blood_pressure(o: &Value) -> bool {
    BLOOD_PRESSURE_PANELS.iter().any(|p| has_code(&o["code"], LOINC, p))
        || o["component"].as_array().is_some_and(|cs| cs.iter().any(|c| has_code(&c["code"], LOINC, SYSTOLIC) || has_code(&c["code"], LOINC, DIASTOLIC)))
}

/// The component of an Observation (JSON) with a LOINC code, wherever it sits in the array.
pub fn component<'a>(o: &'a Value, code: &str) -> Option<&'a Value> {
    o["component"].as_array()?.iter().find(|c| has_code(&c["code"], LOINC, code))
}

/// A blood pressure as printed, systolic over diastolic, whatever the order of the components; a missing
/// half shows as "—", never as the other half moved over. `None` when neither is there.
pub fn blood_pressure(o: &Value) -> Option<String> {
    let sys = component(o, SYSTOLIC).map(|c| &c["valueQuantity"]);
    let dia = component(o, DIASTOLIC).map(|c| &c["valueQuantity"]);
    let shown = |q: Option<&Value>| q.and_then(|q| q["value"].as_f64()).map(|v| format!("{v:.0}"));
    let (s, d) = (shown(sys), shown(dia));
    if s.is_none() && d.is_none() {
        return None;
    }
    let u = [sys, dia].into_iter().flatten().map(|q| unit(q["unit"].as_str(), q["code"].as_str())).find(|u| !u.is_empty()).unwrap_or_else(|| "mmHg".into());
    let dash = || "—".to_string();
    Some(with_unit(&format!("{}/{}", s.unwrap_or_else(dash), d.unwrap_or_else(dash)), &u))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ages_read_as_a_chart_prints_them() {
        use time::macros::date;
        assert_eq!(age("2000-06-15", date!(2026 - 06 - 14)).as_deref(), Some("25 y"));
        assert_eq!(age("2000-06-15", date!(2026 - 06 - 15)).as_deref(), Some("26 y"));
        assert_eq!(age("2000", date!(2026 - 01 - 01)).as_deref(), Some("26 y"));
        assert_eq!(age("2026-11-16", date!(2026 - 12 - 07)).as_deref(), Some("21 d"));
        assert_eq!(age("2026-12-07", date!(2026 - 12 - 07)).as_deref(), Some("0 d"));
        assert_eq!(age("2026-10-01", date!(2026 - 12 - 07)).as_deref(), Some("9 wk"));
        assert_eq!(age("2026-09-07", date!(2026 - 12 - 07)).as_deref(), Some("3 mo"), "three months, not 13 weeks");
        assert_eq!(age("2025-12-08", date!(2026 - 12 - 07)).as_deref(), Some("11 mo"));
        assert_eq!(age("2024-12-08", date!(2026 - 12 - 07)).as_deref(), Some("23 mo"));
        assert_eq!(age("2024-12-07", date!(2026 - 12 - 07)).as_deref(), Some("2 y"));
        assert_eq!(age("2026-12-08", date!(2026 - 12 - 07)), None);
        assert_eq!(age("", date!(2026 - 01 - 01)), None);
    }

    #[test]
    fn allergies_refuted_or_in_error_are_not_listed() {
        assert_eq!(allergy_note(Some("active"), Some("confirmed")), Some(""));
        assert_eq!(allergy_note(Some("active"), Some("refuted")), None);
        assert_eq!(allergy_note(None, Some("entered-in-error")), None);
        assert_eq!(allergy_note(Some("resolved"), Some("confirmed")), Some("no longer active"));
        assert_eq!(allergy_note(Some("active"), Some("unconfirmed")), Some("unconfirmed"));
        let a = json!({"clinicalStatus": {"coding": [{"system": "urn:other", "code": "x"}, {"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
            "verificationStatus": {"coding": [{"display": "Refuted"}, {"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "code": "refuted"}]}});
        assert_eq!(allergy_note_of(&a), None, "found by system, not position");
    }

    #[test]
    fn comparators_stay_with_their_values() {
        assert_eq!(quantity(&json!({"value": 5.0, "comparator": "<", "unit": "mg/L"})), Some("<5 mg/L".into()));
        assert_eq!(quantity(&json!({"value": 90.0, "comparator": ">=", "code": "mL/min/{1.73_m2}"})), Some("≥90 mL/min/1.73 m²".into()));
        assert!(is_result(Some("final")) && is_result(Some("preliminary")) && is_result(None));
        assert!(!is_result(Some("entered-in-error")) && !is_result(Some("cancelled")));
    }

    #[test]
    fn units_read_as_printed() {
        assert_eq!(unit(Some("mm[Hg]"), Some("mm[Hg]")), "mmHg");
        assert_eq!(unit(None, Some("Cel")), "°C");
        assert_eq!(unit(Some("kg/m2"), None), "kg/m²");
        assert_eq!(unit(Some("10*3/uL"), None), "×10³/µL");
        assert_eq!(unit(Some("{beats}/min"), None), "/min");
        assert_eq!(unit(Some("{score}"), None), "");
        assert_eq!(unit(Some("mL/min/{1.73_m2}"), None), "mL/min/1.73 m²");
        assert_eq!(unit(Some("beats per minute"), Some("/min")), "beats per minute");
        assert_eq!(unit(Some(" "), Some("kg")), "kg");
        assert_eq!(unit(Some("mg/dL"), Some("mg/dL")), "mg/dL");
    }

    #[test]
    fn numbers_keep_clinical_precision() {
        assert_eq!(number(72.0), "72");
        assert_eq!(number(36.55), "36.5");
        assert_eq!(number(0.87), "0.87");
        assert_eq!(number(5.60), "5.6");
        assert_eq!(number(129.739), "129.7");
        assert_eq!(number(-0.001), "0");
        assert_eq!(quantity(&json!({"value": 21.0, "unit": "%"})), Some("21%".into()));
        assert_eq!(quantity(&json!({"value": 36.61, "code": "Cel"})), Some("36.6°C".into()));
        assert_eq!(quantity(&json!({"unit": "kg"})), None);
    }

    fn bp(components: Value) -> Value {
        json!({"code": {"coding": [{"system": LOINC, "code": "55284-4"}]}, "component": components})
    }

    fn part(code: &str, v: f64) -> Value {
        json!({"code": {"coding": [{"system": LOINC, "code": code}]}, "valueQuantity": {"value": v, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}})
    }

    #[test]
    fn blood_pressure_is_systolic_over_diastolic_in_any_order() {
        // Synthea's order: diastolic first.
        let o = bp(json!([part(DIASTOLIC, 75.43), part(SYSTOLIC, 129.74)]));
        assert!(is_blood_pressure(&o));
        assert_eq!(blood_pressure(&o).as_deref(), Some("130/75 mmHg"));
        assert_eq!(blood_pressure(&bp(json!([part(SYSTOLIC, 118.0), part(DIASTOLIC, 76.0)]))).as_deref(), Some("118/76 mmHg"));
        assert_eq!(blood_pressure(&bp(json!([part(DIASTOLIC, 80.0)]))).as_deref(), Some("—/80 mmHg"), "a missing half is not shifted");
        assert_eq!(blood_pressure(&bp(json!([part(SYSTOLIC, 140.0)]))).as_deref(), Some("140/— mmHg"));
        assert_eq!(blood_pressure(&bp(json!([]))), None);
        // Components without codes are not guessed at.
        assert_eq!(blood_pressure(&bp(json!([{"valueQuantity": {"value": 120}}, {"valueQuantity": {"value": 80}}]))), None);
        assert!(!is_blood_pressure(&json!({"code": {"coding": [{"system": LOINC, "code": "8867-4"}]}})));
    }
}
