//! A SMART on FHIR client for Rust apps: what an app team embeds to integrate with any SMART EHR.
//!
//! - [`SmartClient`]: discovery (cached per `iss`, tolerant of missing optional fields), EHR launch with an
//!   allow-list of configured EHRs (an unknown `iss` is refused, never followed), standalone launch, PKCE
//!   S256, `state` of 192 random bits, `nonce`, GET or POST authorisation requests, and the callback
//!   (`state`, RFC 9207 `iss`, typed errors, code exchange with public, `client_secret_basic`,
//!   `client_secret_post` or `private_key_jwt` authentication, `id_token` verification).
//! - [`Session`]: the typed [`LaunchContext`] of the token response, granted-scope checks, proactive
//!   refresh, rotation, revocation, and [`Fhir`] access with retries on 429/503 and one renewal on 401.
//! - [`BackendClient`]: backend services (`client_credentials` with `private_key_jwt`), tokens cached.
//! - [`Error`]: every failure typed, with [`Error::user_message`] for clinicians. Tokens never appear in
//!   `Debug`, `Display` or logs ([`Secret`]).
//!
//! Several EHRs and any number of concurrent sessions per process; no global state.
//!
//! ```no_run
//! # async fn example() -> client::Result<()> {
//! use client::{ClientAuth, EhrConfig, MemoryPendingStore, SmartClient};
//! use std::sync::Arc;
//! let smart = SmartClient::new(
//!     vec![EhrConfig {
//!         iss: "http://127.0.0.1:8080/fhir".into(),
//!         client_id: "my-app".into(),
//!         auth: ClientAuth::Public,
//!         redirect_uri: "http://127.0.0.1:3000/callback".into(),
//!         ehr_scope: "launch openid fhirUser offline_access patient/*.rs".into(),
//!         standalone_scope: "launch/patient openid fhirUser offline_access patient/*.rs".into(),
//!     }],
//!     Arc::new(MemoryPendingStore::new()),
//! )?;
//! // GET /launch?iss=...&launch=...  → redirect the browser:
//! let request = smart.ehr_launch("http://127.0.0.1:8080/fhir", "opaque-handle").await?;
//! // GET /callback?code=...&state=...&iss=...  → a session:
//! let params = std::collections::HashMap::new();
//! let session = smart.callback(&params).await?;
//! if session.context().granted.allows_search_with("Observation", "category", "vital-signs") {
//!     let patient = session.context().patient.clone().unwrap_or_default();
//!     let vitals = session.fhir().search("Observation", &[("patient", &patient), ("category", "vital-signs")]).await?;
//! }
//! # let _ = request; Ok(()) }
//! ```

#![warn(missing_docs)]

mod backend;
pub mod cds;
mod clock;
mod context;
mod discovery;
mod error;
mod export;
mod fhir;
pub mod jose;
mod launch;
mod pending;
mod session;
pub mod types;

pub use backend::BackendClient;
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use context::{Granted, LaunchContext, Tokens, relative_reference};
pub use discovery::SmartConfiguration;
pub use error::{Error, Result, Secret};
pub use export::{Export, ExportFile, ExportLevel, ExportRequest, Manifest};
pub use fhir::{Fhir, Pages};
pub use jose::SigningKey;
pub use launch::{AuthorizationRequest, ClientAuth, EhrConfig, SmartClient};
pub use pending::{MemoryPendingStore, PendingAuthorization, PendingStore};
pub use session::{Session, StoredSession, TokenSource};
pub use smart::Interaction;
