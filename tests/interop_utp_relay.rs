//! uTP (BEP 29) across a lossy link: real peers talking through [`UdpRelay`], the user-space
//! stand-in for `netem` (this kernel has none), with 20 ms of delay each way, 1 % loss, some
//! reordering and duplication in both directions (seeded, so every run treats the n-th datagram of
//! each flow alike).
//!
//! The dialler is told the relay's address; the relay sends the dialler's datagrams to the
//! listener from an upstream socket of its own and relays the answers back (see
//! `src/interop/relay.rs`). Each test checks that the payload went through the relay (its
//! counters) and that the relay did drop datagrams, so the transfer survived real loss.
//!
//! Scenarios:
//! 1. `libtorrent_pair_through_relay`: two uTP-only libtorrents (`lt_peer.py --transport utp`:
//!    TCP neither made nor accepted), the leecher dialling the seeder through the relay. This
//!    proves the relay itself against a mature uTP implementation.
//! 2. `libtorrent_leeches_from_hyperblow` (both runtimes): Hyperblow seeds with `--transport utp`;
//!    a uTP-only libtorrent leecher dials it through the relay.
//! 3. `hyperblow_leeches_from_libtorrent` (both runtimes): Hyperblow with `--transport utp`
//!    dials a uTP-only libtorrent seeder through the relay (`add_peer` with the relay's address).
//!
//! Everything listens on 127.0.0.1 with discovery off; every process is stopped by PID and every
//! wait is bounded.

#[macro_use]
#[path = "interop/common.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::scenario::{hb_downloads, lt_leecher_to, lt_seeder_of, utp_only};
use common::{assert_same, tools_present, Hb, Rt, SingleFile, WAIT};
use hyperblow_core::engine::Transport;
use hyperblow_driver::AddTorrentRequest;
use hyperblow_tests::interop::{LtPeer, RelayConfig, RelayStats, UdpRelay};

on_both_runtimes!(
    libtorrent_leeches_from_hyperblow,
    hyperblow_leeches_from_libtorrent,
);

/// No tracker: peers are given by address.
const NO_TRACKER: &str = "http://127.0.0.1:9/announce";

/// The payload of each scenario: a few MiB, enough for hundreds of datagrams to be lost.
const PAYLOAD: usize = 3 * 1024 * 1024 + 777;

/// The scenario's file `name`: [`PAYLOAD`] bytes of payload `seed` in 64 KiB pieces, no tracker.
fn fixture(name: &str, seed: u64) -> SingleFile {
    SingleFile::new(name, PAYLOAD, seed, 16, &[NO_TRACKER])
}

/// The link: 20 ms each way, 1 % loss each way, 2 % of datagrams held back 10 ms (overtaken by
/// later ones), 0.5 % sent twice; a fixed seed per scenario.
fn link(scenario: u64) -> RelayConfig {
    RelayConfig {
        reorder: 0.02,
        reorder_delay: Duration::from_millis(10),
        duplicate: 0.005,
        ..RelayConfig::lossy(Duration::from_millis(20), 0.01, 0x0075_7470 + scenario)
    }
}

/// A relay to `target` with scenario `scenario`'s link, on 127.0.0.3: each peer knows the other
/// by that IP only, where nobody else listens, so a redial of a listen port learned from a
/// handshake cannot bypass the relay (see `src/interop/relay.rs`).
fn relay_to(target: SocketAddr, scenario: u64) -> UdpRelay {
    UdpRelay::start_on(
        SocketAddr::from(([127, 0, 0, 3], 0)),
        target,
        link(scenario),
    )
    .expect("start the relay")
}

/// Checks that `bytes` of payload crossed the relay towards the downloader (in every scenario the
/// relay's client: the seeder is its target) and that the relay dropped and reordered datagrams
/// on the way (so the transfer recovered from both).
fn assert_relayed(stats: &RelayStats, bytes: usize) {
    let (data, acks) = (&stats.to_client, &stats.to_target);
    assert!(
        data.forwarded_bytes >= bytes as u64,
        "the payload went through the relay: {stats:?}"
    );
    assert!(
        data.lost > 0 && acks.lost + data.lost >= 10,
        "the relay dropped datagrams: {stats:?}"
    );
    assert!(
        data.reordered > 0,
        "the relay reordered datagrams: {stats:?}"
    );
    assert_eq!(data.overflow + acks.overflow, 0, "{stats:?}");
}

/// Checks that the libtorrent leecher's copy of `fx` (in `<fixture>/lt`) is exact and that it
/// came through `relay` ([`assert_relayed`]); returns the relay's counters.
fn assert_lt_leeched_through(relay: &UdpRelay, fx: &SingleFile) -> RelayStats {
    assert_same(
        &fx.dir.path().join("lt").join(&fx.name),
        &fx.data,
        "libtorrent leecher",
    );
    let stats = relay.stats();
    assert_relayed(&stats, fx.data.len());
    stats
}

/// Scenario 1: libtorrent leecher -> relay -> libtorrent seeder, both uTP only.
#[test]
fn libtorrent_pair_through_relay() {
    if !tools_present() {
        return;
    }
    let t0 = Instant::now();
    let fx = fixture("utp-relay-lt.bin", 1601);
    let Some(seeder) = lt_seeder_of("lt-seed-utp", &fx, utp_only()) else {
        return;
    };
    let relay = relay_to(seeder.addr(), 1);
    let cfg = lt_leecher_to("lt-leech-utp", &fx, relay.addr(), utp_only());
    let leecher = LtPeer::spawn(&cfg, fx.dir.path())
        .expect("spawn the libtorrent leecher")
        .expect("libtorrent is present (checked before)");
    let own = leecher
        .wait_finished(WAIT * 2, &[seeder.process()])
        .unwrap_or_else(|e| panic!("{e}\nrelay: {:?}", relay.stats()));
    let stats = assert_lt_leeched_through(&relay, &fx);
    eprintln!(
        "[timing] libtorrent -> libtorrent over uTP through the relay (20 ms, 1 % loss, reordering): {} KiB in {own:.2} s \
         (test {:.2?}); relay {stats:?}",
        fx.data.len() / 1024,
        t0.elapsed()
    );
}

/// Hyperblow on `rt` with uTP only (`--transport utp`).
fn hb_utp(rt: Rt) -> Hb {
    Hb::start(rt, |c| c.engine.transport = Transport::Utp)
}

/// A distinct payload seed per scenario and runtime, so that no two tests share an info-hash.
fn seed_for(rt: Rt, scenario: u64) -> u64 {
    1610 + scenario * 10 + rt as u64
}

/// Scenario 2: a uTP-only libtorrent leecher dials, through the relay, Hyperblow seeding over uTP.
fn libtorrent_leeches_from_hyperblow(rt: Rt) {
    if !tools_present() {
        return;
    }
    let t0 = Instant::now();
    let fx = fixture("utp-relay-hb-seed.bin", seed_for(rt, 2));
    let hb = hb_utp(rt);
    let added = hb.add(AddTorrentRequest::new(fx.meta.clone(), fx.seed_dir()));
    assert_eq!(added.have_pieces, added.total_pieces, "the seed has it all");
    // Hyperblow's uTP shares the UDP socket bound to its listen port.
    let relay = relay_to(hb.addr(), 2);
    let cfg = lt_leecher_to("lt-leech-utp", &fx, relay.addr(), utp_only());
    let Some(lt) = LtPeer::spawn(&cfg, fx.dir.path()).expect("spawn the libtorrent leecher") else {
        return;
    };
    let own = lt
        .wait_finished(WAIT * 2, &[])
        .unwrap_or_else(|e| panic!("{e}\nrelay: {:?}\n{}", relay.stats(), hb.diagnostics()));
    let stats = assert_lt_leeched_through(&relay, &fx);
    eprintln!(
        "[timing] {} Hyperblow -> libtorrent over uTP through the relay (20 ms, 1 % loss, reordering): {} KiB, its own {own:.2} s \
         (test {:.2?}); relay {stats:?}",
        rt.name(),
        fx.data.len() / 1024,
        t0.elapsed()
    );
}

/// Scenario 3: Hyperblow over uTP only dials, through the relay, a uTP-only libtorrent seeder.
fn hyperblow_leeches_from_libtorrent(rt: Rt) {
    if !tools_present() {
        return;
    }
    let t0 = Instant::now();
    let fx = fixture("utp-relay-hb-leech.bin", seed_for(rt, 3));
    let Some(seeder) = lt_seeder_of("lt-seed-utp", &fx, utp_only()) else {
        return;
    };
    let relay = relay_to(seeder.addr(), 3);
    let hb = hb_utp(rt);
    let took = hb_downloads(&hb, &fx, relay.addr(), WAIT * 2, &[seeder.process()]);
    let stats = relay.stats();
    assert_relayed(&stats, fx.data.len());
    eprintln!(
        "[timing] {} libtorrent -> Hyperblow over uTP through the relay (20 ms, 1 % loss, reordering): {} KiB in {took:.2?} \
         (test {:.2?}); relay {stats:?}",
        rt.name(),
        fx.data.len() / 1024,
        t0.elapsed()
    );
}
