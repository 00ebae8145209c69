//! Vault errors. None of them ever carries a secret value.

use std::io;
use std::path::PathBuf;

/// Why a vault operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// No vault in this home yet.
    #[error(
        "the vault is not initialized; run `keyward vault init` (or just `keyward secret set NAME`)"
    )]
    Uninitialized,
    /// `init` on an existing vault.
    #[error("the vault is already initialized ({mode} mode)")]
    AlreadyInitialized {
        /// The existing mode.
        mode: &'static str,
    },
    /// The key is not in memory.
    #[error("the vault is sealed; unseal it with `keyward vault unseal`")]
    Sealed,
    /// The passphrase did not decrypt the identity.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// A passphrase vault was unsealed without one.
    #[error("this vault is protected by a passphrase; provide it to unseal")]
    PassphraseRequired,
    /// An empty passphrase was offered at init.
    #[error("the passphrase is empty; choose a non-empty passphrase")]
    EmptyPassphrase,
    /// The name breaks the rule.
    #[error("invalid secret name {name:?}: {rule}", rule = crate::name::NAME_RULE)]
    InvalidName {
        /// The name given (truncated).
        name: String,
    },
    /// No secret by that name.
    #[error("no secret named {name}")]
    NotFound {
        /// The name.
        name: String,
    },
    /// Empty values are refused.
    #[error("the value for secret {name} is empty; refusing to store an empty secret")]
    EmptyValue {
        /// The name.
        name: String,
    },
    /// No snapshot by that name.
    #[error("no snapshot named {name}; see `keyward vault history`")]
    SnapshotNotFound {
        /// The name.
        name: String,
    },
    /// A snapshot cannot be decrypted or parsed.
    #[error("vault snapshot {} cannot be read: {reason}; older snapshots are untouched, \
             see `keyward vault history` and `keyward vault rollback SNAPSHOT`", path.display())]
    Corrupt {
        /// The snapshot.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The vault's id is not the one trusted on first use.
    #[error("VAULT REFUSED: {} holds vault {found}, but this home trusts vault {trusted} \
             (recorded in {}); the vault was replaced. If you did this on purpose, \
             delete the trust file and unseal again", dir.display(), trust.display())]
    Swapped {
        /// The vault directory.
        dir: PathBuf,
        /// The trust file.
        trust: PathBuf,
        /// The id found.
        found: String,
        /// The id trusted.
        trusted: String,
    },
    /// The home, the vault directory or the key file is open to group or
    /// others.
    #[error("VAULT REFUSED: {} has mode {mode:o}, open to group or others (keyward keeps it \
             {want:o}); something widened it, and another account may have read the vault key. \
             Nothing in the vault was used or changed. Restore it with `chmod {want:o} {}`, \
             then rotate the secrets the vault holds", path.display(), path.display())]
    Exposed {
        /// The file or directory.
        path: PathBuf,
        /// Its mode.
        mode: u32,
        /// The mode keyward gives it.
        want: u32,
    },
    /// The vault directory is in a state keyward does not recognise.
    #[error("the vault in {} is inconsistent: {reason}", dir.display())]
    Inconsistent {
        /// The vault directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The step, naming the file.
        what: String,
        /// The OS error.
        source: io::Error,
    },
}

impl VaultError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}
