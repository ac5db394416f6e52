//! Waiting until something holds, with a deadline: a test that times out
//! panics naming what it waited for (and, where given, what it saw last).
//! Async for tests on a runtime; `wait_until_blocking` for tests whose
//! checks are blocking commands (`kubectl`, `helm`, `psql` in a pod).

use std::time::{Duration, Instant};

/// Polls `check` every 100 ms until it returns true; panics after `secs`.
pub async fn wait_until<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `get` until `ok` holds, or panics after `secs` with the last value.
pub async fn wait_for<K, F, Fut>(what: &str, secs: u64, mut get: F, ok: impl Fn(&K) -> bool) -> K
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<K>>,
    K: std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = None;
    loop {
        if let Some(v) = get().await {
            if ok(&v) {
                return v;
            }
            last = Some(v);
        }
        if Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}; last seen: {last:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `check` every second (each check may start a process) until it
/// returns true, blocking the thread; panics with the last `describe()`
/// after `secs`.
pub fn wait_until_blocking(what: &str, secs: u64, mut check: impl FnMut() -> bool, describe: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        if Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}; last seen:\n{}", describe());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
