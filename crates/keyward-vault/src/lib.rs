//! keyward's secrets: an age-encrypted, snapshot-per-change store with a
//! seal state, write-only access (no function here returns a value to a
//! caller outside the daemon's injection path), and the references by which
//! grants name secrets in this vault and in other backends.
#![forbid(unsafe_code)]

mod document;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod name;
mod openbao;
mod reference;
mod resolver;
mod snapshot;
mod time;
mod vault;

pub use error::VaultError;
pub use name::{SecretName, validate_name};
pub use openbao::{OpenBao, OpenBaoAuth, OpenBaoSettings};
pub use reference::{RefError, SecretRef};
pub use resolver::{ResolveError, ResolveStatus, Resolver, ResolverOptions, read_secret_file};
pub use vault::{KnownValues, Vault, write_atomic};
