//! The head checkpoint: the last synced record's sequence number and hash,
//! signed with the log's key, kept in `<dir>/head.json`. The chain proves
//! nothing about records deleted from its end; the head does, as far as
//! it is kept where the deleter cannot reach it (`keyward audit head`
//! prints it so CI can store it off the machine), and the daemon compares
//! the log with it at every start.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::keys::{Signer, Verifier};

/// The `schema` of a head.
pub const HEAD_SCHEMA: &str = "keyward.evidence.head.v1";
/// The head's file name in the log directory.
pub const HEAD_FILE: &str = "head.json";

/// A signed head checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// [`HEAD_SCHEMA`].
    pub schema: String,
    /// The log it belongs to (`<dir>/log_id`).
    pub log_id: String,
    /// The last record's sequence number (0: no records yet).
    pub seq: u64,
    /// The last record's hash ("" with no records).
    pub hash: String,
    /// When it was written, RFC 3339 UTC.
    pub ts: String,
    /// Absent when the log is unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<HeadSig>,
}

/// A head's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadSig {
    /// `HMAC-SHA256` or `Ed25519`.
    pub alg: String,
    /// The key id, as in records.
    pub key_id: String,
    /// Hex signature of [`Head::signed_message`].
    pub value: String,
}

/// A record a verifier expects to find: `SEQ:HASH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// Its sequence number (1 or more).
    pub seq: u64,
    /// Its hash (64 lowercase hex digits).
    pub hash: String,
}

impl std::fmt::Display for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

impl std::str::FromStr for Anchor {
    type Err = String;

    /// Parses `SEQ:HASH` as `keyward audit head` prints it.
    fn from_str(s: &str) -> Result<Self, String> {
        let expected =
            "expected SEQ:HASH as `keyward audit head` prints it, e.g. 42:9f86d0… (64 hex digits)";
        let (seq, hash) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("{s:?} has no ':'; {expected}"))?;
        let seq: u64 =
            seq.parse().ok().filter(|&n| n >= 1).ok_or_else(|| {
                format!("{seq:?} is not a sequence number (1 or more); {expected}")
            })?;
        let hash = hash.to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "{hash:?} is not a record hash (64 hex digits); {expected}"
            ));
        }
        Ok(Anchor { seq, hash })
    }
}

impl Head {
    /// A head for `(seq, hash)` of log `log_id`, signed when `signer` is given.
    pub fn new(log_id: &str, seq: u64, hash: &str, signer: Option<&Signer>) -> Self {
        let mut head = Head {
            schema: HEAD_SCHEMA.to_owned(),
            log_id: log_id.to_owned(),
            seq,
            hash: hash.to_owned(),
            ts: humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
            sig: None,
        };
        head.sig = signer.map(|s| HeadSig {
            alg: s.alg().to_owned(),
            key_id: s.key_id().to_owned(),
            value: s.sign(head.signed_message().as_bytes()),
        });
        head
    }

    /// What the signature covers: schema, log id, seq, hash and time, one
    /// per line.
    pub fn signed_message(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}\n{}",
            self.schema, self.log_id, self.seq, self.hash, self.ts
        )
    }

    /// The record this head names, or `None` for an empty log.
    pub fn anchor(&self) -> Option<Anchor> {
        (self.seq > 0).then(|| Anchor {
            seq: self.seq,
            hash: self.hash.clone(),
        })
    }

    /// Parses a head file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let head: Head = serde_json::from_str(text)
            .map_err(|e| format!("not a keyward head checkpoint: {e}"))?;
        if head.schema != HEAD_SCHEMA {
            return Err(format!(
                "schema is {:?}, expected {HEAD_SCHEMA:?}",
                head.schema
            ));
        }
        let well_formed = if head.seq == 0 {
            head.hash.is_empty()
        } else {
            format!("{}:{}", head.seq, head.hash)
                .parse::<Anchor>()
                .is_ok()
        };
        if !well_formed {
            return Err(format!(
                "hash {:?} is not a record hash (64 hex digits) for seq {}",
                head.hash, head.seq
            ));
        }
        Ok(head)
    }

    /// Reads `<dir>/head.json`; `Ok(None)` when there is none.
    pub fn read(dir: &Path) -> Result<Option<Self>, String> {
        let path = dir.join(HEAD_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Head::parse(&text)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
        }
    }

    /// Replaces `<dir>/head.json` atomically: a temporary file, fsync,
    /// rename, fsync of the directory.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let tmp = dir.join(format!("{HEAD_FILE}.tmp"));
        let mut text = serde_json::to_string(self).map_err(std::io::Error::other)?;
        text.push('\n');
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(HEAD_FILE))?;
        std::fs::File::open(dir)?.sync_all()
    }

    /// Checks the signature with one of `keys` (the one with the head's
    /// algorithm and key id). An unsigned head passes only when no key is
    /// given: with keys, the log is expected to be signed.
    pub fn check(&self, keys: &[Verifier]) -> Result<(), String> {
        let Some(sig) = &self.sig else {
            return match keys.first() {
                None => Ok(()),
                Some(k) => Err(format!(
                    "the head is unsigned but a {} key was given",
                    k.alg()
                )),
            };
        };
        if keys.is_empty() {
            return Err(format!(
                "the head is signed ({}, key id {:?}); give its key (--public-key or --hmac-key-file) to check it",
                sig.alg, sig.key_id
            ));
        }
        let key = crate::keys::find(keys, &sig.alg, &sig.key_id)?;
        if key.verify(self.signed_message().as_bytes(), &sig.value) {
            Ok(())
        } else {
            Err(format!(
                "the head's signature does not verify with key {:?}: it was forged or altered",
                sig.key_id
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_parse_or_say_what_is_wrong() {
        let hash = "ab".repeat(32);
        let ok: Anchor = format!("42:{}", hash.to_uppercase()).parse().unwrap();
        assert_eq!(
            ok,
            Anchor {
                seq: 42,
                hash: hash.clone()
            }
        );
        assert_eq!(ok.to_string(), format!("42:{hash}"));
        for (bad, says) in [
            ("42", "has no ':'"),
            (&format!("x:{hash}") as &str, "is not a sequence number"),
            (&format!("0:{hash}"), "is not a sequence number"),
            ("-1:ab", "is not a sequence number"),
            ("42:abc", "is not a record hash"),
            (&format!("42:{}", "zz".repeat(32)), "is not a record hash"),
        ] {
            let err = bad.parse::<Anchor>().unwrap_err();
            assert!(
                err.contains(says) && err.contains("SEQ:HASH"),
                "{bad}: {err}"
            );
        }
    }
}
