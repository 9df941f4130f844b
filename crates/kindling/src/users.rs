//! `kindling users`: the accounts of a real deployment, from the command line (the EHR's Users page does
//! the same for administrators). The rules are `auth::accounts`'; these wrappers say who acted (the
//! operator at the command line) and print what the EHR would show.

use auth::model::User;

pub use auth::accounts::MIN_PASSWORD;

/// Adds an account. `role` is `clinician` (linked to `Practitioner/…`) or `patient` (`Patient/…`); the
/// linked record must exist. An existing user name is refused (use [`passwd`] to change a password).
pub async fn add(auth: &auth::Shared, username: &str, name: &str, role: &str, fhir_user: &str, password: &str) -> anyhow::Result<User> {
    Ok(auth::accounts::add(auth, None, username, name, role, fhir_user, password).await?)
}

/// Every account, one line each: user name, role, linked record, name, rights, administrator, disabled.
pub async fn list(auth: &auth::Shared) -> anyhow::Result<Vec<String>> {
    Ok(auth::accounts::list(auth)
        .await?
        .into_iter()
        .map(|u| {
            let rights = u.rights.as_deref().map_or("all the role allows".to_string(), |r| format!("at most {r}"));
            format!(
                "{}\t{}\t{}\t{}\t{rights}{}{}",
                u.username,
                auth::accounts::role_name(u.role),
                u.fhir_user,
                u.display_name,
                if u.admin { "\tadministrator" } else { "" },
                if u.disabled { "\tdisabled" } else { "" }
            )
        })
        .collect())
}

/// Disables an account: no sign-in, and every token it holds stops working now. Returns the grants revoked.
pub async fn disable(auth: &auth::Shared, username: &str) -> anyhow::Result<usize> {
    Ok(auth::accounts::disable(auth, None, username).await?)
}

/// Enables a disabled account again.
pub async fn enable(auth: &auth::Shared, username: &str) -> anyhow::Result<()> {
    Ok(auth::accounts::enable(auth, None, username).await?)
}

/// Sets a new password.
pub async fn passwd(auth: &auth::Shared, username: &str, password: &str) -> anyhow::Result<()> {
    Ok(auth::accounts::passwd(auth, None, username, password).await?)
}

/// Bounds what the user may let any app do, or lifts the bound (`None`); see [`auth::accounts::set_rights`].
pub async fn set_rights(auth: &auth::Shared, username: &str, scope: Option<&str>) -> anyhow::Result<Option<String>> {
    Ok(auth::accounts::set_rights(auth, None, username, scope).await?)
}

/// Makes a clinician an administrator (apps and accounts in the EHR), or no longer one.
pub async fn set_admin(auth: &auth::Shared, username: &str, admin: bool) -> anyhow::Result<()> {
    Ok(auth::accounts::set_admin(auth, None, username, admin).await?)
}
