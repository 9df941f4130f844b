//! SMART App Launch 2.2 vocabulary shared by the authorisation server and the client SDK. No I/O.
//!
//! - [`scope`]: the scope grammar (SMART v1 `.read`/`.write`/`.*`, v2 `.cruds` with `?param=value`
//!   constraints, launch-context and identity scopes), and the question every party asks of a grant:
//!   "may this interaction on this resource type happen?"
#![deny(missing_docs)]

pub mod scope;

pub use scope::{Interaction, Level, Permissions, ResourceScope, Scope, ScopeSet};
