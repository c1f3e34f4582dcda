//! An idle session must sleep: one timer at the engine's next deadline, no spinning. Its own test
//! binary so that no other test's work counts in the process CPU time it measures.

use std::fs;
use std::time::{Duration, Instant};

use hyperblow_core::metainfo::{Metainfo, TorrentBuilder};
use hyperblow_driver::{AddTorrentRequest, SessionConfig, SessionHandle};

/// User plus system CPU time of this process, in clock ticks (fields 14 and 15 of /proc/self/stat).
fn cpu_ticks() -> u64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap();
    // The command name (field 2) may hold spaces; fields after it are plain numbers.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: u64 = fields[11].parse().unwrap();
    let stime: u64 = fields[12].parse().unwrap();
    utime + stime
}

fn torrent(name: &str, len: usize) -> (Metainfo, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let mut h = TorrentBuilder::single_file(name, len as u64)
        .piece_length(16 * 1024)
        .start()
        .unwrap();
    h.update(&data).unwrap();
    (
        Metainfo::from_bytes(&h.finish().unwrap().bytes).unwrap(),
        data,
    )
}

/// One seeding torrent and one downloading torrent whose only peer refuses connections.
fn busy_idle(session: &SessionHandle, dir: &std::path::Path) {
    let (seed, data) = torrent("seed.bin", 50_000);
    fs::write(dir.join("seed.bin"), data).unwrap();
    session
        .add_torrent(AddTorrentRequest::new(seed, dir))
        .wait_timeout(Duration::from_secs(10))
        .unwrap();
    // A port nobody listens on: bind, note it, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (leech, _) = torrent("leech.bin", 50_000);
    session
        .add_torrent(AddTorrentRequest::new(leech, dir).peers(vec![dead]))
        .wait_timeout(Duration::from_secs(10))
        .unwrap();
}

#[test]
fn idle_sessions_do_not_spin() {
    let dir = tempfile::tempdir().unwrap();
    let config = || SessionConfig {
        bind_addr: "127.0.0.1".parse().unwrap(),
        seed: Some(1),
        ..SessionConfig::default()
    };
    let tokio = hyperblow_tokio::start(config()).unwrap();
    let async_std = hyperblow_async_std::start(config()).unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    busy_idle(&tokio, &a);
    busy_idle(&async_std, &b);
    // Let start-up work settle, then measure.
    std::thread::sleep(Duration::from_millis(300));
    let (t0, c0) = (Instant::now(), cpu_ticks());
    std::thread::sleep(Duration::from_millis(1500));
    let (spent, ticks) = (t0.elapsed(), cpu_ticks() - c0);
    // Clock ticks are 10 ms on Linux; a spinning loop would burn ~150 of them here.
    assert!(ticks <= 15, "{ticks} CPU ticks in {spent:?} while idle");
    tokio
        .shutdown()
        .wait_timeout(Duration::from_secs(10))
        .unwrap();
    async_std
        .shutdown()
        .wait_timeout(Duration::from_secs(10))
        .unwrap();
}
