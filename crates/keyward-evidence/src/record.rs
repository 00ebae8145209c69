//! One evidence record: its canonical body, hash, signature and line.

use aws_lc_rs::digest;
use serde_json::Value;

use crate::jcs::{self, CanonicalObject};
use crate::keys::Signer;

/// The `schema` of every record.
pub const SCHEMA: &str = "keyward.evidence.v1";

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A policy decision.
    Decision,
    /// A proxied request.
    Egress,
    /// A run created or ended.
    Run,
    /// A secret written or removed.
    Secret,
    /// The vault created, sealed, unsealed or rolled back.
    Vault,
    /// The daemon itself (start, reload, log repair).
    Admin,
}

impl Kind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Decision => "decision",
            Kind::Egress => "egress",
            Kind::Run => "run",
            Kind::Secret => "secret",
            Kind::Vault => "vault",
            Kind::Admin => "admin",
        }
    }

    /// All kinds, for help texts and validation.
    pub const ALL: [Kind; 6] = [
        Kind::Decision,
        Kind::Egress,
        Kind::Run,
        Kind::Secret,
        Kind::Vault,
        Kind::Admin,
    ];

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The fields a record's hash covers.
pub struct Body<'a> {
    /// Sequence number, from 1.
    pub seq: u64,
    /// RFC 3339 UTC.
    pub ts: &'a str,
    /// Kind name.
    pub kind: &'a str,
    /// The run, if any.
    pub run_id: Option<&'a str>,
    /// Payload.
    pub data: Data<'a>,
    /// The previous record's hash ("" for the first).
    pub prev_hash: &'a str,
}

/// A record's payload, as it is handed to the log: a JSON value, or an
/// object already written in canonical form ([`CanonicalObject`]).
#[derive(Debug)]
pub enum Payload {
    /// Canonicalized when the record is written.
    Value(Value),
    /// Canonical already.
    Canonical(String),
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Payload::Value(value)
    }
}

impl From<CanonicalObject> for Payload {
    fn from(object: CanonicalObject) -> Self {
        Payload::Canonical(object.finish())
    }
}

impl Payload {
    pub(crate) fn as_data(&self) -> Data<'_> {
        match self {
            Payload::Value(value) => Data::Value(value),
            Payload::Canonical(text) => Data::Canonical(text),
        }
    }
}

/// A payload borrowed for hashing and writing.
#[derive(Clone, Copy)]
pub enum Data<'a> {
    /// To be canonicalized.
    Value(&'a Value),
    /// Canonical already.
    Canonical(&'a str),
}

impl Data<'_> {
    /// The canonical text, written into `buf` when it must be made.
    fn canonical<'b>(self, buf: &'b mut String) -> &'b str
    where
        Self: 'b,
    {
        match self {
            Data::Value(value) => {
                jcs::write(value, buf);
                buf
            }
            Data::Canonical(text) => text,
        }
    }
}

/// A signature as recorded.
pub struct Sig<'a> {
    /// Algorithm name.
    pub alg: &'a str,
    /// Key id.
    pub key_id: &'a str,
    /// Hex value.
    pub value: &'a str,
}

impl Body<'_> {
    /// The canonical JSON of the record, `data` already canonical, with
    /// `hash` and `sig` (members in JCS order), or without both when `hash`
    /// is `None`.
    fn render_with(&self, data: &str, hash: Option<&str>, sig: Option<&Sig<'_>>, out: &mut String) {
        out.push_str("{\"data\":");
        out.push_str(data);
        if let Some(hash) = hash {
            out.push_str(",\"hash\":");
            plain_str(hash, out);
        }
        out.push_str(",\"kind\":");
        jcs::write_str(self.kind, out);
        out.push_str(",\"prev_hash\":");
        jcs::write_str(self.prev_hash, out);
        out.push_str(",\"run_id\":");
        match self.run_id {
            Some(r) => jcs::write_str(r, out),
            None => out.push_str("null"),
        }
        out.push_str(",\"schema\":");
        plain_str(SCHEMA, out);
        out.push_str(",\"seq\":");
        out.push_str(&self.seq.to_string());
        if let (Some(_), Some(sig)) = (hash, sig) {
            out.push_str(",\"sig\":{\"alg\":");
            jcs::write_str(sig.alg, out);
            out.push_str(",\"key_id\":");
            jcs::write_str(sig.key_id, out);
            out.push_str(",\"value\":");
            jcs::write_str(sig.value, out);
            out.push('}');
        }
        out.push_str(",\"ts\":");
        jcs::write_str(self.ts, out);
        out.push('}');
    }

    /// Hex SHA-256 of the canonical record without `hash` and `sig`.
    pub fn hash(&self, scratch: &mut String) -> String {
        let mut buf = String::new();
        let data = self.data.canonical(&mut buf);
        self.hash_with(data, scratch)
    }

    fn hash_with(&self, data: &str, scratch: &mut String) -> String {
        scratch.clear();
        self.render_with(data, None, None, scratch);
        lower_hex(digest::digest(&digest::SHA256, scratch.as_bytes()).as_ref())
    }

    /// The complete line (no newline), signed when `signer` is given.
    /// Returns the line and the record's hash. The payload is made
    /// canonical once, for both the hash and the line.
    pub fn seal(&self, signer: Option<&Signer>, scratch: &mut String) -> (String, String) {
        let mut buf = String::new();
        let data = self.data.canonical(&mut buf);
        let hash = self.hash_with(data, scratch);
        let value = signer.map(|s| s.sign(signed_message(self.prev_hash, &hash).as_bytes()));
        let sig = signer.zip(value.as_deref()).map(|(s, v)| Sig {
            alg: s.alg(),
            key_id: s.key_id(),
            value: v,
        });
        let mut line = String::with_capacity(scratch.len() + 256);
        self.render_with(data, Some(&hash), sig.as_ref(), &mut line);
        (line, hash)
    }
}

/// A string keyward makes itself (the hash it computed, the schema name)
/// as JSON: such strings never need escaping, so they are not scanned for
/// it. Never for a field read back from a file (verify renders those).
fn plain_str(s: &str, out: &mut String) {
    debug_assert!(s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\'));
    out.push('"');
    out.push_str(s);
    out.push('"');
}

/// Lowercase hex, without the per-character iterator of `hex::encode`
/// (this runs once per record).
fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// What a signature covers: `schema + "\n" + prev_hash + "\n" + hash`.
pub fn signed_message(prev_hash: &str, hash: &str) -> String {
    format!("{SCHEMA}\n{prev_hash}\n{hash}")
}
