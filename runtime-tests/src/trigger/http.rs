//! The HTTP trigger, served the way Spin 4.1 serves it (crates/trigger-http/src/server.rs):
//! hyper_util's auto builder on every accepted socket, without TCP_NODELAY; routing by the
//! manifest; each component's requests handed to a wasmtime-wasi-http `ProxyHandler`, which
//! reuses an instance for up to 128 requests, 16 at a time, and lets it go after 1 s idle
//! (trigger-http/src/lib.rs `InstanceReuseConfig` defaults); the guest's response body
//! streamed to hyper as the guest writes it (trigger-http/src/wasip3.rs). So a response
//! without Content-Length goes out chunked, its end in a write of its own, and on a keep-alive
//! connection that write waits for the client's delayed ACK (~40 ms), exactly as under Spin.
//!
//! At shutdown each connection finishes the request it is serving and closes, and each idle
//! instance ends at once (`Expiry`), so that none is left for the runtime's drop to cancel.

use super::Prepared;
use crate::Shutdown;
use crate::host::Ctx;
use crate::manifest::{App, Route};
use anyhow::Context as _;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, Response, StatusCode, Uri, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tracing::Instrument;
use wasmtime::component::GuestTaskId;
use wasmtime::{Store, StoreContextMut};
use wasmtime_wasi_http::handler::{
    self, HandlerState, Proxy, ProxyHandler, ShouldAccept, ViewFn, WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode as P2ErrorCode;
use wasmtime_wasi_http::p3::WasiHttpView;
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode as P3ErrorCode;

/// Spin 4.1's defaults: DEFAULT_WASIP3_MAX_INSTANCE_REUSE_COUNT, ..._CONCURRENT_REUSE_COUNT
/// and DEFAULT_IDLE_INSTANCE_TIMEOUT in trigger-http/src/lib.rs (no request timeout).
const MAX_REQUESTS_PER_INSTANCE: usize = 128;
const MAX_CONCURRENT_PER_INSTANCE: usize = 16;
const IDLE_INSTANCE_TIMEOUT: Duration = Duration::from_secs(1);

/// The body hyper writes: Spin's `HyperOutgoingBody`.
type Body = UnsyncBoxBody<Bytes, P2ErrorCode>;

pub struct HttpTrigger {
    routes: Arc<Vec<(Route, ProxyHandler<Instances>)>>,
    shutdown: Shutdown,
}

impl HttpTrigger {
    pub fn new(
        app: &App,
        components: &HashMap<String, Arc<Prepared>>,
        shutdown: &Shutdown,
    ) -> anyhow::Result<HttpTrigger> {
        // One handler (one pool of instances) per component, shared by all its routes, as
        // Spin keys them (server.rs `component_handler_types`).
        let mut handlers: HashMap<&str, ProxyHandler<Instances>> = HashMap::new();
        let mut routes = Vec::new();
        for (route, id) in &app.http_routes {
            let handler = match handlers.get(id.as_str()) {
                Some(handler) => handler.clone(),
                None => {
                    let prepared = components.get(id).ok_or_else(|| anyhow::anyhow!("no component {id:?}"))?.clone();
                    let service = prepared.http()?;
                    let handler = ProxyHandler::new(Instances { prepared, service, shutdown: shutdown.clone() });
                    handlers.insert(id, handler.clone());
                    handler
                }
            };
            routes.push((route.clone(), handler));
        }
        Ok(HttpTrigger { routes: Arc::new(routes), shutdown: shutdown.clone() })
    }

    /// Accepts until dropped (the caller stops it by dropping this future, which closes the
    /// listener).
    pub async fn serve(&self, listener: TcpListener) -> anyhow::Result<()> {
        loop {
            let (stream, client) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("spin-host: accept failed: {e}");
                    continue;
                }
            };
            // No `set_nodelay`: Spin sets none on the sockets it accepts (server.rs
            // `serve_http`), and that is what makes a chunked response's last write stall.
            let routes = self.routes.clone();
            let working = self.shutdown.working();
            let stopped = self.shutdown.stopped();
            tokio::spawn(async move {
                let _working = working;
                // An error here (an unusable Host) makes hyper close the connection without a
                // response, as Spin's service does (server.rs `instrumented_service_fn`).
                let service = hyper::service::service_fn(move |req| {
                    let routes = routes.clone();
                    async move { handle(&routes, client, req).await }
                });
                let builder = Builder::new(TokioExecutor::new());
                let mut connection = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), service));
                let served = tokio::select! {
                    served = connection.as_mut() => served,
                    () = stopped => {
                        // The request in flight, if any, is answered; then the connection closes.
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(e) = served {
                    // A client that goes away between requests is not worth a line.
                    if !e.downcast_ref::<hyper::Error>().is_some_and(|e| e.is_incomplete_message()) {
                        eprintln!("spin-host: connection error: {e}");
                    }
                }
            });
        }
    }
}

/// One request inside Spin's per-request span (instrument.rs `http_span!`, server.rs
/// `instrumented_service_fn`, `finalize_http_span`). Under the subscriber `spin-host` installs
/// as Spin does (main.rs), the spans are created in the registry though no layer records them,
/// and the INFO events ask the filters when hit (RUST_LOG unset drops them); what Spin computes
/// eagerly (the method string, the span's name) is computed here too.
async fn handle(
    routes: &[(Route, ProxyHandler<Instances>)],
    client: SocketAddr,
    req: hyper::Request<Incoming>,
) -> anyhow::Result<Response<Body>> {
    let span = tracing::info_span!(
        "spin_trigger_http.handle_http_request",
        "otel.kind" = "server",
        "http.request.method" = %req.method(),
        "network.peer.address" = %client.ip(),
        "network.peer.port" = %client.port(),
        "network.protocol.name" = "http",
        "url.path" = req.uri().path(),
        "url.query" = req.uri().query().unwrap_or(""),
        "url.scheme" = req.uri().scheme_str().unwrap_or(""),
        "client.address" = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()),
        "error.type" = tracing::field::Empty,
        "http.response.status_code" = tracing::field::Empty,
        "http.route" = tracing::field::Empty,
        "otel.name" = tracing::field::Empty,
    );
    let method = req.method().to_string();
    async move {
        let result = route(routes, client, req).await;
        let span = tracing::Span::current();
        match &result {
            Ok(response) => {
                tracing::info!("Request finished, sending response with status code {}", response.status());
                match response.extensions().get::<MatchedRoute>() {
                    Some(MatchedRoute(route)) => {
                        span.record("http.route", route.as_str());
                        span.record("otel.name", format!("{method} {route}"));
                    }
                    None => {
                        span.record("otel.name", method);
                    }
                }
                span.record("http.response.status_code", response.status().as_u16());
            }
            Err(e) => {
                tracing::info!(error = %e);
                span.record("error.type", format!("{e:?}"));
                span.record("http.response.status_code", 500);
                span.record("otel.name", method);
            }
        }
        result
    }
    .instrument(span)
    .await
}

/// The route a response came from, for the span (Spin: instrument.rs `MatchedRoute`).
#[derive(Clone)]
struct MatchedRoute(String);

/// Spin's server.rs `handle` and `handle_trigger_route`.
async fn route(
    routes: &[(Route, ProxyHandler<Instances>)],
    client: SocketAddr,
    mut req: hyper::Request<Incoming>,
) -> anyhow::Result<Response<Body>> {
    // Transport information, removed before the guest sees the request (Spin's headers.rs
    // `strip_forbidden_headers`).
    req.headers_mut().remove(header::CONNECTION);
    let path = req.uri().path().to_string();
    tracing::info!("Processing request on path '{path}'");
    let Some((route, handler)) = routes.iter().find(|(route, _)| route.matches(&path)) else {
        // Spin's generic 404 and 500 have empty bodies (server.rs `not_found`, `internal_error`).
        return Ok(empty(StatusCode::NOT_FOUND));
    };
    set_req_uri(&mut req)?;
    let component = &handler.state().prepared.config.id;
    let span = tracing::info_span!(
        "spin_trigger_http.execute_wasm",
        "otel.name" = format!("execute_wasm_component {component}")
    );
    let mut response = match call(handler, route, client, req).instrument(span).await {
        Ok(response) => response,
        Err(e) => {
            eprintln!("spin-host: component {component:?} failed on {path}: {e:#}");
            empty(StatusCode::INTERNAL_SERVER_ERROR)
        }
    };
    response.extensions_mut().insert(MatchedRoute(route.raw()));
    Ok(response)
}

/// The guest sees an absolute URL, its authority from the Host header or the request line
/// (server.rs `set_req_uri`); when neither gives one, or they disagree, Spin fails the request
/// before routing it to a component.
fn set_req_uri(req: &mut hyper::Request<Incoming>) -> anyhow::Result<()> {
    let from_header = match req.headers().get(header::HOST) {
        Some(host) => Some(
            host.to_str()
                .context("'Host' header is not valid UTF-8")?
                .parse::<Authority>()
                .context("'Host' header contains an invalid authority")?,
        ),
        None => None,
    };
    let mut parts = req.uri().clone().into_parts();
    let authority = match (from_header, parts.authority.take()) {
        (None, None) => anyhow::bail!("no 'Host' header present in request"),
        (Some(authority), None) | (None, Some(authority)) => authority,
        (Some(header), Some(uri)) => {
            anyhow::ensure!(header == uri, "authority in 'Host' header does not match authority in URI");
            header
        }
    };
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    *req.uri_mut() = Uri::from_parts(parts)?;
    Ok(())
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response
}

async fn call(
    handler: &ProxyHandler<Instances>,
    route: &Route,
    client: SocketAddr,
    req: hyper::Request<Incoming>,
) -> anyhow::Result<Response<Body>> {
    let (mut parts, body) = req.into_parts();
    prepare_headers(&mut parts, route, client)?;
    let body =
        body.map_err(|e| handler::ErrorCode::from(wasmtime_wasi_http::p2::hyper_response_error(e))).boxed_unsync();
    let response = handler.handle((), http::Request::from_parts(parts, body)).await.map_err(super::wasm_error)?;
    // Streamed, not collected: hyper writes each piece as the guest produces it.
    Ok(response.map(|body| {
        body.map_err(|e| match e.downcast::<P3ErrorCode>() {
            Ok(code) => code.into(),
            Err(e) => P2ErrorCode::InternalError(Some(e.to_string())),
        })
        .boxed_unsync()
    }))
}

/// Rebuilds the request's headers as Spin does before the component runs (wasi.rs
/// `prepare_request`, headers.rs `prepare_request_headers` and `compute_default_headers`):
/// every header copied out as a pair of strings, then Spin's informational headers added and
/// the map refilled from the pairs. A header value that is not UTF-8 fails the request, and
/// the caller answers 500 with an empty body without running the component ("invalid utf-8
/// sequence").
fn prepare_headers(parts: &mut http::request::Parts, route: &Route, client: SocketAddr) -> anyhow::Result<()> {
    let mut pairs = Vec::with_capacity(parts.headers.len() + 7);
    for (name, value) in &parts.headers {
        pairs.push((name.to_string(), std::str::from_utf8(value.as_bytes())?.to_string()));
    }
    let host = match parts.headers.get(header::HOST) {
        Some(host) => std::str::from_utf8(host.as_bytes())?,
        None => "localhost",
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let full_url = format!("{}://{host}{path_and_query}", parts.uri.scheme_str().unwrap_or("http"));
    let raw_route = route.raw();
    for (name, value) in [
        ("spin-path-info", route.path_info(parts.uri.path()).to_string()),
        ("spin-full-url", full_url),
        ("spin-matched-route", raw_route.clone()),
        ("spin-base-path", "/".to_string()),
        ("spin-raw-component-route", raw_route),
        ("spin-component-route", route.prefix().to_string()),
        ("spin-client-addr", client.to_string()),
    ] {
        pairs.push((name.to_string(), value));
    }
    parts.headers.clear();
    // Appended, as Spin's `extend` does: a client's own `spin-*` header stays beside ours.
    parts.headers.extend(pairs.into_iter().filter_map(|(name, value)| {
        Some((name.parse::<HeaderName>().ok()?, HeaderValue::from_bytes(value.as_bytes()).ok()?))
    }));
    Ok(())
}

/// Makes instances of one component for its `ProxyHandler` (Spin: server.rs
/// `HttpHandlerState`).
pub struct Instances {
    prepared: Arc<Prepared>,
    service: ServicePre<Ctx>,
    shutdown: Shutdown,
}

impl HandlerState for Instances {
    type StoreData = Ctx;
    type WorkerExpiration = Expiry;
    type WorkerState = Reuse;

    async fn instantiate(&self) -> wasmtime::Result<handler::Instance<Ctx, Expiry, Reuse>> {
        let mut store = self.prepared.store();
        let service = self.service.instantiate_async(&mut store).await?;
        Ok(handler::Instance {
            store,
            proxy: Proxy::P3(service),
            view: ViewFn::P3(<Ctx as WasiHttpView>::http),
            expiration: Expiry {
                sleep: Box::pin(tokio::time::sleep(Duration::MAX)),
                stopped: Some(Mutex::new(Box::pin(self.shutdown.stopped()))),
            },
            state: Reuse {
                component: self.prepared.config.id.clone(),
                shutdown: self.shutdown.clone(),
                _working: self.shutdown.working(),
            },
        })
    }
}

/// When an instance is let go: after it has been idle for 1 s, or at once when idle once the
/// host is stopping; never while it is handling requests, as Spin sets no request timeout by
/// default (server.rs `HttpWorkerExpiration`).
pub struct Expiry {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The shutdown signal until it has fired (a finished future must not be polled again).
    /// In a `Mutex` only because `WorkerExpiration` must be `Sync`; `get_mut` never locks.
    stopped: Option<Mutex<Pin<Box<dyn Future<Output = ()> + Send>>>>,
}

impl WorkerExpiration for Expiry {
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>, status: WorkerStatus, start: Instant) -> Poll<()> {
        if status != WorkerStatus::Idle {
            return Poll::Pending;
        }
        let me = self.get_mut();
        match &mut me.stopped {
            None => return Poll::Ready(()),
            Some(stopped) => {
                let stopped = stopped.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
                if stopped.as_mut().poll(cx).is_ready() {
                    me.stopped = None;
                    return Poll::Ready(());
                }
            }
        }
        let Some(deadline) = start.checked_add(IDLE_INSTANCE_TIMEOUT) else {
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        if me.sleep.deadline() != deadline {
            me.sleep.as_mut().reset(deadline);
        }
        me.sleep.as_mut().poll(cx)
    }
}

/// How many requests an instance takes (server.rs `HttpWorkerState`).
pub struct Reuse {
    component: String,
    shutdown: Shutdown,
    /// The host waits, at shutdown, for the instance to end.
    _working: Option<crate::Working>,
}

impl WorkerState for Reuse {
    type StoreData = Ctx;
    type RequestId = ();

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if total >= MAX_REQUESTS_PER_INSTANCE {
            ShouldAccept::Never
        } else if concurrent >= MAX_CONCURRENT_PER_INSTANCE {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        _: StoreContextMut<'_, Ctx>,
        _: (),
        _: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        // No request timeout.
        Box::pin(std::future::pending())
    }

    fn drop(&self, store: Store<Ctx>, result: wasmtime::Result<()>) {
        match result {
            Ok(()) => {}
            // The instance was still running when the host stopped waiting and the runtime's
            // drop cancelled it; wasmtime-wasi-http calls that "worker panicked", which it
            // was not (a real panic has already printed its own message).
            Err(_) if self.shutdown.is_stopping() => {
                eprintln!(
                    "spin-host: an instance of component {:?} was stopped mid-request at shutdown",
                    self.component
                )
            }
            Err(e) => eprintln!("spin-host: an instance of component {:?} failed: {e:?}", self.component),
        }
        drop(store);
    }
}
