//! Outbound `wasi:http` (p3) as Spin 4.1 sends it (factor-outbound-http/src/wasi.rs, lib.rs,
//! runtime_config.rs with its defaults):
//! - the component's `allowed_outbound_hosts` gate every request (`HttpRequestDenied`, the
//!   refusal logged); relative ("self") requests are refused, as from a Spin Redis trigger;
//! - one hyper client pool for the whole process, pooling on, idle connections kept across
//!   requests and instances, no cap on connections, redirects not followed;
//! - connect, first-byte and between-bytes timeouts from the guest's request options, 600 s
//!   each when it sets none; the same error codes for the same failures;
//! - https through rustls with the webpki roots, ALPN h2 or http/1.1.

use crate::allowed_hosts::AllowedHosts;
use bytes::Bytes;
use http::Uri;
use http::uri::Scheme;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Sleep, timeout};
use tokio_rustls::client::TlsStream;
use tracing::Instrument;
use wasmtime_wasi::TrappableError;
use wasmtime_wasi_http::p3::bindings::http::types::{DnsErrorPayload, ErrorCode};
use wasmtime_wasi_http::p3::{RequestOptions, WasiHttpHooks};

/// Each timeout the guest leaves unset (wasi.rs `DEFAULT_TIMEOUT`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

type OutgoingBody = UnsyncBoxBody<Bytes, ErrorCode>;
type Response = http::Response<OutgoingBody>;

/// The process's clients, cloned into every instance (lib.rs `AppState::wasi_http_clients`,
/// built by wasi.rs `HttpClients::new` with pooling on: runtime_config.rs's default).
#[derive(Clone)]
pub struct HttpClients {
    http1: Client<HttpConnector, OutgoingBody>,
    https: Client<HttpsConnector, OutgoingBody>,
}

impl Default for HttpClients {
    fn default() -> HttpClients {
        // hyper-util's defaults, as Spin leaves them: idle connections kept (90 s), no
        // per-host cap. (Spin's h2c client exists only for a development environment variable.)
        HttpClients {
            http1: Client::builder(TokioExecutor::new()).build(HttpConnector),
            https: Client::builder(TokioExecutor::new()).build(HttpsConnector),
        }
    }
}

/// One instance's outbound HTTP (lib.rs `InstanceHttpHooks`).
pub struct Hooks {
    /// Whose `allowed_outbound_hosts` apply.
    pub component: Arc<crate::manifest::ComponentConfig>,
    pub clients: HttpClients,
}

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<OutgoingBody>,
        options: Option<RequestOptions>,
        // A response-processing error the guest reports: nothing to do with it (as in Spin).
        _fut: Box<dyn Future<Output = Result<(), ErrorCode>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (Response, Box<dyn Future<Output = Result<(), ErrorCode>> + Send>),
                    TrappableError<ErrorCode>,
                >,
            > + Send,
    > {
        let timeouts = Timeouts {
            connect: options.and_then(|o| o.connect_timeout).unwrap_or(DEFAULT_TIMEOUT),
            first_byte: options.and_then(|o| o.first_byte_timeout).unwrap_or(DEFAULT_TIMEOUT),
            between_bytes: options.and_then(|o| o.between_bytes_timeout).unwrap_or(DEFAULT_TIMEOUT),
        };
        // The span Spin's `#[instrument]` opens on every request (and what it costs).
        let span = tracing::info_span!(
            "spin_outbound_http.send_request",
            otel.kind = "client",
            url.full = %request.uri(),
            http.request.method = %request.method(),
            otel.name = %request.method(),
            http.response.status_code = tracing::field::Empty,
        );
        let allowed = span.in_scope(|| prepare(&self.component.allowed_outbound_hosts, &request));
        let clients = self.clients.clone();
        Box::new(
            async move {
                allowed?;
                let response = send(clients, request, timeouts).await?;
                tracing::Span::current().record("http.response.status_code", response.status().as_u16());
                Ok((response, Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>))
            }
            .instrument(span),
        )
    }
}

#[derive(Clone, Copy)]
struct Timeouts {
    connect: Duration,
    first_byte: Duration,
    between_bytes: Duration,
}

/// The allowed-hosts check (wasi.rs `RequestSender::prepare_request`).
fn prepare(allowed: &AllowedHosts, request: &http::Request<OutgoingBody>) -> Result<(), ErrorCode> {
    let is_self_request = request.uri().authority().is_none_or(|a| a.host().is_empty() || a.host() == "self.alt");
    if is_self_request {
        if !allowed.allows_relative(&["http", "https"]) {
            tracing::error!("Outbound network destination not allowed: http://self");
            eprintln!(
                "Warning: A component tried to make an HTTP request to its own app but it does not have permission."
            );
            return Err(ErrorCode::HttpRequestDenied);
        }
        // Spin sets a self-request origin only for HTTP-triggered instances; this host sets
        // none (the app makes no self requests).
        tracing::error!("Couldn't handle outbound HTTP request to relative URI; no origin set");
        return Err(ErrorCode::HttpRequestUriInvalid);
    }
    if !allowed.check_url(&request.uri().to_string(), "https") {
        return Err(ErrorCode::HttpRequestDenied);
    }
    Ok(())
}

/// wasi.rs `RequestSender::send_request`: the first-byte timeout covers getting a
/// connection (pooled or new) and the response head.
async fn send(
    clients: HttpClients,
    mut request: http::Request<OutgoingBody>,
    timeouts: Timeouts,
) -> Result<Response, ErrorCode> {
    // Some servers refuse a Host header over h2; hyper sets it again for HTTP/1.
    request.headers_mut().remove(http::header::HOST);
    let use_tls = request.uri().scheme() == Some(&Scheme::HTTPS);
    let response = CONNECT_TIMEOUT.scope(timeouts.connect, async move {
        if use_tls { clients.https.request(request).await } else { clients.http1.request(request).await }
    });
    let response = timeout(timeouts.first_byte, response)
        .await
        .map_err(|_| ErrorCode::ConnectionReadTimeout)?
        .map_err(|e| error_code(&e))?;
    Ok(response.map(|body| {
        BetweenBytesTimeout {
            body: Some(body.map_err(|e| error_code(&e))),
            sleep: None,
            timeout: timeouts.between_bytes,
        }
        .boxed_unsync()
    }))
}

/// The connector's own error if it is the cause, else a protocol error (wasi.rs
/// `hyper_legacy_request_error`, `hyper_request_error`).
fn error_code(error: &(dyn std::error::Error + 'static)) -> ErrorCode {
    if let Some(code) = error.source().and_then(|cause| cause.downcast_ref::<ConnectError>()) {
        return code.0.clone();
    }
    tracing::warn!("hyper request error: {error:?}");
    ErrorCode::HttpProtocolError
}

tokio::task_local! {
    /// The connect timeout of the request that may open a connection (hyper's pool gives the
    /// connector only the URI; Spin plumbs its options the same way).
    static CONNECT_TIMEOUT: Duration;
}

/// An `ErrorCode` carried through hyper as an error source.
#[derive(Debug)]
struct ConnectError(ErrorCode);

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::error::Error for ConnectError {}

fn dns_error(rcode: &str) -> ErrorCode {
    ErrorCode::DnsError(DnsErrorPayload { rcode: Some(rcode.to_string()), info_code: Some(0) })
}

/// wasi.rs `ConnectOptions::connect_tcp`: the lookup is not under the connect timeout, the
/// TCP connect is; a failed connect is `ConnectionRefused`.
async fn connect_tcp(uri: &Uri, default_port: u16) -> Result<TcpStream, ConnectError> {
    let authority = uri.authority().ok_or(ConnectError(ErrorCode::HttpRequestUriInvalid))?;
    let host_and_port = match authority.port() {
        Some(_) => authority.as_str().to_string(),
        None => format!("{}:{default_port}", authority.as_str()),
    };
    let addrs = tokio::net::lookup_host(&host_and_port)
        .await
        .map_err(|_| ConnectError(dns_error("address not available")))?
        .collect::<Vec<_>>();
    let connect_timeout = CONNECT_TIMEOUT.try_with(|t| *t).unwrap_or(DEFAULT_TIMEOUT);
    let stream = timeout(connect_timeout, TcpStream::connect(&*addrs))
        .await
        .map_err(|_| ConnectError(ErrorCode::ConnectionTimeout))?;
    stream.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrNotAvailable => ConnectError(dns_error("address not available")),
        _ => ConnectError(ErrorCode::ConnectionRefused),
    })
}

#[derive(Clone)]
struct HttpConnector;

impl tower_service::Service<Uri> for HttpConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move { Ok(TokioIo::new(connect_tcp(&uri, 80).await?)) })
    }
}

/// rustls with the webpki roots, offering h2 and http/1.1 (wasi.rs `connect_tls`).
#[derive(Clone)]
struct HttpsConnector;

fn tls_config() -> Arc<tokio_rustls::rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<tokio_rustls::rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = tokio_rustls::rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
            let mut config =
                tokio_rustls::rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Arc::new(config)
        })
        .clone()
}

impl tower_service::Service<Uri> for HttpsConnector {
    type Response = TokioIo<RustlsStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let tcp = connect_tcp(&uri, 443).await?;
            let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
            let domain = tokio_rustls::rustls::pki_types::ServerName::try_from(host)
                .map_err(|_| ConnectError(dns_error("invalid dns name")))?;
            let stream = tokio_rustls::TlsConnector::from(tls_config()).connect(domain, tcp).await.map_err(|e| {
                tracing::warn!("tls protocol error: {e:?}");
                ConnectError(ErrorCode::TlsProtocolError)
            })?;
            Ok(TokioIo::new(RustlsStream(stream)))
        })
    }
}

struct RustlsStream(TlsStream<TcpStream>);

impl Connection for RustlsStream {
    fn connected(&self) -> Connected {
        let (tcp, tls) = self.0.get_ref();
        if tls.alpn_protocol() == Some(b"h2") { tcp.connected().negotiated_h2() } else { tcp.connected() }
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// A response body that fails with `ConnectionReadTimeout` when no frame comes within the
/// between-bytes timeout, dropping the connection then (wasi.rs `BetweenBytesTimeoutBody`).
struct BetweenBytesTimeout<B> {
    body: Option<B>,
    sleep: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
}

impl<B: Body<Data = Bytes, Error = ErrorCode> + Unpin> Body for BetweenBytesTimeout<B> {
    type Data = Bytes;
    type Error = ErrorCode;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ErrorCode>>> {
        let this = self.get_mut();
        let Some(body) = this.body.as_mut() else { return Poll::Ready(None) };
        if let Poll::Ready(frame) = Pin::new(body).poll_frame(cx) {
            this.sleep = None;
            return Poll::Ready(frame);
        }
        let timeout = this.timeout;
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(sleep.as_mut().poll(cx));
        this.body = None;
        Poll::Ready(Some(Err(ErrorCode::ConnectionReadTimeout)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.body.as_ref().map(|b| b.size_hint()).unwrap_or_default()
    }
}
