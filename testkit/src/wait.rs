//! Waits on a condition, each bounded by a limit, so that a broken test fails instead of
//! hanging. They poll every 20 ms on tokio's clock: under paused time
//! (`#[tokio::test(start_paused = true)]`) the polls advance it and cost nothing.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(20);

/// Polls `f` until it is true; panics naming `what` after `limit`.
pub async fn wait_until<F: FnMut() -> bool>(limit: Duration, what: &str, mut f: F) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Polls the async `f` until it returns `Ok`, and returns that value; after `limit` panics
/// naming `what` and the last `Err` (the state the test was waiting to change).
pub async fn wait_for<T, E, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}; last seen: {last:?}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls the async `f` until `done` accepts its value, or `limit` passes; returns the last
/// value either way, for a test that asserts on it with its own message.
pub async fn poll_until<T, F, Fut, P>(limit: Duration, mut f: F, mut done: P) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
    P: FnMut(&T) -> bool,
{
    let deadline = Instant::now() + limit;
    loop {
        let v = f().await;
        if done(&v) || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Reads `f` every `every` until two reads in a row agree (the value stopped moving), or
/// `limit` passes; returns the last value. For counts whose final value a test cannot know in
/// advance (what survived a `kill -9`): there "no change for `every`" is the condition.
pub async fn settle<T, F, Fut>(limit: Duration, every: Duration, mut f: F) -> T
where
    T: PartialEq,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = Instant::now() + limit;
    let mut last = f().await;
    loop {
        tokio::time::sleep(every).await;
        let now = f().await;
        if now == last || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_ends_when_the_condition_holds() {
        let mut n = 0;
        wait_until(Duration::from_secs(5), "three polls", || {
            n += 1;
            n >= 3
        })
        .await;
        assert_eq!(n, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_never_holds_panics_after_its_limit() {
        let waited = tokio::spawn(wait_for(Duration::from_secs(5), "never", || async {
            Err::<(), _>("still no")
        }));
        let err = waited.await.expect_err("panicked");
        assert!(err.is_panic());
    }

    #[tokio::test(start_paused = true)]
    async fn poll_until_returns_the_last_value_at_its_limit() {
        let mut n = 0;
        let got = poll_until(
            Duration::from_secs(1),
            || {
                n += 1;
                std::future::ready(n)
            },
            |_| false,
        )
        .await;
        assert!(got > 1, "{got}");
    }

    #[tokio::test(start_paused = true)]
    async fn settle_returns_once_two_reads_agree() {
        let mut reads = [1, 2, 3, 3, 9].into_iter();
        let got = settle(Duration::from_secs(60), Duration::from_millis(500), || {
            std::future::ready(reads.next().unwrap())
        })
        .await;
        assert_eq!(got, 3);
    }
}
