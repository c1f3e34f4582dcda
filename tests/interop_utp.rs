//! uTP (BEP 29) in the running engine against real peers on loopback, on both runtimes, byte-exact.
//! Hyperblow runs with `EngineConfig::transport` = `utp` (as `--transport utp` sets it): it dials
//! only uTP and refuses incoming TCP, so a finished transfer went over uTP.
//!
//! Scenarios:
//! 1. `lt_utp_leeches_from_hyperblow`: a libtorrent leecher with TCP off both ways
//!    (`tests/interop/lt_peer.py --transport utp`) dials Hyperblow and downloads.
//! 2. `hyperblow_downloads_from_lt_utp_seeder`: Hyperblow dials a uTP-only libtorrent seeder.
//! 3. `transmission_leeches_from_hyperblow_over_utp`: Transmission 3.00 with `utp-enabled`
//!    (it cannot switch TCP off; Hyperblow refuses TCP) downloads from Hyperblow, which dials it.
//! 4. `hyperblow_downloads_from_transmission_over_utp`: the other way round.
//! 5. `rc4_over_utp_from_lt_forced_seeder`: as 2, with libtorrent forcing RC4 (MSE over uTP).
//!
//! All programs listen on 127.0.0.1 with discovery off and are stopped by PID; every wait is bounded.

#[macro_use]
#[path = "interop/common.rs"]
mod common;

use std::time::Instant;

use common::scenario::{
    hb_downloads, hb_downloads_from_transmission, lt_leeches_from, lt_seeder_of,
    transmission_leeches_from, utp_only,
};
use common::{tools_present, Hb, Rt, SingleFile, WAIT};
use hyperblow_driver::engine::Transport;
use hyperblow_tests::interop::Transmission;

on_both_runtimes!(
    lt_utp_leeches_from_hyperblow,
    hyperblow_downloads_from_lt_utp_seeder,
    transmission_leeches_from_hyperblow_over_utp,
    hyperblow_downloads_from_transmission_over_utp,
    rc4_over_utp_from_lt_forced_seeder,
);

/// A distinct payload seed per scenario and runtime, so that no two tests share an info-hash.
fn seed_for(rt: Rt, scenario: u64) -> u64 {
    1600 + scenario * 10 + rt as u64
}

/// No tracker: peers are given by address.
const NO_TRACKER: &str = "http://127.0.0.1:9/announce";

/// 1.3 MiB in 32 KiB pieces: about a thousand uTP data packets, a second or less on loopback with
/// libtorrent.
fn fixture(rt: Rt, scenario: u64) -> SingleFile {
    fixture_of(rt, scenario, 1300 * 1024 + 77)
}

/// Transmission 3.00 over uTP takes a near-fixed 11 s (it unchokes at its 10 s rechoke) to 25 s
/// whatever the size, so its scenarios move only 300 KiB.
fn small_fixture(rt: Rt, scenario: u64) -> SingleFile {
    fixture_of(rt, scenario, 300 * 1024 + 77)
}

fn fixture_of(rt: Rt, scenario: u64, len: usize) -> SingleFile {
    SingleFile::new("utp.bin", len, seed_for(rt, scenario), 15, &[NO_TRACKER])
}

fn hb(rt: Rt) -> Hb {
    Hb::start(rt, |c| c.engine.transport = Transport::Utp)
}

/// Scenario 1.
fn lt_utp_leeches_from_hyperblow(rt: Rt) {
    if !tools_present() {
        return;
    }
    let t0 = Instant::now();
    let fx = fixture(rt, 1);
    let hb = hb(rt);
    let Some(own) = lt_leeches_from(&hb, &fx, "lt-leech-utp", utp_only()) else {
        return;
    };
    eprintln!(
        "[timing] {} libtorrent (uTP only) leeches from Hyperblow (uTP only): its own {own:.2} s (test {:.2?})",
        rt.name(),
        t0.elapsed()
    );
}

/// Scenario 2.
fn hyperblow_downloads_from_lt_utp_seeder(rt: Rt) {
    download_from_lt(rt, 2, &[]);
}

/// Scenario 5: as 2, with the stream RC4-encrypted (libtorrent forces MSE with RC4).
fn rc4_over_utp_from_lt_forced_seeder(rt: Rt) {
    download_from_lt(rt, 5, &["--encryption", "forced"]);
}

/// Hyperblow (uTP only) downloads from a uTP-only libtorrent seeder given `lt_args` besides.
fn download_from_lt(rt: Rt, scenario: u64, lt_args: &[&str]) {
    if !tools_present() {
        return;
    }
    let t0 = Instant::now();
    let fx = fixture(rt, scenario);
    let mut args = utp_only();
    args.extend(lt_args.iter().map(|a| a.to_string()));
    let Some(seeder) = lt_seeder_of("lt-seed-utp", &fx, args) else {
        return;
    };
    let hb = hb(rt);
    let took = hb_downloads(&hb, &fx, seeder.addr(), WAIT, &[seeder.process()]);
    eprintln!(
        "[timing] {} Hyperblow (uTP only) from libtorrent (uTP only {}): {} KiB in {took:.2?} (test {:.2?})",
        rt.name(),
        lt_args.join(" "),
        fx.data.len() / 1024,
        t0.elapsed()
    );
}

/// Transmission 3.00 with uTP on (`transmission-remote --utp`), or `None` when it is missing.
fn transmission_utp(rt: Rt, role: &str) -> Option<Transmission> {
    let tr = Transmission::start(
        &format!("transmission-utp-{role}-{}", rt.name()),
        common::PROGRAM_BOUND,
    )
    .expect("start transmission-daemon")?;
    tr.remote(&["--utp"]).expect("turn uTP on in transmission");
    Some(tr)
}

/// Scenario 3.
fn transmission_leeches_from_hyperblow_over_utp(rt: Rt) {
    if !tools_present() {
        return;
    }
    let t0 = Instant::now();
    let fx = small_fixture(rt, 3);
    let Some(tr) = transmission_utp(rt, "leech") else {
        return;
    };
    // Plain: Transmission 3.00 accepting an MSE handshake over uTP unchokes us but never says it
    // is interested (it never requests; over TCP, and with libtorrent over uTP in scenario 5, the
    // same handshake works), so this scenario speaks plain BitTorrent.
    let hb = Hb::start(rt, |c| {
        c.engine.transport = Transport::Utp;
        c.engine.encryption = hyperblow_core::mse::Policy::Disable;
    });
    let took = transmission_leeches_from(&tr, &hb, &fx);
    eprintln!(
        "[timing] {} Transmission leeches from Hyperblow over uTP: {took:.2?} (test {:.2?})",
        rt.name(),
        t0.elapsed()
    );
}

/// Scenario 4.
fn hyperblow_downloads_from_transmission_over_utp(rt: Rt) {
    if !tools_present() {
        return;
    }
    let t0 = Instant::now();
    let fx = small_fixture(rt, 4);
    let Some(tr) = transmission_utp(rt, "seed") else {
        return;
    };
    let took = hb_downloads_from_transmission(&tr, &fx, || hb(rt));
    eprintln!(
        "[timing] {} Hyperblow (uTP only) from Transmission over uTP: {took:.2?} (test {:.2?})",
        rt.name(),
        t0.elapsed()
    );
}
