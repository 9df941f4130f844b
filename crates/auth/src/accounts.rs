//! User accounts, as `kindling users` and the EHR's Users page (for administrators) manage them. A
//! clinician is linked to a Practitioner and a patient to a Patient of the record (both must exist),
//! passwords are stored as argon2 hashes, a disabled account can neither sign in nor keep using the tokens
//! it was given, rights bound what the user may let any app do, and administrators manage apps and users.
//! Every change is audited.

use crate::model::{User, UserRole};
use crate::{Shared, registry};
use store::StoreError;

/// The shortest password an account may have.
pub const MIN_PASSWORD: usize = 10;

/// Why an account change was not made.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The request itself is wrong; the text says why, for the person who made it.
    #[error("{0}")]
    Refused(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T> = std::result::Result<T, AccountError>;

fn refuse<T>(why: impl Into<String>) -> Result<T> {
    Err(AccountError::Refused(why.into()))
}

fn check_username(username: &str) -> Result<()> {
    let ok = !username.is_empty()
        && username.len() <= 64
        && username.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
        && username.bytes().any(|b| b.is_ascii_alphanumeric());
    if !ok {
        return refuse("a user name is 1 to 64 letters, digits, '.', '_', '-' or '@', with at least one letter or digit");
    }
    Ok(())
}

fn check_password(password: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD {
        return refuse(format!("the password must have at least {MIN_PASSWORD} characters"));
    }
    Ok(())
}

/// The role's name in forms and on the command line.
pub fn role_name(role: UserRole) -> &'static str {
    match role {
        UserRole::Clinician => "clinician",
        UserRole::Patient => "patient",
    }
}

/// Adds an account. `role` is `clinician` (linked to `Practitioner/…`) or `patient` (`Patient/…`); the
/// linked record must exist. An existing user name is refused. `by` is who made the change (audit).
pub async fn add(s: &Shared, by: Option<&str>, username: &str, name: &str, role: &str, fhir_user: &str, password: &str) -> Result<User> {
    check_username(username)?;
    if name.trim().is_empty() {
        return refuse("give the name the EHR shows for this person");
    }
    check_password(password)?;
    let (role, ty) = match role {
        "clinician" => (UserRole::Clinician, "Practitioner"),
        "patient" => (UserRole::Patient, "Patient"),
        other => return refuse(format!("the role is clinician or patient, not '{other}'")),
    };
    let Some(id) = fhir_user.strip_prefix(&format!("{ty}/")).filter(|id| fhir::types::is_valid_id(id)) else {
        return refuse(format!("a {} is linked to a {ty}: {ty}/ID", role_name(role)));
    };
    if s.store.read(ty, id).await?.is_none_or(|r| r.deleted) {
        return refuse(format!("there is no {ty}/{id} in the record: create or import it first"));
    }
    // Inserted only when the name is free: of two administrators adding one name at once, one succeeds.
    let user = User {
        username: username.to_string(),
        display_name: name.trim().to_string(),
        role,
        password_hash: crate::crypto::hash_password(password),
        fhir_user: fhir_user.to_string(),
        disabled: false,
        rights: None,
        admin: false,
    };
    if !registry::insert_new_user(s.store.as_ref(), &user).await? {
        return refuse(format!("the user '{username}' exists already"));
    }
    s.audit("user-added").user(username).record(format!("{} linked to {fhir_user}{}", role_name(role), by_whom(by)));
    Ok(user)
}

fn by_whom(by: Option<&str>) -> String {
    by.map(|b| format!(" (by {b})")).unwrap_or_default()
}

/// Every account, sorted by user name.
pub async fn list(s: &Shared) -> Result<Vec<User>> {
    Ok(registry::list_users(s.store.as_ref()).await?)
}

/// Changes an account with `change` (which may refuse), read-change-write with compare-and-swap: when
/// someone else changed the account in between (another administrator, another node), it is read again
/// and `change` runs on what they wrote, so no change is lost.
async fn update<T>(s: &Shared, username: &str, mut change: impl FnMut(&mut User) -> Result<T>) -> Result<T> {
    for _ in 0..32 {
        let Some((stored, mut user)) = registry::stored_user_record(s.store.as_ref(), username).await? else {
            return refuse(format!("there is no user '{username}'"));
        };
        let out = change(&mut user)?;
        if registry::replace_user(s.store.as_ref(), &stored, &user).await? {
            return Ok(out);
        }
    }
    Err(AccountError::Store(StoreError::Backend(format!("the account '{username}' kept changing while it was being updated; try again"))))
}

/// What a sign-in attempt came to.
#[derive(Debug)]
pub enum SignIn {
    /// The enabled account, with the right password.
    Accepted(User),
    /// Wrong user name or password (one answer for both, given in the same time).
    Refused,
    /// Too many failed sign-ins for this account lately: refused without looking at the password, for
    /// this many more seconds.
    Throttled {
        /// Seconds until the account's failures are forgotten.
        retry_after_secs: u64,
    },
    /// Too many sign-ins being checked at once: try again in a moment.
    Busy,
}

/// Failed sign-ins of one account within [`FAILURE_WINDOW_SECS`] after which its sign-ins are refused
/// until the window ends: a password cannot be guessed faster than this, on any number of nodes.
pub const MAX_FAILURES: u32 = 10;
/// How long an account's failed sign-ins are counted from the first of them.
pub const FAILURE_WINDOW_SECS: i64 = 15 * 60;
const FAILURES: &str = "signin-failures";

/// Password checks running at once: argon2 takes 19 MiB and tens of milliseconds each, so a flood of
/// attempts queues here instead of exhausting memory or stalling the runtime's threads.
static CHECKING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
/// How long an attempt waits for its turn before it is answered "busy".
const CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A hash no password is checked against for real: unknown and disabled accounts are checked against it, so
/// that the time an answer takes tells nothing of which accounts exist.
fn stand_in_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| crate::crypto::hash_password(&crate::crypto::random_token()))
}

/// Counts one more failed attempt of `username` before its password is checked (taken back when it was
/// right), so that attempts made at once are each counted; returns the failures counted before it.
async fn count_attempt(s: &Shared, username: &str) -> std::result::Result<u32, StoreError> {
    for _ in 0..32 {
        let now = s.now_ms();
        let counted = match s.store.auth_get(FAILURES, username).await? {
            None => s.store.auth_insert_new(FAILURES, username, "1", Some(now + FAILURE_WINDOW_SECS * 1000)).await?.then_some(0),
            Some(r) => {
                let failed = r.value.parse::<u32>().unwrap_or(MAX_FAILURES);
                if failed >= MAX_FAILURES {
                    return Ok(failed);
                }
                s.store.auth_replace(FAILURES, username, &r.value, &(failed + 1).to_string(), r.expires).await?.then_some(failed)
            }
        };
        if let Some(failed) = counted {
            return Ok(failed);
        }
    }
    // Changed by others all along: a flood of attempts on this account.
    Ok(MAX_FAILURES)
}

/// Checks a sign-in (the EHR's, the portal's, the authorisation server's, the launch API's): the same work
/// whatever the account, the argon2 check off the runtime's threads (two at a time), and at most
/// [`MAX_FAILURES`] failures per account within [`FAILURE_WINDOW_SECS`], attempts made at once included.
pub async fn sign_in(s: &Shared, username: &str, password: &str) -> std::result::Result<SignIn, StoreError> {
    // No account has such a name; such attempts are checked (for the time they take) but not counted.
    let counted = check_username(username).is_ok();
    if counted {
        let failed = count_attempt(s, username).await?;
        if failed >= MAX_FAILURES {
            let until = s.store.auth_get(FAILURES, username).await?.and_then(|r| r.expires).unwrap_or_else(|| s.now_ms());
            return Ok(SignIn::Throttled { retry_after_secs: ((until - s.now_ms()).max(1000) as u64).div_ceil(1000) });
        }
    }
    let user = if counted { registry::get_user(s.store.as_ref(), username).await? } else { None };
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    let password = password.to_string();
    // The turn goes with the check: a request dropped meanwhile (the client went away) does not free it
    // while its argon2 still runs.
    let Ok(Ok(turn)) = tokio::time::timeout(CHECK_WAIT, CHECKING.acquire()).await else { return Ok(SignIn::Busy) };
    let matches = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        // Made on the first attempt of any kind, so that no first attempt is told apart by its time.
        let stand_in = stand_in_hash();
        crate::crypto::verify_password(&password, hash.as_deref().unwrap_or(stand_in))
    })
    .await
    .unwrap_or(false);
    match user {
        Some(user) if matches => {
            // The right password: this attempt, and the failures before it, are forgotten.
            s.store.auth_delete(FAILURES, username).await?;
            Ok(SignIn::Accepted(user))
        }
        _ => Ok(SignIn::Refused),
    }
}

/// What a person reads when sign-ins are too many at once.
pub const BUSY_MESSAGE: &str = "Too many sign-ins are being checked just now. Try again in a moment.";

/// What a person reads when their account's sign-ins are throttled.
pub fn throttled_message(retry_after_secs: u64) -> String {
    let minutes = retry_after_secs.div_ceil(60);
    format!(
        "Too many failed sign-ins for this account. Try again in {minutes} minute{}, or ask an administrator to set a new password.",
        if minutes == 1 { "" } else { "s" }
    )
}

/// Disables an account: no sign-in, and every token it holds stops working now. Returns the grants
/// revoked. An administrator cannot disable their own account (someone must be left to undo it).
pub async fn disable(s: &Shared, by: Option<&str>, username: &str) -> Result<usize> {
    if by == Some(username) {
        return refuse("you cannot disable your own account");
    }
    update(s, username, |u| {
        u.disabled = true;
        Ok(())
    })
    .await?;
    let revoked = crate::grants::revoke_all(s, username).await?;
    let ended = crate::session::end_all_of(s.store.as_ref(), username).await?;
    s.audit("user-disabled").user(username).record(format!("{revoked} grant(s) revoked, {ended} session(s) ended{}", by_whom(by)));
    Ok(revoked)
}

/// Enables a disabled account again.
pub async fn enable(s: &Shared, by: Option<&str>, username: &str) -> Result<()> {
    update(s, username, |u| {
        u.disabled = false;
        Ok(())
    })
    .await?;
    // Attempts made while it was disabled do not lock it now.
    s.store.auth_delete(FAILURES, username).await?;
    s.audit("user-enabled").user(username).record(format!("enabled{}", by_whom(by)));
    Ok(())
}

/// Sets a new password. Whoever knew the old one is signed out: every session of the account ends, and
/// the apps it authorised lose their tokens (they ask for consent again at the next launch).
pub async fn passwd(s: &Shared, by: Option<&str>, username: &str, password: &str) -> Result<()> {
    check_password(password)?;
    let hash = crate::crypto::hash_password(password);
    update(s, username, |u| {
        u.password_hash = hash.clone();
        Ok(())
    })
    .await?;
    let ended = crate::session::end_all_of(s.store.as_ref(), username).await?;
    let revoked = crate::grants::revoke_all(s, username).await?;
    // Its failed sign-ins are forgotten: the new password may be used at once.
    s.store.auth_delete(FAILURES, username).await?;
    s.audit("user-password").user(username).record(format!("password changed; {ended} session(s) ended, {revoked} grant(s) revoked{}", by_whom(by)));
    Ok(())
}

/// Bounds what the user may let any app do (resource scopes, at the user and the patient level alike), or
/// lifts the bound (`None`, or an empty text). Only resource scopes of FHIR R4 types are accepted. An
/// access token already issued keeps its scope until it expires; refreshes and later authorisations are
/// bounded. Returns the rights as stored.
pub async fn set_rights(s: &Shared, by: Option<&str>, username: &str, scope: Option<&str>) -> Result<Option<String>> {
    let rights = match scope.map(str::trim).filter(|t| !t.is_empty()) {
        None => None,
        Some(text) => {
            let set = smart::ScopeSet::parse(text);
            if !set.invalid.is_empty() {
                let why: Vec<String> = set.invalid.iter().map(|e| format!("'{}' ({})", e.scope, e.reason)).collect();
                return refuse(format!("not a SMART scope: {}", why.join(", ")));
            }
            if let Some(other) = set.scopes.iter().find(|s| !matches!(s, smart::Scope::Resource(_))) {
                return refuse(format!("rights are resource scopes (user/Patient.rs ...), not '{other}'"));
            }
            if let Some(t) = set.resource_scopes().filter_map(|r| r.resource_type.as_deref()).find(|t| !fhir::types::is_known_type(t)) {
                return refuse(format!("'{t}' is no FHIR R4 resource type"));
            }
            Some(set.to_string())
        }
    };
    update(s, username, |u| {
        u.rights = rights.clone();
        Ok(())
    })
    .await?;
    let what = match &rights {
        Some(r) => format!("rights bounded to {r}"),
        None => "rights bound lifted".to_string(),
    };
    s.audit("user-rights").user(username).record(format!("{what}{}", by_whom(by)));
    Ok(rights)
}

/// Makes a clinician an administrator, or no longer one. An administrator cannot take their own role
/// (someone must be left to manage the EHR).
pub async fn set_admin(s: &Shared, by: Option<&str>, username: &str, admin: bool) -> Result<()> {
    if !admin && by == Some(username) {
        return refuse("you cannot take your own administrator role");
    }
    update(s, username, |u| {
        if admin && u.role != UserRole::Clinician {
            return refuse("only a clinician's account can be an administrator");
        }
        u.admin = admin;
        Ok(())
    })
    .await?;
    s.audit("user-admin").user(username).record(format!("{}{}", if admin { "made an administrator" } else { "no longer an administrator" }, by_whom(by)));
    Ok(())
}
