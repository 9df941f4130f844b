//! `Patient/{id}/$everything` with `_since`, `_type` and `_count` paging.

use crate::AppState;
use crate::bundle_out::Bundle;
use crate::error::{ApiError, ApiResult};
use crate::search::{PageSource, page_bundle};
use fhir::query::{DEFAULT_COUNT, MAX_COUNT, SearchQuery};
use fhir::time::parse_date_range;
use fhir::types::is_storable_type;
use store::Snapshot;

pub async fn everything(state: &AppState, access: &crate::access::Access, patient_id: &str, pairs: &[(String, String)]) -> ApiResult<Bundle> {
    let mut since = None;
    let mut types: Option<Vec<String>> = None;
    let mut count = DEFAULT_COUNT;
    for (k, v) in pairs {
        match k.as_str() {
            "_since" => since = Some(parse_date_range(v).ok_or_else(|| ApiError::bad_request(format!("_since '{v}' is not an instant")))?.lo),
            "_type" => {
                let list: Vec<String> = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
                if let Some(bad) = list.iter().find(|t| !is_storable_type(t)) {
                    return Err(ApiError::bad_request(format!("_type names '{bad}', which is not a resource type")));
                }
                types.get_or_insert_with(Vec::new).extend(list);
            }
            "_count" => count = v.parse::<usize>().map_err(|_| ApiError::bad_request("_count must be a number"))?.clamp(1, MAX_COUNT),
            "_format" | "_pretty" => {}
            other => return Err(ApiError::bad_request(format!("$everything does not take the parameter '{other}'"))),
        }
    }
    let mut keys = state.store.everything(patient_id, types.as_deref(), since).await?;
    if !access.reads_everything() {
        // Counted, paged and frozen is only what this token may read: the total (and the `last` link)
        // must not tell how many resources of the record it cannot see, of which types or since when.
        let mut readable = std::collections::HashSet::with_capacity(keys.len());
        for chunk in keys.chunks(1000) {
            readable.extend(access.readable(state, state.store.fetch(chunk).await?).await?.into_iter().map(|r| r.key));
        }
        keys.retain(|k| readable.contains(k));
    }
    let mut q = SearchQuery::new("Patient");
    q.count = count;
    let mut source = PageSource { keys, offset: 0, snapshot_id: None, first: None, narrowed: false };
    if source.keys.len() > count {
        let snapshot =
            Snapshot { resource_type: Some("Patient".into()), query: format!("_count={count}"), keys: source.keys.clone(), expires: 0, owner: access.owner() };
        source.snapshot_id = Some(state.store.save_snapshot(snapshot).await?);
    }
    let self_url = format!("{}/Patient/{patient_id}/$everything", state.base_url);
    page_bundle(state, access, &q, source, self_url).await
}
