//! OperationOutcome construction.

use serde_json::{Value, json};

/// An OperationOutcome issue's severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// `fatal`.
    Fatal,
    /// `error`.
    Error,
    /// `warning`.
    Warning,
    /// `information`.
    Information,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// An OperationOutcome with a single issue. `code` is from the FHIR `issue-type` value set
/// (`invalid`, `not-found`, `processing`, `conflict`, `security`, ...).
pub fn outcome(severity: Severity, code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": severity.as_str(), "code": code, "diagnostics": diagnostics }]
    })
}

/// An OperationOutcome with several issues of the same severity and code.
pub fn outcome_many(severity: Severity, code: &str, diagnostics: &[String]) -> Value {
    let issues: Vec<Value> = diagnostics.iter().map(|d| json!({ "severity": severity.as_str(), "code": code, "diagnostics": d })).collect();
    json!({ "resourceType": "OperationOutcome", "issue": issues })
}
