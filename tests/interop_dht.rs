//! The DHT against libtorrent on loopback, with magnet links that carry neither `tr` nor `x.pe`: the
//! only way the two clients can meet is the DHT.
//!
//! Every run has a small DHT of its own on 127.0.0.0/8: a Hyperblow session with no torrents on
//! 127.0.0.3 is the router node that every other node bootstraps from (never a public router);
//! libtorrent runs with its DHT on, bootstrapped from that node, its one-node-per-/24 and verified-id
//! restrictions off (every node here is in 127.0.0.0/24), LSD, UPnP and NAT-PMP off
//! (`tests/interop/lt_peer.py --dht-bootstrap`).
//! (a) A libtorrent seeder on 127.0.0.2 announces the torrent; Hyperblow leechers on 127.0.0.1, on
//!     both runtimes, find it through the DHT, fetch the metadata and download the data.
//! (b) A Hyperblow seeder (both runtimes) announces the torrent; a libtorrent leecher on 127.0.0.4
//!     finds it through the DHT and downloads.
//! Every file is compared byte for byte; every wait is bounded.
//!
//! Run times: `cargo test --test interop_dht -- --nocapture`.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hyperblow_core::magnet::MagnetLink;
use hyperblow_core::metainfo::Metainfo;
use hyperblow_driver::engine::{DhtSettings, Event};
use hyperblow_driver::{
    AddMagnetRequest, AddTorrentRequest, SessionConfig, SessionEvent, SessionHandle,
};
use hyperblow_tests::fixture::{self, Rt};
use hyperblow_tests::interop::{
    free_port, mktorrent, payload, require_tool, LtConfig, LtPeer, LtRole, LtSource, TorrentFile,
};

/// The bound on finding a peer through the DHT and downloading from it.
const WAIT: Duration = Duration::from_secs(90);

/// The hard run-time bound of every libtorrent process started here.
const PROGRAM_BOUND: Duration = Duration::from_secs(150);

/// Size of the one file of the torrent.
const LEN: usize = 700_001;

/// A one-file torrent without any tracker, made by `mktorrent` (32 KiB pieces).
struct Fixture {
    dir: tempfile::TempDir,
    torrent: TorrentFile,
    data: Vec<u8>,
}

impl Fixture {
    fn new(seed: u64) -> Option<Fixture> {
        require_tool("mktorrent")?;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("seed");
        fs::create_dir_all(&root).unwrap();
        let data = payload(LEN, seed);
        fs::write(root.join("dht.bin"), &data).unwrap();
        let torrent = mktorrent(
            &root.join("dht.bin"),
            &[],
            15,
            &dir.path().join("dht.torrent"),
        )
        .expect("mktorrent");
        let meta = Metainfo::from_bytes(&fs::read(&torrent.path).unwrap()).unwrap();
        assert!(meta.trackers.is_empty(), "a torrent without trackers");
        Some(Fixture { dir, torrent, data })
    }

    /// The magnet link: the info-hash and nothing else.
    fn magnet(&self) -> String {
        format!("magnet:?xt=urn:btih:{}", self.torrent.info_hash.to_hex())
    }

    fn assert_in(&self, dir: &std::path::Path) {
        let got = fs::read(dir.join("dht.bin")).expect("downloaded file");
        assert!(got == self.data, "dht.bin differs from the original");
    }
}

/// A session on `ip` whose DHT starts from `bootstrap` only.
fn dht_session(rt: Rt, seed: u64, ip: &str, bootstrap: &[SocketAddr]) -> SessionHandle {
    let mut config: SessionConfig = fixture::config(seed);
    config.bind_addr = ip.parse().unwrap();
    config.engine.dht = Some(DhtSettings {
        bootstrap: bootstrap
            .iter()
            .map(|a| (a.ip().to_string(), a.port()))
            .collect(),
        ..DhtSettings::default()
    });
    match rt {
        Rt::Tokio => hyperblow_tokio::start(config),
        Rt::AsyncStd => hyperblow_async_std::start(config),
    }
    .expect("session starts")
}

/// The router node: a session with no torrents on 127.0.0.3. Its UDP port is its TCP port.
fn router() -> (SessionHandle, SocketAddr) {
    let r = dht_session(Rt::Tokio, 3, "127.0.0.3", &[]);
    let addr = SocketAddr::new(IpAddr::from([127, 0, 0, 3]), r.listen_addr().port());
    (r, addr)
}

fn dht_args(node: SocketAddr) -> Vec<String> {
    vec!["--dht-bootstrap".into(), node.to_string()]
}

#[test]
fn hyperblow_downloads_a_trackerless_magnet_from_libtorrent_found_through_the_dht() {
    let Some(fx) = Fixture::new(11) else { return };
    let (router, router_addr) = router();
    let mut cfg = LtConfig::new(
        "lt-dht-seed",
        LtRole::Seed,
        LtSource::Torrent(fx.torrent.path.clone()),
        &fx.dir.path().join("seed"),
        free_port().unwrap(),
        PROGRAM_BOUND,
    );
    cfg.listen_ip = IpAddr::from([127, 0, 0, 2]);
    cfg.extra_args = dht_args(router_addr);
    let Some(seeder) = LtPeer::spawn(&cfg, fx.dir.path()).expect("spawn seeder") else {
        return;
    };
    seeder.wait_seeding(WAIT).expect("seeder checks its data");
    for (rt, seed) in [(Rt::Tokio, 21), (Rt::AsyncStd, 22)] {
        let out: PathBuf = fx.dir.path().join(format!("leech-{rt:?}"));
        fs::create_dir_all(&out).unwrap();
        let session = dht_session(rt, seed, "127.0.0.1", &[router_addr]);
        let mut events = session.events();
        let t0 = Instant::now();
        let link = MagnetLink::parse(&fx.magnet()).expect("link");
        assert!(link.trackers.is_empty() && link.peers.is_empty());
        let added = session
            .add_magnet(AddMagnetRequest::new(link, &out))
            .wait_timeout(WAIT)
            .unwrap();
        let logs = || seeder.process().log_tail(40);
        let seen = fixture::wait_event(
            &mut events,
            WAIT,
            &logs,
            |e| matches!(e, SessionEvent::Engine(Event::TorrentCompleted(t)) if *t == added.id),
        );
        let took = t0.elapsed();
        // The only peer there is to find: the libtorrent seeder (it leaves once we are a seed too).
        assert!(
            seen.iter().any(|e| matches!(
                e,
                SessionEvent::Engine(Event::PeerConnected { addr, .. })
                    if addr.ip() == IpAddr::from([127, 0, 0, 2])
            )),
            "connected to the libtorrent seeder: {seen:?}"
        );
        let dht = session
            .dht_stats()
            .wait_timeout(WAIT)
            .unwrap()
            .expect("DHT on");
        println!(
            "{rt:?}: trackerless magnet from libtorrent through the DHT in {:.2} s \
             (routing table {} nodes, {} queries sent)",
            took.as_secs_f64(),
            dht.nodes,
            dht.queries_sent
        );
        session.shutdown().wait_timeout(WAIT).unwrap();
        fx.assert_in(&out);
    }
    router.shutdown().wait_timeout(WAIT).unwrap();
}

#[test]
fn libtorrent_downloads_a_trackerless_magnet_from_hyperblow_found_through_the_dht() {
    let Some(fx) = Fixture::new(12) else { return };
    let meta = Metainfo::from_bytes(&fs::read(&fx.torrent.path).unwrap()).unwrap();
    for (rt, seed, lt_ip) in [(Rt::Tokio, 31, 4u8), (Rt::AsyncStd, 32, 5u8)] {
        let (router, router_addr) = router();
        let session = dht_session(rt, seed, "127.0.0.1", &[router_addr]);
        session
            .add_torrent(AddTorrentRequest::new(
                meta.clone(),
                fx.dir.path().join("seed"),
            ))
            .wait_timeout(WAIT)
            .unwrap();
        let out = fx.dir.path().join(format!("lt-leech-{rt:?}"));
        fs::create_dir_all(&out).unwrap();
        let mut cfg = LtConfig::new(
            &format!("lt-dht-leech-{rt:?}"),
            LtRole::Leech,
            LtSource::Magnet(fx.magnet()),
            &out,
            free_port().unwrap(),
            PROGRAM_BOUND,
        );
        cfg.listen_ip = IpAddr::from([127, 0, 0, lt_ip]);
        cfg.extra_args = dht_args(router_addr);
        let Some(leecher) = LtPeer::spawn(&cfg, fx.dir.path()).expect("spawn leecher") else {
            return;
        };
        let secs = leecher
            .wait_finished(WAIT, &[])
            .expect("libtorrent finishes through the DHT");
        let stats = session.stats().wait_timeout(WAIT).unwrap();
        println!(
            "{rt:?}: libtorrent finished a trackerless magnet from Hyperblow in {secs:.2} s \
             (uploaded {} bytes)",
            stats[0].uploaded
        );
        assert!(stats[0].uploaded >= LEN as u64, "we served the data");
        fx.assert_in(&out);
        session.shutdown().wait_timeout(WAIT).unwrap();
        router.shutdown().wait_timeout(WAIT).unwrap();
    }
}
