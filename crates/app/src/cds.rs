//! The reference app's decision-support service (CDS Hooks 2.0): on `patient-view`, a card when the latest
//! blood pressure of the last twelve months is at or above 140/90 mmHg (the stage 2 range of the ACC/AHA
//! 2017 guideline), with a SMART link that opens the app on that topic (`appContext`). It reads only what
//! the EHR prefetched under the user's rights, and answers only EHRs the app is configured for, whose
//! signed JWT it verifies.

use client::cds::{Card, Cards, Discovery, HookRequest, Link, Service, Source};
use serde_json::{Map, Value, json};

/// The service's id (it is called at `{public_url}/app/cds-services/{SERVICE_ID}`).
pub const SERVICE_ID: &str = "kindling-blood-pressure";

/// The `appContext` of the card's link: the summary opens on blood pressure.
pub const BLOOD_PRESSURE_TOPIC: &str = r#"{"topic":"blood-pressure"}"#;

const LOINC: &str = "http://loinc.org";
const PANEL: &str = "85354-9";
const SYSTOLIC: &str = "8480-6";
const DIASTOLIC: &str = "8462-4";

/// The discovery document.
pub fn discovery() -> Discovery {
    // Only what the card needs: the last three final readings.
    let mut prefetch = Map::new();
    prefetch.insert(
        "bp".into(),
        json!(format!("Observation?patient={{{{context.patientId}}}}&code={LOINC}|{PANEL}&status=final,amended,corrected&_sort=-date&_count=3")),
    );
    Discovery {
        services: vec![Service {
            hook: "patient-view".into(),
            id: SERVICE_ID.into(),
            title: Some("Raised blood pressure".into()),
            description: "A card when the patient's latest blood pressure of the last twelve months is at or above 140/90 mmHg, with a link to review the readings in the patient summary."
                .into(),
            prefetch,
        }],
    }
}

/// One reading: systolic and diastolic (mmHg) and when.
#[derive(Debug, Clone, PartialEq)]
struct Reading {
    systolic: f64,
    diastolic: f64,
    when: String,
    /// When, in Unix ms (for ordering across time zones).
    at: i64,
}

/// Whether a CodeableConcept carries the LOINC `code`.
fn has_loinc(concept: &Value, code: &str) -> bool {
    concept["coding"].as_array().is_some_and(|c| c.iter().any(|c| c["system"] == LOINC && c["code"] == code))
}

/// A blood-pressure panel's values, its components found by their codes (never by their order).
fn reading(obs: &Value) -> Option<Reading> {
    if !has_loinc(&obs["code"], PANEL) || !matches!(obs["status"].as_str(), Some("final" | "amended" | "corrected")) {
        return None;
    }
    // A value in mmHg (UCUM `mm[Hg]`, or the unit written so), found by its component's code.
    let value = |code: &str| {
        let q = &obs["component"].as_array()?.iter().find(|c| has_loinc(&c["code"], code))?["valueQuantity"];
        let mmhg = q["code"] == "mm[Hg]" || q["unit"] == "mmHg" || q["unit"] == "mm[Hg]";
        if mmhg { q["value"].as_f64() } else { None }
    };
    let when = obs["effectiveDateTime"].as_str().or(obs["effectivePeriod"]["start"].as_str())?;
    let at = fhir::time::parse_date_range(when)?.lo;
    Some(Reading { systolic: value(SYSTOLIC)?, diastolic: value(DIASTOLIC)?, when: when.to_string(), at })
}

/// The day of a reading (`2026-11-02`).
fn day(r: &Reading) -> String {
    r.when.chars().take(10).collect()
}

fn mmhg(r: &Reading) -> String {
    format!("{:.0}/{:.0} mmHg", r.systolic, r.diastolic)
}

/// The cards for a `patient-view` call at `now_ms`: one when the latest reading of the last twelve months is
/// at or above 140/90 mmHg, none when it is below, older, or when the EHR prefetched no readings (not
/// allowed, or none recorded). `launch_url` is the app's launch URL, for the SMART link.
pub fn patient_view(request: &HookRequest, launch_url: &str, now_ms: i64) -> Cards {
    let mut readings: Vec<Reading> = request
        .prefetch
        .get("bp")
        .and_then(|b| b["entry"].as_array())
        .map_or_else(Vec::new, |entries| entries.iter().filter_map(|e| reading(&e["resource"])).collect());
    // Newest first, whatever order the EHR sent them in.
    readings.sort_by_key(|r| std::cmp::Reverse(r.at));
    let Some(last) = readings.first() else { return Cards::default() };
    if last.at < now_ms - 365 * 86_400_000 || (last.systolic < 140.0 && last.diastolic < 90.0) {
        return Cards::default();
    }
    // ACC/AHA 2017: a hypertensive crisis is above 180 and/or above 120 mmHg.
    let crisis = last.systolic > 180.0 || last.diastolic > 120.0;
    let mut detail = String::from("The latest readings:\n\n");
    for r in &readings {
        detail.push_str(&format!("- **{}** on {}\n", mmhg(r), day(r)));
    }
    detail.push_str(if crisis {
        "\nThe latest is in the **hypertensive crisis** range (above 180/120 mmHg): check for symptoms of organ damage and repeat the measurement now."
    } else {
        "\nThe latest is at or above 140/90 mmHg, the stage 2 range of the ACC/AHA 2017 guideline (whose treatment goal for most adults is below 130/80 mmHg). Review the trend and the treatment plan."
    });
    Cards {
        cards: vec![Card {
            uuid: Some(uuid::Uuid::new_v4().to_string()),
            summary: format!("Raised blood pressure: {} on {}", mmhg(last), day(last)),
            detail: Some(detail),
            indicator: if crisis { "critical" } else { "warning" }.into(),
            source: Source { label: "Kindling reference app: blood pressure check".into(), url: None },
            links: vec![Link {
                label: "Review blood pressure in the patient summary".into(),
                url: launch_url.into(),
                kind: "smart".into(),
                app_context: Some(BLOOD_PRESSURE_TOPIC.into()),
            }],
        }],
    }
}

/// The note the summary shows when a card opened it on a topic it knows.
pub fn topic_note(app_context: Option<&str>) -> Option<&'static str> {
    let topic = serde_json::from_str::<Value>(app_context?).ok()?;
    (topic["topic"] == "blood-pressure").then_some("Opened from a decision-support card about blood pressure: the readings are under Vital signs.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bp(sys: f64, dia: f64, when: &str, reversed: bool) -> Value {
        let comp = |code: &str, v: f64| json!({"code": {"coding": [{"system": LOINC, "code": code}]}, "valueQuantity": {"value": v, "unit": "mmHg", "code": "mm[Hg]"}});
        let mut components = vec![comp(SYSTOLIC, sys), comp(DIASTOLIC, dia)];
        if reversed {
            components.reverse();
        }
        json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": LOINC, "code": PANEL}]}, "effectiveDateTime": when, "component": components})
    }

    /// 2026-12-01T00:00:00Z.
    const NOW: i64 = 1_796_083_200_000;

    fn request(readings: Vec<Value>) -> HookRequest {
        let entries: Vec<Value> = readings.into_iter().map(|r| json!({"resource": r})).collect();
        serde_json::from_value(json!({"hook": "patient-view", "hookInstance": "h-1", "context": {"patientId": "p1"},
            "prefetch": {"bp": {"resourceType": "Bundle", "entry": entries}}}))
        .unwrap()
    }

    #[test]
    fn a_card_when_the_last_reading_is_high_with_components_found_by_code() {
        // Diastolic listed first: the values are read by code, not position.
        let cards = patient_view(
            &request(vec![bp(128.0, 82.0, "2026-11-01T10:30:00-05:00", false), bp(152.0, 96.0, "2026-11-02T01:30:00Z", true)]),
            "https://app/launch",
            NOW,
        );
        let card = &cards.cards[0];
        assert_eq!(card.summary, "Raised blood pressure: 152/96 mmHg on 2026-11-02");
        // 23:30 at UTC-5 is after 01:30 UTC the next day: the controlled reading is the latest.
        let later = request(vec![bp(152.0, 96.0, "2026-11-02T01:30:00Z", false), bp(128.0, 82.0, "2026-11-01T23:30:00-05:00", false)]);
        assert!(patient_view(&later, "x", NOW).cards.is_empty(), "ordered by instant, not by text");
        assert_eq!(card.indicator, "warning");
        assert!(card.detail.as_deref().unwrap().contains("**128/82 mmHg** on 2026-11-01"));
        assert!(uuid::Uuid::parse_str(card.uuid.as_deref().unwrap()).is_ok());
        assert_eq!(card.links[0].kind, "smart");
        assert_eq!(card.links[0].app_context.as_deref(), Some(BLOOD_PRESSURE_TOPIC));
        assert!(card.summary.len() < 140);
        assert_eq!(patient_view(&request(vec![bp(184.0, 100.0, "2026-11-02", false)]), "x", NOW).cards[0].indicator, "critical");
        assert_eq!(patient_view(&request(vec![bp(180.0, 120.0, "2026-11-02", false)]), "x", NOW).cards[0].indicator, "warning", "the crisis is above 180/120");
    }

    #[test]
    fn no_card_when_controlled_or_nothing_was_prefetched() {
        assert!(patient_view(&request(vec![bp(152.0, 96.0, "2026-01-01", false), bp(126.0, 78.0, "2026-11-02", false)]), "x", NOW).cards.is_empty());
        assert!(patient_view(&request(vec![bp(162.0, 96.0, "2025-06-01", false)]), "x", NOW).cards.is_empty(), "older than a year");
        assert!(patient_view(&request(vec![]), "x", NOW).cards.is_empty());
        let none: HookRequest = serde_json::from_value(json!({"hook": "patient-view", "hookInstance": "h", "context": {}, "prefetch": {"bp": null}})).unwrap();
        assert!(patient_view(&none, "x", NOW).cards.is_empty());
        let mut preliminary = bp(170.0, 100.0, "2026-11-02", false);
        preliminary["status"] = json!("preliminary");
        assert!(patient_view(&request(vec![preliminary]), "x", NOW).cards.is_empty(), "only final readings count");
        assert_eq!(topic_note(Some(BLOOD_PRESSURE_TOPIC)).map(|n| n.contains("blood pressure")), Some(true));
        assert_eq!(topic_note(Some("not json")), None);
    }
}
