//! Berth's authentication and authorization.
//!
//! This crate knows nothing of storage or HTTP statuses. It parses what clients ask for
//! ([`Scope`]s such as `repository:team/app:pull,push`), verifies credentials ([`BasicAuth`]
//! over an htpasswd file, bcrypt only), and returns typed answers for `server` to render.

pub mod access;
pub mod basic;
pub mod htpasswd;
pub mod scope;
pub mod secrets;
pub mod throttle;
pub mod token;
pub mod users;

pub use access::{AccessRules, Pattern, Policy, Principal, grant, permits, permitted};
pub use basic::{BasicAuth, BasicCredentials};
pub use htpasswd::{Htpasswd, HtpasswdError};
pub use scope::{Action, Scope, ScopeError, merge as merge_scopes};
pub use secrets::{SecretsDir, SecretsError};
pub use throttle::{Throttle, ThrottleConfig, Throttled};
pub use users::{CredentialSource, Identity, Users, UsersError};
