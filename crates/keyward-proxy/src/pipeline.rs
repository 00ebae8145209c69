//! The one request pipeline. Every way in (the forward proxy, an
//! intercepted CONNECT tunnel, the fd broker, a base-URL endpoint) turns
//! its input into a request bound to a run and a [`Target`], and hands it
//! here. The phases, after pingora, each a function that may refuse:
//! request_filter (network rules, policy, where credentials may go),
//! upstream_request_filter (placeholders, injection, request body), the
//! upstream exchange, response_filter (scrubbing) and logging (one record
//! per request). A refusal from any phase leaves by one exit, which
//! records it and answers the client.

use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::body::ProxyBody;
use crate::context::RunContext;
use crate::events::Via;
use crate::exchange;
use crate::filters::{request, response, upstream};
use crate::proxy::Proxy;
use crate::record::Target;
use crate::refusal::Refusal;
use crate::request_ctx::RequestCtx;

impl Proxy {
    /// Forwards one request of `run` to `target`: the whole pipeline.
    pub(crate) async fn forward(
        &self,
        run: &RunContext,
        target: &Target,
        via: Via,
        mut req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let mut ctx = RequestCtx::new(self, run, target, via, &mut req);
        match self.phases(&mut ctx, req).await {
            Ok(resp) => resp,
            Err(refusal) => self.refuse(ctx.event.take(), refusal),
        }
    }

    async fn phases(
        &self,
        ctx: &mut RequestCtx<'_>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let (parts, body) = request::filter(self, ctx, req)?;
        let upstream_req = upstream::filter(self, ctx, parts, body).await?;
        let resp = exchange::send(self, ctx, upstream_req).await?;
        response::filter(self, ctx, resp).await
    }
}
