//! End-to-end test of `hyperblow tui` in a real pseudo-terminal (tmux), on both runtimes: start it
//! with a torrent served by a local seeder, uncheck a file in the Files tab, let it complete, check
//! the files on disk, quit, reopen it on the same state directory and see the torrent seeding again
//! from its resume data, without a re-check.
//!
//! tmux runs on its own socket (`-L`), and is stopped (`kill-server`) when the test ends.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{bin, fixture, s, start_seeder, DONE_WITHIN};

/// A tmux server with one session running one command in a 100x30 terminal.
struct Tmux {
    socket: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Tmux {
    /// Runs `args` (the `hyperblow` binary's arguments) in a new tmux session. The shell prints
    /// `EXIT=<code>` when it exits and then waits, so the screen can still be read.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Tmux {
        let socket = format!(
            "hb-tui-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let quoted: Vec<String> = std::iter::once(bin())
            .chain(args.iter().copied())
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect();
        // The TUI is bounded by `timeout`; the shell lingers a little for the final screen.
        let script = format!(
            "timeout --foreground 120 {}; echo EXIT=$?; sleep 30",
            quoted.join(" ")
        );
        let mut cmd = Command::new("tmux");
        cmd.args([
            "-L",
            &socket,
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "hb",
        ])
        .args(["-x", "100", "-y", "30", "sh", "-c", &script])
        .env("RUST_LOG", "warn")
        .env_remove("NO_COLOR")
        .env_remove("TMUX");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd
            .output()
            .expect("tmux runs (install the Debian package tmux)");
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmux { socket }
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The screen's text now.
    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "hb"])
    }

    /// Types keys (tmux key names, e.g. `Enter`, `Down`, `Space`, or literal characters).
    fn keys(&self, keys: &[&str]) {
        for k in keys {
            self.tmux(&["send-keys", "-t", "hb", k]);
        }
    }

    /// Waits until the screen satisfies `ok`, returning it; panics with the screen on timeout.
    ///
    /// A capture can show a frame half written: ratatui writes a frame's changed cells top to
    /// bottom through a buffered stdout that flushes every KiB or so, and tmux shows each write as
    /// it comes. So `ok` must name everything the caller asserts, not only the first sign of the
    /// state it waits for.
    fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            if start.elapsed() > DONE_WITHIN {
                panic!("timed out waiting for {what}; the screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// The list row of the torrent named `name`, if shown.
fn row<'a>(screen: &'a str, name: &str) -> Option<&'a str> {
    screen.lines().find(|l| l.starts_with(name))
}

fn end_to_end(runtime: &str) {
    let name = format!("tui-{runtime}");
    // Layout order: a.bin, c.txt, skip/b.bin; 64 KiB pieces. b.bin covers bytes 305000..905000:
    // pieces 5..=13 lie wholly inside it, piece 4 straddles c.txt and b.bin.
    let fx = fixture(
        &name,
        &[
            ("a.bin", 300_000),
            ("c.txt", 5_000),
            ("skip/b.bin", 600_000),
        ],
        65_536,
        &[],
        if runtime == "tokio" { 17 } else { 18 },
    );
    let (seeder, added) = start_seeder(&fx, runtime, None);
    let listen = added["listen"].as_str().expect("listen address").to_owned();
    let out = fx.dir.path().join("out");
    let state = fx.dir.path().join("state");

    let tui = Tmux::start(
        &[
            "tui",
            "--no-dht",
            s(&fx.torrent),
            "-o",
            s(&out),
            "--state-dir",
            s(&state),
            "--runtime",
            runtime,
            "--bind",
            "127.0.0.1",
            "--peer",
            &listen,
            "--paused",
        ],
        &[],
    );
    tui.wait("the torrent, paused", |sc| {
        row(sc, &name).is_some_and(|r| r.contains("Paused"))
    });
    // Files tab, focus it, uncheck the skip/ directory (rows: tui-x/, a.bin, c.txt, skip/, b.bin).
    tui.keys(&["2", "Enter", "Down", "Down", "Down", "Space"]);
    tui.wait("skip/ unchecked", |sc| {
        sc.contains("[ ] skip/") && sc.contains("[ ] b.bin")
    });
    // Back to the list and resume.
    tui.keys(&["Escape", "p"]);
    // One predicate for everything asserted on this screen: a capture can catch a frame half
    // written (see `Tmux::wait`), so a second look at a later row could still find the old text.
    tui.wait("the download to complete, a.bin still checked", |sc| {
        row(sc, &name).is_some_and(|r| r.contains("Seeding")) && sc.contains("[x] a.bin")
    });

    // On disk: the wanted files byte for byte; of b.bin at most what piece 4 brought.
    let want = hyperblow_tests::fixture::tree(
        &[
            ("a.bin", 300_000),
            ("c.txt", 5_000),
            ("skip/b.bin", 600_000),
        ],
        if runtime == "tokio" { 17 } else { 18 },
    );
    let dl = out.join(&name);
    hyperblow_tests::fixture::assert_file(&dl, &want[0]);
    hyperblow_tests::fixture::assert_file(&dl, &want[1]);
    assert_partial(&dl.join("skip").join("b.bin"), 327_680 - 305_000);

    // Quit: a clean exit.
    tui.keys(&["q"]);
    let screen = tui.wait("the exit", |sc| sc.contains("EXIT="));
    assert!(screen.contains("EXIT=0"), "{screen}");
    drop(tui);
    seeder.stop();

    // A truncated record of another torrent: reported, and the rest still loads.
    let bogus = state
        .join("torrents")
        .join(format!("{}.json", "ab".repeat(20)));
    std::fs::write(&bogus, b"{\"output_dir\": \"/nowh").expect("write a broken record");

    // Reopen on the same state directory only: the torrent comes back, seeding, from its resume
    // data (no re-check), with its file selection.
    let tui = Tmux::start(
        &[
            "tui",
            "--no-dht",
            "--state-dir",
            s(&state),
            "--runtime",
            runtime,
            "--bind",
            "127.0.0.1",
        ],
        &[],
    );
    // The alert about the broken record is on the footer, the last row the TUI draws: when the
    // resumed torrent is already seeding at the first frame, a capture taken while that frame is
    // still being written shows the row and the Details tab but not yet the footer. So wait for
    // all of it at once rather than asserting on the first screen that shows the row.
    let screen = tui.wait(
        "the torrent seeding again from resume data, and the broken record reported",
        |sc| {
            row(sc, &name).is_some_and(|r| r.contains("Seeding"))
                && sc.contains("Data: from resume data (no re-check)")
                && sc.contains("state: skipped")
                && sc.contains("abababab")
        },
    );
    // Complete, consistent screen (the footer is drawn last): no re-check anywhere on it.
    assert!(!screen.contains("Check"), "{screen}");
    tui.keys(&["2"]);
    tui.wait("the selection kept", |sc| {
        sc.contains("[ ] b.bin") && sc.contains("[x] a.bin")
    });
    tui.keys(&[":", "q", "Enter"]);
    let screen = tui.wait("the exit", |sc| sc.contains("EXIT="));
    assert!(screen.contains("EXIT=0"), "{screen}");
    // The state directory holds the torrent's record and metainfo, and the log.
    let ih = fx.meta.info_hash().to_hex();
    assert!(state.join("torrents").join(format!("{ih}.json")).exists());
    assert!(state
        .join("torrents")
        .join(format!("{ih}.torrent"))
        .exists());
}

/// An unchecked file is absent, or holds nothing past its first `allowed` bytes (the part of a
/// piece it shares with a wanted file).
fn assert_partial(path: &Path, allowed: usize) {
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("{}: {e}", path.display()),
        Ok(data) => {
            let extra = data.iter().skip(allowed).filter(|b| **b != 0).count();
            assert_eq!(
                extra,
                0,
                "{} holds {} bytes, {extra} non-zero past the shared piece",
                path.display(),
                data.len()
            );
        }
    }
}

#[test]
fn tui_end_to_end_tokio() {
    end_to_end("tokio");
}

#[test]
fn tui_end_to_end_async_std() {
    end_to_end("async-std");
}

/// The Peers tab lists the torrent's web seeds (usable of listed, URL, state) above its peers: a
/// torrent with two web seeds, nginx serving its files and one URL it has nothing under (404 for
/// every file, so that seed stays listed and usable, with its last error), and no peer at all.
#[test]
fn tui_shows_web_seeds_in_the_peers_tab() {
    use hyperblow_tests::interop::nginx::NGINX;
    use hyperblow_tests::interop::{require_tool, Nginx};
    if require_tool(NGINX).is_none() {
        return;
    }
    let name = "tui-web";
    let files = [("a.bin", 700_000), ("b.bin", 300_000)];
    let fx = fixture(name, &files, 65_536, &[], 19);
    let www = fx.dir.path().join("seed");
    let nginx = Nginx::files(&www, None, "", Duration::from_secs(150)).expect("start nginx");
    let good = format!("http://127.0.0.1:{}/", nginx.port());
    let empty = format!("http://127.0.0.1:{}/nothing-here/", nginx.port());
    // `url-list` is outside the info dictionary: same torrent, now with web seeds.
    let mut meta = fx.meta.clone();
    meta.url_list = vec![good.clone(), empty.clone()];
    let torrent = fx.dir.path().join("web.torrent");
    std::fs::write(&torrent, meta.to_bytes()).expect("write the torrent");
    let out = fx.dir.path().join("out");
    let state = fx.dir.path().join("state");
    let tui = Tmux::start(
        &[
            "tui",
            "--no-dht",
            s(&torrent),
            "-o",
            s(&out),
            "--state-dir",
            s(&state),
            "--bind",
            "127.0.0.1",
        ],
        &[],
    );
    tui.wait("the download from the web seed to complete", |sc| {
        row(sc, name).is_some_and(|r| r.contains("Seeding"))
    });
    let want = hyperblow_tests::fixture::tree(&files, 19);
    hyperblow_tests::fixture::assert_file(&out.join(name), &want[0]);
    hyperblow_tests::fixture::assert_file(&out.join(name), &want[1]);
    tui.keys(&["3"]);
    tui.wait("the web seeds listed, and no peer", |sc| {
        sc.contains("Web seeds 2/2 usable")
            && sc.contains(&good)
            && sc.contains(&empty)
            && sc.contains("(no peers connected)")
    });
    tui.keys(&["q"]);
    let screen = tui.wait("the exit", |sc| sc.contains("EXIT="));
    assert!(screen.contains("EXIT=0"), "{screen}");
}
