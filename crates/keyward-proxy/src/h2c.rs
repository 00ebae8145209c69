//! Cleartext HTTP/2 in a CONNECT tunnel. gRPC clients use CONNECT for
//! every channel, TLS or not; an insecure channel then speaks HTTP/2 with
//! prior knowledge (h2c) inside the tunnel, starting with the connection
//! preface instead of a TLS ClientHello. Such a tunnel is served as h2c
//! and its requests go through the pipeline as `http://` requests, so a
//! grant's secret goes into them only where the grant says
//! `plaintext = true`, and upstream as h2c with prior knowledge.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What an HTTP/2 connection starts with (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the start of a tunnel: whether it is the HTTP/2 preface (else it
/// is taken for TLS). What was read is replayed by the returned stream.
pub(crate) async fn sniff<S: AsyncRead + Unpin>(mut io: S) -> io::Result<(Replayed<S>, bool)> {
    let mut start = Vec::with_capacity(PREFACE.len());
    let mut buf = [0u8; PREFACE.len()];
    while start.len() < PREFACE.len() && PREFACE.starts_with(&start) {
        let n = io.read(&mut buf[..PREFACE.len() - start.len()]).await?;
        if n == 0 {
            break;
        }
        start.extend_from_slice(&buf[..n]);
    }
    let h2c = start == PREFACE;
    Ok((Replayed { start, at: 0, io }, h2c))
}

/// An intercepted tunnel, once its start has been read.
pub(crate) enum Tunnel<P, T> {
    /// HTTP/2 with prior knowledge, in clear.
    Cleartext(P),
    /// TLS, terminated by the proxy.
    Tls(T),
}

/// A stream whose first bytes, already read, are read again.
pub(crate) struct Replayed<S> {
    start: Vec<u8>,
    at: usize,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replayed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.start.len() {
            let n = (this.start.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.start[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replayed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sniffed(input: &[u8]) -> (Vec<u8>, bool) {
        let (mut replayed, h2c) = sniff(input).await.unwrap();
        let mut all = Vec::new();
        replayed.read_to_end(&mut all).await.unwrap();
        (all, h2c)
    }

    #[tokio::test]
    async fn the_preface_is_told_from_tls_and_every_byte_is_replayed() {
        let mut h2 = PREFACE.to_vec();
        h2.extend_from_slice(b"\x00\x00\x00\x04");
        assert_eq!(sniffed(&h2).await, (h2.clone(), true));
        // A TLS ClientHello is told at its first byte.
        let hello = b"\x16\x03\x01\x02\x00rest of the hello";
        assert_eq!(sniffed(hello).await, (hello.to_vec(), false));
        // A tunnel that ends inside the preface is not h2c.
        assert_eq!(sniffed(b"PRI * HT").await, (b"PRI * HT".to_vec(), false));
    }
}
