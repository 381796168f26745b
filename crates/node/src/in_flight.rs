//! A worker's bound on invocations in flight (`worker_in_flight_invocations_max`), the same
//! for the wasm worker node ([`crate::node`]) and the emulated worker ([`crate::emulated`]).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use turnpike_wire::invocation::{FailureKind, Outcome};

/// Invocations a worker has accepted and not answered, and how many it may have.
#[derive(Debug)]
pub struct InFlight {
    count: AtomicU64,
    max: u64,
}

/// Counts one invocation while it lives (also when its future is dropped half way).
struct Held<'a>(&'a AtomicU64);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl InFlight {
    pub fn new(max: u64) -> Self {
        Self {
            count: AtomicU64::new(0),
            max,
        }
    }

    /// `run`'s outcome if the worker is under its bound; otherwise `FailureKind::Overloaded`
    /// at once, naming `worker` and the bound, and logged (call it inside the invocation's
    /// span).
    pub async fn run(&self, worker: &str, run: impl Future<Output = Outcome>) -> Outcome {
        let held = self.count.fetch_add(1, Ordering::Relaxed);
        let _held = Held(&self.count);
        if held >= self.max {
            let message = format!(
                "worker {worker} has {held} invocations in flight, its worker_in_flight_invocations_max"
            );
            tracing::warn!("refused: {message}");
            return Outcome::failure(FailureKind::Overloaded, message);
        }
        run.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered() -> Outcome {
        Outcome {
            attempts: 1,
            ..Outcome::failure(FailureKind::Guest, "answered")
        }
    }

    #[tokio::test]
    async fn refuses_past_the_bound_and_counts_a_dropped_invocation_out() {
        let bound = InFlight::new(1);
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let first = bound.run("w", async {
            let _ = released.await;
            answered()
        });
        let mut first = Box::pin(first);
        // Started, holding the one place.
        assert!(futures_poll(&mut first).is_none());
        let refused = bound.run("w", async { answered() }).await;
        assert!(format!("{refused:?}").contains("worker_in_flight_invocations_max"));
        drop(first);
        drop(release);
        // The dropped one no longer counts.
        assert_eq!(bound.run("w", async { answered() }).await.attempts, 1);
    }

    /// Polls `f` once.
    fn futures_poll<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(f).poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
