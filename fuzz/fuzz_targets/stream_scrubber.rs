//! The streaming response scrubber, differentially: a body made of the
//! run's secrets in every encoding the scrubber knows (whole, cut short,
//! among other bytes), split into any chunks, must stream out exactly as
//! a naive replace over the whole body, and hold no needle.
#![no_main]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame};
use keyward_fuzz::{Input, Rewrite, contains, naive_scrub, needles, scrubber, secrets, text};
use keyward_proxy::fuzzing::Scrubbed;
use libfuzzer_sys::fuzz_target;

/// A body yielding the given chunks, each at once.
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(secrets) = secrets(&mut input) else {
        return;
    };
    let needles = needles(&secrets);
    let cuts: Vec<usize> = (0..input.byte() % 32)
        .map(|_| usize::from(input.byte()))
        .collect();
    let body = text(&mut input, &needles, 512);

    let mut chunks = VecDeque::new();
    let mut rest = &body[..];
    for cut in cuts {
        let (chunk, tail) = rest.split_at(cut.min(rest.len()));
        chunks.push_back(Bytes::copy_from_slice(chunk));
        rest = tail;
    }
    chunks.push_back(Bytes::copy_from_slice(rest));

    let mut scrubbed = Scrubbed::new(Chunks(chunks), scrubber(&secrets));
    let mut streamed = Vec::new();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    while let Poll::Ready(Some(frame)) = Pin::new(&mut scrubbed).poll_frame(&mut cx) {
        let frame = frame.expect("the body cannot fail");
        streamed.extend_from_slice(frame.data_ref().expect("only data frames"));
    }
    assert!(scrubbed.is_end_stream(), "the body ended early");

    let expected = naive_scrub(&body, &needles, Rewrite::Replace);
    assert!(
        streamed == expected,
        "streamed output differs from a replace over the whole body"
    );
    for (needle, _) in &needles {
        assert!(!contains(&streamed, needle), "a needle got through");
    }
});
