//! FHIR R4 vocabulary for Kindling: no I/O.
//!
//! Resources are kept as JSON ([`serde_json::Value`]); this crate knows the resource types, the search
//! parameters we support and how to index and query them, references, structural validation and
//! OperationOutcome. Time is injected through [`time::Clock`].
#![deny(missing_docs)]

pub mod display;
pub mod extract;
pub mod outcome;
pub mod params;
pub mod patch;
pub mod query;
pub mod reference;
pub mod shape;
pub mod time;
pub mod types;
pub mod validate;

pub use outcome::{Severity, outcome};
