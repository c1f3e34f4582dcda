//! SIGINT (Ctrl-C) and SIGTERM: the first one asks the running command to stop cleanly (announce
//! `stopped`, flush, save resume state, exit 130); a second one exits at once with 130.
//!
//! A small current-thread tokio runtime on its own thread waits for the signals (tokio is already a
//! dependency through the driver, so no other signal crate is needed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Set once a stop signal arrived. Cheap to clone and to poll.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// Whether a stop was asked for.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Asks for a stop (what a signal does); returns whether it was already asked.
    pub fn set(&self) -> bool {
        self.0.swap(true, Ordering::SeqCst)
    }
}

/// Starts listening for SIGINT and SIGTERM. If the listener cannot be set up the flag simply never
/// gets set (the default signal behaviour stays: the process ends at once).
pub fn install() -> StopFlag {
    let flag = StopFlag::default();
    let f = flag.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("hyperblow-signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            else {
                let _ = ready_tx.send(());
                return;
            };
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let int = signal(SignalKind::interrupt());
                let term = signal(SignalKind::terminate());
                let _ = ready_tx.send(());
                let (Ok(mut int), Ok(mut term)) = (int, term) else {
                    return;
                };
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    if f.set() {
                        // Second signal: the user means it.
                        std::process::exit(130);
                    }
                    tracing::info!("stop signal received; shutting down cleanly");
                }
            });
        });
    if spawned.is_ok() {
        // Wait until the handlers are in place, so a signal sent right after start is not lost.
        let _ = ready_rx.recv_timeout(std::time::Duration::from_secs(2));
    }
    flag
}
