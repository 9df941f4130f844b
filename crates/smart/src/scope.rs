//! SMART scopes (App Launch 2.2, scopes-and-launch-context).
//!
//! Grammar: `(patient|user|system)/(Type|*).(cruds-subset|read|write|*)[?param=value(&param=value)*]`, context
//! scopes `launch`, `launch/<lowercase type>[?role=URI]`, and `openid fhirUser profile offline_access
//! online_access`. v2 permission letters must appear at most once and in `c r u d s` order; anything else
//! (`.dus`, `.rw`) is refused, never read loosely. A v1 scope keeps its v1 spelling when displayed, so that
//! v1 requests are answered in v1.

use std::fmt;

/// Whose data a resource scope reaches: the patient in context, what the user may see, or every record (backend services).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// `patient/`: the patient in context.
    Patient,
    /// `user/`: what the signed-in user may see.
    User,
    /// `system/`: every record (backend services).
    System,
}

impl Level {
    /// The scope prefix (`patient`, `user`, `system`).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Patient => "patient",
            Level::User => "user",
            Level::System => "system",
        }
    }
}

/// An interaction a permission letter allows (IG: `r` read/vread/instance history; `s` search and type
/// or system history; `c` create; `u` update; `d` delete).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    /// `c`: create.
    Create,
    /// `r`: read, vread, instance history.
    Read,
    /// `u`: update.
    Update,
    /// `d`: delete.
    Delete,
    /// `s`: search, type and system history.
    Search,
}

impl Interaction {
    fn bit(self) -> u8 {
        match self {
            Interaction::Create => 1,
            Interaction::Read => 2,
            Interaction::Update => 4,
            Interaction::Delete => 8,
            Interaction::Search => 16,
        }
    }
}

/// A set of `c r u d s` permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Permissions(u8);

impl Permissions {
    /// `cruds` (and v1 `*`).
    pub const ALL: Permissions = Permissions(31);
    /// v1 `read`: read and search.
    pub const READ_V1: Permissions = Permissions(2 | 16);
    /// v1 `write`: create, update and delete.
    pub const WRITE_V1: Permissions = Permissions(1 | 4 | 8);

    /// Whether the permissions allow `i`.
    pub fn allows(self, i: Interaction) -> bool {
        self.0 & i.bit() != 0
    }
    /// No permission at all.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The permissions both allow.
    pub fn intersect(self, other: Permissions) -> Permissions {
        Permissions(self.0 & other.0)
    }
    /// The permissions either allows.
    pub fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }
    /// Whether every permission of `other` is here.
    pub fn contains(self, other: Permissions) -> bool {
        self.0 & other.0 == other.0
    }

    /// Parses the v2 letters (`rs`, `cruds`, ...): non-empty, each at most once, in order.
    pub fn parse_v2(s: &str) -> Option<Permissions> {
        const ORDER: [(char, u8); 5] = [('c', 1), ('r', 2), ('u', 4), ('d', 8), ('s', 16)];
        if s.is_empty() {
            return None;
        }
        let mut bits = 0u8;
        let mut pos = 0;
        for ch in s.chars() {
            let idx = ORDER[pos..].iter().position(|(c, _)| *c == ch)? + pos;
            bits |= ORDER[idx].1;
            pos = idx + 1;
        }
        Some(Permissions(bits))
    }

    /// The v2 letters, in `cruds` order.
    pub fn v2_letters(self) -> String {
        [('c', 1), ('r', 2), ('u', 4), ('d', 8), ('s', 16)].iter().filter(|(_, b)| self.0 & b != 0).map(|(c, _)| *c).collect()
    }
}

/// `(patient|user|system)/(Type|*).perms[?constraints]`
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceScope {
    /// `patient`, `user` or `system`.
    pub level: Level,
    /// `None` for `*`.
    pub resource_type: Option<String>,
    /// What may be done.
    pub permissions: Permissions,
    /// `?param=value` constraints (v2 only), kept verbatim (SMART sends `|` and `:` unencoded).
    pub constraints: Vec<(String, String)>,
    /// Written in v1 syntax (`.read`, `.write`, `.*`); displayed that way again.
    pub v1: bool,
}

impl ResourceScope {
    /// Whether the scope is for `resource_type` (its own type, or `*`).
    pub fn covers_type(&self, resource_type: &str) -> bool {
        self.resource_type.as_deref().is_none_or(|t| t == resource_type)
    }

    /// The part of `requested` that `self` allows, if any: same level, a type `self` covers, the common
    /// permissions, and the tighter constraints (when both carry different constraints, nothing).
    pub fn narrow(&self, requested: &ResourceScope) -> Option<ResourceScope> {
        if self.level != requested.level {
            return None;
        }
        if let Some(t) = &self.resource_type
            && requested.resource_type.as_deref() != Some(t.as_str())
        {
            return None;
        }
        let permissions = self.permissions.intersect(requested.permissions);
        if permissions.is_empty() {
            return None;
        }
        let constraints = match (self.constraints.is_empty(), requested.constraints.is_empty()) {
            (true, _) => requested.constraints.clone(),
            (false, true) => self.constraints.clone(),
            (false, false) if self.constraints == requested.constraints => requested.constraints.clone(),
            _ => return None,
        };
        // A v1 scope stays v1 only while its permissions still have a v1 spelling.
        let v1 = requested.v1 && constraints.is_empty() && v1_suffix(permissions).is_some();
        Some(ResourceScope { level: requested.level, resource_type: requested.resource_type.clone(), permissions, constraints, v1 })
    }
}

fn v1_suffix(p: Permissions) -> Option<&'static str> {
    match p {
        Permissions::ALL => Some("*"),
        Permissions::READ_V1 => Some("read"),
        Permissions::WRITE_V1 => Some("write"),
        _ => None,
    }
}

impl fmt::Display for ResourceScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}.", self.level.as_str(), self.resource_type.as_deref().unwrap_or("*"))?;
        match (self.v1, v1_suffix(self.permissions)) {
            (true, Some(s)) => f.write_str(s)?,
            _ => f.write_str(&self.permissions.v2_letters())?,
        }
        for (i, (k, v)) in self.constraints.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

/// One scope of a request or grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `openid`.
    OpenId,
    /// `fhirUser`.
    FhirUser,
    /// `profile` (v1's name for the user's identity).
    Profile,
    /// `offline_access`: a refresh token that outlives the sign-in.
    OfflineAccess,
    /// `online_access`: a refresh token while the user is signed in.
    OnlineAccess,
    /// `launch` (EHR launch).
    Launch,
    /// `launch/patient`, `launch/encounter`, `launch/<type>[?role=URI]`.
    LaunchContext {
        /// The context's name (`patient`, `encounter`, or another type in lower case).
        context: String,
        /// `?role=URI`, for a context beyond patient and encounter.
        role: Option<String>,
    },
    /// `(patient|user|system)/Type.perms[?constraints]`.
    Resource(ResourceScope),
}

/// A scope that does not parse, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{scope}' is not a valid SMART scope: {reason}")]
pub struct ScopeError {
    /// The scope as written.
    pub scope: String,
    /// Why it was refused.
    pub reason: &'static str,
}

fn is_resource_type_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase()) && chars.all(|c| c.is_ascii_alphanumeric())
}

impl Scope {
    /// Parses one scope (never loosely: a v2 permission string out of `cruds` order is refused).
    pub fn parse(s: &str) -> Result<Scope, ScopeError> {
        let err = |reason| Err(ScopeError { scope: s.to_string(), reason });
        match s {
            "openid" => return Ok(Scope::OpenId),
            "fhirUser" => return Ok(Scope::FhirUser),
            "profile" => return Ok(Scope::Profile),
            "offline_access" => return Ok(Scope::OfflineAccess),
            "online_access" => return Ok(Scope::OnlineAccess),
            "launch" => return Ok(Scope::Launch),
            _ => {}
        }
        if let Some(rest) = s.strip_prefix("launch/") {
            let (context, role) = match rest.split_once('?') {
                Some((c, q)) => match q.strip_prefix("role=") {
                    Some(r) if !r.is_empty() && !r.contains('&') => (c, Some(r.to_string())),
                    _ => return err("a launch context scope takes only one ?role=URI"),
                },
                None => (rest, None),
            };
            if context.is_empty() || !context.chars().all(|c| c.is_ascii_lowercase()) {
                return err("launch context types are written in lower case, e.g. launch/patient");
            }
            return Ok(Scope::LaunchContext { context: context.to_string(), role });
        }
        let Some((level, rest)) = s.split_once('/') else { return err("unknown scope") };
        let level = match level {
            "patient" => Level::Patient,
            "user" => Level::User,
            "system" => Level::System,
            _ => return err("the level must be patient, user or system"),
        };
        let (body, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let Some((ty, perms)) = body.split_once('.') else { return err("expected Type.permissions") };
        let resource_type = match ty {
            "*" => None,
            t if is_resource_type_name(t) => Some(t.to_string()),
            _ => return err("the resource type must be * or a FHIR type name"),
        };
        let (permissions, v1) = match perms {
            "read" => (Permissions::READ_V1, true),
            "write" => (Permissions::WRITE_V1, true),
            "*" => (Permissions::ALL, true),
            p => match Permissions::parse_v2(p) {
                Some(p) => (p, false),
                None => return err("permissions must be c, r, u, d, s at most once each and in that order, or read, write, *"),
            },
        };
        let mut constraints = Vec::new();
        if let Some(q) = query {
            if v1 {
                return err("v1 scopes take no ?constraints");
            }
            for pair in q.split('&') {
                match pair.split_once('=') {
                    Some((k, v)) if !k.is_empty() && !v.is_empty() => constraints.push((k.to_string(), v.to_string())),
                    _ => return err("constraints are ?param=value pairs joined by &"),
                }
            }
        }
        Ok(Scope::Resource(ResourceScope { level, resource_type, permissions, constraints, v1 }))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::OpenId => f.write_str("openid"),
            Scope::FhirUser => f.write_str("fhirUser"),
            Scope::Profile => f.write_str("profile"),
            Scope::OfflineAccess => f.write_str("offline_access"),
            Scope::OnlineAccess => f.write_str("online_access"),
            Scope::Launch => f.write_str("launch"),
            Scope::LaunchContext { context, role: None } => write!(f, "launch/{context}"),
            Scope::LaunchContext { context, role: Some(r) } => write!(f, "launch/{context}?role={r}"),
            Scope::Resource(r) => r.fmt(f),
        }
    }
}

/// A space-separated scope string, parsed. Unparseable scopes are kept apart (a server drops them from
/// the grant; a client can report them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScopeSet {
    /// The scopes that parsed, each once, in their order.
    pub scopes: Vec<Scope>,
    /// The scopes that did not parse.
    pub invalid: Vec<ScopeError>,
}

impl ScopeSet {
    /// Parses a space-separated scope string; duplicates are kept once.
    pub fn parse(s: &str) -> ScopeSet {
        let mut out = ScopeSet::default();
        for token in s.split([' ', '\t', '\n']).filter(|t| !t.is_empty()) {
            match Scope::parse(token) {
                Ok(sc) => {
                    if !out.scopes.contains(&sc) {
                        out.scopes.push(sc);
                    }
                }
                Err(e) => out.invalid.push(e),
            }
        }
        out
    }

    /// Whether the set holds `s` exactly.
    pub fn contains(&self, s: &Scope) -> bool {
        self.scopes.contains(s)
    }

    /// The resource scopes of the set.
    pub fn resource_scopes(&self) -> impl Iterator<Item = &ResourceScope> {
        self.scopes.iter().filter_map(|s| match s {
            Scope::Resource(r) => Some(r),
            _ => None,
        })
    }

    /// What of `requested` this set (an allowance) permits: non-resource scopes present in both, and every
    /// requested resource scope narrowed by the allowed ones.
    pub fn narrow(&self, requested: &ScopeSet) -> ScopeSet {
        let mut out = ScopeSet::default();
        for s in &requested.scopes {
            match s {
                Scope::Resource(r) => {
                    for allowed in self.resource_scopes() {
                        if let Some(n) = allowed.narrow(r)
                            && !out.scopes.contains(&Scope::Resource(n.clone()))
                        {
                            out.scopes.push(Scope::Resource(n));
                        }
                    }
                }
                other => {
                    if self.contains(other) {
                        out.scopes.push(other.clone());
                    }
                }
            }
        }
        out
    }

    /// Whether `interaction` on `resource_type` is allowed at `level` by some scope, and under which
    /// constraints: `Some(vec![])` means unconstrained; `Some(list)` means allowed only for resources
    /// matching one of the constraint sets in `list`; `None` means not allowed.
    pub fn access(&self, level: Level, resource_type: &str, interaction: Interaction) -> Option<Vec<Vec<(String, String)>>> {
        let mut constrained = Vec::new();
        let mut any = false;
        for r in self.resource_scopes() {
            if r.level == level && r.covers_type(resource_type) && r.permissions.allows(interaction) {
                if r.constraints.is_empty() {
                    return Some(Vec::new());
                }
                any = true;
                constrained.push(r.constraints.clone());
            }
        }
        any.then_some(constrained)
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.scopes.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            s.fmt(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rs(s: &str) -> ResourceScope {
        match Scope::parse(s).unwrap() {
            Scope::Resource(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_the_forms_of_the_ig() {
        let r = rs("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs");
        assert_eq!(r.level, Level::Patient);
        assert_eq!(r.resource_type.as_deref(), Some("Observation"));
        assert!(r.permissions.allows(Interaction::Read) && r.permissions.allows(Interaction::Search));
        assert!(!r.permissions.allows(Interaction::Create));
        assert_eq!(r.constraints, vec![("category".into(), "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs".into())]);
        assert_eq!(rs("user/*.cruds").resource_type, None);
        assert_eq!(rs("patient/Patient.read").permissions, Permissions::READ_V1);
        assert_eq!(rs("patient/*.write").permissions, Permissions::WRITE_V1);
        assert_eq!(rs("system/*.*").permissions, Permissions::ALL);
        assert_eq!(Scope::parse("launch/patient").unwrap(), Scope::LaunchContext { context: "patient".into(), role: None });
        assert_eq!(
            Scope::parse("launch/encounter?role=https://example.org/role").unwrap(),
            Scope::LaunchContext { context: "encounter".into(), role: Some("https://example.org/role".into()) }
        );
        assert_eq!(Scope::parse("fhirUser").unwrap(), Scope::FhirUser);
    }

    #[test]
    fn refuses_loose_forms() {
        for bad in [
            "patient/Observation.dus",
            "patient/Observation.rw",
            "patient/Observation.rr",
            "patient/Observation.",
            "patient/observation.rs",
            "doctor/Observation.rs",
            "patient/Observation.read?category=x",
            "patient/Observation.rs?category",
            "launch/Patient",
            "launch/",
            "openid2",
            "patient/Observation",
            "patient/Observation.rs?a=b&",
            "launch/patient?role=a&b=c",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn v1_requests_are_answered_in_v1() {
        let allowed = ScopeSet::parse("patient/*.cruds launch/patient openid fhirUser offline_access");
        let requested = ScopeSet::parse("patient/Observation.read patient/Patient.* launch/patient openid");
        assert_eq!(allowed.narrow(&requested).to_string(), "patient/Observation.read patient/Patient.* launch/patient openid");
        let read_only = ScopeSet::parse("patient/*.rs");
        assert_eq!(
            read_only.narrow(&ScopeSet::parse("patient/Patient.*")).to_string(),
            "patient/Patient.read",
            "a v1 request narrowed to rs is answered as .read"
        );
    }

    #[test]
    fn narrowing_intersects_types_permissions_and_constraints() {
        let allowed = ScopeSet::parse("patient/Observation.rs patient/Condition.rs?category=problem-list-item user/*.r");
        let requested = ScopeSet::parse(
            "patient/Observation.cruds?category=vital-signs patient/Condition.rs patient/Condition.rs?category=encounter-diagnosis user/Patient.rs system/*.rs offline_access",
        );
        assert_eq!(
            allowed.narrow(&requested).to_string(),
            "patient/Observation.rs?category=vital-signs patient/Condition.rs?category=problem-list-item user/Patient.r"
        );
    }

    #[test]
    fn access_answers_with_constraints() {
        let g = ScopeSet::parse("patient/Observation.rs?category=vital-signs patient/Observation.rs?category=laboratory patient/Patient.r");
        let c = g.access(Level::Patient, "Observation", Interaction::Search).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(g.access(Level::Patient, "Patient", Interaction::Read), Some(vec![]));
        assert_eq!(g.access(Level::Patient, "Patient", Interaction::Search), None);
        assert_eq!(g.access(Level::User, "Patient", Interaction::Read), None);
        assert_eq!(g.access(Level::Patient, "Condition", Interaction::Read), None);
    }

    fn arb_resource_scope() -> impl Strategy<Value = String> {
        let level = prop_oneof![Just("patient"), Just("user"), Just("system")];
        let ty = prop_oneof![Just("*".to_string()), "[A-Z][a-zA-Z]{1,20}"];
        let perms =
            prop_oneof![Just("read".to_string()), Just("write".to_string()), Just("*".to_string()), (1u8..32).prop_map(|b| Permissions(b).v2_letters()),];
        let constraint = proptest::option::of(("[a-z][a-z-]{0,10}", "[A-Za-z0-9:/.|_-]{1,30}"));
        (level, ty, perms, constraint).prop_map(|(l, t, p, c)| match c {
            Some((k, v)) if !matches!(p.as_str(), "read" | "write" | "*") => format!("{l}/{t}.{p}?{k}={v}"),
            _ => format!("{l}/{t}.{p}"),
        })
    }

    proptest! {
        #[test]
        fn valid_scopes_round_trip(s in arb_resource_scope()) {
            let parsed = Scope::parse(&s).unwrap();
            prop_assert_eq!(parsed.to_string(), s);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,60}") {
            let _ = ScopeSet::parse(&s);
        }

        #[test]
        fn narrowing_never_widens(a in arb_resource_scope(), b in arb_resource_scope()) {
            let allowed = ScopeSet::parse(&a);
            let requested = ScopeSet::parse(&b);
            let granted = allowed.narrow(&requested);
            for g in granted.resource_scopes() {
                let req = requested.resource_scopes().next().unwrap();
                let al = allowed.resource_scopes().next().unwrap();
                prop_assert!(req.permissions.contains(g.permissions));
                prop_assert!(al.permissions.contains(g.permissions));
                prop_assert_eq!(g.level, req.level);
                prop_assert_eq!(&g.resource_type, &req.resource_type);
            }
        }

        #[test]
        fn v2_letters_accept_only_ordered_subsets(s in "[cruds]{1,6}") {
            let ok = Permissions::parse_v2(&s).is_some();
            let ordered = s.chars().zip(s.chars().skip(1)).all(|(a, b)| "cruds".find(a) < "cruds".find(b));
            prop_assert_eq!(ok, ordered);
        }
    }
}
