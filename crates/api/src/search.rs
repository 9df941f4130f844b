//! Search execution: matching keys from the store, a page of them, `_include`/`_revinclude`, and paging
//! through frozen snapshots so that `next` links are stable while others write.

use crate::AppState;
use crate::access::Access;
use crate::bundle_out::{Body, Bundle, Entry, Link, SearchInfo, full_url};
use crate::error::{ApiError, ApiResult};
use fhir::query::{ParseOptions, SearchQuery, Summary, Total, parse};
use fhir::shape;
use std::collections::HashSet;
use store::{Snapshot, StoredResource};

/// A query string's parameters, percent-decoded, in their order.
pub fn parse_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

/// Parses the search parameters of a request against `resource_type`.
pub fn parse_search(state: &AppState, resource_type: &str, pairs: &[(String, String)], lenient: bool) -> ApiResult<SearchQuery> {
    let opts = ParseOptions { lenient, base: Some(&state.local_base), now_ms: state.now_ms() };
    parse(resource_type, pairs, opts).map_err(|e| ApiError::bad_request(e.0))
}

/// Re-encodes parameters as a query string (for `self` links and snapshots), leaving out paging controls.
pub fn encode_pairs(pairs: &[(String, String)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if k == "_getpages" || k == "_getpagesoffset" {
            continue;
        }
        s.append_pair(k, v);
    }
    s.finish()
}

/// Where a page of results comes from.
pub struct PageSource {
    /// The keys of the whole result, in order.
    pub keys: Vec<i64>,
    /// Where this page starts.
    pub offset: usize,
    /// Present when the result set was frozen for paging.
    pub snapshot_id: Option<String>,
    /// The resources of this page when they came with the search (else fetched by key).
    pub first: Option<Vec<StoredResource>>,
    /// The keys come from a search run just now with the query [`Access::restrict_search`] narrowed for
    /// this token (its compartment and constraint filters), so its matches need no second look when the
    /// token's read grants are its search grants.
    pub narrowed: bool,
}

/// Runs a new search, narrowed for `access` by [`Access::restrict_search`], and builds its first page.
pub async fn search_bundle(state: &AppState, access: &Access, q: &SearchQuery, self_url: String, query_string: String) -> ApiResult<Bundle> {
    let paged = q.summary != Summary::Count && q.count > 0;
    let snapshot =
        paged.then(|| Snapshot { resource_type: Some(q.resource_type.clone()), query: query_string, keys: Vec::new(), expires: 0, owner: access.owner() });
    let page = state.store.search_page(q, if paged { q.count } else { 0 }, snapshot).await?;
    let source = PageSource { keys: page.keys, offset: 0, snapshot_id: page.snapshot_id, first: Some(page.first), narrowed: true };
    page_bundle(state, access, q, source, self_url).await
}

/// Builds a page (`source.offset .. +q.count`) as a searchset Bundle.
pub async fn page_bundle(state: &AppState, access: &Access, q: &SearchQuery, source: PageSource, self_url: String) -> ApiResult<Bundle> {
    let now = state.now_ms();
    let mut bundle = Bundle::new("searchset", now);
    let total = source.keys.len();
    if q.total != Total::None {
        bundle.total = Some(total);
    }
    bundle.link.push(Link { relation: "self", url: self_url });
    if q.summary == Summary::Count || q.count == 0 {
        bundle.total = Some(total);
        return Ok(bundle);
    }
    let start = source.offset.min(total);
    let end = (start + q.count).min(total);
    if let Some(id) = &source.snapshot_id {
        let link = |offset: usize| format!("{}?_getpages={id}&_getpagesoffset={offset}&_count={}", state.base_url, q.count);
        bundle.link.push(Link { relation: "first", url: link(0) });
        if start > 0 {
            bundle.link.push(Link { relation: "previous", url: link(start.saturating_sub(q.count)) });
        }
        if end < total {
            bundle.link.push(Link { relation: "next", url: link(end) });
        }
        let last = if total == 0 { 0 } else { ((total - 1) / q.count) * q.count };
        bundle.link.push(Link { relation: "last", url: link(last) });
    }
    let page_keys = &source.keys[start..end];
    let mut matches = match source.first {
        Some(first) => first,
        None => state.store.fetch(page_keys).await?,
    };
    // A search run now was narrowed to what the token may see; pages of frozen results (possibly fetched
    // with another token) are checked, in one statement, and so are included resources (in `includes`).
    if !(source.narrowed && access.search_implies_read(&q.resource_type)) {
        matches = access.readable(state, matches).await?;
    }
    let match_keys: Vec<i64> = matches.iter().map(|r| r.key).collect();
    let included = includes(state, access, q, &match_keys).await?;
    for r in &matches {
        bundle.entry.push(entry(state, q, r, "match"));
    }
    for r in &included {
        bundle.entry.push(entry(state, q, r, "include"));
    }
    if !q.ignored.is_empty() {
        let oo = fhir::outcome::outcome_many(
            fhir::Severity::Warning,
            "not-supported",
            &q.ignored.iter().map(|i| format!("ignored under handling=lenient: {i}")).collect::<Vec<_>>(),
        );
        bundle.entry.push(Entry { resource: Some(Body::Value(oo)), search: Some(SearchInfo { mode: "outcome" }), ..Default::default() });
    }
    Ok(bundle)
}

fn entry(state: &AppState, q: &SearchQuery, r: &StoredResource, mode: &'static str) -> Entry {
    let body = shaped(q, r);
    Entry { full_url: Some(full_url(&state.base_url, r)), resource: Some(body), search: Some(SearchInfo { mode }), ..Default::default() }
}

/// Applies `_elements` / `_summary` to a stored resource.
pub fn shaped(q: &SearchQuery, r: &StoredResource) -> Body {
    let needs_shape = q.elements.is_some() || matches!(q.summary, Summary::Text | Summary::Data);
    if !needs_shape {
        return Body::stored(r);
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&r.json) else { return Body::stored(r) };
    let v = match (&q.elements, q.summary) {
        (_, Summary::Text) => shape::summary_text(&v),
        (_, Summary::Data) => shape::summary_data(&v),
        (Some(e), _) => shape::apply_elements(&v, e),
        _ => v,
    };
    Body::Value(v)
}

/// Resolves `_include` and `_revinclude` for a page's matches, then one more hop for the `:iterate` ones.
/// Only what the token may read is included or followed further: a resource it cannot read tells nothing
/// of what it refers to (another patient's prescription does not lead to its medication).
async fn includes(state: &AppState, access: &Access, q: &SearchQuery, page: &[i64]) -> ApiResult<Vec<StoredResource>> {
    if page.is_empty() || (q.include.is_empty() && q.revinclude.is_empty()) {
        return Ok(Vec::new());
    }
    let mut seen: HashSet<i64> = page.iter().copied().collect();
    let mut found: Vec<i64> = Vec::new();
    for inc in q.include.iter().filter(|i| !i.iterate) {
        found.extend(state.store.include(page, inc).await?);
    }
    for inc in q.revinclude.iter().filter(|i| !i.iterate) {
        found.extend(state.store.revinclude(page, inc).await?);
    }
    found.retain(|k| seen.insert(*k));
    let mut included = access.readable(state, state.store.fetch(&found).await?).await?;
    if q.include.iter().chain(&q.revinclude).any(|i| i.iterate) {
        let from: Vec<i64> = page.iter().copied().chain(included.iter().map(|r| r.key)).collect();
        let mut hop = Vec::new();
        for inc in q.include.iter().filter(|i| i.iterate) {
            hop.extend(state.store.include(&from, inc).await?);
        }
        for inc in q.revinclude.iter().filter(|i| i.iterate) {
            hop.extend(state.store.revinclude(&from, inc).await?);
        }
        hop.retain(|k| seen.insert(*k));
        included.extend(access.readable(state, state.store.fetch(&hop).await?).await?);
    }
    Ok(included)
}

/// `GET [base]?_getpages=ID&_getpagesoffset=N&_count=C`: a later page of a frozen search.
pub async fn snapshot_page(state: &AppState, access: &Access, pairs: &[(String, String)]) -> ApiResult<Bundle> {
    let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let id = get("_getpages").unwrap_or_default();
    let offset: usize = get("_getpagesoffset").unwrap_or("0").parse().map_err(|_| ApiError::bad_request("_getpagesoffset must be a number"))?;
    // Another token's snapshot is answered as one that does not exist: a leaked `next` link serves no one else.
    let snapshot = state
        .store
        .load_snapshot(id)
        .await?
        .filter(|s| s.owner.is_none() || s.owner == access.owner())
        .ok_or_else(|| ApiError::gone("this search result has expired or never existed; run the search again"))?;
    let resource_type = snapshot.resource_type.clone().unwrap_or_default();
    let mut original = parse_pairs(&snapshot.query);
    if let Some(c) = get("_count") {
        original.retain(|(k, _)| k != "_count");
        original.push(("_count".into(), c.to_string()));
    }
    let q = parse_search(state, &resource_type, &original, true)?;
    let self_url = format!("{}?_getpages={id}&_getpagesoffset={offset}&_count={}", state.base_url, q.count);
    let source = PageSource { keys: snapshot.keys.clone(), offset, snapshot_id: Some(id.to_string()), first: None, narrowed: false };
    page_bundle(state, access, &q, source, self_url).await
}
