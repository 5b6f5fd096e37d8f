//! Panic isolation: a backend that panics in connect, check, reset or close fails that one
//! operation, and the pool's counts stay right.

use std::future::{Future, poll_fn};
use std::task::Poll;

/// Runs `f` to completion, turning a panic in it into `Err` with the panic's message: a
/// backend that panics fails the one operation, and the pool's counts stay right. Pass the
/// call inside an `async` block, so that a panic in its synchronous part is caught too.
pub(super) async fn caught<F: Future>(f: F) -> Result<F::Output, String> {
    let mut f = std::pin::pin!(f);
    poll_fn(|cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.as_mut().poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    })
    .await
}

/// [`caught`] for a call that does not wait.
pub(super) fn caught_now<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|payload| panic_message(payload.as_ref()))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    format!("panicked: {message}")
}
