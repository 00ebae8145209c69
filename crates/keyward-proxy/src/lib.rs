//! keyward's egress proxy: CONNECT with TLS interception by a local CA,
//! credential injection toward the hosts a grant names, and scrubbing of
//! those credentials from responses.
#![forbid(unsafe_code)]

mod ca;
mod events;
mod rules;
mod scrub;
mod server;
mod websocket;

pub use ca::{CaError, CertificateAuthority, ServiceIdentity};
pub use events::{EgressEvent, EgressSink, EvidenceSink, LogSink, PolicyDecision, log_event};
pub use rules::{AllowRule, HostPattern, Injection, is_link_local, is_metadata};
pub use server::{
    Credential, Intercept, Proxy, ProxyBody, ProxyError, ProxyOptions, RunAuthority, RunContext,
};
