//! keyward's secrets: an age-encrypted, snapshot-per-change store with a
//! seal state, write-only access (no function here returns a value to a
//! caller outside the daemon's injection path), and the references by which
//! grants name secrets in this vault and in other backends.
#![forbid(unsafe_code)]

mod document;
mod error;
mod name;
mod snapshot;
mod time;
mod vault;

pub use error::VaultError;
pub use name::{SecretName, validate_name};
pub use vault::Vault;
