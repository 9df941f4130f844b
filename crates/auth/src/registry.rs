//! Registered apps and users, kept in the auth store.

use crate::crypto::{hash_password, random_token};
use crate::model::{Client, ClientKind, User, UserRole};
use store::{AuthStore, StoreError};

const CLIENT: &str = "client";
const USER: &str = "user";

/// Bumped by every registration change made through this module in this process, so that the clients
/// the token endpoint keeps for a second ([`crate::AuthServer::client`]) are dropped here at once; other
/// processes notice within that second.
pub(crate) static CHANGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// An enabled app (what the flows may use).
pub async fn get_client(store: &dyn AuthStore, client_id: &str) -> Result<Option<Client>, StoreError> {
    Ok(stored_client(store, client_id).await?.filter(|c: &Client| !c.disabled))
}

/// A registered app, enabled or disabled (for the screens and files that manage registrations).
pub async fn stored_client(store: &dyn AuthStore, client_id: &str) -> Result<Option<Client>, StoreError> {
    Ok(store.auth_get(CLIENT, client_id).await?.and_then(|r| serde_json::from_str(&r.value).ok()))
}

/// Every registered app, enabled or not.
pub async fn list_clients(store: &dyn AuthStore) -> Result<Vec<Client>, StoreError> {
    Ok(store.auth_list(CLIENT).await?.into_iter().filter_map(|(_, r)| serde_json::from_str(&r.value).ok()).collect())
}

/// Registers (or replaces) a client. For a symmetric client a new secret is generated, stored hashed and
/// returned: the only time it can be seen.
pub async fn put_client(store: &dyn AuthStore, mut client: Client) -> Result<Option<String>, StoreError> {
    let secret = match client.kind {
        ClientKind::ConfidentialSymmetric => {
            let s = random_token();
            client.secret_hash = Some(crate::crypto::hash_generated_secret(&s));
            Some(s)
        }
        _ => None,
    };
    put_client_as_is(store, &client).await?;
    Ok(secret)
}

/// Stores a client with the secret hash it carries (for registrations whose secret is known elsewhere).
pub async fn put_client_as_is(store: &dyn AuthStore, client: &Client) -> Result<(), StoreError> {
    let value = serde_json::to_string(client).map_err(|e| StoreError::Backend(e.to_string()))?;
    let result = store.auth_put(CLIENT, &client.client_id, &value, None, None).await;
    CHANGES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    result
}

/// Removes a registration.
pub async fn remove_client(store: &dyn AuthStore, client_id: &str) -> Result<(), StoreError> {
    let result = store.auth_delete(CLIENT, client_id).await;
    CHANGES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    result
}

/// An enabled user (who may sign in and act).
pub async fn get_user(store: &dyn AuthStore, username: &str) -> Result<Option<User>, StoreError> {
    Ok(stored_user(store, username).await?.filter(|u| !u.disabled))
}

/// A user account, enabled or disabled (for managing accounts).
pub async fn stored_user(store: &dyn AuthStore, username: &str) -> Result<Option<User>, StoreError> {
    Ok(store.auth_get(USER, username).await?.and_then(|r| serde_json::from_str(&r.value).ok()))
}

/// A user account as stored (the exact text, for [`replace_user`]) and read.
pub async fn stored_user_record(store: &dyn AuthStore, username: &str) -> Result<Option<(String, User)>, StoreError> {
    let Some(record) = store.auth_get(USER, username).await? else { return Ok(None) };
    let user = serde_json::from_str(&record.value).map_err(|e| StoreError::Backend(format!("the account '{username}' cannot be read: {e}")))?;
    Ok(Some((record.value, user)))
}

/// Stores `user` only when the account still is `stored` (compare-and-swap); returns whether it did.
pub async fn replace_user(store: &dyn AuthStore, stored: &str, user: &User) -> Result<bool, StoreError> {
    let value = serde_json::to_string(user).map_err(|e| StoreError::Backend(e.to_string()))?;
    store.auth_replace(USER, &user.username, stored, &value, None).await
}

/// Stores a new account only when its user name is free; returns whether it did.
pub async fn insert_new_user(store: &dyn AuthStore, user: &User) -> Result<bool, StoreError> {
    let value = serde_json::to_string(user).map_err(|e| StoreError::Backend(e.to_string()))?;
    store.auth_insert_new(USER, &user.username, &value, None).await
}

/// Every user account, by user name.
pub async fn list_users(store: &dyn AuthStore) -> Result<Vec<User>, StoreError> {
    let mut users: Vec<User> = store.auth_list(USER).await?.into_iter().filter_map(|(_, r)| serde_json::from_str(&r.value).ok()).collect();
    users.sort_by(|a, b| a.username.cmp(&b.username));
    Ok(users)
}

/// Stores a user account as it is (its password hash included).
pub async fn put_user_as_is(store: &dyn AuthStore, user: &User) -> Result<(), StoreError> {
    let value = serde_json::to_string(user).map_err(|e| StoreError::Backend(e.to_string()))?;
    store.auth_put(USER, &user.username, &value, None, None).await
}

/// Creates or replaces a user with this password (hashed with argon2).
pub async fn put_user(store: &dyn AuthStore, username: &str, display_name: &str, role: UserRole, password: &str, fhir_user: &str) -> Result<User, StoreError> {
    let user = User {
        username: username.to_string(),
        display_name: display_name.to_string(),
        role,
        password_hash: hash_password(password),
        fhir_user: fhir_user.to_string(),
        disabled: false,
        rights: None,
        admin: false,
    };
    let value = serde_json::to_string(&user).map_err(|e| StoreError::Backend(e.to_string()))?;
    store.auth_put(USER, username, &value, None, None).await?;
    Ok(user)
}
