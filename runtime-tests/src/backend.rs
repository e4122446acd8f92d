//! A recording HTTP/1.1 backend for the delivery tests and the bench: it answers as the
//! request path tells it and records every request (arrival time, method, path, headers,
//! body, the client's address) for the test to inspect.
//!
//! Paths: `/ok` (200 at once), `/slow/<ms>` (200 after `ms`), `/status/<code>`,
//! `/flaky/<n>` (503 for the first `n` requests of each `webhook-id`, then 200),
//! `/retry-after/<s>` (429 with `Retry-After: <s>` for the first request of each
//! `webhook-id`, then 200), `/hang` (never answers). Anything else is a 404.
//!
//! It runs on its own thread and runtime (keep-alive on, as hyper's server defaults), so it
//! works from synchronous tests and from inside another runtime alike; it stops on drop.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// One request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// When its head arrived, in milliseconds since the Unix epoch.
    pub at_ms: f64,
    pub method: String,
    /// The path and query.
    pub path: String,
    /// Header names in lower case, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The client's end of the connection: one per TCP connection, so it counts them.
    pub peer: SocketAddr,
}

impl Recorded {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// The windows broken on the backend's own arrival times: for each lane (`lane` names a
/// request's), every run of `quota + 1` arrivals closer together than the window (`quota`,
/// ms) allows less `tolerance_ms`, described.
pub fn window_breaks(
    arrivals: &[&Recorded],
    windows: &[(usize, f64)],
    tolerance_ms: f64,
    lane: impl Fn(&Recorded) -> String,
) -> Vec<String> {
    let mut lanes: std::collections::BTreeMap<String, Vec<f64>> = std::collections::BTreeMap::new();
    for r in arrivals {
        lanes.entry(lane(r)).or_default().push(r.at_ms);
    }
    let mut broken = Vec::new();
    for (lane, mut times) in lanes {
        times.sort_by(f64::total_cmp);
        for &(quota, window_ms) in windows {
            for i in quota..times.len() {
                let span = times[i] - times[i - quota];
                if span < window_ms - tolerance_ms {
                    broken.push(format!(
                        "{lane}: {} arrivals within {span:.1} ms, over {quota} per {window_ms} ms",
                        quota + 1
                    ));
                }
            }
        }
    }
    broken
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Notified on every recorded request.
    arrived: Condvar,
}

#[derive(Default)]
struct State {
    recorded: Vec<Recorded>,
    /// Requests seen so far per `webhook-id` (for `/flaky` and `/retry-after`).
    seen: HashMap<String, u32>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: still readable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running backend; dropping it stops it (connections still open are closed).
pub struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    /// Binds 127.0.0.1 on a free port and starts serving. Panics if it cannot (a test
    /// support type: there is nothing to recover).
    pub fn start() -> Backend {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("backend: building its runtime");
        let listener =
            runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("backend: binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("backend: reading its address");
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = oneshot::channel();
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name("backend".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        () = accept(listener, serving) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime drops every connection task, `/hang` ones included.
            })
            .expect("backend: spawning its thread");
        Backend { addr, shared, stop: Some(stop), thread: Some(thread) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request recorded so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().recorded.clone()
    }

    /// Waits until at least `n` requests are recorded or `timeout` has passed, and returns
    /// what was recorded by then (the caller checks the count).
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while state.recorded.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = match self.shared.arrived.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        state.recorded.clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        // Answers go out at once (a test measures its client, not Nagle's algorithm).
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| handle(shared.clone(), peer, request));
            let io = hyper_util::rt::TokioIo::new(stream);
            // An error here is the client going away mid-request: nothing to record.
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64() * 1000.0;
    let (head, body) = request.into_parts();
    let body = body.collect().await?.to_bytes().to_vec();
    let path = head.uri.path_and_query().map_or_else(|| head.uri.path().to_string(), |p| p.to_string());
    let headers = head
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let recorded = Recorded { at_ms, method: head.method.to_string(), path, headers, body, peer };
    let webhook_id = recorded.header("webhook-id").unwrap_or("").to_string();
    let behaviour = Behaviour::parse(head.uri.path());
    let nth = {
        let mut state = shared.lock();
        let seen = state.seen.entry(webhook_id).or_insert(0);
        *seen += 1;
        let nth = *seen;
        state.recorded.push(recorded);
        nth
    };
    shared.arrived.notify_all();

    let answer = |status: StatusCode| {
        let mut response = Response::new(Full::new(Bytes::from(status.as_str().to_string())));
        *response.status_mut() = status;
        response
    };
    Ok(match behaviour {
        Behaviour::Ok => answer(StatusCode::OK),
        Behaviour::Slow(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            answer(StatusCode::OK)
        }
        Behaviour::Status(status) => answer(status),
        Behaviour::Flaky(n) if nth <= n => answer(StatusCode::SERVICE_UNAVAILABLE),
        Behaviour::RetryAfter(s) if nth == 1 => {
            let mut response = answer(StatusCode::TOO_MANY_REQUESTS);
            response.headers_mut().insert(hyper::header::RETRY_AFTER, s.into());
            response
        }
        Behaviour::Flaky(_) | Behaviour::RetryAfter(_) => answer(StatusCode::OK),
        Behaviour::Hang => std::future::pending().await,
        Behaviour::Unknown => answer(StatusCode::NOT_FOUND),
    })
}

/// What a request path asks the backend to do.
enum Behaviour {
    Ok,
    Slow(u64),
    Status(StatusCode),
    Flaky(u32),
    RetryAfter(u32),
    Hang,
    Unknown,
}

impl Behaviour {
    fn parse(path: &str) -> Behaviour {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (mode, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let parsed = match mode {
            "ok" if arg.is_empty() => Some(Behaviour::Ok),
            "hang" if arg.is_empty() => Some(Behaviour::Hang),
            "slow" => arg.parse().ok().map(Behaviour::Slow),
            "status" => arg.parse().ok().and_then(|c| StatusCode::from_u16(c).ok()).map(Behaviour::Status),
            "flaky" => arg.parse().ok().map(Behaviour::Flaky),
            "retry-after" => arg.parse().ok().map(Behaviour::RetryAfter),
            _ => None,
        };
        parsed.unwrap_or(Behaviour::Unknown)
    }
}
