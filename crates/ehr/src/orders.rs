//! Order entry, with decision support on the orders being written (CDS Hooks `order-select` and
//! `order-sign`).
//!
//! A clinician picks medication and lab orders for a patient from a small catalogue; each becomes a draft
//! (a `MedicationRequest` or `ServiceRequest` with status `draft`, kept for this clinician and patient, not
//! in the record). Choosing one calls the `order-select` services with it as the selection; signing calls
//! the `order-sign` services with every draft. A card's suggestion, when accepted, applies its actions to
//! the drafts (create, update, delete); a card may be overridden, with one of its reasons and a comment.
//! Either is reported to the service as CDS Hooks feedback. Warning and critical cards from `order-sign`
//! must be accepted or overridden before the orders are signed, on the drafts they were given for and
//! within ten minutes. Signing writes the drafts to the record as `active` orders, all or none.

use super::*;
use crate::cds::{CardView, ShownCard};
use client::cds::{AcceptedSuggestion, FeedbackItem, OverrideReason};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The store kind of a clinician's draft orders for a patient.
const ORDERS_KIND: &str = "ehr-orders";
/// How long draft orders are kept.
const ORDERS_TTL_MS: i64 = 12 * 3600 * 1000;
/// The most drafts at once.
const MAX_DRAFTS: usize = 20;
/// The longest override comment kept.
const MAX_COMMENT: usize = 500;
/// The most a suggested resource may weigh (serialised).
const MAX_SUGGESTED: usize = 16 * 1024;

const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
const LOINC: &str = "http://loinc.org";

/// One orderable: a medication (RxNorm) or a lab test (LOINC), with default instructions.
struct Orderable {
    key: &'static str,
    lab: bool,
    code: &'static str,
    display: &'static str,
    instructions: &'static str,
}

/// What this EHR's order panel offers (codes as the synthetic records use them).
const CATALOGUE: [Orderable; 10] = [
    Orderable { key: "amlodipine-5", lab: false, code: "197361", display: "Amlodipine 5 MG Oral Tablet", instructions: "1 tablet by mouth once a day" },
    Orderable { key: "lisinopril-10", lab: false, code: "314076", display: "Lisinopril 10 MG Oral Tablet", instructions: "1 tablet by mouth once a day" },
    Orderable {
        key: "metformin-500",
        lab: false,
        code: "860975",
        display: "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet",
        instructions: "1 tablet by mouth once a day with the evening meal",
    },
    Orderable {
        key: "ibuprofen-200",
        lab: false,
        code: "310965",
        display: "Ibuprofen 200 MG Oral Tablet",
        instructions: "2 tablets (400 mg) by mouth every 6 to 8 hours as needed for pain, with food",
    },
    Orderable {
        key: "naproxen-500",
        lab: false,
        code: "198014",
        display: "Naproxen 500 MG Oral Tablet",
        instructions: "1 tablet by mouth twice a day with food",
    },
    Orderable {
        key: "acetaminophen-325",
        lab: false,
        code: "313782",
        display: "Acetaminophen 325 MG Oral Tablet",
        instructions: "2 tablets (650 mg) by mouth every 6 hours as needed for pain; no more than 8 tablets (2.6 g) a day",
    },
    Orderable { key: "hba1c", lab: true, code: "4548-4", display: "Hemoglobin A1c/Hemoglobin.total in Blood", instructions: "" },
    Orderable { key: "lipid-panel", lab: true, code: "57698-3", display: "Lipid panel with direct LDL - Serum or Plasma", instructions: "" },
    Orderable { key: "bmp", lab: true, code: "51990-0", display: "Basic metabolic panel - Blood", instructions: "" },
    Orderable { key: "potassium", lab: true, code: "2823-3", display: "Potassium [Moles/volume] in Serum or Plasma", instructions: "" },
];

/// A clinician's draft orders for one patient, and the decision support on them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct OrderSession {
    /// The drafts (FHIR resources, status `draft`), in the order written.
    drafts: Vec<Value>,
    /// The cards of the last hook call on these drafts.
    review: Option<Review>,
}

/// The cards of one hook call, and what became of each.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Review {
    /// `order-select` or `order-sign`.
    hook: String,
    /// The drafts the call was about ([`digest`]).
    digest: String,
    /// The reference of the cards kept for their SMART links.
    reference: String,
    cards: Vec<ShownCard>,
    /// Per card: what became of it (`None`: nothing yet).
    outcomes: Vec<Option<String>>,
    /// The services that gave nothing, in plain words.
    problems: Vec<String>,
    /// When the services were asked (Unix ms): advice older than [`REVIEW_FRESH_MS`] is asked for again.
    #[serde(default)]
    at: i64,
}

/// How long an order-sign review may be signed on.
const REVIEW_FRESH_MS: i64 = 10 * 60 * 1000;

impl Review {
    /// The warning and critical cards nothing was done about yet.
    fn open(&self) -> usize {
        self.cards.iter().zip(&self.outcomes).filter(|(c, o)| o.is_none() && c.card.indicator != "info").count()
    }
}

/// What identifies a set of drafts: a review holds for these drafts only.
fn digest(drafts: &[Value]) -> String {
    auth::crypto::token_hash(&serde_json::to_string(drafts).unwrap_or_default())
}

fn session_key(patient: &str, username: &str) -> String {
    // A patient id has no '/': the key is unambiguous.
    format!("{patient}/{username}")
}

/// Reads, changes and writes a clinician's drafts, compare-and-swap (two tabs at once lose nothing).
/// `change` returns `Err` with a sentence for the clinician to refuse the change.
async fn change_session<T>(s: &Shared, key: &str, mut change: impl FnMut(&mut OrderSession) -> Result<T, String>) -> Result<Result<T, String>, String> {
    for _ in 0..32 {
        let current = s.store.auth_get(ORDERS_KIND, key).await.map_err(|e| e.to_string())?;
        let mut session: OrderSession = match &current {
            Some(r) => serde_json::from_str(&r.value).map_err(|e| e.to_string())?,
            None => OrderSession::default(),
        };
        let out = match change(&mut session) {
            Ok(out) => out,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let value = serde_json::to_string(&session).map_err(|e| e.to_string())?;
        let written = match &current {
            // Every change keeps the drafts for the full time again.
            Some(r) => s.store.auth_replace(ORDERS_KIND, key, &r.value, &value, Some(s.now_ms() + ORDERS_TTL_MS)).await,
            None => s.store.auth_insert_new(ORDERS_KIND, key, &value, Some(s.now_ms() + ORDERS_TTL_MS)).await,
        };
        if written.map_err(|e| e.to_string())? {
            return Ok(Ok(out));
        }
    }
    Err("the draft orders kept changing; try again".into())
}

async fn read_session(s: &Shared, key: &str) -> Result<OrderSession, String> {
    match s.store.auth_get(ORDERS_KIND, key).await.map_err(|e| e.to_string())? {
        Some(r) => serde_json::from_str(&r.value).map_err(|e| e.to_string()),
        None => Ok(OrderSession::default()),
    }
}

/// `Type/id` of a resource.
fn reference_of(r: &Value) -> String {
    format!("{}/{}", r["resourceType"].as_str().unwrap_or_default(), r["id"].as_str().unwrap_or_default())
}

/// A draft for `item`, for `patient`, by `user`.
fn draft(item: &Orderable, patient: &str, user: &auth::model::User, now: &str) -> Value {
    let id = uuid::Uuid::new_v4().to_string();
    let subject = json!({"reference": format!("Patient/{patient}")});
    let requester = json!({"reference": user.fhir_user, "display": user.display_name});
    if item.lab {
        json!({"resourceType": "ServiceRequest", "id": id, "status": "draft", "intent": "order",
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "108252007", "display": "Laboratory procedure"}]}],
            "code": {"coding": [{"system": LOINC, "code": item.code, "display": item.display}], "text": item.display},
            "subject": subject, "requester": requester, "authoredOn": now})
    } else {
        json!({"resourceType": "MedicationRequest", "id": id, "status": "draft", "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": item.code, "display": item.display}], "text": item.display},
            "subject": subject, "requester": requester, "authoredOn": now, "dosageInstruction": [{"text": item.instructions}]})
    }
}

/// The `draftOrders` Bundle of a hook call.
fn draft_bundle(drafts: &[Value]) -> Value {
    let entries: Vec<Value> = drafts.iter().map(|d| json!({"resource": d})).collect();
    json!({"resourceType": "Bundle", "type": "collection", "entry": entries})
}

/// A suggested resource made a draft of this patient's, by this user, from an allowlist: what is signed
/// is exactly what the page shows. A medication order keeps its RxNorm-coded medication (its text set to
/// the coding's display) and its dosage texts; a lab order its LOINC-coded test (category: laboratory).
/// Status, subject, requester and time are this EHR's; a narrative, `meta`, notes and reasons are left
/// out; anything else (another patient named in `patient`, `basedOn`, `performer`…, `doNotPerform`, a
/// `medicationReference`, structured doses, extensions) refuses the suggestion, as does an intent other
/// than `order`.
fn suggested_draft(resource: &Value, patient: &str, user: &auth::model::User, now: &str, id: String) -> Result<Value, String> {
    let Some(obj) = resource.as_object() else { return Err("it proposes something that is not a resource".into()) };
    let ty = obj.get("resourceType").and_then(Value::as_str).unwrap_or_default();
    if !matches!(ty, "MedicationRequest" | "ServiceRequest") {
        return Err(format!("it proposes a {} (only medication and lab orders are written here)", cds_plain(ty)));
    }
    if serde_json::to_string(resource).map_or(0, |j| j.len()) > MAX_SUGGESTED {
        return Err("the order it proposes is too large".into());
    }
    let own = format!("Patient/{patient}");
    if let Some(subject) = obj.get("subject")
        && subject["reference"].as_str() != Some(own.as_str())
    {
        return Err("the order it proposes is for another patient".into());
    }
    if let Some(intent) = obj.get("intent")
        && intent != "order"
    {
        return Err(format!("it proposes a {}, not an order", cds_plain(intent.as_str().unwrap_or("request"))));
    }
    const IGNORED: [&str; 11] = ["resourceType", "id", "status", "intent", "subject", "requester", "authoredOn", "text", "meta", "note", "reasonCode"];
    let written: &[&str] = if ty == "MedicationRequest" { &["medicationCodeableConcept", "dosageInstruction"] } else { &["code", "category"] };
    if let Some(other) = obj.keys().find(|k| !IGNORED.contains(&k.as_str()) && !written.contains(&k.as_str())) {
        return Err(format!("it sets {}, which this EHR does not write on an order", cds_plain(other)));
    }
    // Only what this EHR offers, named as its catalogue names it: the code decides what is signed, so the
    // name shown is the code's own, never the service's.
    let coded = |concept: &Value, system: &str, lab: bool| -> Result<Value, String> {
        let codes: Vec<&str> =
            concept["coding"].as_array().into_iter().flatten().filter(|c| c["system"] == system).filter_map(|c| c["code"].as_str()).collect();
        let item = CATALOGUE.iter().find(|o| o.lab == lab && codes.contains(&o.code)).ok_or_else(|| {
            let what = if lab { "lab test" } else { "medication" };
            match codes.first() {
                Some(code) => format!("it proposes a {what} this EHR does not offer ({} {})", if lab { "LOINC" } else { "RxNorm" }, cds_plain(code)),
                None => format!("the order it proposes has no {} code", if lab { "LOINC" } else { "RxNorm" }),
            }
        })?;
        Ok(json!({"coding": [{"system": system, "code": item.code, "display": item.display}], "text": item.display}))
    };
    let mut r = json!({"resourceType": ty, "id": id, "status": "draft", "intent": "order", "subject": {"reference": own},
        "requester": {"reference": user.fhir_user, "display": user.display_name}, "authoredOn": now});
    if ty == "MedicationRequest" {
        r["medicationCodeableConcept"] = coded(&obj.get("medicationCodeableConcept").cloned().unwrap_or_default(), RXNORM, false)?;
        let mut dosage = Vec::new();
        let given = obj.get("dosageInstruction").and_then(Value::as_array).cloned().unwrap_or_default();
        if given.len() > 4 {
            return Err("it proposes more dosage steps than this EHR shows".into());
        }
        for d in &given {
            let Some(text) = d.get("text").and_then(Value::as_str).filter(|t| !t.trim().is_empty()) else {
                return Err("it proposes a dose without instructions in words".into());
            };
            if text.chars().count() > 300 {
                return Err("its dosage instructions are too long to show whole".into());
            }
            if d.as_object().is_some_and(|o| o.keys().any(|k| k != "text" && k != "sequence")) {
                return Err("it proposes a structured dose this EHR cannot show; only instructions in words are written".into());
            }
            dosage.push(json!({"text": cds_plain_long(text)}));
        }
        if !dosage.is_empty() {
            r["dosageInstruction"] = json!(dosage);
        }
    } else {
        let lab = obj.get("category").is_none_or(|c| {
            c.as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|cc| cc["coding"].as_array().is_some_and(|x| x.iter().any(|x| x["system"] == "http://snomed.info/sct" && x["code"] == "108252007")))
            })
        });
        if !lab {
            return Err("it proposes a service that is not a lab test".into());
        }
        r["category"] = json!([{"coding": [{"system": "http://snomed.info/sct", "code": "108252007", "display": "Laboratory procedure"}]}]);
        r["code"] = coded(&obj.get("code").cloned().unwrap_or_default(), LOINC, true)?;
    }
    fhir::validate::validate_resource(&r, Some(ty)).map_err(|e| format!("the order it proposes is not valid FHIR ({})", e.0))?;
    Ok(r)
}

/// A longer text a service wrote (dose instructions): no control characters, bounded.
fn cds_plain_long(text: &str) -> String {
    text.chars().filter(|c| visible(*c)).take(300).collect()
}

fn cds_plain(text: &str) -> String {
    text.chars().filter(|c| visible(*c)).take(80).collect()
}

/// Not a control character, nor one that reorders or hides text (bidirectional overrides, zero-width).
fn visible(c: char) -> bool {
    !c.is_control() && !matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// Applies a suggestion's actions to `drafts`, all or none.
fn apply(drafts: &mut Vec<Value>, actions: &[client::cds::Action], patient: &str, user: &auth::model::User, now: &str) -> Result<(), String> {
    let mut next = drafts.clone();
    for a in actions {
        match a.kind.as_str() {
            "create" => {
                let resource = a.resource.as_ref().ok_or("it creates nothing it names")?;
                next.push(suggested_draft(resource, patient, user, now, uuid::Uuid::new_v4().to_string())?);
            }
            "update" => {
                let resource = a.resource.as_ref().ok_or("it updates nothing it names")?;
                let target = reference_of(resource);
                let i = next.iter().position(|d| reference_of(d) == target).ok_or("it changes an order that is not among your drafts")?;
                let id = next[i]["id"].as_str().unwrap_or_default().to_string();
                next[i] = suggested_draft(resource, patient, user, now, id)?;
            }
            "delete" => {
                let ids: Vec<String> = match &a.resource_id {
                    Some(Value::String(one)) => vec![one.clone()],
                    Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).map(str::to_string).collect(),
                    _ => Vec::new(),
                };
                if ids.is_empty() {
                    return Err("it removes an order without naming it".into());
                }
                for id in ids {
                    let before = next.len();
                    next.retain(|d| reference_of(d) != id && d["id"].as_str() != Some(id.as_str()));
                    if next.len() == before {
                        return Err("it removes an order that is not among your drafts".into());
                    }
                }
            }
            other => return Err(format!("it asks for an action this EHR does not know ({})", cds_plain(other))),
        }
    }
    if next.len() > MAX_DRAFTS {
        return Err(format!("it would make more than {MAX_DRAFTS} orders"));
    }
    *drafts = next;
    Ok(())
}

/// Calls `hook`'s services on the drafts and keeps their cards as the review, if the drafts are still the
/// ones sent (else a newer change has its own review coming).
async fn review(s: &Shared, user: &auth::model::User, patient: &str, hook: &str, drafts: Vec<Value>, selections: Option<Vec<String>>) -> Result<(), String> {
    let mut context = Map::new();
    if let Some(selected) = selections {
        context.insert("selections".into(), json!(selected));
    }
    context.insert("draftOrders".into(), draft_bundle(&drafts));
    let outcomes = cds::fire(s, user, patient, hook, &context).await;
    let problems: Vec<String> = outcomes.iter().filter_map(|o| o.problem.clone()).collect();
    let cards = ShownCard::of(outcomes, hook);
    let reference = cds::keep_shown(s, &user.username, patient, &cards).await.map_err(|e| e.to_string())?;
    let sent = digest(&drafts);
    change_session(s, &session_key(patient, &user.username), |session| {
        if digest(&session.drafts) == sent {
            let outcomes = vec![None; cards.len()];
            session.review = Some(Review {
                hook: hook.to_string(),
                digest: sent.clone(),
                reference: reference.clone(),
                cards: cards.clone(),
                outcomes,
                problems: problems.clone(),
                at: s.now_ms(),
            });
        }
        Ok(())
    })
    .await?
}

/// A draft as the page lists it.
pub(crate) struct DraftView {
    pub reference: String,
    pub text: String,
    pub detail: String,
}

/// A card of the review, with what may be done about it.
pub(crate) struct OrderCardView {
    pub card: CardView,
    /// The suggestions (index, label, recommended).
    pub suggestions: Vec<(usize, String, bool)>,
    /// The override reasons (index, what people read).
    pub reasons: Vec<(usize, String)>,
    /// What became of it.
    pub outcome: Option<String>,
    /// Whether signing waits for it.
    pub blocking: bool,
}

#[derive(Template)]
#[template(path = "orders.html")]
pub(crate) struct OrdersPage {
    pub nav: Nav,
    pub patient: chart::PatientFacts,
    /// (key, label) of medications, then of lab tests.
    pub medications: Vec<(&'static str, &'static str)>,
    pub labs: Vec<(&'static str, &'static str)>,
    pub drafts: Vec<DraftView>,
    /// `order-select` or `order-sign`, in words.
    pub review_title: String,
    pub reference: String,
    pub cards: Vec<OrderCardView>,
    pub problems: Vec<String>,
    /// Warning and critical cards not yet accepted or overridden.
    pub open: usize,
    /// The order-sign review the Sign button confirms (empty: none holds for the drafts).
    pub sign_review: String,
    pub stale: bool,
    pub error: Option<String>,
}

/// The patient's banner facts, or the page saying there is no such patient.
async fn patient_facts(s: &Shared, sess: &Session, id: &str) -> Result<chart::PatientFacts, Response> {
    let missing = || {
        message(
            Nav::of(sess),
            StatusCode::NOT_FOUND,
            "No such patient",
            "This patient is not in the record system.",
            "Find the patient in the patient list.",
            "/ehr/patients",
        )
    };
    if !fhir::types::is_valid_id(id) {
        return Err(missing());
    }
    match s.store.read("Patient", id).await {
        Ok(Some(r)) if !r.deleted => match serde_json::from_str::<Value>(&r.json) {
            Ok(v) => Ok(chart::patient_facts(id, &v, today(s))),
            Err(e) => Err(internal(e)),
        },
        Ok(_) => Err(missing()),
        Err(e) => Err(internal(e)),
    }
}

async fn orders_page(s: &Shared, sess: &Session, id: &str, status: StatusCode, error: Option<String>) -> Response {
    let patient = match patient_facts(s, sess, id).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let session = match read_session(s, &session_key(id, &sess.user.username)).await {
        Ok(x) => x,
        Err(e) => return internal(e),
    };
    let apps = match cds::Launchable::load(s).await {
        Ok(a) => a,
        Err(e) => return internal(e),
    };
    let drafts = session
        .drafts
        .iter()
        .map(|d| {
            let lab = d["resourceType"] == "ServiceRequest";
            let concept = if lab { &d["code"] } else { &d["medicationCodeableConcept"] };
            DraftView {
                reference: reference_of(d),
                text: chart::concept(concept),
                detail: if lab {
                    "Lab test".into()
                } else {
                    let texts: Vec<&str> = d["dosageInstruction"].as_array().into_iter().flatten().filter_map(|x| x["text"].as_str()).collect();
                    if texts.is_empty() { "No instructions given".into() } else { texts.join("; then ") }
                },
            }
        })
        .collect();
    let current = digest(&session.drafts);
    let sign_review = session.review.as_ref().filter(|r| r.hook == "order-sign" && r.digest == current).map(|r| r.reference.clone()).unwrap_or_default();
    let (review_title, reference, cards, problems, open, stale) = match session.review {
        Some(r) => {
            let open = if r.hook == "order-sign" && r.digest == current { r.open() } else { 0 };
            let sign = r.hook == "order-sign";
            let stale = r.digest != current;
            let cards = r
                .cards
                .into_iter()
                .zip(r.outcomes)
                .enumerate()
                .map(|(i, (c, outcome))| OrderCardView {
                    suggestions: c.card.suggestions.iter().enumerate().map(|(n, sg)| (n, cds_plain(&sg.label), sg.is_recommended == Some(true))).collect(),
                    reasons: c.card.override_reasons.iter().enumerate().map(|(n, r)| (n, cds_plain(r.display.as_deref().unwrap_or(&r.code)))).collect(),
                    blocking: sign && outcome.is_none() && c.card.indicator != "info",
                    outcome,
                    card: cds::card_view(i, c, &apps),
                })
                .collect();
            let title = if sign { "Before signing" } else { "On the order just chosen" };
            (title.to_string(), r.reference, cards, r.problems, open, stale)
        }
        None => (String::new(), String::new(), Vec::new(), Vec::new(), 0, false),
    };
    let medications = CATALOGUE.iter().filter(|o| !o.lab).map(|o| (o.key, o.display)).collect();
    let labs = CATALOGUE.iter().filter(|o| o.lab).map(|o| (o.key, o.display)).collect();
    render(
        status,
        &OrdersPage { nav: Nav::of(sess), patient, medications, labs, drafts, review_title, reference, cards, problems, open, sign_review, stale, error },
    )
}

/// `GET /ehr/patients/{id}/orders`: the order panel.
pub(crate) async fn orders(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let sess = match clinician(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    orders_page(&s, &sess, &id, StatusCode::OK, None).await
}

/// The signed-in clinician and the patient of an order form, once its CSRF token holds.
async fn order_form(s: &Shared, headers: &HeaderMap, id: &str, p: &Params) -> Result<Session, Response> {
    let sess = clinician(s, headers).await?;
    if let Some(r) = csrf_refusal(&sess, p) {
        return Err(r);
    }
    patient_facts(s, &sess, id).await?;
    if !may_order(&sess.user) {
        return Err(message(
            Nav::of(&sess),
            StatusCode::FORBIDDEN,
            "Your account does not write orders",
            "Writing medication and lab orders needs the right to create them, which your account does not have.",
            "Ask a prescriber, or an administrator to change your account's rights.",
            &format!("/ehr/patients/{id}"),
        ));
    }
    Ok(sess)
}

/// Whether a user may write orders: an account without rights may do anything; one with rights only
/// when they allow creating MedicationRequest and ServiceRequest (at whatever level they are written).
fn may_order(user: &auth::model::User) -> bool {
    let Some(rights) = &user.rights else { return true };
    let rights = smart::ScopeSet::parse(rights);
    ["MedicationRequest", "ServiceRequest"]
        .iter()
        .all(|ty| [smart::Level::User, smart::Level::Patient, smart::Level::System].iter().any(|l| rights.access(*l, ty, smart::Interaction::Create).is_some()))
}

fn back_to_orders(id: &str) -> Response {
    Redirect::to(&format!("/ehr/patients/{id}/orders")).into_response()
}

/// `POST /ehr/patients/{id}/orders`: adds a draft from the catalogue, then asks the `order-select`
/// services about it.
pub(crate) async fn order_add(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>, axum::Form(p): axum::Form<Params>) -> Response {
    let sess = match order_form(&s, &headers, &id, &p).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(item) = CATALOGUE.iter().find(|o| Some(o.key) == p.get("item").map(String::as_str)) else {
        return orders_page(&s, &sess, &id, StatusCode::BAD_REQUEST, Some("Choose a medication or a lab test to order.".into())).await;
    };
    let now = fhir::time::format_instant(s.clock.now());
    let new = draft(item, &id, &sess.user, &now);
    let selected = reference_of(&new);
    let added = change_session(&s, &session_key(&id, &sess.user.username), |session| {
        if session.drafts.len() >= MAX_DRAFTS {
            return Err(format!("At most {MAX_DRAFTS} orders can be written at once: sign or remove some first."));
        }
        session.drafts.push(new.clone());
        Ok(session.drafts.clone())
    })
    .await;
    let drafts = match added {
        Ok(Ok(d)) => d,
        Ok(Err(refusal)) => return orders_page(&s, &sess, &id, StatusCode::CONFLICT, Some(refusal)).await,
        Err(e) => return internal(e),
    };
    s.audit("order-draft").user(sess.user.username.as_str()).patient(Some(id.as_str())).record(format!("drafted {selected} ({})", item.display));
    if let Err(e) = review(&s, &sess.user, &id, "order-select", drafts, Some(vec![selected])).await {
        return internal(e);
    }
    back_to_orders(&id)
}

/// `POST /ehr/patients/{id}/orders/remove`: removes a draft.
pub(crate) async fn order_remove(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>, axum::Form(p): axum::Form<Params>) -> Response {
    let sess = match order_form(&s, &headers, &id, &p).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let target = p.get("draft").cloned().unwrap_or_default();
    let removed = change_session(&s, &session_key(&id, &sess.user.username), |session| {
        let before = session.drafts.len();
        session.drafts.retain(|d| reference_of(d) != target);
        if session.drafts.len() == before {
            return Err("That order is no longer among your drafts.".to_string());
        }
        Ok(())
    })
    .await;
    match removed {
        Ok(Ok(())) => back_to_orders(&id),
        Ok(Err(refusal)) => orders_page(&s, &sess, &id, StatusCode::CONFLICT, Some(refusal)).await,
        Err(e) => internal(e),
    }
}

/// `POST /ehr/patients/{id}/orders/cards`: accepts a card's suggestion (its actions change the drafts) or
/// overrides the card (with a reason and a comment); the service is told either way.
pub(crate) async fn order_card(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>, axum::Form(p): axum::Form<Params>) -> Response {
    let sess = match order_form(&s, &headers, &id, &p).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let index = |k: &str| p.get(k).and_then(|v| v.parse::<usize>().ok());
    let (Some(card), Some(reference)) = (index("card"), p.get("ref")) else {
        return orders_page(&s, &sess, &id, StatusCode::BAD_REQUEST, Some("That card is not on this page.".into())).await;
    };
    let accept = p.get("action").map(String::as_str) == Some("accept");
    let comment: Option<String> =
        p.get("comment").map(|c| c.trim().chars().filter(|c| !c.is_control()).take(MAX_COMMENT).collect()).filter(|c: &String| !c.is_empty());
    let now = fhir::time::format_instant(s.clock.now());
    let user = sess.user.clone();
    let done = change_session(&s, &session_key(&id, &sess.user.username), |session| {
        let current = digest(&session.drafts);
        let review = session.review.as_mut().filter(|r| &r.reference == reference).ok_or("These cards have been replaced: look at the current ones.")?;
        let shown = review.cards.get(card).cloned().ok_or("That card is not on this page.")?;
        if review.outcomes[card].is_some() {
            return Err("Something was already done about this card.".into());
        }
        // Advice is answered on the orders it was given for: after a change, signing asks again.
        if review.digest != current {
            return Err("Your draft orders changed since these cards were given: sign again to get advice on them as they are now.".into());
        }
        let item = if accept {
            let n = index("suggestion").ok_or("Choose a suggestion.")?;
            let suggestion = shown.card.suggestions.get(n).ok_or("That suggestion is not on this card.")?;
            if suggestion.actions.is_empty() {
                return Err("This suggestion changes nothing this EHR can apply.".into());
            }
            apply(&mut session.drafts, &suggestion.actions, &id, &user, &now).map_err(|why| format!("This suggestion cannot be applied: {why}."))?;
            review.outcomes[card] = Some(format!("Accepted: {}", cds_plain(&suggestion.label)));
            FeedbackItem {
                card: shown.card.uuid.clone().unwrap_or_default(),
                outcome: "accepted".into(),
                accepted_suggestions: suggestion.uuid.iter().map(|u| AcceptedSuggestion { id: u.clone() }).collect(),
                override_reason: None,
                outcome_timestamp: now.clone(),
            }
        } else {
            let reason = match p.get("reason").filter(|r| !r.is_empty()) {
                Some(r) => {
                    Some(r.parse::<usize>().ok().and_then(|n| shown.card.override_reasons.get(n)).cloned().ok_or("That reason is not one this card offers.")?)
                }
                None => None,
            };
            // A warning or critical card is not set aside without saying why.
            if shown.card.indicator != "info" && reason.is_none() && comment.is_none() {
                return Err("Say why this card is not followed: choose a reason or write a comment.".into());
            }
            let said = match (&reason, &comment) {
                (Some(r), _) => cds_plain(r.display.as_deref().unwrap_or(&r.code)),
                (None, Some(c)) => cds_plain(c),
                (None, None) => "no reason given".into(),
            };
            review.outcomes[card] = Some(format!("Overridden: {said}"));
            FeedbackItem {
                card: shown.card.uuid.clone().unwrap_or_default(),
                outcome: "overridden".into(),
                accepted_suggestions: Vec::new(),
                override_reason: (reason.is_some() || comment.is_some()).then(|| OverrideReason { reason: reason.clone(), user_comment: comment.clone() }),
                outcome_timestamp: now.clone(),
            }
        };
        Ok((shown, item))
    })
    .await;
    match done {
        Ok(Ok((shown, item))) => {
            s.audit("cds-card").user(sess.user.username.as_str()).patient(Some(id.as_str())).record(format!(
                "{} the card “{}” from {}",
                item.outcome,
                cds_plain(&shown.card.summary),
                shown.url
            ));
            cds::send_feedback(&s, &sess.user.username, &id, &shown, item);
            back_to_orders(&id)
        }
        Ok(Err(refusal)) => orders_page(&s, &sess, &id, StatusCode::CONFLICT, Some(refusal)).await,
        Err(e) => internal(e),
    }
}

/// `POST /ehr/patients/{id}/orders/sign`: asks the `order-sign` services about the drafts; when no warning
/// or critical card waits, writes them to the record as active orders (all or none).
pub(crate) async fn order_sign(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>, axum::Form(p): axum::Form<Params>) -> Response {
    let sess = match order_form(&s, &headers, &id, &p).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let key = session_key(&id, &sess.user.username);
    let mut session = match read_session(&s, &key).await {
        Ok(x) => x,
        Err(e) => return internal(e),
    };
    if session.drafts.is_empty() {
        return orders_page(&s, &sess, &id, StatusCode::BAD_REQUEST, Some("There are no orders to sign.".into())).await;
    }
    let current = digest(&session.drafts);
    // The order-sign review whose cards are all answered, for exactly these drafts: the session's drafts
    // are hashed again each time, since another tab may have added or removed one meanwhile.
    let now_ms = s.now_ms();
    let answered = |session: &OrderSession, reference: &str| {
        digest(&session.drafts) == current
            && session
                .review
                .as_ref()
                .is_some_and(|r| r.hook == "order-sign" && r.digest == current && r.reference == reference && r.open() == 0 && now_ms - r.at < REVIEW_FRESH_MS)
    };
    // The form names the review the clinician saw; without one that still holds, the services are asked.
    let reference = match p.get("review").filter(|r| !r.is_empty() && answered(&session, r)) {
        Some(r) => r.clone(),
        None => {
            if let Err(e) = review(&s, &sess.user, &id, "order-sign", session.drafts.clone(), None).await {
                return internal(e);
            }
            session = match read_session(&s, &key).await {
                Ok(x) => x,
                Err(e) => return internal(e),
            };
            // Signed at once only when every service answered and none had anything to say; else the
            // clinician reads the review and signs again.
            let silent = session
                .review
                .as_ref()
                .filter(|r| r.hook == "order-sign" && r.digest == current && r.problems.is_empty() && r.outcomes.iter().all(Option::is_some));
            match silent {
                Some(r) => r.reference.clone(),
                None => return Redirect::to(&format!("/ehr/patients/{id}/orders#review")).into_response(),
            }
        }
    };
    // Sign exactly the drafts reviewed: take them out of the session first (a second tab signing the same
    // drafts finds them gone, and one that asked the services again meanwhile holds this one back), then
    // write them.
    let taken = change_session(&s, &key, |session| {
        if !answered(session, &reference) {
            return Err("Your draft orders or their decision support changed while signing: look at them again.".to_string());
        }
        Ok(std::mem::take(session))
    })
    .await;
    let session = match taken {
        Ok(Ok(x)) => x,
        Ok(Err(refusal)) => return orders_page(&s, &sess, &id, StatusCode::CONFLICT, Some(refusal)).await,
        Err(e) => return internal(e),
    };
    let now = fhir::time::format_instant(s.clock.now());
    let mut names = Vec::new();
    let written: Result<(), String> = async {
        let mut tx = s.store.begin().await.map_err(|e| e.to_string())?;
        for d in &session.drafts {
            let mut order = d.clone();
            order["status"] = json!("active");
            order["authoredOn"] = json!(now);
            fhir::validate::validate_resource(&order, order["resourceType"].as_str()).map_err(|e| e.0)?;
            names.push(chart::concept(if order["resourceType"] == "ServiceRequest" { &order["code"] } else { &order["medicationCodeableConcept"] }));
            tx.put(order, store::Precondition::Absent).await.map_err(|e| e.to_string())?;
        }
        tx.commit().await.map_err(|e| e.to_string())
    }
    .await;
    if let Err(e) = written {
        // Nothing was written: the drafts go back, so that nothing is lost.
        let back = session.drafts.clone();
        let _ = change_session(&s, &key, |now| {
            if now.drafts.is_empty() {
                now.drafts = back.clone();
            }
            Ok(())
        })
        .await;
        tracing::error!(error = %e, "orders could not be written");
        return orders_page(
            &s,
            &sess,
            &id,
            StatusCode::INTERNAL_SERVER_ERROR,
            Some("The orders could not be written to the record; they are still your drafts. Try again.".into()),
        )
        .await;
    }
    let refs: Vec<String> = session.drafts.iter().map(reference_of).collect();
    s.audit("orders-signed").user(sess.user.username.as_str()).patient(Some(id.as_str())).record(format!("signed {}", refs.join(", ")));
    message(
        Nav::of(&sess),
        StatusCode::OK,
        "Orders signed",
        &format!("Signed and now active in the record: {}.", names.join("; ")),
        "Return to the chart.",
        &format!("/ehr/patients/{id}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> auth::model::User {
        serde_json::from_value(json!({"username": "doc", "display_name": "Dr Doc", "role": "clinician", "password_hash": "x", "fhir_user": "Practitioner/p1"}))
            .expect("a user")
    }

    /// A suggested medication order with `extra` fields.
    fn med(extra: Value) -> Value {
        let mut m =
            json!({"resourceType": "MedicationRequest", "intent": "order", "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "313782"}]}});
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        m
    }

    fn action(kind: &str, resource: Option<Value>, id: Option<Value>) -> client::cds::Action {
        client::cds::Action { kind: kind.into(), description: kind.into(), resource, resource_id: id }
    }

    #[test]
    fn suggestions_change_only_this_patients_drafts_and_all_or_nothing() {
        let u = user();
        let now = "2026-12-07T10:00:00Z";
        let ibuprofen = draft(&CATALOGUE[3], "p1", &u, now);
        let mut drafts = vec![ibuprofen.clone()];
        let swap = [
            action("delete", None, Some(json!(reference_of(&ibuprofen)))),
            action(
                "create",
                Some(json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": {"reference": "Patient/p1"},
                    "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "313782", "display": "Acetaminophen 325 MG Oral Tablet"}], "text": "Something milder"},
                    "dosageInstruction": [{"text": "2 tablets every 6 hours"}], "note": [{"text": "dropped"}]})),
                None,
            ),
        ];
        apply(&mut drafts, &swap, "p1", &u, now).unwrap();
        assert_eq!(drafts.len(), 1);
        assert_eq!(drafts[0]["medicationCodeableConcept"]["text"], "Acetaminophen 325 MG Oral Tablet", "what is shown is the coded drug");
        assert_eq!(drafts[0]["dosageInstruction"], json!([{"text": "2 tablets every 6 hours"}]));
        assert!(drafts[0].get("note").is_none());
        assert_eq!(drafts[0]["status"], "draft", "a suggestion makes drafts, never signed orders");
        assert_eq!(drafts[0]["requester"]["reference"], "Practitioner/p1");
        let before = drafts.clone();
        for (bad, why) in [
            (
                vec![action("create", Some(json!({"resourceType": "MedicationRequest", "intent": "order", "subject": {"reference": "Patient/p2"}})), None)],
                "another patient",
            ),
            (vec![action("create", Some(json!({"resourceType": "Patient"})), None)], "only medication and lab orders"),
            (vec![action("delete", None, Some(json!("MedicationRequest/not-mine")))], "not among your drafts"),
            (vec![action("update", Some(json!({"resourceType": "ServiceRequest", "id": "x"})), None)], "not among your drafts"),
            (vec![action("create", Some(json!({"resourceType": "MedicationRequest", "intent": "order"})), None)], "no RxNorm code"),
            (vec![action("create", Some(med(json!({"patient": {"reference": "Patient/p2"}}))), None)], "it sets patient"),
            (
                vec![action(
                    "create",
                    Some(med(
                        json!({"medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "1049221", "display": "Acetaminophen 325 MG Oral Tablet"}]}}),
                    )),
                    None,
                )],
                "does not offer (RxNorm 1049221)",
            ),
            (vec![action("create", Some(med(json!({"doNotPerform": true}))), None)], "it sets doNotPerform"),
            (vec![action("create", Some(med(json!({"basedOn": [{"reference": "ServiceRequest/x"}]}))), None)], "it sets basedOn"),
            (vec![action("create", Some(med(json!({"intent": "proposal"}))), None)], "a proposal, not an order"),
            (
                vec![action("create", Some(med(json!({"dosageInstruction": [{"text": "1 a day", "doseAndRate": [{"doseQuantity": {"value": 40}}]}]}))), None)],
                "structured dose",
            ),
            (
                vec![action(
                    "create",
                    Some(json!({"resourceType": "ServiceRequest", "code": {"coding": [{"system": LOINC, "code": "2823-3"}]},
                "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "387713003", "display": "Surgical procedure"}]}]})),
                    None,
                )],
                "not a lab test",
            ),
            (vec![action("delete", None, Some(json!(reference_of(&drafts[0])))), action("launch", None, None)], "does not know"),
        ] {
            let e = apply(&mut drafts, &bad, "p1", &u, now).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
            assert_eq!(drafts, before, "nothing applied: {why}");
        }
    }
}
