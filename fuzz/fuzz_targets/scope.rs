//! SMART scope strings (what `/auth/authorize`, `/auth/token` and client registrations take): parsing never
//! panics, a parsed scope prints as a string that parses back to the same scope, and narrowing a request
//! by an allowance never grants more than the allowance: no interaction on a type it does not allow, no
//! constraint it does not carry (the input is split at the first `;`: allowance, then request).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smart::scope::{Interaction, Level, Scope, ScopeSet};

const INTERACTIONS: &[Interaction] = &[Interaction::Create, Interaction::Read, Interaction::Update, Interaction::Delete, Interaction::Search];

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (allowed, requested) = s.split_once(';').unwrap_or((s, s));
    let allowed = ScopeSet::parse(allowed);
    let requested = ScopeSet::parse(requested);
    for scope in allowed.scopes.iter().chain(&requested.scopes) {
        let printed = scope.to_string();
        assert_eq!(Scope::parse(&printed).as_ref(), Ok(scope), "{printed:?} does not parse back");
    }
    assert_eq!(ScopeSet::parse(&allowed.to_string()).scopes, allowed.scopes);

    let granted = allowed.narrow(&requested);
    let mut types: Vec<&str> = granted.resource_scopes().filter_map(|r| r.resource_type.as_deref()).collect();
    types.push("Observation");
    for level in [Level::Patient, Level::User, Level::System] {
        for ty in &types {
            for &i in INTERACTIONS {
                let Some(g) = granted.access(level, ty, i) else { continue };
                let a = allowed.access(level, ty, i);
                let a = a.unwrap_or_else(|| panic!("{granted} grants {i:?} on {ty} at {level:?}, which {allowed} does not allow"));
                if a.is_empty() {
                    continue; // allowed without constraints
                }
                assert!(!g.is_empty(), "{granted} grants {i:?} on {ty} without the constraints of {allowed}");
                for c in &g {
                    assert!(a.contains(c), "{granted} grants {i:?} on {ty} under {c:?}, which {allowed} does not carry");
                }
            }
        }
    }
    // Non-resource scopes (openid, launch, ...) are granted only when allowed.
    for s in &granted.scopes {
        if !matches!(s, Scope::Resource(_)) {
            assert!(allowed.contains(s), "{granted} grants {s} which {allowed} does not hold");
        }
    }
});
