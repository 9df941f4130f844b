//! What a page of search results costs in database statements, counted from sqlx's own statement log
//! (target `sqlx::query`) on PostgreSQL: a patient-scoped token must not re-check each result row.

use crate::{ScratchPostgres, spawn_secured_on};
use std::sync::{Arc, Mutex};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// Collects the SQL of every statement sqlx runs on this thread (a current-thread test runtime runs the
/// server, the pool and the client on it).
#[derive(Clone, Default)]
struct Statements(Arc<Mutex<Vec<String>>>);

struct SqlField<'a>(&'a mut String);

impl tracing::field::Visit for SqlField<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "db.statement" {
            *self.0 = value.to_string();
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "db.statement" {
            *self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Statements {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() == "sqlx::query" {
            let mut sql = String::new();
            event.record(&mut SqlField(&mut sql));
            self.0.lock().unwrap().push(sql);
        }
    }
}

impl Statements {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Leaves out what background tasks run on the same thread: audit batches and statistics checks.
fn by_the_request(sql: Vec<String>) -> Vec<String> {
    sql.into_iter().filter(|s| !s.contains("audit") && !s.contains("reltuples") && !s.contains("ANALYZE") && !s.contains("kindling:analyze")).collect()
}

#[tokio::test]
async fn a_page_for_a_patient_scoped_token_costs_what_it_costs_a_user_token() {
    let Some(pg) = ScratchPostgres::create("statements").await else { return };
    let statements = Statements::default();
    let filter = tracing_subscriber::filter::Targets::new().with_target("sqlx::query", tracing::Level::TRACE);
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(statements.clone().with_filter(filter)));
    let app = spawn_secured_on(&pg.url).await;
    kindling::seed(&app.app_state, 2, 11).await.unwrap();
    ehr::register_demo_app(&app.auth).await.unwrap();
    let practitioner = format!("Practitioner/{}", synth::practitioner_id(0));
    auth::registry::put_user(app.auth.store.as_ref(), "doc", "Doc", auth::model::UserRole::Clinician, "long-enough-1", &practitioner).await.unwrap();
    let patient = synth::patient_id(11, 0);
    let token = |scope: &'static str, patient: Option<String>| {
        let auth = app.auth.clone();
        async move { auth::operator_tokens(&auth, "kindling-demo", "doc", patient.as_deref(), scope).await.unwrap()["access_token"].as_str().unwrap().to_string() }
    };
    let patient_token = token("patient/*.rs", Some(patient.clone())).await;
    let user_token = token("user/*.rs", None).await;
    let page = |token: String, count: usize| {
        let (client, url) = (app.client.clone(), app.url(&format!("Observation?patient={patient}&category=vital-signs&_count={count}")));
        let statements = statements.clone();
        async move {
            let r = client.get(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let bundle: serde_json::Value = r.json().await.unwrap();
            let sql = by_the_request(statements.take());
            (bundle["entry"].as_array().map_or(0, Vec::len), sql)
        }
    };
    // Warm: tokens resolved and cached, statements prepared.
    page(patient_token.clone(), 48).await;
    page(user_token.clone(), 48).await;
    statements.take();

    let (n_user, user_sql) = page(user_token.clone(), 48).await;
    let (n_patient, patient_sql) = page(patient_token.clone(), 48).await;
    let (n_small, small_sql) = page(patient_token.clone(), 5).await;
    assert_eq!((n_user, n_patient, n_small), (48, 48, 5), "the demo patient has more than 48 vital signs");
    assert!(patient_sql.len() <= user_sql.len(), "patient-scoped: {patient_sql:#?}\nuser-scoped: {user_sql:#?}");
    assert_eq!(patient_sql.len(), small_sql.len(), "constant per page: {patient_sql:#?}\n{small_sql:#?}");

    // The next page of a frozen search is checked too, in one statement for the whole page.
    let r = app.client.get(app.url(&format!("Observation?patient={patient}&category=vital-signs&_count=20"))).bearer_auth(&patient_token).send().await.unwrap();
    let bundle: serde_json::Value = r.json().await.unwrap();
    let next = bundle["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"].as_str().unwrap().to_string();
    statements.take();
    let r = app.client.get(&next).bearer_auth(&patient_token).send().await.unwrap();
    let bundle: serde_json::Value = r.json().await.unwrap();
    assert_eq!(bundle["entry"].as_array().unwrap().len(), 20);
    let sql = by_the_request(statements.take());
    assert!(sql.len() <= 3, "snapshot load, fetch, one compartment check: {sql:#?}");
    drop(app);
    pg.drop_database().await;
}
