//! The guard as a [`tower_layer::Layer`], for servers built on tower (axum, tonic, rmcp's
//! Streamable HTTP service): the same decision as [`Protected`](crate::guard::Protected).

use crate::guard::{admit, with_nonce, BoxFuture, Guard, GuardedBody, Routing};
use http_body_util::{Either, Full};
use hyper::body::Bytes;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Puts the guard in front of a tower service: every request is decided before the service
/// sees it, a refusal is answered with its RFC 6750 challenge, and an allowed request carries
/// its decision as extensions ([`Allowed`](crate::verify::Allowed) and its
/// `Arc<TokenClaims>`). The service receives the body as [`GuardedBody`].
#[derive(Debug, Clone)]
pub struct GuardLayer {
    guard: Arc<Guard>,
    routing: Routing,
}

impl GuardLayer {
    /// A layer for a plain HTTP tool server: `tool_for` names the tool a request calls
    /// (`None`: a request to the server as a whole).
    pub fn new(guard: Arc<Guard>, tool_for: fn(&http::request::Parts) -> Option<String>) -> Self {
        Self::with_routing(guard, Routing::Path(tool_for))
    }

    /// A layer for an MCP server over Streamable HTTP: every JSON-RPC message of a request is
    /// decided, a `tools/call` against its tool (see [`Routing::Mcp`]).
    pub fn mcp(guard: Arc<Guard>) -> Self {
        Self::with_routing(guard, Routing::Mcp)
    }

    /// A layer with requests mapped to tools by `routing`.
    pub fn with_routing(guard: Arc<Guard>, routing: Routing) -> Self {
        Self { guard, routing }
    }
}

impl<S> tower_layer::Layer<S> for GuardLayer {
    type Service = GuardService<S>;

    fn layer(&self, inner: S) -> GuardService<S> {
        GuardService {
            guard: self.guard.clone(),
            routing: self.routing,
            inner,
        }
    }
}

/// A tower service behind the guard, made by [`GuardLayer`].
#[derive(Debug, Clone)]
pub struct GuardService<S> {
    guard: Arc<Guard>,
    routing: Routing,
    inner: S,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for GuardService<S>
where
    S: tower_service::Service<http::Request<GuardedBody<B>>, Response = http::Response<R>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    R: Send + 'static,
{
    type Response = http::Response<Either<R, Full<Bytes>>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The service that was polled ready takes this request; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let guard = self.guard.clone();
        let routing = self.routing;
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            match admit(&guard, routing, &mut parts, body).await {
                Ok(body) => {
                    let nonce = guard.nonce_header(&parts.headers);
                    let resp = inner.call(http::Request::from_parts(parts, body)).await?;
                    Ok(with_nonce(resp.map(Either::Left), nonce))
                }
                Err(answer) => Ok(answer.map(Either::Right)),
            }
        })
    }
}
