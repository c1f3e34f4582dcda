//! Transfer scenarios shared by the interop test binaries (`interop_utp`, `interop_utp_relay`,
//! `interop_mse`): Hyperblow seeding to or downloading from libtorrent and Transmission, each
//! checked byte-exact. The callers choose the transport, encryption and timing output.

#![allow(dead_code)] // each binary uses a different part

use std::net::SocketAddr;
use std::time::Duration;

use hyperblow_driver::engine::TorrentId;
use hyperblow_driver::AddTorrentRequest;
use hyperblow_tests::interop::{
    free_port, ChildGuard, LtConfig, LtPeer, LtRole, LtSource, Transmission,
};

use super::{assert_same, lt_seeder, Hb, SingleFile, PROGRAM_BOUND, WAIT};

/// The uTP-only switch of `lt_peer.py` (TCP neither made nor accepted).
pub fn utp_only() -> Vec<String> {
    vec!["--transport".into(), "utp".into()]
}

/// A libtorrent leecher of `fx` named `name` that dials `connect` and saves into `<fixture>/lt`,
/// with `extra_args` for `lt_peer.py`.
pub fn lt_leecher_to(
    name: &str,
    fx: &SingleFile,
    connect: SocketAddr,
    extra_args: Vec<String>,
) -> LtConfig {
    let mut cfg = LtConfig::new(
        name,
        LtRole::Leech,
        LtSource::Torrent(fx.torrent.path.clone()),
        &fx.leech_dir("lt"),
        free_port().expect("a free port"),
        PROGRAM_BOUND,
    );
    cfg.connect = vec![connect];
    cfg.extra_args = extra_args;
    cfg
}

/// A libtorrent seeder of `fx` named `name` with `extra_args` for `lt_peer.py`, seeding (no
/// tracker); `None` when libtorrent is missing and skipping is allowed.
pub fn lt_seeder_of(name: &str, fx: &SingleFile, extra_args: Vec<String>) -> Option<LtPeer> {
    lt_seeder(
        name,
        &fx.torrent.path,
        &fx.seed_dir(),
        fx.dir.path(),
        false,
        |c| c.extra_args = extra_args,
    )
}

/// `hb` seeds `fx`; a libtorrent leecher ([`lt_leecher_to`]) dials it and downloads it. Checks
/// the bytes and that Hyperblow uploaded all of them. Returns libtorrent's own download time in
/// seconds, or `None` when libtorrent is missing and skipping is allowed.
pub fn lt_leeches_from(
    hb: &Hb,
    fx: &SingleFile,
    name: &str,
    extra_args: Vec<String>,
) -> Option<f64> {
    let added = hb.add(AddTorrentRequest::new(fx.meta.clone(), fx.seed_dir()));
    assert_eq!(added.have_pieces, added.total_pieces, "the seed has it all");
    let cfg = lt_leecher_to(name, fx, hb.addr(), extra_args);
    let lt = LtPeer::spawn(&cfg, fx.dir.path()).expect("spawn the libtorrent leecher")?;
    let own = lt
        .wait_finished(WAIT, &[])
        .unwrap_or_else(|e| panic!("{e}\n{}", hb.diagnostics()));
    assert_same(
        &fx.dir.path().join("lt").join(&fx.name),
        &fx.data,
        "libtorrent",
    );
    let stats = hb.stats(added.id);
    assert!(
        stats.uploaded >= fx.data.len() as u64,
        "every byte came from Hyperblow, uploaded {}",
        stats.uploaded
    );
    Some(own)
}

/// `hb` downloads `fx` into `<fixture>/hb` from the peer at `peer` (given with `add_peer`),
/// within `timeout`, watching `watched`; checks the bytes and returns the time it took.
pub fn hb_downloads(
    hb: &Hb,
    fx: &SingleFile,
    peer: SocketAddr,
    timeout: Duration,
    watched: &[&ChildGuard],
) -> Duration {
    let added = hb.add(AddTorrentRequest::new(fx.meta.clone(), fx.leech_dir("hb")));
    hb.session
        .add_peer(added.id, peer)
        .wait_timeout(WAIT)
        .expect("add_peer");
    let took = hb.wait_complete(added.id, timeout, watched);
    assert_same(
        &fx.dir.path().join("hb").join(&fx.name),
        &fx.data,
        "Hyperblow",
    );
    took
}

/// Adds `fx` to `tr` and has `hb` (holding `fx` as `hb_id`) dial Transmission's peer port:
/// Transmission ignores the 127.0.0.1 peers a tracker hands it, but accepts incoming connections.
/// Returns the torrent's id in `tr`.
pub fn hb_dials_transmission(hb: &Hb, hb_id: TorrentId, tr: &Transmission, fx: &SingleFile) -> u32 {
    let id = tr
        .add_torrent(&fx.torrent.path)
        .expect("add to transmission");
    hb.session
        .add_peer(hb_id, tr.peer_addr())
        .wait_timeout(WAIT)
        .expect("add_peer");
    id
}

/// `hb` seeds `fx` and dials `tr` (Transmission ignores loopback peers from trackers), which
/// downloads it. Checks the bytes, stops the torrent in `tr` and returns Transmission's time.
pub fn transmission_leeches_from(tr: &Transmission, hb: &Hb, fx: &SingleFile) -> Duration {
    let added = hb.add(AddTorrentRequest::new(fx.meta.clone(), fx.seed_dir()));
    assert_eq!(added.have_pieces, added.total_pieces, "the seed has it all");
    let id = hb_dials_transmission(hb, added.id, tr, fx);
    let took = tr.wait_complete(id, WAIT, &[]).unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}",
            tr.info(id).unwrap_or_default(),
            hb.diagnostics()
        )
    });
    assert_same(&tr.download_dir().join(&fx.name), &fx.data, "Transmission");
    let _ = tr.stop_torrent(id);
    took
}

/// `tr` is given `fx`'s data and seeds it once it has checked it; then the Hyperblow that
/// `start_hb` starts downloads it from `tr` ([`hb_downloads`]). Stops the torrent in `tr` and
/// returns Hyperblow's time.
pub fn hb_downloads_from_transmission(
    tr: &Transmission,
    fx: &SingleFile,
    start_hb: impl FnOnce() -> Hb,
) -> Duration {
    std::fs::copy(
        fx.seed_dir().join(&fx.name),
        tr.download_dir().join(&fx.name),
    )
    .expect("give transmission the data");
    let id = tr
        .add_torrent(&fx.torrent.path)
        .expect("add to transmission");
    // It checks the data it finds and then seeds.
    tr.wait_complete(id, WAIT, &[])
        .unwrap_or_else(|e| panic!("{e}\n{}", tr.info(id).unwrap_or_default()));
    let hb = start_hb();
    let took = hb_downloads(&hb, fx, tr.peer_addr(), WAIT, &[tr.process()]);
    let _ = tr.stop_torrent(id);
    took
}
