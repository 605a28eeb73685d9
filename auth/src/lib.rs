//! Berth's authentication and authorization.
//!
//! This crate knows nothing of storage or HTTP statuses. It parses what clients ask for
//! ([`Scope`]s such as `repository:team/app:pull,push`) and, as the auth modes land, verifies
//! credentials and tokens and decides grants, returning typed decisions for `server` to render.

pub mod scope;

pub use scope::{Action, Scope, ScopeError};
