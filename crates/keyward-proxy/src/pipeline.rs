//! The one request pipeline. Every way in (the forward proxy, an
//! intercepted CONNECT tunnel, the fd broker, a base-URL endpoint) turns
//! its input into a request bound to a run and a [`Target`], and hands it
//! here. The phases, after pingora: request_filter (network rules,
//! policy, where credentials may go), upstream_request_filter
//! (placeholders, injection, request body), the upstream exchange,
//! response_filter (scrubbing) and logging (one record per request).

use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};

use crate::body::{ProxyBody, empty};
use crate::context::{RunContext, Scope};
use crate::events::{EgressEvent, Metered, Via};
use crate::filters::request::{authority_check, credential_scopes, network_check, policy_check};
use crate::filters::response::{scrub_reason_phrase, scrubbed_body};
use crate::filters::upstream::{inject, request_body, strip_hop_by_hop};
use crate::limits::StallLimited;
use crate::proxy::Proxy;
use crate::record::Target;
use crate::refusal::{Refusal, RefusedBody, Rule};
use crate::run_token::RunToken;
use crate::tunnel::join_upgraded;

impl Proxy {
    /// Forwards one request of `run` to `target`: the whole pipeline.
    pub(crate) async fn forward(
        &self,
        run: &RunContext,
        target: &Target,
        via: Via,
        mut req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        // HTTP/2 in clear came through an h2c tunnel: upstream likewise.
        let prior_knowledge = !target.tls && req.version() == hyper::Version::HTTP_2;
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        // An HTTP/1.1 upgrade (WebSocket): the handshake goes through the
        // same pipeline (injection included); after a 101 both sides are
        // joined, WebSocket frames scrubbed (see websocket.rs).
        let upgrade = req
            .headers()
            .get(header::UPGRADE)
            .cloned()
            .filter(|_| req.version() == hyper::Version::HTTP_11);
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let mut event = self.pending(self.event(run, via, method.as_str(), target, &path));

        // The run token never goes upstream: not in the method, the host,
        // the URL or a header (its body is guarded as it streams).
        if let Some(token) = &run.token
            && let Some(place) = token.in_request(&method, target, req.uri(), req.headers())
        {
            return self.refuse(event.take(), RunToken::refusal(&place));
        }

        // request_filter. A CONNECT here (inside an intercepted tunnel, on
        // a broker stream or to a base URL) would open a raw tunnel from
        // a place that already is one: refused.
        if method == hyper::Method::CONNECT {
            return self.refuse(
                event.take(),
                Refusal::new(
                    Rule::ConnectNotHere,
                    "keyward refused CONNECT here: tunnels are opened on the proxy itself\n"
                        .to_owned(),
                ),
            );
        }
        if let Err(refusal) = network_check(run, target) {
            return self.refuse(event.take(), refusal);
        }
        let (decision, verdict) = policy_check(run, method.as_str(), target, &path);
        event.decision = decision;
        if let Err(refusal) = verdict {
            return self.refuse(event.take(), refusal);
        }
        if let Some(refusal) = self.unrecordable(&event) {
            return self.refuse(event.take(), refusal);
        }
        let scopes = match credential_scopes(run, target) {
            Ok(scopes) => scopes,
            Err(refusal) => return self.refuse(event.take(), refusal),
        };
        let (mut parts, body) = req.into_parts();
        if scopes.contains(&Scope::Allowed)
            && let Err(refusal) = authority_check(&parts, target)
        {
            return self.refuse(event.take(), refusal);
        }

        // upstream_request_filter. Hop-by-hop headers go first, so a
        // `Connection` header cannot name (and so remove) what is injected.
        strip_hop_by_hop(&mut parts.headers);
        if scopes.contains(&Scope::Allowed) {
            // The destination's own spelling of its name, whatever case,
            // trailing dots or leading zeros the client used: a front end
            // routing on the exact Host string sees the grant's host.
            parts.headers.remove(header::HOST);
        }
        let mut path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        let mut injected = match inject(
            run,
            &scopes,
            target,
            &mut parts.headers,
            &mut path_and_query,
        ) {
            Ok(injected) => injected,
            Err(refusal) => return self.refuse(event.take(), refusal),
        };
        // Toward a grant's host, ask for an uncompressed response: it is
        // scrubbed as it streams, without decoding.
        if run
            .credentials
            .iter()
            .any(|c| c.names(&target.host, target.port))
        {
            parts.headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        if run.scrubber.is_some() && crate::grpc::is_grpc(&parts.headers) {
            crate::grpc::ask_uncompressed(&mut parts.headers);
        }
        let websocket = upgrade.as_ref().is_some_and(is_websocket);
        if let Some(protocol) = &upgrade {
            if !injected.is_empty() && !websocket {
                return self.refuse(
                    event.take(),
                    Refusal::new(
                        Rule::UpgradeRefused,
                        format!(
                            "keyward refused this upgrade to {:?}: a handshake that carries a secret may only upgrade to WebSocket, whose frames keyward scrubs\n",
                            String::from_utf8_lossy(protocol.as_bytes())
                        ),
                    ),
                );
            }
            parts.headers.insert(header::UPGRADE, protocol.clone());
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        // Frames are relayed frame by frame (not copied) when either way
        // may carry something to scrub: the run's secrets coming down,
        // its token going up.
        let scrub_frames = websocket && (run.scrubber.is_some() || run.token.is_some());
        if scrub_frames {
            // Compressed frames could not be scrubbed.
            parts.headers.remove("sec-websocket-extensions");
        }
        // The upstream connection negotiates its own version (ALPN); the
        // client's (h2 or HTTP/1.1 with the proxy) does not carry over.
        parts.version = hyper::Version::HTTP_11;
        let authority = target.authority();
        parts.uri = match Uri::builder()
            .scheme(target.scheme())
            .authority(authority.as_str())
            .path_and_query(path_and_query.as_str())
            .build()
        {
            Ok(uri) => uri,
            Err(e) => {
                return self.refuse(
                    event.take(),
                    Refusal::new(
                        Rule::BadUrl,
                        format!("keyward cannot build the upstream URL: {e}\n"),
                    ),
                );
            }
        };
        let body = match request_body(
            run,
            &scopes,
            &target.host,
            self.options.max_substitution_body,
            &mut parts,
            body,
        )
        .await
        {
            Ok((body, body_injected)) => {
                for grant in body_injected {
                    if !injected.contains(&grant) {
                        injected.push(grant);
                    }
                }
                body
            }
            Err(refusal) => return self.refuse(event.take(), refusal),
        };
        let upstream_req = Request::from_parts(parts, body);
        event.injected = injected.iter().map(|g| (*g).to_owned()).collect();

        // The exchange.
        let client = if prior_knowledge {
            self.h2c_client()
        } else {
            self.client()
        };
        let sent = tokio::time::timeout(
            self.options.response_header_timeout,
            client.request(upstream_req),
        );
        let resp = match sent.await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                if let Some(refusal) = RefusedBody::in_chain(&e) {
                    if refusal.rule == Rule::PlaceholderBody {
                        // Recorded with no grant, as this refusal always
                        // has been, although the head went out with any
                        // injected header.
                        event.injected.clear();
                    }
                    return self.refuse(event.take(), refusal.clone());
                }
                let why = keyward_api::error_chain(&e);
                return self.refuse(
                    event.take(),
                    Refusal::new(
                        Rule::UpstreamUnreachable,
                        format!("keyward could not reach {authority}: {why}\n"),
                    )
                    .with_cause(format!("no response: {why}")),
                );
            }
            Err(_) => {
                return self.refuse(
                    event.take(),
                    Refusal::new(
 Rule::UpstreamTimeout,
                        format!(
                            "keyward gave up on {authority}: no response head within proxy.response_header_timeout ({}s)\n",
                            self.options.response_header_timeout.as_secs()
                        ),
                    ),
                );
            }
        };
        if resp.status() == StatusCode::UNAUTHORIZED && !event.injected.is_empty() {
            self.authority
                .credential_rejected(&run.run_id, &event.injected);
        }

        // response_filter.
        let (mut parts, body) = resp.into_parts();
        if let Some(scrubber) = &run.scrubber {
            scrub_reason_phrase(&mut parts.extensions, scrubber);
            scrubber.scrub_headers(&mut parts.headers);
        }
        if parts.status == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let joined_websocket =
                websocket && parts.headers.get(header::UPGRADE).is_some_and(is_websocket);
            if !joined_websocket && (!injected.is_empty() || scrub_frames) {
                // The server switched to something whose bytes cannot be
                // scrubbed: nothing of it reaches the child.
                return self.refuse(
                    event.take(),
                    Refusal::new(
                        Rule::UpstreamSwitchRefused,
                        format!(
                            "keyward refused {authority}'s switch to {:?}: only WebSocket is joined when frames must be scrubbed\n",
                            parts
                                .headers
                                .get(header::UPGRADE)
                                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                                .unwrap_or_default()
                        ),
                    ),
                );
            }
            let scrubber = run.scrubber.clone().filter(|_| joined_websocket);
            let token = run.token.clone().filter(|_| joined_websocket);
            let mut resp = Response::from_parts(parts, body);
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            self.join_after_switch(
                event.take(),
                client_upgrade,
                upstream_upgrade,
                scrubber,
                token,
            );
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, empty());
        }
        event.status = parts.status.as_u16();
        strip_hop_by_hop(&mut parts.headers);
        // An upstream that stalls in the middle of its body is cut off.
        let body = StallLimited::new(body, self.options.response_header_timeout).boxed();
        let body = match &run.scrubber {
            None => body,
            Some(scrubber) => match scrubbed_body(&authority, &mut parts, body, scrubber).await {
                Ok(body) => body,
                Err(refusal) => return self.refuse(event.take(), refusal),
            },
        };
        // logging: the event goes out when the body is done, with its size.
        let body = Metered::new(body, event.take(), self.events.clone());
        Response::from_parts(parts, body.boxed())
    }

    /// After a 101, joins both sides in the background; the event is
    /// recorded when the joined connection ends, with the bytes relayed.
    fn join_after_switch(
        &self,
        mut event: EgressEvent,
        client: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
        scrubber: Option<Arc<crate::scrub::Scrubber>>,
        token: Option<Arc<RunToken>>,
    ) {
        event.status = 101;
        let sink = self.events.clone();
        tokio::spawn(async move {
            match tokio::try_join!(client, upstream) {
                Ok((client, upstream)) => {
                    event.bytes = join_upgraded(client, upstream, scrubber, token).await;
                }
                Err(e) => tracing::debug!("upgrade failed: {e}"),
            }
            sink.record(event);
        });
    }
}

/// Whether an `Upgrade` value is exactly one protocol, WebSocket (a list
/// such as `websocket, x-other` is not: the server may pick the other).
fn is_websocket(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    let mut tokens = text.split(',').map(str::trim).filter(|t| !t.is_empty());
    tokens
        .next()
        .is_some_and(|t| t.eq_ignore_ascii_case("websocket"))
        && tokens.next().is_none()
}
