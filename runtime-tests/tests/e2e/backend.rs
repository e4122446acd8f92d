//! The recording backend (`runtime_tests::backend`) answers each path as documented and
//! records what arrived; checked natively with ureq, without the host.

use runtime_tests::backend::Backend;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into()
}

/// `(status, retry-after)` of a POST to `path` with `webhook-id: id`.
fn post(agent: &ureq::Agent, backend: &Backend, path: &str, id: &str) -> (u16, Option<String>) {
    let mut response = agent
        .post(backend.url(path))
        .header("webhook-id", id)
        .send("payload")
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    // Read to the end, so that ureq can reuse the connection.
    response.body_mut().read_to_string().unwrap_or_else(|e| panic!("POST {path}: reading the body: {e}"));
    (response.status().as_u16(), retry_after)
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64() * 1000.0
}

#[test]
fn ok_answers_at_once_and_records_the_request() {
    let backend = Backend::start();
    let before = now_ms();
    let response = agent()
        .post(backend.url("/ok?x=1"))
        .header("webhook-id", "msg_1")
        .header("content-type", "application/json")
        .send(r#"{"a":1}"#)
        .expect("POST /ok");
    assert_eq!(response.status().as_u16(), 200);
    let recorded = backend.requests();
    assert_eq!(recorded.len(), 1);
    let r = &recorded[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/ok?x=1"));
    assert_eq!(r.header("webhook-id"), Some("msg_1"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body, br#"{"a":1}"#);
    assert!(r.at_ms >= before - 1.0 && r.at_ms <= now_ms() + 1.0, "arrival {} not in the call", r.at_ms);
}

#[test]
fn slow_answers_after_its_delay_and_records_the_arrival_first() {
    let backend = Backend::start();
    let started = Instant::now();
    let sent_ms = now_ms();
    assert_eq!(post(&agent(), &backend, "/slow/300", "a").0, 200);
    assert!(started.elapsed() >= Duration::from_millis(300), "answered after {:?}", started.elapsed());
    let arrival = backend.requests()[0].at_ms;
    assert!(arrival - sent_ms < 200.0, "arrival recorded {} ms after sending", arrival - sent_ms);
}

#[test]
fn status_answers_that_status() {
    let backend = Backend::start();
    let agent = agent();
    assert_eq!(post(&agent, &backend, "/status/418", "a").0, 418);
    assert_eq!(post(&agent, &backend, "/status/500", "a").0, 500);
    assert_eq!(post(&agent, &backend, "/nothing-here", "a").0, 404);
}

#[test]
fn flaky_fails_the_first_n_of_each_webhook_id() {
    let backend = Backend::start();
    let agent = agent();
    let statuses = |id: &str| (0..3).map(|_| post(&agent, &backend, "/flaky/2", id).0).collect::<Vec<_>>();
    assert_eq!(statuses("a"), [503, 503, 200]);
    assert_eq!(statuses("b"), [503, 503, 200]);
}

#[test]
fn retry_after_answers_429_once_per_webhook_id() {
    let backend = Backend::start();
    let agent = agent();
    assert_eq!(post(&agent, &backend, "/retry-after/3", "a"), (429, Some("3".to_string())));
    assert_eq!(post(&agent, &backend, "/retry-after/3", "a"), (200, None));
    assert_eq!(post(&agent, &backend, "/retry-after/3", "b").0, 429);
}

#[test]
fn hang_never_answers_but_is_recorded() {
    let backend = Backend::start();
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_millis(300))).build().into();
    let result = agent.post(backend.url("/hang")).send("x");
    assert!(result.is_err(), "/hang answered: {:?}", result.map(|r| r.status()));
    assert_eq!(backend.requests().len(), 1);
}

/// One keep-alive client: every request on the same connection (the same client port).
#[test]
fn connections_are_kept_alive() {
    let backend = Backend::start();
    let agent = agent();
    for _ in 0..3 {
        assert_eq!(post(&agent, &backend, "/ok", "a").0, 200);
    }
    let peers = backend.requests().iter().map(|r| r.peer).collect::<std::collections::HashSet<_>>();
    assert_eq!(peers.len(), 1, "requests came over {peers:?}");
}

#[test]
fn wait_for_returns_once_enough_have_arrived() {
    let backend = Backend::start();
    let url = backend.url("/slow/100");
    let sender = std::thread::spawn(move || {
        let agent = agent();
        for _ in 0..2 {
            let _ = agent.post(&url).send("x");
        }
    });
    let started = Instant::now();
    assert_eq!(backend.wait_for(2, Duration::from_secs(5)).len(), 2);
    assert!(started.elapsed() < Duration::from_secs(4));
    // Fewer than asked for: returns at the timeout with what is there.
    let started = Instant::now();
    assert_eq!(backend.wait_for(3, Duration::from_millis(200)).len(), 2);
    assert!(started.elapsed() >= Duration::from_millis(200));
    sender.join().expect("the sending thread");
}
