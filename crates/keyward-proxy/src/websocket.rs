//! WebSocket scrubbing (RFC 6455): after an upgrade that carried a secret,
//! the frames the server sends are parsed and every secret in a payload is
//! overwritten in place by a mask of the same length, so frame lengths stay
//! as they are and payloads stream through in bounded memory (a match split
//! across reads of one frame is caught; one split across two frames of a
//! fragmented message is not). Compression would hide secrets from this, so
//! the handshake drops `Sec-WebSocket-Extensions`, and a frame with RSV bits
//! set (an extension nobody negotiated) ends the connection.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::scrub::replace_all;

/// Payload bytes read per step.
const CHUNK: usize = 64 * 1024;

/// `[REDACTED]` cut or padded with `*` to `len` bytes.
fn mask(len: usize) -> Vec<u8> {
    let mut m: Vec<u8> = b"[REDACTED]".iter().copied().take(len).collect();
    if len < 10 {
        m = vec![b'*'; len];
    }
    m.resize(len, b'*');
    m
}

/// Same-length (secret, mask) pairs for `secrets`.
pub(crate) fn masks(secrets: &[(Vec<u8>, Vec<u8>)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    secrets
        .iter()
        .filter(|(s, _)| !s.is_empty())
        .map(|(s, _)| (s.clone(), mask(s.len())))
        .collect()
}

fn protocol_error(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("websocket: {what}"),
    )
}

/// Relays frames from `from` (the server) to `to` (the client), scrubbing
/// payloads with same-length `masks`. Returns the bytes relayed.
pub(crate) async fn relay_scrubbed<R, W>(
    mut from: R,
    mut to: W,
    masks: &[(Vec<u8>, Vec<u8>)],
) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let keep = masks.iter().map(|(s, _)| s.len()).max().unwrap_or(1) - 1;
    let mut total = 0u64;
    let mut buf = Vec::with_capacity(CHUNK + keep);
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
        let mut key = [0u8; 4];
        if masked {
            from.read_exact(&mut key).await?;
            header.extend_from_slice(&key);
        }
        to.write_all(&header).await?;
        total += header.len() as u64;

        // The payload, unmasked, scrubbed with a carry, masked again.
        let mut remaining = len;
        let mut offset = 0u64; // payload position of buf[0], for the mask
        buf.clear();
        while remaining > 0 || !buf.is_empty() {
            if remaining > 0 {
                let start = buf.len();
                let want = usize::try_from(remaining.min(CHUNK as u64)).unwrap_or(CHUNK);
                buf.resize(start + want, 0);
                from.read_exact(&mut buf[start..]).await?;
                remaining -= want as u64;
                if masked {
                    for (i, b) in buf[start..].iter_mut().enumerate() {
                        *b ^= key[((offset + (start + i) as u64) % 4) as usize];
                    }
                }
            }
            if let Some(replaced) = replace_all(&buf, masks) {
                buf = replaced; // same length: masks replace byte for byte
            }
            // Hold back what could be the start of a secret, unless the
            // frame is complete.
            let send = if remaining > 0 {
                buf.len().saturating_sub(keep)
            } else {
                buf.len()
            };
            let mut out = buf[..send].to_vec();
            if masked {
                for (i, b) in out.iter_mut().enumerate() {
                    *b ^= key[((offset + i as u64) % 4) as usize];
                }
            }
            to.write_all(&out).await?;
            total += out.len() as u64;
            buf.drain(..send);
            offset += send as u64;
            if remaining == 0 && buf.is_empty() {
                break;
            }
        }
        to.flush().await?;
    }
    to.shutdown().await?;
    Ok(total)
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
        let masks = masks(&[(b"s3cr3t-token-value".to_vec(), Vec::new())]);
        let mut out = Vec::new();
        relay_scrubbed(&input[..], &mut out, &masks).await?;
        Ok(out)
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

    #[test]
    fn masks_keep_the_length() {
        assert_eq!(mask(4), b"****");
        assert_eq!(mask(12), b"[REDACTED]**");
    }
}
