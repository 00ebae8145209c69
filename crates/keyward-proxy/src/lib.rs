//! keyward's egress proxy: CONNECT with TLS interception by a local CA,
//! credential injection toward the hosts (and ports, over TLS) a grant
//! names, and scrubbing of the run's credentials from every response.
#![forbid(unsafe_code)]

mod ca;
mod decode;
mod events;
#[doc(hidden)]
pub mod fuzzing;
mod limits;
mod rules;
mod scrub;
mod server;
mod websocket;

pub use ca::{CaError, CertificateAuthority, ServiceIdentity};
pub use events::{EgressEvent, EgressSink, EvidenceSink, LogSink, PolicyDecision, log_event};
pub use rules::{AllowRule, GrantHost, HostPattern, Injection, is_denied_address, is_metadata};
pub use server::{
    Credential, Intercept, Proxy, ProxyBody, ProxyError, ProxyOptions, RunAuthority, RunContext,
    Withheld,
};
