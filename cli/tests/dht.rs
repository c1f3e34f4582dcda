//! The binary's DHT on loopback: `hyperblow dht peers` finds a seeder that announced itself, and
//! `hyperblow download` of a magnet link with neither `tr` nor `x.pe` completes through the DHT and
//! keeps its DHT state and port in `--state-dir`. The DHT is a router node and a seeder run
//! in-process (sessions on 127.0.0.1, bootstrapped from each other only).

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{fixture, s, Fixture};
use hyperblow_driver::engine::DhtSettings;
use hyperblow_driver::{AddTorrentRequest, SessionConfig, SessionHandle};

/// A tokio session on 127.0.0.1 whose DHT starts from `bootstrap` only.
fn dht_session(seed: u64, bootstrap: &[SocketAddr]) -> SessionHandle {
    let mut config = SessionConfig {
        bind_addr: "127.0.0.1".parse().unwrap(),
        seed: Some(seed),
        worker_threads: 1,
        ..SessionConfig::default()
    };
    config.engine.dht = Some(DhtSettings {
        bootstrap: bootstrap
            .iter()
            .map(|a| (a.ip().to_string(), a.port()))
            .collect(),
        ..DhtSettings::default()
    });
    hyperblow_tokio::start(config).expect("session starts")
}

/// A router node and a seeder of `fx` that announced itself to it (its UDP port is its TCP port).
fn router_and_seeder(fx: &Fixture) -> (SessionHandle, SessionHandle, SocketAddr) {
    let router = dht_session(1, &[]);
    let router_addr = router.listen_addr();
    let seeder = dht_session(2, &[router_addr]);
    seeder
        .add_torrent(AddTorrentRequest::new(
            fx.meta.clone(),
            fx.payload.parent().unwrap(),
        ))
        .wait_timeout(common::DONE_WITHIN)
        .expect("seeder adds its torrent");
    let until = Instant::now() + common::DONE_WITHIN;
    loop {
        let stored = router
            .dht_stats()
            .wait_timeout(common::DONE_WITHIN)
            .unwrap()
            .map_or(0, |s| s.stored_peers);
        if stored >= 1 {
            break;
        }
        assert!(Instant::now() < until, "the seeder never announced");
        std::thread::sleep(Duration::from_millis(50));
    }
    (router, seeder, router_addr)
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(common::bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run hyperblow")
}

#[test]
fn dht_peers_prints_the_seeder_that_announced() {
    let fx = fixture("dhtpeers", &[("a.bin", 100_000)], 16 * 1024, &[], 5);
    let (router, seeder, router_addr) = router_and_seeder(&fx);
    let state = fx.dir.path().join("state");
    let hex = fx.meta.info_hash().to_hex();
    let boot = router_addr.to_string();
    let out = run(&[
        "dht",
        "peers",
        &hex,
        "--dht-bootstrap",
        &boot,
        "--state-dir",
        s(&state),
        "--bind",
        "127.0.0.1",
        "--timeout",
        "20s",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout
            .lines()
            .any(|l| l == seeder.listen_addr().to_string()),
        "{stdout}"
    );
    // A torrent nobody announced: no peers, exit code 5.
    let out = run(&[
        "dht",
        "peers",
        &"ab".repeat(20),
        "--dht-bootstrap",
        &boot,
        "--state-dir",
        s(&state),
        "--bind",
        "127.0.0.1",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"peers\":0"));
    seeder.shutdown().wait_timeout(common::DONE_WITHIN).unwrap();
    router.shutdown().wait_timeout(common::DONE_WITHIN).unwrap();
}

#[test]
fn download_of_a_trackerless_magnet_through_the_dht_keeps_its_state() {
    let fx = fixture(
        "dhtmagnet",
        &[("a.bin", 300_000), ("b/c.bin", 70_001)],
        16 * 1024,
        &[],
        6,
    );
    let (router, seeder, router_addr) = router_and_seeder(&fx);
    let state = fx.dir.path().join("state");
    let out_dir = fx.dir.path().join("out");
    let link = format!("magnet:?xt=urn:btih:{}", fx.meta.info_hash().to_hex());
    let boot = router_addr.to_string();
    let out = run(&[
        "download",
        &link,
        "-o",
        s(&out_dir),
        "--dht-bootstrap",
        &boot,
        "--state-dir",
        s(&state),
        "--bind",
        "127.0.0.1",
        "--timeout",
        "30s",
        "--quiet",
    ]);
    assert!(out.status.success(), "{out:?}");
    for (rel, _) in [("a.bin", 0), ("b/c.bin", 0)] {
        let want = std::fs::read(fx.payload.join(rel)).unwrap();
        let got = std::fs::read(out_dir.join("dhtmagnet").join(rel)).unwrap();
        assert!(got == want, "{rel} differs");
    }
    // The node's state and the port were kept for the next run.
    let saved = std::fs::read(state.join("dht.state")).expect("dht.state written");
    assert!(saved.starts_with(b"d"), "a bencoded state");
    let port: u16 = std::fs::read_to_string(state.join("port"))
        .expect("port written")
        .trim()
        .parse()
        .expect("a port");
    assert_ne!(port, 0);
    seeder.shutdown().wait_timeout(common::DONE_WITHIN).unwrap();
    router.shutdown().wait_timeout(common::DONE_WITHIN).unwrap();
}
