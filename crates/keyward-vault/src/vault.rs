//! The vault: key modes, seal state, and write-only secret operations.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use age::secrecy::{ExposeSecret, SecretString};
use age::x25519;
use keyward_api::{KeyMode, SecretInfo, VaultState, VaultStatus};

use crate::document::{Document, SecretValue, StoredSecret};
use crate::error::VaultError;
use crate::name::validate_name;
use crate::snapshot;
use crate::time;
use keyward_api::SnapshotInfo;

const IDENTITY_FILE: &str = "identity.txt";
const WRAPPED_IDENTITY_FILE: &str = "identity.age";
const TRUST_FILE: &str = "trust";

struct Current {
    doc: Document,
}

/// The values of the secrets in the open vault, kept current as the vault
/// changes (empty while it is sealed), for redacting them wherever they
/// turn up: the daemon reads it on every decision without taking the
/// vault's lock, which an unseal holds through its scrypt.
#[derive(Clone, Default)]
pub struct KnownValues(Arc<RwLock<Arc<Vec<SecretString>>>>);

impl KnownValues {
    /// The values now.
    pub fn current(&self) -> Arc<Vec<SecretString>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn publish(&self, values: Vec<SecretString>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(values);
    }
}

impl std::fmt::Debug for KnownValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KnownValues {{ count: {} }}", self.current().len())
    }
}

/// The vault in `<home>/vault/`. Not thread-safe by itself: the daemon
/// serializes access, which is also what makes concurrent writers lose
/// nothing.
pub struct Vault {
    dir: PathBuf,
    /// The home holding the vault, whose mode is checked with the vault's.
    home: Option<PathBuf>,
    keep: usize,
    identity: Option<x25519::Identity>,
    current: Result<Current, String>,
    known: KnownValues,
    last_use: Instant,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("dir", &self.dir)
            .field("unsealed", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// A handle on the vault in `dir`, sealed; nothing is read yet.
    pub fn new(dir: impl Into<PathBuf>, keep: usize) -> Self {
        Self {
            dir: dir.into(),
            home: None,
            keep: keep.max(1),
            identity: None,
            current: Err("sealed".to_owned()),
            known: KnownValues::default(),
            last_use: Instant::now(),
        }
    }

    /// Checks `home` (the directory holding the vault) with the vault's own
    /// files on every use: a home open to others exposes the vault too.
    pub fn guard_home(mut self, home: impl Into<PathBuf>) -> Self {
        self.home = Some(home.into());
        self
    }

    /// A handle on the values of the open vault's secrets; see
    /// [`KnownValues`].
    pub fn known_values(&self) -> KnownValues {
        self.known.clone()
    }

    /// Makes `current` the vault's state and publishes its values.
    fn set_current(&mut self, current: Result<Current, String>) {
        let values = match &current {
            Ok(c) => c
                .doc
                .secrets
                .values()
                .map(|s| SecretString::from(s.value.expose().to_owned()))
                .collect(),
            Err(_) => Vec::new(),
        };
        self.current = current;
        self.known.publish(values);
    }

    /// Changes how many snapshots are kept (config reload).
    pub fn set_keep(&mut self, keep: usize) {
        self.keep = keep.max(1);
    }

    /// The key mode, from the files present.
    pub fn mode(&self) -> Result<Option<KeyMode>, VaultError> {
        let key_file = self.dir.join(IDENTITY_FILE).exists();
        let wrapped = self.dir.join(WRAPPED_IDENTITY_FILE).exists();
        match (key_file, wrapped) {
            (true, true) => Err(self.inconsistent(format!(
                "both {IDENTITY_FILE} and {WRAPPED_IDENTITY_FILE} exist; keep the one you use"
            ))),
            (true, false) => Ok(Some(KeyMode::KeyFile)),
            (false, true) => Ok(Some(KeyMode::Passphrase)),
            (false, false) => Ok(None),
        }
    }

    fn inconsistent(&self, reason: String) -> VaultError {
        VaultError::Inconsistent {
            dir: self.dir.clone(),
            reason,
        }
    }

    /// Creates a new vault with a fresh key and an empty first snapshot.
    pub fn init(
        &mut self,
        mode: KeyMode,
        passphrase: Option<SecretString>,
    ) -> Result<VaultStatus, VaultError> {
        if let Some(existing) = self.mode()? {
            return Err(VaultError::AlreadyInitialized {
                mode: existing.as_str(),
            });
        }
        self.check_modes()?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(VaultError::io(format!(
                "cannot create {}",
                self.dir.display()
            )))?;
        if self.dir.exists() && !snapshot::list(&self.dir)?.is_empty() {
            return Err(self.inconsistent(
                "snapshots exist but no identity; restore the identity file instead of re-initializing".to_owned(),
            ));
        }
        let identity = x25519::Identity::generate();
        let secret_key = identity.to_string();
        match mode {
            KeyMode::KeyFile => {
                let text = format!(
                    "# keyward vault identity (age X25519), created {}\n# public key: {}\n{}\n",
                    time::rfc3339(SystemTime::now()),
                    identity.to_public(),
                    secret_key.expose_secret()
                );
                self.create_private(IDENTITY_FILE, text.as_bytes())?;
            }
            KeyMode::Passphrase => {
                let passphrase = passphrase.ok_or(VaultError::PassphraseRequired)?;
                if passphrase.expose_secret().is_empty() {
                    return Err(VaultError::EmptyPassphrase);
                }
                let recipient = age::scrypt::Recipient::new(passphrase);
                let wrapped = age::encrypt(&recipient, secret_key.expose_secret().as_bytes())
                    .map_err(|e| self.inconsistent(format!("cannot encrypt the identity: {e}")))?;
                self.create_private(WRAPPED_IDENTITY_FILE, &wrapped)?;
            }
        }
        let doc = Document::new();
        self.identity = Some(identity);
        self.write_snapshot(&doc, "init")?;
        self.check_trust(&doc)?;
        self.set_current(Ok(Current { doc }));
        self.touch();
        self.status()
    }

    fn create_private(&self, name: &str, bytes: &[u8]) -> Result<(), VaultError> {
        let path = self.dir.join(name);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(VaultError::io(format!("cannot create {}", path.display())))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(VaultError::io(format!("cannot write {}", path.display())))?;
        snapshot::sync_dir(&self.dir)
    }

    /// Loads the key: from `identity.txt` in key-file mode (no passphrase
    /// needed), else by decrypting `identity.age` with `passphrase`. Then
    /// opens the current snapshot; if that fails the key stays loaded (so a
    /// rollback can repair the vault) and the error is returned.
    pub fn unseal(&mut self, passphrase: Option<SecretString>) -> Result<VaultStatus, VaultError> {
        let mode = self.mode()?.ok_or(VaultError::Uninitialized)?;
        self.check_modes()?;
        let identity = match mode {
            KeyMode::KeyFile => {
                let path = self.dir.join(IDENTITY_FILE);
                let text = zeroize::Zeroizing::new(
                    fs::read_to_string(&path)
                        .map_err(VaultError::io(format!("cannot read {}", path.display())))?,
                );
                parse_identity(&text).ok_or_else(|| {
                    self.inconsistent(format!("{} holds no age identity", path.display()))
                })?
            }
            KeyMode::Passphrase => {
                let passphrase = passphrase.ok_or(VaultError::PassphraseRequired)?;
                let path = self.dir.join(WRAPPED_IDENTITY_FILE);
                let wrapped = fs::read(&path)
                    .map_err(VaultError::io(format!("cannot read {}", path.display())))?;
                let identity = age::scrypt::Identity::new(passphrase);
                let plain = zeroize::Zeroizing::new(age::decrypt(&identity, &wrapped).map_err(
                    |e| match e {
                        age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys => {
                            VaultError::WrongPassphrase
                        }
                        other => VaultError::Corrupt {
                            path: path.clone(),
                            reason: other.to_string(),
                        },
                    },
                )?);
                let text = std::str::from_utf8(&plain).unwrap_or_default();
                parse_identity(text).ok_or_else(|| {
                    self.inconsistent(format!("{} holds no age identity", path.display()))
                })?
            }
        };
        self.identity = Some(identity);
        self.touch();
        self.reload_current()?;
        self.status()
    }

    /// Drops the key and every decrypted value from memory (zeroized).
    pub fn seal(&mut self) {
        self.identity = None;
        self.set_current(Err("sealed".to_owned()));
    }

    /// A 32-byte key for `purpose`, derived from the vault's identity
    /// (HMAC-SHA256 keyed with it): the daemon authenticates what it keeps
    /// outside the vault (run records) with keys only an unsealed vault
    /// gives. Different purposes give unrelated keys.
    pub fn derive_key(&self, purpose: &str) -> Result<zeroize::Zeroizing<[u8; 32]>, VaultError> {
        use hmac::Mac as _;
        let identity = self.identity.as_ref().ok_or(VaultError::Sealed)?;
        let secret = identity.to_string();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.expose_secret().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(b"keyward derived key v1\0");
        mac.update(purpose.as_bytes());
        Ok(zeroize::Zeroizing::new(mac.finalize().into_bytes().into()))
    }

    /// Whether the key is in memory.
    pub fn is_unsealed(&self) -> bool {
        self.identity.is_some()
    }

    /// Seals if unused for `idle`; returns whether it did.
    pub fn seal_if_idle(&mut self, idle: Duration) -> bool {
        if self.identity.is_some() && self.last_use.elapsed() >= idle {
            self.seal();
            return true;
        }
        false
    }

    fn touch(&mut self) {
        self.last_use = Instant::now();
    }

    fn reload_current(&mut self) -> Result<(), VaultError> {
        let result = self.read_current();
        match result {
            Ok(doc) => {
                self.set_current(Ok(Current { doc }));
                Ok(())
            }
            Err(e) => {
                self.set_current(Err(e.to_string()));
                Err(e)
            }
        }
    }

    fn read_current(&self) -> Result<Document, VaultError> {
        let newest = snapshot::list(&self.dir)?.pop().ok_or_else(|| {
            self.inconsistent("the identity exists but no snapshot does".to_owned())
        })?;
        let doc = self.read_snapshot(&newest.name)?;
        self.check_trust(&doc)?;
        Ok(doc)
    }

    fn read_snapshot(&self, name: &str) -> Result<Document, VaultError> {
        let identity = self.identity.as_ref().ok_or(VaultError::Sealed)?;
        let path = self.dir.join(name);
        let bytes =
            fs::read(&path).map_err(VaultError::io(format!("cannot read {}", path.display())))?;
        let plain = zeroize::Zeroizing::new(age::decrypt(identity, &bytes).map_err(|e| {
            VaultError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?);
        Document::from_json(&plain).map_err(|reason| VaultError::Corrupt { path, reason })
    }

    /// Trust on first use: the first vault id seen is recorded; any other
    /// is refused.
    fn check_trust(&self, doc: &Document) -> Result<(), VaultError> {
        let trust = self.dir.join(TRUST_FILE);
        match fs::read_to_string(&trust) {
            Ok(trusted) if trusted.trim() == doc.vault_id => Ok(()),
            Ok(trusted) => Err(VaultError::Swapped {
                dir: self.dir.clone(),
                trust,
                found: doc.vault_id.clone(),
                trusted: trusted.trim().to_owned(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomic(&trust, format!("{}\n", doc.vault_id).as_bytes())
            }
            Err(e) => Err(VaultError::io(format!("cannot read {}", trust.display()))(
                e,
            )),
        }
    }

    /// Refuses when the home holding the vault (see [`Vault::guard_home`]),
    /// the vault directory or its
    /// key file grants anything to group or others: something widened them
    /// (keyward makes them 0700 and 0600), and the key may have been read
    /// by another account. Checked on every use of the vault; changes
    /// nothing.
    pub fn check_modes(&self) -> Result<(), VaultError> {
        let mut paths: Vec<(PathBuf, u32)> = Vec::with_capacity(4);
        if let Some(home) = &self.home {
            paths.push((home.clone(), 0o700));
        }
        paths.push((self.dir.clone(), 0o700));
        paths.push((self.dir.join(IDENTITY_FILE), 0o600));
        paths.push((self.dir.join(WRAPPED_IDENTITY_FILE), 0o600));
        for (path, want) in paths {
            let meta = match fs::metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(VaultError::io(format!("cannot check {}", path.display()))(
                        e,
                    ));
                }
            };
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(VaultError::Exposed { path, mode, want });
            }
        }
        Ok(())
    }

    fn doc(&self) -> Result<&Document, VaultError> {
        self.check_modes()?;
        if self.identity.is_none() {
            return Err(if self.mode()?.is_none() {
                VaultError::Uninitialized
            } else {
                VaultError::Sealed
            });
        }
        match &self.current {
            Ok(c) => Ok(&c.doc),
            Err(_) => Err(self.read_current().err().unwrap_or(VaultError::Sealed)),
        }
    }

    fn write_snapshot(&self, doc: &Document, slug: &str) -> Result<String, VaultError> {
        let identity = self.identity.as_ref().ok_or(VaultError::Sealed)?;
        let ciphertext = age::encrypt(&identity.to_public(), &doc.to_json())
            .map_err(|e| self.inconsistent(format!("cannot encrypt a snapshot: {e}")))?;
        let newest = snapshot::list(&self.dir)?.pop().map(|s| s.name);
        let name = snapshot::next_name(newest.as_deref(), slug, SystemTime::now());
        snapshot::write_new(&self.dir, &name, &ciphertext)?;
        snapshot::prune(&self.dir, self.keep)?;
        Ok(name)
    }

    fn commit(&mut self, doc: Document, slug: &str) -> Result<(), VaultError> {
        self.write_snapshot(&doc, slug)?;
        self.set_current(Ok(Current { doc }));
        Ok(())
    }

    /// Stores (or replaces) a secret. The description is kept when `None`.
    pub fn set(
        &mut self,
        name: &str,
        value: SecretString,
        description: Option<String>,
    ) -> Result<SecretInfo, VaultError> {
        validate_name(name)?;
        if value.expose_secret().is_empty() {
            return Err(VaultError::EmptyValue {
                name: name.to_owned(),
            });
        }
        let mut doc = self.doc()?.clone();
        let now = time::rfc3339(SystemTime::now());
        let value = SecretValue::new(value.expose_secret().to_owned());
        let entry = match doc.secrets.remove(name) {
            Some(old) => StoredSecret {
                value,
                description: description.unwrap_or(old.description),
                created_at: old.created_at,
                updated_at: now,
            },
            None => StoredSecret {
                value,
                description: description.unwrap_or_default(),
                created_at: now.clone(),
                updated_at: now,
            },
        };
        doc.secrets.insert(name.to_owned(), entry);
        self.commit(doc, &format!("set-{name}"))?;
        self.touch();
        self.info(name)
    }

    /// Removes a secret.
    pub fn remove(&mut self, name: &str) -> Result<(), VaultError> {
        validate_name(name)?;
        let mut doc = self.doc()?.clone();
        if doc.secrets.remove(name).is_none() {
            return Err(VaultError::NotFound {
                name: name.to_owned(),
            });
        }
        self.commit(doc, &format!("rm-{name}"))?;
        self.touch();
        Ok(())
    }

    fn info(&self, name: &str) -> Result<SecretInfo, VaultError> {
        let doc = self.doc()?;
        let s = doc.secrets.get(name).ok_or_else(|| VaultError::NotFound {
            name: name.to_owned(),
        })?;
        Ok(SecretInfo {
            name: name.to_owned(),
            description: s.description.clone(),
            created_at: s.created_at.clone(),
            updated_at: s.updated_at.clone(),
            fingerprint: doc.fingerprint(&s.value),
        })
    }

    /// Every secret's metadata, sorted by name; never a value.
    pub fn list(&mut self) -> Result<Vec<SecretInfo>, VaultError> {
        let names: Vec<String> = self.doc()?.secrets.keys().cloned().collect();
        self.touch();
        names.iter().map(|n| self.info(n)).collect()
    }

    /// The value of a secret, for injection only. Never send it to a
    /// client, a log or an error.
    pub fn value(&mut self, name: &str) -> Result<SecretString, VaultError> {
        let doc = self.doc()?;
        let value = doc
            .secrets
            .get(name)
            .map(|s| SecretString::from(s.value.expose().to_owned()))
            .ok_or_else(|| VaultError::NotFound {
                name: name.to_owned(),
            })?;
        self.touch();
        Ok(value)
    }

    /// Snapshots, oldest first.
    pub fn history(&self) -> Result<Vec<SnapshotInfo>, VaultError> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        snapshot::list(&self.dir)
    }

    /// Makes an older snapshot current by writing its content again as the
    /// newest snapshot; history is never rewritten.
    pub fn rollback(&mut self, name: &str) -> Result<VaultStatus, VaultError> {
        self.check_modes()?;
        if self.identity.is_none() {
            return Err(self.doc().err().unwrap_or(VaultError::Sealed));
        }
        let Some((ts, _)) = snapshot::parse_name(name) else {
            return Err(VaultError::SnapshotNotFound {
                name: name.to_owned(),
            });
        };
        if !self.dir.join(name).is_file() {
            return Err(VaultError::SnapshotNotFound {
                name: name.to_owned(),
            });
        }
        let doc = self.read_snapshot(name)?;
        self.check_trust(&doc)?;
        self.commit(doc, &format!("rollback-to-{}", ts.to_ascii_lowercase()))?;
        self.touch();
        self.status()
    }

    /// State, mode, snapshots and id.
    pub fn status(&self) -> Result<VaultStatus, VaultError> {
        let mode = self.mode()?;
        let history = self.history()?;
        let state = match (mode, self.identity.is_some()) {
            (None, _) => VaultState::Uninitialized,
            (Some(_), false) => VaultState::Sealed,
            (Some(_), true) => VaultState::Unsealed,
        };
        let trusted = fs::read_to_string(self.dir.join(TRUST_FILE))
            .ok()
            .map(|t| t.trim().to_owned());
        let (vault_id, secrets, error) = match (&self.current, state) {
            (Ok(c), VaultState::Unsealed) => (
                Some(c.doc.vault_id.clone()),
                Some(c.doc.secrets.len()),
                None,
            ),
            (Err(e), VaultState::Unsealed) => (trusted, None, Some(e.clone())),
            _ => (trusted, None, None),
        };
        Ok(VaultStatus {
            state,
            mode,
            snapshots: history.len(),
            current: history.last().map(|s| s.name.clone()),
            vault_id,
            secrets,
            error,
        })
    }

    /// The vault directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn parse_identity(text: &str) -> Option<x25519::Identity> {
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .and_then(|l| x25519::Identity::from_str(l).ok())
}

/// Replaces `path` atomically with `bytes` (mode 0600): temp file, fsync,
/// rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), VaultError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // Unique per call: concurrent writers in one process must not share it.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let what = || format!("cannot write {}", path.display());
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(VaultError::io(what()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            VaultError::io(what())(e)
        })?;
    snapshot::sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn key_file_round_trip_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vault");
        let mut v = Vault::new(&dir, 20);
        assert_eq!(v.status().unwrap().state, VaultState::Uninitialized);
        assert!(matches!(v.list(), Err(VaultError::Uninitialized)));
        v.init(KeyMode::KeyFile, None).unwrap();
        let info = v
            .set("gh", secret("tok-123"), Some("GitHub".into()))
            .unwrap();
        assert_eq!(info.description, "GitHub");
        assert_eq!(info.fingerprint.len(), 8);
        let again = v.set("gh", secret("tok-123"), None).unwrap();
        assert_eq!(again.fingerprint, info.fingerprint);
        assert_eq!(again.description, "GitHub");
        assert_eq!(again.created_at, info.created_at);

        let mut reopened = Vault::new(&dir, 20);
        assert_eq!(reopened.status().unwrap().state, VaultState::Sealed);
        reopened.unseal(None).unwrap();
        assert_eq!(reopened.value("gh").unwrap().expose_secret(), "tok-123");
        assert_eq!(reopened.list().unwrap(), vec![again]);
        reopened.remove("gh").unwrap();
        assert!(matches!(
            reopened.remove("gh"),
            Err(VaultError::NotFound { .. })
        ));
    }

    #[test]
    fn passphrase_mode_wrong_passphrase_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vault");
        let mut v = Vault::new(&dir, 20);
        v.init(KeyMode::Passphrase, Some(secret("correct horse")))
            .unwrap();
        v.set("a", secret("value-a"), None).unwrap();
        let before = v.history().unwrap();
        v.seal();
        assert!(matches!(v.value("a"), Err(VaultError::Sealed)));
        assert!(matches!(
            v.unseal(None),
            Err(VaultError::PassphraseRequired)
        ));
        assert!(matches!(
            v.unseal(Some(secret("wrong"))),
            Err(VaultError::WrongPassphrase)
        ));
        assert!(!v.is_unsealed());
        assert_eq!(v.history().unwrap(), before);
        v.unseal(Some(secret("correct horse"))).unwrap();
        assert_eq!(v.value("a").unwrap().expose_secret(), "value-a");
    }

    #[test]
    fn snapshots_are_kept_to_the_limit_and_rollback_appends() {
        let tmp = tempfile::tempdir().unwrap();
        let mut v = Vault::new(tmp.path().join("vault"), 3);
        v.init(KeyMode::KeyFile, None).unwrap();
        v.set("a", secret("1"), None).unwrap();
        let with_a1 = v.status().unwrap().current.unwrap();
        v.set("a", secret("2"), None).unwrap();
        v.set("b", secret("3"), None).unwrap();
        assert_eq!(v.history().unwrap().len(), 3);
        v.rollback(&with_a1).unwrap();
        assert_eq!(v.value("a").unwrap().expose_secret(), "1");
        assert!(matches!(v.value("b"), Err(VaultError::NotFound { .. })));
        let names: Vec<_> = v.history().unwrap().into_iter().map(|s| s.name).collect();
        assert!(names.last().unwrap().contains("rollback-to-"), "{names:?}");
        assert!(matches!(
            v.rollback("20000101T000000Z_nope.age"),
            Err(VaultError::SnapshotNotFound { .. })
        ));
    }

    #[test]
    fn concurrent_atomic_writes_of_one_file_all_succeed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("runs.json");
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        write_atomic(&path, format!("{i}").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.parse::<u32>().unwrap() < 8);
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn known_values_follow_every_change_and_empty_when_sealed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vault");
        let mut v = Vault::new(&dir, 20);
        let known = v.known_values();
        let values = || -> Vec<String> {
            let mut all: Vec<String> = known
                .current()
                .iter()
                .map(|s| s.expose_secret().to_owned())
                .collect();
            all.sort();
            all
        };
        v.init(KeyMode::KeyFile, None).unwrap();
        v.set("a", secret("value-a"), None).unwrap();
        v.set("b", secret("value-b"), None).unwrap();
        assert_eq!(values(), ["value-a", "value-b"]);
        v.set("a", secret("value-a2"), None).unwrap();
        v.remove("b").unwrap();
        assert_eq!(values(), ["value-a2"]);
        assert!(!format!("{known:?}").contains("value-a"), "{known:?}");
        v.seal();
        assert!(values().is_empty());
        v.unseal(None).unwrap();
        assert_eq!(values(), ["value-a2"]);
        let first = v.history().unwrap()[1].name.clone();
        v.rollback(&first).unwrap();
        assert_eq!(values(), ["value-a"]);
    }

    #[test]
    fn swapped_vault_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vault");
        let mut v = Vault::new(&dir, 20);
        v.init(KeyMode::KeyFile, None).unwrap();
        fs::write(dir.join(TRUST_FILE), "0000\n").unwrap();
        let mut v = Vault::new(&dir, 20);
        let err = v.unseal(None).unwrap_err();
        assert!(matches!(err, VaultError::Swapped { .. }), "{err}");
        assert!(err.to_string().contains("VAULT REFUSED"));
        assert!(v.set("x", secret("y"), None).is_err());
    }

    /// A home, vault directory or key file widened to group or others is
    /// refused on every use, naming the file; restored, nothing was lost.
    #[test]
    fn widened_modes_are_refused_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        fs::DirBuilder::new().mode(0o700).create(&home).unwrap();
        let dir = home.join("vault");
        let mut v = Vault::new(&dir, 20).guard_home(&home);
        v.init(KeyMode::KeyFile, None).unwrap();
        v.set("a", secret("value-a"), None).unwrap();
        let before = v.history().unwrap();
        let chmod =
            |p: &Path, mode: u32| fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
        for (path, widened, restored) in [
            (dir.join(IDENTITY_FILE), 0o644, 0o600),
            (dir.clone(), 0o750, 0o700),
            (home.clone(), 0o705, 0o700),
        ] {
            chmod(&path, widened);
            for err in [
                v.value("a").unwrap_err(),
                v.set("b", secret("value-b"), None).unwrap_err(),
                v.list().unwrap_err(),
                v.remove("a").unwrap_err(),
            ] {
                assert!(matches!(err, VaultError::Exposed { .. }), "{err}");
                let text = err.to_string();
                assert!(text.contains(&path.display().to_string()), "{text}");
                assert!(text.contains(&format!("mode {widened:o}")), "{text}");
                assert!(text.contains(&format!("chmod {restored:o}")), "{text}");
            }
            let mut reopened = Vault::new(&dir, 20).guard_home(&home);
            assert!(matches!(
                reopened.unseal(None),
                Err(VaultError::Exposed { .. })
            ));
            assert!(!reopened.is_unsealed());
            chmod(&path, restored);
            assert_eq!(v.history().unwrap().len(), before.len(), "nothing written");
            assert_eq!(v.value("a").unwrap().expose_secret(), "value-a");
        }
    }
}
