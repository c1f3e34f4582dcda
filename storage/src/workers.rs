//! A small thread pool for disk and hash jobs, usable from any async runtime (or none).
//!
//! Jobs are plain closures run on `std` threads. A result comes back either through the [`JobHandle`]
//! returned by [`WorkerPool::submit`], which is a `Future` (a `futures-channel` oneshot underneath, so
//! tokio, async-std or smol wake the awaiting task without polling in a loop) and can also be waited for
//! synchronously, or through whatever channel the caller's closure sends to ([`WorkerPool::execute`]).

use std::future::Future;
use std::io;
use std::num::NonZeroUsize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant as StdInstant};

use futures_channel::oneshot;
use thiserror::Error;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The number of worker threads to use by default: the available parallelism, at least 1.
pub fn default_threads() -> usize {
    thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// A fixed set of worker threads taking jobs from one queue. Dropping the pool lets queued jobs finish,
/// then joins the threads.
#[derive(Debug)]
pub struct WorkerPool {
    queue: Option<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

/// The job behind a [`JobHandle`] did not deliver a result: it panicked, or the pool was gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("worker job panicked or was dropped before finishing")]
pub struct JobCanceled;

/// The pending result of [`WorkerPool::submit`]: `.await` it, or call [`JobHandle::wait`].
#[derive(Debug)]
#[must_use = "dropping a JobHandle discards the job's result (the job still runs)"]
pub struct JobHandle<T> {
    rx: oneshot::Receiver<T>,
}

impl<T> Future for JobHandle<T> {
    type Output = Result<T, JobCanceled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.map_err(|_| JobCanceled))
    }
}

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
/// has passed (`None`; `timeout: None` waits for ever). The workspace's one `block_on`: for plain
/// threads (the CLI's display thread, synchronous callers, tests); never call it from an async task,
/// whose executor thread it would block.
pub fn block_on<F: Future + Unpin>(fut: &mut F, timeout: Option<Duration>) -> Option<F::Output> {
    let deadline = timeout.map(|t| StdInstant::now() + t);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = Pin::new(&mut *fut).poll(&mut cx) {
            return Some(v);
        }
        match deadline {
            None => thread::park(),
            Some(d) => {
                let now = StdInstant::now();
                if now >= d {
                    return None;
                }
                // A spurious or early unpark just polls again.
                thread::park_timeout(d - now);
            }
        }
    }
}

impl<T> JobHandle<T> {
    /// Blocks the calling thread until the job is done (for synchronous callers and tests; an async
    /// task should `.await` instead).
    pub fn wait(mut self) -> Result<T, JobCanceled> {
        block_on(&mut self, None).unwrap_or(Err(JobCanceled))
    }

    /// The result if the job has finished, without waiting: `Ok(None)` while it is still running.
    pub fn try_take(&mut self) -> Result<Option<T>, JobCanceled> {
        self.rx.try_recv().map_err(|_| JobCanceled)
    }
}

impl WorkerPool {
    /// Starts `threads` worker threads (at least 1), named `hyperblow-worker-N`.
    pub fn new(threads: usize) -> io::Result<WorkerPool> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::new();
        for n in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            let handle = thread::Builder::new()
                .name(format!("hyperblow-worker-{n}"))
                .spawn(move || worker_loop(&rx))?;
            handles.push(handle);
        }
        Ok(WorkerPool {
            queue: Some(tx),
            threads: handles,
        })
    }

    /// A pool of [`default_threads`] threads.
    pub fn with_default_threads() -> io::Result<WorkerPool> {
        WorkerPool::new(default_threads())
    }

    /// The number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Queues `job`; it delivers its own result (e.g. by sending on the driver's channel). Jobs start in
    /// the order they were queued. A panicking job is caught and does not take its thread down.
    pub fn execute(&self, job: impl FnOnce() + Send + 'static) {
        if let Some(queue) = &self.queue {
            // Sending fails only if every worker is gone, which `Drop` alone causes; the job is dropped.
            let _ = queue.send(Box::new(job));
        }
    }

    /// Queues `job` and returns a handle to its result.
    pub fn submit<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> JobHandle<T> {
        let (tx, rx) = oneshot::channel();
        self.execute(move || {
            // The receiver may be gone (result not wanted any more): nothing to do then.
            let _ = tx.send(job());
        });
        JobHandle { rx }
    }
}

fn worker_loop(queue: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let job = {
            let rx = queue.lock().unwrap_or_else(|e| e.into_inner());
            rx.recv()
        };
        match job {
            // A panic drops the job's result sender, so its handle reports `JobCanceled`.
            Ok(job) => {
                let _ = catch_unwind(AssertUnwindSafe(job));
            }
            Err(mpsc::RecvError) => return,
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.queue = None;
        let me = thread::current().id();
        for handle in self.threads.drain(..) {
            // A job that dropped the last reference to the pool must not join its own thread.
            if handle.thread().id() != me {
                let _ = handle.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn runs_jobs_and_returns_results() {
        let pool = WorkerPool::new(3).unwrap();
        assert_eq!(pool.threads(), 3);
        let handles: Vec<_> = (0..50u64).map(|i| pool.submit(move || i * i)).collect();
        let results: Vec<u64> = handles.into_iter().map(|h| h.wait().unwrap()).collect();
        assert_eq!(results, (0..50u64).map(|i| i * i).collect::<Vec<_>>());
    }

    #[test]
    fn a_panicking_job_cancels_only_itself() {
        let pool = WorkerPool::new(1).unwrap();
        let bad = pool.submit(|| -> u32 { panic!("job failure on purpose") });
        assert_eq!(bad.wait(), Err(JobCanceled));
        assert_eq!(pool.submit(|| 7).wait(), Ok(7));
    }

    #[test]
    fn execute_delivers_through_the_callers_channel() {
        let pool = WorkerPool::new(2).unwrap();
        let (tx, mut rx) = futures_channel::mpsc::unbounded::<usize>();
        for i in 0..10 {
            let tx = tx.clone();
            pool.execute(move || {
                let _ = tx.unbounded_send(i);
            });
        }
        drop(tx);
        drop(pool); // waits for the queued jobs
        let mut got = Vec::new();
        while let Ok(v) = rx.try_recv() {
            got.push(v);
        }
        got.sort_unstable();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn drop_finishes_queued_jobs() {
        let count = Arc::new(AtomicUsize::new(0));
        {
            let pool = WorkerPool::new(2).unwrap();
            for _ in 0..20 {
                let c = Arc::clone(&count);
                pool.execute(move || {
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        }
        assert_eq!(count.load(Ordering::SeqCst), 20);
    }

    #[test]
    fn try_take_reports_pending_then_ready() {
        let pool = WorkerPool::new(1).unwrap();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let mut h = pool.submit(move || {
            let _ = go_rx.recv();
            5
        });
        assert_eq!(h.try_take(), Ok(None));
        go_tx.send(()).unwrap();
        // Wait for completion through the Future path, then nothing is left to take.
        assert_eq!(h.wait(), Ok(5));
    }
}
