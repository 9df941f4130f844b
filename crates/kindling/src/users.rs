//! `kindling users`: the accounts of a real deployment. A clinician is linked to a Practitioner and a
//! patient to a Patient of the record (both must exist), passwords are stored as argon2 hashes, and a
//! disabled account can neither sign in nor keep using the tokens it was given.

use anyhow::{Context, bail};
use auth::model::{User, UserRole};
use store::Store;

/// The shortest password an account may have.
pub const MIN_PASSWORD: usize = 10;

fn check_username(username: &str) -> anyhow::Result<()> {
    let ok = !username.is_empty() && username.len() <= 64 && username.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
    if !ok {
        bail!("a user name is 1 to 64 letters, digits, '.', '_', '-' or '@'");
    }
    Ok(())
}

fn check_password(password: &str) -> anyhow::Result<()> {
    if password.chars().count() < MIN_PASSWORD {
        bail!("the password must have at least {MIN_PASSWORD} characters");
    }
    Ok(())
}

/// Adds an account. `role` is `clinician` (linked to `Practitioner/…`) or `patient` (`Patient/…`); the
/// linked record must exist. An existing user name is refused (use [`passwd`] to change a password).
pub async fn add(auth: &auth::Shared, fhir: &dyn Store, username: &str, name: &str, role: &str, fhir_user: &str, password: &str) -> anyhow::Result<User> {
    check_username(username)?;
    check_password(password)?;
    let (role, ty) = match role {
        "clinician" => (UserRole::Clinician, "Practitioner"),
        "patient" => (UserRole::Patient, "Patient"),
        other => bail!("the role is clinician or patient, not '{other}'"),
    };
    let Some(id) = fhir_user.strip_prefix(&format!("{ty}/")).filter(|id| !id.is_empty() && !id.contains('/')) else {
        bail!("a {} is linked to a {ty}: --fhir-user {ty}/ID", role_name(role));
    };
    if fhir.read(ty, id).await?.is_none_or(|r| r.deleted) {
        bail!("there is no {ty}/{id} in the record: create or import it first");
    }
    if auth::registry::stored_user(auth.store.as_ref(), username).await?.is_some() {
        bail!("the user '{username}' exists already (kindling users passwd changes a password)");
    }
    let user = auth::registry::put_user(auth.store.as_ref(), username, name, role, password, fhir_user).await?;
    auth.audit("user-added").user(username).record(format!("{} linked to {fhir_user}", role_name(role)));
    Ok(user)
}

fn role_name(role: UserRole) -> &'static str {
    match role {
        UserRole::Clinician => "clinician",
        UserRole::Patient => "patient",
    }
}

/// Every account, one line each: user name, role, linked record, name, rights, and whether it is disabled.
pub async fn list(auth: &auth::Shared) -> anyhow::Result<Vec<String>> {
    Ok(auth::registry::list_users(auth.store.as_ref())
        .await?
        .into_iter()
        .map(|u| {
            let rights = u.rights.as_deref().map_or("all the role allows".to_string(), |r| format!("at most {r}"));
            format!("{}\t{}\t{}\t{}\t{rights}{}", u.username, role_name(u.role), u.fhir_user, u.display_name, if u.disabled { "\tdisabled" } else { "" })
        })
        .collect())
}

async fn existing(auth: &auth::Shared, username: &str) -> anyhow::Result<User> {
    auth::registry::stored_user(auth.store.as_ref(), username).await?.with_context(|| format!("there is no user '{username}'"))
}

/// Disables an account: no sign-in, and every token it holds stops working now. Returns the grants revoked.
pub async fn disable(auth: &auth::Shared, username: &str) -> anyhow::Result<usize> {
    let mut user = existing(auth, username).await?;
    user.disabled = true;
    auth::registry::put_user_as_is(auth.store.as_ref(), &user).await?;
    let revoked = auth::grants::revoke_all(auth.store.as_ref(), username, auth.now_ms()).await?;
    auth.audit("user-disabled").user(username).record(format!("{revoked} grant(s) revoked"));
    Ok(revoked)
}

/// Enables a disabled account again.
pub async fn enable(auth: &auth::Shared, username: &str) -> anyhow::Result<()> {
    let mut user = existing(auth, username).await?;
    user.disabled = false;
    auth::registry::put_user_as_is(auth.store.as_ref(), &user).await?;
    auth.audit("user-enabled").user(username).record("enabled");
    Ok(())
}

/// Sets a new password.
pub async fn passwd(auth: &auth::Shared, username: &str, password: &str) -> anyhow::Result<()> {
    check_password(password)?;
    let mut user = existing(auth, username).await?;
    user.password_hash = auth::crypto::hash_password(password);
    auth::registry::put_user_as_is(auth.store.as_ref(), &user).await?;
    auth.audit("user-password").user(username).record("password changed");
    Ok(())
}

/// Bounds what the user may let any app do (resource scopes, at the user and the patient level alike), or
/// lifts the bound (`None`). Only resource scopes are accepted. An access token already issued keeps its
/// scope until it expires; refreshes and later authorisations are bounded. Returns the rights as stored.
pub async fn set_rights(auth: &auth::Shared, username: &str, scope: Option<&str>) -> anyhow::Result<Option<String>> {
    let mut user = existing(auth, username).await?;
    let rights = match scope {
        None => None,
        Some(text) => {
            let set = smart::ScopeSet::parse(text);
            if !set.invalid.is_empty() {
                let why: Vec<String> = set.invalid.iter().map(|e| format!("'{}' ({})", e.scope, e.reason)).collect();
                bail!("not a SMART scope: {}", why.join(", "));
            }
            if let Some(other) = set.scopes.iter().find(|s| !matches!(s, smart::Scope::Resource(_))) {
                bail!("rights are resource scopes (user/Patient.rs ...), not '{other}'");
            }
            if let Some(t) = set.resource_scopes().filter_map(|r| r.resource_type.as_deref()).find(|t| !fhir::types::is_known_type(t)) {
                bail!("'{t}' is no FHIR R4 resource type");
            }
            if set.scopes.is_empty() {
                bail!("give at least one resource scope (or leave out --scope to lift the bound)");
            }
            Some(set.to_string())
        }
    };
    user.rights = rights.clone();
    auth::registry::put_user_as_is(auth.store.as_ref(), &user).await?;
    auth.audit("user-rights").user(username).record(match &rights {
        Some(r) => format!("rights bounded to {r}"),
        None => "rights bound lifted".to_string(),
    });
    Ok(rights)
}
