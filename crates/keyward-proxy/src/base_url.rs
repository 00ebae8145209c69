//! Base-URL endpoints: plain HTTP on the proxy's own loopback port, one
//! path per run and grant (`/r/<run token>/<grant>/...`), for SDKs and
//! tools that take a base URL and ignore `HTTPS_PROXY` or pin
//! certificates. A request is forwarded over TLS to the grant's host
//! through the same pipeline; the child needs no CA. The token in the path
//! is checked like the proxy token and never goes upstream or on record.

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};

use crate::body::{ProxyBody, text};
use crate::events::Via;
use crate::proxy::Proxy;
use crate::record::Target;
use crate::refusal::{Refusal, Rule};

/// Where base-URL endpoints live on the proxy's port.
pub(crate) const PREFIX: &str = "/r/";

/// A base-URL request's path, split.
struct Endpoint<'a> {
    token: &'a str,
    grant: &'a str,
    /// The rest, starting with `/`, query included.
    rest: String,
}

fn parse(uri: &Uri) -> Option<Endpoint<'_>> {
    let path = uri.path().strip_prefix(PREFIX)?;
    let (token, after) = path.split_once('/').unwrap_or((path, ""));
    let (grant, rest) = match after.split_once('/') {
        Some((grant, rest)) => (grant, format!("/{rest}")),
        None => (after, "/".to_owned()),
    };
    if token.is_empty() || grant.is_empty() {
        return None;
    }
    let rest = match uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest,
    };
    Some(Endpoint { token, grant, rest })
}

impl Proxy {
    /// A request to a base-URL endpoint.
    pub(crate) async fn base_url(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let not_found = || {
            text(
                StatusCode::NOT_FOUND,
                "keyward: no base-URL endpoint here: the run has ended, or the URL is not one \
                 `keyward run --base-url` exported\n",
            )
        };
        let Some(endpoint) = parse(req.uri()) else {
            return not_found();
        };
        let Some(run) = self.authority.authenticate(endpoint.token).await else {
            return not_found();
        };
        let hosts = run
            .credentials
            .iter()
            .find(|c| c.grant == endpoint.grant)
            .map(|c| &c.hosts)
            .or_else(|| {
                run.withheld
                    .iter()
                    .find(|w| w.grant == endpoint.grant)
                    .map(|w| &w.hosts)
            });
        let destination = hosts.and_then(|hosts| hosts.iter().find_map(|h| h.tls_destination()));
        let Some((host, port)) = destination else {
            let target = Target::none();
            let event = self.event(&run, Via::BaseUrl, req.method().as_str(), &target, "");
            let why = if hosts.is_some() {
                "names no single host (only wildcards)"
            } else {
                "is not a grant of this run"
            };
            return self.refuse(
                event,
                Refusal::new(
                    Rule::BaseUrlUnknownGrant,
                    format!(
                        "keyward: grant {:?} {why}, so it has no base-URL endpoint\n",
                        endpoint.grant
                    ),
                ),
            );
        };
        let target = Target {
            tls: true,
            host: host.to_owned(),
            port,
        };
        // The endpoint stands for the grant's host: the request is
        // addressed to it from here on, and the token leaves the path.
        let rewritten = Uri::builder()
            .path_and_query(endpoint.rest.as_str())
            .build();
        let Ok(uri) = rewritten else {
            let event = self.event(&run, Via::BaseUrl, req.method().as_str(), &target, "");
            return self.refuse(
                event,
                Refusal::new(
                    Rule::BadUrl,
                    "keyward cannot forward this path\n".to_owned(),
                ),
            );
        };
        *req.uri_mut() = uri;
        if let Ok(value) = HeaderValue::from_str(&target.authority()) {
            req.headers_mut().insert(header::HOST, value);
        }
        self.forward(&run, &target, Via::BaseUrl, req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_paths_split_into_token_grant_and_rest() {
        let uri: Uri = "/r/tok/anthropic/v1/messages?x=1".parse().unwrap();
        let e = parse(&uri).unwrap();
        assert_eq!(
            (e.token, e.grant, e.rest.as_str()),
            ("tok", "anthropic", "/v1/messages?x=1")
        );
        let uri: Uri = "/r/tok/anthropic".parse().unwrap();
        assert_eq!(parse(&uri).unwrap().rest, "/");
        for bad in ["/r/", "/r/tok", "/r/tok/", "/r//g/x", "/x/tok/g/"] {
            assert!(parse(&bad.parse().unwrap()).is_none(), "{bad}");
        }
    }
}
