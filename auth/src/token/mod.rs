//! Bearer tokens (JWT): keys, verification, and (with the token server) issuing.

pub mod issuer;
pub mod keys;
pub mod signing;
pub mod verify;

pub use issuer::{Issued, Issuer, RefreshBinding, RefreshError, Refreshed};
pub use keys::{KeySet, libtrust_kid, public_jwk, thumbprint};
pub use signing::{KidFormat, SigningKey};
pub use verify::{Grant, Verifier, VerifyError};
