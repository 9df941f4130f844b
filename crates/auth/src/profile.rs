//! Vendor profiles as data: the documented behaviours of real EHRs that break apps, each a rule in a TOML
//! file with the public source it comes from (or `unverified`), reproduced so apps can be rehearsed
//! against them before they meet that EHR.
//!
//! The profiles Kindling ships live in `config/profiles/*.toml` and are embedded in the binary; a
//! directory of further files (`--profiles DIR`) adds profiles or replaces one of the same name. A
//! profile only names what differs from SMART App Launch 2.2 (the `strict` profile, which has no rules).

use crate::model::{Faults, Grant};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use smart::{Scope, ScopeSet};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// A vendor profile's name, as stored with apps, launches and grants (`strict`, `epic`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Profile(String);

impl Default for Profile {
    fn default() -> Profile {
        Profile::strict()
    }
}

impl Profile {
    /// SMART App Launch 2.2 to the letter: the profile without rules.
    pub fn strict() -> Profile {
        Profile(STRICT.to_string())
    }

    /// The profile of this name (whether it exists is [`Profiles::get`]'s question).
    pub fn named(name: &str) -> Profile {
        Profile(name.to_string())
    }

    /// The name in configuration, forms and URLs.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the strict profile.
    pub fn is_strict(&self) -> bool {
        self.0 == STRICT
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

const STRICT: &str = "strict";

/// One behaviour and where it is documented: a public source, or the word `unverified`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule<T> {
    /// What the EHR does.
    pub value: T,
    /// The public document it comes from (title and address), or `unverified`.
    pub source: String,
}

/// What a refresh answers under a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefreshHabit {
    /// A new refresh token; the old one is spent (reuse revokes the grant): SMART and the OAuth BCP.
    Rotate,
    /// The same refresh token again, which stays valid.
    Same,
    /// No refresh token in the response; the old one stays valid.
    None,
}

/// The token response.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRules {
    /// Access-token lifetime (seconds) of people's apps.
    pub access_token_secs: Option<Rule<i64>>,
    /// How `token_type` is spelled.
    pub token_type: Option<Rule<String>>,
    /// What a refresh answers.
    pub refresh: Option<Rule<RefreshHabit>>,
    /// `need_patient_banner` as the string `"true"`/`"false"`.
    pub banner_as_string: Option<Rule<bool>>,
    /// The authorisation request's `state` echoed in the code exchange's response.
    pub echo_state: Option<Rule<bool>>,
    /// Refreshes of one grant closer together than this many seconds are throttled (429).
    pub min_refresh_interval_secs: Option<Rule<i64>>,
}

/// How the granted scope is written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeRules {
    /// Wildcard resource scopes (`patient/*.rs`) are dropped, silently, before anything else.
    pub drop_wildcards: Option<Rule<bool>>,
    /// Wildcard resource scopes are granted as these types, one scope each.
    pub expand_wildcards: Option<Rule<Vec<String>>>,
    /// Resource scopes are granted in SMART v1 names (`.read`, `.write`).
    pub v1_names: Option<Rule<bool>>,
    /// The granted scope string ends with a space.
    pub trailing_space: Option<Rule<bool>>,
    /// Each SMART v1 resource scope granted is listed twice: as written, and with its action capitalised
    /// (`user/Specimen.Read user/Specimen.read`).
    pub mixed_case_duplicates: Option<Rule<bool>>,
}

/// The authorisation request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRules {
    /// `aud` is mandatory (its older alias `resource` is not accepted).
    pub aud_required: Option<Rule<bool>>,
    /// A clinician's app (asking `user/` scopes) must come with an EHR launch: no standalone provider launch.
    pub launch_required_for_user_scopes: Option<Rule<bool>>,
    /// `POST` to the authorisation endpoint is accepted for EHR launches only.
    pub post_only_with_launch: Option<Rule<bool>>,
}

/// The FHIR API as the profile's tokens meet it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirRules {
    /// Read and search only: no create, update, delete, vread or history (405).
    pub read_only: Option<Rule<bool>>,
    /// Vendor search parameters accepted as a standard one (`_maxresults` → `_count`).
    pub param_aliases: Option<Rule<BTreeMap<String, String>>>,
    /// At most this many FHIR requests per minute per app (429 with `Retry-After` beyond).
    pub requests_per_minute: Option<Rule<u32>>,
    /// Operations a read-only API still serves by `GET` (`$export`, and with it its status and files).
    pub operations: Option<Rule<Vec<String>>>,
    /// One Bulk Data kick-off per app and export (the same `$export` address) in this many seconds; 429
    /// with `Retry-After` before.
    pub export_interval_secs: Option<Rule<i64>>,
}

/// How clients authenticate.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRules {
    /// `private_key_jwt` clients must publish their keys at a JWK Set URL; keys registered inline are refused.
    pub jwks_url_only: Option<Rule<bool>>,
}

/// How errors are written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRules {
    /// Authorisation errors carry `error_uri` (this prefix, then what went wrong) instead of
    /// `error_description`.
    pub error_uri_prefix: Option<Rule<String>>,
}

/// Where the EHR's own server lives: its FHIR base and its authorisation server's issuer, as addresses of
/// their own below Kindling's public URL, so that an app meets the vendor's URL shapes (a tenant in the
/// FHIR base, an issuer that is not the FHIR base) and its discovery document.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerRules {
    /// The path of the profile's FHIR base (e.g. `/epic/api/FHIR/R4`): launches under the profile send it as
    /// `iss`, apps must ask for it as `aud`, and it serves the same FHIR API and its own discovery.
    pub fhir_path: Option<Rule<String>>,
    /// The path of the authorisation server's issuer when it is not the FHIR base (e.g. `/epic/oauth2`):
    /// the `iss` of id_tokens and authorisation responses, and where its OpenID configuration is served.
    pub issuer_path: Option<Rule<String>>,
    /// Whether discovery lists an introspection endpoint (`false`: none is advertised).
    pub introspection: Option<Rule<bool>>,
    /// The revocation endpoint's path below `/auth/`: `revoke`, or `token/revoke`.
    pub revocation: Option<Rule<String>>,
    /// The tenant whose FHIR base this is (Oracle's): one segment of `fhir_path`, and `tenant` in token
    /// responses unless the launch names another.
    pub tenant: Option<Rule<String>>,
}

/// The first path segments that are Kindling's own (a profile's server cannot live there).
const RESERVED_SEGMENTS: &[&str] = &["fhir", "auth", "ehr", "app", "portal", "demo-app", "healthz", "readyz", "openapi.json", ".well-known"];

/// Checks a profile's server path: `/`, then segments of letters, digits, `-`, `_` and `.`; not Kindling's own.
fn check_server_path(what: &str, path: &str) -> Result<(), String> {
    let segments: Vec<&str> = path.strip_prefix('/').map(|p| p.split('/').collect()).unwrap_or_default();
    let valid = !segments.is_empty()
        && segments.iter().all(|s| !s.is_empty() && *s != "." && *s != ".." && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')));
    if !valid {
        return Err(format!("{what} '{path}' must be a path such as /vendor/fhir/r4 (segments of letters, digits, '-', '_', '.'; no trailing '/')"));
    }
    if RESERVED_SEGMENTS.contains(&segments[0]) {
        return Err(format!("{what} '{path}' is under /{}, which Kindling serves itself", segments[0]));
    }
    Ok(())
}

/// A field the profile adds to token responses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extra {
    /// The field's name.
    pub name: String,
    /// Its value: text in which `{patient}` is the patient in context, `{username}` the signed-in user's
    /// name, `{user_id}` the id of their Practitioner or Patient, and `{launch.KEY}` a value the EHR gave
    /// the launch (`extra`); a field whose placeholders have no value takes `default`, or is left out.
    pub value: String,
    /// The value when the placeholders have none.
    pub default: Option<String>,
    /// Where the field is documented, or `unverified`.
    pub source: String,
}

/// One vendor profile: its name, what people read about it, and its rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileRules {
    /// The name in configuration and URLs.
    pub name: String,
    /// The name people see.
    pub label: String,
    /// One sentence on what the profile reproduces.
    pub about: String,
    /// The token response.
    #[serde(default)]
    pub tokens: TokenRules,
    /// The granted scope.
    #[serde(default)]
    pub scopes: ScopeRules,
    /// The authorisation request.
    #[serde(default)]
    pub authorize: AuthorizeRules,
    /// The FHIR API.
    #[serde(default)]
    pub fhir: FhirRules,
    /// Client authentication.
    #[serde(default)]
    pub clients: ClientRules,
    /// Errors.
    #[serde(default)]
    pub errors: ErrorRules,
    /// The EHR's own server addresses.
    #[serde(default)]
    pub server: ServerRules,
    /// Fields added to token responses.
    #[serde(default)]
    pub extra: Vec<Extra>,
}

fn on(rule: &Option<Rule<bool>>) -> bool {
    rule.as_ref().is_some_and(|r| r.value)
}

impl ProfileRules {
    /// Reads one profile file and checks it: a known name, every rule sourced, values that make sense.
    pub fn parse(text: &str) -> Result<ProfileRules, String> {
        let rules: ProfileRules = toml::from_str(text).map_err(|e| e.to_string())?;
        rules.check()?;
        Ok(rules)
    }

    fn check(&self) -> Result<(), String> {
        if self.name.is_empty() || !self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(format!("the profile name '{}' must be lower-case letters, digits and '-'", self.name));
        }
        for (what, source) in self.sources() {
            if source.trim().is_empty() {
                return Err(format!("{}: the rule {what} has no source (give the public document, or write \"unverified\")", self.name));
            }
        }
        if let Some(r) = &self.tokens.access_token_secs
            && !(1..=86_400).contains(&r.value)
        {
            return Err(format!("{}: access_token_secs must be between 1 and 86400", self.name));
        }
        if let Some(r) = &self.tokens.min_refresh_interval_secs
            && !(1..=86_400).contains(&r.value)
        {
            return Err(format!("{}: min_refresh_interval_secs must be between 1 and 86400", self.name));
        }
        if let Some(r) = &self.fhir.export_interval_secs
            && !(1..=31 * 86_400).contains(&r.value)
        {
            return Err(format!("{}: export_interval_secs must be between 1 and 2678400 (31 days)", self.name));
        }
        if let Some(r) = &self.fhir.operations
            && let Some(o) = r.value.iter().find(|o| !o.starts_with('$') || o.len() < 2 || !o[1..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(format!("{}: '{o}' is not an operation name ($name)", self.name));
        }
        if let Some(r) = &self.fhir.requests_per_minute
            && r.value == 0
        {
            return Err(format!("{}: requests_per_minute must be at least 1", self.name));
        }
        if let Some(r) = &self.scopes.expand_wildcards
            && let Some(t) = r.value.iter().find(|t| !fhir::types::is_known_type(t))
        {
            return Err(format!("{}: expand_wildcards names '{t}', which is no FHIR R4 resource type", self.name));
        }
        if let Some(r) = &self.server.fhir_path {
            check_server_path("fhir_path", &r.value).map_err(|e| format!("{}: {e}", self.name))?;
        }
        if let Some(r) = &self.server.issuer_path {
            check_server_path("issuer_path", &r.value).map_err(|e| format!("{}: {e}", self.name))?;
            if self.server.fhir_path.is_none() {
                return Err(format!("{}: issuer_path needs a fhir_path (the issuer's FHIR base)", self.name));
            }
        }
        if let Some(r) = &self.server.tenant
            && (r.value.is_empty() || !self.fhir_path().is_some_and(|p| p.split('/').any(|seg| seg == r.value)))
        {
            return Err(format!("{}: the tenant '{}' must be a segment of fhir_path (the tenant's FHIR base)", self.name, r.value));
        }
        if let Some(r) = &self.server.revocation
            && !matches!(r.value.as_str(), "revoke" | "token/revoke")
        {
            return Err(format!("{}: revocation must be \"revoke\" or \"token/revoke\" (the paths Kindling serves below /auth/)", self.name));
        }
        for e in &self.extra {
            if crate::launch::is_reserved(&e.name) {
                return Err(format!("{}: the extra field '{}' is a standard token-response field", self.name, e.name));
            }
        }
        Ok(())
    }

    /// Every rule the profile states, as (what, value, source), in the order of the documentation table.
    pub fn described(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        let mut add = |what: &str, value: String, source: &str| out.push((what.to_string(), value, source.to_string()));
        let t = &self.tokens;
        if let Some(r) = &t.access_token_secs {
            add("access token lifetime", format!("{} s", r.value), &r.source);
        }
        if let Some(r) = &t.token_type {
            add("`token_type`", format!("`{}`", r.value), &r.source);
        }
        if let Some(r) = &t.refresh {
            let v = match r.value {
                RefreshHabit::Rotate => "new refresh token (rotation)",
                RefreshHabit::Same => "the same refresh token again",
                RefreshHabit::None => "no new refresh token; the old one stays valid",
            };
            add("refresh", v.into(), &r.source);
        }
        if let Some(r) = t.banner_as_string.as_ref().filter(|r| r.value) {
            add("`need_patient_banner`", "a string (`\"false\"`)".into(), &r.source);
        }
        if let Some(r) = t.echo_state.as_ref().filter(|r| r.value) {
            add("`state` in the code exchange's response", "echoed".into(), &r.source);
        }
        if let Some(r) = &t.min_refresh_interval_secs {
            add("refresh more often than", format!("once per {} s: 429", r.value), &r.source);
        }
        let sc = &self.scopes;
        if let Some(r) = sc.drop_wildcards.as_ref().filter(|r| r.value) {
            add("wildcard scopes", "dropped silently".into(), &r.source);
        }
        if let Some(r) = &sc.expand_wildcards {
            add("wildcard scopes", format!("expanded to {} types", r.value.len()), &r.source);
        }
        if let Some(r) = sc.v1_names.as_ref().filter(|r| r.value) {
            add("granted scope names", "SMART v1 (`.read`)".into(), &r.source);
        }
        if let Some(r) = sc.trailing_space.as_ref().filter(|r| r.value) {
            add("granted scope string", "ends with a space".into(), &r.source);
        }
        if let Some(r) = sc.mixed_case_duplicates.as_ref().filter(|r| r.value) {
            add("granted v1 scopes", "each twice, once with a capitalised action (`.Read`)".into(), &r.source);
        }
        let a = &self.authorize;
        if let Some(r) = a.aud_required.as_ref().filter(|r| r.value) {
            add("`aud`", "required (`resource` not accepted)".into(), &r.source);
        }
        if let Some(r) = a.launch_required_for_user_scopes.as_ref().filter(|r| r.value) {
            add("`user/` scopes without an EHR launch", "refused (`launch:code-required`)".into(), &r.source);
        }
        if let Some(r) = a.post_only_with_launch.as_ref().filter(|r| r.value) {
            add("`POST` authorize", "EHR launch only".into(), &r.source);
        }
        let f = &self.fhir;
        if let Some(r) = f.read_only.as_ref().filter(|r| r.value) {
            add("FHIR interactions", "read and search only (405 otherwise)".into(), &r.source);
        }
        if let Some(r) = &f.param_aliases {
            let v: Vec<String> = r.value.iter().map(|(k, v)| format!("`{k}` as `{v}`")).collect();
            add("vendor search parameters", v.join(", "), &r.source);
        }
        if let Some(r) = &f.requests_per_minute {
            add("FHIR requests", format!("{} per minute per app: 429", r.value), &r.source);
        }
        if let Some(r) = &f.operations {
            let v: Vec<String> = r.value.iter().map(|o| format!("`{o}`")).collect();
            add("operations of a read-only API", v.join(", "), &r.source);
        }
        if let Some(r) = &f.export_interval_secs {
            add("Bulk Data kick-offs", format!("one per app and export in {} s: 429", r.value), &r.source);
        }
        if let Some(r) = self.clients.jwks_url_only.as_ref().filter(|r| r.value) {
            add("`private_key_jwt` keys", "from a JWK Set URL only (inline keys refused)".into(), &r.source);
        }
        if let Some(r) = &self.errors.error_uri_prefix {
            add("authorisation errors", format!("`error_uri` `{}…` instead of `error_description`", r.value), &r.source);
        }
        let sv = &self.server;
        if let Some(r) = &sv.fhir_path {
            add("FHIR base", format!("`{{kindling}}{}`", r.value), &r.source);
        }
        if let Some(r) = &sv.issuer_path {
            add("issuer (id_token `iss`)", format!("`{{kindling}}{}`, not the FHIR base", r.value), &r.source);
        }
        if let Some(r) = sv.introspection.as_ref().filter(|r| !r.value) {
            add("introspection endpoint", "not advertised in discovery".into(), &r.source);
        }
        if let Some(r) = &sv.revocation {
            add("revocation endpoint", format!("`{{kindling}}/auth/{}`", r.value), &r.source);
        }
        if let Some(r) = &sv.tenant {
            add("`tenant` in the token response", format!("`{}` (unless the launch names one)", r.value), &r.source);
        }
        for e in &self.extra {
            let v = match &e.default {
                Some(d) => format!("`{}` (default `{d}`)", e.value),
                None => format!("`{}`", e.value),
            };
            add(&format!("token field `{}`", e.name), v, &e.source);
        }
        out
    }

    fn sources(&self) -> Vec<(String, String)> {
        self.described().into_iter().map(|(what, _, source)| (what, source)).chain(self.off_sources()).collect()
    }

    /// Sources of rules stated as `false` (they are checked too, though the table leaves them out).
    fn off_sources(&self) -> Vec<(String, String)> {
        let all = [
            ("banner_as_string", &self.tokens.banner_as_string),
            ("echo_state", &self.tokens.echo_state),
            ("drop_wildcards", &self.scopes.drop_wildcards),
            ("v1_names", &self.scopes.v1_names),
            ("trailing_space", &self.scopes.trailing_space),
            ("mixed_case_duplicates", &self.scopes.mixed_case_duplicates),
            ("aud_required", &self.authorize.aud_required),
            ("launch_required_for_user_scopes", &self.authorize.launch_required_for_user_scopes),
            ("post_only_with_launch", &self.authorize.post_only_with_launch),
            ("read_only", &self.fhir.read_only),
            ("jwks_url_only", &self.clients.jwks_url_only),
        ];
        let introspection = self.server.introspection.as_ref().filter(|r| r.value).map(|r| ("introspection".to_string(), r.source.clone()));
        all.into_iter().filter_map(|(n, r)| r.as_ref().filter(|r| !r.value).map(|r| (n.to_string(), r.source.clone()))).chain(introspection).collect()
    }

    /// The path of the profile's own FHIR base, when it has one.
    pub fn fhir_path(&self) -> Option<&str> {
        self.server.fhir_path.as_ref().map(|r| r.value.as_str())
    }

    /// The path of the profile's issuer when it is not the FHIR base.
    pub fn issuer_path(&self) -> Option<&str> {
        self.server.issuer_path.as_ref().map(|r| r.value.as_str())
    }

    /// The profile's own FHIR base below `public_url`, when it has one.
    pub fn fhir_base(&self, public_url: &str) -> Option<String> {
        self.server.fhir_path.as_ref().map(|r| format!("{public_url}{}", r.value))
    }

    /// The profile's issuer below `public_url` when it differs from its FHIR base.
    pub fn issuer(&self, public_url: &str) -> Option<String> {
        self.server.issuer_path.as_ref().map(|r| format!("{public_url}{}", r.value))
    }

    /// Whether discovery advertises introspection.
    pub fn advertises_introspection(&self) -> bool {
        self.server.introspection.as_ref().is_none_or(|r| r.value)
    }

    /// The tenant of the profile's FHIR base, when it has one.
    pub fn tenant(&self) -> Option<&str> {
        self.server.tenant.as_ref().map(|r| r.value.as_str())
    }

    /// The revocation endpoint's path below `/auth/`.
    pub fn revocation_path(&self) -> &str {
        self.server.revocation.as_ref().map_or("revoke", |r| r.value.as_str())
    }

    /// Whether `aud` is mandatory.
    pub fn aud_required(&self) -> bool {
        on(&self.authorize.aud_required)
    }

    /// Whether `user/` scopes need an EHR launch.
    pub fn launch_required_for_user_scopes(&self) -> bool {
        on(&self.authorize.launch_required_for_user_scopes)
    }

    /// Whether `POST` authorize is for EHR launches only.
    pub fn post_only_with_launch(&self) -> bool {
        on(&self.authorize.post_only_with_launch)
    }

    /// Whether `private_key_jwt` keys must come from a JWK Set URL.
    pub fn jwks_url_only(&self) -> bool {
        on(&self.clients.jwks_url_only)
    }

    /// What a refresh answers.
    pub fn refresh(&self) -> RefreshHabit {
        self.tokens.refresh.as_ref().map_or(RefreshHabit::Rotate, |r| r.value)
    }

    /// The FHIR API's rules for tokens of this profile, when it has any.
    pub fn fhir_rules(&self) -> Option<api::access::VendorFhir> {
        let read_only = on(&self.fhir.read_only);
        let aliases: Vec<(String, String)> = self.fhir.param_aliases.as_ref().map(|r| r.value.clone().into_iter().collect()).unwrap_or_default();
        let per_minute = self.fhir.requests_per_minute.as_ref().map(|r| r.value);
        let export_interval_secs = self.fhir.export_interval_secs.as_ref().map(|r| r.value);
        (read_only || !aliases.is_empty() || per_minute.is_some() || export_interval_secs.is_some()).then(|| api::access::VendorFhir {
            profile: self.name.clone(),
            read_only,
            operations: self.fhir.operations.as_ref().map(|r| r.value.clone()).unwrap_or_default(),
            param_aliases: aliases,
            requests_per_minute: per_minute,
            budget: None,
            export_interval_secs,
        })
    }

    /// The `error_uri` for a refusal, when the profile writes errors that way.
    pub fn error_uri(&self, what: &str) -> Option<String> {
        self.errors.error_uri_prefix.as_ref().map(|p| format!("{}{what}", p.value))
    }
}

/// The profiles a server knows, in the order the EHR offers them (strict first).
#[derive(Debug, Clone)]
pub struct Profiles {
    all: Vec<Arc<ProfileRules>>,
}

/// The profiles Kindling ships (`config/profiles/`).
const BUILTIN: &[(&str, &str)] = &[
    ("strict.toml", include_str!("../../../config/profiles/strict.toml")),
    ("nextgen.toml", include_str!("../../../config/profiles/nextgen.toml")),
    ("nextgen-office.toml", include_str!("../../../config/profiles/nextgen-office.toml")),
    ("epic.toml", include_str!("../../../config/profiles/epic.toml")),
    ("oracle.toml", include_str!("../../../config/profiles/oracle.toml")),
];

impl Default for Profiles {
    fn default() -> Profiles {
        Profiles::builtin()
    }
}

impl Profiles {
    /// The profiles Kindling ships.
    pub fn builtin() -> Profiles {
        let all = BUILTIN
            .iter()
            .map(|(file, text)| match ProfileRules::parse(text) {
                Ok(r) => Arc::new(r),
                // A unit test (`builtin_profiles_are_valid`) reads every embedded file: this cannot happen
                // in a released binary.
                Err(e) => panic!("the embedded profile {file} is invalid: {e}"),
            })
            .collect();
        Profiles { all }
    }

    /// The shipped profiles plus every `*.toml` file of `dir`: a file adds a profile, or replaces the one
    /// of its name. Any invalid file is an error that names it.
    pub fn with_dir(dir: &Path) -> Result<Profiles, String> {
        let mut profiles = Profiles::builtin();
        let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read the profiles directory {}: {e}", dir.display()))?;
        let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
        files.sort();
        let mut seen = std::collections::HashSet::new();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let rules = ProfileRules::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            if rules.name == STRICT {
                return Err(format!("{}: the strict profile is SMART itself and cannot be replaced", path.display()));
            }
            if !seen.insert(rules.name.clone()) {
                return Err(format!("{}: a second file for the profile '{}'", path.display(), rules.name));
            }
            if profiles.get(&rules.name).is_some() {
                tracing::info!(profile = %rules.name, file = %path.display(), "vendor profile replaced by a file of the profiles directory");
            }
            profiles.add(rules);
        }
        profiles.check_servers()?;
        Ok(profiles)
    }

    /// Every profile's server paths, as (profile, path): no two may be the same or one inside another.
    fn check_servers(&self) -> Result<(), String> {
        let paths: Vec<(&str, &str)> = self
            .all
            .iter()
            .flat_map(|p| [&p.server.fhir_path, &p.server.issuer_path].into_iter().flatten().map(move |r| (p.name.as_str(), r.value.as_str())))
            .collect();
        let inside = |a: &str, b: &str| a == b || a.strip_prefix(b).is_some_and(|rest| rest.starts_with('/'));
        for (i, (pa, a)) in paths.iter().enumerate() {
            for (pb, b) in &paths[i + 1..] {
                if inside(a, b) || inside(b, a) {
                    return Err(format!("the profiles '{pa}' and '{pb}' both claim the server path {a} / {b}: give each its own"));
                }
            }
        }
        Ok(())
    }

    /// Adds a profile, replacing one of the same name.
    pub fn add(&mut self, rules: ProfileRules) {
        match self.all.iter_mut().find(|p| p.name == rules.name) {
            Some(slot) => *slot = Arc::new(rules),
            None => self.all.push(Arc::new(rules)),
        }
    }

    /// The profile of this name.
    pub fn get(&self, name: &str) -> Option<&Arc<ProfileRules>> {
        self.all.iter().find(|p| p.name == name)
    }

    /// The rules a stored profile name stands for: strict when it is no longer known (a profile file
    /// removed since the grant was made).
    pub fn rules(&self, profile: &Profile) -> &ProfileRules {
        match self.get(profile.as_str()).or_else(|| self.get(STRICT)) {
            Some(r) => r,
            None => &STRICT_RULES,
        }
    }

    /// Every profile, strict first.
    pub fn all(&self) -> &[Arc<ProfileRules>] {
        &self.all
    }

    /// The documentation table (`docs/ehr-simulator.md` shows it; a test keeps the two equal).
    pub fn markdown_table(&self) -> String {
        let mut out = String::from("| Profile | Behaviour | Value | Source |\n|---|---|---|---|\n");
        for p in &self.all {
            for (what, value, source) in p.described() {
                out.push_str(&format!("| {} | {what} | {value} | {} |\n", p.name, source.replace('|', "\\|")));
            }
        }
        out
    }
}

static STRICT_RULES: std::sync::LazyLock<ProfileRules> = std::sync::LazyLock::new(|| ProfileRules {
    name: STRICT.into(),
    label: "Strict SMART 2.2".into(),
    about: "SMART App Launch 2.2 to the letter.".into(),
    tokens: TokenRules::default(),
    scopes: ScopeRules::default(),
    authorize: AuthorizeRules::default(),
    fhir: FhirRules::default(),
    clients: ClientRules::default(),
    errors: ErrorRules::default(),
    server: ServerRules::default(),
    extra: Vec::new(),
});

/// The scope actually granted, after the user's (injected) denials and the profile's rewriting.
pub fn shape_granted(rules: &ProfileRules, faults: &Faults, approved: &str) -> String {
    let mut set = ScopeSet::parse(approved);
    // Servers that refuse wildcards drop them before anything else is decided.
    if on(&rules.scopes.drop_wildcards) {
        set.scopes.retain(|sc| !matches!(sc, Scope::Resource(r) if r.resource_type.is_none()));
    }
    if !faults.deny.is_empty() {
        let denied = |text: &str, ty: Option<&str>| faults.deny.iter().any(|d| d == text || Some(d.as_str()) == ty || (d == "*" && ty.is_none()));
        let mut out = Vec::new();
        for sc in set.scopes {
            match sc {
                Scope::Resource(r) if !denied(&Scope::Resource(r.clone()).to_string(), r.resource_type.as_deref()) => {
                    if r.resource_type.is_none() && faults.deny.iter().any(|d| fhir::types::is_known_type(d)) {
                        // Unticking one type of a wildcard grant leaves every other type, named one by one.
                        for ty in fhir::params::types_with_params() {
                            if !faults.deny.iter().any(|d| d == ty) && (r.level != smart::Level::Patient || fhir::params::in_patient_compartment(ty)) {
                                let mut one = r.clone();
                                one.resource_type = Some(ty.to_string());
                                out.push(Scope::Resource(one));
                            }
                        }
                    } else {
                        out.push(Scope::Resource(r));
                    }
                }
                Scope::Resource(_) => {}
                other => out.push(other),
            }
        }
        set.scopes = out;
    }
    let expand = rules.scopes.expand_wildcards.as_ref().map(|r| &r.value);
    let v1 = on(&rules.scopes.v1_names);
    if expand.is_some() || v1 {
        let mut out = Vec::new();
        for sc in set.scopes {
            match sc {
                Scope::Resource(r) if r.constraints.is_empty() => {
                    let types: Vec<Option<String>> = match (&r.resource_type, expand) {
                        (None, Some(types)) => types.iter().map(|t| Some(t.clone())).collect(),
                        (t, _) => vec![t.clone()],
                    };
                    for t in types {
                        let mut one = r.clone();
                        one.resource_type = t;
                        one.v1 |= v1;
                        out.push(Scope::Resource(one));
                    }
                }
                other => out.push(other),
            }
        }
        set.scopes = out;
    }
    set.to_string()
}

/// The granted scope as the token response writes it: what was granted, with the profile's spelling habits.
pub fn scope_text(rules: &ProfileRules, granted: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    for w in granted.split(' ').filter(|w| !w.is_empty()) {
        if on(&rules.scopes.mixed_case_duplicates)
            && let Some((head, action @ ("read" | "write"))) = w.rsplit_once('.')
        {
            let mut cap = action.to_string();
            cap[..1].make_ascii_uppercase();
            words.push(format!("{head}.{cap}"));
        }
        words.push(w.to_string());
    }
    let text = words.join(" ");
    if on(&rules.scopes.trailing_space) { format!("{text} ") } else { text }
}

/// Access-token lifetime under a profile and the launch's faults.
pub fn access_token_secs(rules: &ProfileRules, faults: &Faults, default: i64) -> i64 {
    if let Some(s) = faults.token_secs {
        return s;
    }
    rules.tokens.access_token_secs.as_ref().map_or(default, |r| r.value)
}

/// The profile's changes to a token response.
pub fn shape_response(rules: &ProfileRules, grant: &Grant, body: &mut Value) {
    if let Some(t) = &rules.tokens.token_type {
        body["token_type"] = json!(t.value);
    }
    if on(&rules.tokens.banner_as_string)
        && let Some(b) = body.get("need_patient_banner").and_then(Value::as_bool)
    {
        body["need_patient_banner"] = json!(b.to_string());
    }
    if let Some(s) = body.get("scope").and_then(Value::as_str) {
        body["scope"] = json!(scope_text(rules, s));
    }
    for e in &rules.extra {
        if body.get(&e.name).is_some() {
            continue;
        }
        let value = fill(&e.value, |key| placeholder(grant, key)).or_else(|| e.default.clone());
        if let Some(v) = value {
            body[&e.name] = json!(v);
        }
    }
}

/// A placeholder of an extra field's template, as the grant fills it: `{patient}`, `{username}` (the
/// signed-in user's name), `{user_id}` (the id of their Practitioner or Patient), `{launch.KEY}`.
fn placeholder(grant: &Grant, key: &str) -> Option<String> {
    match key {
        "patient" => grant.patient.clone(),
        "username" => grant.username.clone(),
        "user_id" => grant.fhir_user.as_deref().and_then(|u| u.rsplit_once('/')).map(|(_, id)| id.to_string()),
        _ => match grant.launch.as_ref()?.extra.get(key.strip_prefix("launch.")?)? {
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        },
    }
}

/// `template` with its `{…}` placeholders filled by `value`; `None` when one of them has no value.
fn fill(template: &str, value: impl Fn(&str) -> Option<String>) -> Option<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}')? + start;
        out.push_str(&value(&rest[start + 1..end])?);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_are_valid() {
        for (file, text) in BUILTIN {
            let rules = ProfileRules::parse(text).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(format!("{}.toml", rules.name), *file, "a file is named after its profile");
        }
        let p = Profiles::builtin();
        assert_eq!(p.all()[0].name, "strict");
        assert!(p.get("strict").unwrap().described().is_empty(), "strict has no rules");
        p.check_servers().unwrap();
    }

    #[test]
    fn server_paths_are_checked() {
        let with = |server: &str| ProfileRules::parse(&format!("name = \"x\"\nlabel = \"X\"\nabout = \"x\"\n{server}"));
        assert!(with("[server.fhir_path]\nvalue = \"/x/api/FHIR/R4\"\nsource = \"s\"").is_ok());
        for bad in ["x/fhir", "/x/", "/x//r4", "/fhir/x", "/auth", "/x/../fhir", "/x?y", "/"] {
            let e = with(&format!("[server.fhir_path]\nvalue = \"{bad}\"\nsource = \"s\"")).unwrap_err();
            assert!(e.contains("fhir_path"), "{bad}: {e}");
        }
        let e = with("[server.issuer_path]\nvalue = \"/x/oauth2\"\nsource = \"s\"").unwrap_err();
        assert!(e.contains("needs a fhir_path"), "{e}");
        let e = with("[server.revocation]\nvalue = \"logout\"\nsource = \"s\"").unwrap_err();
        assert!(e.contains("revocation"), "{e}");
        let mut p = Profiles::builtin();
        p.add(with("[server.fhir_path]\nvalue = \"/epic/api/FHIR/R4/x\"\nsource = \"s\"").unwrap());
        assert!(p.check_servers().unwrap_err().contains("both claim"));
    }

    #[test]
    fn a_rule_without_a_source_is_refused() {
        let text = "name = \"x\"\nlabel = \"X\"\nabout = \"x\"\n[tokens.access_token_secs]\nvalue = 60\nsource = \" \"\n";
        assert!(ProfileRules::parse(text).unwrap_err().contains("no source"));
        let off = "name = \"x\"\nlabel = \"X\"\nabout = \"x\"\n[fhir.read_only]\nvalue = false\nsource = \"\"\n";
        assert!(ProfileRules::parse(off).unwrap_err().contains("no source"));
        let ok = "name = \"x\"\nlabel = \"X\"\nabout = \"x\"\n[tokens.access_token_secs]\nvalue = 60\nsource = \"unverified\"\n";
        assert_eq!(ProfileRules::parse(ok).unwrap().tokens.access_token_secs.unwrap().value, 60);
    }

    #[test]
    fn mistakes_in_a_profile_file_are_named() {
        let base = "name = \"x\"\nlabel = \"X\"\nabout = \"x\"\n";
        assert!(ProfileRules::parse(&format!("{base}[tokens.nonsense]\nvalue = 1\nsource = \"s\"\n")).is_err(), "unknown rules are refused");
        assert!(
            ProfileRules::parse(&format!("{base}[scopes.expand_wildcards]\nvalue = [\"Patient\", \"Nope\"]\nsource = \"s\"\n")).unwrap_err().contains("Nope")
        );
        assert!(ProfileRules::parse(&format!("{base}[[extra]]\nname = \"access_token\"\nvalue = \"x\"\nsource = \"s\"\n")).unwrap_err().contains("standard"));
        assert!(ProfileRules::parse("name = \"Bad Name\"\nlabel = \"X\"\nabout = \"x\"\n").unwrap_err().contains("lower-case"));
        assert!(ProfileRules::parse(&format!("{base}[tokens.access_token_secs]\nvalue = 0\nsource = \"s\"\n")).is_err());
        for bad in ["0", "-5", "9223372036854775807"] {
            assert!(ProfileRules::parse(&format!("{base}[tokens.min_refresh_interval_secs]\nvalue = {bad}\nsource = \"s\"\n")).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_fill_from_the_grant_and_the_launch() {
        let mut launch = crate::model::LaunchContext::default();
        launch.extra.insert("practice_id".into(), json!("P-1"));
        let grant = Grant {
            patient: Some("7".into()),
            username: Some("drlee".into()),
            fhir_user: Some("Practitioner/p-9".into()),
            launch: Some(launch),
            ..Grant::default()
        };
        let f = |t: &str| fill(t, |k| placeholder(&grant, k));
        assert_eq!(f("E{patient}").as_deref(), Some("E7"));
        assert_eq!(f("{launch.practice_id}").as_deref(), Some("P-1"));
        assert_eq!(f("{username}/{user_id}").as_deref(), Some("drlee/p-9"));
        assert_eq!(f("{launch.enterprise_id}"), None);
        assert_eq!(f("{unknown}"), None);
        assert_eq!(f("{unclosed"), None);
        assert_eq!(f("plain").as_deref(), Some("plain"));
        let backend = Grant::default();
        assert_eq!(fill("E{patient}", |k| placeholder(&backend, k)), None);
    }

    #[test]
    fn granted_scopes_are_rewritten_by_the_rules() {
        let p = Profiles::builtin();
        let none = Faults::default();
        let epic = shape_granted(p.get("epic").unwrap(), &none, "launch patient/*.rs patient/Condition.rs");
        assert!(epic.contains("patient/Observation.read") && epic.contains("patient/Condition.read") && !epic.contains("patient/*"), "{epic}");
        let oracle = shape_granted(p.get("oracle").unwrap(), &none, "launch patient/*.rs patient/Condition.rs");
        assert_eq!(oracle, "launch patient/Condition.rs");
        assert_eq!(shape_granted(p.get("strict").unwrap(), &none, "launch patient/*.rs"), "launch patient/*.rs");
        assert_eq!(scope_text(p.get("epic").unwrap(), "a b"), "a b ");
        assert_eq!(
            scope_text(p.get("epic").unwrap(), "openid user/Specimen.read patient/Observation.rs"),
            "openid user/Specimen.Read user/Specimen.read patient/Observation.rs "
        );
        assert_eq!(scope_text(p.get("strict").unwrap(), "a b"), "a b");
    }

    #[test]
    fn a_directory_adds_and_replaces_profiles() {
        let dir = std::env::temp_dir().join(format!("kindling-profiles-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("mine.toml"),
            "name = \"mine\"\nlabel = \"Mine\"\nabout = \"x\"\n[tokens.access_token_secs]\nvalue = 120\nsource = \"unverified\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("epic.toml"), "name = \"epic\"\nlabel = \"Epic (ours)\"\nabout = \"x\"\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "not a profile").unwrap();
        let p = Profiles::with_dir(&dir).unwrap();
        assert_eq!(p.get("mine").unwrap().tokens.access_token_secs.as_ref().unwrap().value, 120);
        assert_eq!(p.get("epic").unwrap().label, "Epic (ours)");
        assert_eq!(p.all().len(), Profiles::builtin().all().len() + 1);
        std::fs::write(dir.join("broken.toml"), "name = \"broken\"\n").unwrap();
        assert!(Profiles::with_dir(&dir).unwrap_err().contains("broken.toml"));
        std::fs::remove_file(dir.join("broken.toml")).unwrap();
        std::fs::write(dir.join("mine-again.toml"), "name = \"mine\"\nlabel = \"Mine\"\nabout = \"x\"\n").unwrap();
        assert!(Profiles::with_dir(&dir).unwrap_err().contains("second file"));
        std::fs::remove_file(dir.join("mine-again.toml")).unwrap();
        std::fs::write(dir.join("strict.toml"), "name = \"strict\"\nlabel = \"Mine\"\nabout = \"x\"\n").unwrap();
        assert!(Profiles::with_dir(&dir).unwrap_err().contains("cannot be replaced"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(Profiles::rules(&p, &Profile::named("gone")).name == "strict", "an unknown stored name is strict");
    }

    /// `docs/ehr-simulator.md` shows the shipped profiles' rules as [`Profiles::markdown_table`] writes them.
    #[test]
    fn docs_table_matches_the_profile_files() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/ehr-simulator.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let (start, end) = ("<!-- profiles table: generated from config/profiles -->\n", "<!-- end of profiles table -->");
        let a = doc.find(start).expect("start marker") + start.len();
        let b = doc.find(end).expect("end marker");
        let table = Profiles::builtin().markdown_table();
        if std::env::var("KINDLING_BLESS").is_ok_and(|v| v == "1") {
            std::fs::write(&path, format!("{}{table}{}", &doc[..a], &doc[b..])).unwrap();
            return;
        }
        assert_eq!(&doc[a..b], table, "docs/ehr-simulator.md is out of date: KINDLING_BLESS=1 cargo test -p auth docs_table");
    }
}
