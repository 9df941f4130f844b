use crate::{TestApp, ids, observation, patient, spawn_app};
use serde_json::{Value, json};

/// Two patients with a handful of observations, a condition, medications and an encounter.
async fn fixture() -> (TestApp, String, String) {
    let app = spawn_app().await;
    let a = app.create(patient("Smith", "Ann", "female", "1970-03-04")).await["id"].as_str().unwrap().to_string();
    let b = app.create(patient("Smythe", "Bob", "male", "1985-11-20")).await["id"].as_str().unwrap().to_string();
    app.create(patient("Müller", "Zoë", "female", "2001-07-07")).await;
    app.create(observation(&a, "vital-signs", "8867-4", "2020-01-05T10:00:00Z", 72.0, "/min")).await;
    app.create(observation(&a, "vital-signs", "8867-4", "2021-06-01T10:00:00Z", 88.0, "/min")).await;
    app.create(observation(&a, "vital-signs", "29463-7", "2022-02-02", 70.5, "kg")).await;
    app.create(observation(&a, "laboratory", "2339-0", "2022-03-03T08:00:00Z", 105.0, "mg/dL")).await;
    app.create(observation(&b, "vital-signs", "8867-4", "2019-12-31T23:00:00Z", 60.0, "/min")).await;
    let enc = app
        .create(json!({
            "resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{a}")},
            "period": {"start": "2022-02-02T09:00:00Z", "end": "2022-02-02T09:30:00Z"}
        }))
        .await;
    let enc_id = enc["id"].as_str().unwrap().to_string();
    let med = app
        .create(json!({"resourceType": "Medication", "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "314076"}]}}))
        .await;
    app.create(json!({
        "resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "medicationReference": {"reference": format!("Medication/{}", med["id"].as_str().unwrap())},
        "subject": {"reference": format!("Patient/{a}")},
        "encounter": {"reference": format!("Encounter/{enc_id}")},
        "authoredOn": "2022-02-02"
    }))
    .await;
    app.create(json!({
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}]}],
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003", "display": "Hypertension"}]},
        "subject": {"reference": format!("Patient/{a}")},
        "onsetDateTime": "2015-05-05"
    }))
    .await;
    (app, a, b)
}

fn total(b: &Value) -> u64 {
    b["total"].as_u64().unwrap_or(u64::MAX)
}

#[tokio::test]
async fn string_parameters() {
    let (app, _, _) = fixture().await;
    assert_eq!(total(&app.search("Patient?name=smi").await), 1, "prefix, case-insensitive");
    assert_eq!(total(&app.search("Patient?family=sm").await), 2);
    assert_eq!(total(&app.search("Patient?family:exact=Smith").await), 1);
    assert_eq!(total(&app.search("Patient?family:exact=smith").await), 0, "exact is case-sensitive");
    assert_eq!(total(&app.search("Patient?name:contains=myth").await), 1);
    assert_eq!(total(&app.search("Patient?family=muller").await), 1, "accent-insensitive");
    assert_eq!(total(&app.search("Patient?given=ann,bob").await), 2, "comma is OR");
    assert_eq!(total(&app.search("Patient?family=sm&given=bob").await), 1, "repeated parameters are AND");
    assert_eq!(total(&app.search("Patient?name=s&name=smy").await), 1);
}

#[tokio::test]
async fn token_parameters() {
    let (app, _, _) = fixture().await;
    assert_eq!(total(&app.search("Patient?gender=female").await), 2);
    assert_eq!(total(&app.search("Patient?gender:not=female").await), 1);
    assert_eq!(total(&app.search("Observation?code=http://loinc.org|8867-4").await), 3);
    assert_eq!(total(&app.search("Observation?code=8867-4").await), 3);
    assert_eq!(total(&app.search("Observation?code=http://snomed.info/sct|8867-4").await), 0);
    assert_eq!(total(&app.search("Observation?code=|8867-4").await), 0, "|code means no system");
    assert_eq!(total(&app.search("Observation?category=http://terminology.hl7.org/CodeSystem/observation-category|").await), 5);
    assert_eq!(total(&app.search("Observation?code:text=code 29463").await), 1);
    assert_eq!(total(&app.search("Patient?identifier=urn:test:mrn|Smith-Ann").await), 1);
    assert_eq!(total(&app.search("Condition?clinical-status=active&category=problem-list-item&code=38341003").await), 1);
}

#[tokio::test]
async fn reference_parameters() {
    let (app, a, b) = fixture().await;
    assert_eq!(total(&app.search(&format!("Observation?patient={a}")).await), 4);
    assert_eq!(total(&app.search(&format!("Observation?subject=Patient/{a}")).await), 4);
    assert_eq!(total(&app.search(&format!("Observation?subject:Patient={b}")).await), 1);
    assert_eq!(total(&app.search(&format!("Observation?subject={}/Patient/{b}", app.base)).await), 1, "absolute URL on this server");
    assert_eq!(total(&app.search(&format!("Observation?patient={a},{b}")).await), 5);
    let (status, _) = app.get_json("Observation?patient=Encounter/1").await;
    assert_eq!(status, 400, "patient cannot point to an Encounter");
    // `patient` shares `subject`'s index rows; a Group subject is found by subject only.
    let mut group_obs = crate::observation("g1", "vital-signs", "8867-4", "2020-01-01", 1.0, "/min");
    group_obs["subject"] = json!({"reference": "Group/g1"});
    app.create(group_obs).await;
    assert_eq!(total(&app.search("Observation?subject=Group/g1").await), 1);
    assert_eq!(total(&app.search("Observation?patient=g1").await), 0);
    assert_eq!(total(&app.search("Observation?patient:missing=true").await), 1);
    assert_eq!(total(&app.search("Observation?subject:missing=true").await), 0);
    let b = app.search("Observation?subject=Group/g1&_include=Observation:patient").await;
    assert_eq!(b["entry"].as_array().unwrap().len(), 1, "no Group comes in through patient");
}

#[tokio::test]
async fn date_parameters() {
    let (app, a, _) = fixture().await;
    let q = |s: &str| format!("Observation?patient={a}&date={s}");
    assert_eq!(total(&app.search(&q("2020")).await), 1);
    assert_eq!(total(&app.search(&q("2020-01-05")).await), 1);
    assert_eq!(total(&app.search(&q("eq2021-06")).await), 1);
    assert_eq!(total(&app.search(&q("ne2020")).await), 3);
    assert_eq!(total(&app.search(&q("gt2021-01-01")).await), 3);
    assert_eq!(total(&app.search(&q("ge2022-02-02")).await), 2);
    assert_eq!(total(&app.search(&q("lt2021")).await), 1);
    assert_eq!(total(&app.search(&q("le2021-06-01")).await), 2);
    assert_eq!(total(&app.search(&q("sa2021-12-31")).await), 2);
    assert_eq!(total(&app.search(&q("eb2020-06")).await), 1);
    assert_eq!(total(&app.search(&q("ap2022-02-10")).await), 2, "approximately: within 10% of the distance to now");
    assert_eq!(total(&app.search(&format!("Observation?patient={a}&date=ge2020&date=lt2022")).await), 2);
    assert_eq!(total(&app.search("Patient?birthdate=1970").await), 1);
    assert_eq!(total(&app.search("Patient?birthdate=lt1980-01-01").await), 1);
    assert_eq!(total(&app.search("Encounter?date=2022-02-02").await), 1, "a Period inside the day");
    assert_eq!(total(&app.search("Encounter?date=2022").await), 1);
    assert_eq!(total(&app.search("MedicationRequest?authoredon=ge2022").await), 1);
    assert_eq!(total(&app.search("Condition?onset-date=2015-05").await), 1);
    let (status, _) = app.get_json("Observation?date=2020-13-01").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn quantity_and_number_parameters() {
    let (app, _, _) = fixture().await;
    assert_eq!(total(&app.search("Observation?value-quantity=72").await), 1);
    assert_eq!(total(&app.search("Observation?value-quantity=gt70").await), 4);
    assert_eq!(total(&app.search("Observation?value-quantity=gt70||kg").await), 1);
    assert_eq!(total(&app.search("Observation?value-quantity=le72|http://unitsofmeasure.org|/min").await), 2);
    assert_eq!(total(&app.search("Observation?value-quantity=70.5").await), 1);
    assert_eq!(total(&app.search("Observation?value-quantity=70.4").await), 0, "precision of 70.4 is [70.35, 70.45)");
    app.create(
        json!({"resourceType": "RiskAssessment", "status": "final", "subject": {"reference": "Patient/x"}, "prediction": [{"probabilityDecimal": 0.42}]}),
    )
    .await;
    assert_eq!(total(&app.search("RiskAssessment?probability=gt0.4").await), 1);
    assert_eq!(total(&app.search("RiskAssessment?probability=0.42").await), 1);
    assert_eq!(total(&app.search("RiskAssessment?probability=lt0.4").await), 0);
}

#[tokio::test]
async fn missing_id_and_last_updated() {
    let (app, a, b) = fixture().await;
    assert_eq!(total(&app.search("Observation?value-quantity:missing=true").await), 0);
    assert_eq!(total(&app.search("Patient?death-date:missing=true").await), 3);
    assert_eq!(total(&app.search("MedicationRequest?encounter:missing=false").await), 1);
    assert_eq!(total(&app.search(&format!("Patient?_id={a},{b}")).await), 2);
    assert_eq!(total(&app.search("Patient?_lastUpdated=gt2000-01-01").await), 3);
    assert_eq!(total(&app.search("Patient?_lastUpdated=lt2000-01-01").await), 0);
}

#[tokio::test]
async fn sort_count_summary_elements_total() {
    let (app, a, _) = fixture().await;
    let b = app.search(&format!("Observation?patient={a}&category=vital-signs&_sort=-date")).await;
    let dates: Vec<&str> = b["entry"].as_array().unwrap().iter().map(|e| e["resource"]["effectiveDateTime"].as_str().unwrap()).collect();
    assert_eq!(dates, vec!["2022-02-02", "2021-06-01T10:00:00Z", "2020-01-05T10:00:00Z"]);
    let b = app.search(&format!("Observation?patient={a}&_sort=code,-date")).await;
    let codes: Vec<&str> = b["entry"].as_array().unwrap().iter().map(|e| e["resource"]["code"]["coding"][0]["code"].as_str().unwrap()).collect();
    assert_eq!(codes, vec!["2339-0", "29463-7", "8867-4", "8867-4"]);
    let b = app.search("Patient?_sort=birthdate").await;
    let births: Vec<&str> = b["entry"].as_array().unwrap().iter().map(|e| e["resource"]["birthDate"].as_str().unwrap()).collect();
    assert_eq!(births, vec!["1970-03-04", "1985-11-20", "2001-07-07"]);
    let b = app.search("Patient?_sort=-_lastUpdated,_id").await;
    assert_eq!(ids(&b).len(), 3);
    let b = app.search("Observation?_summary=count").await;
    assert_eq!(b["total"], 5);
    assert!(b.get("entry").is_none());
    let b = app.search("Observation?_count=2&_total=none").await;
    assert!(b.get("total").is_none());
    assert_eq!(ids(&b).len(), 2);
    let b = app.search("Patient?_elements=birthDate").await;
    let first = &b["entry"][0]["resource"];
    assert!(first.get("birthDate").is_some() && first.get("name").is_none());
    assert_eq!(first["meta"]["tag"][0]["code"], "SUBSETTED");
    let (status, _) = app.get_json("Patient?_sort=nonsense").await;
    assert_eq!(status, 400);
    let b = app.search("Patient?_count=5000").await;
    assert_eq!(ids(&b).len(), 3, "_count is capped, not refused");
}

#[tokio::test]
async fn include_revinclude_and_iterate() {
    let (app, a, _) = fixture().await;
    let b = app.search("MedicationRequest?_include=MedicationRequest:medication&_include=MedicationRequest:patient").await;
    let modes: Vec<(&str, &str)> =
        b["entry"].as_array().unwrap().iter().map(|e| (e["resource"]["resourceType"].as_str().unwrap(), e["search"]["mode"].as_str().unwrap())).collect();
    assert!(modes.contains(&("MedicationRequest", "match")));
    assert!(modes.contains(&("Medication", "include")));
    assert!(modes.contains(&("Patient", "include")));
    let b = app.search(&format!("Patient?_id={a}&_revinclude=Observation:patient")).await;
    assert_eq!(b["entry"].as_array().unwrap().iter().filter(|e| e["search"]["mode"] == "include").count(), 4);
    // Encounter -> revinclude MedicationRequest -> iterate include its Medication.
    let b = app.search("Encounter?_revinclude=MedicationRequest:encounter&_include:iterate=MedicationRequest:medication").await;
    let types: Vec<&str> = b["entry"].as_array().unwrap().iter().map(|e| e["resource"]["resourceType"].as_str().unwrap()).collect();
    assert!(types.contains(&"MedicationRequest") && types.contains(&"Medication"), "{types:?}");
    let (status, _) = app.get_json("MedicationRequest?_include=MedicationRequest:status").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn paging_is_stable_under_concurrent_writes() {
    let app = spawn_app().await;
    let p = app.create(patient("Page", "Pat", "female", "1990")).await["id"].as_str().unwrap().to_string();
    for i in 0..25 {
        app.create(observation(&p, "vital-signs", "8867-4", &format!("2020-01-{:02}", i + 1), 60.0 + i as f64, "/min")).await;
    }
    let first = app.search(&format!("Observation?patient={p}&_sort=date&_count=10")).await;
    assert_eq!(first["total"], 25);
    let mut seen = ids(&first);
    // Writes between pages must neither shift nor duplicate what the pages return.
    app.create(observation(&p, "vital-signs", "8867-4", "2019-01-01", 50.0, "/min")).await;
    let mut next = first["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").map(|l| l["url"].as_str().unwrap().to_string());
    let mut pages = 1;
    while let Some(url) = next {
        let r = app.client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let b: Value = r.json().await.unwrap();
        seen.extend(ids(&b));
        assert!(b["link"].as_array().unwrap().iter().any(|l| l["relation"] == "previous"));
        next = b["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").map(|l| l["url"].as_str().unwrap().to_string());
        pages += 1;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25);
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), 25, "no duplicates across pages");
    // Paging snapshots expire.
    app.clock.advance(time::Duration::hours(2));
    let link = first["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"].as_str().unwrap().to_string();
    let r = app.client.get(&link).send().await.unwrap();
    assert_eq!(r.status(), 410);
}

/// `patient=X&category=Y` starts from a per-patient index on PostgreSQL; whatever the plan, the answers
/// are those of the filters, also after updates and deletes, and for resources that name the patient
/// only as a performer or by an absolute URL.
#[tokio::test]
async fn one_patients_category_through_writes() {
    let (app, a, b) = fixture().await;
    let vitals = |p: &str| format!("Observation?patient={p}&category=vital-signs&_count=100");
    assert_eq!(total(&app.search(&vitals(&a)).await), 3);
    assert_eq!(
        total(&app.search(&format!("Observation?patient={a}&category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs")).await),
        3
    );
    assert_eq!(total(&app.search(&format!("Observation?patient={a}&category=http://snomed.info/sct|vital-signs")).await), 0);
    assert_eq!(total(&app.search(&format!("Observation?patient={a}&category=laboratory,vital-signs")).await), 4);
    assert_eq!(total(&app.search(&format!("Observation?subject=Patient/{a}&category=laboratory&category=vital-signs")).await), 0, "repeated is AND");
    assert_eq!(total(&app.search(&format!("Condition?patient={a}&category=problem-list-item")).await), 1);

    // In A's compartment as performer, but about B: not A's by `patient`, A's by compartment.
    let mut performed = crate::observation(&b, "vital-signs", "8867-4", "2023-01-01", 61.0, "/min");
    performed["performer"] = json!([{"reference": format!("Patient/{a}")}]);
    let performed = app.create(performed).await;
    let performed_id = performed["id"].as_str().unwrap().to_string();
    assert!(!ids(&app.search(&vitals(&a)).await).contains(&performed_id));
    assert!(ids(&app.search(&vitals(&b)).await).contains(&performed_id));
    assert!(ids(&app.search(&format!("Patient/{a}/Observation?category=vital-signs")).await).contains(&performed_id));

    // About A by an absolute URL elsewhere: `patient=A` matches it (the reference filter compares type and
    // id), with or without the category.
    let mut foreign = crate::observation(&a, "vital-signs", "8867-4", "2023-02-02", 62.0, "/min");
    foreign["subject"] = json!({"reference": format!("http://elsewhere.example/fhir/Patient/{a}")});
    let foreign = app.create(foreign).await;
    let foreign_id = foreign["id"].as_str().unwrap().to_string();
    assert!(ids(&app.search(&format!("Observation?patient={a}&_count=100")).await).contains(&foreign_id));
    assert!(ids(&app.search(&vitals(&a)).await).contains(&foreign_id));
    assert!(!ids(&app.search(&format!("Patient/{a}/Observation?category=vital-signs")).await).contains(&foreign_id), "not in A's compartment");
    // A subject given as a bare string (not a Reference object) is matched by `patient=A` too.
    let mut bare = crate::observation(&a, "vital-signs", "8867-4", "2023-03-03", 63.0, "/min");
    bare["subject"] = json!(format!("Patient/{a}"));
    let bare_id = app.create(bare).await["id"].as_str().unwrap().to_string();
    assert!(ids(&app.search(&format!("Observation?patient={a}&_count=100")).await).contains(&bare_id));
    assert!(ids(&app.search(&vitals(&a)).await).contains(&bare_id));
    let r = app.client.delete(app.url(&format!("Observation/{bare_id}"))).send().await.unwrap();
    assert!(r.status().is_success());
    assert!(!ids(&app.search(&vitals(&a)).await).contains(&bare_id), "deleted");
    assert_eq!(total(&app.search(&format!("Patient/{a}/Observation?category=vital-signs&patient={a}")).await), 3, "compartment and reference together");
    assert_eq!(total(&app.search(&format!("Patient/{b}/Observation?category=vital-signs&patient={a}")).await), 0);

    // Update: the category changes, then the subject; then delete.
    let mut changed = performed.clone();
    changed["category"][0]["coding"][0]["code"] = json!("laboratory");
    assert_eq!(app.put_json(&format!("Observation/{performed_id}"), &changed).await.status(), 200);
    assert!(!ids(&app.search(&vitals(&b)).await).contains(&performed_id));
    assert!(ids(&app.search(&format!("Observation?patient={b}&category=laboratory")).await).contains(&performed_id));
    changed["subject"] = json!({"reference": format!("Patient/{a}")});
    changed["performer"] = json!([{"reference": format!("Patient/{b}")}]);
    assert_eq!(app.put_json(&format!("Observation/{performed_id}"), &changed).await.status(), 200);
    assert!(ids(&app.search(&format!("Observation?patient={a}&category=laboratory")).await).contains(&performed_id));
    assert!(!ids(&app.search(&format!("Observation?patient={b}&category=laboratory")).await).contains(&performed_id));
    assert!(ids(&app.search(&format!("Patient/{b}/Observation?category=laboratory")).await).contains(&performed_id), "B performed it");
    let r = app.client.delete(app.url(&format!("Observation/{performed_id}"))).send().await.unwrap();
    assert!(r.status().is_success());
    for q in [format!("Observation?patient={a}&category=laboratory"), format!("Patient/{b}/Observation?category=laboratory")] {
        assert!(!ids(&app.search(&q).await).contains(&performed_id), "{q}");
    }
    assert_eq!(total(&app.search(&format!("Observation?patient={a}&category=laboratory")).await), 1);
}

#[tokio::test]
async fn one_patients_category_sorted_by_date_through_writes() {
    let app = spawn_app().await;
    let c = app.create(patient("Dates", "Cora", "female", "1990-01-01")).await["id"].as_str().unwrap().to_string();
    let mut made = Vec::new();
    for when in ["2023-01-05", "period", "2023-01-07", "undated"] {
        let mut o = observation(&c, "vital-signs", "8867-4", when, 70.0, "/min");
        match when {
            // Ascending compares its start (first), descending its end (first as well).
            "period" => {
                o.as_object_mut().unwrap().remove("effectiveDateTime");
                o["effectivePeriod"] = json!({"start": "2023-01-01", "end": "2023-01-10"});
            }
            // No date: last in either direction.
            "undated" => {
                o.as_object_mut().unwrap().remove("effectiveDateTime");
            }
            _ => {}
        }
        made.push(app.create(o).await["id"].as_str().unwrap().to_string());
    }
    let [d05, period, d07, undated] = [0, 1, 2, 3].map(|i| made[i].clone());
    // From the per-patient rows (reference, compartment, and with the resource row joined for a second
    // key), and from the date index (no category): the same order.
    for (query, expected) in [
        (format!("Observation?patient={c}&category=vital-signs&_sort=-date"), [&period, &d07, &d05, &undated]),
        (format!("Patient/{c}/Observation?category=vital-signs&_sort=-date"), [&period, &d07, &d05, &undated]),
        (format!("Observation?patient={c}&_sort=-date"), [&period, &d07, &d05, &undated]),
        (format!("Observation?patient={c}&category=vital-signs&_sort=date"), [&period, &d05, &d07, &undated]),
        (format!("Observation?patient={c}&category=vital-signs&_sort=date,-_lastUpdated"), [&period, &d05, &d07, &undated]),
        (format!("Observation?patient={c}&_sort=date"), [&period, &d05, &d07, &undated]),
    ] {
        assert_eq!(ids(&app.search(&query).await), expected.map(|s| s.clone()).to_vec(), "{query}");
    }
    // A new date moves the resource; a date added to the undated one too.
    let mut moved = app.get_json(&format!("Observation/{d07}")).await.1;
    moved["effectiveDateTime"] = json!("2023-01-20");
    assert_eq!(app.put_json(&format!("Observation/{d07}"), &moved).await.status(), 200);
    let mut dated = app.get_json(&format!("Observation/{undated}")).await.1;
    dated["effectiveDateTime"] = json!("2023-01-03");
    assert_eq!(app.put_json(&format!("Observation/{undated}"), &dated).await.status(), 200);
    for query in [format!("Observation?patient={c}&category=vital-signs&_sort=-date"), format!("Observation?patient={c}&_sort=-date")] {
        assert_eq!(ids(&app.search(&query).await), vec![d07.clone(), period.clone(), d05.clone(), undated.clone()], "{query}");
    }
    // Paged: the snapshot keeps the order.
    let first = app.search(&format!("Observation?patient={c}&category=vital-signs&_sort=date&_count=2")).await;
    assert_eq!(ids(&first), vec![period.clone(), undated.clone()]);
    let next = first["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"].as_str().unwrap().to_string();
    let second: Value = app.client.get(&next).send().await.unwrap().json().await.unwrap();
    assert_eq!(ids(&second), vec![d05.clone(), d07.clone()]);
}

#[tokio::test]
async fn post_search_compartment_and_everything() {
    let (app, a, b) = fixture().await;
    let r = app
        .client
        .post(app.url("Observation/_search"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("patient={a}&category=vital-signs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bundle: Value = r.json().await.unwrap();
    assert_eq!(bundle["total"], 3);
    let c = app.search(&format!("Patient/{a}/Observation?category=laboratory")).await;
    assert_eq!(c["total"], 1);
    let c = app.search(&format!("Patient/{b}/Observation")).await;
    assert_eq!(c["total"], 1);
    let e = app.search(&format!("Patient/{a}/$everything")).await;
    let types: std::collections::HashSet<&str> = e["entry"].as_array().unwrap().iter().map(|x| x["resource"]["resourceType"].as_str().unwrap()).collect();
    for t in ["Patient", "Observation", "Encounter", "MedicationRequest", "Medication", "Condition"] {
        assert!(types.contains(t), "{t} missing from $everything: {types:?}");
    }
    assert_eq!(e["entry"][0]["resource"]["resourceType"], "Patient");
    let ids_everything: Vec<&str> =
        e["entry"].as_array().unwrap().iter().filter(|x| x["resource"]["resourceType"] == "Patient").map(|x| x["resource"]["id"].as_str().unwrap()).collect();
    assert_eq!(ids_everything, vec![a.as_str()], "no other patient leaks into $everything");
    let e = app.search(&format!("Patient/{a}/$everything?_type=Observation,Condition&_count=2")).await;
    assert_eq!(e["total"], 5);
    assert_eq!(e["entry"].as_array().unwrap().len(), 2);
    assert!(e["link"].as_array().unwrap().iter().any(|l| l["relation"] == "next"));
    let e = app.search(&format!("Patient/{a}/$everything?_since=2999-01-01")).await;
    assert_eq!(e["total"], 0);
    let (status, _) = app.get_json("Patient/nobody/$everything").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn unknown_parameters_and_lenient_handling() {
    let (app, _, _) = fixture().await;
    let (status, oo) = app.get_json("Patient?nonsense=1").await;
    assert_eq!(status, 400);
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("nonsense"));
    let r = app.client.get(app.url("Patient?nonsense=1&gender=male")).header("prefer", "handling=lenient").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["total"], 1);
    let outcome = b["entry"].as_array().unwrap().iter().find(|e| e["search"]["mode"] == "outcome").expect("an outcome entry says what was ignored");
    assert!(outcome["resource"]["issue"][0]["diagnostics"].as_str().unwrap().contains("nonsense"));
    for bad in [
        "Patient?gender:fuzzy=x",
        "Patient?_count=abc",
        "Patient?birthdate=yesterday",
        "Observation?value-quantity=abc",
        "Patient?name=",
        "Patient?general-practitioner.name=x",
    ] {
        let (status, body) = app.get_json(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

/// Searches Inferno's US Core kit runs that were missing, on the seeded population: CareTeam by `role`,
/// Encounter by `discharge-disposition`, PractitionerRole with `_include=PractitionerRole:endpoint`.
#[tokio::test]
async fn us_core_searches_for_roles_dispositions_and_endpoints() {
    let app = crate::spawn_app().await;
    kindling::seed(&app.app_state, 3, 12).await.unwrap();
    let teams = app.search("CareTeam?role=http://snomed.info/sct|446050000&_count=100").await;
    assert_eq!(teams["total"], 3, "every patient's team has a primary care physician");
    // A cardiologist is on the team of the 67-year-old with atrial fibrillation, not the 44-year-old's.
    assert_eq!(app.search("CareTeam?role=http://snomed.info/sct|17561000&patient=kp-12-0002").await["total"], 1);
    assert_eq!(app.search("CareTeam?role=http://snomed.info/sct|17561000&patient=kp-12-0003").await["total"], 0);
    let stays = app.search("Encounter?discharge-disposition=home&_count=100").await;
    let entries = stays["entry"].as_array().unwrap();
    assert!(!entries.is_empty(), "the emergency and inpatient stays");
    assert!(entries.iter().all(|e| ["EMER", "IMP"].contains(&e["resource"]["class"]["code"].as_str().unwrap())));
    let roles = app.search("PractitionerRole?_include=PractitionerRole:endpoint&_count=100").await;
    let endpoints =
        roles["entry"].as_array().unwrap().iter().filter(|e| e["search"]["mode"] == "include" && e["resource"]["resourceType"] == "Endpoint").count();
    assert_eq!(endpoints, 2, "the two practices' Direct endpoints");
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Chained parameters and `_has`, one level: they follow references both ways, honour modifiers and the
/// target type, leave out deleted targets, and refuse deeper or ambiguous forms with a reason.
#[tokio::test]
async fn chained_parameters_and_has_follow_references() {
    let (app, a, b) = fixture().await;
    let of_a = sorted(ids(&app.search(&format!("Observation?subject=Patient/{a}&_count=100")).await));
    assert_eq!(of_a.len(), 4);
    assert_eq!(sorted(ids(&app.search("Observation?subject:Patient.name=smith&_count=100").await)), of_a, "name starts with, through the subject");
    assert_eq!(sorted(ids(&app.search("Observation?patient.family:exact=Smith&_count=100").await)), of_a, "modifier on the chained parameter");
    assert_eq!(sorted(ids(&app.search("Observation?patient.identifier=urn:test:mrn|Smith-Ann&_count=100").await)), of_a);
    assert_eq!(sorted(ids(&app.search(&format!("Observation?patient._id={a}&_count=100")).await)), of_a);
    // Ann and Bob (Smythe) both match "sm"; with another condition ANDed only Ann's heart rates.
    assert_eq!(total(&app.search("Observation?patient.name=sm").await), 5);
    assert_eq!(total(&app.search("Observation?patient.name=sm&code=8867-4&patient.gender=female").await), 2);
    assert_eq!(total(&app.search("Observation?patient.name=nobody").await), 0);
    assert_eq!(total(&app.search("MedicationRequest?encounter.class=AMB").await), 1);

    // _has: the patients with a laboratory glucose result, with a heart rate, with both.
    assert_eq!(ids(&app.search("Patient?_has:Observation:patient:code=2339-0").await), [a.as_str()]);
    assert_eq!(sorted(ids(&app.search("Patient?_has:Observation:subject:code=8867-4").await)), sorted(vec![a.clone(), b.clone()]));
    assert_eq!(ids(&app.search("Patient?_has:Observation:patient:code=2339-0&_has:Observation:patient:code=8867-4").await), [a.as_str()]);
    assert_eq!(ids(&app.search("Patient?_has:Observation:patient:code=8867-4&gender=male").await), [b.as_str()]);
    assert_eq!(ids(&app.search("Patient?_has:Condition:patient:code=38341003").await), [a.as_str()]);
    assert_eq!(total(&app.search("Patient?_has:Observation:patient:code=0000-0").await), 0);

    // A deleted target no longer matches; a deleted referrer no longer counts.
    let heart_of_b = ids(&app.search("Observation?code=8867-4&date=2019").await);
    assert_eq!(total(&app.search("Observation?patient.name=smythe").await), 1);
    let r = app.client.delete(app.url(&format!("Patient/{b}"))).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(total(&app.search("Observation?patient.name=smythe").await), 0);
    let r = app.client.delete(app.url(&format!("Observation/{}", heart_of_b[0]))).send().await.unwrap();
    assert!(r.status().is_success());
    assert_eq!(ids(&app.search("Patient?_has:Observation:subject:code=8867-4").await), [a.as_str()]);

    // Conditional writes are checked against a grant of their own type only, so their criteria may not
    // reach into another: a conditional update "of the patient with a glucose result" is refused.
    for method in [reqwest::Method::PUT, reqwest::Method::DELETE] {
        let r = app
            .client
            .request(method.clone(), app.url("Patient?_has:Observation:patient:code=2339-0"))
            .header("content-type", "application/fhir+json")
            .body(patient("New", "Person", "other", "2000-01-01").to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{method}");
        assert!(r.text().await.unwrap().contains("chained parameters or _has"), "{method}");
    }
    let r = app
        .client
        .post(app.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", "_has:Observation:patient:code=2339-0")
        .body(patient("New", "Person", "other", "2000-01-01").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    for (query, says) in [
        ("Observation?patient.organization.name=x", "one level"),
        ("Observation?performer.name=x", "name one"),
        ("Observation?subject:Medication.name=x", "does not refer"),
        ("Observation?code.name=x", "not a reference"),
        ("Patient?_has:Observation:patient=x", "_has:Type:reference:parameter"),
        ("Patient?_has:Observation:code:code=x", "does not refer to Patient"),
        ("Patient?_has:Observation:encounter:code=x", "does not refer to Patient"),
        ("Patient?_has:Observation:patient:_has:Observation:patient:code=x", "one level"),
        ("Patient?_has:Observation:patient:code:missing=true", "cannot be used inside"),
        ("Observation?patient.nonsense=x", "unknown search parameter"),
    ] {
        let (status, body) = app.get_json(query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.to_string().contains(says), "{query}: {body}");
    }
}

/// Chains and `_has` search another type under the same token: what the token may not find there directly
/// (another patient's record, a category outside its granular scope, a type it has no scope for) it does
/// not learn through them either.
#[tokio::test]
async fn chains_and_has_stay_within_what_the_token_may_search() {
    let app = crate::spawn_secured_app().await;
    ehr::register_demo_app(&app.auth).await.unwrap();
    let practitioner = "Practitioner/doc".to_string();
    auth::registry::put_user(app.auth.store.as_ref(), "doc", "Doc", auth::model::UserRole::Clinician, "long-enough-1", &practitioner).await.unwrap();
    let put = |r: Value| json!({"resource": r, "request": {"method": "PUT", "url": format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap())}});
    let with_id = |mut r: Value, id: &str| {
        r["id"] = json!(id);
        r
    };
    let entries = vec![
        put(with_id(patient("Smith", "Ann", "female", "1970-03-04"), "ann")),
        put(with_id(patient("Jones", "Bob", "male", "1985-11-20"), "bob")),
        put(with_id(observation("ann", "laboratory", "2339-0", "2022-03-03", 105.0, "mg/dL"), "ann-glucose")),
        put(with_id(observation("ann", "vital-signs", "8867-4", "2022-03-03", 70.0, "/min"), "ann-pulse")),
        put(with_id(observation("bob", "laboratory", "2339-0", "2022-03-03", 99.0, "mg/dL"), "bob-glucose")),
        put(with_id(observation("bob", "vital-signs", "8867-4", "2022-03-03", 60.0, "/min"), "bob-pulse")),
        // A record linked to Ann (so her Patient search finds it, though she may not read it), and a result
        // about it that Ann performed (so it is in Ann's compartment).
        put(json!({"resourceType": "Patient", "id": "linked", "birthDate": "1980-01-01",
                   "link": [{"other": {"reference": "Patient/ann"}, "type": "seealso"}]})),
        put({
            let mut o = with_id(observation("linked", "vital-signs", "8867-4", "2022-03-03", 65.0, "/min"), "probe");
            o["performer"] = json!([{"reference": "Patient/ann"}]);
            o
        }),
    ];
    api::bundle::process(&app.app_state, json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await.unwrap();
    let token = |patient: Option<&'static str>, scope: &'static str| {
        let auth = app.auth.clone();
        async move { auth::operator_tokens(&auth, "kindling-demo", "doc", patient, scope).await.unwrap()["access_token"].as_str().unwrap().to_string() }
    };
    let search = |token: String, query: &'static str| {
        let (client, url) = (app.client.clone(), app.url(query));
        async move {
            let r = client.get(url).bearer_auth(token).send().await.unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, if status == 200 { sorted(ids(&body)) } else { vec![body.to_string()] })
        }
    };
    let has_glucose = "Patient?_has:Observation:patient:code=2339-0";
    let everything = token(None, "user/*.rs").await;
    assert_eq!(search(everything.clone(), has_glucose).await, (200, vec!["ann".to_string(), "bob".to_string()]));
    assert_eq!(search(everything, "Observation?patient.name=jones").await, (200, vec!["bob-glucose".to_string(), "bob-pulse".to_string()]));

    // Vital signs only: which patients have a laboratory result is not the user's to learn.
    let vitals = token(None, "user/Patient.rs user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs").await;
    assert_eq!(search(vitals.clone(), has_glucose).await, (200, vec![]));
    assert_eq!(search(vitals, "Patient?_has:Observation:patient:code=8867-4").await, (200, vec!["ann".to_string(), "bob".to_string(), "linked".to_string()]));

    // No scope for Observation at all: the _has search is refused, not answered empty.
    let patients_only = token(None, "user/Patient.rs").await;
    let (status, body) = search(patients_only, has_glucose).await;
    assert_eq!(status, 403, "{body:?}");

    // Ann's own token: her record only, through either direction.
    let ann = token(Some("ann"), "patient/*.rs").await;
    assert_eq!(search(ann.clone(), has_glucose).await, (200, vec!["ann".to_string()]));
    assert_eq!(search(ann.clone(), "Observation?patient.name=jones").await, (200, vec![]));
    assert_eq!(search(ann.clone(), "Observation?patient.name=smith").await, (200, vec!["ann-glucose".to_string(), "ann-pulse".to_string()]));
    // The linked record is not Ann's to read: a chain does not probe it through a result in her record.
    assert_eq!(search(ann.clone(), "Observation?subject:Patient.birthdate=1980-01-01").await, (200, vec![]));
    assert_eq!(search(ann.clone(), "Observation?subject:Patient.birthdate=1970-03-04").await, (200, vec!["ann-glucose".to_string(), "ann-pulse".to_string()]));
    // Nor does a plain Patient search count it (its total once included the linked record).
    for (query, expected) in [("Patient?_summary=count", 1), ("Patient?birthdate=1980-01-01&_summary=count", 0), ("Patient", 1)] {
        let r = app.client.get(app.url(query)).bearer_auth(&ann).send().await.unwrap();
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["total"], expected, "{query}: {b}");
    }
}

/// US Core `DocumentReference/$docref`: the latest Summary of Episode Note without dates, the documents of
/// a care period with them, by type; GET or a POSTed Parameters; a clear 400 without a patient.
#[tokio::test]
async fn docref_fetches_a_patients_documents() {
    let app = spawn_app().await;
    let p = app.create(patient("Doc", "Ref", "female", "1960-01-01")).await["id"].as_str().unwrap().to_string();
    let doc = |code: &str, date: &str| {
        json!({"resourceType": "DocumentReference", "status": "current",
               "type": {"coding": [{"system": "http://loinc.org", "code": code}]},
               "subject": {"reference": format!("Patient/{p}")}, "date": format!("{date}T12:00:00Z"),
               "content": [{"attachment": {"contentType": "text/plain", "data": "bm90ZQ=="}}],
               "context": {"period": {"start": format!("{date}T09:00:00Z"), "end": format!("{date}T12:00:00Z")}}})
    };
    let old_ccd = app.create(doc("34133-9", "2019-05-05")).await["id"].as_str().unwrap().to_string();
    let new_ccd = app.create(doc("34133-9", "2022-06-06")).await["id"].as_str().unwrap().to_string();
    let note = app.create(doc("11506-3", "2021-03-03")).await["id"].as_str().unwrap().to_string();
    assert_eq!(ids(&app.search(&format!("DocumentReference/$docref?patient={p}")).await), [new_ccd.as_str()], "the latest CCD");
    assert_eq!(ids(&app.search(&format!("DocumentReference/$docref?patient={p}&start=2021-01-01&end=2021-12-31")).await), [note.as_str()]);
    assert_eq!(
        ids(&app.search(&format!("DocumentReference/$docref?patient=Patient/{p}&start=2019-01-01")).await),
        [new_ccd.as_str(), note.as_str(), old_ccd.as_str()],
        "newest first"
    );
    assert_eq!(ids(&app.search(&format!("DocumentReference/$docref?patient={p}&start=2019-01-01&type=http://loinc.org|11506-3")).await), [note.as_str()]);
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueId": p}, {"name": "start", "valueDate": "2021-01-01"}, {"name": "end", "valueDate": "2021-12-31"},
        {"name": "on-demand", "valueBoolean": false}
    ]});
    let r = app.post_json("DocumentReference/$docref", &params).await;
    assert_eq!(r.status(), 200);
    assert_eq!(ids(&r.json().await.unwrap()), [note.as_str()]);
    for (query, says) in [("DocumentReference/$docref", "patient"), (&format!("DocumentReference/$docref?patient={p}&color=red") as &str, "color")] {
        let (status, body) = app.get_json(query).await;
        assert_eq!(status, 400, "{query}");
        assert!(body.to_string().contains(says), "{body}");
    }
    let (_, cs) = app.get_json("metadata").await;
    let dr = cs["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "DocumentReference").unwrap().clone();
    assert_eq!(dr["operation"][0]["name"], "docref");
}

/// Paging snapshots belong to the token's owner (client, user, patient): another user's token cannot page
/// through one (410, as if it never existed), and one owner keeps at most 100 live snapshots: the 101st
/// paged search drops the oldest, whose `next` link then answers 410, while other owners' links work.
#[tokio::test]
async fn paging_snapshots_belong_to_their_owner_and_are_limited_per_owner() {
    let app = crate::spawn_secured_app().await;
    ehr::register_demo_app(&app.auth).await.unwrap();
    for user in ["pager1", "pager2"] {
        let linked = format!("Practitioner/{user}");
        auth::registry::put_user(app.auth.store.as_ref(), user, user, auth::model::UserRole::Clinician, "long-enough-1", &linked).await.unwrap();
    }
    let entries: Vec<Value> = (0..3)
        .map(|i| json!({"resource": patient("Pager", &format!("P{i}"), "female", "1970-01-01"), "request": {"method": "POST", "url": "Patient"}}))
        .collect();
    api::bundle::process(&app.app_state, json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await.unwrap();
    let token = |user: &'static str| {
        let auth = app.auth.clone();
        async move { auth::operator_tokens(&auth, "kindling-demo", user, None, "user/*.rs").await.unwrap()["access_token"].as_str().unwrap().to_string() }
    };
    let (one, two) = (token("pager1").await, token("pager2").await);
    let next_link = |token: String| {
        let (client, url) = (app.client.clone(), app.url("Patient?name=pager&_count=1"));
        async move {
            let b: Value = client.get(url).bearer_auth(token).send().await.unwrap().json().await.unwrap();
            b["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").expect("a next link")["url"].as_str().unwrap().to_string()
        }
    };
    let status = |token: String, url: String| {
        let client = app.client.clone();
        async move { client.get(url).bearer_auth(token).send().await.unwrap().status().as_u16() }
    };
    // A millisecond between searches, so that "oldest" is well defined on the test's manual clock.
    let tick = || app.clock.advance(time::Duration::milliseconds(1));
    let first = next_link(one.clone()).await;
    tick();
    let others = next_link(two.clone()).await;
    assert_eq!(status(one.clone(), first.clone()).await, 200);
    assert_eq!(status(two.clone(), first.clone()).await, 410, "another user's next link");
    for _ in 0..store::MAX_SNAPSHOTS_PER_OWNER - 1 {
        tick();
        next_link(one.clone()).await;
    }
    assert_eq!(status(one.clone(), first.clone()).await, 200, "100 live snapshots are kept");
    tick();
    let newest = next_link(one.clone()).await;
    assert_eq!(status(one.clone(), first).await, 410, "the oldest went when the 101st was saved");
    assert_eq!(status(one.clone(), newest).await, 200);
    assert_eq!(status(two, others).await, 200, "other owners keep theirs");
}
