//! The HTTP trigger: hyper on the given listener, routing by the manifest, a fresh instance
//! of the component per request calling `wasi:http/handler@0.3.0`.

use super::Prepared;
use crate::manifest::{App, Route};
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;

pub struct HttpTrigger {
    routes: Arc<Vec<(Route, Arc<Prepared>, ServicePre<crate::host::Ctx>)>>,
}

impl HttpTrigger {
    pub fn new(app: &App, components: &HashMap<String, Arc<Prepared>>) -> anyhow::Result<HttpTrigger> {
        let mut routes = Vec::new();
        for (route, id) in &app.http_routes {
            let prepared = components.get(id).ok_or_else(|| anyhow::anyhow!("no component {id:?}"))?.clone();
            let service = prepared.http()?;
            routes.push((route.clone(), prepared, service));
        }
        Ok(HttpTrigger { routes: Arc::new(routes) })
    }

    pub async fn serve(&self, listener: TcpListener) -> anyhow::Result<()> {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("spin-host: accept failed: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let routes = self.routes.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let routes = routes.clone();
                    async move { Ok::<_, Infallible>(handle(&routes, req).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                    if !e.is_incomplete_message() {
                        eprintln!("spin-host: connection error: {e}");
                    }
                }
            });
        }
    }
}

type Routes = [(Route, Arc<Prepared>, ServicePre<crate::host::Ctx>)];

async fn handle(routes: &Routes, req: hyper::Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let Some((_, prepared, service)) = routes.iter().find(|(route, _, _)| route.matches(&path)) else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    match call(prepared, service, req).await {
        Ok(response) => response,
        Err(e) => {
            eprintln!("spin-host: component {:?} failed on {path}: {e:#}", prepared.config.id);
            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

async fn call(prepared: &Prepared, service: &ServicePre<crate::host::Ctx>, req: hyper::Request<Incoming>) -> anyhow::Result<Response<Full<Bytes>>> {
    let (mut parts, body) = req.into_parts();
    // The guest sees the full URL, as under Spin.
    let authority = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost").to_string();
    let path_and_query = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".to_string());
    parts.uri = http::Uri::builder().scheme("http").authority(authority).path_and_query(path_and_query).build()?;
    let body = body.map_err(|e| ErrorCode::InternalError(Some(e.to_string())));
    let (request, request_io) = wasmtime_wasi_http::p3::Request::from_http(http::Request::from_parts(parts, body));

    let mut store = prepared.store();
    let handler = service.instantiate_async(&mut store).await?;
    store
        .run_concurrent(async move |accessor| {
            let respond = async {
                let response = handler.handle(accessor, request).await?.map_err(|e| anyhow::anyhow!("guest error: {e:?}"))?;
                let response = accessor.with(|access| response.into_http(access, async { Ok(()) }))?;
                let (parts, body) = response.into_parts();
                let body = body.collect().await.map_err(|e| anyhow::anyhow!("response body: {e:?}"))?.to_bytes();
                anyhow::Ok(Response::from_parts(parts, Full::new(body)))
            };
            let (response, _) = tokio::join!(respond, request_io);
            response
        })
        .await?
}
