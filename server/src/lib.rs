//! Berth's HTTP front end.
//!
//! `server` is the only crate that knows HTTP statuses. It parses the URI into a [`route::Route`],
//! calls the [`berth_engine::Engine`], and maps every error to an OCI error body in one table
//! ([`error`]). Configuration is read and validated in [`config`].

pub mod access;
pub mod api;
pub mod authn;
pub mod body;
pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod jwks_fetch;
pub mod metrics;
pub mod mirror;
pub mod range;
pub mod route;
pub mod sendfile;
pub mod serve;
pub mod tls;
