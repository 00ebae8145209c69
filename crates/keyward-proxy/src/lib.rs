//! keyward's egress proxy: CONNECT with TLS interception by a local CA,
//! credential injection toward the hosts (and ports, over TLS) a grant
//! names, and scrubbing of the run's credentials from every response.
//! Three ways in (the forward proxy, the fd broker, base-URL endpoints)
//! share one request pipeline (`pipeline`).
#![forbid(unsafe_code)]

#[macro_use]
mod drain;

mod accept;
mod base_url;
mod body;
mod broker;
mod ca;
mod connect;
mod context;
mod decode;
mod events;
mod exchange;
mod filters;
#[doc(hidden)]
pub mod fuzzing;
mod grpc;
mod h2c;
mod inject;
mod limits;
mod pipeline;
mod proxy;
mod record;
mod refusal;
mod request_ctx;
mod resolve;
mod rules;
mod run_token;
mod scrub;
mod tunnel;
mod websocket;
mod workers;

pub use body::ProxyBody;
pub use ca::{CaError, CertificateAuthority, ServiceIdentity};
pub use context::{Credential, RunAuthority, RunContext, Withheld};
pub use events::{EgressEvent, EgressSink, EvidenceSink, LogSink, PolicyDecision, Via, log_event};
pub use proxy::{Intercept, Proxy, ProxyError, ProxyOptions};
pub use refusal::Fault;
pub use resolve::CheckedResolver;
pub use rules::{AllowRule, GrantHost, HostPattern, Injection, is_denied_address, is_metadata};
