//! Table tests of the access policy: scope forms × interactions × whose resource it is.

use super::*;
use serde_json::json;
use smart::ScopeSet;

const BASE: &str = "http://kindling.test/fhir";

fn token(scope: &str, patient: Option<&str>, fhir_user: Option<&str>) -> TokenAccess {
    TokenAccess {
        client_id: "app".into(),
        scopes: ScopeSet::parse(scope),
        patient: patient.map(str::to_string),
        fhir_user: fhir_user.map(str::to_string),
        launch: None,
        faults: None,
        vendor: None,
        audience: None,
    }
}

/// A clinician's token in patient p1's chart.
fn clinician(scope: &str) -> TokenAccess {
    token(scope, Some("p1"), Some("Practitioner/dr1"))
}

fn observation(id: &str, category: &str, subject: &str, performer: Option<&str>) -> Value {
    let mut v = json!({
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "subject": {"reference": format!("Patient/{subject}")}
    });
    if let Some(p) = performer {
        v["performer"] = json!([{"reference": format!("Patient/{p}")}]);
    }
    v
}

/// The resources every row of the table is judged against, by name.
fn resources() -> Vec<(&'static str, Value)> {
    vec![
        ("lab of p1", observation("o1", "laboratory", "p1", None)),
        ("vital of p1", observation("o2", "vital-signs", "p1", None)),
        ("lab of p2", observation("o3", "laboratory", "p2", None)),
        // In both compartments: readable in p1's chart, never written with p1's patient scopes.
        ("lab of p1 by p2", observation("o4", "laboratory", "p1", Some("p2"))),
        ("medication", json!({"resourceType": "Medication", "id": "m1"})),
        ("library", json!({"resourceType": "Library", "id": "l1", "status": "active"})),
        ("patient p1", json!({"resourceType": "Patient", "id": "p1"})),
        ("patient p2", json!({"resourceType": "Patient", "id": "p2"})),
        ("patient p1 linking p2", json!({"resourceType": "Patient", "id": "p1", "link": [{"other": {"reference": "Patient/p2"}, "type": "seealso"}]})),
        ("the user", json!({"resourceType": "Practitioner", "id": "dr1"})),
    ]
}

const INTERACTIONS: [Interaction; 4] = [Interaction::Create, Interaction::Read, Interaction::Update, Interaction::Delete];

/// One letter per interaction of [`INTERACTIONS`] (create, read, update, delete): `A` allowed, `-` refused.
fn outcomes(t: &TokenAccess, v: &Value) -> String {
    let ty = v["resourceType"].as_str().unwrap();
    let id = v["id"].as_str().unwrap();
    INTERACTIONS
        .iter()
        .map(|i| match decide(t, BASE, *i, ty, id, Compartment::Content, Content::Parsed(v)) {
            Ok(Verdict::Allowed) => 'A',
            Ok(Verdict::Probe) => 'P',
            Err(_) => '-',
        })
        .collect()
}

#[test]
fn each_scope_form_allows_exactly_its_interactions_on_exactly_its_resources() {
    // Columns: the resources of `resources()`, in order. Each cell: create, read, update, delete.
    #[rustfmt::skip]
    let table: &[(&str, [&str; 10])] = &[
        //                                           lab p1  vital p1 lab p2  p1 by p2 med     library  pat p1  pat p2  p1→p2   the user
        ("patient/Observation.rs",                   ["-A--", "-A--", "----", "-A--", "----", "----", "----", "----", "----", "-A--"]),
        ("patient/Observation.read",                 ["-A--", "-A--", "----", "-A--", "----", "----", "----", "----", "----", "-A--"]),
        ("patient/*.cruds",                          ["AAAA", "AAAA", "----", "-A--", "-A--", "----", "AAAA", "----", "-A--", "-A--"]),
        ("patient/*.*",                              ["AAAA", "AAAA", "----", "-A--", "-A--", "----", "AAAA", "----", "-A--", "-A--"]),
        ("patient/Observation.write",                ["A-AA", "A-AA", "----", "----", "----", "----", "----", "----", "----", "-A--"]),
        ("patient/Observation.rs?category=laboratory", ["-A--", "----", "----", "-A--", "----", "----", "----", "----", "----", "-A--"]),
        ("patient/Observation.cruds?category=laboratory", ["AAAA", "----", "----", "-A--", "----", "----", "----", "----", "----", "-A--"]),
        ("user/Observation.rs",                      ["-A--", "-A--", "-A--", "-A--", "----", "----", "----", "----", "----", "-A--"]),
        ("user/Observation.rs?category=vital-signs", ["----", "-A--", "----", "----", "----", "----", "----", "----", "----", "-A--"]),
        ("user/Observation.cud user/Patient.r",      ["A-AA", "A-AA", "A-AA", "A-AA", "----", "----", "-A--", "-A--", "-A--", "-A--"]),
        ("user/*.read",                              ["-A--", "-A--", "-A--", "-A--", "-A--", "-A--", "-A--", "-A--", "-A--", "-A--"]),
        ("system/*.cruds",                           ["AAAA", "AAAA", "AAAA", "AAAA", "AAAA", "AAAA", "AAAA", "AAAA", "AAAA", "AAAA"]),
        ("launch openid fhirUser",                   ["----", "----", "----", "----", "----", "----", "----", "----", "----", "-A--"]),
        ("",                                         ["----", "----", "----", "----", "----", "----", "----", "----", "----", "-A--"]),
    ];
    let resources = resources();
    let mut wrong = Vec::new();
    for (scope, expected) in table {
        let t = clinician(scope);
        for ((name, v), want) in resources.iter().zip(expected) {
            let got = outcomes(&t, v);
            if got != *want {
                wrong.push(format!("{scope} on {name}: got {got}, want {want}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn patient_scopes_without_a_patient_in_context_allow_nothing_but_the_users_own_record() {
    let t = token("patient/*.cruds", None, Some("Practitioner/dr1"));
    for (name, v) in resources() {
        let want = if name == "the user" { "-A--" } else { "----" };
        assert_eq!(outcomes(&t, &v), want, "{name}");
    }
    let e = decide(&t, BASE, Interaction::Read, "Observation", "o1", Compartment::Content, Content::Parsed(&resources()[0].1)).unwrap_err();
    assert_eq!(e.0, "patient-level scopes need a patient in context");
}

#[test]
fn a_stored_resource_asks_for_its_compartment_only_when_a_patient_scope_decides() {
    let lab = observation("o1", "laboratory", "p1", None);
    let stored = lab.to_string();
    let judge = |scope: &str, ty: &str, id: &str, c: Compartment| decide(&clinician(scope), BASE, Interaction::Read, ty, id, c, Content::Stored(&stored));
    assert_eq!(judge("patient/Observation.rs", "Observation", "o1", Compartment::Ask), Ok(Verdict::Probe));
    assert_eq!(judge("patient/Observation.rs", "Observation", "o1", Compartment::Known(true)), Ok(Verdict::Allowed));
    assert!(judge("patient/Observation.rs", "Observation", "o1", Compartment::Known(false)).is_err());
    // Inside, a constraint is still read from the content.
    assert!(judge("patient/Observation.rs?category=vital-signs", "Observation", "o1", Compartment::Known(true)).is_err());
    // No question when another level decides, or the type is shared, or the patient is named by id.
    assert_eq!(judge("user/Observation.rs patient/Observation.rs", "Observation", "o1", Compartment::Ask), Ok(Verdict::Allowed));
    assert_eq!(judge("patient/Medication.rs", "Medication", "m1", Compartment::Ask), Ok(Verdict::Allowed));
    assert_eq!(judge("patient/Patient.rs", "Patient", "p1", Compartment::Ask), Ok(Verdict::Allowed));
    assert!(judge("patient/Patient.rs", "Patient", "p2", Compartment::Ask).is_err());
    // A stored content that does not parse matches no constraint.
    let broken =
        decide(&clinician("user/Observation.rs?category=laboratory"), BASE, Interaction::Read, "Observation", "o1", Compartment::Ask, Content::Stored("{"));
    assert!(broken.is_err());
}

#[test]
fn absolute_references_to_this_server_are_the_patients_own() {
    let mut lab = observation("o9", "laboratory", "p1", None);
    lab["subject"]["reference"] = json!(format!("{BASE}/Patient/p1"));
    assert_eq!(outcomes(&clinician("patient/Observation.rs"), &lab), "-A--");
    assert_eq!(outcomes(&clinician("patient/Observation.cruds"), &lab), "AAAA");
    // Another server's Patient/p1 is not this server's.
    lab["subject"]["reference"] = json!("https://elsewhere.example/fhir/Patient/p1");
    assert_eq!(outcomes(&clinician("patient/Observation.cruds"), &lab), "----");
}

/// What a search gains from the policy, one line per added filter; or the refusal.
type Restricted = Result<Vec<String>, String>;

fn restricted(t: &TokenAccess, ty: &str, pairs: &[(&str, &str)]) -> Restricted {
    let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut q = fhir::query::parse(ty, &pairs, ParseOptions { lenient: false, base: Some(BASE), now_ms: 0 }).unwrap();
    let before = q.filters.len();
    restrict_search(t, BASE, 0, &mut q).map_err(|e| e.0)?;
    Ok(q.filters.iter().enumerate().filter_map(|(i, f)| describe(f, i >= before)).collect())
}

fn describe(f: &Filter, added: bool) -> Option<String> {
    let s = match f {
        Filter::PatientCompartment(p) => format!("compartment {p}"),
        Filter::Ids { resource_type, ids } => format!("{resource_type} ids {}", ids.join(",")),
        Filter::Token { key, values, .. } => format!("{key}={}", values.iter().filter_map(|v| v.code.clone()).collect::<Vec<_>>().join(",")),
        Filter::Chain { target_type, filters, .. } | Filter::Has { source_type: target_type, filters, .. } => {
            // The request's own inner filter comes first; what follows is the policy's.
            format!("{target_type}[{}]", filters.iter().skip(1).filter_map(|f| describe(f, true)).collect::<Vec<_>>().join("; "))
        }
        other => format!("{other:?}"),
    };
    // Filters of the request itself are shown only when they hold what the policy added.
    (added || matches!(f, Filter::Chain { .. } | Filter::Has { .. })).then_some(s)
}

#[test]
fn searches_are_narrowed_to_what_the_token_may_read_or_refused() {
    let ok = |v: &[&str]| Restricted::Ok(v.iter().map(|s| s.to_string()).collect());
    let cases: &[(&str, &str, Restricted)] = &[
        ("patient/Observation.rs", "Observation", ok(&["compartment p1"])),
        ("patient/Observation.read", "Observation", ok(&["compartment p1"])),
        ("patient/Observation.r", "Observation", Err("no granted scope allows searching Observation".into())),
        ("patient/Observation.rs", "Condition", Err("no granted scope allows searching Condition".into())),
        ("patient/*.rs", "Medication", ok(&[])),
        ("patient/*.rs", "Library", Err("Library is outside the patient's record; patient-level scopes cannot search it".into())),
        ("patient/*.rs", "Patient", ok(&["Patient ids p1"])),
        (
            "patient/Observation.rs?category=laboratory patient/Observation.rs?category=vital-signs",
            "Observation",
            ok(&["compartment p1", "Observation.category=laboratory,vital-signs"]),
        ),
        (
            "patient/Observation.rs?category=laboratory&status=final",
            "Observation",
            Err("these granular scopes combine several parameters; search each granted subset separately".into()),
        ),
        (
            "patient/Observation.rs?date=2020",
            "Observation",
            Err("the granted scope constraint 'date' is not a token search parameter of Observation; it cannot be enforced".into()),
        ),
        ("user/Observation.rs", "Observation", ok(&[])),
        ("user/Observation.rs?category=laboratory", "Observation", ok(&["Observation.category=laboratory"])),
        // A user-level grant reaches everything of the type: a patient-level one beside it adds nothing.
        ("user/Observation.rs patient/Observation.rs", "Observation", ok(&[])),
        ("system/*.s", "Patient", ok(&[])),
        ("", "Observation", Err("no granted scope allows searching Observation".into())),
    ];
    for (scope, ty, want) in cases {
        assert_eq!(&restricted(&clinician(scope), ty, &[]), want, "{scope} searching {ty}");
    }
    // Without a patient in context, patient scopes search nothing.
    assert_eq!(restricted(&token("patient/*.rs", None, None), "Observation", &[]), Err("patient-level scopes need a patient in context".into()));
    // A patient's own token (fhirUser Patient/p3, a proxy of p1) reaches both records.
    assert_eq!(restricted(&token("patient/*.rs", Some("p1"), Some("Patient/p3")), "Patient", &[]), ok(&["Patient ids p1,p3"]));
}

#[test]
fn chains_and_has_are_held_to_what_the_token_may_search_on_the_other_type() {
    let t = clinician("patient/Observation.rs patient/Patient.rs");
    assert_eq!(restricted(&t, "Observation", &[("subject:Patient.name", "x")]), Ok(vec!["Patient[Patient ids p1]".into(), "compartment p1".into()]));
    assert_eq!(
        restricted(&t, "Patient", &[("_has:Observation:patient:code", "4548-4")]),
        Ok(vec!["Observation[compartment p1]".into(), "Patient ids p1".into()])
    );
    let only_observations = clinician("patient/Observation.rs");
    assert_eq!(
        restricted(&only_observations, "Observation", &[("subject:Patient.name", "x")]),
        Err("a chained or _has search of Patient: no granted scope allows searching Patient".into())
    );
    let granular = clinician("user/Patient.rs user/Observation.rs?category=vital-signs");
    assert_eq!(
        restricted(&granular, "Patient", &[("_has:Observation:patient:code", "4548-4")]),
        Ok(vec!["Observation[Observation.category=vital-signs]".into()])
    );
}

#[test]
fn search_results_need_no_second_look_only_when_read_and_search_grants_agree() {
    assert!(search_implies_read(&clinician("patient/Observation.rs"), "Observation"));
    assert!(search_implies_read(&clinician("user/*.read"), "Condition"));
    assert!(!search_implies_read(&clinician("patient/Observation.s patient/Observation.r?category=laboratory"), "Observation"));
    assert!(!search_implies_read(&clinician("patient/Observation.s"), "Observation"));
    assert!(!search_implies_read(&clinician("patient/*.rs"), "Patient"), "a patient's compartment holds records that link to them");
}

#[test]
fn the_narrower_checks() {
    let patient_level = clinician("patient/*.cruds");
    let user_level = clinician("user/*.cruds");
    // Another patient's record is refused before it is looked up.
    assert!(check_patient_id(&patient_level, "Patient", "p1", Interaction::Read).is_ok());
    assert!(check_patient_id(&patient_level, "Patient", "p2", Interaction::Read).is_err());
    assert!(check_patient_id(&patient_level, "Patient", "p2", Interaction::Delete).is_err(), "nor deleted");
    assert!(check_patient_id(&patient_level, "Observation", "p2", Interaction::Read).is_ok());
    assert!(check_patient_id(&user_level, "Patient", "p2", Interaction::Read).is_ok());
    assert!(check_patient_id(&token("patient/*.rs", Some("p1"), Some("Patient/p3")), "Patient", "p3", Interaction::Read).is_ok());
    assert_eq!(patient_only(&patient_level, "Observation", Interaction::Search), Some(Some("p1")));
    assert_eq!(patient_only(&clinician("patient/*.rs user/Observation.s"), "Observation", Interaction::Search), None);
    // Conditional update and delete: an unconstrained user/ or system/ grant.
    assert!(check_type_wide(&clinician("user/Observation.u"), "Observation", Interaction::Update).is_ok());
    assert!(check_type_wide(&clinician("system/Observation.d"), "Observation", Interaction::Delete).is_ok());
    assert!(check_type_wide(&patient_level, "Observation", Interaction::Update).is_err());
    assert!(check_type_wide(&clinician("user/Observation.u?category=laboratory"), "Observation", Interaction::Update).is_err());
    assert!(check_type_wide(&clinician("user/Observation.rs"), "Observation", Interaction::Update).is_err());
    // Deleting what is already gone: any grant of the interaction.
    assert!(check_any(&patient_level, "Observation", Interaction::Delete).is_ok());
    assert!(check_any(&clinician("patient/Observation.rs"), "Observation", Interaction::Delete).is_err());
    // History across resources.
    assert!(check_history(&clinician("user/*.s"), None).is_ok());
    assert!(check_history(&clinician("user/*.s"), Some("Observation")).is_ok());
    assert!(check_history(&clinician("user/Observation.s"), Some("Observation")).is_ok());
    assert!(check_history(&clinician("user/Observation.s"), None).is_err());
    assert!(check_history(&clinician("user/Observation.s?category=laboratory"), Some("Observation")).is_err());
    assert!(check_history(&patient_level, Some("Observation")).is_err());
}

#[test]
fn reads_everything_only_with_an_unconstrained_read_of_every_type() {
    let access = |scope: &str| crate::access::Access::Token(std::sync::Arc::new(clinician(scope)));
    assert!(access("user/*.rs").reads_everything());
    assert!(access("system/*.r").reads_everything());
    assert!(!access("user/Observation.rs").reads_everything(), "one type");
    assert!(!access("user/*.s").reads_everything(), "search is not read");
    assert!(!access("patient/*.rs").reads_everything(), "a patient's compartment only");
    assert!(crate::access::Access::Open.reads_everything());
}
