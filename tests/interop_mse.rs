//! Protocol encryption (MSE/PE) in the running engine against libtorrent 2.0, on both runtimes,
//! byte-exact. Hyperblow is driven through its library API with `EngineConfig::encryption` set as
//! `--encryption` sets it; libtorrent (`tests/interop/lt_peer.py --encryption`) has its `out_enc_policy`
//! and `in_enc_policy` forced or disabled, with `allowed_enc_level` RC4 when forced.
//!
//! Scenarios:
//! 1. `require_downloads_from_forced_seeder`: a libtorrent seeder that accepts only RC4 serves
//!    Hyperblow under `require` (Hyperblow dials; the MSE handshake carries our BitTorrent handshake).
//! 2. `forced_leecher_downloads_from_require`: a libtorrent leecher that dials only with RC4
//!    downloads from Hyperblow seeding under `require` (detection of the incoming MSE handshake, the
//!    torrent found by its `req2` hash).
//! 3. `prefer_falls_back_to_plain`: under `prefer` Hyperblow dials a libtorrent seeder with
//!    encryption disabled; libtorrent hangs up on the MSE handshake, Hyperblow redials at once with a
//!    plain handshake and downloads.
//! 4. `transmission_required_leeches_from_require`: Transmission 3.00 with `encryption` required
//!    (`transmission-remote --encryption-required`) downloads from Hyperblow under `require`
//!    (Hyperblow dials it: Transmission ignores loopback peers from trackers).
//! 5. `require_downloads_from_transmission_required`: the other way round, Transmission seeding.
//!
//! aria2 (which opens every connection with MSE) downloading from Hyperblow under `require`, with
//! aria2's log showing the RC4 selection, is in `tests/interop_aria2.rs`.
//!
//! Under `require` a finished transfer proves the stream was RC4: the engine refuses plaintext in both
//! directions (no plain handshake accepted, `crypto_provide` and `crypto_select` RC4 only).
//! All programs listen on 127.0.0.1 with discovery off and are stopped by PID; every wait is bounded.

#[macro_use]
#[path = "interop/common.rs"]
mod common;

use std::time::Instant;

use common::scenario::{
    hb_downloads, hb_downloads_from_transmission, lt_leeches_from, lt_seeder_of,
    transmission_leeches_from,
};
use common::{tools_present, Hb, Rt, SingleFile, WAIT};
use hyperblow_core::mse::Policy;
use hyperblow_tests::interop::Transmission;

on_both_runtimes!(
    require_downloads_from_forced_seeder,
    forced_leecher_downloads_from_require,
    prefer_falls_back_to_plain,
    transmission_required_leeches_from_require,
    require_downloads_from_transmission_required,
);

/// A distinct payload seed per scenario and runtime, so that no two tests share an info-hash.
fn seed_for(rt: Rt, scenario: u64) -> u64 {
    1500 + scenario * 10 + rt as u64
}

/// No tracker: peers are given by address.
const NO_TRACKER: &str = "http://127.0.0.1:9/announce";

fn fixture(rt: Rt, scenario: u64) -> SingleFile {
    SingleFile::new(
        "mse.bin",
        700 * 1024 + 321,
        seed_for(rt, scenario),
        15,
        &[NO_TRACKER],
    )
}

fn hb(rt: Rt, policy: Policy) -> Hb {
    Hb::start(rt, |c| c.engine.encryption = policy)
}

/// Hyperblow under `policy` downloads from a libtorrent seeder with `--encryption lt_policy`.
fn download_from_lt(rt: Rt, scenario: u64, policy: Policy, lt_policy: &str) {
    if !tools_present() {
        return;
    }
    let t0 = Instant::now();
    let fx = fixture(rt, scenario);
    let args = vec!["--encryption".into(), lt_policy.into()];
    let Some(seeder) = lt_seeder_of(&format!("lt-seed-{lt_policy}"), &fx, args) else {
        return;
    };
    let hb = hb(rt, policy);
    let took = hb_downloads(&hb, &fx, seeder.addr(), WAIT, &[seeder.process()]);
    eprintln!(
        "[timing] {} {policy} from libtorrent --encryption {lt_policy}: {} KiB in {took:.2?} (test {:.2?})",
        rt.name(),
        fx.data.len() / 1024,
        t0.elapsed()
    );
}

/// Scenario 1.
fn require_downloads_from_forced_seeder(rt: Rt) {
    download_from_lt(rt, 1, Policy::Require, "forced");
}

/// Scenario 3.
fn prefer_falls_back_to_plain(rt: Rt) {
    download_from_lt(rt, 3, Policy::Prefer, "disabled");
}

/// Scenario 2.
fn forced_leecher_downloads_from_require(rt: Rt) {
    if !tools_present() {
        return;
    }
    let t0 = Instant::now();
    let fx = fixture(rt, 2);
    let hb = hb(rt, Policy::Require);
    let forced = vec!["--encryption".into(), "forced".into()];
    let Some(own) = lt_leeches_from(&hb, &fx, "lt-leech-forced", forced) else {
        return;
    };
    eprintln!(
        "[timing] {} libtorrent forced leeches from Hyperblow require: its own {own:.2} s (test {:.2?})",
        rt.name(),
        t0.elapsed()
    );
}

/// Transmission 3.00 with encryption required (its `encryption` = 2), or `None` when it is missing.
fn transmission_required(rt: Rt, role: &str) -> Option<Transmission> {
    let tr = Transmission::start(
        &format!("transmission-{role}-{}", rt.name()),
        common::PROGRAM_BOUND,
    )
    .expect("start transmission-daemon")?;
    tr.remote(&["--encryption-required"])
        .expect("require encryption in transmission");
    Some(tr)
}

/// Scenario 4.
fn transmission_required_leeches_from_require(rt: Rt) {
    if !tools_present() {
        return;
    }
    let t0 = Instant::now();
    let fx = fixture(rt, 4);
    let Some(tr) = transmission_required(rt, "leech") else {
        return;
    };
    let hb = hb(rt, Policy::Require);
    let took = transmission_leeches_from(&tr, &hb, &fx);
    eprintln!(
        "[timing] {} Transmission (encryption required) leeches from Hyperblow require: {took:.2?} (test {:.2?})",
        rt.name(),
        t0.elapsed()
    );
}

/// Scenario 5.
fn require_downloads_from_transmission_required(rt: Rt) {
    if !tools_present() {
        return;
    }
    let t0 = Instant::now();
    let fx = fixture(rt, 5);
    let Some(tr) = transmission_required(rt, "seed") else {
        return;
    };
    let took = hb_downloads_from_transmission(&tr, &fx, || hb(rt, Policy::Require));
    eprintln!(
        "[timing] {} Hyperblow require from Transmission (encryption required): {took:.2?} (test {:.2?})",
        rt.name(),
        t0.elapsed()
    );
}
