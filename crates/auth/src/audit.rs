//! Authorisation decisions in the audit trail, written as one sentence each:
//!
//! ```ignore
//! s.audit("refresh-reuse").grant(&grant).refused().record("a rotated-out refresh token came back");
//! s.audit("user-added").user(username).record("clinician linked to Practitioner/1");
//! ```
//!
//! Never token material: the detail is for a person reading the trail or the EHR's launch inspector.

use crate::AuthServer;
use crate::model::Grant;

/// One entry being written; nothing is recorded until [`Audit::record`].
#[must_use = "an audit entry is written by .record(detail)"]
pub struct Audit<'a> {
    server: &'a AuthServer,
    action: &'a str,
    success: bool,
    client_id: Option<&'a str>,
    username: Option<&'a str>,
    patient: Option<&'a str>,
    launch: Option<&'a str>,
    at: Option<i64>,
}

impl AuthServer {
    /// Starts an audit entry for `action` (a success unless marked [`Audit::refused`]).
    pub fn audit<'a>(&'a self, action: &'a str) -> Audit<'a> {
        Audit { server: self, action, success: true, client_id: None, username: None, patient: None, launch: None, at: None }
    }
}

impl<'a> Audit<'a> {
    /// The decision was a refusal (audit outcome 4).
    pub fn refused(mut self) -> Self {
        self.success = false;
        self
    }

    /// Success or refusal, as a flag.
    pub fn succeeded(mut self, success: bool) -> Self {
        self.success = success;
        self
    }

    /// The client involved.
    pub fn client(mut self, client_id: impl Into<Option<&'a str>>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// The user involved.
    pub fn user(mut self, username: impl Into<Option<&'a str>>) -> Self {
        self.username = username.into();
        self
    }

    /// The patient whose record it was about.
    pub fn patient(mut self, patient: impl Into<Option<&'a str>>) -> Self {
        self.patient = patient.into();
        self
    }

    /// The SMART launch this step belongs to (shown by the EHR's launch inspector).
    pub fn launch(mut self, launch_id: impl Into<Option<&'a str>>) -> Self {
        self.launch = launch_id.into();
        self
    }

    /// When it happened (Unix ms), when that was before now: a step the launch inspector tells in its
    /// place, such as the decision-support call whose card led to a launch.
    pub fn at(mut self, recorded_ms: i64) -> Self {
        self.at = Some(recorded_ms);
        self
    }

    /// Who and what a grant is about: its client, user, patient and launch.
    pub fn grant(self, grant: &'a Grant) -> Self {
        self.client(grant.client_id.as_str()).user(grant.username.as_deref()).patient(grant.patient.as_deref()).launch(grant.launch_id())
    }

    /// Writes the entry with what happened, in words.
    pub fn record(self, detail: impl Into<String>) {
        let Some(sink) = &self.server.audit else { return };
        let owned = |v: Option<&str>| v.map(str::to_string);
        sink.record(store::audit::AuditRecord {
            recorded: self.at.unwrap_or_else(|| self.server.now_ms()),
            category: "auth".into(),
            action: self.action.into(),
            outcome: if self.success { "0" } else { "4" }.into(),
            client_id: owned(self.client_id),
            username: owned(self.username),
            patient: owned(self.patient),
            entity: None,
            detail: Some(detail.into()),
            launch: owned(self.launch),
        });
    }
}
