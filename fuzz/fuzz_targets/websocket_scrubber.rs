//! The WebSocket frame scrubber. Built frames, differentially: messages
//! fragmented any way, masked or not, with control frames between the
//! fragments, must come out as the same frames with each message (and
//! each control payload) masked as a naive scrub over the whole of it
//! would, and hold no needle. Raw bytes: no panic, never more bytes out
//! than in.
#![no_main]

use keyward_fuzz::{
    Input, MAX_TEXT, Rewrite, block_on, contains, naive_scrub, needles, scrubber, secrets, text,
};
use keyward_proxy::fuzzing::{Scrubber, relay_scrubbed};
use libfuzzer_sys::fuzz_target;

struct Spec {
    fin: bool,
    opcode: u8,
    key: Option<[u8; 4]>,
    payload: Vec<u8>,
    /// The message it belongs to (`None` for control frames).
    message: Option<usize>,
}

fn encode(spec: &Spec, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![u8::from(spec.fin) << 7 | spec.opcode];
    let mask_bit = if spec.key.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(mask_bit | n as u8),
        n if n < 65536 => {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match spec.key {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

fn relay(scrubber: &Scrubber, wire: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    block_on(relay_scrubbed(wire, &mut out, scrubber))?;
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let raw = input.byte() & 1 == 1;
    let Some(secrets) = secrets(&mut input) else {
        return;
    };
    let scrubber = scrubber(&secrets);
    if raw {
        if let Ok(out) = relay(&scrubber, input.0) {
            assert!(out.len() <= input.0.len(), "more bytes out than in");
        }
        return;
    }

    let needles = needles(&secrets);
    let mut specs: Vec<Spec> = Vec::new();
    let mut messages: Vec<Vec<u8>> = Vec::new();
    let mut open: Option<usize> = None;
    // Few enough frames that the relay's bound on held-back frames is
    // never what ends it.
    for _ in 0..24 {
        if input.is_empty() || specs.iter().map(|s| s.payload.len()).sum::<usize>() > MAX_TEXT {
            break;
        }
        let kind = input.byte();
        let key = (kind & 0x08 != 0).then(|| {
            let k = input.bytes(4);
            [k.first(), k.get(1), k.get(2), k.get(3)].map(|b| b.copied().unwrap_or(0))
        });
        let items = usize::from(input.byte());
        let mut payload = text(&mut input, &needles, items);
        if kind & 0x03 == 0 {
            payload.truncate(125);
            let opcode = if kind & 0x04 != 0 { 9 } else { 10 };
            specs.push(Spec {
                fin: true,
                opcode,
                key,
                payload,
                message: None,
            });
            continue;
        }
        let fin = kind & 0x04 != 0;
        let (opcode, message) = match open {
            Some(m) => (0, m),
            None => {
                messages.push(Vec::new());
                (if kind & 0x10 != 0 { 2 } else { 1 }, messages.len() - 1)
            }
        };
        messages[message].extend_from_slice(&payload);
        open = (!fin).then_some(message);
        specs.push(Spec {
            fin,
            opcode,
            key,
            payload,
            message: Some(message),
        });
    }

    let wire: Vec<u8> = specs.iter().flat_map(|s| encode(s, &s.payload)).collect();
    let scrubbed: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| naive_scrub(m, &needles, Rewrite::Mask))
        .collect();
    for message in &scrubbed {
        for (needle, _) in &needles {
            assert!(!contains(message, needle), "a needle got through");
        }
    }
    // Each scrubbed message handed back out fragment by fragment.
    let mut rest: Vec<&[u8]> = scrubbed.iter().map(Vec::as_slice).collect();
    let mut expected = Vec::new();
    for spec in &specs {
        let payload = match spec.message {
            Some(m) => {
                let (head, tail) = rest[m].split_at(spec.payload.len());
                rest[m] = tail;
                head.to_vec()
            }
            None => naive_scrub(&spec.payload, &needles, Rewrite::Mask),
        };
        expected.extend(encode(spec, &payload));
    }

    let out = relay(&scrubber, &wire).expect("well-formed frames relay");
    assert!(
        out == expected,
        "relayed frames differ from a naive scrub of each message"
    );
});
