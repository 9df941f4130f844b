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

/// A CareTeam stored under the old index rules (no `role` rows) and its type listed in `reindex_pending`.
fn old_care_team() -> serde_json::Value {
    json!({"resourceType": "CareTeam", "id": "ct1", "status": "active", "subject": {"reference": "Patient/p1"},
           "participant": [{"role": [{"coding": [{"system": "http://snomed.info/sct", "code": "446050000"}]}], "member": {"reference": "Practitioner/d1"}}]})
}

async fn finds_by_role(store: &dyn Store) -> usize {
    let q = fhir::query::parse(
        "CareTeam",
        &[("role".into(), "http://snomed.info/sct|446050000".into())],
        fhir::query::ParseOptions { lenient: false, base: None, now_ms: 0 },
    )
    .unwrap();
    store.search(&q).await.unwrap().len()
}

/// Migration 8's `reindex_pending`: a type listed there has its index rows rebuilt from the stored content
/// when the store opens (new search parameters then find what was stored before them), once.
#[tokio::test]
async fn listed_types_are_reindexed_when_the_store_opens_sqlite() {
    use store::sqlite::{SqliteConfig, SqliteStore};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let open =
        || SqliteStore::open(SqliteConfig { path: path.clone(), base_url: None, writer_cache_mib: 8 }, std::sync::Arc::new(fhir::time::SystemClock)).unwrap();
    let store = open();
    let mut tx = store.begin().await.unwrap();
    tx.put(old_care_team(), Precondition::None).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(finds_by_role(&store).await, 1);
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("DELETE FROM sp_token WHERE rid IN (SELECT rid FROM resources WHERE res_type = 'CareTeam')").unwrap();
    let store = open();
    assert_eq!(finds_by_role(&store).await, 0, "indexed under the old rules");
    drop(store);
    conn.execute_batch("INSERT INTO reindex_pending (res_type) VALUES ('CareTeam')").unwrap();
    let store = open();
    assert_eq!(finds_by_role(&store).await, 1, "rebuilt when the store opened");
    let left: i64 = conn.query_row("SELECT count(*) FROM reindex_pending", [], |r| r.get(0)).unwrap();
    assert_eq!(left, 0, "done once");
}

#[tokio::test]
async fn listed_types_are_reindexed_when_the_store_opens_postgres() {
    let Some(db) = crate::ScratchPostgres::create("reindex").await else { return };
    let clock: fhir::time::SharedClock = std::sync::Arc::new(fhir::time::SystemClock);
    let connect = || PostgresStore::connect(PostgresConfig { url: db.url.clone(), base_url: None, max_connections: 2 }, clock.clone());
    let store = connect().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.put(old_care_team(), Precondition::None).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(finds_by_role(&store).await, 1);
    drop(store);
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::raw_sql("DELETE FROM sp_token WHERE rid IN (SELECT rid FROM resources WHERE res_type = 'CareTeam')").execute(&pool).await.unwrap();
    let store = connect().await.unwrap();
    assert_eq!(finds_by_role(&store).await, 0, "indexed under the old rules");
    drop(store);
    sqlx::raw_sql("INSERT INTO reindex_pending (res_type) VALUES ('CareTeam')").execute(&pool).await.unwrap();
    let store = connect().await.unwrap();
    assert_eq!(finds_by_role(&store).await, 1, "rebuilt when the store opened");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM reindex_pending").fetch_one(&pool).await.unwrap();
    assert_eq!(left, 0, "done once");
    drop(store);
    pool.close().await;
    db.drop_database().await;
}
