//! What the fuzz targets share: a reader of fuzz input, an executor for
//! futures that never wait, and the oracle for the scrubbers — the needles
//! a secret gives, worked out here independently of the scrubber, and a
//! naive replace over a whole input.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use keyward_proxy::fuzzing::Scrubber;

/// Takes bytes off the front of the fuzz input; zeros once it runs out.
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    /// Like [`Input::byte`], from the end.
    pub fn byte_back(&mut self) -> u8 {
        match self.0.split_last() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    /// Like [`Input::bytes`], from the end (the bytes keep their order).
    pub fn bytes_back(&mut self, n: usize) -> &'a [u8] {
        let (rest, tail) = self.0.split_at(self.0.len() - n.min(self.0.len()));
        self.0 = rest;
        tail
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Runs a future whose I/O is all in memory (so it never waits) to its end.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("an in-memory future kept waiting");
}

/// What the scrubbers replace an encoded secret with.
pub const REDACTED: &[u8] = b"[REDACTED]";

/// A run's secrets and what the raw form of each is replaced by (its
/// placeholder), read from the end of the fuzz input (so that the
/// fuzzer's edits of the rest keep them, and [`scrubber`] has them built). `None` when the input describes
/// secrets the oracle cannot judge: the "no needle in the output" property
/// holds only when no needle overlaps a replacement, which the brackets
/// around every replacement (and a mask being `[REDACTED]` and `*`)
/// guarantee as long as no secret holds a bracket or `*` and
/// no needle is part of a replacement (as with real, random placeholders).
pub fn secrets(input: &mut Input<'_>) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let count = usize::from(input.byte_back() % 3) + 1;
    let mut pairs = Vec::new();
    for i in 0..count {
        let len = usize::from(input.byte_back() % 40) + 1;
        let secret = input.bytes_back(len).to_vec();
        if secret.is_empty() || secret.iter().any(|b| matches!(b, b'[' | b']' | b'*')) {
            return None;
        }
        pairs.push((secret, format!("[kw_ph_{i}]").into_bytes()));
    }
    let needles = needles(&pairs);
    let inside_replacement = needles.iter().any(|(needle, _)| {
        pairs
            .iter()
            .map(|(_, r)| r.as_slice())
            .chain([REDACTED])
            .any(|r| contains(r, needle))
    });
    (!inside_replacement).then_some(pairs)
}

/// The scrubber of `secrets`, as a run context builds it. Building its
/// automata costs far more than scrubbing one input, so the last few are
/// kept: inputs mutated outside their secrets reuse them.
pub fn scrubber(secrets: &[(Vec<u8>, Vec<u8>)]) -> Arc<Scrubber> {
    thread_local! {
        static BUILT: RefCell<HashMap<Vec<(Vec<u8>, Vec<u8>)>, Arc<Scrubber>>> =
            RefCell::new(HashMap::new());
    }
    BUILT.with_borrow_mut(|built| {
        if let Some(scrubber) = built.get(secrets) {
            return scrubber.clone();
        }
        if built.len() >= 512 {
            built.clear();
        }
        let pairs: Vec<(&[u8], &[u8])> = secrets
            .iter()
            .map(|(s, r)| (s.as_slice(), r.as_slice()))
            .collect();
        let scrubber = Arc::new(Scrubber::new(&pairs).expect("there is a secret"));
        built.insert(secrets.to_vec(), scrubber.clone());
        scrubber
    })
}

/// Every needle of `secrets` with its replacement, in the scrubber's
/// order (raw secrets first; a needle found twice keeps its first
/// replacement): the raw secret; base64 standard and URL-safe at each of
/// the three alignments it can start at inside a longer text (only the
/// characters that depend on the secret alone); hex in both cases;
/// percent-encoding keeping `-._~` or not, with upper or lower hex.
/// Encoded forms shorter than 8 bytes are left out.
pub fn needles(secrets: &[(Vec<u8>, Vec<u8>)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut add = |needle: Vec<u8>, replacement: &[u8]| {
        if !needle.is_empty() && !out.iter().any(|(n, _)| *n == needle) {
            out.push((needle, replacement.to_vec()));
        }
    };
    for (secret, replacement) in secrets {
        add(secret.clone(), replacement);
    }
    for (secret, _) in secrets {
        for form in encoded(secret) {
            if form.len() >= 8 {
                add(form, REDACTED);
            }
        }
    }
    out
}

fn encoded(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = Vec::new();
    for engine in [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        // With `k` bytes before the secret, the first character that
        // depends on the secret alone is the one after the bits the
        // prefix shares with it; the last is the one whose bits are all
        // in the secret.
        for k in 0..3usize {
            let mut shifted = vec![0u8; k];
            shifted.extend_from_slice(secret);
            let text = engine.encode(&shifted);
            let first = (k * 8).div_ceil(6);
            let end = shifted.len() * 8 / 6;
            if end > first {
                forms.push(text.as_bytes()[first..end].to_vec());
            }
        }
    }
    forms.push(hex::upper(secret));
    forms.push(hex::lower(secret));
    for keep in [&b"-._~"[..], b""] {
        for upper in [true, false] {
            let mut text = Vec::new();
            for &b in secret {
                if b.is_ascii_alphanumeric() || keep.contains(&b) {
                    text.push(b);
                } else {
                    text.push(b'%');
                    let h = if upper {
                        hex::upper(&[b])
                    } else {
                        hex::lower(&[b])
                    };
                    text.extend_from_slice(&h);
                }
            }
            if text != secret {
                forms.push(text);
            }
        }
    }
    forms
}

mod hex {
    pub fn lower(bytes: &[u8]) -> Vec<u8> {
        bytes
            .iter()
            .flat_map(|b| format!("{b:02x}").into_bytes())
            .collect()
    }
    pub fn upper(bytes: &[u8]) -> Vec<u8> {
        bytes
            .iter()
            .flat_map(|b| format!("{b:02X}").into_bytes())
            .collect()
    }
}

/// Whether `hay` holds `needle`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// How a found needle is rewritten.
#[derive(Clone, Copy)]
pub enum Rewrite {
    /// By its replacement (response bodies and headers).
    Replace,
    /// By a mask of the same length (WebSocket frames).
    Mask,
}

/// The naive scrub of a whole input: at each position the longest needle
/// starting there, if any, is rewritten; otherwise the byte stays.
pub fn naive_scrub(input: &[u8], needles: &[(Vec<u8>, Vec<u8>)], rewrite: Rewrite) -> Vec<u8> {
    // Needles by first byte, only to keep the fuzzer fast.
    let mut by_first: Vec<Vec<&(Vec<u8>, Vec<u8>)>> = vec![Vec::new(); 256];
    for needle in needles {
        by_first[usize::from(needle.0[0])].push(needle);
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let found = by_first[usize::from(input[i])]
            .iter()
            .filter(|(n, _)| input[i..].starts_with(n))
            .max_by_key(|(n, _)| n.len());
        match (found, rewrite) {
            (Some((n, r)), Rewrite::Replace) => {
                out.extend_from_slice(r);
                i += n.len();
            }
            (Some((n, _)), Rewrite::Mask) => {
                out.extend_from_slice(&mask(n.len()));
                i += n.len();
            }
            (None, _) => {
                out.push(input[i]);
                i += 1;
            }
        }
    }
    out
}

/// `[REDACTED]` padded with `*` to `len` bytes, or all `*` when shorter.
pub fn mask(len: usize) -> Vec<u8> {
    let mut m = if len < REDACTED.len() {
        Vec::new()
    } else {
        REDACTED.to_vec()
    };
    m.resize(len, b'*');
    m
}

/// The longest text [`text`] builds: past the scrubbers' 64 KiB reads.
pub const MAX_TEXT: usize = 80 * 1024;

/// Text built from fuzz input in which the needles are easy to reach: up
/// to `items` items, each a literal byte, a whole needle (0xFE, index), a
/// needle's first bytes (0xFD, index, length) or a run of filler (0xFC,
/// count of 512-byte blocks); at most about [`MAX_TEXT`] bytes.
pub fn text(input: &mut Input<'_>, needles: &[(Vec<u8>, Vec<u8>)], items: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..items {
        if input.is_empty() || out.len() >= MAX_TEXT {
            break;
        }
        match input.byte() {
            0xFE => {
                let (n, _) = &needles[usize::from(input.byte()) % needles.len()];
                out.extend_from_slice(n);
            }
            0xFD => {
                let (n, _) = &needles[usize::from(input.byte()) % needles.len()];
                let len = usize::from(input.byte()) % n.len();
                out.extend_from_slice(&n[..len]);
            }
            0xFC => {
                let blocks = usize::from(input.byte() % 160);
                out.resize(out.len() + blocks * 512, b'x');
            }
            b => out.push(b),
        }
    }
    out
}
