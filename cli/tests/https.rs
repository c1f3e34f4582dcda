//! `hyperblow scrape` of an `https://` tracker: nginx (a TLS front with a test CA's certificate) in
//! front of opentracker, on 127.0.0.1. The `SSL_CERT_FILE` environment variable names the CA bundle
//! that replaces the system's roots: naming the test CA the scrape succeeds; naming another CA the
//! certificate is refused with a clear message and the command fails (no fallback to plain HTTP).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{fixture, s};
use hyperblow_tests::interop::nginx::NGINX;
use hyperblow_tests::interop::{http_get, require_tool, run_bounded, Nginx, Opentracker, TestPki};
use serde_json::Value;

const BOUND: Duration = Duration::from_secs(60);

#[test]
fn scrape_over_https_trusts_ssl_cert_file_and_refuses_an_unknown_ca() {
    if require_tool("opentracker").is_none() || require_tool(NGINX).is_none() {
        return;
    }
    let tracker = Opentracker::start(&[], BOUND).expect("start opentracker");
    let pki = TestPki::new("Hyperblow CLI test CA", &["127.0.0.1"]).expect("test PKI");
    let front = Nginx::tls_proxy(tracker.addr(), &pki, BOUND).expect("start nginx");
    let url = format!("https://127.0.0.1:{}/announce", front.port());
    let fx = fixture(
        "secure",
        &[("a.bin", 70_000)],
        16 * 1024,
        std::slice::from_ref(&url),
        91,
    );
    let ca = pki.write_ca(&fx.dir.path().join("ca.pem")).expect("CA");
    let hash = fx.meta.info.info_hash();
    tracker.set_whitelist(&[hash]).expect("whitelist");
    // One seed in the swarm (announced over plain HTTP), so the scrape has something to count.
    let announce = format!(
        "{}?info_hash={}&peer_id=-HBTEST-000000000000&port=7&uploaded=0&downloaded=0&left=0\
         &compact=1&event=started",
        tracker.http_announce_url(),
        hyperblow_core::tracker::http::percent_encode(hash.as_bytes())
    );
    let reply = http_get(&announce, Duration::from_secs(5)).expect("plain announce");
    assert_eq!(reply.status, 200);

    let scrape = |ca: &std::path::Path| {
        let mut cmd = Command::new(common::bin());
        cmd.args(["scrape", "--json", "--timeout", "10s", s(&fx.torrent)])
            .env("SSL_CERT_FILE", ca);
        run_bounded(&mut cmd, Duration::from_secs(30)).expect("run hyperblow scrape")
    };

    let ok = scrape(&ca);
    assert!(ok.status.success(), "{ok:?}");
    let v: Value = serde_json::from_str(&ok.stdout).expect("JSON");
    let t = &v["trackers"][0];
    assert_eq!(t["url"], url.as_str(), "{v}");
    assert_eq!(t["seeders"], 1, "{v}");
    front
        .wait_access_log(&["GET /scrape?"], Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));

    // A bundle of another CA replaces the roots: the tracker's certificate is refused, with rustls'
    // reason. (Another test CA rather than the system's store, which may be empty on a bare machine.)
    let other = TestPki::new("Hyperblow other CA", &["127.0.0.1"]).expect("other PKI");
    let other_ca = other
        .write_ca(&fx.dir.path().join("other.pem"))
        .expect("other CA");
    let refused = scrape(&other_ca);
    assert!(!refused.status.success(), "{refused:?}");
    let v: Value = serde_json::from_str(&refused.stdout).expect("JSON");
    let err = v["trackers"][0]["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("invalid peer certificate") && err.contains("UnknownIssuer"),
        "{v}"
    );
}
