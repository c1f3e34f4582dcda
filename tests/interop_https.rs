//! `https://` trackers against real servers over 127.0.0.1: nginx (run from its own prefix and config,
//! see src/interop/nginx.rs) is a TLS front for opentracker's HTTP port, with a server certificate from
//! a test CA made by `rcgen`. On both runtimes:
//! (a) Hyperblow announces and scrapes over HTTPS only, learns a libtorrent seeder (which announced
//!     over plain HTTP) and downloads from it, byte-exact; the requests show in nginx's access log.
//! (b) A tracker whose certificate chains to a CA the session does not trust is refused with a clear
//!     message (rustls' reason), and no request reaches the server in the clear.
//!
//! Every wait is bounded; discovery (DHT, LSD, UPnP, NAT-PMP) is off in every program.

#[path = "interop/common.rs"]
#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{assert_same, lt_seeder, tools_present, Hb, Rt, SingleFile, PROGRAM_BOUND, WAIT};
use hyperblow_driver::engine::Event;
use hyperblow_driver::AddTorrentRequest;
use hyperblow_tests::interop::{require_tool, Nginx, Opentracker, TestPki};

on_both_runtimes!(
    https_announce_and_scrape,
    untrusted_https_tracker_is_refused
);

/// nginx is installed (or skipping is allowed and it is not).
fn nginx_present() -> bool {
    require_tool(hyperblow_tests::interop::nginx::NGINX).is_some()
}

fn https_announce_and_scrape(rt: Rt) {
    if !tools_present() || !nginx_present() {
        return;
    }
    let t0 = Instant::now();
    let tracker = Opentracker::start(&[], PROGRAM_BOUND).expect("start opentracker");
    let http_url = tracker.http_announce_url();
    let fx = SingleFile::new(
        "secure.bin",
        300 * 1024 + 17,
        700 + rt as u64,
        15,
        &[&http_url],
    );
    tracker
        .set_whitelist(&[fx.torrent.info_hash])
        .expect("whitelist");
    let pki = TestPki::new("Hyperblow interop CA", &["127.0.0.1"]).expect("test PKI");
    let ca = pki
        .write_ca(&fx.dir.path().join("ca.pem"))
        .expect("CA bundle");
    let front = Nginx::tls_proxy(tracker.addr(), &pki, PROGRAM_BOUND).expect("start nginx");
    let https_url = format!("https://127.0.0.1:{}/announce", front.port());

    // The seeder announces over plain HTTP; Hyperblow knows the tracker only by its https:// URL.
    let Some(seeder) = lt_seeder(
        "lt-seed",
        &fx.torrent.path,
        &fx.seed_dir(),
        fx.dir.path(),
        true,
        |_| {},
    ) else {
        return;
    };
    let watched = [seeder.process(), tracker.process(), front.process()];
    let hb = Hb::start(rt, |c| c.tls_roots = Some(ca.clone()));
    let mut meta = fx.meta.clone();
    meta.trackers = vec![vec![https_url.clone()]];
    let t_add = Instant::now();
    let added = hb.add(AddTorrentRequest::new(meta, fx.leech_dir("hb")));
    hb.wait_event("a reply from the https tracker", WAIT, &watched, |e| {
        matches!(e, Event::TrackerReply { torrent, url, peers }
            if *torrent == added.id && *url == https_url && *peers >= 1)
    });
    let t_reply = t_add.elapsed();
    hb.wait_complete(added.id, WAIT, &watched);
    assert_same(
        &fx.dir.path().join("hb").join(&fx.name),
        &fx.data,
        "Hyperblow",
    );
    let tr = hb
        .stats(added.id)
        .trackers
        .into_iter()
        .find(|t| t.url == https_url)
        .expect("the https tracker in the stats");
    assert!(
        tr.last_announce.is_some() && tr.failures == 0,
        "tracker status: {tr:?}"
    );

    // Scrape over HTTPS: the seeder and (once our `completed` is through) Hyperblow are seeds.
    let seen = common::poll_until(
        &format!("[{}] an https scrape showing both seeds", rt.name()),
        Duration::from_secs(10),
        &watched,
        || {
            let answers = hb
                .session
                .scrape(added.id)
                .wait_timeout(Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("scrape: {e}"));
            let [(u, result)] = answers.as_slice() else {
                panic!("one answer per tracker expected: {answers:?}");
            };
            assert_eq!(*u, https_url);
            let st = result
                .as_ref()
                .unwrap_or_else(|e| panic!("scrape of {https_url} failed: {e}"));
            (st.seeders >= 2 && st.completed >= 1).then_some(*st)
        },
    );
    // Both kinds of request went through the TLS front.
    front
        .wait_access_log(
            &["GET /announce?", "event=started", "GET /scrape?"],
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "[timing] {} https tracker download ({} KiB): tracker reply {t_reply:.2?}; scrape {seen:?}; \
         test {:.2?}",
        rt.name(),
        fx.data.len() / 1024,
        t0.elapsed()
    );
}

fn untrusted_https_tracker_is_refused(rt: Rt) {
    if !nginx_present() || require_tool("mktorrent").is_none() {
        return;
    }
    let served = TestPki::new("Hyperblow untrusted CA", &["127.0.0.1"]).expect("served PKI");
    let trusted = TestPki::new("Hyperblow trusted CA", &["127.0.0.1"]).expect("trusted PKI");
    // No tracker behind it: a request that got through would be a 502 in the access log.
    let front = Nginx::tls_proxy(
        "127.0.0.1:9".parse().expect("an address"),
        &served,
        PROGRAM_BOUND,
    )
    .expect("start nginx");
    let url = format!("https://127.0.0.1:{}/announce", front.port());
    let fx = SingleFile::new("untrusted.bin", 20_000, 800 + rt as u64, 15, &[&url]);
    let ca = trusted
        .write_ca(&fx.dir.path().join("ca.pem"))
        .expect("CA bundle");
    let hb = Hb::start(rt, |c| c.tls_roots = Some(ca.clone()));
    let added = hb.add(AddTorrentRequest::new(fx.meta.clone(), fx.leech_dir("hb")));
    let err = hb.wait_event(
        "the untrusted tracker to be refused",
        WAIT,
        &[front.process()],
        |e| matches!(e, Event::TrackerError { torrent, .. } if *torrent == added.id),
    );
    let Event::TrackerError {
        message, url: u, ..
    } = err
    else {
        unreachable!("matched above")
    };
    assert_eq!(u, url);
    assert!(
        message.contains("invalid peer certificate") && message.contains("UnknownIssuer"),
        "unclear refusal: {message:?}"
    );
    // A scrape is refused the same way.
    let answers = hb
        .session
        .scrape(added.id)
        .wait_timeout(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("scrape: {e}"));
    let [(_, Err(e))] = answers.as_slice() else {
        panic!("the scrape must fail: {answers:?}");
    };
    assert!(e.contains("invalid peer certificate"), "{e}");
    // Nothing was sent in the clear, and no request reached the server.
    assert!(
        front.access_log().is_empty(),
        "requests reached the server: {}",
        front.access_log()
    );
    assert!(
        hb.stats(added.id)
            .trackers
            .iter()
            .all(|t| t.last_announce.is_none()),
        "no announce may succeed"
    );
}
