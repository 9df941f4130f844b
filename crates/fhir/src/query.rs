//! Parses FHIR search parameters into a backend-neutral [`SearchQuery`] that a store compiles to SQL.
//!
//! Repeated parameters are ANDed, comma-separated values ORed (`\,` escapes a comma).

use crate::extract::normalize_string;
use crate::params::{self, ParamKind, SearchParam};
use crate::reference::parse_reference;
use crate::time::{MAX_MS, MIN_MS, parse_date_range};
use crate::types::{is_known_type, is_valid_id};

/// `_count` when none is given.
pub const DEFAULT_COUNT: usize = 50;
/// The largest `_count` served (a larger one is lowered).
pub const MAX_COUNT: usize = 1000;
/// The most search parameters one search may carry (repeated names count each time).
pub const MAX_PARAMETERS: usize = 100;
/// The most comma-separated values one parameter may carry.
pub const MAX_VALUES_PER_PARAMETER: usize = 100;
/// The most values all parameters of one search may carry together.
pub const MAX_VALUES: usize = 400;

/// A comparison prefix (FHIR R4 §3.1.1.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// `eq` (the default).
    Eq,
    /// `ne`.
    Ne,
    /// `gt`.
    Gt,
    /// `lt`.
    Lt,
    /// `ge`.
    Ge,
    /// `le`.
    Le,
    /// `sa`: starts after.
    Sa,
    /// `eb`: ends before.
    Eb,
    /// `ap`: approximately.
    Ap,
}

/// A date comparison: the prefix and the range of the value given.
#[derive(Debug, Clone, PartialEq)]
pub struct DateCmp {
    /// The prefix.
    pub prefix: Prefix,
    /// The value's first millisecond.
    pub lo: i64,
    /// The value's last millisecond.
    pub hi: i64,
}

/// A number comparison: the prefix and the value with its implied precision.
#[derive(Debug, Clone, PartialEq)]
pub struct NumCmp {
    /// The prefix.
    pub prefix: Prefix,
    /// The value.
    pub value: f64,
    /// The implicit range of the value given its precision (`100` means [99.5, 100.5)).
    pub lo: f64,
    /// The upper end of the value's precision range.
    pub hi: f64,
}

/// A quantity comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantityCmp {
    /// The number part.
    pub num: NumCmp,
    /// The unit's system, when given.
    pub system: Option<String>,
    /// The unit's code, when given.
    pub code: Option<String>,
}

/// One value of a token parameter (`[system|]code`).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenValue {
    /// `None`: any system; `Some(None)`: no system (`|code`); `Some(Some(s))`: that system.
    pub system: Option<Option<String>>,
    /// `None`: any code in the system (`system|`).
    pub code: Option<String>,
}

/// One value of a reference parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum RefValue {
    /// `[Type/]id` on this server.
    Local {
        /// The type, when given (or implied by the parameter's single target).
        resource_type: Option<String>,
        /// The id.
        id: String,
    },
    /// An absolute URL (matched as written).
    Url(String),
}

/// How a string parameter matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMode {
    /// The default: starts with, ignoring case and accents.
    StartsWith,
    /// `:exact`.
    Exact,
    /// `:contains`.
    Contains,
}

/// One ANDed condition; the values inside are ORed.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `_id`.
    Id(Vec<String>),
    /// `_lastUpdated`.
    LastUpdated(Vec<DateCmp>),
    /// A string parameter.
    String {
        /// The search parameter's index key (`Type.name`).
        key: &'static str,
        /// How the values match.
        mode: StringMode,
        /// The values, ORed.
        values: Vec<String>,
    },
    /// A token parameter (`:not` when `negate`).
    Token {
        /// The search parameter's index key (`Type.name`).
        key: &'static str,
        /// The values, ORed.
        values: Vec<TokenValue>,
        /// `:not`: resources without any of the values.
        negate: bool,
    },
    /// A token parameter with `:text`.
    TokenText {
        /// The search parameter's index key (`Type.name`).
        key: &'static str,
        /// The values, ORed.
        values: Vec<String>,
    },
    /// A reference parameter.
    Reference {
        /// The search parameter's index key (`Type.name`).
        key: &'static str,
        /// The values, ORed.
        values: Vec<RefValue>,
    },
    /// A date parameter.
    Date {
        /// The search parameter's index key (`Type.name`).
        key: &'static str,
        /// The values, ORed.
        values: Vec<DateCmp>,
    },
    /// A quantity parameter.
    Quantity {
        /// The search parameter's index key (`Type.name`).
        key: &'static str,
        /// The values, ORed.
        values: Vec<QuantityCmp>,
    },
    /// A number parameter.
    Number {
        /// The search parameter's index key (`Type.name`).
        key: &'static str,
        /// The values, ORed.
        values: Vec<NumCmp>,
    },
    /// `target_type` restricts reference rows shared with a broader parameter.
    Missing {
        /// The search parameter's index key (`Type.name`).
        key: &'static str,
        /// The parameter's type.
        kind: ParamKind,
        /// `true`: resources without a value; `false`: with one.
        missing: bool,
        /// The type a reference must point to.
        target_type: Option<&'static str>,
    },
    /// Resources in the compartment of this patient.
    PatientCompartment(String),
    /// These resources of one type, by id: the context patient alone, which the server puts inside a
    /// chain or `_has` on `Patient` for a patient-level token (its Patient search would also find the
    /// records that link to the patient, which it may not read).
    Ids {
        /// The type.
        resource_type: String,
        /// The ids.
        ids: Vec<String>,
    },
    /// A chained parameter, one level (`subject:Patient.name=peter`): the resource refers through `key`
    /// to a live `target_type` resource that matches every filter (the caller adds the token's limits on
    /// `target_type` to them).
    Chain {
        /// The search parameter's index key (`Type.name`).
        key: &'static str,
        /// The type the reference points to.
        target_type: String,
        /// What that resource must match.
        filters: Vec<Filter>,
    },
    /// `_has`, one level (`Patient?_has:Observation:patient:code=1234-5`): a live `source_type` resource
    /// refers to this one (of `target_type`) through `key` and matches every filter.
    Has {
        /// The type of the referring resources.
        source_type: String,
        /// The search parameter's index key (`Type.name`).
        key: &'static str,
        /// This resource's type.
        target_type: String,
        /// What the referring resource must match.
        filters: Vec<Filter>,
    },
}

impl Filter {
    /// The type whose resources a [`Filter::Chain`] or [`Filter::Has`] searches, and its filters.
    pub fn inner_mut(&mut self) -> Option<(&str, &mut Vec<Filter>)> {
        match self {
            Filter::Chain { target_type, filters, .. } => Some((target_type.as_str(), filters)),
            Filter::Has { source_type, filters, .. } => Some((source_type.as_str(), filters)),
            _ => None,
        }
    }

    /// Whether the filter can select its matching resources on its own (a search index drives it).
    pub fn can_select(&self) -> bool {
        match self {
            Filter::String { .. }
            | Filter::TokenText { .. }
            | Filter::Reference { .. }
            | Filter::Date { .. }
            | Filter::Quantity { .. }
            | Filter::Number { .. }
            | Filter::PatientCompartment(_)
            | Filter::Chain { .. }
            | Filter::Has { .. }
            | Filter::Ids { .. } => true,
            Filter::Token { negate, .. } => !negate,
            Filter::Id(_) | Filter::LastUpdated(_) | Filter::Missing { .. } => false,
        }
    }
}

/// What a search sorts by.
#[derive(Debug, Clone, PartialEq)]
pub enum SortKey {
    /// `_id`.
    Id,
    /// `_lastUpdated`.
    LastUpdated,
    /// A search parameter.
    Param {
        /// Its index key (`Type.name`).
        key: &'static str,
        /// Its type (what is compared).
        kind: ParamKind,
    },
}

/// One `_sort` key.
#[derive(Debug, Clone, PartialEq)]
pub struct Sort {
    /// The key.
    pub key: SortKey,
    /// `-` before it.
    pub descending: bool,
}

/// `_summary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    /// `false` (the default): whole resources.
    False,
    /// `count`: the total only.
    Count,
    /// `data`: without the narrative.
    Data,
    /// `text`: the narrative and mandatory elements.
    Text,
}

/// `_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    /// `none`.
    None,
    /// `estimate`.
    Estimate,
    /// `accurate`.
    Accurate,
}

/// `_include=Source:param[:Target]` or `_revinclude=Source:param[:Target]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    /// The type whose reference is followed.
    pub source_type: String,
    /// The reference parameter's index key.
    pub key: &'static str,
    /// The target type, when named.
    pub target_type: Option<String>,
    /// `:iterate`.
    pub iterate: bool,
}

/// A parsed search: its filters, sort, paging and shaping.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    /// The searched type.
    pub resource_type: String,
    /// The conditions, ANDed.
    pub filters: Vec<Filter>,
    /// The sort keys.
    pub sort: Vec<Sort>,
    /// Entries per page.
    pub count: usize,
    /// `_summary`.
    pub summary: Summary,
    /// `_elements`.
    pub elements: Option<Vec<String>>,
    /// `_total`.
    pub total: Total,
    /// `_include`s.
    pub include: Vec<Include>,
    /// `_revinclude`s.
    pub revinclude: Vec<Include>,
    /// Parameters ignored under `Prefer: handling=lenient`, with the reason.
    pub ignored: Vec<String>,
}

impl SearchQuery {
    /// A search of every `resource_type` resource, with the defaults.
    pub fn new(resource_type: &str) -> Self {
        SearchQuery {
            resource_type: resource_type.to_string(),
            filters: Vec::new(),
            sort: Vec::new(),
            count: DEFAULT_COUNT,
            summary: Summary::False,
            elements: None,
            total: Total::Accurate,
            include: Vec::new(),
            revinclude: Vec::new(),
            ignored: Vec::new(),
        }
    }
}

/// Why a search could not be read (a sentence for a 400 OperationOutcome).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, QueryError> {
    Err(QueryError(msg.into()))
}

/// Options for [`parse`].
#[derive(Debug, Clone, Copy)]
pub struct ParseOptions<'a> {
    /// `Prefer: handling=lenient`: unknown or unsupported parameters are ignored (and reported) instead of refused.
    pub lenient: bool,
    /// This server's FHIR base URL, so that absolute references to it count as local.
    pub base: Option<&'a str>,
    /// Now, in Unix ms, for the `ap` prefix.
    pub now_ms: i64,
}

/// Parameters that only shape the HTTP response and are handled before searching.
const TRANSPORT_PARAMS: &[&str] = &["_format", "_pretty"];

/// Reads a search of `resource_type` from its parameters, in the order given.
pub fn parse(resource_type: &str, pairs: &[(String, String)], opts: ParseOptions<'_>) -> Result<SearchQuery, QueryError> {
    check_size(pairs)?;
    let mut q = SearchQuery::new(resource_type);
    for (raw_name, value) in pairs {
        match parse_one(&mut q, raw_name, value, opts) {
            Ok(()) => {}
            Err(e) if opts.lenient && !is_result_param(raw_name) => q.ignored.push(format!("{raw_name}: {}", e.0)),
            Err(e) => return Err(e),
        }
    }
    Ok(q)
}

/// Bounds what one search may ask for, so that a long query is a clear 400 and never a database error
/// (SQLite refuses expressions deeper than 1,000 terms). Not relaxed by `handling=lenient`.
fn check_size(pairs: &[(String, String)]) -> Result<(), QueryError> {
    let counted: Vec<&(String, String)> = pairs.iter().filter(|(n, _)| !TRANSPORT_PARAMS.contains(&n.split(':').next().unwrap_or(""))).collect();
    if counted.len() > MAX_PARAMETERS {
        return Err(QueryError(format!("a search may have at most {MAX_PARAMETERS} parameters; this one has {}", counted.len())));
    }
    let mut total = 0;
    for (name, value) in counted {
        // Commas escaped as `\,` are part of a value.
        let values = value.split(',').count() - value.matches("\\,").count();
        if values > MAX_VALUES_PER_PARAMETER {
            return Err(QueryError(format!("the parameter '{name}' may have at most {MAX_VALUES_PER_PARAMETER} comma-separated values; it has {values}")));
        }
        total += values;
    }
    if total > MAX_VALUES {
        return Err(QueryError(format!("a search may have at most {MAX_VALUES} values in all its parameters; this one has {total}")));
    }
    Ok(())
}

fn is_result_param(name: &str) -> bool {
    matches!(name, "_count" | "_sort" | "_summary" | "_total" | "_elements" | "_include" | "_revinclude")
        || name.starts_with("_include:")
        || name.starts_with("_revinclude:")
}

fn parse_one(q: &mut SearchQuery, raw_name: &str, value: &str, opts: ParseOptions<'_>) -> Result<(), QueryError> {
    let ty = q.resource_type.clone();
    let (name, modifier) = match raw_name.split_once(':') {
        Some((n, m)) => (n, Some(m)),
        None => (raw_name, None),
    };
    if TRANSPORT_PARAMS.contains(&name) {
        return Ok(());
    }
    match name {
        "_count" => {
            let n: usize = value.parse().map_err(|_| QueryError(format!("_count must be a non-negative integer, not '{value}'")))?;
            q.count = n.min(MAX_COUNT);
            return Ok(());
        }
        "_sort" => {
            for part in value.split(',').filter(|s| !s.is_empty()) {
                let (descending, pname) = match part.strip_prefix('-') {
                    Some(p) => (true, p),
                    None => (false, part),
                };
                let key = match pname {
                    "_id" => SortKey::Id,
                    "_lastUpdated" => SortKey::LastUpdated,
                    other => match params::find(&ty, other) {
                        Some(p) if p.kind != ParamKind::Reference => SortKey::Param { key: p.index_key.as_str(), kind: p.kind },
                        Some(_) => return err(format!("sorting by the reference parameter '{other}' is not supported")),
                        None => return err(format!("unknown sort parameter '{other}' for {ty}")),
                    },
                };
                q.sort.push(Sort { key, descending });
            }
            return Ok(());
        }
        "_summary" => {
            q.summary = match value {
                "count" => Summary::Count,
                "true" => return err("_summary=true is not supported here; use _elements to choose elements"),
                "false" => Summary::False,
                "data" => Summary::Data,
                "text" => Summary::Text,
                _ => return err(format!("_summary must be one of true, false, count, data, text; got '{value}'")),
            };
            return Ok(());
        }
        "_total" => {
            q.total = match value {
                "none" => Total::None,
                "estimate" => Total::Estimate,
                "accurate" => Total::Accurate,
                _ => return err(format!("_total must be none, estimate or accurate; got '{value}'")),
            };
            return Ok(());
        }
        "_elements" => {
            q.elements = Some(value.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect());
            return Ok(());
        }
        "_include" | "_revinclude" => {
            let iterate = match modifier {
                None => false,
                Some("iterate") | Some("recurse") => true,
                Some(m) => return err(format!("unknown modifier ':{m}' on {name}")),
            };
            let inc = parse_include(value, iterate)?;
            if name == "_include" {
                if !iterate && inc.source_type != ty {
                    return err(format!("_include source type {} is not the searched type {ty}; use _include:iterate", inc.source_type));
                }
                q.include.push(inc);
            } else {
                q.revinclude.push(inc);
            }
            return Ok(());
        }
        _ => {}
    }
    let values = split_or(value);
    if values.iter().any(|v| v.is_empty()) {
        return err(format!("parameter '{raw_name}' has an empty value"));
    }
    if name == "_has" {
        let filter = parse_has(&ty, modifier.unwrap_or(""), &values, opts)?;
        q.filters.push(filter);
        return Ok(());
    }
    if raw_name.contains('.') {
        let filter = parse_chain(&ty, raw_name, &values, opts)?;
        q.filters.push(filter);
        return Ok(());
    }
    if name == "_id" {
        if let Some(m) = modifier {
            if m == "missing" {
                return err("_id:missing is not supported");
            }
            return err(format!("unknown modifier ':{m}' on _id"));
        }
        for v in &values {
            if !is_valid_id(v) {
                return err(format!("'{v}' is not a valid resource id"));
            }
        }
        q.filters.push(Filter::Id(values));
        return Ok(());
    }
    if name == "_lastUpdated" {
        if let Some(m) = modifier {
            return err(format!("unknown modifier ':{m}' on _lastUpdated"));
        }
        let cmps = values.iter().map(|v| parse_date_cmp(v, opts.now_ms)).collect::<Result<_, _>>()?;
        q.filters.push(Filter::LastUpdated(cmps));
        return Ok(());
    }
    let Some(param) = params::find(&ty, name) else {
        return err(format!("unknown search parameter '{name}' for {ty}"));
    };
    let filter = parse_param(param, modifier, &values, opts)?;
    q.filters.push(filter);
    Ok(())
}

/// The condition inside a chain or `_has`: one parameter of `ty` (with its modifier), which must be able to
/// select its resources on its own (not `:missing`, not `:not`).
fn parse_inner(ty: &str, raw: &str, values: &[String], opts: ParseOptions<'_>) -> Result<Filter, QueryError> {
    let (name, modifier) = match raw.split_once(':') {
        Some((n, m)) => (n, Some(m)),
        None => (raw, None),
    };
    if name == "_has" || name.contains('.') {
        return err(format!("'{raw}': chains and _has go one level deep here"));
    }
    if name == "_id" {
        return err(format!("'{raw}' cannot be used inside _has; search the referring resources instead"));
    }
    let Some(param) = params::find(ty, name) else {
        return err(format!("unknown search parameter '{name}' for {ty}"));
    };
    let filter = parse_param(param, modifier, values, opts)?;
    if !filter.can_select() {
        return err(format!("'{raw}' cannot be used inside a chain or _has (no :missing or :not there)"));
    }
    Ok(filter)
}

/// `ref[:Type].param[:modifier]`: one level of chaining.
fn parse_chain(ty: &str, raw_name: &str, values: &[String], opts: ParseOptions<'_>) -> Result<Filter, QueryError> {
    let (outer, inner) = raw_name.split_once('.').unwrap_or((raw_name, ""));
    let (ref_name, type_modifier) = match outer.split_once(':') {
        Some((n, t)) => (n, Some(t)),
        None => (outer, None),
    };
    let Some(param) = params::find(ty, ref_name) else {
        return err(format!("unknown search parameter '{ref_name}' for {ty} in the chain '{raw_name}'"));
    };
    if param.kind != ParamKind::Reference {
        return err(format!("'{ref_name}' is not a reference parameter of {ty}, so it cannot be chained"));
    }
    let target_type = match (type_modifier, param.targets) {
        (Some(t), targets) => {
            if !is_known_type(t) || targets.is_some_and(|ts| !ts.contains(&t)) {
                return err(format!("'{ref_name}' of {ty} does not refer to '{t}'"));
            }
            t
        }
        (None, Some([only])) => only,
        (None, targets) => {
            // Several possible targets: the one that has the chained parameter, when only one does.
            let inner_name = inner.split(':').next().unwrap_or("");
            let having: Vec<&'static str> = targets.unwrap_or(&[]).iter().copied().filter(|t| params::find(t, inner_name).is_some()).collect();
            match having.as_slice() {
                [only] => *only,
                _ => return err(format!("'{ref_name}' of {ty} may refer to several types; name one, e.g. {ref_name}:Patient.{inner_name}")),
            }
        }
    };
    if inner == "_id" {
        // `subject:Patient._id=123` is the reference itself.
        if let Some(bad) = values.iter().find(|v| !is_valid_id(v)) {
            return err(format!("'{bad}' is not a valid resource id"));
        }
        let values = values.iter().map(|id| RefValue::Local { resource_type: Some(target_type.to_string()), id: id.clone() }).collect();
        return Ok(Filter::Reference { key: param.index_key.as_str(), values });
    }
    let filter = parse_inner(target_type, inner, values, opts)?;
    Ok(Filter::Chain { key: param.index_key.as_str(), target_type: target_type.to_string(), filters: vec![filter] })
}

/// `_has:Source:ref:param[:modifier]`: resources that a `Source` matching `param` refers to through `ref`.
fn parse_has(ty: &str, spec: &str, values: &[String], opts: ParseOptions<'_>) -> Result<Filter, QueryError> {
    let mut parts = spec.splitn(3, ':');
    let (Some(source), Some(ref_name), Some(inner)) = (parts.next(), parts.next(), parts.next()) else {
        return err(format!("_has:{spec} must be _has:Type:reference:parameter (e.g. _has:Observation:patient:code)"));
    };
    if !is_known_type(source) {
        return err(format!("unknown resource type '{source}' in _has:{spec}"));
    }
    let Some(param) = params::find(source, ref_name) else {
        return err(format!("unknown search parameter '{ref_name}' for {source} in _has:{spec}"));
    };
    if param.kind != ParamKind::Reference || param.targets.is_some_and(|ts| !ts.contains(&ty)) {
        return err(format!("'{ref_name}' of {source} does not refer to {ty}"));
    }
    let filter = parse_inner(source, inner, values, opts)?;
    Ok(Filter::Has { source_type: source.to_string(), key: param.index_key.as_str(), target_type: ty.to_string(), filters: vec![filter] })
}

fn parse_include(value: &str, iterate: bool) -> Result<Include, QueryError> {
    let parts: Vec<&str> = value.split(':').collect();
    if parts.len() < 2 || parts.len() > 3 {
        return err(format!("_include/_revinclude value '{value}' must be Type:param[:TargetType]"));
    }
    let source_type = parts[0];
    if !is_known_type(source_type) {
        return err(format!("unknown resource type '{source_type}' in '{value}'"));
    }
    let Some(p) = params::find(source_type, parts[1]) else {
        return err(format!("unknown search parameter '{}' for {source_type} in '{value}'", parts[1]));
    };
    if p.kind != ParamKind::Reference {
        return err(format!("'{}' is not a reference parameter", parts[1]));
    }
    let target_type = match parts.get(2) {
        Some(t) if is_known_type(t) => Some(t.to_string()),
        Some(t) => return err(format!("unknown target type '{t}' in '{value}'")),
        None => None,
    };
    let target_type = target_type.or_else(|| p.shared_target().map(str::to_string));
    Ok(Include { source_type: source_type.to_string(), key: p.index_key.as_str(), target_type, iterate })
}

fn parse_param(param: &'static SearchParam, modifier: Option<&str>, values: &[String], opts: ParseOptions<'_>) -> Result<Filter, QueryError> {
    let key = param.index_key.as_str();
    if let Some("missing") = modifier {
        let missing = match values {
            [v] if v == "true" => true,
            [v] if v == "false" => false,
            _ => return err(format!("{}:missing takes true or false", param.name)),
        };
        return Ok(Filter::Missing { key, kind: param.kind, missing, target_type: param.shared_target() });
    }
    let bad_modifier = |m: &str| err(format!("modifier ':{m}' is not supported on the {} parameter '{}'", param.kind.as_str(), param.name));
    match param.kind {
        ParamKind::String => {
            let mode = match modifier {
                None => StringMode::StartsWith,
                Some("exact") => StringMode::Exact,
                Some("contains") => StringMode::Contains,
                Some(m) => return bad_modifier(m),
            };
            let values = if mode == StringMode::Exact { values.to_vec() } else { values.iter().map(|v| normalize_string(v)).collect() };
            Ok(Filter::String { key, mode, values })
        }
        ParamKind::Token | ParamKind::Uri => match modifier {
            None | Some("not") => {
                let values = values.iter().map(|v| parse_token(v)).collect();
                Ok(Filter::Token { key, values, negate: modifier.is_some() })
            }
            Some("text") if param.kind == ParamKind::Token => Ok(Filter::TokenText { key, values: values.iter().map(|v| normalize_string(v)).collect() }),
            Some(m) => bad_modifier(m),
        },
        ParamKind::Reference => {
            let type_modifier = match modifier {
                None => None,
                Some(t) if is_known_type(t) => Some(t),
                Some(m) => return bad_modifier(m),
            };
            let mut out = Vec::new();
            for v in values {
                out.push(parse_ref_value(param, type_modifier, v, opts.base)?);
            }
            Ok(Filter::Reference { key, values: out })
        }
        ParamKind::Date => {
            if let Some(m) = modifier {
                return bad_modifier(m);
            }
            let values = values.iter().map(|v| parse_date_cmp(v, opts.now_ms)).collect::<Result<_, _>>()?;
            Ok(Filter::Date { key, values })
        }
        ParamKind::Number => {
            if let Some(m) = modifier {
                return bad_modifier(m);
            }
            let values = values.iter().map(|v| parse_num_cmp(v)).collect::<Result<_, _>>()?;
            Ok(Filter::Number { key, values })
        }
        ParamKind::Quantity => {
            if let Some(m) = modifier {
                return bad_modifier(m);
            }
            let mut out = Vec::new();
            for v in values {
                let mut parts = v.splitn(3, '|');
                let num = parse_num_cmp(parts.next().unwrap_or(""))?;
                let system = parts.next().filter(|s| !s.is_empty()).map(str::to_string);
                let code = parts.next().filter(|s| !s.is_empty()).map(str::to_string);
                out.push(QuantityCmp { num, system, code });
            }
            Ok(Filter::Quantity { key, values: out })
        }
    }
}

fn parse_token(v: &str) -> TokenValue {
    match v.split_once('|') {
        None => TokenValue { system: None, code: Some(v.to_string()) },
        Some(("", code)) => TokenValue { system: Some(None), code: Some(code.to_string()) },
        Some((system, "")) => TokenValue { system: Some(Some(system.to_string())), code: None },
        Some((system, code)) => TokenValue { system: Some(Some(system.to_string())), code: Some(code.to_string()) },
    }
}

fn parse_ref_value(param: &SearchParam, type_modifier: Option<&str>, v: &str, base: Option<&str>) -> Result<RefValue, QueryError> {
    let only_target = param.targets.filter(|t| t.len() == 1).map(|t| t[0]);
    if is_valid_id(v) && !v.contains('/') {
        let resource_type = type_modifier.or(only_target).map(str::to_string);
        return Ok(RefValue::Local { resource_type, id: v.to_string() });
    }
    let parsed = parse_reference(v, base);
    if let Some(url) = parsed.url {
        return Ok(RefValue::Url(url));
    }
    match parsed.local() {
        Some((t, id)) => {
            if let Some(targets) = param.targets
                && !targets.contains(&t)
            {
                return err(format!("parameter '{}' cannot refer to {t}", param.name));
            }
            Ok(RefValue::Local { resource_type: Some(t.to_string()), id: id.to_string() })
        }
        None => err(format!("'{v}' is not a valid reference for parameter '{}'", param.name)),
    }
}

fn split_prefix(v: &str) -> (Prefix, &str) {
    let p = match v.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("gt") => Prefix::Gt,
        Some("lt") => Prefix::Lt,
        Some("ge") => Prefix::Ge,
        Some("le") => Prefix::Le,
        Some("sa") => Prefix::Sa,
        Some("eb") => Prefix::Eb,
        Some("ap") => Prefix::Ap,
        _ => return (Prefix::Eq, v),
    };
    (p, &v[2..])
}

/// Reads a date parameter's value with its prefix (`ge2020-01`), relative to `now_ms` for partial dates.
pub fn parse_date_cmp(v: &str, now_ms: i64) -> Result<DateCmp, QueryError> {
    let (prefix, rest) = split_prefix(v);
    let Some(range) = parse_date_range(rest) else {
        return err(format!("'{v}' is not a valid date search value (expected e.g. 2020, 2020-01-31, ge2020-01-31T10:00:00Z)"));
    };
    let (mut lo, mut hi) = (range.lo, range.hi);
    if prefix == Prefix::Ap {
        // "approximately": widen by 10% of the distance to now, at least a day.
        let gap = ((now_ms - lo).abs() / 10).max(86_400_000);
        lo = lo.saturating_sub(gap).max(MIN_MS);
        hi = hi.saturating_add(gap).min(MAX_MS);
    }
    Ok(DateCmp { prefix, lo, hi })
}

/// Reads a number parameter's value with its prefix.
pub fn parse_num_cmp(v: &str) -> Result<NumCmp, QueryError> {
    let (prefix, rest) = split_prefix(v);
    let value: f64 = rest.parse().ok().filter(|f: &f64| f.is_finite()).ok_or_else(|| QueryError(format!("'{v}' is not a valid number search value")))?;
    let decimals = if rest.contains(['e', 'E']) { 0 } else { rest.split_once('.').map_or(0, |(_, d)| d.len()) };
    let half = 0.5 * 10f64.powi(-(decimals as i32));
    let (lo, hi) = if prefix == Prefix::Ap { (value - value.abs() * 0.1, value + value.abs() * 0.1) } else { (value - half, value + half) };
    Ok(NumCmp { prefix, value, lo, hi })
}

/// Splits on commas not escaped with a backslash, and unescapes `\,`, `\|`, `\$`, `\\`.
fn split_or(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n @ (',' | '$' | '\\')) => cur.push(n),
                Some('|') => cur.push_str("\\|"),
                Some(n) => {
                    cur.push('\\');
                    cur.push(n);
                }
                None => cur.push('\\'),
            },
            ',' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn opts() -> ParseOptions<'static> {
        ParseOptions { lenient: false, base: Some("http://h.test/fhir"), now_ms: 1_700_000_000_000 }
    }

    #[test]
    fn vital_signs_query() {
        let q = parse("Observation", &pairs(&[("patient", "123"), ("category", "vital-signs"), ("_sort", "-date,_id"), ("_count", "50")]), opts()).unwrap();
        assert_eq!(q.count, 50);
        assert_eq!(q.filters.len(), 2);
        assert_eq!(
            q.filters[0],
            Filter::Reference { key: "Observation.subject", values: vec![RefValue::Local { resource_type: Some("Patient".into()), id: "123".into() }] }
        );
        assert_eq!(q.sort.len(), 2);
        assert!(q.sort[0].descending);
    }

    #[test]
    fn tokens() {
        assert_eq!(parse_token("http://loinc.org|8867-4"), TokenValue { system: Some(Some("http://loinc.org".into())), code: Some("8867-4".into()) });
        assert_eq!(parse_token("|x"), TokenValue { system: Some(None), code: Some("x".into()) });
        assert_eq!(parse_token("http://s|"), TokenValue { system: Some(Some("http://s".into())), code: None });
        assert_eq!(parse_token("x"), TokenValue { system: None, code: Some("x".into()) });
    }

    #[test]
    fn or_and_escapes() {
        assert_eq!(split_or("a,b\\,c"), vec!["a", "b,c"]);
        let q = parse("Patient", &pairs(&[("gender", "male,female"), ("name", "Smi")]), opts()).unwrap();
        assert_eq!(q.filters.len(), 2);
    }

    #[test]
    fn errors_and_lenience() {
        assert!(parse("Patient", &pairs(&[("foo", "1")]), opts()).is_err());
        assert!(parse("Patient", &pairs(&[("birthdate", "yesterday")]), opts()).is_err());
        assert!(parse("Patient", &pairs(&[("_count", "-1")]), opts()).is_err());
        assert!(parse("Patient", &pairs(&[("name:fuzzy", "x")]), opts()).is_err());
        assert!(parse("Observation", &pairs(&[("patient", "Observation/1")]), opts()).is_err());
        let lenient = ParseOptions { lenient: true, ..opts() };
        let q = parse("Patient", &pairs(&[("foo", "1"), ("gender", "male")]), lenient).unwrap();
        assert_eq!(q.ignored.len(), 1);
        assert_eq!(q.filters.len(), 1);
    }

    #[test]
    fn numbers_have_implicit_precision() {
        let n = parse_num_cmp("100").unwrap();
        assert_eq!((n.lo, n.hi), (99.5, 100.5));
        let n = parse_num_cmp("gt1.50").unwrap();
        assert_eq!(n.prefix, Prefix::Gt);
        assert!((n.hi - 1.505).abs() < 1e-9);
    }

    #[test]
    fn absolute_reference_to_this_server_is_local() {
        let q = parse("Observation", &pairs(&[("subject", "http://h.test/fhir/Patient/7")]), opts()).unwrap();
        assert_eq!(
            q.filters[0],
            Filter::Reference { key: "Observation.subject", values: vec![RefValue::Local { resource_type: Some("Patient".into()), id: "7".into() }] }
        );
    }

    #[test]
    fn includes() {
        let q = parse("MedicationRequest", &pairs(&[("_include", "MedicationRequest:medication"), ("_include:iterate", "Medication:ingredient-code")]), opts());
        assert!(q.is_err(), "ingredient-code is not a reference");
        let q = parse("Observation", &pairs(&[("_revinclude", "Provenance:target"), ("_include", "Observation:patient")]), opts()).unwrap();
        assert_eq!(q.include.len(), 1);
        assert_eq!(q.revinclude.len(), 1);
    }
}
