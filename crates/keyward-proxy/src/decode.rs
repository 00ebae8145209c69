//! Content decoding for scrubbing: a response that arrives compressed
//! (gzip, deflate, br, zstd; also stacked) is decoded as it streams, so
//! the scrubber sees the bytes the child would see after decompressing.
//! Every decoder is driven push-style with a bounded output buffer: a
//! small compressed input never turns into an unbounded allocation.

use std::pin::Pin;
use std::task::{Context, Poll};

use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};
use bytes::Bytes;
use flate2::{Decompress, FlushDecompress, Status};
use hyper::body::{Body, Frame, SizeHint};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Decoded bytes produced per step, at most.
const OUT_CHUNK: usize = 64 * 1024;

/// Compressed bytes held while a decoder waits for a whole unit (a gzip
/// header, a zstd block: at most 128 KiB plus headers).
const MAX_PENDING: usize = 256 * 1024;

/// The largest zstd window decoded (RFC 8878 asks HTTP decoders to
/// support 8 MiB; single-segment frames use their content size).
const MAX_ZSTD_WINDOW: u64 = 32 << 20;

/// The decoders for a `Content-Encoding` value, in the order to apply
/// them; `Ok(None)` when there is nothing to decode; `Err` names an
/// encoding this proxy cannot decode.
pub fn decoders_for(content_encoding: &str) -> Result<Option<Vec<Decoder>>, String> {
    let mut decoders = Vec::new();
    // Encodings are listed in the order they were applied.
    for coding in content_encoding.split(',').rev() {
        let coding = coding.trim().to_ascii_lowercase();
        let decoder = match coding.as_str() {
            "" | "identity" => continue,
            "gzip" | "x-gzip" => Decoder::Gzip(Gzip::default()),
            "deflate" => Decoder::Deflate(None),
            "br" => Decoder::Brotli(Box::new(BrotliState::new_strict(
                StandardAlloc::default(),
                StandardAlloc::default(),
                StandardAlloc::default(),
            ))),
            "zstd" => Decoder::Zstd(Box::default()),
            _ => return Err(coding),
        };
        decoders.push(decoder);
    }
    Ok((!decoders.is_empty()).then_some(decoders))
}

/// One content decoder.
pub enum Decoder {
    /// gzip (RFC 1952), one member after another.
    Gzip(Gzip),
    /// "deflate" is zlib (RFC 1950) by the standard, raw deflate from some
    /// servers: told apart by the first two bytes.
    Deflate(Option<Decompress>),
    /// Brotli (RFC 7932).
    Brotli(Box<BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>>),
    /// Zstandard (RFC 8878), fed one block at a time.
    Zstd(Box<Zstd>),
}

/// What a step did.
struct Step {
    consumed: usize,
    produced: usize,
    /// The stream ended (a later byte would be an error, or a new member).
    done: bool,
}

fn invalid(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

impl Decoder {
    /// Consumes some of `input` and writes some of `output`. A step that
    /// consumes and produces nothing needs more input.
    fn step(&mut self, input: &[u8], output: &mut [u8]) -> std::io::Result<Step> {
        match self {
            Decoder::Gzip(gzip) => gzip.step(input, output),
            Decoder::Deflate(state) => {
                if state.is_none() {
                    if input.len() < 2 {
                        return Ok(Step {
                            consumed: 0,
                            produced: 0,
                            done: false,
                        });
                    }
                    let zlib = input[0] & 0x0f == 8
                        && u16::from_be_bytes([input[0], input[1]]).is_multiple_of(31);
                    *state = Some(Decompress::new(zlib));
                }
                let inflate = state.as_mut().expect("set above");
                inflate_step(inflate, input, output)
            }
            Decoder::Brotli(state) => {
                let (mut available_in, mut input_offset) = (input.len(), 0);
                let (mut available_out, mut output_offset, mut total) = (output.len(), 0, 0);
                let result = BrotliDecompressStream(
                    &mut available_in,
                    &mut input_offset,
                    input,
                    &mut available_out,
                    &mut output_offset,
                    output,
                    &mut total,
                    state,
                );
                match result {
                    BrotliResult::ResultFailure => Err(invalid("invalid brotli data")),
                    result => Ok(Step {
                        consumed: input_offset,
                        produced: output_offset,
                        done: matches!(result, BrotliResult::ResultSuccess),
                    }),
                }
            }
            Decoder::Zstd(zstd) => zstd.step(input, output),
        }
    }
}

fn inflate_step(
    inflate: &mut Decompress,
    input: &[u8],
    output: &mut [u8],
) -> std::io::Result<Step> {
    let (before_in, before_out) = (inflate.total_in(), inflate.total_out());
    let status = inflate
        .decompress(input, output, FlushDecompress::None)
        .map_err(invalid)?;
    Ok(Step {
        consumed: (inflate.total_in() - before_in) as usize,
        produced: (inflate.total_out() - before_out) as usize,
        done: status == Status::StreamEnd,
    })
}

/// gzip: header, raw deflate, then CRC-32 and length, which are checked.
#[derive(Default)]
pub struct Gzip {
    inflate: Option<(Decompress, flate2::Crc)>,
    /// Waiting for the 8-byte trailer of the member just inflated.
    trailer: Option<flate2::Crc>,
}

impl Gzip {
    fn step(&mut self, input: &[u8], output: &mut [u8]) -> std::io::Result<Step> {
        let wait = Step {
            consumed: 0,
            produced: 0,
            done: false,
        };
        if let Some(crc) = &self.trailer {
            if input.len() < 8 {
                return Ok(wait);
            }
            let sum = u32::from_le_bytes([input[0], input[1], input[2], input[3]]);
            let size = u32::from_le_bytes([input[4], input[5], input[6], input[7]]);
            if sum != crc.sum() || size != crc.amount() {
                return Err(invalid("gzip checksum mismatch"));
            }
            self.trailer = None;
            return Ok(Step {
                consumed: 8,
                produced: 0,
                done: true,
            });
        }
        let Some((inflate, crc)) = &mut self.inflate else {
            let Some(header_len) = gzip_header_len(input)? else {
                return Ok(wait);
            };
            self.inflate = Some((Decompress::new(false), flate2::Crc::new()));
            return Ok(Step {
                consumed: header_len,
                produced: 0,
                done: false,
            });
        };
        let step = inflate_step(inflate, input, output)?;
        crc.update(&output[..step.produced]);
        if step.done {
            self.trailer = self.inflate.take().map(|(_, crc)| crc);
        }
        Ok(Step {
            done: false,
            ..step
        })
    }
}

/// The length of the gzip member header at the start of `input`, or
/// `None` if it is not complete yet.
fn gzip_header_len(input: &[u8]) -> std::io::Result<Option<usize>> {
    if input.len() < 10 {
        return Ok(None);
    }
    if input[..3] != [0x1f, 0x8b, 8] {
        return Err(invalid("not gzip data"));
    }
    let flags = input[3];
    let mut at = 10;
    if flags & 0x04 != 0 {
        let Some(len) = input.get(at..at + 2) else {
            return Ok(None);
        };
        at += 2 + usize::from(u16::from_le_bytes([len[0], len[1]]));
    }
    for flag in [0x08, 0x10] {
        if flags & flag != 0 {
            let Some(nul) = input.get(at..).and_then(|r| r.iter().position(|b| *b == 0)) else {
                return Ok(None);
            };
            at += nul + 1;
        }
    }
    if flags & 0x02 != 0 {
        at += 2;
    }
    Ok((at <= input.len()).then_some(at))
}

/// zstd: ruzstd decodes every whole block of the input it is given, so it
/// is given one block at a time (a block decodes to at most 128 KiB).
#[derive(Default)]
pub struct Zstd {
    frame: Option<ruzstd::decoding::FrameDecoder>,
    /// Whether the current frame ends with a checksum.
    checksum: bool,
    /// After the last block: the checksum (4 bytes) if the frame has one.
    ending: bool,
}

impl Zstd {
    fn step(&mut self, input: &[u8], output: &mut [u8]) -> std::io::Result<Step> {
        let wait = Step {
            consumed: 0,
            produced: 0,
            done: false,
        };
        let Some(frame) = &mut self.frame else {
            let Some((header_len, checksum)) = zstd_header(input)? else {
                return Ok(wait);
            };
            let mut decoder = ruzstd::decoding::FrameDecoder::new();
            decoder.init(&input[..header_len]).map_err(invalid)?;
            self.frame = Some(decoder);
            self.checksum = checksum;
            self.ending = false;
            return Ok(Step {
                consumed: header_len,
                produced: 0,
                done: false,
            });
        };
        // Drain what is decoded before feeding more.
        let produced = std::io::Read::read(frame, output)?;
        if produced > 0 {
            return Ok(Step {
                consumed: 0,
                produced,
                done: false,
            });
        }
        if self.ending {
            let need = if self.checksum { 4 } else { 0 };
            if input.len() < need {
                return Ok(wait);
            }
            self.frame = None;
            return Ok(Step {
                consumed: need,
                produced: 0,
                done: true,
            });
        }
        if input.len() < 3 {
            return Ok(wait);
        }
        let header = u32::from_le_bytes([input[0], input[1], input[2], 0]);
        let (last, kind, size) = (header & 1 == 1, (header >> 1) & 3, (header >> 3) as usize);
        let content = match kind {
            0 | 2 => size,
            1 => 1,
            _ => return Err(invalid("reserved zstd block type")),
        };
        let Some(block) = input.get(..3 + content) else {
            return Ok(wait);
        };
        let (consumed, produced) = frame.decode_from_to(block, output).map_err(invalid)?;
        if consumed != block.len() {
            return Err(invalid("zstd block not decoded whole"));
        }
        self.ending = last;
        Ok(Step {
            consumed,
            produced,
            done: false,
        })
    }
}

/// The length of the zstd frame header at the start of `input` and
/// whether the frame ends with a checksum; `None` if incomplete.
fn zstd_header(input: &[u8]) -> std::io::Result<Option<(usize, bool)>> {
    if input.len() < 5 {
        return Ok(None);
    }
    if input[..4] != [0x28, 0xb5, 0x2f, 0xfd] {
        return Err(invalid("not a zstd frame"));
    }
    let descriptor = input[4];
    let single_segment = descriptor & 0x20 != 0;
    let content_size_len = match descriptor >> 6 {
        0 => usize::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let dictionary_len = [0, 1, 2, 4][usize::from(descriptor & 3)];
    let len = 5 + usize::from(!single_segment) + dictionary_len + content_size_len;
    if input.len() < len {
        return Ok(None);
    }
    // The decoder keeps a window of this size: a hostile server must not
    // choose how much memory the proxy spends.
    let window = if single_segment {
        let field = &input[len - content_size_len..len];
        let mut bytes = [0u8; 8];
        bytes[..field.len()].copy_from_slice(field);
        u64::from_le_bytes(bytes) + if content_size_len == 2 { 256 } else { 0 }
    } else {
        let descriptor = input[5];
        let base = 1u64 << (10 + (descriptor >> 3));
        base + base / 8 * u64::from(descriptor & 7)
    };
    if window > MAX_ZSTD_WINDOW {
        return Err(invalid(format!(
            "zstd window of {window} bytes is over the {MAX_ZSTD_WINDOW} this proxy decodes"
        )));
    }
    Ok(Some((len, descriptor & 0x04 != 0)))
}

/// A body decoded by a chain of decoders as it streams.
pub struct Decoded<B> {
    inner: B,
    decoders: Vec<Decoder>,
    /// Per decoder, input it has not consumed yet.
    pending: Vec<Vec<u8>>,
    /// Per decoder, whether its stream ended.
    done: Vec<bool>,
    inner_done: bool,
    /// Trailers of the encoded body, passed on after the decoded rest.
    trailers: Option<Frame<Bytes>>,
    scratch: Vec<u8>,
}

impl<B> Decoded<B> {
    /// Decodes `inner` with `decoders`, first to last.
    pub fn new(inner: B, decoders: Vec<Decoder>) -> Self {
        let n = decoders.len();
        Self {
            inner,
            decoders,
            pending: vec![Vec::new(); n],
            done: vec![false; n],
            inner_done: false,
            trailers: None,
            scratch: vec![0; OUT_CHUNK],
        }
    }

    /// Runs the chain as far as it goes; returns decoded output of the last
    /// decoder, if any.
    fn pump(&mut self) -> std::io::Result<Option<Bytes>> {
        let last = self.decoders.len() - 1;
        // From the last decoder back: drain before refilling.
        'outer: loop {
            for i in (0..=last).rev() {
                let step = self.decoders[i].step(&self.pending[i], &mut self.scratch)?;
                self.pending[i].drain(..step.consumed);
                if step.done {
                    self.done[i] = true;
                } else if step.consumed > 0 {
                    self.done[i] = false;
                }
                if step.produced > 0 {
                    let out = &self.scratch[..step.produced];
                    if i == last {
                        return Ok(Some(Bytes::copy_from_slice(out)));
                    }
                    self.pending[i + 1].extend_from_slice(out);
                    continue 'outer;
                }
                if step.consumed > 0 {
                    continue 'outer;
                }
                if self.pending[i].len() > MAX_PENDING {
                    return Err(invalid("compressed response has an oversized unit"));
                }
            }
            return Ok(None);
        }
    }
}

impl<B> Body for Decoded<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.pump() {
                Ok(Some(out)) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
            }
            if this.inner_done {
                let complete =
                    this.done.iter().all(|d| *d) && this.pending.iter().all(Vec::is_empty);
                return Poll::Ready(if complete {
                    this.trailers.take().map(Ok)
                } else {
                    Some(Err(Box::new(invalid("compressed response ends early"))))
                });
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.inner_done = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.done[0] = false;
                        this.pending[0].extend_from_slice(&data);
                    }
                    Err(trailers) => {
                        // Trailers end the body (the scrubber after this
                        // scrubs them).
                        this.inner_done = true;
                        this.trailers = Some(trailers);
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::io::Write;

    /// A body yielding fixed chunks.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    /// `data` in chunks of `size` bytes.
    fn chunked(data: &[u8], size: usize) -> Chunks {
        Chunks(data.chunks(size).map(Bytes::copy_from_slice).collect())
    }

    async fn decode(encoding: &str, data: &[u8], chunk: usize) -> Result<Vec<u8>, String> {
        let decoders = decoders_for(encoding).unwrap().unwrap();
        let body = Decoded::new(chunked(data, chunk), decoders);
        body.collect()
            .await
            .map(|c| c.to_bytes().to_vec())
            .map_err(|e| e.to_string())
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[tokio::test]
    async fn streams_decode_in_any_chunking_and_damage_is_an_error() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let gz = gzip(&data);
        for chunk in [1, 7, 4096, gz.len()] {
            assert_eq!(decode("gzip", &gz, chunk).await.unwrap(), data, "{chunk}");
        }
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        raw.write_all(&data).unwrap();
        assert_eq!(
            decode("deflate", &raw.finish().unwrap(), 999)
                .await
                .unwrap(),
            data
        );
        let zstd = ruzstd::encoding::compress_to_vec(
            &data[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        for chunk in [3, 1000, zstd.len()] {
            assert_eq!(decode("zstd", &zstd, chunk).await.unwrap(), data, "{chunk}");
        }
        // Two gzip members one after the other are one stream.
        let mut two = gzip(b"first ");
        two.extend(gzip(b"second"));
        assert_eq!(decode("gzip", &two, 5).await.unwrap(), b"first second");

        let truncated = &gz[..gz.len() - 4];
        assert!(
            decode("gzip", truncated, 512)
                .await
                .unwrap_err()
                .contains("ends early")
        );
        let mut corrupt = gz.clone();
        let n = corrupt.len();
        corrupt[n - 6] ^= 0xff;
        assert!(decode("gzip", &corrupt, 512).await.is_err());
        assert!(decode("br", b"\xff\xff\xff\xff", 2).await.is_err());
    }

    #[test]
    fn unknown_encodings_are_named_and_identity_is_nothing() {
        assert!(decoders_for("identity").unwrap().is_none());
        assert!(decoders_for("").unwrap().is_none());
        assert_eq!(decoders_for("gzip, x-magic").err().unwrap(), "x-magic");
        assert_eq!(decoders_for("compress").err().unwrap(), "compress");
    }

    #[test]
    fn a_zstd_window_over_the_limit_is_refused() {
        // Frame header: magic, descriptor (no single segment), window
        // descriptor for 2^(10+20) = 1 GiB.
        let header = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 20 << 3];
        let err = zstd_header(&header).unwrap_err();
        assert!(err.to_string().contains("zstd window"), "{err}");
    }
}
