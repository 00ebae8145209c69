//! The upstream exchange: the prepared request goes out on the pooled
//! client (or the h2c client, for HTTP/2 in clear), and a failure becomes
//! the refusal that says whose doing it was.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::body::ProxyBody;
use crate::proxy::Proxy;
use crate::refusal::{Refusal, RefusedBody, Rule};
use crate::request_ctx::RequestCtx;

/// Sends `req` and waits (up to `proxy.response_header_timeout`) for the
/// head of its response.
pub(crate) async fn send(
    proxy: &Proxy,
    ctx: &mut RequestCtx<'_>,
    req: Request<ProxyBody>,
) -> Result<Response<Incoming>, Refusal> {
    let client = if ctx.prior_knowledge {
        proxy.h2c_client().clone()
    } else {
        proxy.client()
    };
    let timeout = proxy.options.response_header_timeout;
    let resp = match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => return Err(failed(ctx, &e)),
        Err(_) => {
            return Err(Refusal::new(
                Rule::UpstreamTimeout,
                format!(
                    "keyward gave up on {}: no response head within proxy.response_header_timeout ({}s)\n",
                    ctx.authority,
                    timeout.as_secs()
                ),
            ));
        }
    };
    if resp.status() == StatusCode::UNAUTHORIZED && !ctx.event.injected.is_empty() {
        proxy
            .authority
            .credential_rejected(&ctx.run.run_id, &ctx.event.injected);
    }
    Ok(resp)
}

/// The refusal of an exchange that failed: the one a request body carried
/// when it failed on purpose or because the client broke off, otherwise
/// an unreachable upstream.
fn failed(ctx: &mut RequestCtx<'_>, e: &(dyn std::error::Error + 'static)) -> Refusal {
    if let Some(refusal) = RefusedBody::in_chain(e) {
        if refusal.rule == Rule::PlaceholderBody {
            // Recorded with no grant, as this refusal always has been,
            // although the head went out with any injected header.
            ctx.event.injected.clear();
        }
        return refusal.clone();
    }
    let why = keyward_api::error_chain(e);
    Refusal::new(
        Rule::UpstreamUnreachable,
        format!("keyward could not reach {}: {why}\n", ctx.authority),
    )
    .with_cause(format!("no response: {why}"))
}
