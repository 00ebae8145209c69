//! The entry point of the fd-broker fuzz target in `fuzz/`: how the
//! daemon judges what a brokered program sends on its descriptor. Not an
//! API (hidden from the docs); it follows the code it reaches.

pub use crate::broker::{Decision, MESSAGE_BYTES, Malformed, decide};
