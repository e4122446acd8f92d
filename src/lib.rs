use spin_sdk::experimental::wasi::keyvalue::{atomics, store};
use spin_sdk::http::{IntoResponse, Request};

#[spin_sdk::http_service]
async fn handle(_req: Request) -> impl IntoResponse {
    let addr = spin_sdk::variables::get("redis_address").await.unwrap_or_default();
    let conn = spin_sdk::redis::Connection::open(&addr).await.ok();
    if let Some(c) = conn {
        let _ = c.execute("TIME", []).await;
        let _ = c.publish("x", b"y").await;
    }
    let b = store::open("default").ok();
    if let Some(b) = b {
        let _ = b.get("k");
        if let Ok(cas) = atomics::Cas::new(&b, "k") {
            let _ = cas.current();
            let _ = atomics::swap(cas, b"v");
        }
    }
    let _ = spin_sdk::wasip3::random::random::get_random_u64();
    spin_sdk::time::sleep(std::time::Duration::from_millis(1)).await;
    println!("hello");
    "ok"
}

#[spin_sdk::redis_subscriber]
async fn on_message(_msg: Vec<u8>) -> anyhow::Result<()> {
    println!("msg");
    Ok(())
}
