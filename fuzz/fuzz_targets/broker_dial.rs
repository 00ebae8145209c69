//! The fd broker's reading of what a brokered program sends on its fd 3
//! (`keyward run --broker fd`). The kernel is modelled as the daemon meets
//! it: a datagram of any length, with descriptors attached or not, lands
//! in the daemon's buffer of `MESSAGE_BYTES`, flagged truncated when it
//! (or its descriptors) did not fit. Protocol version 1: exactly the
//! datagram `[0x01]` without descriptors dials; everything else is
//! refused, for the reason that fits it.
#![no_main]

use keyward_daemon::fuzzing::{Decision, MESSAGE_BYTES, Malformed, decide};
use keyward_fuzz::Input;
use libfuzzer_sys::fuzz_target;

/// Checks `decision` for `datagram` (with descriptors or not), received
/// into a buffer of `buffer` bytes.
fn check(datagram: &[u8], with_fds: bool, buffer: usize) {
    let copied = datagram.len().min(buffer);
    let truncated = datagram.len() > buffer || with_fds;
    let decision = decide(&datagram[..copied], truncated);
    let is_dial = datagram == [0x01] && !with_fds;
    assert_eq!(
        decision == Decision::Dial,
        is_dial,
        "{datagram:?} (descriptors: {with_fds}, buffer {buffer}) judged {decision:?}"
    );
    if let Decision::Refuse(why) = decision {
        let fits = match why {
            Malformed::Truncated => truncated,
            Malformed::Empty => datagram.is_empty() && !with_fds,
            Malformed::TooLong(len) => len == datagram.len() && len > 1 && !truncated,
            Malformed::UnknownByte(byte) => datagram == [byte] && byte != 0x01 && !with_fds,
        };
        assert!(fits, "{datagram:?} refused as {why:?}");
        assert!(!why.to_string().is_empty());
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let with_fds = input.byte() & 1 == 1;
    let datagram = input.0;
    // The daemon's buffer, and any larger one: the decision must not
    // depend on how much room there was.
    check(datagram, with_fds, MESSAGE_BYTES);
    check(datagram, with_fds, datagram.len());
});
