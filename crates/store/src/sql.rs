//! Compiles a [`SearchQuery`] into SQL over the index tables. The SQL is plain enough for SQLite and
//! PostgreSQL alike; only the placeholder style differs ([`Dialect`]).

use fhir::params::ParamKind;
use fhir::query::{DateCmp, Filter, Include, NumCmp, Prefix, RefValue, SearchQuery, SortKey, StringMode, TokenValue};

/// The SQL flavour (only the placeholders differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `?NNN`
    Sqlite,
    /// `$N`
    Postgres,
}

/// A bound value.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// Text.
    Text(String),
    /// An integer.
    Int(i64),
    /// A real number.
    Real(f64),
}

/// Accumulates SQL text and its bound values.
pub struct SqlBuilder {
    /// The SQL text.
    pub sql: String,
    /// The bound values, in placeholder order.
    pub values: Vec<SqlValue>,
    dialect: Dialect,
}

impl SqlBuilder {
    /// An empty statement in `dialect`.
    pub fn new(dialect: Dialect) -> Self {
        SqlBuilder { sql: String::with_capacity(256), values: Vec::new(), dialect }
    }

    /// Appends SQL text (never a value from a request: those are bound).
    pub fn push(&mut self, s: &str) -> &mut Self {
        self.sql.push_str(s);
        self
    }

    /// Appends a placeholder bound to `v`.
    pub fn bind(&mut self, v: SqlValue) -> &mut Self {
        self.values.push(v);
        let n = self.values.len();
        match self.dialect {
            Dialect::Sqlite => self.sql.push_str(&format!("?{n}")),
            Dialect::Postgres => self.sql.push_str(&format!("${n}")),
        }
        self
    }

    /// Binds a text value.
    pub fn text(&mut self, s: &str) -> &mut Self {
        self.bind(SqlValue::Text(s.to_string()))
    }

    /// Binds an integer.
    pub fn int(&mut self, i: i64) -> &mut Self {
        self.bind(SqlValue::Int(i))
    }

    /// Binds a real number.
    pub fn real(&mut self, f: f64) -> &mut Self {
        self.bind(SqlValue::Real(f))
    }

    /// Binds a list of keys as `(…)`.
    pub fn int_list(&mut self, keys: &[i64]) -> &mut Self {
        self.push("(");
        for (i, k) in keys.iter().enumerate() {
            if i > 0 {
                self.push(",");
            }
            self.int(*k);
        }
        self.push(")")
    }
}

fn table_for(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::String => "sp_string",
        ParamKind::Token | ParamKind::Uri => "sp_token",
        ParamKind::Reference => "sp_reference",
        ParamKind::Date => "sp_date",
        ParamKind::Quantity => "sp_quantity",
        ParamKind::Number => "sp_number",
    }
}

/// One `_include` (`reverse` false: the live resources that `keys` point to through `include.key`) or
/// `_revinclude` hop (`reverse` true: the live resources that point to `keys` through it).
pub fn compile_reference_hop(keys: &[i64], include: &Include, reverse: bool, dialect: Dialect) -> SqlBuilder {
    let mut b = SqlBuilder::new(dialect);
    if reverse {
        b.push("SELECT DISTINCT s.rid FROM resources t JOIN sp_reference s ON s.target_type = t.res_type AND s.target_id = t.id JOIN resources src ON src.rid = s.rid WHERE src.deleted = 0 AND s.p = ")
            .text(include.key)
            .push(" AND t.rid IN ");
    } else {
        b.push(
            "SELECT DISTINCT t.rid FROM sp_reference s JOIN resources t ON t.res_type = s.target_type AND t.id = s.target_id WHERE t.deleted = 0 AND s.p = ",
        )
        .text(include.key)
        .push(" AND s.rid IN ");
    }
    b.int_list(keys);
    if let Some(t) = &include.target_type {
        b.push(" AND t.res_type = ").text(t);
    }
    b
}

/// `… SELECT r.rid … ORDER BY …`: the keys of all live matches in order.
///
/// The most selective filter drives the query through its search index; the others are checked per
/// candidate row with correlated EXISTS on the rid-first indexes (building IN-sets for unselective filters
/// such as `category=vital-signs` would cost tens of thousands of rows per query). The driver's rids are
/// a `MATERIALIZED` CTE, so that a cached (generic) PostgreSQL plan cannot pick another driving index.
/// When the driver is a parameter index and nothing needs the resource row (`_id`, `_lastUpdated`), the
/// index rows alone answer: their key names the resource type, and a deleted resource has none.
pub fn compile_search(q: &SearchQuery, dialect: Dialect) -> SqlBuilder {
    compile_search_as(q, dialect, false)
}

/// The search as `… SELECT r.rid, row_number() OVER (ORDER BY …) AS n …` (unordered rows, each with its
/// place in the sort order), to be wrapped in a larger statement.
pub fn compile_search_numbered(q: &SearchQuery, dialect: Dialect) -> SqlBuilder {
    compile_search_as(q, dialect, true)
}

fn compile_search_as(q: &SearchQuery, dialect: Dialect, numbered: bool) -> SqlBuilder {
    let mut b = SqlBuilder::new(dialect);
    let driver = q.filters.iter().enumerate().min_by_key(|(_, f)| selectivity_rank(f)).map(|(i, _)| i).filter(|&i| can_drive(&q.filters[i]));
    // One patient's category: the per-patient token index answers the token filter and the filters
    // that name the same patient.
    let patient_tokens = driver.and_then(|d| patient_token_driver(q, d));
    let index_only = driver.is_some_and(|d| patient_tokens.is_some() || !matches!(q.filters[d], Filter::PatientCompartment(_)))
        && !q.filters.iter().any(|f| matches!(f, Filter::Id(_) | Filter::LastUpdated(_)))
        && !q.sort.iter().any(|s| matches!(s.key, SortKey::Id | SortKey::LastUpdated));
    // The filters the driver answers completely (no per-row check).
    let answered: Vec<usize> = match &patient_tokens {
        Some(pt) => pt.answered.clone(),
        None => driver.into_iter().collect(),
    };
    if let Some(d) = driver {
        b.push("WITH d AS MATERIALIZED (");
        match &patient_tokens {
            Some(pt) => compile_patient_tokens(&mut b, pt, &q.filters[pt.token]),
            None => compile_filter(&mut b, &q.filters[d], Role::Source),
        }
        b.push(") ");
    }
    // Where the per-patient rows carry the sort's date range: the driver's rows (`d`), which are `r` when
    // they answer alone.
    let dates_from = patient_tokens.as_ref().filter(|pt| pt.dated).map(|_| if index_only { "r" } else { "d" });
    b.push("SELECT r.rid");
    if numbered {
        b.push(", row_number() OVER (ORDER BY ");
        compile_sort(&mut b, q, dates_from);
        b.push(") AS n");
    }
    match driver {
        Some(_) if index_only => b.push(" FROM d r WHERE 1 = 1"),
        Some(_) => b.push(" FROM d JOIN resources r ON r.rid = d.rid WHERE r.res_type = ").text(&q.resource_type).push(" AND r.deleted = 0"),
        None => b.push(" FROM resources r WHERE r.res_type = ").text(&q.resource_type).push(" AND r.deleted = 0"),
    };
    for (i, f) in q.filters.iter().enumerate() {
        if answered.contains(&i) {
            continue;
        }
        b.push(" AND ");
        compile_filter(&mut b, f, Role::Check);
    }
    if !numbered {
        b.push(" ORDER BY ");
        compile_sort(&mut b, q, dates_from);
    }
    b
}

/// Whether a sort key is the date range the per-patient token rows carry (`date_lo`, `date_hi`).
fn sorts_by_patient_token_date(q: &SearchQuery, key: &SortKey) -> bool {
    match key {
        SortKey::Param { key, kind: ParamKind::Date } => fhir::params::dated_per_patient(key) && key.split_once('.').is_some_and(|(t, _)| t == q.resource_type),
        _ => false,
    }
}

/// The sort keys, ending with `r.rid` so that the order is total. `dates_from` names the driver rows that
/// carry the per-patient date range, when they do.
fn compile_sort(b: &mut SqlBuilder, q: &SearchQuery, dates_from: Option<&str>) {
    for s in &q.sort {
        let dir = if s.descending { "DESC" } else { "ASC" };
        // From the driver's rows: the same values as the subquery below (the least `lo` ascending, the
        // greatest `hi` descending).
        if let Some(from) = dates_from.filter(|_| sorts_by_patient_token_date(q, &s.key)) {
            let col = if s.descending { "date_hi" } else { "date_lo" };
            b.push(&format!("{from}.{col} {dir} NULLS LAST, "));
            continue;
        }
        match &s.key {
            SortKey::Id => b.push(&format!("r.id {dir}, ")),
            SortKey::LastUpdated => b.push(&format!("r.last_updated {dir}, ")),
            SortKey::Param { key, kind } => {
                let (agg, col) = match (kind, s.descending) {
                    (ParamKind::Date, false) => ("MIN", "lo"),
                    (ParamKind::Date, true) => ("MAX", "hi"),
                    (ParamKind::String, d) => (if d { "MAX" } else { "MIN" }, "norm"),
                    (ParamKind::Token | ParamKind::Uri, d) => (if d { "MAX" } else { "MIN" }, "code"),
                    (_, d) => (if d { "MAX" } else { "MIN" }, "value"),
                };
                b.push(&format!("(SELECT {agg}(s.{col}) FROM {} s WHERE s.rid = r.rid AND s.p = ", table_for(*kind)));
                b.text(key);
                b.push(&format!(") {dir} NULLS LAST, "))
            }
        };
    }
    b.push("r.rid ASC");
}

/// How a search starts from the per-patient token index (`sp_token_patient`).
struct PatientTokens<'q> {
    patient: &'q str,
    /// The token filter (its key is one of [`fhir::params::indexed_per_patient`]).
    token: usize,
    /// Only rows of resources in the patient's compartment.
    compartment: bool,
    /// Only rows whose resource points to `Patient/<patient>` through this reference key.
    via: Option<&'static str>,
    /// The filters the index rows answer: the token, and those naming the same patient.
    answered: Vec<usize>,
    /// The search sorts by the date range the rows carry (see [`sorts_by_patient_token_date`]).
    dated: bool,
}

/// How a filter names one patient.
enum PatientLink {
    /// Their compartment.
    Compartment,
    /// A reference to `Patient/<id>` through this key (every patient a reference row points to has rows
    /// in the per-patient index, see `IndexRows::referenced_patients`).
    Via(&'static str),
}

fn patient_link(f: &Filter) -> Option<(&str, PatientLink)> {
    match f {
        Filter::PatientCompartment(p) => Some((p.as_str(), PatientLink::Compartment)),
        Filter::Reference { key, values } => match values.as_slice() {
            [RefValue::Local { resource_type: Some(t), id }] if t == "Patient" => Some((id.as_str(), PatientLink::Via(key))),
            _ => None,
        },
        _ => None,
    }
}

/// When the driving filter `d` names one patient and another filter is a token of
/// [`fhir::params::indexed_per_patient`] with a code in every value (rows without a code are not in the
/// per-patient index).
fn patient_token_driver(q: &SearchQuery, d: usize) -> Option<PatientTokens<'_>> {
    let (patient, _) = patient_link(&q.filters[d])?;
    let token = q.filters.iter().position(|f| match f {
        Filter::Token { key, values, negate: false } => fhir::params::indexed_per_patient(key) && values.iter().all(|v| v.code.is_some()),
        _ => false,
    })?;
    let dated = q.sort.iter().any(|s| sorts_by_patient_token_date(q, &s.key));
    let mut pt = PatientTokens { patient, token, compartment: false, via: None, answered: vec![token], dated };
    for (i, f) in q.filters.iter().enumerate() {
        match patient_link(f) {
            Some((p, PatientLink::Compartment)) if p == patient => {
                pt.compartment = true;
                pt.answered.push(i);
            }
            // A second reference to the same patient (through another key) is checked per row. Keys
            // are `Type.name` without LIKE's special characters; one with them would be checked per row.
            Some((p, PatientLink::Via(key))) if p == patient && pt.via.is_none() && !key.contains(['%', '_', '\\']) => {
                pt.via = Some(key);
                pt.answered.push(i);
            }
            _ => {}
        }
    }
    Some(pt)
}

/// The rids of one patient's resources with one of the token values (see [`patient_token_driver`]).
fn compile_patient_tokens(b: &mut SqlBuilder, pt: &PatientTokens, token: &Filter) {
    let Filter::Token { key, values, .. } = token else { unreachable!("patient_token_driver picks token filters") };
    // With the date range: aggregated per resource like the sort subquery it replaces (the rows of one
    // resource carry the same range).
    let (select, columns) = if pt.dated { ("rid, MIN(date_lo) AS date_lo, MAX(date_hi) AS date_hi", "rid, date_lo, date_hi") } else { ("DISTINCT rid", "rid") };
    b.push(&format!("SELECT {select} FROM (SELECT {columns} FROM sp_token_patient WHERE patient_id = "))
        .text(pt.patient)
        .push(" AND p = ")
        .text(key)
        .push(" AND (");
    token_values(b, values);
    b.push(")");
    if pt.compartment {
        b.push(" AND in_compartment = 1");
    }
    if let Some(via) = pt.via {
        // No ESCAPE clause: PostgreSQL would apply `like_escape` to the pattern for every row.
        b.push(" AND via LIKE ").text(&format!("%,{via},%"));
    }
    b.push(if pt.dated { ") z GROUP BY rid" } else { ") z" });
}

/// For a `_has` of patients through a reference key with a token filter of
/// [`fhir::params::PATIENTS_BY_CODE`] among its inner filters: that filter's place and values.
fn patients_by_code<'f>(key: &str, target_type: &str, filters: &'f [Filter]) -> Option<(usize, &'f [TokenValue])> {
    if target_type != "Patient" || key.contains(['%', '_', '\\']) {
        return None;
    }
    filters.iter().enumerate().find_map(|(i, f)| match f {
        Filter::Token { key, values, negate: false } if *key == fhir::params::PATIENTS_BY_CODE && values.iter().all(|v| v.code.is_some()) => {
            Some((i, values.as_slice()))
        }
        _ => None,
    })
}

/// Lower is more selective (a heuristic: the planner has no statistics for our parameter values).
fn selectivity_rank(f: &Filter) -> u8 {
    match f {
        Filter::Id(_) => 0,
        Filter::Reference { .. } | Filter::PatientCompartment(_) => 1,
        Filter::Chain { .. } | Filter::Has { .. } => 2,
        Filter::Ids { .. } => 0,
        Filter::Token { key, negate: false, .. } if key.ends_with(".identifier") => 1,
        Filter::String { mode: StringMode::Exact, .. } => 2,
        Filter::String { .. } | Filter::Date { .. } | Filter::Quantity { .. } | Filter::Number { .. } => 3,
        Filter::Token { negate: false, .. } => 4,
        Filter::TokenText { .. } => 5,
        Filter::LastUpdated(_) | Filter::Missing { .. } => 6,
        Filter::Token { negate: true, .. } => 7,
    }
}

/// How a filter appears in a search.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The distinct rids of the matching resources (the driver, in the CTE).
    Source,
    /// A test of the candidate row `r`.
    Check,
    /// The matching rids, repeats allowed, inside an `IN (…)` (which makes its own set: a `DISTINCT`
    /// there cost 3 of 8 ms for 1,768 observations).
    Member,
}

/// Filters that can drive a search from their index alone.
fn can_drive(f: &Filter) -> bool {
    f.can_select()
}

/// Opens the subquery of an index filter: the source form selects the distinct matching rids, the
/// others test the candidate row. Close it with `"))"`.
fn sub_in(b: &mut SqlBuilder, table: &str, key: &str, negate: bool, role: Role) {
    let check = check_key(b.dialect);
    match (negate, role) {
        (false, Role::Source) => b.push("SELECT DISTINCT rid FROM (SELECT rid FROM ").push(table).push(" WHERE p = "),
        (false, Role::Member) => b.push("SELECT rid FROM ").push(table).push(" WHERE p = "),
        (false, Role::Check) => b.push("EXISTS (SELECT 1 FROM ").push(table).push(" x WHERE x.rid = r.rid AND ").push(check),
        (true, _) => b.push("NOT EXISTS (SELECT 1 FROM ").push(table).push(" x WHERE x.rid = r.rid AND ").push(check),
    };
    b.text(key).push(" AND (");
}

/// The key test of a per-row check. On PostgreSQL it is kept out of index conditions (`x.p || ''`), so
/// that the only usable index is the rid-first one: a cached generic plan, not knowing the values,
/// would otherwise rate `p = $1 AND code = $2` on the search index as one row and scan every vital sign
/// for each candidate (measured: 128 ms instead of 0.4 ms).
fn check_key(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => "x.p = ",
        Dialect::Postgres => "(x.p || '') = ",
    }
}

/// Closes what [`sub_in`] opened.
fn sub_close(b: &mut SqlBuilder, role: Role) {
    b.push(match role {
        Role::Source => ")) z",
        Role::Check => "))",
        Role::Member => ")",
    });
}

fn or_sep(b: &mut SqlBuilder, i: usize) {
    if i > 0 {
        b.push(" OR ");
    }
}

fn compile_filter(b: &mut SqlBuilder, f: &Filter, role: Role) {
    match f {
        Filter::Id(ids) => {
            b.push("r.id IN (");
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    b.push(",");
                }
                b.text(id);
            }
            b.push(")");
        }
        Filter::LastUpdated(cmps) => {
            b.push("(");
            for (i, c) in cmps.iter().enumerate() {
                or_sep(b, i);
                date_cond(b, c, "r.last_updated", "r.last_updated");
            }
            b.push(")");
        }
        Filter::String { key, mode, values } => {
            sub_in(b, "sp_string", key, false, role);
            for (i, v) in values.iter().enumerate() {
                or_sep(b, i);
                match mode {
                    StringMode::Exact => {
                        b.push("exact = ").text(v);
                    }
                    StringMode::StartsWith => {
                        b.push("(norm >= ").text(v).push(" AND norm < ").text(&prefix_upper_bound(v)).push(")");
                    }
                    StringMode::Contains => {
                        b.push("norm LIKE ").text(&format!("%{}%", escape_like(v))).push(" ESCAPE '\\'");
                    }
                }
            }
            sub_close(b, role);
        }
        Filter::Token { key, values, negate } => {
            sub_in(b, "sp_token", key, *negate, role);
            token_values(b, values);
            sub_close(b, role);
        }
        Filter::TokenText { key, values } => {
            sub_in(b, "sp_token", key, false, role);
            for (i, v) in values.iter().enumerate() {
                or_sep(b, i);
                b.push("text LIKE ").text(&format!("%{}%", escape_like(v))).push(" ESCAPE '\\'");
            }
            sub_close(b, role);
        }
        Filter::Reference { key, values } => {
            sub_in(b, "sp_reference", key, false, role);
            for (i, v) in values.iter().enumerate() {
                or_sep(b, i);
                match v {
                    RefValue::Local { resource_type: Some(t), id } => {
                        b.push("(target_id = ").text(id).push(" AND target_type = ").text(t).push(")");
                    }
                    RefValue::Local { resource_type: None, id } => {
                        b.push("target_id = ").text(id);
                    }
                    RefValue::Url(u) => {
                        b.push("url = ").text(u);
                    }
                }
            }
            sub_close(b, role);
        }
        Filter::Date { key, values } => {
            sub_in(b, "sp_date", key, false, role);
            for (i, c) in values.iter().enumerate() {
                or_sep(b, i);
                date_cond(b, c, "lo", "hi");
            }
            sub_close(b, role);
        }
        Filter::Quantity { key, values } => {
            sub_in(b, "sp_quantity", key, false, role);
            for (i, c) in values.iter().enumerate() {
                or_sep(b, i);
                b.push("(");
                num_cond(b, &c.num);
                if let Some(s) = &c.system {
                    b.push(" AND system = ").text(s);
                }
                if let Some(code) = &c.code {
                    b.push(" AND (code = ").text(code).push(" OR unit = ").text(code).push(")");
                }
                b.push(")");
            }
            sub_close(b, role);
        }
        Filter::Number { key, values } => {
            sub_in(b, "sp_number", key, false, role);
            for (i, c) in values.iter().enumerate() {
                or_sep(b, i);
                num_cond(b, c);
            }
            sub_close(b, role);
        }
        Filter::Missing { key, kind, missing, target_type } => {
            b.push(if *missing { "NOT EXISTS (SELECT 1 FROM " } else { "EXISTS (SELECT 1 FROM " });
            let check = check_key(b.dialect);
            b.push(table_for(*kind)).push(" x WHERE x.rid = r.rid AND ").push(check).text(key);
            if let Some(t) = target_type {
                b.push(" AND x.target_type = ").text(t);
            }
            b.push(")");
        }
        Filter::Ids { resource_type, ids } => {
            match role {
                Role::Source | Role::Member => b.push("SELECT rid FROM resources WHERE res_type = ").text(resource_type).push(" AND deleted = 0 AND id IN ("),
                // By rid: `r` may be the driver's rids alone.
                Role::Check => b.push("r.rid IN (SELECT rid FROM resources WHERE res_type = ").text(resource_type).push(" AND id IN ("),
            };
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    b.push(",");
                }
                b.text(id);
            }
            b.push(if ids.is_empty() { "NULL)" } else { ")" });
            if role == Role::Check {
                b.push(")");
            }
        }
        Filter::Chain { key, target_type, filters } => {
            // The references of the candidate (or, as the source, of any resource) to live targets that
            // every inner filter selects.
            match role {
                Role::Source | Role::Member => {
                    b.push("SELECT DISTINCT x.rid FROM sp_reference x JOIN resources t ON t.res_type = x.target_type AND t.id = x.target_id WHERE x.p = ")
                }
                Role::Check => {
                    let check = check_key(b.dialect);
                    b.push(
                        "EXISTS (SELECT 1 FROM sp_reference x JOIN resources t ON t.res_type = x.target_type AND t.id = x.target_id WHERE x.rid = r.rid AND ",
                    )
                    .push(check)
                }
            };
            b.text(key).push(" AND x.target_type = ").text(target_type).push(" AND t.deleted = 0");
            for f in filters {
                b.push(" AND t.rid IN (");
                compile_filter(b, f, Role::Member);
                b.push(")");
            }
            if role == Role::Check {
                b.push(")");
            }
        }
        Filter::Has { source_type: _, key, target_type, filters } => {
            // The ids the referring resources selected by every inner filter point to, each once, then
            // their live resources (index rows exist only for live resources, so the referring side needs
            // no check of its own).
            match role {
                Role::Source | Role::Member => {
                    b.push("SELECT t.rid FROM resources t WHERE t.res_type = ").text(target_type).push(" AND t.deleted = 0 AND t.id IN (")
                }
                // Through the candidate's own row: `r` may be the driver's rids alone.
                Role::Check => b.push("EXISTS (SELECT 1 FROM resources t WHERE t.rid = r.rid AND t.id IN ("),
            };
            if let Some((code, values)) = patients_by_code(key, target_type, filters) {
                // The patients with rows of the code in the per-patient index (through its partial index
                // by code, which needs `p` as a literal), referred to through `key`; other inner filters
                // (what the token adds) are tests of the rows' resources.
                b.push(&format!("SELECT z.patient_id FROM sp_token_patient z WHERE z.p = '{}' AND (", fhir::params::PATIENTS_BY_CODE));
                token_values(b, values);
                b.push(") AND z.via LIKE ").text(&format!("%,{key},%"));
                for (_, f) in filters.iter().enumerate().filter(|(i, _)| *i != code) {
                    b.push(" AND z.rid IN (");
                    compile_filter(b, f, Role::Member);
                    b.push(")");
                }
            } else {
                b.push("SELECT x.target_id FROM sp_reference x WHERE x.p = ").text(key).push(" AND x.target_type = ").text(target_type);
                for f in filters {
                    b.push(" AND x.rid IN (");
                    compile_filter(b, f, Role::Member);
                    b.push(")");
                }
            }
            b.push(if role == Role::Check { "))" } else { ")" });
        }
        Filter::PatientCompartment(patient_id) => {
            if role != Role::Check {
                b.push("SELECT rid FROM compartment WHERE patient_id = ").text(patient_id);
            } else {
                b.push("EXISTS (SELECT 1 FROM compartment x WHERE x.rid = r.rid AND x.patient_id = ").text(patient_id).push(")");
            }
        }
    }
}

/// The ORed conditions on `code` and `system` of a token filter's values.
fn token_values(b: &mut SqlBuilder, values: &[TokenValue]) {
    for (i, v) in values.iter().enumerate() {
        or_sep(b, i);
        b.push("(");
        let mut first = true;
        if let Some(code) = &v.code {
            b.push("code = ").text(code);
            first = false;
        }
        match &v.system {
            None => {}
            Some(None) => {
                if !first {
                    b.push(" AND ");
                }
                b.push("system IS NULL");
                first = false;
            }
            Some(Some(s)) => {
                if !first {
                    b.push(" AND ");
                }
                b.push("system = ").text(s);
                first = false;
            }
        }
        if first {
            b.push("1 = 1");
        }
        b.push(")");
    }
}

/// FHIR date comparison of a stored range [lo, hi] against the parameter's range.
fn date_cond(b: &mut SqlBuilder, c: &DateCmp, lo: &str, hi: &str) {
    b.push("(");
    match c.prefix {
        Prefix::Eq => b.push(lo).push(" >= ").int(c.lo).push(" AND ").push(hi).push(" <= ").int(c.hi),
        Prefix::Ne => b.push(lo).push(" < ").int(c.lo).push(" OR ").push(hi).push(" > ").int(c.hi),
        Prefix::Gt => b.push(hi).push(" > ").int(c.hi),
        Prefix::Lt => b.push(lo).push(" < ").int(c.lo),
        Prefix::Ge => b.push(hi).push(" >= ").int(c.lo),
        Prefix::Le => b.push(lo).push(" <= ").int(c.hi),
        Prefix::Sa => b.push(lo).push(" > ").int(c.hi),
        Prefix::Eb => b.push(hi).push(" < ").int(c.lo),
        Prefix::Ap => b.push(lo).push(" <= ").int(c.hi).push(" AND ").push(hi).push(" >= ").int(c.lo),
    };
    b.push(")");
}

fn num_cond(b: &mut SqlBuilder, c: &NumCmp) {
    b.push("(");
    match c.prefix {
        Prefix::Eq | Prefix::Ap => b.push("value >= ").real(c.lo).push(" AND value < ").real(c.hi),
        Prefix::Ne => b.push("value < ").real(c.lo).push(" OR value >= ").real(c.hi),
        Prefix::Gt | Prefix::Sa => b.push("value > ").real(c.value),
        Prefix::Lt | Prefix::Eb => b.push("value < ").real(c.value),
        Prefix::Ge => b.push("value >= ").real(c.value),
        Prefix::Le => b.push("value <= ").real(c.value),
    };
    b.push(")");
}

/// Keys for `Patient/$everything` (both backends): the patient, every live resource in their compartment
/// and the resources those reference, optionally only of `types` and updated since `since`.
pub fn compile_everything(patient_id: &str, types: Option<&[String]>, since: Option<i64>, dialect: Dialect) -> SqlBuilder {
    let mut b = SqlBuilder::new(dialect);
    b.push("SELECT r.rid FROM resources r WHERE r.deleted = 0 AND r.rid IN (SELECT rid FROM compartment WHERE patient_id = ")
        .text(patient_id)
        .push(" UNION SELECT t.rid FROM compartment c JOIN sp_reference s ON s.rid = c.rid JOIN resources t ON t.res_type = s.target_type AND t.id = s.target_id WHERE c.patient_id = ")
        .text(patient_id)
        .push(" AND s.target_type <> 'Patient')");
    if let Some(types) = types {
        b.push(" AND r.res_type IN (");
        for (i, t) in types.iter().enumerate() {
            if i > 0 {
                b.push(",");
            }
            b.text(t);
        }
        b.push(")");
    }
    if let Some(since) = since {
        b.push(" AND r.last_updated >= ").int(since);
    }
    b.push(" ORDER BY CASE WHEN r.res_type = 'Patient' THEN 0 ELSE 1 END, r.rid");
    b
}

/// The audit records a filter asks for, newest first (both backends).
pub fn compile_audit_query(f: &crate::audit::AuditFilter, dialect: Dialect) -> SqlBuilder {
    let mut b = SqlBuilder::new(dialect);
    b.push("SELECT id, recorded, category, action, outcome, client_id, username, patient, entity, detail, launch_id FROM audit_events WHERE 1 = 1");
    audit_conditions(&mut b, f);
    if let Some(before) = f.before {
        b.push(" AND id < ").int(before);
    }
    b.push(" ORDER BY id DESC LIMIT ").int(f.limit as i64);
    b
}

/// `SELECT count(*)` of the audit records matching `f` (paging aside).
pub fn compile_audit_count(f: &crate::audit::AuditFilter, dialect: Dialect) -> SqlBuilder {
    let mut b = SqlBuilder::new(dialect);
    b.push("SELECT count(*) FROM audit_events WHERE 1 = 1");
    audit_conditions(&mut b, f);
    b
}

fn audit_conditions(b: &mut SqlBuilder, f: &crate::audit::AuditFilter) {
    if let Some(id) = f.id {
        b.push(" AND id = ").int(id);
    }
    if let Some(s) = f.since {
        b.push(" AND recorded >= ").int(s);
    }
    for (column, value) in [("patient", &f.patient), ("client_id", &f.client_id), ("username", &f.username), ("launch_id", &f.launch)] {
        if let Some(v) = value {
            b.push(" AND ").push(column).push(" = ").text(v);
        }
    }
}

/// The smallest string greater than every string starting with `prefix`.
pub fn prefix_upper_bound(prefix: &str) -> String {
    let mut s = prefix.to_string();
    s.push(char::MAX);
    s
}

fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhir::query::{ParseOptions, parse};

    #[test]
    fn compiles_with_placeholders() {
        let q = query("Observation", &[("patient", "p1"), ("category", "vital-signs"), ("_sort", "-date")]);
        let b = compile_search(&q, Dialect::Postgres);
        assert!(b.sql.contains("$1"));
        assert!(!b.sql.contains("p1"), "values are bound, never inlined");
        assert_eq!(b.values.len(), 4, "patient, category key, code, reference key (the sort key is a column)");
        let b = compile_search(&q, Dialect::Sqlite);
        assert!(b.sql.contains("?3"));
    }

    #[test]
    fn has_of_patients_by_observation_code_reads_the_per_patient_rows_by_code() {
        let sql = search("Patient", &[("_has:Observation:patient:code", "http://loinc.org|4548-4,http://loinc.org|8302-2")]);
        assert!(
            sql.contains(
                "t.id IN (SELECT z.patient_id FROM sp_token_patient z WHERE z.p = 'Observation.code' AND ((code = $2 AND system = $3) OR (code = $4 AND system = $5)) AND z.via LIKE $6)"
            ),
            "{sql}"
        );
        assert!(!sql.contains("sp_reference"), "{sql}");
        // As a test of a candidate, and with what a token adds to the referring side.
        let mut q = query("Patient", &[("_id", "a"), ("_has:Observation:subject:code", "4548-4")]);
        if let Some((_, inner)) = q.filters[1].inner_mut() {
            inner.push(Filter::PatientCompartment("p1".into()));
        }
        let sql = compile_search(&q, Dialect::Postgres).sql;
        assert!(sql.contains("EXISTS (SELECT 1 FROM resources t WHERE t.rid = r.rid AND t.id IN (SELECT z.patient_id FROM sp_token_patient z"), "{sql}");
        assert!(sql.contains("AND z.rid IN (SELECT rid FROM compartment WHERE patient_id = $"), "{sql}");
        // Other codes, other targets, and codes without a value keep the general form.
        for (ty, pairs) in [
            ("Patient", ("_has:Condition:patient:code", "44054006")),
            ("Encounter", ("_has:Observation:encounter:code", "4548-4")),
            ("Patient", ("_has:Observation:patient:code", "http://loinc.org|")),
        ] {
            let sql = search(ty, &[pairs]);
            assert!(sql.contains("SELECT x.target_id FROM sp_reference x") && !sql.contains("sp_token_patient"), "{sql}");
        }
    }

    fn query(resource_type: &str, pairs: &[(&str, &str)]) -> SearchQuery {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse(resource_type, &pairs, ParseOptions { lenient: false, base: None, now_ms: 0 }).unwrap()
    }

    fn search(resource_type: &str, pairs: &[(&str, &str)]) -> String {
        compile_search(&query(resource_type, pairs), Dialect::Postgres).sql
    }

    #[test]
    fn the_most_selective_index_drives_and_the_row_is_read_only_when_needed() {
        let sql = search("Observation", &[("status", "final"), ("patient", "p1")]);
        assert!(sql.starts_with("WITH d AS MATERIALIZED (SELECT DISTINCT rid FROM (SELECT rid FROM sp_reference "), "{sql}");
        assert!(sql.contains("EXISTS (SELECT 1 FROM sp_token x WHERE x.rid = r.rid"), "{sql}");
        assert!(!sql.contains("resources"), "index rows alone answer: {sql}");
        // `_lastUpdated`, `_id` and the type of compartment rows live in the resource row.
        for pairs in [&[("patient", "p1"), ("_sort", "_lastUpdated")][..], &[("patient", "p1"), ("_id", "a,b")][..], &[("_lastUpdated", "gt2020")][..]] {
            let sql = search("Observation", pairs);
            assert!(sql.contains("resources r"), "{sql}");
            assert!(sql.contains("r.res_type = $"), "{sql}");
        }
        // Filters that cannot drive: the resource table does.
        let sql = search("Observation", &[("_id", "a")]);
        assert!(sql.starts_with("SELECT r.rid FROM resources r WHERE r.res_type = $1"), "{sql}");
    }

    #[test]
    fn one_patients_category_is_answered_by_the_per_patient_index() {
        let sql = search("Observation", &[("patient", "p1"), ("category", "vital-signs")]);
        assert!(sql.starts_with("WITH d AS MATERIALIZED (SELECT DISTINCT rid FROM (SELECT rid FROM sp_token_patient WHERE patient_id = $1 AND p = $2 AND ((code = $3)) AND via LIKE $4) z)"), "{sql}");
        assert!(!sql.contains("EXISTS"), "the driver answers both filters: {sql}");
        let sql = search(
            "Observation",
            &[("subject", "Patient/p1"), ("category", "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs,laboratory")],
        );
        assert!(sql.contains("((code = $3 AND system = $4) OR (code = $5))"), "{sql}");
        let sql = search("Condition", &[("patient", "p1"), ("category", "|problem-list-item")]);
        assert!(sql.contains("(code = $3 AND system IS NULL)"), "{sql}");
        // Not for: a system without a code (rows without a code are not in the per-patient index), a
        // subject that may be a Group, other tokens, or negations.
        for (ty, pairs) in [
            ("Observation", &[("patient", "p1"), ("category", "http://terminology.hl7.org/CodeSystem/observation-category|")][..]),
            ("Observation", &[("subject", "p1"), ("category", "vital-signs")][..]),
            ("Observation", &[("encounter", "e1"), ("category", "vital-signs")][..]),
            ("Observation", &[("patient", "p1"), ("status", "final")][..]),
            ("Condition", &[("patient", "p1"), ("code", "44054006")][..]),
            ("Observation", &[("patient", "p1"), ("category:not", "vital-signs")][..]),
        ] {
            let sql = search(ty, pairs);
            assert!(!sql.contains("sp_token_patient"), "{pairs:?}: {sql}");
        }
        // An observation's code is indexed per patient too (`fhir::params::PATIENTS_BY_CODE`).
        let sql = search("Observation", &[("patient", "p1"), ("code", "http://loinc.org|8867-4")]);
        assert!(sql.contains("FROM sp_token_patient WHERE patient_id = $1 AND p = $2 AND ((code = $3 AND system = $4)) AND via LIKE $5"), "{sql}");
        // Patient-level scopes add the compartment: answered by the same rows.
        let mut q = query("Observation", &[("patient", "p1"), ("category", "vital-signs")]);
        q.filters.push(Filter::PatientCompartment("p1".into()));
        let b = compile_search(&q, Dialect::Postgres);
        assert!(b.sql.contains("FROM sp_token_patient WHERE patient_id = $1 AND p = $2 AND ((code = $3)) AND in_compartment = 1 AND via LIKE $4"), "{}", b.sql);
        assert!(!b.sql.contains("EXISTS"), "{}", b.sql);
        assert_eq!(b.values[3], SqlValue::Text("%,Observation.subject,%".into()));
        // Another patient's compartment, or a second reference, is checked per row.
        q.filters.push(Filter::PatientCompartment("p2".into()));
        let sql = compile_search(&q, Dialect::Postgres).sql;
        assert!(sql.contains("EXISTS (SELECT 1 FROM compartment x WHERE x.rid = r.rid AND x.patient_id = "), "{sql}");
        let sql = search("Observation", &[("patient", "p1"), ("performer", "Patient/p1"), ("category", "vital-signs")]);
        assert!(sql.contains("via LIKE $4") && sql.contains("EXISTS (SELECT 1 FROM sp_reference x"), "{sql}");
    }

    #[test]
    fn one_patients_category_by_date_sorts_from_the_per_patient_rows() {
        let sql = search("Observation", &[("patient", "p1"), ("category", "vital-signs"), ("_sort", "-date")]);
        assert!(
            sql.starts_with(
                "WITH d AS MATERIALIZED (SELECT rid, MIN(date_lo) AS date_lo, MAX(date_hi) AS date_hi FROM (SELECT rid, date_lo, date_hi FROM sp_token_patient "
            ),
            "{sql}"
        );
        assert!(sql.contains(") z GROUP BY rid) SELECT r.rid FROM d r WHERE 1 = 1 ORDER BY r.date_hi DESC NULLS LAST, r.rid ASC"), "{sql}");
        assert!(!sql.contains("sp_date"), "{sql}");
        let sql = search("Observation", &[("patient", "p1"), ("category", "vital-signs"), ("_sort", "date,-_lastUpdated")]);
        assert!(sql.ends_with("ORDER BY d.date_lo ASC NULLS LAST, r.last_updated DESC, r.rid ASC"), "the resource row is joined: {sql}");
        // Other sort keys, and searches the per-patient rows do not drive, read the date index.
        let sql = search("Observation", &[("patient", "p1"), ("category", "vital-signs"), ("_sort", "code")]);
        assert!(sql.starts_with("WITH d AS MATERIALIZED (SELECT DISTINCT rid FROM (SELECT rid FROM sp_token_patient "), "{sql}");
        let sql = search("Observation", &[("patient", "p1"), ("status", "final"), ("_sort", "-date")]);
        assert!(sql.contains("(SELECT MAX(s.hi) FROM sp_date s WHERE s.rid = r.rid AND s.p = $"), "{sql}");
        assert!(!sql.contains("date_hi"), "{sql}");
        // Both dialects, and the numbered form a page is cut from.
        let q = query("Observation", &[("patient", "p1"), ("category", "vital-signs"), ("_sort", "-date")]);
        let sql = compile_search(&q, Dialect::Sqlite).sql;
        assert!(
            sql.contains("FROM sp_token_patient WHERE patient_id = ?1 AND p = ?2") && sql.ends_with("ORDER BY r.date_hi DESC NULLS LAST, r.rid ASC"),
            "{sql}"
        );
        let sql = compile_search_numbered(&q, Dialect::Postgres).sql;
        assert!(sql.contains("row_number() OVER (ORDER BY r.date_hi DESC NULLS LAST, r.rid ASC) AS n FROM d r"), "{sql}");
    }
}
