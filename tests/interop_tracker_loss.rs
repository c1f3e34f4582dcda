//! Scenario 6 of the real-software suite (see `tests/interop.rs`): opentracker goes away half-way.
//!
//! Hyperblow finds a libtorrent seeder through opentracker (HTTP) and starts downloading; the seeder's
//! upload is rate-limited so that the transfer takes a few seconds. Once a third is done the tracker
//! is killed (by PID). The download must still finish from the connected seeder, byte-exact. Then,
//! with the tracker dead and the seeder stopped, Hyperblow's `completed` announce keeps failing: the
//! tracker must show `BackingOff` with a growing back-off (each retry later than the one before),
//! while the process stays idle (its CPU time over those seconds is a small fraction of them, where a
//! client that spun on the dead tracker would burn a whole core).
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

/// How long the idle phase is watched.
const IDLE_WATCH: Duration = Duration::from_secs(7);

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
        c.engine.announce.backoff_base = Duration::from_secs(1);
        c.engine.announce.backoff_cap = Duration::from_secs(8);
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

    // Idle: sample the tracker status, and the CPU time spent meanwhile.
    let cpu_before = process_cpu_time();
    let watch = Instant::now();
    // (failures, backing off until) for each failure count seen.
    let mut backoffs: Vec<(u32, EngineInstant)> = Vec::new();
    let mut last_state = None;
    while watch.elapsed() < IDLE_WATCH {
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

    assert!(
        backoffs.len() >= 3,
        "the dead tracker is retried on its back-off schedule: {backoffs:?}, last {last_state:#?}"
    );
    // Each failure backs off longer than the one before: the n-th retry waits 2^(n-1) s scaled
    // by a factor in [0.75, 1], so until[n] - until[n-1] (the n-th wait, the retry itself failing
    // at once) grows.
    let waits: Vec<Duration> = backoffs
        .windows(2)
        .map(|w| w[1].1.saturating_duration_since(w[0].1))
        .collect();
    assert!(
        waits.windows(2).all(|w| w[1] > w[0]),
        "back-off must grow: waits {waits:?} from {backoffs:?}"
    );
    assert!(
        backoffs.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "one retry per back-off, none skipped or doubled: {backoffs:?}"
    );
    // A spinning client burns ~100 % of a core; an idle one a few ticks.
    assert!(
        cpu * 10 < wall,
        "CPU time {cpu:?} over {wall:?} of idle time with a dead tracker (over 10 %)"
    );
    eprintln!(
        "[timing] {} tracker loss: tracker killed at {killed_at:.2?} with {} of {} bytes, complete \
         {rest:.2?} later from the connected seeder; then {} back-offs seen in {wall:.1?} (waits \
         {waits:?}), CPU {cpu:?}; test {:.2?}",
        rt.name(),
        part.have_bytes,
        part.wanted_bytes,
        backoffs.len(),
        t0.elapsed()
    );
}
