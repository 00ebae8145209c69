//! keyward's gRPC API for remote callers (team mode): the
//! `keyward.v1.Keyward` service (proto/keyward/v1/keyward.proto) with the
//! standard health service, over TLS (optionally mutual), every call
//! authenticated by an API token and allowed by its role. The daemon
//! supplies the answers ([`Backend`]) and the token check ([`Gate`]); the
//! CLI's `--remote` uses [`RemoteClient`].

mod client;
mod convert;
mod server;
mod service;
mod tls;

/// The generated messages and service.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("keyward.v1");
}

pub use client::{RemoteClient, RemoteError, RemoteOptions};
pub use convert::{UnknownWord, json_to_struct, struct_to_json};
pub use server::{ServeError, serve};
pub use service::{Backend, BackendError, Caller, Gate, KeywardService, auth_status};
pub use tls::{TlsFileError, TlsFiles, check_tls, client_subject};
