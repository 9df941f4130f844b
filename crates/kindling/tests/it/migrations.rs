//! PostgreSQL migrations that fill new index columns from the rows already there give what writes give.
//! Skipped with a message without PostgreSQL, except in CI. (SQLite's: unit tests in `store::sqlite`.)

use serde_json::json;
use store::postgres::{PostgresConfig, PostgresStore};
use store::{Precondition, Store};

#[tokio::test]
async fn migration_6_fills_the_per_patient_dates_as_writes_do() {
    let Some(db) = crate::ScratchPostgres::create("migrations").await else { return };
    let url = db.url.clone();
    let config = PostgresConfig { url: url.clone(), base_url: None, max_connections: 2 };
    let clock: fhir::time::SharedClock = std::sync::Arc::new(fhir::time::SystemClock);
    let store = PostgresStore::connect(config, clock).await.unwrap();
    let obs = |id: &str, effective: serde_json::Value| {
        let mut o = json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "x"},
                           "category": [{"coding": [{"code": "vital-signs"}, {"code": "survey"}]}], "subject": {"reference": "Patient/p1"}});
        if let Some(e) = effective.as_object() {
            o.as_object_mut().unwrap().extend(e.clone());
        }
        o
    };
    let mut tx = store.begin().await.unwrap();
    for r in [
        obs("o1", json!({"effectiveDateTime": "2023-01-05"})),
        obs("o2", json!({"effectivePeriod": {"start": "2023-01-01", "end": "2023-01-10T12:00:00Z"}})),
        obs("o3", json!(null)),
        // No `date` parameter on Condition.
        json!({"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}, "onsetDateTime": "2020-01-01",
               "category": [{"coding": [{"code": "problem-list-item"}]}]}),
    ] {
        tx.put(r, Precondition::None).await.unwrap();
    }
    tx.commit().await.unwrap();
    drop(store);

    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let rows = || async {
        sqlx::query_as::<_, (String, i64, Option<i64>, Option<i64>)>("SELECT p, rid, date_lo, date_hi FROM sp_token_patient ORDER BY rid, p, seq")
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    let written = rows().await;
    assert_eq!(written.len(), 7);
    assert_eq!(written.iter().filter(|r| r.2.is_some() && r.3.is_some()).count(), 4, "{written:?}");
    // Back to the schema before migration 6, then its SQL again.
    sqlx::raw_sql(
        "ALTER TABLE sp_token_patient DROP CONSTRAINT sp_token_patient_pkey, DROP COLUMN date_lo, DROP COLUMN date_hi,
             ADD PRIMARY KEY (patient_id, p, code, rid, seq) INCLUDE (system, in_compartment, via)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::raw_sql(include_str!("../../../store/migrations/postgres/0006_patient_token_dates.sql")).execute(&pool).await.unwrap();
    assert_eq!(rows().await, written);
    let key: String = sqlx::query_scalar("SELECT indexdef FROM pg_indexes WHERE indexname = 'sp_token_patient_pkey'").fetch_one(&pool).await.unwrap();
    assert!(key.ends_with("INCLUDE (system, in_compartment, via, date_lo, date_hi)"), "the search reads the index alone: {key}");
    pool.close().await;
    db.drop_database().await;
}
