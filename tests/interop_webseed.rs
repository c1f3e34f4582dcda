//! Web seeds (BEP 19) against a real web server over 127.0.0.1: nginx (run from its own prefix and
//! config, see src/interop/nginx.rs) serves the torrent's files. On both runtimes, byte-exact:
//! (a) a single-file torrent from an `http://` web seed alone (URL ending in `/`: the name is
//!     appended); ranged requests show in nginx's access log;
//! (b) a multi-file torrent (a subdirectory, a 0-byte file, names with spaces) from an `https://`
//!     web seed alone, the server certificate from a test CA made with `rcgen`;
//! (c) a web seed and a libtorrent seeder together;
//! (d) a web seed that serves corrupt bytes for one file next to a libtorrent seeder: that seed is
//!     disabled, the download completes from the peer, nothing bad is written;
//! (e) a web seed that answers `503` with `Retry-After` and then recovers;
//! (f) an `https://` web seed on `127.0.0.1` whose every file answers `302` to another host name
//!     (`localhost`, as archive.org sends each file to an `iaNNN` host): the name is resolved, its
//!     certificate checked for that name, and later ranges of a file go there directly;
//! (g) a magnet link with `ws=` and one peer that has the metadata but no piece: the metadata comes
//!     from the peer, every byte from the web seed, and the saved `.torrent` lists the web seed.
//!
//! Every wait is bounded; discovery (DHT, LSD, UPnP, NAT-PMP) is off in every program. The torrents
//! have no tracker: the web seed (and `--peer`-style peers) is all there is.

#[path = "interop/common.rs"]
#[macro_use]
mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{assert_same, lt_seeder, Hb, Rt, PROGRAM_BOUND, WAIT};
use hyperblow_core::magnet::MagnetLink;
use hyperblow_core::metainfo::{Metainfo, TorrentBuilder};
use hyperblow_driver::engine::Event;
use hyperblow_driver::{AddMagnetRequest, AddTorrentRequest};
use hyperblow_tests::interop::{payload, require_libtorrent, require_tool, Nginx, TestPki};

on_both_runtimes!(
    web_seed_alone_single_file,
    web_seed_alone_multi_file_over_https,
    web_seed_with_a_libtorrent_seeder,
    corrupt_web_seed_is_dropped_and_peers_finish,
    busy_web_seed_recovers,
    redirect_to_another_host_name,
    magnet_ws_after_metadata_from_a_peer
);

fn nginx_present() -> bool {
    require_tool(hyperblow_tests::interop::nginx::NGINX).is_some()
}

/// Files (relative path, length, in the sorted order the builder keeps) under `root/<name>/` for a multi-file torrent, or `root/<name>`
/// for a single file; returns the `.torrent` (built with `url`) and each file's bytes.
fn make(
    root: &Path,
    name: &str,
    files: &[(&str, usize)],
    piece: u32,
    url: &str,
    seed: u64,
) -> (Metainfo, Vec<(String, Vec<u8>)>) {
    let mut content = Vec::new();
    let mut out = Vec::new();
    let single = files.len() == 1 && files[0].0.is_empty();
    for (i, (path, len)) in files.iter().enumerate() {
        let data = payload(*len, seed + i as u64);
        let rel = if single {
            name.to_owned()
        } else {
            format!("{name}/{path}")
        };
        let full = root.join(&rel);
        fs::create_dir_all(full.parent().expect("a parent")).expect("mkdir");
        fs::write(&full, &data).expect("write a file");
        content.extend_from_slice(&data);
        out.push((rel, data));
    }
    let builder = if single {
        TorrentBuilder::single_file(name, content.len() as u64)
    } else {
        TorrentBuilder::multi_file(
            name,
            files
                .iter()
                .map(|(p, l)| (p.split('/').map(str::to_owned).collect(), *l as u64))
                .collect(),
        )
    };
    let mut h = builder
        .piece_length(piece)
        .url_list(vec![url.to_owned()])
        .start()
        .expect("builder");
    h.update(&content).expect("content");
    let built = h.finish().expect("torrent");
    (Metainfo::from_bytes(&built.bytes).expect("parse"), out)
}

fn check_files(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (rel, data) in files {
        assert_same(&dir.join(rel), data, "Hyperblow");
    }
}

fn web_seed_alone_single_file(rt: Rt) {
    if !nginx_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let www = dir.path().join("www");
    fs::create_dir_all(www.join("pub")).expect("mkdir");
    let nginx = Nginx::files(&www, None, "", PROGRAM_BOUND).expect("start nginx");
    let url = format!("http://127.0.0.1:{}/pub/", nginx.port());
    let (meta, files) = make(
        &www.join("pub"),
        "image one.iso",
        &[("", 9 * 1024 * 1024 + 4321)],
        256 * 1024,
        &url,
        10 + rt as u64,
    );
    let hb = Hb::start(rt, |_| {});
    let out = dir.path().join("hb");
    let t = Instant::now();
    let added = hb.add(AddTorrentRequest::new(meta, &out));
    hb.wait_complete(added.id, WAIT, &[nginx.process()]);
    let took = t.elapsed();
    check_files(&out, &files);
    let st = hb.stats(added.id);
    assert_eq!(st.web_seeds.len(), 1);
    assert_eq!(
        st.web_seeds[0].downloaded,
        files[0].1.len() as u64,
        "{st:?}"
    );
    assert_eq!(st.web_seeds[0].status, None);
    let log = nginx
        .wait_access_log(
            &["GET /pub/image%20one.iso HTTP/1.1\" 206"],
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let requests = log.lines().count();
    assert!(
        requests < 36,
        "runs of pieces expected, got {requests} requests"
    );
    eprintln!(
        "[timing] {} web seed alone, {} MiB over http: {took:.2?}, {requests} requests",
        rt.name(),
        files[0].1.len() >> 20
    );
}

fn web_seed_alone_multi_file_over_https(rt: Rt) {
    if !nginx_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let www = dir.path().join("www");
    let pki = TestPki::new("Hyperblow web seed CA", &["127.0.0.1"]).expect("test PKI");
    let ca = pki.write_ca(&dir.path().join("ca.pem")).expect("CA bundle");
    let nginx = Nginx::files(&www, Some(&pki), "", PROGRAM_BOUND).expect("start nginx");
    let url = format!("https://127.0.0.1:{}/mirror", nginx.port());
    let (meta, files) = make(
        &www.join("mirror"),
        "My Set",
        &[
            ("read me.txt", 1000),
            ("empty", 0),
            ("sub dir/a.bin", 700_000),
            ("sub dir/b.bin", 33),
            ("z.dat", 1_200_000),
        ],
        64 * 1024,
        &url,
        20 + rt as u64,
    );
    let hb = Hb::start(rt, |c| c.tls_roots = Some(ca.clone()));
    let out = dir.path().join("hb");
    let added = hb.add(AddTorrentRequest::new(meta, &out));
    hb.wait_complete(added.id, WAIT, &[nginx.process()]);
    check_files(&out, &files);
    nginx
        .wait_access_log(
            &[
                "GET /mirror/My%20Set/sub%20dir/a.bin",
                "GET /mirror/My%20Set/read%20me.txt",
            ],
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !nginx.access_log().contains("/empty"),
        "a 0-byte file is never asked for"
    );
}

/// A libtorrent seeder of the same torrent, with the data in `seed_dir`.
fn seeder(
    meta: &Metainfo,
    seed_dir: &Path,
    log_dir: &Path,
) -> Option<hyperblow_tests::interop::LtPeer> {
    let torrent = log_dir.join("t.torrent");
    fs::write(&torrent, meta.to_bytes()).expect("write the .torrent");
    lt_seeder("lt-seed", &torrent, seed_dir, log_dir, false, |_| {})
}

fn web_seed_with_a_libtorrent_seeder(rt: Rt) {
    if !nginx_present() || require_libtorrent().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let www = dir.path().join("www");
    let nginx = Nginx::files(&www, None, "", PROGRAM_BOUND).expect("start nginx");
    let url = format!("http://127.0.0.1:{}/", nginx.port());
    let (meta, files) = make(
        &www,
        "both",
        &[("one.bin", 3_000_000), ("two.bin", 2_000_000)],
        64 * 1024,
        &url,
        30 + rt as u64,
    );
    let Some(lt) = seeder(&meta, &www, dir.path()) else {
        return;
    };
    let hb = Hb::start(rt, |_| {});
    let out = dir.path().join("hb");
    let mut req = AddTorrentRequest::new(meta, &out);
    req.peers = vec![lt.addr()];
    let added = hb.add(req);
    hb.wait_complete(added.id, WAIT, &[nginx.process(), lt.process()]);
    check_files(&out, &files);
    let st = hb.stats(added.id);
    eprintln!(
        "[split] {}: web seed {} bytes, total {} bytes",
        rt.name(),
        st.web_seeds[0].downloaded,
        st.downloaded
    );
    assert_eq!(st.web_seeds[0].status, None);
}

fn corrupt_web_seed_is_dropped_and_peers_finish(rt: Rt) {
    if !nginx_present() || require_libtorrent().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("good");
    let www = dir.path().join("www");
    let (meta, files) = make(
        &good,
        "set",
        &[("a-fine.bin", 1_000_000), ("b-bad.bin", 1_000_000)],
        32 * 1024,
        "http://127.0.0.1:1/",
        40 + rt as u64,
    );
    // The web seed's copy: b-bad.bin has one byte flipped in every 32 KiB.
    for (rel, data) in &files {
        let mut d = data.clone();
        if rel.ends_with("b-bad.bin") {
            for i in (100..d.len()).step_by(32 * 1024) {
                d[i] ^= 0x5a;
            }
        }
        let p = www.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, d).expect("write");
    }
    let nginx = Nginx::files(&www, None, "", PROGRAM_BOUND).expect("start nginx");
    let mut meta = meta;
    meta.url_list = vec![format!("http://127.0.0.1:{}/", nginx.port())];
    let Some(lt) = seeder(&meta, &good, dir.path()) else {
        return;
    };
    let hb = Hb::start(rt, |_| {});
    let out = dir.path().join("hb");
    // The web seed alone first: every piece comes from it only, so the first of b-bad.bin's fails
    // its hash check and that disables the seed. With the peer there from the start, both sent
    // every piece and the peer could complete all of b-bad.bin's first, whose copies from the web
    // seed were then dropped unchecked: the seed stayed enabled (2 runs in 20 under load).
    let added = hb.add(AddTorrentRequest::new(meta, &out));
    let watched = [nginx.process(), lt.process()];
    hb.wait_event("the corrupt web seed to be disabled", WAIT, &watched, |e| {
        matches!(e, Event::WebSeedError { torrent, message, .. }
            if *torrent == added.id && message.contains("disabled") && message.contains("hash check"))
    });
    // Then the peer finishes what the web seed did not.
    hb.session
        .add_peer(added.id, lt.addr())
        .wait_timeout(WAIT)
        .expect("add the libtorrent seeder");
    hb.wait_complete(added.id, WAIT, &watched);
    check_files(&out, &files);
    let st = hb.stats(added.id);
    assert!(
        st.web_seeds[0]
            .status
            .as_deref()
            .is_some_and(|s| s.starts_with("disabled")),
        "{st:?}"
    );
    eprintln!(
        "[corrupt] {}: web seed disabled, {} bytes from it",
        rt.name(),
        st.web_seeds[0].downloaded
    );
}

fn busy_web_seed_recovers(rt: Rt) {
    if !nginx_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let www = dir.path().join("www");
    fs::create_dir_all(&www).expect("mkdir");
    let busy = dir.path().join("busy");
    fs::write(&busy, b"1").expect("flag");
    let extra = format!(
        "            if (-f {}) {{\n                add_header Retry-After 1 always;\n                \
         return 503;\n            }}\n",
        busy.display()
    );
    let nginx = Nginx::files(&www, None, &extra, PROGRAM_BOUND).expect("start nginx");
    let url = format!("http://127.0.0.1:{}/", nginx.port());
    let (meta, files) = make(
        &www,
        "later.bin",
        &[("", 2_000_000)],
        64 * 1024,
        &url,
        50 + rt as u64,
    );
    let hb = Hb::start(rt, |_| {});
    let out = dir.path().join("hb");
    let added = hb.add(AddTorrentRequest::new(meta, &out));
    let ev = hb.wait_event(
        "a 503 back-off",
        WAIT,
        &[nginx.process()],
        |e| matches!(e, Event::WebSeedError { torrent, .. } if *torrent == added.id),
    );
    let Event::WebSeedError { message, .. } = ev else {
        unreachable!("matched above")
    };
    assert!(message.contains("retrying in 1s"), "{message}");
    fs::remove_file(&busy).expect("clear the flag");
    hb.wait_complete(added.id, WAIT, &[nginx.process()]);
    check_files(&out, &files);
    assert!(
        nginx.access_log().contains("\" 503 "),
        "{}",
        nginx.access_log()
    );
}

fn redirect_to_another_host_name(rt: Rt) {
    if !nginx_present() {
        return;
    }
    // `localhost` must lead to the 127.0.0.1 nginx listens on (if it resolves to ::1 first, that
    // address refuses the connection and the next one is tried).
    use std::net::ToSocketAddrs;
    let addrs: Vec<_> = ("localhost", 80)
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default();
    let v4 = std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST);
    if !addrs.iter().any(|a| a.ip() == v4) {
        eprintln!("skipped: localhost resolves to {addrs:?}, without 127.0.0.1");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let www = dir.path().join("www");
    let pki = TestPki::new("Hyperblow redirect CA", &["127.0.0.1", "localhost"]).expect("PKI");
    let ca = pki.write_ca(&dir.path().join("ca.pem")).expect("CA bundle");
    // Requests for /origin/... go to the same path under /items/ on host `localhost`.
    let extra = "            location ~ ^/origin/(?<rest>.*)$ {\n                \
                 return 302 https://localhost:$server_port/items/$rest;\n            }\n";
    let nginx = Nginx::files(&www, Some(&pki), extra, PROGRAM_BOUND).expect("start nginx");
    let url = format!("https://127.0.0.1:{}/origin/", nginx.port());
    let (meta, files) = make(
        &www.join("items"),
        "set",
        &[("one.bin", 3_000_000), ("two.bin", 2_500_000)],
        64 * 1024,
        &url,
        60 + rt as u64,
    );
    let hb = Hb::start(rt, |c| {
        c.tls_roots = Some(ca.clone());
        // Several runs per file, so that later ranges show where they go.
        c.engine.webseed.run_bytes = 512 * 1024;
    });
    let out = dir.path().join("hb");
    let added = hb.add(AddTorrentRequest::new(meta, &out));
    hb.wait_complete(added.id, WAIT, &[nginx.process()]);
    check_files(&out, &files);
    let st = hb.stats(added.id);
    assert_eq!(st.web_seeds[0].status, None, "{st:?}");
    assert_eq!(
        st.web_seeds[0].downloaded,
        files.iter().map(|(_, d)| d.len() as u64).sum::<u64>()
    );
    let log = nginx
        .wait_access_log(
            &[
                "GET /origin/set/one.bin HTTP/1.1\" 302",
                "GET /items/set/one.bin HTTP/1.1\" 206",
                "GET /items/set/two.bin HTTP/1.1\" 206",
            ],
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let redirected = log.lines().filter(|l| l.contains("\" 302 ")).count();
    let served = log.lines().filter(|l| l.contains("\" 206 ")).count();
    // At most one redirect per file per connection (4); every run after that goes straight on.
    assert!(redirected <= 2 * 4, "{redirected} redirects:\n{log}");
    assert!(
        served > redirected,
        "{served} ranges, {redirected} redirects:\n{log}"
    );
    eprintln!(
        "[redirect] {}: {redirected} redirects, {served} ranges from the other host",
        rt.name()
    );
}

fn magnet_ws_after_metadata_from_a_peer(rt: Rt) {
    if !nginx_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let www = dir.path().join("www");
    let nginx = Nginx::files(&www, None, "", PROGRAM_BOUND).expect("start nginx");
    let url = format!("http://127.0.0.1:{}/", nginx.port());
    let (meta, files) = make(
        &www,
        "via magnet",
        &[("x.bin", 3_000_000), ("y.bin", 1_000_000)],
        64 * 1024,
        &url,
        70 + rt as u64,
    );
    // The peer knows the torrent (without its web seed) and has none of its data.
    let peer = Hb::start(rt, |_| {});
    let mut bare = meta.clone();
    bare.url_list.clear();
    peer.add(AddTorrentRequest::new(bare, dir.path().join("peer")));
    let uri = format!(
        "magnet:?xt=urn:btih:{}&ws={}",
        meta.info_hash(),
        url.replace(':', "%3A").replace('/', "%2F")
    );
    let link = MagnetLink::parse(&uri).expect("a valid link");
    assert_eq!(link.web_seeds, vec![url.clone()]);
    let hb = Hb::start(rt, |_| {});
    let out = dir.path().join("hb");
    let added = hb
        .session
        .add_magnet(AddMagnetRequest::new(link, &out).peers(vec![peer.addr()]))
        .wait_timeout(WAIT)
        .unwrap_or_else(|e| panic!("add_magnet: {e}"));
    hb.wait_complete(added.id, WAIT, &[nginx.process()]);
    check_files(&out, &files);
    let st = hb.stats(added.id);
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    assert_eq!(st.web_seeds.len(), 1, "{st:?}");
    assert_eq!(st.web_seeds[0].downloaded, total, "{st:?}");
    let saved = hb
        .session
        .torrent_file(added.id)
        .wait_timeout(WAIT)
        .unwrap_or_else(|e| panic!("torrent_file: {e}"))
        .expect("the metadata is known");
    let saved = Metainfo::from_bytes(&saved).expect("parse the saved torrent");
    assert_eq!(saved.info_hash(), meta.info_hash());
    assert_eq!(saved.url_list, vec![url]);
}
