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
const HBA1C: &str = "4548-4";
const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";

/// The order check on `order-sign`.
pub const ORDER_SIGN_ID: &str = "kindling-order-review";
/// The same check on `order-select` (as each order is chosen).
pub const ORDER_SELECT_ID: &str = "kindling-order-select";
/// The code system of the order check's override reasons.
pub const OVERRIDE_SYSTEM: &str = "urn:kindling:cds:override-reason";
/// Oral NSAIDs by RxNorm code (ibuprofen 200 mg, naproxen 500 mg, naproxen sodium 220 mg tablets).
const NSAIDS: [&str; 3] = ["310965", "198014", "849574"];
/// NSAIDs by name, for orders coded otherwise.
const NSAID_NAMES: [&str; 6] = ["ibuprofen", "naproxen", "diclofenac", "celecoxib", "meloxicam", "ketorolac"];

/// The discovery document.
pub fn discovery() -> Discovery {
    // Only what the card needs: the last three final readings.
    let mut prefetch = Map::new();
    prefetch.insert(
        "bp".into(),
        json!(format!("Observation?patient={{{{context.patientId}}}}&code={LOINC}|{PANEL}&status=final,amended,corrected&_sort=-date&_count=3")),
    );
    let mut orders = prefetch.clone();
    orders.insert(
        "a1c".into(),
        json!(format!("Observation?patient={{{{context.patientId}}}}&code={LOINC}|{HBA1C}&status=final,amended,corrected&_sort=-date&_count=1")),
    );
    let review = "Checks orders against the record: an NSAID while the latest blood pressure is at or above 140/90 mmHg (suggests acetaminophen instead), and an HbA1c within three months of the last one.";
    Discovery {
        services: vec![
            Service {
                hook: "patient-view".into(),
                id: SERVICE_ID.into(),
                title: Some("Raised blood pressure".into()),
                description:
                    "A card when the patient's latest blood pressure of the last twelve months is at or above 140/90 mmHg, with a link to review the readings in the patient summary."
                        .into(),
                prefetch,
            },
            Service {
                hook: "order-select".into(),
                id: ORDER_SELECT_ID.into(),
                title: Some("Order check (as orders are chosen)".into()),
                description: review.into(),
                prefetch: orders.clone(),
            },
            Service { hook: "order-sign".into(), id: ORDER_SIGN_ID.into(), title: Some("Order check".into()), description: review.into(), prefetch: orders },
        ],
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

/// The prefetched readings (`bp`), newest first whatever order the EHR sent them in.
fn readings(request: &HookRequest) -> Vec<Reading> {
    let mut readings: Vec<Reading> = request
        .prefetch
        .get("bp")
        .and_then(|b| b["entry"].as_array())
        .map_or_else(Vec::new, |entries| entries.iter().filter_map(|e| reading(&e["resource"])).collect());
    readings.sort_by_key(|r| std::cmp::Reverse(r.at));
    readings
}

/// The latest reading, when it is of the last twelve months and at or above 140/90 mmHg.
fn raised(readings: &[Reading], now_ms: i64) -> Option<&Reading> {
    readings.first().filter(|last| last.at >= now_ms - 365 * 86_400_000 && (last.systolic >= 140.0 || last.diastolic >= 90.0))
}

fn mmhg(r: &Reading) -> String {
    format!("{:.0}/{:.0} mmHg", r.systolic, r.diastolic)
}

/// The cards for a `patient-view` call at `now_ms`: one when the latest reading of the last twelve months is
/// at or above 140/90 mmHg, none when it is below, older, or when the EHR prefetched no readings (not
/// allowed, or none recorded). `launch_url` is the app's launch URL, for the SMART link.
pub fn patient_view(request: &HookRequest, launch_url: &str, now_ms: i64) -> Cards {
    let readings = readings(request);
    let Some(last) = raised(&readings, now_ms) else { return Cards::default() };
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
            suggestions: Vec::new(),
            selection_behavior: None,
            override_reasons: Vec::new(),
            links: vec![Link {
                label: "Review blood pressure in the patient summary".into(),
                url: launch_url.into(),
                kind: "smart".into(),
                app_context: Some(BLOOD_PRESSURE_TOPIC.into()),
            }],
        }],
    }
}

/// The draft orders a call is about: on `order-select` the ones just chosen (`selections`), on `order-sign`
/// all of them (`draftOrders`).
fn orders_in_question(request: &HookRequest) -> Vec<&Value> {
    let drafts = request.context.get("draftOrders").and_then(|b| b["entry"].as_array()).map_or_else(Vec::new, |e| e.iter().map(|e| &e["resource"]).collect());
    if request.hook != "order-select" {
        return drafts;
    }
    let selected: Vec<&str> =
        request.context.get("selections").and_then(Value::as_array).map_or_else(Vec::new, |s| s.iter().filter_map(Value::as_str).collect());
    drafts
        .into_iter()
        .filter(|r| {
            let reference = format!("{}/{}", r["resourceType"].as_str().unwrap_or_default(), r["id"].as_str().unwrap_or_default());
            selected.contains(&reference.as_str())
        })
        .collect()
}

/// What people call a coded thing: its text, else its first coding's display.
fn named(concept: &Value) -> String {
    concept["text"].as_str().or_else(|| concept["coding"][0]["display"].as_str()).unwrap_or("This medication").to_string()
}

/// Whether a MedicationRequest orders an NSAID (by RxNorm code, or by name).
fn is_nsaid(order: &Value) -> bool {
    let concept = &order["medicationCodeableConcept"];
    let coded =
        concept["coding"].as_array().is_some_and(|c| c.iter().any(|c| c["system"] == RXNORM && c["code"].as_str().is_some_and(|code| NSAIDS.contains(&code))));
    let text = named(concept).to_lowercase();
    coded || NSAID_NAMES.iter().any(|n| text.contains(n))
}

fn override_reason(code: &str, display: &str) -> client::cds::Coding {
    client::cds::Coding { system: Some(OVERRIDE_SYSTEM.into()), code: code.into(), display: Some(display.into()) }
}

/// The order check (`order-select` and `order-sign`) at `now_ms`:
///
/// - an oral NSAID ordered while the latest blood pressure of the last twelve months is at or above 140/90
///   mmHg: a warning (NSAIDs raise blood pressure and blunt most antihypertensives, ACC/AHA 2017), with the
///   suggestion to order acetaminophen instead (delete the NSAID order, create the acetaminophen one);
/// - an HbA1c ordered within three months of the last result: information (it reflects about three months
///   of glucose; ADA Standards of Care: twice a year at goal, quarterly when not), with the suggestion to
///   remove the order.
pub fn order_review(request: &HookRequest, now_ms: i64) -> Cards {
    let patient = request.context.get("patientId").and_then(Value::as_str).unwrap_or_default();
    let readings = readings(request);
    // Acetaminophen already among the drafts: the suggestion only removes the NSAID (never a second
    // acetaminophen order, whose doses would add up).
    let all_drafts =
        request.context.get("draftOrders").and_then(|b| b["entry"].as_array()).map_or_else(Vec::new, |e| e.iter().map(|e| &e["resource"]).collect());
    let has_acetaminophen = all_drafts.iter().any(|d| {
        d["resourceType"] == "MedicationRequest" && {
            let concept = &d["medicationCodeableConcept"];
            let coded = concept["coding"].as_array().is_some_and(|c| c.iter().any(|c| c["system"] == RXNORM && c["code"] == "313782"));
            let name = named(concept).to_lowercase();
            coded || name.contains("acetaminophen") || name.contains("paracetamol")
        }
    });
    let mut cards = Vec::new();
    for order in orders_in_question(request) {
        if order["resourceType"] == "MedicationRequest" && is_nsaid(order) && !request.prefetch.contains_key("bp") {
            // The EHR did not share the readings (not allowed, or not prefetched): say so, do not stay silent.
            let drug: String = named(&order["medicationCodeableConcept"]).chars().take(50).collect();
            cards.push(Card {
                uuid: Some(uuid::Uuid::new_v4().to_string()),
                summary: format!("{drug}: blood pressure could not be checked"),
                detail: Some("The EHR did not share this patient's blood pressure readings with the order check, so whether this NSAID may raise an already high blood pressure was not checked. Check the latest reading before signing.".into()),
                indicator: "info".into(),
                source: Source { label: "Kindling reference app: order check".into(), url: None },
                suggestions: Vec::new(),
                selection_behavior: None,
                override_reasons: Vec::new(),
                links: Vec::new(),
            });
        }
        let id = format!("{}/{}", order["resourceType"].as_str().unwrap_or_default(), order["id"].as_str().unwrap_or_default());
        if order["resourceType"] == "MedicationRequest"
            && is_nsaid(order)
            && let Some(last) = raised(&readings, now_ms)
        {
            let drug = named(&order["medicationCodeableConcept"]);
            let short: String = drug.chars().take(50).collect();
            let instructions = "2 tablets (650 mg) by mouth every 6 hours as needed for pain; no more than 8 tablets (2.6 g) a day";
            let acetaminophen = json!({"resourceType": "MedicationRequest", "status": "draft", "intent": "order",
                "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "313782", "display": "Acetaminophen 325 MG Oral Tablet"}], "text": "Acetaminophen 325 MG Oral Tablet"},
                "subject": {"reference": format!("Patient/{patient}")}, "dosageInstruction": [{"text": instructions}]});
            cards.push(Card {
                uuid: Some(uuid::Uuid::new_v4().to_string()),
                summary: format!("{short} can raise blood pressure: latest {} on {}", mmhg(last), day(last)),
                detail: Some(format!(
                    "NSAIDs raise blood pressure and weaken the effect of most blood-pressure medicines (the ACC/AHA 2017 guideline lists them among the drugs that raise it). This patient's latest reading of the last twelve months is **{}** ({}).\n\nAcetaminophen is the usual first choice for pain in hypertension; taken regularly at high doses it can raise blood pressure a little too.",
                    mmhg(last),
                    day(last)
                )),
                indicator: "warning".into(),
                source: Source { label: "Kindling reference app: order check".into(), url: None },
                suggestions: vec![{
                    let remove = client::cds::Action { kind: "delete".into(), description: format!("Remove the order for {short}"), resource: None, resource_id: Some(json!(id)) };
                    if has_acetaminophen {
                        client::cds::Suggestion {
                            label: format!("Remove {short} (acetaminophen is already ordered)"),
                            uuid: Some(uuid::Uuid::new_v4().to_string()),
                            is_recommended: Some(true),
                            actions: vec![remove],
                        }
                    } else {
                        client::cds::Suggestion {
                            label: "Order acetaminophen 325 mg instead".into(),
                            uuid: Some(uuid::Uuid::new_v4().to_string()),
                            is_recommended: Some(true),
                            actions: vec![
                                remove,
                                client::cds::Action {
                                    kind: "create".into(),
                                    description: format!("Order acetaminophen 325 mg tablets: {instructions}"),
                                    resource: Some(acetaminophen),
                                    resource_id: None,
                                },
                            ],
                        }
                    }
                }],
                selection_behavior: Some("at-most-one".into()),
                override_reasons: vec![
                    override_reason("short-course", "Short course; the risk was discussed with the patient"),
                    override_reason("bp-rechecked", "Blood pressure is controlled on a repeat measurement"),
                ],
                links: Vec::new(),
            });
        }
        let lab = order["resourceType"] == "ServiceRequest" && has_loinc(&order["code"], HBA1C);
        if lab && let Some((days, value)) = recent_a1c(request, now_ms) {
            cards.push(Card {
                uuid: Some(uuid::Uuid::new_v4().to_string()),
                summary: format!("HbA1c was measured {days} days ago ({value})"),
                detail: Some(
                    "HbA1c reflects the average glucose of about three months, so a repeat sooner rarely changes treatment. The ADA Standards of Care advise testing at least twice a year when at goal, and every three months when treatment has changed or the goal is not met."
                        .into(),
                ),
                indicator: "info".into(),
                source: Source { label: "Kindling reference app: order check".into(), url: None },
                suggestions: vec![client::cds::Suggestion {
                    label: "Remove the HbA1c order".into(),
                    uuid: Some(uuid::Uuid::new_v4().to_string()),
                    is_recommended: Some(true),
                    actions: vec![client::cds::Action {
                        kind: "delete".into(),
                        description: "Remove the HbA1c order".into(),
                        resource: None,
                        resource_id: Some(json!(id)),
                    }],
                }],
                selection_behavior: Some("at-most-one".into()),
                override_reasons: vec![override_reason("result-needed", "Treatment changed; a result is needed now")],
                links: Vec::new(),
            });
        }
    }
    Cards { cards }
}

/// The last HbA1c result (`a1c`), when it is under 90 days old: how many days, and the value as read.
fn recent_a1c(request: &HookRequest, now_ms: i64) -> Option<(i64, String)> {
    let obs = &request.prefetch.get("a1c")?["entry"].as_array()?.first()?["resource"];
    if !has_loinc(&obs["code"], HBA1C) || !matches!(obs["status"].as_str(), Some("final" | "amended" | "corrected")) {
        return None;
    }
    let at = fhir::time::parse_date_range(obs["effectiveDateTime"].as_str().or(obs["effectivePeriod"]["start"].as_str())?)?.lo;
    let days = (now_ms - at) / 86_400_000;
    let q = &obs["valueQuantity"];
    let value = format!("{} {}", q["value"].as_f64()?, q["unit"].as_str().or(q["code"].as_str()).unwrap_or_default()).trim().to_string();
    (0..90).contains(&days).then_some((days, value))
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

    fn order_call(hook: &str, readings: Vec<Value>, a1c: Option<Value>, selections: &[&str]) -> HookRequest {
        let ibuprofen = json!({"resourceType": "MedicationRequest", "id": "m1", "status": "draft", "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "310965", "display": "Ibuprofen 200 MG Oral Tablet"}]}});
        let lisinopril = json!({"resourceType": "MedicationRequest", "id": "m2", "status": "draft", "intent": "order", "medicationCodeableConcept": {"text": "Lisinopril 10 MG Oral Tablet"}});
        let a1c_order =
            json!({"resourceType": "ServiceRequest", "id": "s1", "status": "draft", "intent": "order", "code": {"coding": [{"system": LOINC, "code": HBA1C}]}});
        let entries: Vec<Value> = readings.into_iter().map(|r| json!({"resource": r})).collect();
        let a1c = a1c.map_or(json!(null), |o| json!({"resourceType": "Bundle", "entry": [{"resource": o}]}));
        serde_json::from_value(json!({"hook": hook, "hookInstance": "h", "context": {"patientId": "p1", "selections": selections,
            "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": ibuprofen}, {"resource": lisinopril}, {"resource": a1c_order}]}},
            "prefetch": {"bp": {"resourceType": "Bundle", "entry": entries}, "a1c": a1c}}))
        .unwrap()
    }

    #[test]
    fn an_nsaid_with_raised_pressure_gets_a_swap_and_a_recent_hba1c_a_removal() {
        let a1c = |when: &str| json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": LOINC, "code": HBA1C}]}, "effectiveDateTime": when, "valueQuantity": {"value": 7.2, "unit": "%"}});
        let call = order_call("order-sign", vec![bp(152.0, 96.0, "2026-11-02", true)], Some(a1c("2026-10-15")), &[]);
        let cards = order_review(&call, NOW).cards;
        assert_eq!(cards.len(), 2, "{cards:?}");
        let nsaid = &cards[0];
        assert_eq!(nsaid.summary, "Ibuprofen 200 MG Oral Tablet can raise blood pressure: latest 152/96 mmHg on 2026-11-02");
        assert_eq!(nsaid.indicator, "warning");
        let actions = &nsaid.suggestions[0].actions;
        assert_eq!((actions[0].kind.as_str(), actions[0].resource_id.clone()), ("delete", Some(json!("MedicationRequest/m1"))));
        let created = actions[1].resource.as_ref().unwrap();
        assert_eq!((actions[1].kind.as_str(), created["medicationCodeableConcept"]["coding"][0]["code"].as_str()), ("create", Some("313782")));
        assert_eq!(created["subject"]["reference"], "Patient/p1");
        assert_eq!(nsaid.selection_behavior.as_deref(), Some("at-most-one"));
        assert_eq!(nsaid.override_reasons.len(), 2);
        assert_eq!(cards[1].summary, "HbA1c was measured 47 days ago (7.2 %)");
        assert_eq!(cards[1].suggestions[0].actions[0].resource_id, Some(json!("ServiceRequest/s1")));
        // Controlled pressure and an old HbA1c: nothing to say.
        assert!(order_review(&order_call("order-sign", vec![bp(128.0, 80.0, "2026-11-02", false)], Some(a1c("2026-06-01")), &[]), NOW).cards.is_empty());
        // order-select looks at the selection only.
        let select = order_call("order-select", vec![bp(152.0, 96.0, "2026-11-02", false)], None, &["MedicationRequest/m2"]);
        assert!(order_review(&select, NOW).cards.is_empty());
        let select = order_call("order-select", vec![bp(152.0, 96.0, "2026-11-02", false)], None, &["MedicationRequest/m1"]);
        assert_eq!(order_review(&select, NOW).cards.len(), 1);
        assert_eq!(discovery().services.iter().map(|s| s.hook.as_str()).collect::<Vec<_>>(), ["patient-view", "order-select", "order-sign"]);
        // Readings not shared: said, not silent.
        let mut unshared = order_call("order-select", vec![], None, &["MedicationRequest/m1"]);
        unshared.prefetch.remove("bp");
        let cards = order_review(&unshared, NOW).cards;
        assert_eq!((cards.len(), cards[0].summary.as_str()), (1, "Ibuprofen 200 MG Oral Tablet: blood pressure could not be checked"));
        // Acetaminophen already drafted: the NSAID is only removed, never a second acetaminophen ordered.
        let mut both = order_call("order-sign", vec![bp(152.0, 96.0, "2026-11-02", false)], None, &[]);
        let drafts = both.context.get_mut("draftOrders").unwrap()["entry"].as_array_mut().unwrap();
        drafts.push(json!({"resource": {"resourceType": "MedicationRequest", "id": "m3", "status": "draft", "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "313782", "display": "Acetaminophen 325 MG Oral Tablet"}]}}}));
        let card = &order_review(&both, NOW).cards[0];
        assert_eq!(card.suggestions[0].actions.iter().map(|a| a.kind.as_str()).collect::<Vec<_>>(), ["delete"]);
    }
}
