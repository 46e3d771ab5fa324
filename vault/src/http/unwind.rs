//! A request's panic, caught where it happens. Without this, a panic in a
//! handler unwinds the connection's task (HTTP/1) or the stream's (HTTP/2):
//! the client sees its connection or stream cut with no answer. Caught, it
//! is answered 500 `internal` like any other failure (an HTTP/1 connection
//! then closes: `http::handle`); the panic hook
//! (`hardening::quiet_panics`) counts it and logs where it happened, never
//! its message.
//!
//! What the handler held is dropped as the panic unwinds, as it would be
//! at a task's end: places, budgets and guards come back.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project_lite::pin_project! {
    /// `inner`, with a panic while polling it turned into `Err(Panicked)`.
    /// Once it has panicked it is not polled again.
    pub struct Caught<F> {
        #[pin]
        inner: F,
    }
}

/// A panic caught in a request's handling; also the mark on an answer to
/// one (`http::error_response`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Panicked;

impl<F> Caught<F> {
    pub fn new(inner: F) -> Caught<F> {
        Caught { inner }
    }
}

impl<F: Future> Future for Caught<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        // Unwind safety: after a panic the future is dropped, never polled
        // again, so nothing sees its broken state; what it shared (places,
        // budgets, locks) is released by the drops the unwinding runs, as
        // it would be at the end of the task.
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Err(payload) => {
                // The payload may hold data: dropped unread.
                drop(payload);
                Poll::Ready(Err(Panicked))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    #[tokio::test]
    async fn a_panic_is_caught_and_the_rest_runs() {
        // Quiet: this test's expected panic should not print a message.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let held = std::sync::Arc::new(());
        let in_handler = held.clone();
        let out = Caught::new(async move {
            let _held = in_handler;
            tokio::task::yield_now().await;
            if std::hint::black_box(true) {
                panic!("a value such as 350102199003071234");
            }
            1
        })
        .await;
        std::panic::set_hook(hook);
        assert_eq!(out, Err(Panicked));
        // What the handler held was dropped as the panic unwound.
        assert_eq!(std::sync::Arc::strong_count(&held), 1);
        assert_eq!(Caught::new(async { 2 }).await, Ok(2));
    }

    /// A panic in a task the handling waited for (the blocking pool, a
    /// spawned task) is answered as one caught in place: 500 `internal`,
    /// marked for the connection to close.
    #[tokio::test]
    async fn a_panicked_task_is_answered_as_a_panic() {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let task = tokio::task::spawn_blocking(|| {
            if std::hint::black_box(true) {
                panic!("a value such as 350102199003071234");
            }
        });
        let joined = crate::api::joined(task.await);
        std::panic::set_hook(hook);
        assert!(matches!(joined, Err(crate::api::ApiError::Panicked)));
        let resp = super::super::error_response(&crate::api::ApiError::Panicked);
        assert_eq!(resp.status(), 500);
        assert_eq!(resp.extensions().get::<Panicked>(), Some(&Panicked));
        let plain = super::super::error_response(&crate::api::ApiError::Internal);
        assert_eq!(plain.status(), 500);
        assert!(plain.extensions().get::<Panicked>().is_none());
        // A task that did not panic but was cancelled is a plain failure.
        let cancelled = tokio::spawn(std::future::pending::<()>());
        cancelled.abort();
        assert!(matches!(
            crate::api::joined(cancelled.await),
            Err(crate::api::ApiError::Internal)
        ));
    }
}
