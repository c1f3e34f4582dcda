//! `hyperblow info` and `hyperblow create` against independent tools: torrents made by `mktorrent` and
//! by libtorrent must give the info-hash libtorrent reports, and malformed torrents must be refused with
//! one clear line and a non-zero exit code.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hyperblow_core::bencode::OwnedValue;
use hyperblow_tests::interop::{require_libtorrent, require_tool};

fn hyperblow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hyperblow"))
        .args(args)
        .output()
        .expect("run hyperblow")
}

fn info_json(torrent: &Path) -> serde_json::Value {
    let out = hyperblow(&["info", "--json", torrent.to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "hyperblow info {} failed: {}",
        torrent.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("info --json prints JSON")
}

/// Content with awkward sizes: a file that is not a multiple of anything, a 0-byte file, nesting.
fn make_payload(dir: &Path) -> (PathBuf, PathBuf) {
    let single = dir.join("single.bin");
    let data: Vec<u8> = (0..100_003u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&single, &data).expect("write single");
    let multi = dir.join("multi");
    std::fs::create_dir_all(multi.join("sub/deeper")).expect("mkdir");
    std::fs::write(multi.join("a.txt"), b"hello, swarm\n").expect("write");
    std::fs::write(multi.join("empty"), b"").expect("write");
    std::fs::write(multi.join("sub/b.bin"), &data[..40_000]).expect("write");
    std::fs::write(multi.join("sub/deeper/c.bin"), &data[7..70_007]).expect("write");
    (single, multi)
}

/// Asks libtorrent (Debian's python3-libtorrent) for a torrent's v1 info-hash, file count and size.
fn libtorrent_facts(python: &Path, torrent: &Path) -> (String, u64, u64) {
    let script = "import sys, libtorrent as lt\n\
                  ti = lt.torrent_info(sys.argv[1])\n\
                  print(str(ti.info_hashes().v1), ti.num_files(), ti.total_size())\n";
    let out = Command::new(python)
        .args(["-c", script, torrent.to_str().expect("utf-8")])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "libtorrent: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let mut parts = text.split_whitespace();
    let hash = parts.next().expect("hash").to_owned();
    let files = parts
        .next()
        .and_then(|s| s.parse().ok())
        .expect("file count");
    let size = parts.next().and_then(|s| s.parse().ok()).expect("size");
    (hash, files, size)
}

/// Makes a v1 torrent with libtorrent's own creator.
fn libtorrent_create(python: &Path, content: &Path, out: &Path, private: bool) {
    let script = "import sys, os, libtorrent as lt\n\
                  fs = lt.file_storage()\n\
                  lt.add_files(fs, sys.argv[1])\n\
                  ct = lt.create_torrent(fs, 16384, flags=lt.create_torrent.v1_only)\n\
                  ct.add_tracker('udp://127.0.0.1:1/announce', 0)\n\
                  ct.add_tracker('http://127.0.0.1:1/announce', 1)\n\
                  ct.set_priv(sys.argv[3] == '1')\n\
                  lt.set_piece_hashes(ct, os.path.dirname(sys.argv[1]))\n\
                  open(sys.argv[2], 'wb').write(lt.bencode(ct.generate()))\n";
    let status = Command::new(python)
        .args([
            "-c",
            script,
            content.to_str().expect("utf-8"),
            out.to_str().expect("utf-8"),
            if private { "1" } else { "0" },
        ])
        .status()
        .expect("run python");
    assert!(
        status.success(),
        "libtorrent could not create {}",
        out.display()
    );
}

#[test]
fn info_hash_agrees_with_libtorrent_and_mktorrent() {
    let (Some(python), Some(mktorrent)) = (require_libtorrent(), require_tool("mktorrent")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (single, multi) = make_payload(dir.path());
    let mut torrents = Vec::new();
    for (content, private) in [
        (&single, false),
        (&multi, false),
        (&multi, true),
        (&single, true),
    ] {
        let tag = format!(
            "{}-{}",
            content.file_name().and_then(|n| n.to_str()).unwrap_or("x"),
            if private { "private" } else { "public" }
        );
        let mk = dir.path().join(format!("mktorrent-{tag}.torrent"));
        let mut cmd = Command::new(&mktorrent);
        cmd.args(["-l", "15", "-a", "http://127.0.0.1:1/announce", "-o"])
            .arg(&mk);
        if private {
            cmd.arg("-p");
        }
        let out = cmd.arg(content).output().expect("run mktorrent");
        assert!(
            out.status.success(),
            "mktorrent: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        torrents.push((mk, private));

        let lt = dir.path().join(format!("libtorrent-{tag}.torrent"));
        libtorrent_create(&python, content, &lt, private);
        torrents.push((lt, private));
    }
    // Our own creator too: libtorrent must agree with what we made.
    let ours = dir.path().join("ours-multi.torrent");
    let out = hyperblow(&[
        "create",
        multi.to_str().expect("utf-8"),
        "-o",
        ours.to_str().expect("utf-8"),
        "--piece-length",
        "16384",
        "-t",
        "udp://127.0.0.1:1/announce",
    ]);
    assert!(
        out.status.success(),
        "create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    torrents.push((ours, false));

    for (torrent, private) in &torrents {
        let (lt_hash, lt_files, lt_size) = libtorrent_facts(&python, torrent);
        let ours = info_json(torrent);
        assert_eq!(ours["info_hash"], lt_hash.as_str(), "{}", torrent.display());
        assert_eq!(ours["private"], *private, "{}", torrent.display());
        assert_eq!(ours["total_length"], lt_size, "{}", torrent.display());
        let files = ours["files"].as_array().expect("files");
        // libtorrent may add BEP 47 padding files of its own; we count them too when present.
        assert_eq!(files.len() as u64, lt_files, "{}", torrent.display());
    }
}

fn torrent_bytes(info: OwnedValue) -> Vec<u8> {
    OwnedValue::dict()
        .with("announce", "http://127.0.0.1:1/announce")
        .with("info", info)
        .encode()
}

fn assert_refused(bytes: &[u8], needle: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.torrent");
    std::fs::write(&path, bytes).expect("write");
    let out = hyperblow(&["info", path.to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line expected, got: {stderr}"
    );
    assert!(stderr.starts_with("hyperblow: error: "), "{stderr}");
    assert!(
        stderr.contains(needle),
        "{stderr:?} should mention {needle:?}"
    );
    assert!(!stderr.contains("panicked") && out.stdout.is_empty());
}

#[test]
fn refuses_a_path_that_escapes_the_download_directory() {
    let file = |path: Vec<OwnedValue>| {
        OwnedValue::dict()
            .with("length", 5i64)
            .with("path", OwnedValue::List(path))
    };
    let info = OwnedValue::dict()
        .with("name", "evil")
        .with("piece length", 16384i64)
        .with("pieces", vec![0u8; 20])
        .with(
            "files",
            OwnedValue::List(vec![file(vec!["..".into(), "etc".into(), "passwd".into()])]),
        );
    assert_refused(&torrent_bytes(info), "../etc/passwd");
}

#[test]
fn refuses_a_truncated_pieces_string() {
    let info = OwnedValue::dict()
        .with("name", "short")
        .with("length", 40_000i64)
        .with("piece length", 16384i64)
        .with("pieces", vec![0u8; 59]);
    assert_refused(&torrent_bytes(info), "pieces");
}

#[test]
fn refuses_truncated_bencode_naming_the_offset() {
    let info = OwnedValue::dict()
        .with("name", "x")
        .with("length", 1i64)
        .with("piece length", 16384i64)
        .with("pieces", vec![0u8; 20]);
    let bytes = torrent_bytes(info);
    assert_refused(&bytes[..bytes.len() - 10], "offset");
}

#[test]
fn create_refuses_a_missing_input() {
    let out = hyperblow(&[
        "create",
        "/nonexistent/hyperblow-input",
        "-o",
        "/tmp/never.torrent",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/hyperblow-input"));
}

#[test]
fn create_writes_web_seeds_and_info_lists_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (single, _) = make_payload(dir.path());
    let torrent = dir.path().join("seeded.torrent");
    let out = hyperblow(&[
        "create",
        single.to_str().expect("utf-8 path"),
        "-o",
        torrent.to_str().expect("utf-8 path"),
        "--web-seed",
        "http://mirror.test/files/",
        "--web-seed",
        "https://other.test/single.bin",
        "--no-date",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = info_json(&torrent);
    assert_eq!(
        v["web_seeds"],
        serde_json::json!(["http://mirror.test/files/", "https://other.test/single.bin"])
    );
    // The parsed torrent carries them as `url-list`, in order.
    let meta = hyperblow_core::metainfo::Metainfo::from_bytes(&std::fs::read(&torrent).unwrap())
        .expect("parse");
    assert_eq!(meta.url_list.len(), 2);
    // The torrent's magnet link carries them as `ws=`.
    let magnet = hyperblow_core::magnet::MagnetLink::parse(v["magnet"].as_str().expect("a link"))
        .expect("parse the magnet");
    assert_eq!(magnet.web_seeds, meta.url_list);
    let text = hyperblow(&["info", torrent.to_str().expect("utf-8 path")]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Web seed:     http://mirror.test/files/")
            && text.contains("Web seed:     https://other.test/single.bin"),
        "{text}"
    );
}

#[test]
fn magnet_info_without_metadata() {
    let out = hyperblow(&[
        "info",
        "--json",
        "magnet:?xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK&dn=demo&tr=udp%3A%2F%2F127.0.0.1%3A1",
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["info_hash"], "c12fe1c06bba254a9dc9f519b335aa7c1367a88a");
    assert_eq!(v["name"], "demo");
    assert_eq!(v["trackers"][0][0], "udp://127.0.0.1:1");
}

#[test]
fn magnet_info_lists_its_web_seeds() {
    let link = "magnet:?xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK&dn=demo\
                &ws=http%3A%2F%2Fmirror.test%2Fpub%2Fa%2520b.iso&ws=https://m2.test/d/";
    let out = hyperblow(&["info", "--json", link]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        v["web_seeds"],
        serde_json::json!(["http://mirror.test/pub/a%20b.iso", "https://m2.test/d/"])
    );
    let text = hyperblow(&["info", link]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Web seed:     http://mirror.test/pub/a%20b.iso")
            && text.contains("Web seed:     https://m2.test/d/"),
        "{text}"
    );
}

/// A torrent whose name, file names, comment and trackers carry terminal escape sequences: `info`
/// (text and JSON) and `scrape`-like outputs print them escaped, never raw.
#[test]
fn control_characters_from_a_torrent_never_reach_the_terminal() {
    let evil = "x\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}1m\u{7f}\u{202e}";
    let (meta, _) = hyperblow_tests::fixture::build_torrent(
        &format!("name{evil}"),
        &[(&format!("file{evil}.txt"), 100), ("ok.txt", 10)],
        16384,
        vec![vec![format!("http://127.0.0.1:1/{evil}")]],
        |_, len| vec![1u8; len as usize],
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("evil.torrent");
    std::fs::write(&path, meta.to_bytes()).expect("write");
    let p = path.to_str().expect("utf-8");
    for args in [vec!["info", p], vec!["info", "--json", p]] {
        let out = hyperblow(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let bad: Vec<char> = text
            .chars()
            .filter(|c| (c.is_control() && *c != '\n') || ('\u{202a}'..='\u{202e}').contains(c))
            .collect();
        assert!(bad.is_empty(), "{args:?} printed {bad:?}:\n{text}");
        assert!(text.contains("owned"), "{text}");
    }
}
