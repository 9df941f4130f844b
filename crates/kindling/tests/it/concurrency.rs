//! Requests that race: the same conditional criteria sent by several clients at once must end with one
//! resource, on SQLite and on PostgreSQL (where the suite's second run puts every test server).

use crate::{TestApp, ids, spawn_app};
use serde_json::{Value, json};

const CLIENTS: usize = 8;
const ROUNDS: usize = 5;

fn patient(value: &str) -> Value {
    json!({"resourceType": "Patient", "identifier": [{"system": "urn:race", "value": value}], "name": [{"family": "Race"}]})
}

async fn count(app: &TestApp, value: &str) -> usize {
    ids(&app.search(&format!("Patient?identifier=urn:race|{value}&_count=100")).await).len()
}

/// Issue 16: If-None-Exist on POST, ifNoneExist in transaction Bundles and conditional PUT, each sent by
/// eight clients at once with the same criteria, create one resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_conditional_writes_create_one_resource() {
    let app = spawn_app().await;
    for round in 0..ROUNDS {
        // REST: POST with If-None-Exist.
        let value = format!("post-{round}");
        let sends = (0..CLIENTS).map(|_| {
            app.client
                .post(app.url("Patient"))
                .header("content-type", "application/fhir+json")
                .header("if-none-exist", format!("identifier=urn:race|{value}"))
                .body(patient(&value).to_string())
                .send()
        });
        let statuses: Vec<u16> = futures_statuses(sends).await;
        assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "POST round {round}: {statuses:?}");
        assert!(statuses.iter().all(|s| *s == 201 || *s == 200), "POST round {round}: {statuses:?}");
        assert_eq!(count(&app, &value).await, 1, "POST round {round}");
        // Transaction Bundles with ifNoneExist.
        let value = format!("tx-{round}");
        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": patient(&value), "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier=urn:race|{value}")}}]});
        let sends = (0..CLIENTS).map(|_| app.client.post(app.url("")).header("content-type", "application/fhir+json").body(tx.to_string()).send());
        let statuses = futures_statuses(sends).await;
        assert!(statuses.iter().all(|s| *s == 200), "Bundle round {round}: {statuses:?}");
        assert_eq!(count(&app, &value).await, 1, "Bundle round {round}");
        // Conditional update.
        let value = format!("put-{round}");
        let sends = (0..CLIENTS).map(|_| {
            app.client
                .put(app.url(&format!("Patient?identifier=urn:race|{value}")))
                .header("content-type", "application/fhir+json")
                .body(patient(&value).to_string())
                .send()
        });
        let statuses = futures_statuses(sends).await;
        assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "PUT round {round}: {statuses:?}");
        assert_eq!(count(&app, &value).await, 1, "PUT round {round}");
    }
}

/// Sends the requests at once (each on a task of its own) and returns their statuses.
async fn futures_statuses<F>(sends: impl Iterator<Item = F>) -> Vec<u16>
where
    F: std::future::Future<Output = reqwest::Result<reqwest::Response>> + Send + 'static,
{
    let handles: Vec<_> = sends.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap().unwrap().status().as_u16());
    }
    out
}

/// Issue 16: concurrent `PUT Patient/new-id` without If-Match end as one create and updates (or a 409 the
/// client may retry), never 412.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_of_one_id_are_never_a_failed_precondition() {
    let app = spawn_app().await;
    for round in 0..ROUNDS {
        let id = format!("race-{round}");
        let body = json!({"resourceType": "Patient", "id": id, "name": [{"family": "Race"}]});
        let sends = (0..CLIENTS)
            .map(|_| app.client.put(app.url(&format!("Patient/{id}"))).header("content-type", "application/fhir+json").body(body.to_string()).send());
        let statuses = futures_statuses(sends).await;
        // One create, and updates after it or a 409 the client may retry (a PUT judged against no record
        // does not silently update one another client created meanwhile).
        assert!(statuses.iter().all(|s| matches!(s, 200 | 201 | 409)), "round {round}: {statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "round {round}: {statuses:?}");
    }
}

/// Transaction Bundles that update the same resources, each in its own order (as Synthea's Bundles do with
/// their practitioners and organisations), sent by eight clients at once: every one is saved. On PostgreSQL
/// they deadlocked (a 500 after a second) or lost the race to create the first copy (a 409) before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_updating_the_same_resources_in_other_orders_all_succeed() {
    let app = spawn_app().await;
    for round in 0..ROUNDS {
        let sends = (0..CLIENTS).map(|client| {
            let mut entries: Vec<Value> = (0..12)
                .map(|k| {
                    let id = format!("shared-{round}-{k}");
                    let org = json!({"resourceType": "Organization", "id": id, "name": format!("Clinic {k} (client {client})")});
                    json!({"resource": org, "request": {"method": "PUT", "url": format!("Organization/{id}")}})
                })
                .collect();
            // Each client its own order.
            entries.rotate_left(client * 5 % 12);
            if client % 2 == 1 {
                entries.reverse();
            }
            let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
            app.client.post(app.url("")).header("content-type", "application/fhir+json").body(tx.to_string()).send()
        });
        let statuses = futures_statuses(sends).await;
        assert!(statuses.iter().all(|s| *s == 200), "round {round}: {statuses:?}");
        let found =
            ids(&app.search(&format!("Organization?_id={}&_count=50", (0..12).map(|k| format!("shared-{round}-{k}")).collect::<Vec<_>>().join(","))).await);
        assert_eq!(found.len(), 12, "round {round}");
    }
}
