//! The host runs guests on an engine configured as Spin's (epoch interruption with a ticker
//! thread), and refuses what Spin refuses before a component runs: a request header value
//! that is not UTF-8 gets a 500 with an empty body.

use crate::support;

use std::time::{Duration, Instant};
use support::*;

#[test]
fn a_header_value_that_is_not_utf8_gets_an_empty_500_and_the_component_does_not_run() {
    let host = Host::start_manifest(&noop_manifest());
    let request = |value: &[u8]| {
        let mut bytes = b"GET / HTTP/1.1\r\nHost: t\r\nX-Name: ".to_vec();
        bytes.extend_from_slice(value);
        bytes.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        raw_request(&host.addr, &bytes)
    };

    // UTF-8 beyond ASCII is fine: the do-nothing component answers.
    let utf8 = request("café".as_bytes());
    assert_eq!((utf8.status, utf8.body.as_str()), (200, "ok\n"), "a UTF-8 header value");

    // Latin-1 "café au lait": Spin fails the request in prepare_request_headers, before the
    // component runs.
    let latin1 = request(b"caf\xe9 au lait");
    assert_eq!((latin1.status, latin1.body.as_str()), (500, ""), "a header value that is not UTF-8");
    // The host's stderr is read by a thread of its own: the line may arrive after the answer.
    wait_until(
        Duration::from_secs(5),
        || format!("the host says why it refused:\n{}", host.stderr_text()),
        || host.stderr_text().contains("invalid utf-8 sequence"),
    );
}

#[test]
fn the_engine_interrupts_guest_code_at_its_epoch_deadline() {
    let engine = runtime_tests::trigger::engine::engine(true, false).expect("building the engine");
    let module = wasmtime::Module::new(&engine, r#"(module (func (export "spin") (loop br 0)))"#).expect("compiling");
    let mut store = wasmtime::Store::new(&engine, ());
    // One tick: the ticker thread (10 ms, as Spin's) ends the endless loop.
    store.set_epoch_deadline(1);
    let instance = wasmtime::Instance::new(&mut store, &module, &[]).expect("instantiating");
    let spin = instance.get_typed_func::<(), ()>(&mut store, "spin").expect("the export");
    let started = Instant::now();
    let error = spin.call(&mut store, ()).expect_err("an endless loop returned");
    assert_eq!(error.downcast_ref::<wasmtime::Trap>(), Some(&wasmtime::Trap::Interrupt), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "interrupted only after {:?}", started.elapsed());
}
