//! The tokio and async-std drivers over real loopback sockets: our seeder to our leecher on each
//! runtime and across runtimes, byte-exact; clean shutdown; resume after a shutdown half-way.
//!
//! Everything binds 127.0.0.1 on ephemeral ports, and every wait is bounded.

use std::fs;
use std::time::{Duration, Instant};

use hyperblow_driver::engine::{Event, TorrentState};
use hyperblow_driver::{AddTorrentRequest, RecvError, SessionEvent, SessionHandle, StartKind};
use hyperblow_storage::{resume_path, Storage, StorageConfig};
use hyperblow_tests::fixture::{completed, config, wait_for, Fixture, Rt, WAIT};

/// The engine's budget for `stopped` announces at shutdown in this file's sessions: far longer than
/// [`WAIT`], so that a shutdown which waited for its budget instead of ending once there is nothing
/// left to wait for (none of these torrents has a tracker) fails [`shutdown`] on any machine, where a
/// bound on the elapsed time would depend on the machine's speed.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(3600);

/// Starts a session like [`hyperblow_tests::fixture::start`], with the shutdown budget
/// [`SHUTDOWN_BUDGET`].
fn start(rt: Rt, seed: u64) -> SessionHandle {
    let mut c = config(seed);
    c.engine.shutdown_timeout = SHUTDOWN_BUDGET;
    match rt {
        Rt::Tokio => hyperblow_tokio::start(c),
        Rt::AsyncStd => hyperblow_async_std::start(c),
    }
    .expect("session starts")
}

/// Shuts a session down and checks that it ended without waiting for its budget: the answer comes
/// within [`WAIT`] (a bound that only catches a hang), which is far shorter than
/// [`SHUTDOWN_BUDGET`].
fn shutdown(session: &SessionHandle) {
    session
        .shutdown()
        .wait_timeout(WAIT)
        .expect("shutdown ends once nothing is left to wait for, not after its budget");
    assert!(session.is_closed() || session.stats().wait_timeout(WAIT).is_err());
}

/// Seeds `fx` from a session on `seed_rt` and downloads it with a session on `leech_rt`.
fn transfer(seed_rt: Rt, leech_rt: Rt) {
    let fx = Fixture::mixed();
    let seed_dir = tempfile::tempdir().unwrap();
    let leech_dir = tempfile::tempdir().unwrap();
    fx.write_to(seed_dir.path());

    let seeder = start(seed_rt, 1);
    let added = seeder
        .add_torrent(AddTorrentRequest::new(fx.metainfo.clone(), seed_dir.path()))
        .wait_timeout(WAIT)
        .unwrap();
    assert_eq!(added.start, StartKind::Checked);
    assert_eq!(added.have_pieces, fx.pieces());

    let leecher = start(leech_rt, 2);
    let mut events = leecher.events();
    let req = AddTorrentRequest::new(fx.metainfo.clone(), leech_dir.path())
        .peers(vec![seeder.listen_addr()]);
    let got = leecher.add_torrent(req).wait_timeout(WAIT).unwrap();
    assert_eq!(got.start, StartKind::Fresh);
    let seen = wait_for(&mut events, completed(got.id));
    let verified = seen
        .iter()
        .filter(|e| matches!(e, SessionEvent::Engine(Event::PieceVerified { .. })))
        .count();
    assert_eq!(verified as u32, fx.pieces());

    let stats = leecher.stats().wait_timeout(WAIT).unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].state, TorrentState::Seeding);
    assert_eq!(stats[0].have_bytes, stats[0].wanted_bytes);

    shutdown(&leecher);
    shutdown(&seeder);
    fx.assert_in(leech_dir.path());
}

#[test]
fn tokio_seeder_to_tokio_leecher() {
    transfer(Rt::Tokio, Rt::Tokio);
}

#[test]
fn async_std_seeder_to_async_std_leecher() {
    transfer(Rt::AsyncStd, Rt::AsyncStd);
}

#[test]
fn tokio_seeder_to_async_std_leecher() {
    transfer(Rt::Tokio, Rt::AsyncStd);
}

#[test]
fn async_std_seeder_to_tokio_leecher() {
    transfer(Rt::AsyncStd, Rt::Tokio);
}

/// After a download, shutdown returns promptly, the files are complete, and the resume file it saved
/// (after flushing) is trusted by a fresh `Storage`.
#[test]
fn shutdown_is_prompt_and_leaves_a_valid_resume_file() {
    for rt in [Rt::Tokio, Rt::AsyncStd] {
        let fx = Fixture::multi("flush", 32 * 1024, &[("one.bin", 200_000), ("two.bin", 5)]);
        let seed_dir = tempfile::tempdir().unwrap();
        let leech_dir = tempfile::tempdir().unwrap();
        fx.write_to(seed_dir.path());
        let seeder = start(rt, 3);
        seeder
            .add_torrent(AddTorrentRequest::new(fx.metainfo.clone(), seed_dir.path()))
            .wait_timeout(WAIT)
            .unwrap();
        let leecher = start(rt, 4);
        let mut events = leecher.events();
        let got = leecher
            .add_torrent(
                AddTorrentRequest::new(fx.metainfo.clone(), leech_dir.path())
                    .peers(vec![seeder.listen_addr()]),
            )
            .wait_timeout(WAIT)
            .unwrap();
        wait_for(&mut events, completed(got.id));
        shutdown(&leecher);
        // The event stream ends with ShutDown.
        wait_for(&mut events, |e| *e == SessionEvent::ShutDown);
        assert_eq!(events.recv_timeout(WAIT), Err(RecvError::Closed));
        fx.assert_in(leech_dir.path());

        let storage = Storage::new(
            leech_dir.path(),
            fx.metainfo.info.layout().clone(),
            StorageConfig::default(),
        )
        .unwrap();
        let have = storage
            .load_resume(
                &resume_path(leech_dir.path(), &got.info_hash),
                &got.info_hash,
            )
            .expect("a trusted resume file");
        assert!(have.all());
        shutdown(&seeder);
    }
}

/// An idle session (nothing added) shuts down at once, and commands after that fail cleanly.
#[test]
fn idle_shutdown_then_commands_fail() {
    for rt in [Rt::Tokio, Rt::AsyncStd] {
        let s = start(rt, 5);
        assert_eq!(s.listen_addr().ip().to_string(), "127.0.0.1");
        assert_ne!(s.listen_addr().port(), 0);
        shutdown(&s);
        assert!(s.stats().wait_timeout(WAIT).is_err());
        // Shutting down twice is harmless.
        s.shutdown().wait_timeout(WAIT).unwrap();
    }
}

/// A leecher stopped half-way (its only seeder has half the data) and started again over the same
/// directory trusts its resume file and fetches only the missing pieces.
#[test]
fn resume_fetches_only_missing_pieces() {
    let fx = Fixture::multi(
        "resume",
        32 * 1024,
        &[("a.bin", 400_000), ("b/c.bin", 250_000)],
    );
    let total = fx.pieces();
    let half_dir = tempfile::tempdir().unwrap();
    let full_dir = tempfile::tempdir().unwrap();
    let leech_dir = tempfile::tempdir().unwrap();
    fx.write_to(full_dir.path());
    // The partial seeder has a.bin but not b/c.bin.
    let (a_path, a_data) = &fx.files[0];
    let a_full = half_dir.path().join(a_path);
    fs::create_dir_all(a_full.parent().unwrap()).unwrap();
    fs::write(&a_full, a_data).unwrap();

    let partial = start(Rt::AsyncStd, 6);
    let p = partial
        .add_torrent(AddTorrentRequest::new(fx.metainfo.clone(), half_dir.path()))
        .wait_timeout(WAIT)
        .unwrap();
    assert_eq!(p.start, StartKind::Checked);
    let first = p.have_pieces;
    assert!(first > 0 && first < total, "{first} of {total}");

    // First run: get what the partial seeder has, then shut down.
    let leecher = start(Rt::Tokio, 7);
    let mut events = leecher.events();
    let got = leecher
        .add_torrent(
            AddTorrentRequest::new(fx.metainfo.clone(), leech_dir.path())
                .peers(vec![partial.listen_addr()]),
        )
        .wait_timeout(WAIT)
        .unwrap();
    let mut verified = 0;
    wait_for(&mut events, |e| {
        if matches!(e, SessionEvent::Engine(Event::PieceVerified { .. })) {
            verified += 1;
        }
        verified == first
    });
    shutdown(&leecher);
    shutdown(&partial);
    let _ = got;

    // Second run, against a full seeder: only the rest is fetched.
    let seeder = start(Rt::Tokio, 8);
    seeder
        .add_torrent(AddTorrentRequest::new(fx.metainfo.clone(), full_dir.path()))
        .wait_timeout(WAIT)
        .unwrap();
    let leecher = start(Rt::AsyncStd, 9);
    let mut events = leecher.events();
    let again = leecher
        .add_torrent(
            AddTorrentRequest::new(fx.metainfo.clone(), leech_dir.path())
                .peers(vec![seeder.listen_addr()]),
        )
        .wait_timeout(WAIT)
        .unwrap();
    assert_eq!(again.start, StartKind::Resumed);
    assert_eq!(again.have_pieces, first);
    let seen = wait_for(&mut events, completed(again.id));
    let fetched = seen
        .iter()
        .filter(|e| matches!(e, SessionEvent::Engine(Event::PieceVerified { .. })))
        .count() as u32;
    assert_eq!(fetched, total - first);
    let stats = leecher.stats().wait_timeout(WAIT).unwrap();
    let piece = u64::from(fx.metainfo.info.layout().piece_length());
    assert!(
        stats[0].downloaded <= u64::from(total - first) * piece,
        "downloaded {} bytes for {} pieces",
        stats[0].downloaded,
        total - first
    );
    shutdown(&leecher);
    shutdown(&seeder);
    fx.assert_in(leech_dir.path());
}

/// Pause, resume, a changed file selection and remove-with-delete work through the handle.
#[test]
fn pause_resume_select_and_remove() {
    let fx = Fixture::multi("cmds", 16 * 1024, &[("x.bin", 40_000), ("y.bin", 40_000)]);
    let dir = tempfile::tempdir().unwrap();
    fx.write_to(dir.path());
    let s = start(Rt::Tokio, 10);
    let mut events = s.events();
    let t = s
        .add_torrent(AddTorrentRequest::new(fx.metainfo.clone(), dir.path()).paused(true))
        .wait_timeout(WAIT)
        .unwrap();
    assert_eq!(
        s.stats().wait_timeout(WAIT).unwrap()[0].state,
        TorrentState::Paused
    );
    s.resume(t.id).wait_timeout(WAIT).unwrap();
    wait_for(&mut events, |e| {
        *e == SessionEvent::Engine(Event::TorrentResumed(t.id))
    });
    s.set_wanted_files(t.id, vec![true, false])
        .wait_timeout(WAIT)
        .unwrap();
    let files = &s.stats().wait_timeout(WAIT).unwrap()[0].files;
    assert_eq!(
        files.iter().map(|f| f.wanted).collect::<Vec<_>>(),
        vec![true, false]
    );
    assert!(s
        .set_wanted_files(t.id, vec![true])
        .wait_timeout(WAIT)
        .is_err());
    s.pause(t.id).wait_timeout(WAIT).unwrap();
    // Adding the same torrent twice is refused.
    assert!(s
        .add_torrent(AddTorrentRequest::new(fx.metainfo.clone(), dir.path()))
        .wait_timeout(WAIT)
        .is_err());
    s.remove(t.id, true).wait_timeout(WAIT).unwrap();
    assert!(s.stats().wait_timeout(WAIT).unwrap().is_empty());
    assert!(!dir.path().join("cmds").exists(), "data deleted");
    assert!(s.pause(t.id).wait_timeout(WAIT).is_err());
    shutdown(&s);
}

/// The async API from inside each runtime: `start_in_runtime`, awaited answers and the event stream
/// as a `Stream`, with a transfer from an async-std seeder to a tokio leecher.
#[test]
fn async_callers_inside_each_runtime() {
    use futures::StreamExt;
    let fx = Fixture::multi("async", 16 * 1024, &[("f.bin", 100_000), ("g.bin", 1)]);
    let seed_dir = tempfile::tempdir().unwrap();
    let leech_dir = tempfile::tempdir().unwrap();
    fx.write_to(seed_dir.path());

    let seeder = async_std::task::block_on(async {
        let s = hyperblow_async_std::start_in_runtime(config(11)).unwrap();
        s.add_torrent(AddTorrentRequest::new(fx.metainfo.clone(), seed_dir.path()))
            .await
            .unwrap();
        s
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let run = async {
            let s = hyperblow_tokio::start_in_runtime(config(12)).unwrap();
            let mut events = s.events();
            let t = s
                .add_torrent(
                    AddTorrentRequest::new(fx.metainfo.clone(), leech_dir.path())
                        .peers(vec![seeder.listen_addr()]),
                )
                .await
                .unwrap();
            while let Some(e) = events.next().await {
                if e == SessionEvent::Engine(Event::TorrentCompleted(t.id)) {
                    break;
                }
            }
            assert_eq!(s.stats().await.unwrap()[0].state, TorrentState::Seeding);
            s.shutdown().await.unwrap();
        };
        tokio::time::timeout(WAIT, run).await.expect("in time");
    });
    assert!(
        hyperblow_tokio::start_in_runtime(config(13)).is_err(),
        "no runtime here"
    );
    async_std::task::block_on(async {
        async_std::future::timeout(WAIT, seeder.shutdown())
            .await
            .expect("in time")
            .unwrap();
    });
    fx.assert_in(leech_dir.path());
}

/// Throughput check, not run by default: `HB_BULK_MIB=256 cargo test --release --test drivers bulk --
/// --ignored --nocapture` prints the rate of a single-file loopback transfer on each runtime.
#[test]
#[ignore]
fn bulk_transfer_rate() {
    let mib: usize = std::env::var("HB_BULK_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let fx = Fixture::multi("bulk", 256 * 1024, &[("big.bin", mib << 20)]);
    for rt in [Rt::Tokio, Rt::AsyncStd] {
        let seed_dir = tempfile::tempdir().unwrap();
        let leech_dir = tempfile::tempdir().unwrap();
        fx.write_to(seed_dir.path());
        let seeder = start(rt, 20);
        seeder
            .add_torrent(AddTorrentRequest::new(fx.metainfo.clone(), seed_dir.path()))
            .wait_timeout(Duration::from_secs(300))
            .unwrap();
        let leecher = start(rt, 21);
        let mut events = leecher.events();
        let started = Instant::now();
        let t = leecher
            .add_torrent(
                AddTorrentRequest::new(fx.metainfo.clone(), leech_dir.path())
                    .peers(vec![seeder.listen_addr()]),
            )
            .wait_timeout(WAIT)
            .unwrap();
        wait_for(&mut events, completed(t.id));
        let took = started.elapsed();
        println!(
            "{rt:?}: {mib} MiB in {took:?} = {:.0} MiB/s",
            mib as f64 / took.as_secs_f64()
        );
        shutdown(&leecher);
        shutdown(&seeder);
        fx.assert_in(leech_dir.path());
    }
}
