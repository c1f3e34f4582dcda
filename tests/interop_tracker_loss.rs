//! Scenario 6 of the real-software suite (see `tests/interop.rs`): opentracker goes away half-way.
//!
//! Hyperblow finds a libtorrent seeder through opentracker (HTTP) and starts downloading; the seeder's
//! upload is rate-limited so that the transfer takes a few seconds. Once a third is done the tracker
//! is killed (by PID). The download must still finish from the connected seeder, byte-exact. Then,
//! with the tracker dead and the seeder stopped, Hyperblow's `completed` announce keeps failing: the
//! tracker must show `BackingOff`, be retried again and again, never before its growing back-off
//! (each retry at least the scheduled minimum for its failure count after the one before), while
//! the process stays idle (its CPU time over those seconds is a small fraction of them, where a
//! client that spun on the dead tracker would burn a whole core).
//!
//! Nothing here races the machine's speed: the test waits for the retries themselves (bounded only
//! against a hang), and it checks the gaps between the client's own `until` instants from below
//! only. A retry can come late on a loaded machine, which makes a gap longer, never shorter; a
//! check that each gap is longer than the one before would fail when one retry is delayed by more
//! than the jitter's margin. The exact doubling, jitter and cap are unit-tested on a virtual clock
//! in `core` (`backoff_grows_with_jitter_and_is_capped`).
//!
//! The back-off is shortened for the test (`backoff_base` 1 s instead of 30 s, cap 8 s: the same
//! code path on a scale that fits in seconds). HTTP, because a dead HTTP tracker fails at once
//! (connection refused); a dead UDP tracker just never answers, which the announce policy turns into
//! a failure after its 60 s attempt budget.
//!
//! Its own test binary, so that no other test's work counts in the process CPU time it measures; the
//! two runtimes run one after the other for the same reason.

#[macro_use]
#[path = "interop/common.rs"]
mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{assert_same, lt_seeder, process_cpu_time, tools_present, Hb, Rt, SingleFile, WAIT};
use hyperblow_core::time::Instant as EngineInstant;
use hyperblow_core::tracker::announce::TrackerState;
use hyperblow_driver::AddTorrentRequest;
use hyperblow_tests::interop::Opentracker;

on_both_runtimes!(tracker_goes_away_half_way);

/// One scenario at a time: each measures the whole process's CPU time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The test's back-off: base and cap, as given to the client.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(8);

/// Retries watched after the first back-off seen: enough for the back-off to have doubled twice.
const RETRIES: u32 = 3;

/// Bound on the idle phase, only against a hang: the retries watched take at most 2 + 4 + 8 s of
/// back-off plus the time the machine takes.
const IDLE_BOUND: Duration = Duration::from_secs(120);

/// The least back-off the client may schedule after its `failures`-th consecutive failure:
/// `base * 2^(failures-1)`, capped, times the jitter's lowest factor 0.75.
fn least_backoff(failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_CAP) / 4 * 3
}

fn tracker_goes_away_half_way(rt: Rt) {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !tools_present() {
        return;
    }
    let t0 = Instant::now();
    let tracker = Opentracker::start(&[], common::PROGRAM_BOUND).expect("start opentracker");
    let url = tracker.http_announce_url();
    let fx = SingleFile::new("loss.bin", 1024 * 1024 + 17, 90 + rt as u64, 15, &[&url]);
    tracker
        .set_whitelist(&[fx.torrent.info_hash])
        .expect("whitelist");
    let Some(seeder) = lt_seeder(
        "lt-seed",
        &fx.torrent.path,
        &fx.seed_dir(),
        fx.dir.path(),
        true,
        |c| c.extra_args = vec!["--upload-limit".into(), "250000".into()],
    ) else {
        return;
    };
    let hb = Hb::start(rt, |c| {
        c.engine.announce.backoff_base = BACKOFF_BASE;
        c.engine.announce.backoff_cap = BACKOFF_CAP;
    });
    let added = hb.add(AddTorrentRequest::new(fx.meta.clone(), fx.leech_dir("hb")));
    let id = added.id;
    let part = hb.wait_stats(id, "a third downloaded", WAIT, &[seeder.process()], |s| {
        s.have_bytes * 3 >= s.wanted_bytes && s.peers >= 1
    });
    assert!(
        part.have_bytes < part.wanted_bytes,
        "the download must still be running when the tracker dies (have {} of {})",
        part.have_bytes,
        part.wanted_bytes
    );
    let killed_at = t0.elapsed();
    tracker.kill();
    assert!(!tracker.process().is_running(), "opentracker is gone");

    let rest = hb.wait_complete(id, WAIT, &[seeder.process()]);
    assert_same(
        &fx.dir.path().join("hb").join(&fx.name),
        &fx.data,
        "Hyperblow",
    );
    // Nobody left to talk to: only the dead tracker keeps the client busy now.
    seeder.process().stop();

    // Idle: sample the tracker status until it has been retried RETRIES times after the first
    // back-off seen, and the CPU time spent meanwhile.
    let cpu_before = process_cpu_time();
    let watch = Instant::now();
    // (failures, backing off until) for each failure count seen.
    let mut backoffs: Vec<(u32, EngineInstant)> = Vec::new();
    let mut last_state = None;
    while backoffs
        .first()
        .zip(backoffs.last())
        .is_none_or(|(first, last)| last.0 < first.0 + RETRIES)
    {
        assert!(
            watch.elapsed() < IDLE_BOUND,
            "the dead tracker is not retried on its back-off schedule: {backoffs:?}, last \
             {last_state:#?}"
        );
        let s = hb.stats(id);
        let t = s
            .trackers
            .iter()
            .find(|t| t.url == url)
            .expect("the tracker in the stats");
        if let TrackerState::BackingOff { until, .. } = &t.state {
            if backoffs.last().is_none_or(|(f, _)| *f != t.failures) {
                backoffs.push((t.failures, *until));
            }
        }
        last_state = Some(t.clone());
        std::thread::sleep(Duration::from_millis(100));
    }
    let wall = watch.elapsed();
    let cpu = process_cpu_time().saturating_sub(cpu_before);

    // The failure count only grows, and each retry waits at least its back-off: the `f`-th failure
    // comes no earlier than the `(f-1)`-th back-off's `until`, and backs off at least
    // `least_backoff(f)` from there, so between two states seen the `until` moves on by at least
    // the least back-offs of the failures in between (a sample may miss a short state on a loaded
    // machine; lateness only adds to the gap). A client that retried at once, or on a fixed short
    // period, fails this as soon as the least back-off passes its period.
    let mut gaps = Vec::new();
    for w in backoffs.windows(2) {
        let ((f0, u0), (f1, u1)) = (w[0], w[1]);
        assert!(
            f1 > f0,
            "failures only grow while backing off: {backoffs:?}"
        );
        let least: Duration = (f0 + 1..=f1).map(least_backoff).sum();
        let gap = u1.saturating_duration_since(u0);
        assert!(
            gap >= least,
            "retry before its back-off: `until` moved {gap:?} from failure {f0} to {f1}, the \
             back-offs in between are at least {least:?} (all seen: {backoffs:?})"
        );
        gaps.push(gap);
    }
    // A spinning client burns ~100 % of a core; an idle one a few ticks.
    assert!(
        cpu * 10 < wall,
        "CPU time {cpu:?} over {wall:?} of idle time with a dead tracker (over 10 %)"
    );
    eprintln!(
        "[timing] {} tracker loss: tracker killed at {killed_at:.2?} with {} of {} bytes, complete \
         {rest:.2?} later from the connected seeder; then {} back-offs seen in {wall:.1?} (gaps \
         {gaps:?}), CPU {cpu:?}; test {:.2?}",
        rt.name(),
        part.have_bytes,
        part.wanted_bytes,
        backoffs.len(),
        t0.elapsed()
    );
}
