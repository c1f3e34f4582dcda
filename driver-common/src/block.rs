//! Waiting for a future from a plain thread (the CLI's display thread), without any runtime.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// Unparks the waiting thread when the future can make progress.
struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `fut` on the calling thread, parking it in between, until it completes (`Some`) or `timeout`
/// has passed (`None`; `timeout: None` waits for ever). Must not be called from an async task: it would
/// block that task's executor thread.
pub(crate) fn block_on<F: Future + Unpin>(
    fut: &mut F,
    timeout: Option<Duration>,
) -> Option<F::Output> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = Pin::new(&mut *fut).poll(&mut cx) {
            return Some(v);
        }
        match deadline {
            None => thread::park(),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return None;
                }
                // A spurious or early unpark just polls again.
                thread::park_timeout(d - now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::oneshot;

    #[test]
    fn returns_value_sent_from_another_thread() {
        let (tx, mut rx) = oneshot::channel::<u32>();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            let _ = tx.send(9);
        });
        assert_eq!(block_on(&mut rx, Some(Duration::from_secs(5))), Some(Ok(9)));
        t.join().unwrap();
    }

    #[test]
    fn times_out_when_nothing_arrives() {
        let (_tx, mut rx) = oneshot::channel::<u32>();
        let start = Instant::now();
        assert_eq!(block_on(&mut rx, Some(Duration::from_millis(30))), None);
        assert!(start.elapsed() >= Duration::from_millis(30));
    }
}
