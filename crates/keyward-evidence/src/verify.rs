//! `keyward audit verify`: every segment, every line, every link.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::head::Anchor;
use crate::keys::Verifier;
use crate::log::list_segments;
use crate::record::{Body, Data, SCHEMA, signed_message};

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyError {
    /// Segment file name.
    pub segment: String,
    /// 1-based line.
    pub line: usize,
    /// `json`, `schema`, `sequence`, `prev_hash`, `hash`,
    /// `signature_algorithm`, `key_id`, `signature_without_key`,
    /// `signature_missing`, `signature`, `expected_head`, or `head` (the
    /// log's own head checkpoint was altered; added by `keyward audit verify`).
    pub check: &'static str,
    /// What failed, for people.
    pub message: String,
}

/// The outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The directory verified.
    pub path: PathBuf,
    /// No errors.
    pub valid: bool,
    /// Records read.
    pub records: u64,
    /// Records carrying a signature.
    pub signed_records: u64,
    /// First sequence number.
    pub first_seq: Option<u64>,
    /// Last sequence number.
    pub last_seq: Option<u64>,
    /// Segment files.
    pub segments: usize,
    /// Torn tails moved aside at some start (`*.torn`), for information.
    pub torn_files: Vec<String>,
    /// Problems, in file order (at most 1,000 listed).
    pub errors: Vec<VerifyError>,
    /// All problems, listed or not.
    pub error_count: u64,
    /// The record the log had to contain (`--expect-head`/`--head`), as
    /// `SEQ:HASH`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_head: Option<String>,
    /// Where that head came from ([`VerifyOptions::head_source`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_source: Option<String>,
}

/// What [`verify`] checks besides every record and link.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Every record must carry a valid signature by one of these (several
    /// when the log spans a key rotation). Empty: signed records are
    /// errors (`signature_without_key`) because their signatures go
    /// unchecked.
    pub keys: Vec<Verifier>,
    /// A record the log must contain, taken from a head stored elsewhere:
    /// a log that ends before it lost records at its tail (`expected_head`).
    pub expect_head: Option<Anchor>,
    /// Where `expect_head` came from (a file, the command line), for the
    /// report.
    pub head_source: Option<String>,
}

const MAX_LISTED: usize = 1000;

/// What one line says about itself, checked without knowing its
/// neighbours (so lines can be examined in parallel).
struct Examined {
    line: usize,
    seq: Option<u64>,
    hash: String,
    prev_hash: Option<String>,
    signed: bool,
    /// json, schema, hash and signature problems, in that order.
    errors: Vec<(&'static str, String)>,
}

#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    schema: Cow<'a, str>,
    seq: u64,
    #[serde(borrow)]
    hash: Cow<'a, str>,
    #[serde(borrow)]
    prev_hash: Cow<'a, str>,
    #[serde(rename = "data")]
    _data: serde::de::IgnoredAny,
    #[serde(borrow, default)]
    sig: Option<SigEnvelope<'a>>,
}

#[derive(serde::Deserialize)]
struct SigEnvelope<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow)]
    key_id: Cow<'a, str>,
    #[serde(borrow)]
    value: Cow<'a, str>,
}

/// The fast path for well-formed lines. keyward writes each record in
/// canonical form, so the hashed text is the line without its `hash` and
/// `sig` members: one hash over a slice, no re-serialisation. A line that
/// does not check out this way (tampered, or rewritten in another form) is
/// examined in full by [`examine_slow`].
fn examine(line: usize, text: &[u8], keys: &[Verifier], scratch: &mut String) -> Examined {
    let Ok(env) = serde_json::from_slice::<Envelope<'_>>(text) else {
        return examine_slow(line, text, keys, scratch);
    };
    let Some(body) = canonical_body(text, &env.hash) else {
        return examine_slow(line, text, keys, scratch);
    };
    let computed =
        hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body).as_ref());
    if env.schema != SCHEMA || computed != env.hash {
        return examine_slow(line, text, keys, scratch);
    }
    let sig = env
        .sig
        .as_ref()
        .map(|s| (s.alg.as_ref(), s.key_id.as_ref(), s.value.as_ref()));
    let mut out = Examined {
        line,
        seq: Some(env.seq),
        hash: env.hash.to_string(),
        prev_hash: Some(env.prev_hash.to_string()),
        signed: sig.is_some(),
        errors: Vec::new(),
    };
    if let Some(problem) = signature_problem(sig, keys, &env.prev_hash, &env.hash) {
        out.errors.push(problem);
    }
    out
}

/// The line without `,"hash":"…"` and `,"sig":{…}`: both come after `data`
/// (members are in canonical order), so they are found from the end.
fn canonical_body(text: &[u8], hash: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(text).ok()?;
    let hash_member = format!(",\"hash\":\"{hash}\"");
    let h = text.rfind(&hash_member)?;
    let mut body = String::with_capacity(text.len());
    body.push_str(&text[..h]);
    let rest = &text[h + hash_member.len()..];
    match rest.rfind(",\"sig\":{") {
        Some(s) => {
            let end = s + rest[s..].find('}')? + 1;
            body.push_str(&rest[..s]);
            body.push_str(&rest[end..]);
        }
        None => body.push_str(rest),
    }
    Some(body.into_bytes())
}

fn examine_slow(line: usize, text: &[u8], keys: &[Verifier], scratch: &mut String) -> Examined {
    let mut out = Examined {
        line,
        seq: None,
        hash: String::new(),
        prev_hash: None,
        signed: false,
        errors: Vec::new(),
    };
    let value: Value = match serde_json::from_slice(text) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            out.errors.push(("json", "not a JSON object".into()));
            return out;
        }
        Err(e) => {
            out.errors.push(("json", format!("not JSON: {e}")));
            return out;
        }
    };
    if value["schema"] != SCHEMA {
        out.errors.push((
            "schema",
            format!("schema is {}, expected {SCHEMA}", value["schema"]),
        ));
    }
    out.seq = value["seq"].as_u64();
    out.hash = value["hash"].as_str().unwrap_or_default().to_owned();
    let prev_hash = value["prev_hash"].as_str();
    out.prev_hash = prev_hash.map(str::to_owned);
    let run_id = match &value["run_id"] {
        Value::Null => Some(None),
        Value::String(r) => Some(Some(r.as_str())),
        _ => None,
    };
    let fields = (
        out.seq,
        value["ts"].as_str(),
        value["kind"].as_str(),
        run_id,
        value.get("data"),
        prev_hash,
    );
    if let (Some(seq), Some(ts), Some(kind), Some(run_id), Some(data), Some(prev_hash)) = fields {
        let computed = Body {
            seq,
            ts,
            kind,
            run_id,
            data: Data::Value(data),
            prev_hash,
        }
        .hash(scratch);
        if computed != out.hash {
            out.errors.push((
                "hash",
                format!(
                    "hash {:?} does not match the record's content ({computed})",
                    out.hash
                ),
            ));
        }
    } else {
        out.errors.push((
            "hash",
            "a hashed field (seq, ts, kind, run_id, data, prev_hash) is missing or mistyped".into(),
        ));
    }
    let sig = value.get("sig").filter(|s| !s.is_null()).map(|sig| {
        let field = |k: &str| sig[k].as_str().unwrap_or_default();
        (field("alg"), field("key_id"), field("value"))
    });
    out.signed = sig.is_some();
    if let Some(problem) = signature_problem(sig, keys, prev_hash.unwrap_or_default(), &out.hash) {
        out.errors.push(problem);
    }
    out
}

/// `sig` is `(alg, key_id, value)`. `keys` are every key the log may be
/// signed with (several when it spans a key rotation).
fn signature_problem(
    sig: Option<(&str, &str, &str)>,
    keys: &[Verifier],
    prev_hash: &str,
    hash: &str,
) -> Option<(&'static str, String)> {
    let Some((alg, key_id, signature)) = sig else {
        return keys.first().map(|v| {
            (
                "signature_missing",
                format!("record is unsigned but a {} key was given", v.alg()),
            )
        });
    };
    if keys.is_empty() {
        return Some((
            "signature_without_key",
            "record is signed but no key was given (--hmac-key-file or --public-key)".into(),
        ));
    }
    let verifier = match crate::keys::find(keys, alg, key_id) {
        Ok(v) => v,
        Err(message) if keys.iter().any(|k| k.alg() == alg) => return Some(("key_id", message)),
        Err(message) => return Some(("signature_algorithm", message)),
    };
    (!verifier.verify(signed_message(prev_hash, hash).as_bytes(), signature))
        .then(|| ("signature", "the signature does not verify".into()))
}

struct Chain {
    report: Report,
    prev: Option<(u64, String)>,
    expect_head: Option<Anchor>,
    /// The record `expect_head` names turned up.
    head_found: bool,
}

impl Chain {
    fn error(&mut self, segment: &str, line: usize, check: &'static str, message: String) {
        self.report.error_count += 1;
        if self.report.errors.len() < MAX_LISTED {
            self.report.errors.push(VerifyError {
                segment: segment.to_owned(),
                line,
                check,
                message,
            });
        }
    }

    /// Links `e` to the record before it: sequence and previous hash.
    fn link(&mut self, segment: &str, e: Examined) {
        self.report.records += 1;
        self.report.signed_records += u64::from(e.signed);
        let not_json = e.errors.first().is_some_and(|(c, _)| *c == "json");
        let mut errors = e.errors.into_iter().peekable();
        // json and schema problems come first.
        while let Some((check, message)) = errors.next_if(|(c, _)| matches!(*c, "json" | "schema"))
        {
            self.error(segment, e.line, check, message);
        }
        if not_json {
            // Nothing to link; the next record is compared with the last good one.
            return;
        }
        let expected_seq = self.prev.as_ref().map_or(1, |(s, _)| s + 1);
        match e.seq {
            Some(s) if s == expected_seq => {}
            Some(s) => self.error(
                segment,
                e.line,
                "sequence",
                format!("seq {s}, expected {expected_seq} (a record was deleted, duplicated or reordered)"),
            ),
            None => self.error(segment, e.line, "sequence", "no seq".into()),
        }
        let expected_prev = self.prev.as_ref().map_or("", |(_, h)| h.as_str());
        if e.prev_hash.as_deref() != Some(expected_prev) {
            let found = e
                .prev_hash
                .as_ref()
                .map_or("missing".into(), |p| format!("{p:?}"));
            self.error(
                segment,
                e.line,
                "prev_hash",
                format!(
                    "prev_hash {found} does not match the previous record's hash {expected_prev:?}"
                ),
            );
        }
        for (check, message) in errors {
            self.error(segment, e.line, check, message);
        }
        if let Some(anchor) = &self.expect_head
            && e.seq == Some(anchor.seq)
        {
            self.head_found = true;
            if e.hash != anchor.hash {
                let message = format!(
                    "record {} has hash {:?}, but the expected head says {:?}: the log was rewritten from here",
                    anchor.seq, e.hash, anchor.hash
                );
                self.error(segment, e.line, "expected_head", message);
            }
        }
        self.report.first_seq = self.report.first_seq.or(e.seq);
        self.report.last_seq = e.seq.or(self.report.last_seq);
        self.prev = Some((e.seq.unwrap_or(expected_seq), e.hash));
    }
}

/// Examines the lines of one segment on every core; results in line order.
fn examine_segment(bytes: &[u8], keys: &[Verifier]) -> Vec<Examined> {
    let lines: Vec<(usize, &[u8])> = bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let chunk = lines.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = lines
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut scratch = String::new();
                    part.iter()
                        .map(|(n, text)| examine(*n, text, keys, &mut scratch))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// [`verify`] with at most one key and no expected head.
pub fn verify_dir(dir: &Path, verifier: Option<&Verifier>) -> std::io::Result<Report> {
    let options = VerifyOptions {
        keys: verifier.into_iter().cloned().collect(),
        expect_head: None,
        head_source: None,
    };
    verify(dir, &options)
}

/// Verifies every segment in `dir`: every line, every link, every
/// signature, and (with [`VerifyOptions::expect_head`]) that no record up
/// to the expected head is missing.
pub fn verify(dir: &Path, options: &VerifyOptions) -> std::io::Result<Report> {
    let segments = list_segments(dir)?;
    let mut torn_files: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.contains(".jsonl.torn"))
        .collect();
    torn_files.sort();
    let mut chain = Chain {
        report: Report {
            path: dir.to_owned(),
            valid: false,
            records: 0,
            signed_records: 0,
            first_seq: None,
            last_seq: None,
            segments: segments.len(),
            torn_files,
            errors: Vec::new(),
            error_count: 0,
            expected_head: options.expect_head.as_ref().map(Anchor::to_string),
            head_source: options
                .expect_head
                .as_ref()
                .and(options.head_source.clone()),
        },
        prev: None,
        expect_head: options.expect_head.clone(),
        head_found: false,
    };
    let mut last_segment = String::new();
    for (_, path) in &segments {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = std::fs::read(path)?;
        let (complete, torn) = match bytes.iter().rposition(|&b| b == b'\n') {
            Some(i) => (&bytes[..i], &bytes[i + 1..]),
            None => (&bytes[..0], &bytes[..]),
        };
        if !complete.is_empty() || bytes.first() == Some(&b'\n') {
            for examined in examine_segment(complete, &options.keys) {
                chain.link(&name, examined);
            }
        }
        if !torn.is_empty() {
            let line = complete.iter().filter(|&&b| b == b'\n').count()
                + 1
                + usize::from(!complete.is_empty());
            chain.error(
                &name,
                line,
                "json",
                "last line is not terminated (torn record)".into(),
            );
        }
        last_segment = name;
    }
    if let Some(anchor) = &options.expect_head
        && !chain.head_found
    {
        let message = match chain.report.last_seq {
            Some(last) if last >= anchor.seq => format!(
                "no record has seq {}, the expected head: it was deleted",
                anchor.seq
            ),
            last => format!(
                "the log {}, but the expected head is seq {}: records up to it were deleted from the tail",
                last.map_or("has no records".to_owned(), |s| format!("ends at seq {s}")),
                anchor.seq
            ),
        };
        chain.error(&last_segment, 0, "expected_head", message);
    }
    chain.report.valid = chain.report.error_count == 0;
    Ok(chain.report)
}
