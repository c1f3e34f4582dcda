//! Helpers shared by the integration tests that drive the `hyperblow` binary (`mod common;` in
//! each): running it as a bounded, logged child, its `--json` events and exit code, and a seeder.
//!
//! Each test crate uses a subset of these, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hyperblow_core::metainfo::Metainfo;
use hyperblow_tests::fixture::{tree, write_files};
use hyperblow_tests::interop::{wait_for, ChildGuard};
use hyperblow_tests::trackers::TestTracker;
use serde_json::Value;

/// Hard bound for any one child process (unless a test passes its own to [`spawn_hyperblow`]).
pub const BOUND: Duration = Duration::from_secs(60);
/// How long a download may take in these tests.
pub const DONE_WITHIN: Duration = Duration::from_secs(30);

/// The `hyperblow` binary cargo built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hyperblow")
}

/// `p` as a `&str` argument (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A payload directory and the `.torrent` that `hyperblow create` made of it, in a temp dir.
#[derive(Debug)]
pub struct Fixture {
    /// The temp dir holding everything (and the children's logs).
    pub dir: tempfile::TempDir,
    /// The payload directory (its name is the torrent's name).
    pub payload: PathBuf,
    /// The `.torrent` file.
    pub torrent: PathBuf,
    /// The parsed `.torrent`.
    pub meta: Metainfo,
}

/// Writes `files` ([`tree`]`(files, seed)`) under `<tmp>/seed/<name>/` and runs `hyperblow create`
/// on it with `piece`-byte pieces, no creation date and one tier per tracker in `trackers`.
pub fn fixture(
    name: &str,
    files: &[(&str, usize)],
    piece: u32,
    trackers: &[String],
    seed: u64,
) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let payload = dir.path().join("seed").join(name);
    write_files(&payload, &tree(files, seed));
    let torrent = dir.path().join(format!("{name}.torrent"));
    let mut cmd = Command::new(bin());
    cmd.arg("create")
        .arg(&payload)
        .arg("-o")
        .arg(&torrent)
        .args(["--no-date", "--piece-length", &piece.to_string()]);
    for t in trackers {
        cmd.args(["-t", t]);
    }
    let out = cmd.output().expect("run create");
    assert!(
        out.status.success(),
        "create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = Metainfo::from_bytes(&std::fs::read(&torrent).expect("read")).expect("parse");
    Fixture {
        dir,
        payload,
        torrent,
        meta,
    }
}

/// Starts `hyperblow args...` (with `RUST_LOG=warn`) as a child named `name`, logging under
/// `log_dir` and killed after `bound`.
pub fn spawn_hyperblow(name: &str, args: &[&str], log_dir: &Path, bound: Duration) -> ChildGuard {
    let mut cmd = Command::new(bin());
    cmd.args(args).env("RUST_LOG", "warn");
    ChildGuard::spawn(name, &cmd, log_dir, bound).expect("spawn hyperblow")
}

/// `download --no-dht TORRENT -o OUT --bind 127.0.0.1` and then `extra`: the loopback-only
/// download the CLI tests start from.
pub fn download_args<'a>(torrent: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "download",
        "--no-dht",
        s(torrent),
        "-o",
        s(out),
        "--bind",
        "127.0.0.1",
    ];
    args.extend_from_slice(extra);
    args
}

/// [`spawn_hyperblow`] bounded by [`BOUND`].
pub fn spawn(name: &str, args: &[&str], log_dir: &Path) -> ChildGuard {
    spawn_hyperblow(name, args, log_dir, BOUND)
}

/// Waits until the child printed a JSON line with `"event": event` and returns it.
pub fn wait_json_event(child: &ChildGuard, event: &str, timeout: Duration) -> Value {
    wait_for(event, timeout, &[child], || {
        Ok(child.json_lines().into_iter().find(|v| v["event"] == event))
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The child's exit code once it exits within `timeout`.
pub fn exit_code(child: &ChildGuard, timeout: Duration) -> i32 {
    child.exit_code(timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Starts `hyperblow seed` of `fx` on `runtime` (loopback, `--json`), waits for its `added`
/// event and, with a `tracker`, for its first announce; returns the child and that event.
pub fn start_seeder(
    fx: &Fixture,
    runtime: &str,
    tracker: Option<&TestTracker>,
) -> (ChildGuard, Value) {
    start_seeder_with(fx, runtime, tracker, &[])
}

/// [`start_seeder`] with `extra` arguments (e.g. `--max-upload-rate 512KiB`); its log is named
/// after `runtime` and the count of seeders started in this fixture.
pub fn start_seeder_with(
    fx: &Fixture,
    runtime: &str,
    tracker: Option<&TestTracker>,
    extra: &[&str],
) -> (ChildGuard, Value) {
    let mut args = vec![
        "seed",
        "--no-dht",
        s(&fx.torrent),
        s(&fx.payload),
        "--runtime",
        runtime,
        "--bind",
        "127.0.0.1",
        "--json",
    ];
    args.extend_from_slice(extra);
    let name = if extra.is_empty() {
        format!("seed-{runtime}")
    } else {
        format!("seed-{runtime}-limited")
    };
    let child = spawn_hyperblow(&name, &args, fx.dir.path(), BOUND);
    let added = wait_json_event(&child, "added", DONE_WITHIN);
    if let Some(t) = tracker {
        wait_for("seeder's announce", DONE_WITHIN, &[&child], || {
            Ok((!t.announces().is_empty()).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }
    (child, added)
}
