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

/// A FHIR Quantity (JSON) for people: `None` without a value.
pub fn quantity(q: &Value) -> Option<String> {
    let value = q["value"].as_f64()?;
    Some(with_unit(&number(value), &unit(q["unit"].as_str(), q["code"].as_str())))
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
