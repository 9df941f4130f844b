use crate::{patient, spawn_app};
use serde_json::Value;

#[tokio::test]
async fn instance_type_and_system_history_with_paging() {
    let app = spawn_app().await;
    let created = app.create(patient("Hist", "Ory", "female", "1990")).await;
    let id = created["id"].as_str().unwrap();
    for g in ["male", "other", "unknown"] {
        app.clock.advance(time::Duration::seconds(1));
        let mut p = created.clone();
        p["gender"] = serde_json::json!(g);
        assert_eq!(app.put_json(&format!("Patient/{id}"), &p).await.status(), 200);
    }
    app.clock.advance(time::Duration::seconds(1));
    app.client.delete(app.url(&format!("Patient/{id}"))).send().await.unwrap();
    let h = app.search(&format!("Patient/{id}/_history")).await;
    assert_eq!(h["type"], "history");
    assert_eq!(h["total"], 5);
    let entries = h["entry"].as_array().unwrap();
    assert_eq!(entries[0]["request"]["method"], "DELETE", "newest first");
    assert!(entries[0].get("resource").is_none());
    assert_eq!(entries[1]["resource"]["gender"], "unknown");
    assert_eq!(entries[4]["request"]["method"], "POST");

    let page = app.search(&format!("Patient/{id}/_history?_count=2")).await;
    assert_eq!(page["entry"].as_array().unwrap().len(), 2);
    let next = page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"].as_str().unwrap().to_string();
    // A write after the first page does not shift the later pages.
    app.create(patient("Other", "Write", "male", "1990")).await;
    let r = app.client.get(&next).send().await.unwrap();
    let page2: Value = r.json().await.unwrap();
    assert_eq!(page2["entry"][0]["resource"]["gender"], "other");

    let since = created["meta"]["lastUpdated"].as_str().unwrap();
    let h = app.search(&format!("Patient/_history?_since={since}")).await;
    assert_eq!(h["total"], 6);
    let h = app.search("_history").await;
    assert_eq!(h["total"], 6);
    let (status, _) = app.get_json("Patient/nope/_history").await;
    assert_eq!(status, 404);
    let (status, _) = app.get_json("Patient/_history?_since=notadate").await;
    assert_eq!(status, 400);
}
