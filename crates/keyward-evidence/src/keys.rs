//! Signing keys: HMAC-SHA256 (a shared secret) or Ed25519 (a verifier needs
//! only the public key). Key files: an HMAC key is 32 or more bytes, raw or
//! hex; Ed25519 keys are PEM (PKCS#8 private, SubjectPublicKeyInfo public),
//! as `openssl` reads and writes them.

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use aws_lc_rs::{digest, hmac};
use base64::Engine as _;

/// `HMAC-SHA256`.
pub const HMAC_ALG: &str = "HMAC-SHA256";
/// `Ed25519`.
pub const ED25519_ALG: &str = "Ed25519";

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32-byte key follows.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A key problem, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct KeyError {
    /// The key file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn key_err(path: &Path, message: impl Into<String>) -> KeyError {
    KeyError {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Signs records. `Debug` shows the algorithm and key id only.
pub enum Signer {
    /// A shared secret.
    Hmac {
        /// Recorded in each signature.
        key_id: String,
        /// The key.
        key: Box<hmac::Key>,
    },
    /// A private key.
    Ed25519 {
        /// Recorded in each signature.
        key_id: String,
        /// The key pair.
        pair: Box<Ed25519KeyPair>,
    },
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({}, key_id {})", self.alg(), self.key_id())
    }
}

/// Checks signatures.
#[derive(Clone)]
pub enum Verifier {
    /// A shared secret.
    Hmac {
        /// The key id records must name.
        key_id: String,
        /// The key.
        key: Box<hmac::Key>,
    },
    /// A public key.
    Ed25519 {
        /// The key id records must name.
        key_id: String,
        /// 32 bytes.
        public: Vec<u8>,
    },
}

fn default_key_id(alg: &str, material: &[u8]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(alg.as_bytes());
    ctx.update(b"\n");
    ctx.update(material);
    hex::encode(&ctx.finish().as_ref()[..8])
}

fn read_hmac_key(path: &Path) -> Result<Vec<u8>, KeyError> {
    let raw = std::fs::read(path).map_err(|e| key_err(path, format!("cannot read: {e}")))?;
    decode_hmac_key(raw, &path.display().to_string())
}

/// An HMAC key's bytes: hex when the text is hex, else the bytes as they
/// are; at least 32. `origin` names where it came from (never the key).
fn decode_hmac_key(raw: Vec<u8>, origin: &str) -> Result<Vec<u8>, KeyError> {
    let trimmed = std::str::from_utf8(&raw).map(str::trim).ok();
    let bytes = match trimmed.and_then(|t| hex::decode(t).ok()) {
        Some(decoded) => decoded,
        None => raw,
    };
    if bytes.len() < 32 {
        return Err(KeyError {
            path: origin.to_owned(),
            message: format!(
                "an HMAC key needs at least 32 bytes (this one has {}); create one with `keyward audit keygen --hmac`",
                bytes.len()
            ),
        });
    }
    Ok(bytes)
}

/// The environment variable that may hold the evidence HMAC key (the key
/// itself, hex or raw, like a key file's contents).
pub const HMAC_KEY_ENV: &str = "KEYWARD_EVIDENCE_HMAC_KEY";

/// The HMAC key in [`HMAC_KEY_ENV`], if the variable is set and not empty.
fn env_hmac_key(key_id: Option<&str>) -> Option<Result<(String, Box<hmac::Key>), KeyError>> {
    let value = std::env::var_os(HMAC_KEY_ENV).filter(|v| !v.is_empty())?;
    let bytes = match decode_hmac_key(value.into_encoded_bytes(), HMAC_KEY_ENV) {
        Ok(bytes) => bytes,
        Err(e) => return Some(Err(e)),
    };
    Some(Ok((
        key_id.map_or_else(|| default_key_id(HMAC_ALG, &bytes), str::to_owned),
        Box::new(hmac::Key::new(hmac::HMAC_SHA256, &bytes)),
    )))
}

fn pem_decode(path: &Path, label: &str) -> Result<Vec<u8>, KeyError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| key_err(path, format!("cannot read: {e}")))?;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = text
        .split_once(&begin)
        .and_then(|(_, rest)| rest.split_once(&end))
        .map(|(body, _)| body)
        .ok_or_else(|| key_err(path, format!("not a PEM file with a {label} block")))?;
    let b64: String = body.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| key_err(path, format!("bad base64 in the {label} block: {e}")))
}

/// An HMAC key file's key and its id (`key_id`, or a digest of the key):
/// the same for signing and verifying.
fn hmac_key(path: &Path, key_id: Option<&str>) -> Result<(String, Box<hmac::Key>), KeyError> {
    let bytes = read_hmac_key(path)?;
    Ok((
        key_id.map_or_else(|| default_key_id(HMAC_ALG, &bytes), str::to_owned),
        Box::new(hmac::Key::new(hmac::HMAC_SHA256, &bytes)),
    ))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

impl Signer {
    /// An HMAC signer from a key file; `key_id` defaults to a digest of the key.
    pub fn hmac_from_file(path: &Path, key_id: Option<&str>) -> Result<Self, KeyError> {
        let (key_id, key) = hmac_key(path, key_id)?;
        Ok(Signer::Hmac { key_id, key })
    }

    /// An HMAC signer from the key in [`HMAC_KEY_ENV`], or `None` when the
    /// variable is unset or empty.
    pub fn hmac_from_env(key_id: Option<&str>) -> Option<Result<Self, KeyError>> {
        env_hmac_key(key_id).map(|k| k.map(|(key_id, key)| Signer::Hmac { key_id, key }))
    }

    /// An Ed25519 signer from a PKCS#8 PEM file; `key_id` defaults to a
    /// digest of the public key.
    pub fn ed25519_from_file(path: &Path, key_id: Option<&str>) -> Result<Self, KeyError> {
        let der = pem_decode(path, "PRIVATE KEY")?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|_| key_err(path, "not an Ed25519 private key (PKCS#8)"))?;
        let public = pair.public_key().as_ref().to_vec();
        Ok(Signer::Ed25519 {
            key_id: key_id.map_or_else(|| default_key_id(ED25519_ALG, &public), str::to_owned),
            pair: Box::new(pair),
        })
    }

    /// `HMAC-SHA256` or `Ed25519`.
    pub fn alg(&self) -> &'static str {
        match self {
            Signer::Hmac { .. } => HMAC_ALG,
            Signer::Ed25519 { .. } => ED25519_ALG,
        }
    }

    /// The key id.
    pub fn key_id(&self) -> &str {
        match self {
            Signer::Hmac { key_id, .. } | Signer::Ed25519 { key_id, .. } => key_id,
        }
    }

    /// The verifier of this key's signatures (for HMAC the same secret,
    /// for Ed25519 the public half).
    pub fn verifier(&self) -> Verifier {
        match self {
            Signer::Hmac { key_id, key } => Verifier::Hmac {
                key_id: key_id.clone(),
                key: key.clone(),
            },
            Signer::Ed25519 { key_id, pair } => Verifier::Ed25519 {
                key_id: key_id.clone(),
                public: pair.public_key().as_ref().to_vec(),
            },
        }
    }

    /// Hex signature of `message`.
    pub fn sign(&self, message: &[u8]) -> String {
        match self {
            Signer::Hmac { key, .. } => hex::encode(hmac::sign(key, message).as_ref()),
            Signer::Ed25519 { pair, .. } => hex::encode(pair.sign(message).as_ref()),
        }
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verifier({}, key_id {})", self.alg(), self.key_id())
    }
}

impl Verifier {
    /// From an HMAC key file.
    pub fn hmac_from_file(path: &Path, key_id: Option<&str>) -> Result<Self, KeyError> {
        let (key_id, key) = hmac_key(path, key_id)?;
        Ok(Verifier::Hmac { key_id, key })
    }

    /// From the key in [`HMAC_KEY_ENV`], or `None` when it is unset or empty.
    pub fn hmac_from_env(key_id: Option<&str>) -> Option<Result<Self, KeyError>> {
        env_hmac_key(key_id).map(|k| k.map(|(key_id, key)| Verifier::Hmac { key_id, key }))
    }

    /// From an Ed25519 public key PEM file.
    pub fn ed25519_from_file(path: &Path, key_id: Option<&str>) -> Result<Self, KeyError> {
        let der = pem_decode(path, "PUBLIC KEY")?;
        let public = der
            .strip_prefix(&SPKI_PREFIX[..])
            .filter(|k| k.len() == 32)
            .ok_or_else(|| key_err(path, "not an Ed25519 public key"))?
            .to_vec();
        Ok(Verifier::Ed25519 {
            key_id: key_id.map_or_else(|| default_key_id(ED25519_ALG, &public), str::to_owned),
            public,
        })
    }

    /// `HMAC-SHA256` or `Ed25519`.
    pub fn alg(&self) -> &'static str {
        match self {
            Verifier::Hmac { .. } => HMAC_ALG,
            Verifier::Ed25519 { .. } => ED25519_ALG,
        }
    }

    /// The key id.
    pub fn key_id(&self) -> &str {
        match self {
            Verifier::Hmac { key_id, .. } | Verifier::Ed25519 { key_id, .. } => key_id,
        }
    }

    /// Whether hex `signature` signs `message`.
    pub fn verify(&self, message: &[u8], signature: &str) -> bool {
        let Ok(sig) = hex::decode(signature) else {
            return false;
        };
        match self {
            Verifier::Hmac { key, .. } => hmac::verify(key, message, &sig).is_ok(),
            Verifier::Ed25519 { public, .. } => UnparsedPublicKey::new(&ED25519, public)
                .verify(message, &sig)
                .is_ok(),
        }
    }
}

/// The key among `keys` that a signature by (`alg`, `key_id`) needs, or
/// why none fits. Several keys verify a log that spans a key rotation.
pub(crate) fn find<'k>(
    keys: &'k [Verifier],
    alg: &str,
    key_id: &str,
) -> Result<&'k Verifier, String> {
    if let Some(key) = keys.iter().find(|k| k.alg() == alg && k.key_id() == key_id) {
        return Ok(key);
    }
    let given = keys
        .iter()
        .map(|k| format!("{} {:?}", k.alg(), k.key_id()))
        .collect::<Vec<_>>()
        .join(", ");
    Err(format!(
        "signed with {alg} by key {key_id:?}, but the key(s) given are {given}"
    ))
}

/// Writes a new Ed25519 key pair: `<stem>.key` (PKCS#8 PEM, 0600) and
/// `<stem>.pub` (SubjectPublicKeyInfo PEM). Refuses to overwrite.
pub fn generate_ed25519(stem: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf), KeyError> {
    let private = stem.with_extension("key");
    let public = stem.with_extension("pub");
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| key_err(stem, "key generation failed"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| key_err(stem, "key generation failed"))?;
    let mut spki = SPKI_PREFIX.to_vec();
    spki.extend_from_slice(pair.public_key().as_ref());
    write_new(
        &private,
        pem_encode("PRIVATE KEY", pkcs8.as_ref()).as_bytes(),
        0o600,
    )?;
    write_new(&public, pem_encode("PUBLIC KEY", &spki).as_bytes(), 0o644)?;
    Ok((private, public))
}

/// Writes a new 32-byte HMAC key as hex to `path` (0600). Refuses to overwrite.
pub fn generate_hmac(path: &Path) -> Result<(), KeyError> {
    let key: [u8; 32] = rand::random();
    write_new(path, format!("{}\n", hex::encode(key)).as_bytes(), 0o600)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    crate::write_durably(path, bytes, mode).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
            "already exists; keyward never overwrites a key".to_owned()
        } else {
            format!("cannot write: {e}")
        };
        key_err(path, why)
    })
}
