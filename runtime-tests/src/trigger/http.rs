//! The HTTP trigger, served the way Spin 4.1 serves it (crates/trigger-http/src/server.rs):
//! hyper_util's auto builder on every accepted socket, without TCP_NODELAY; routing by the
//! manifest; each component's requests handed to a wasmtime-wasi-http `ProxyHandler`, which
//! reuses an instance for up to 128 requests, 16 at a time, and lets it go after 1 s idle
//! (trigger-http/src/lib.rs `InstanceReuseConfig` defaults); the guest's response body
//! streamed to hyper as the guest writes it (trigger-http/src/wasip3.rs). So a response
//! without Content-Length goes out chunked, its end in a write of its own, and on a keep-alive
//! connection that write waits for the client's delayed ACK (~40 ms), exactly as under Spin.

use super::Prepared;
use crate::host::Ctx;
use crate::manifest::{App, Route};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, Uri, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
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
}

impl HttpTrigger {
    pub fn new(app: &App, components: &HashMap<String, Arc<Prepared>>) -> anyhow::Result<HttpTrigger> {
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
                    let handler = ProxyHandler::new(Instances { prepared, service });
                    handlers.insert(id, handler.clone());
                    handler
                }
            };
            routes.push((route.clone(), handler));
        }
        Ok(HttpTrigger { routes: Arc::new(routes) })
    }

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
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let routes = routes.clone();
                    async move { Ok::<_, Infallible>(handle(&routes, client, req).await) }
                });
                let served = Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
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

async fn handle(routes: &[(Route, ProxyHandler<Instances>)], client: SocketAddr, mut req: hyper::Request<Incoming>) -> Response<Body> {
    // Transport information, removed before the guest sees the request (Spin's headers.rs
    // `strip_forbidden_headers`).
    req.headers_mut().remove(header::CONNECTION);
    let path = req.uri().path().to_string();
    let Some((route, handler)) = routes.iter().find(|(route, _)| route.matches(&path)) else {
        // Spin's generic 404 and 500 have empty bodies (server.rs `not_found`, `internal_error`).
        return empty(StatusCode::NOT_FOUND);
    };
    match call(handler, route, client, req).await {
        Ok(response) => response,
        Err(e) => {
            eprintln!("spin-host: component {:?} failed on {path}: {e:#}", handler.state().prepared.config.id);
            empty(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response
}

async fn call(handler: &ProxyHandler<Instances>, route: &Route, client: SocketAddr, req: hyper::Request<Incoming>) -> anyhow::Result<Response<Body>> {
    let (mut parts, body) = req.into_parts();
    // The guest sees the full URL (server.rs `set_req_uri`) and Spin's informational headers
    // (headers.rs `compute_default_headers`).
    let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost").to_string();
    let path_and_query = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".to_string());
    let path_info = route.path_info(parts.uri.path()).to_string();
    let full_url = format!("http://{host}{path_and_query}");
    parts.uri = Uri::builder().scheme("http").authority(host).path_and_query(path_and_query).build()?;
    let raw_route = route.raw();
    let client = client.to_string();
    for (name, value) in [
        ("spin-path-info", path_info.as_str()),
        ("spin-full-url", full_url.as_str()),
        ("spin-matched-route", raw_route.as_str()),
        ("spin-base-path", "/"),
        ("spin-raw-component-route", raw_route.as_str()),
        ("spin-component-route", route.prefix()),
        ("spin-client-addr", client.as_str()),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            parts.headers.insert(HeaderName::from_static(name), value);
        }
    }
    let body = body.map_err(|e| handler::ErrorCode::from(wasmtime_wasi_http::p2::hyper_response_error(e))).boxed_unsync();
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

/// Makes instances of one component for its `ProxyHandler` (Spin: server.rs
/// `HttpHandlerState`).
pub struct Instances {
    prepared: Arc<Prepared>,
    service: ServicePre<Ctx>,
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
            expiration: Expiry { sleep: Box::pin(tokio::time::sleep(Duration::MAX)) },
            state: Reuse { component: self.prepared.config.id.clone() },
        })
    }
}

/// When an instance is let go: after it has been idle for 1 s; never while it is handling
/// requests, as Spin sets no request timeout by default (server.rs `HttpWorkerExpiration`).
pub struct Expiry {
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl WorkerExpiration for Expiry {
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>, status: WorkerStatus, start: Instant) -> Poll<()> {
        if status != WorkerStatus::Idle {
            return Poll::Pending;
        }
        let Some(deadline) = start.checked_add(IDLE_INSTANCE_TIMEOUT) else {
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        let me = self.get_mut();
        if me.sleep.deadline() != deadline {
            me.sleep.as_mut().reset(deadline);
        }
        me.sleep.as_mut().poll(cx)
    }
}

/// How many requests an instance takes (server.rs `HttpWorkerState`).
pub struct Reuse {
    component: String,
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

    fn on_request_start(&self, _: StoreContextMut<'_, Ctx>, _: (), _: GuestTaskId) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        // No request timeout.
        Box::pin(std::future::pending())
    }

    fn drop(&self, store: Store<Ctx>, result: wasmtime::Result<()>) {
        if let Err(e) = result {
            eprintln!("spin-host: an instance of component {:?} failed: {e:?}", self.component);
        }
        drop(store);
    }
}
