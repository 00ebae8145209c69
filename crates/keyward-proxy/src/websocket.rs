//! WebSocket scrubbing (RFC 6455): the frames the server sends are parsed
//! and every secret in a message is overwritten in place by a mask of the
//! same length, so frame lengths stay as they are and payloads stream
//! through in bounded memory. A message is scrubbed as one stream across
//! its fragments: the last bytes of a fragment (and any control frame the
//! server interleaves) are held back until the next fragment shows whether
//! they start a secret. Control frame payloads (close reasons, pings) are
//! scrubbed too. Compression would hide secrets from this, so the
//! handshake drops `Sec-WebSocket-Extensions`, and a frame with RSV bits
//! set (an extension nobody negotiated) ends the connection.

use std::collections::VecDeque;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::scrub::Scrubber;

/// Payload bytes read per step.
const CHUNK: usize = 64 * 1024;

fn protocol_error(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("websocket: {what}"),
    )
}

/// What is waiting to be written, in order: frame headers and whole
/// control frames as they are, and message bytes (kept unmasked in
/// `Relay::held` until they are known not to start a secret).
enum Part {
    Raw(Vec<u8>),
    Payload {
        len: usize,
        key: Option<[u8; 4]>,
        /// Position in its frame's payload, for the mask.
        offset: u64,
    },
}

struct Relay<'a, W> {
    to: W,
    scrubber: &'a Scrubber,
    held: Vec<u8>,
    parts: VecDeque<Part>,
    max_parts: usize,
    total: u64,
}

fn apply_mask(key: Option<[u8; 4]>, offset: u64, data: &mut [u8]) {
    if let Some(key) = key {
        for (i, b) in data.iter_mut().enumerate() {
            *b ^= key[((offset + i as u64) % 4) as usize];
        }
    }
}

impl<W: AsyncWrite + Unpin> Relay<'_, W> {
    fn hold(&mut self, part: Part) -> std::io::Result<()> {
        if self.parts.len() >= self.max_parts {
            return Err(protocol_error(
                "too many frames inside one fragmented message without payload",
            ));
        }
        self.parts.push_back(part);
        Ok(())
    }

    /// Message bytes (unmasked) of the frame being read.
    fn add_payload(&mut self, data: &[u8], key: Option<[u8; 4]>, offset: u64) {
        self.held.extend_from_slice(data);
        if let Some(Part::Payload { len, key: k, .. }) = self.parts.back_mut()
            && *k == key
        {
            *len += data.len();
            return;
        }
        self.parts.push_back(Part::Payload {
            len: data.len(),
            key,
            offset,
        });
    }

    /// Scrubs what is held and writes everything decided; with
    /// `message_end`, everything.
    async fn flush(&mut self, message_end: bool) -> std::io::Result<()> {
        let mut ready = self.scrubber.mask_in_place(&mut self.held, message_end);
        let mut out = Vec::new();
        while let Some(part) = self.parts.front_mut() {
            match part {
                Part::Raw(bytes) => out.append(bytes),
                Part::Payload { len, key, offset } => {
                    let n = (*len).min(ready);
                    if n == 0 && *len > 0 {
                        break;
                    }
                    let mut bytes: Vec<u8> = self.held.drain(..n).collect();
                    apply_mask(*key, *offset, &mut bytes);
                    out.extend_from_slice(&bytes);
                    ready -= n;
                    *len -= n;
                    *offset += n as u64;
                    if *len > 0 {
                        break;
                    }
                }
            }
            self.parts.pop_front();
        }
        if !out.is_empty() {
            self.to.write_all(&out).await?;
            self.total += out.len() as u64;
        }
        self.to.flush().await
    }
}

/// Relays frames from `from` (the server) to `to` (the client), scrubbing
/// messages with `scrubber`'s same-length masks. Returns the bytes relayed.
pub(crate) async fn relay_scrubbed<R, W>(
    mut from: R,
    to: W,
    scrubber: &Scrubber,
) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut relay = Relay {
        to,
        scrubber,
        held: Vec::with_capacity(CHUNK + scrubber.longest()),
        parts: VecDeque::new(),
        // Tiny fragments may each carry a byte of a held-back secret.
        max_parts: 4 * scrubber.longest() + 64,
        total: 0,
    };
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut head = [0u8; 2];
        match from.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        if head[0] & 0x70 != 0 {
            return Err(protocol_error(
                "RSV bits set without a negotiated extension",
            ));
        }
        let fin = head[0] & 0x80 != 0;
        let opcode = head[0] & 0x0f;
        let masked = head[1] & 0x80 != 0;
        let mut header = head.to_vec();
        let len = match head[1] & 0x7f {
            126 => {
                let mut ext = [0u8; 2];
                from.read_exact(&mut ext).await?;
                header.extend_from_slice(&ext);
                u64::from(u16::from_be_bytes(ext))
            }
            127 => {
                let mut ext = [0u8; 8];
                from.read_exact(&mut ext).await?;
                header.extend_from_slice(&ext);
                u64::from_be_bytes(ext)
            }
            n => u64::from(n),
        };
        let key = if masked {
            let mut key = [0u8; 4];
            from.read_exact(&mut key).await?;
            header.extend_from_slice(&key);
            Some(key)
        } else {
            None
        };
        match opcode {
            // Control frames: small, whole, scrubbed on their own; held in
            // order if they arrive inside a fragmented message.
            8..=10 => {
                if len > 125 || !fin {
                    return Err(protocol_error("invalid control frame"));
                }
                let mut payload = vec![0u8; len as usize];
                from.read_exact(&mut payload).await?;
                apply_mask(key, 0, &mut payload);
                scrubber.mask_in_place(&mut payload, true);
                apply_mask(key, 0, &mut payload);
                header.extend_from_slice(&payload);
                relay.hold(Part::Raw(header))?;
                relay.flush(false).await?;
            }
            0..=2 => {
                relay.hold(Part::Raw(header))?;
                let mut remaining = len;
                let mut offset = 0u64;
                while remaining > 0 {
                    let want = usize::try_from(remaining.min(CHUNK as u64)).unwrap_or(CHUNK);
                    let chunk = &mut buf[..want];
                    from.read_exact(chunk).await?;
                    apply_mask(key, offset, chunk);
                    relay.add_payload(chunk, key, offset);
                    remaining -= want as u64;
                    offset += want as u64;
                    relay.flush(fin && remaining == 0).await?;
                }
                relay.flush(fin).await?;
            }
            _ => return Err(protocol_error("reserved opcode")),
        }
    }
    relay.flush(true).await?;
    relay.to.shutdown().await?;
    Ok(relay.total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let mask_bit = if key.is_some() { 0x80 } else { 0 };
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
        match key {
            Some(k) => {
                f.extend_from_slice(&k);
                f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => f.extend_from_slice(payload),
        }
        f
    }

    async fn relay(input: Vec<u8>) -> std::io::Result<Vec<u8>> {
        let scrubber = Scrubber::new(&[(b"s3cr3t-token-value", b"kw_ph_x")]).unwrap();
        let mut out = Vec::new();
        relay_scrubbed(&input[..], &mut out, &scrubber).await?;
        Ok(out)
    }

    fn fragment(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = frame(opcode, payload, None);
        if !fin {
            f[0] &= 0x7f;
        }
        f
    }

    #[tokio::test]
    async fn secrets_in_frames_are_masked_with_lengths_kept() {
        let mut big = vec![b'x'; 200_000];
        // Across a read boundary inside one frame.
        big[CHUNK - 5..CHUNK - 5 + 18].copy_from_slice(b"s3cr3t-token-value");
        let mut input = frame(1, b"hello s3cr3t-token-value!", None);
        input.extend(frame(2, &big, None));
        input.extend(frame(1, b"masked s3cr3t-token-value", Some([1, 2, 3, 4])));
        input.extend(frame(9, b"ping", None));
        let out = relay(input).await.unwrap();
        let mut expected_big = big.clone();
        expected_big[CHUNK - 5..CHUNK - 5 + 18].copy_from_slice(b"[REDACTED]********");
        let mut expected = frame(1, b"hello [REDACTED]********!", None);
        expected.extend(frame(2, &expected_big, None));
        expected.extend(frame(1, b"masked [REDACTED]********", Some([1, 2, 3, 4])));
        expected.extend(frame(9, b"ping", None));
        assert_eq!(out.len(), expected.len());
        assert!(out == expected, "scrubbed frames differ");
    }

    #[tokio::test]
    async fn unnegotiated_extensions_end_the_relay() {
        let mut input = frame(1, b"fine", None);
        let mut compressed = frame(1, b"zzz", None);
        compressed[0] |= 0x40;
        input.extend(compressed);
        let err = relay(input).await.unwrap_err();
        assert!(err.to_string().contains("RSV"), "{err}");
    }

    #[tokio::test]
    async fn a_secret_split_across_fragments_and_around_a_ping_is_masked() {
        let mut input = fragment(false, 1, b"part one s3cr3t-");
        input.extend(fragment(true, 9, b"ping s3cr3t-token-value"));
        input.extend(fragment(false, 0, b"tok"));
        input.extend(fragment(false, 0, b""));
        input.extend(fragment(true, 0, b"en-value end"));
        let out = relay(input).await.unwrap();
        let mut expected = fragment(false, 1, b"part one [REDACT");
        expected.extend(fragment(true, 9, b"ping [REDACTED]********"));
        expected.extend(fragment(false, 0, b"ED]"));
        expected.extend(fragment(false, 0, b""));
        expected.extend(fragment(true, 0, b"******** end"));
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&expected)
        );
    }
}
