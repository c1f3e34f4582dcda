//! Rendering and key-handling tests of the TUI against a deterministic fake session: every view is
//! drawn into ratatui's `TestBackend` and its buffer compared with a snapshot (`snapshots/`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hyperblow_core::bitfield::Bitfield;
use hyperblow_core::engine::WebSeedStats;
use hyperblow_core::time::Instant;
use hyperblow_core::tracker::announce::{TrackerHandle, TrackerState, TrackerStatus};
use hyperblow_core::{InfoHash, PeerId};
use hyperblow_driver::engine::{FileStats, PeerStats, TorrentId, TorrentState, TorrentStats};
use hyperblow_driver::{RateLimits, StartKind};
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::style::Color;
use ratatui::Terminal;

use super::app::{App, Focus, Mode, SortKey, Tab};
use super::model::{Command, Details, Direction, Item, Session, Status};
use super::view::{self, Context, Theme};

/// A session that answers from a fixed list and records the commands it gets.
#[derive(Debug, Default)]
struct Fake {
    items: Vec<Item>,
    commands: Vec<Command>,
    messages: Vec<String>,
    limits: RateLimits,
}

impl Session for Fake {
    fn refresh(&mut self) -> bool {
        false
    }
    fn items(&self) -> &[Item] {
        &self.items
    }
    fn command(&mut self, command: Command) {
        self.commands.push(command);
    }
    fn take_messages(&mut self) -> Vec<String> {
        std::mem::take(&mut self.messages)
    }
    fn rate_limits(&self) -> RateLimits {
        self.limits
    }
}

fn ih(n: u8) -> InfoHash {
    InfoHash([n; 20])
}

fn files(spec: &[(&str, u64, bool, u64)]) -> Vec<FileStats> {
    spec.iter()
        .map(|(p, len, wanted, have)| FileStats {
            path: (*p).into(),
            length: *len,
            wanted: *wanted,
            have: *have,
        })
        .collect()
}

fn have(n: u32, done: impl Fn(u32) -> bool) -> Bitfield {
    let mut b = Bitfield::new(n);
    for i in 0..n {
        if done(i) {
            b.set(i);
        }
    }
    b
}

fn peer(addr: &str, id: &[u8; 8], client: Option<&str>, down: u64, pieces: u32) -> PeerStats {
    let mut pid = [b'x'; 20];
    pid[..8].copy_from_slice(id);
    PeerStats {
        addr: addr.parse::<SocketAddr>().expect("addr"),
        peer_id: Some(PeerId(pid)),
        client: client.map(str::to_owned),
        outgoing: down > 0,
        download_rate: down,
        upload_rate: 2048,
        downloaded: down * 10,
        uploaded: 0,
        pieces,
        am_choking: false,
        am_interested: down > 0,
        peer_choking: down == 0,
        peer_interested: true,
        requests: 4,
        snubbed: false,
    }
}

fn stats(
    id: u32,
    name: &str,
    state: TorrentState,
    files: Vec<FileStats>,
    have: Bitfield,
) -> TorrentStats {
    let total: u64 = files.iter().map(|f| f.length).sum();
    let wanted: u64 = files.iter().filter(|f| f.wanted).map(|f| f.length).sum();
    let have_bytes: u64 = files.iter().filter(|f| f.wanted).map(|f| f.have).sum();
    TorrentStats {
        id: TorrentId(id),
        name: name.into(),
        info_hash: ih(id as u8),
        state,
        total_bytes: total,
        wanted_bytes: wanted,
        have_bytes,
        downloaded: have_bytes,
        uploaded: have_bytes / 2,
        download_rate: 0,
        upload_rate: 0,
        peers: 0,
        seeds: 0,
        eta: None,
        availability: (0..have.len()).map(|i| (i % 4) as u16).collect(),
        in_flight: (0..have.len()).filter(|i| i % 7 == 1).collect(),
        have,
        peer_list: Vec::new(),
        trackers: Vec::new(),
        web_seeds: Vec::new(),
        files,
    }
}

/// Three torrents: one downloading (with peers, trackers, files), one seeding, one paused.
fn sample() -> Vec<Item> {
    let mut a = stats(
        1,
        "Debian 12.5 netinst",
        TorrentState::Downloading,
        files(&[
            (
                "debian/iso/debian-12.5.0-amd64-netinst.iso",
                600 << 20,
                true,
                300 << 20,
            ),
            ("debian/iso/SHA256SUMS", 1200, true, 1200),
            ("debian/README.txt", 5000, false, 0),
        ]),
        have(150, |i| i % 2 == 0),
    );
    a.download_rate = 3 << 20;
    a.upload_rate = 120 << 10;
    a.peers = 3;
    a.seeds = 1;
    a.eta = Some(Duration::from_secs(100));
    a.peer_list = vec![
        peer("127.0.0.2:6881", b"-LT2080-", None, 2 << 20, 150),
        peer(
            "127.0.0.3:51413",
            b"-TR3000-",
            Some("Transmission 3.00"),
            1 << 20,
            75,
        ),
        peer("[::1]:6882", b"-HB0100-", None, 0, 10),
    ];
    a.trackers = vec![
        TrackerStatus {
            handle: TrackerHandle(0),
            url: "udp://127.0.0.1:6969/announce".into(),
            tier: 0,
            position: 0,
            state: TrackerState::Ok,
            last_announce: Some(Instant::from_secs(40)),
            next_announce: Some(Instant::from_secs(1900)),
            seeders: Some(12),
            leechers: Some(4),
            peers_returned: Some(16),
            failures: 0,
            warning: None,
        },
        TrackerStatus {
            handle: TrackerHandle(1),
            url: "http://127.0.0.1:8080/announce".into(),
            tier: 1,
            position: 0,
            state: TrackerState::BackingOff {
                until: Instant::from_secs(160),
                message: "connection refused".into(),
            },
            last_announce: None,
            next_announce: None,
            seeders: None,
            leechers: None,
            peers_returned: None,
            failures: 2,
            warning: None,
        },
    ];
    let b = stats(
        2,
        "big-buck-bunny",
        TorrentState::Seeding,
        files(&[("big-buck-bunny.mp4", 276 << 20, true, 276 << 20)]),
        have(1104, |_| true),
    );
    let c = stats(
        3,
        "linux-6.8.tar.xz",
        TorrentState::Paused,
        files(&[("linux-6.8.tar.xz", 140 << 20, true, 14 << 20)]),
        have(560, |i| i < 56),
    );
    let item = |s: TorrentStats, status: Status, pieces: u32, private: bool| Item {
        info_hash: s.info_hash,
        name: s.name.clone(),
        output_dir: PathBuf::from("/home/user/Downloads"),
        status,
        details: Some(Details {
            piece_length: 256 * 1024,
            pieces,
            creator: Some("mktorrent 1.1".into()),
            comment: Some("Debian CD from cdimage.debian.org".into()),
            private,
        }),
        start: Some(StartKind::Resumed),
        limits: RateLimits::default(),
        stats: Some(s),
    };
    vec![
        item(a, Status::Downloading, 150, false),
        item(b, Status::Seeding, 1104, true),
        item(c, Status::Paused, 560, false),
    ]
}

fn cx(color: bool) -> Context {
    Context {
        now: Instant::from_secs(100),
        theme: Theme { color },
        max_active: 3,
        limits: RateLimits::default(),
    }
}

fn draw(app: &mut App, items: &[Item], w: u16, h: u16, color: bool) -> Buffer {
    draw_cx(app, items, w, h, &cx(color))
}

fn draw_cx(app: &mut App, items: &[Item], w: u16, h: u16, cx: &Context) -> Buffer {
    app.sync(items, false);
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("terminal");
    t.draw(|f| view::draw(f, app, items, cx)).expect("draw");
    t.backend().buffer().clone()
}

/// The buffer as text, one line per row, trailing spaces trimmed.
fn text(b: &Buffer) -> String {
    let mut out = String::new();
    for y in 0..b.area.height {
        let mut line = String::new();
        for x in 0..b.area.width {
            line.push_str(b[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn key(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

fn press(app: &mut App, s: &mut Fake, codes: &[KeyCode]) {
    for c in codes {
        let cmds = app.key(key(*c), &s.items);
        for c in cmds {
            s.command(c);
        }
    }
}

fn typed(app: &mut App, s: &mut Fake, line: &str) {
    let codes: Vec<KeyCode> = line.chars().map(KeyCode::Char).collect();
    press(app, s, &codes);
}

fn snapshot_tab(tab: Tab) -> String {
    let items = sample();
    let mut app = App {
        tab,
        focus: Focus::Pane,
        ..App::default()
    };
    text(&draw(&mut app, &items, 80, 24, true))
}

#[test]
fn main_view_80x24() {
    let items = sample();
    let mut app = App::default();
    insta::assert_snapshot!(text(&draw(&mut app, &items, 80, 24, true)));
}

#[test]
fn tab_details() {
    insta::assert_snapshot!(snapshot_tab(Tab::Details));
}

#[test]
fn tab_files() {
    insta::assert_snapshot!(snapshot_tab(Tab::Files));
}

#[test]
fn tab_peers() {
    insta::assert_snapshot!(snapshot_tab(Tab::Peers));
}

#[test]
fn tab_trackers() {
    insta::assert_snapshot!(snapshot_tab(Tab::Trackers));
}

#[test]
fn tab_pieces() {
    insta::assert_snapshot!(snapshot_tab(Tab::Pieces));
}

#[test]
fn tab_bandwidth() {
    let mut items = sample();
    let mut app = App {
        tab: Tab::Bandwidth,
        ..App::default()
    };
    // Ten seconds of history with a rising download rate.
    for k in 1..=10u64 {
        if let Some(s) = items[0].stats.as_mut() {
            s.download_rate = k << 20;
            s.upload_rate = (10 - k) << 10;
        }
        app.sync(&items, true);
    }
    insta::assert_snapshot!(text(&draw(&mut app, &items, 80, 24, true)));
}

#[test]
fn limits_show_in_the_title_and_the_bandwidth_tab() {
    let mut items = sample();
    items[0].limits = RateLimits {
        download: 2 << 20,
        upload: 0,
    };
    let mut app = App {
        tab: Tab::Bandwidth,
        ..App::default()
    };
    for k in 1..=10u64 {
        if let Some(s) = items[0].stats.as_mut() {
            s.download_rate = (k % 3) << 20;
            s.upload_rate = k << 10;
        }
        app.sync(&items, true);
    }
    let s = Fake {
        limits: RateLimits {
            download: 500 * 1024,
            upload: 0,
        },
        ..Fake::default()
    };
    let cx = Context {
        limits: s.rate_limits(),
        ..cx(true)
    };
    let shown = text(&draw_cx(&mut app, &items, 80, 24, &cx));
    assert!(shown.contains("↓1.0M/s≤500K ↑10.0K/s "), "{shown}");
    assert!(shown.contains("torrent limit 2.0M/s"), "{shown}");
    insta::assert_snapshot!(shown);
    // No limit at all: nothing about limits is shown.
    items[0].limits = RateLimits::default();
    let shown = text(&draw(&mut app, &items, 80, 24, true));
    assert!(!shown.contains("limit") && !shown.contains('≤'), "{shown}");
}

#[test]
fn limit_commands_set_session_and_torrent_rates() {
    let items = sample();
    let mut s = Fake::default();
    s.items.clone_from(&items);
    let mut app = App::default();
    // L opens the prompt with `limit ` typed.
    press(&mut app, &mut s, &[KeyCode::Char('L')]);
    assert_eq!(app.mode, Mode::Command("limit ".into()));
    typed(&mut app, &mut s, "down 500KiB");
    press(&mut app, &mut s, &[KeyCode::Enter]);
    assert_eq!(app.mode, Mode::Normal);
    assert_eq!(
        s.commands,
        vec![Command::SetRateLimit {
            torrent: None,
            direction: Direction::Down,
            rate: 500 * 1024,
        }]
    );
    assert_eq!(
        app.message.as_deref(),
        Some("session download limit: 500.00 KiB/s")
    );
    s.commands.clear();
    press(&mut app, &mut s, &[KeyCode::Char(':')]);
    typed(&mut app, &mut s, "limit up 1.5MB");
    press(&mut app, &mut s, &[KeyCode::Enter]);
    press(&mut app, &mut s, &[KeyCode::Char(':')]);
    typed(&mut app, &mut s, "limit down 0");
    press(&mut app, &mut s, &[KeyCode::Enter]);
    assert_eq!(
        app.message.as_deref(),
        Some("session download limit: unlimited")
    );
    // The selected torrent (the second one after a step down).
    press(&mut app, &mut s, &[KeyCode::Down, KeyCode::Char('L')]);
    typed(&mut app, &mut s, "torrent up 20MiB");
    press(&mut app, &mut s, &[KeyCode::Enter]);
    assert_eq!(
        s.commands,
        vec![
            Command::SetRateLimit {
                torrent: None,
                direction: Direction::Up,
                rate: 1_500_000,
            },
            Command::SetRateLimit {
                torrent: None,
                direction: Direction::Down,
                rate: 0,
            },
            Command::SetRateLimit {
                torrent: Some(items[1].info_hash),
                direction: Direction::Up,
                rate: 20 << 20,
            },
        ]
    );
    assert_eq!(
        app.message.as_deref(),
        Some("upload limit of big-buck-bunny: 20.00 MiB/s")
    );
}

#[test]
fn a_bad_limit_line_explains_itself_and_changes_nothing() {
    let mut s = Fake {
        items: sample(),
        ..Fake::default()
    };
    let mut app = App::default();
    for (line, expect) in [
        ("limit down 5XB", "limit not changed: unknown unit"),
        ("limit up fast", "limit not changed:"),
        ("limit down 1..5MB", "limit not changed:"),
        (
            "limit sideways 5KiB",
            "usage: :limit [torrent] down|up RATE",
        ),
        ("limit down", "usage: :limit [torrent] down|up RATE"),
        ("limit torrent 5KiB", "usage: :limit [torrent] down|up RATE"),
        ("limit", "usage: :limit [torrent] down|up RATE"),
    ] {
        press(&mut app, &mut s, &[KeyCode::Char(':')]);
        typed(&mut app, &mut s, line);
        press(&mut app, &mut s, &[KeyCode::Enter]);
        let msg = app.message.clone().unwrap_or_default();
        assert!(msg.starts_with(expect), "{line}: {msg}");
    }
    // A torrent limit with no torrent to apply it to.
    let mut empty = Fake::default();
    press(&mut app, &mut empty, &[KeyCode::Char('L')]);
    typed(&mut app, &mut empty, "torrent down 1MiB");
    press(&mut app, &mut empty, &[KeyCode::Enter]);
    assert_eq!(
        app.message.as_deref(),
        Some("limit not changed: no torrent selected")
    );
    assert!(s.commands.is_empty() && empty.commands.is_empty());
}

#[test]
fn help_overlay_lists_every_key() {
    let items = sample();
    let mut app = App::default();
    let mut s = Fake::default();
    s.items.clone_from(&items);
    press(&mut app, &mut s, &[KeyCode::Char('?')]);
    assert_eq!(app.mode, Mode::Help);
    let shown = text(&draw(&mut app, &items, 100, 30, true));
    insta::assert_snapshot!(shown);
    // Any key closes it, and does nothing else.
    press(&mut app, &mut s, &[KeyCode::Char('q')]);
    assert_eq!(app.mode, Mode::Normal);
    assert!(!app.quit);
}

#[test]
fn remove_asks_first_and_only_y_removes() {
    let items = sample();
    let mut s = Fake {
        items: items.clone(),
        ..Fake::default()
    };
    let mut app = App::default();
    press(&mut app, &mut s, &[KeyCode::Char('D')]);
    insta::assert_snapshot!(text(&draw(&mut app, &items, 80, 24, true)));
    press(&mut app, &mut s, &[KeyCode::Char('n')]);
    assert!(s.commands.is_empty());
    press(
        &mut app,
        &mut s,
        &[KeyCode::Down, KeyCode::Char('d'), KeyCode::Char('y')],
    );
    assert_eq!(
        s.commands,
        [Command::Remove {
            info_hash: ih(2),
            delete_data: false
        }]
    );
    s.commands.clear();
    press(&mut app, &mut s, &[KeyCode::Char('D'), KeyCode::Char('y')]);
    assert_eq!(
        s.commands,
        [Command::Remove {
            info_hash: ih(2),
            delete_data: true
        }]
    );
}

#[test]
fn pause_resume_recheck_and_moving_between_torrents() {
    let items = sample();
    let mut s = Fake {
        items: items.clone(),
        ..Fake::default()
    };
    let mut app = App::default();
    press(&mut app, &mut s, &[KeyCode::Char('p')]);
    press(
        &mut app,
        &mut s,
        &[KeyCode::Char('j'), KeyCode::Char('j'), KeyCode::Char('p')],
    );
    press(&mut app, &mut s, &[KeyCode::Char('k'), KeyCode::Char('r')]);
    // Past the end stays on the last.
    press(
        &mut app,
        &mut s,
        &[KeyCode::End, KeyCode::Down, KeyCode::Char('p')],
    );
    assert_eq!(
        s.commands,
        [
            Command::Pause(ih(1)),
            Command::Resume(ih(3)),
            Command::Recheck(ih(2)),
            Command::Resume(ih(3)),
        ]
    );
    press(&mut app, &mut s, &[KeyCode::Char('q')]);
    assert!(app.quit);
}

#[test]
fn command_line_adds_files_and_magnets() {
    let mut s = Fake::default();
    let mut app = App::default();
    press(&mut app, &mut s, &[KeyCode::Char(':')]);
    typed(&mut app, &mut s, "file /tmp/x.torrent");
    insta::assert_snapshot!(text(&draw(&mut app, &[], 60, 6, true)));
    press(&mut app, &mut s, &[KeyCode::Enter]);
    press(&mut app, &mut s, &[KeyCode::Char(':')]);
    typed(&mut app, &mut s, "magnet magnet:?xt=urn:btih:0123");
    press(&mut app, &mut s, &[KeyCode::Enter]);
    // `a` opens the prompt with `file ` typed; Esc abandons it.
    press(
        &mut app,
        &mut s,
        &[KeyCode::Char('a'), KeyCode::Char('z'), KeyCode::Esc],
    );
    press(&mut app, &mut s, &[KeyCode::Char(':')]);
    typed(&mut app, &mut s, "bogus");
    press(&mut app, &mut s, &[KeyCode::Enter]);
    assert_eq!(
        s.commands,
        [
            Command::AddFile(PathBuf::from("/tmp/x.torrent")),
            Command::AddMagnet("magnet:?xt=urn:btih:0123".into()),
        ]
    );
    assert!(app
        .message
        .as_deref()
        .unwrap_or("")
        .contains("unknown command"));
    press(
        &mut app,
        &mut s,
        &[KeyCode::Char(':'), KeyCode::Char('q'), KeyCode::Enter],
    );
    assert!(app.quit);
}

#[test]
fn space_in_the_files_tab_toggles_files_and_directories_live() {
    let items = sample();
    let mut s = Fake {
        items: items.clone(),
        ..Fake::default()
    };
    let mut app = App::default();
    press(&mut app, &mut s, &[KeyCode::Char('2'), KeyCode::Enter]);
    assert_eq!((app.tab, app.focus), (Tab::Files, Focus::Pane));
    // Rows: debian/, iso/, the iso, SHA256SUMS, README.txt. Uncheck the iso.
    press(
        &mut app,
        &mut s,
        &[KeyCode::Down, KeyCode::Down, KeyCode::Char(' ')],
    );
    // README (unchecked) gets checked.
    press(&mut app, &mut s, &[KeyCode::End, KeyCode::Char(' ')]);
    // The top directory is partly checked: space checks everything under it.
    press(&mut app, &mut s, &[KeyCode::Home, KeyCode::Char(' ')]);
    // The iso/ directory is fully checked: space unchecks both of its files.
    press(&mut app, &mut s, &[KeyCode::Down, KeyCode::Char(' ')]);
    assert_eq!(
        s.commands,
        [
            Command::SetWanted(ih(1), vec![false, true, false]),
            Command::SetWanted(ih(1), vec![true, true, true]),
            Command::SetWanted(ih(1), vec![true, true, true]),
            Command::SetWanted(ih(1), vec![false, false, false]),
        ]
    );
    // Esc goes back to the list, where space pauses.
    press(&mut app, &mut s, &[KeyCode::Esc, KeyCode::Char(' ')]);
    assert_eq!(s.commands.last(), Some(&Command::Pause(ih(1))));
}

#[test]
fn sort_and_filter() {
    let items = sample();
    let mut s = Fake {
        items: items.clone(),
        ..Fake::default()
    };
    let mut app = App::default();
    let names = |app: &App| -> Vec<String> {
        app.visible(&items)
            .into_iter()
            .map(|i| items[i].name.clone())
            .collect()
    };
    press(&mut app, &mut s, &[KeyCode::Char('s')]);
    assert_eq!(app.sort, SortKey::Name);
    assert_eq!(
        names(&app),
        ["big-buck-bunny", "Debian 12.5 netinst", "linux-6.8.tar.xz"]
    );
    press(&mut app, &mut s, &[KeyCode::Char('s'), KeyCode::Char('S')]);
    assert_eq!(app.sort, SortKey::Size);
    assert_eq!(
        names(&app),
        ["Debian 12.5 netinst", "big-buck-bunny", "linux-6.8.tar.xz"]
    );
    press(&mut app, &mut s, &[KeyCode::Char('/')]);
    typed(&mut app, &mut s, "LIN");
    press(&mut app, &mut s, &[KeyCode::Enter]);
    assert_eq!(names(&app), ["linux-6.8.tar.xz"]);
    // The selection follows what is shown.
    assert_eq!(app.selected, Some(ih(3)));
    press(&mut app, &mut s, &[KeyCode::Esc, KeyCode::Char('f')]);
    assert_eq!(names(&app), ["Debian 12.5 netinst"]); // active
    press(&mut app, &mut s, &[KeyCode::Char('f')]);
    assert_eq!(names(&app), ["big-buck-bunny"]); // seeding
    insta::assert_snapshot!(text(&draw(&mut app, &items, 80, 10, true)));
}

#[test]
fn ansi_escapes_in_names_render_harmlessly() {
    let mut items = sample();
    let evil = "\x1b]0;owned\x07\x1b[2J\x1b[1;1Hevil\u{9b}31m\u{202e}gpj.exe";
    items[0].name = evil.into();
    if let Some(s) = items[0].stats.as_mut() {
        s.files[0].path = format!("debian/{evil}/x");
        s.peer_list[1].client = Some("\x1b[31mred".into());
        s.trackers[1].state = TrackerState::Error {
            message: "bad\x1b[5mblink".into(),
        };
    }
    if let Some(d) = items[0].details.as_mut() {
        d.comment = Some("line1\nline2\x1b[A".into());
    }
    for tab in Tab::ALL {
        let mut app = App {
            tab,
            ..App::default()
        };
        let b = draw(&mut app, &items, 120, 30, true);
        let t = text(&b);
        let bad: Vec<char> = t
            .chars()
            .filter(|c| crate::safe::is_unsafe(*c) && *c != '\n')
            .collect();
        assert!(
            bad.is_empty(),
            "{tab:?} put control characters {bad:?} on screen:\n{t}"
        );
        if tab == Tab::Details {
            assert!(t.contains("\\x1b]0;owned\\x07"), "{t}");
            assert!(t.contains("line1\\nline2\\x1b[A"), "{t}");
        }
        if tab == Tab::Peers {
            assert!(t.contains("\\x1b[31mred"), "{t}");
        }
    }
}

#[test]
fn no_color_uses_no_colour() {
    let items = sample();
    for tab in Tab::ALL {
        let mut app = App {
            tab,
            ..App::default()
        };
        let b = draw(&mut app, &items, 80, 24, false);
        for c in &b.content {
            assert_eq!((c.fg, c.bg), (Color::Reset, Color::Reset), "{tab:?}");
        }
        // With colour, something is coloured.
        let b = draw(&mut app, &items, 80, 24, true);
        assert!(b.content.iter().any(|c| c.fg != Color::Reset), "{tab:?}");
    }
}

#[test]
fn long_names_tiny_terminals_and_resizes_do_not_break_the_layout() {
    let mut items = sample();
    items[1].name = "a-very-long-name-".repeat(20);
    let mut app = App::default();
    for (w, h) in [(80, 24), (40, 10), (10, 3), (1, 1), (200, 60), (80, 24)] {
        for tab in Tab::ALL {
            app.tab = tab;
            let b = draw(&mut app, &items, w, h, true);
            assert_eq!(b.area.width, w);
        }
    }
    app.tab = Tab::Details;
    app.mode = Mode::Help;
    draw(&mut app, &items, 12, 4, true);
    let t = text(&draw(&mut App::default(), &items, 80, 24, true));
    // The long name is cut to its column; the other columns stay in place.
    let row = t
        .lines()
        .find(|l| l.starts_with("a-very-long"))
        .expect("row");
    assert!(row.contains("Seeding"), "{row}");
}

/// A torrent with `n` files in `n / 100` directories.
fn many_files(n: usize) -> Item {
    let fs: Vec<FileStats> = (0..n)
        .map(|i| FileStats {
            path: format!("huge/d{:03}/file{i:05}.bin", i / 100),
            length: 1000 + i as u64,
            wanted: i % 3 != 0,
            have: if i % 2 == 0 { 1000 } else { 0 },
        })
        .collect();
    let s = stats(
        9,
        "huge",
        TorrentState::Downloading,
        fs,
        have(5000, |i| i % 2 == 0),
    );
    Item {
        info_hash: ih(9),
        name: "huge".into(),
        output_dir: PathBuf::from("/data"),
        status: Status::Downloading,
        stats: Some(s),
        details: None,
        start: None,
        limits: RateLimits::default(),
    }
}

#[test]
fn ten_thousand_files_scroll_rendering_only_the_visible_rows() {
    let items = vec![many_files(10_000)];
    let mut s = Fake {
        items: items.clone(),
        ..Fake::default()
    };
    let mut app = App::default();
    press(&mut app, &mut s, &[KeyCode::Char('2'), KeyCode::Enter]);
    // Page down through the whole tree, drawing each page, then jump to the end.
    let mut t = Terminal::new(TestBackend::new(80, 24)).expect("terminal");
    let rows = app.tree.as_ref().map_or(0, |(_, t)| t.len());
    assert_eq!(rows, 10_000 + 100 + 1);
    let started = std::time::Instant::now();
    let mut frames = 0;
    while app.pane_cursor + 1 < rows {
        press(&mut app, &mut s, &[KeyCode::PageDown]);
        t.draw(|f| view::draw(f, &mut app, &items, &cx(true)))
            .expect("draw");
        frames += 1;
    }
    let per_frame = started.elapsed() / frames;
    eprintln!("10,000 files: {frames} pages drawn, {per_frame:?} per frame (debug build)");
    let shown = text(t.backend().buffer());
    assert!(shown.contains("file09999.bin"), "{shown}");
    assert!(!shown.contains("file00000.bin"), "{shown}");
    // Toggling the last file sends a selection of 10,000 flags with only that one changed.
    press(&mut app, &mut s, &[KeyCode::Char(' ')]);
    let Some(Command::SetWanted(_, w)) = s.commands.last() else {
        panic!("no selection sent: {:?}", s.commands);
    };
    assert_eq!(w.len(), 10_000);
    let before: Vec<bool> = (0..10_000).map(|i| i % 3 != 0).collect();
    let changed: Vec<usize> = (0..10_000).filter(|&i| w[i] != before[i]).collect();
    assert_eq!(changed, [9_999]);
}

#[test]
fn two_hundred_torrents_scroll_with_the_selection() {
    let base = sample();
    let items: Vec<Item> = (0..200u32)
        .map(|i| {
            let mut it = base[(i % 3) as usize].clone();
            let mut hash = [0u8; 20];
            hash[..4].copy_from_slice(&i.to_be_bytes());
            it.info_hash = InfoHash(hash);
            it.name = format!("torrent {i:03}");
            it
        })
        .collect();
    let mut s = Fake {
        items: items.clone(),
        ..Fake::default()
    };
    let mut app = App::default();
    let t = text(&draw(&mut app, &items, 80, 24, true));
    assert!(t.contains("torrent 000") && !t.contains("torrent 199"));
    press(&mut app, &mut s, &[KeyCode::End]);
    let t = text(&draw(&mut app, &items, 80, 24, true));
    assert!(
        t.contains("torrent 199") && !t.contains("torrent 000"),
        "{t}"
    );
    press(&mut app, &mut s, &[KeyCode::PageUp, KeyCode::Char('p')]);
    let Some(Command::Pause(h)) = s.commands.last() else {
        panic!("{:?}", s.commands)
    };
    let idx = items.iter().position(|i| i.info_hash == *h).expect("known");
    assert_eq!(idx, 199 - app.list_height);
}

#[test]
fn the_peers_tab_shows_web_seeds_above_the_peers() {
    let mut items = sample();
    if let Some(s) = items[0].stats.as_mut() {
        s.web_seeds = vec![
            WebSeedStats {
                url: "https://mirror.test/pub/debian-12.5.iso".into(),
                connections: 3,
                downloaded: 300 << 20,
                download_rate: 2 << 20,
                status: None,
                last_error: Some("server busy".into()),
            },
            WebSeedStats {
                url: "http://old.test/\u{1b}[2Jiso/".into(),
                connections: 0,
                downloaded: 0,
                download_rate: 0,
                status: Some("disabled: sent a piece that failed the hash check".into()),
                last_error: Some("sent a piece that failed the hash check".into()),
            },
        ];
    }
    let mut app = App {
        tab: Tab::Peers,
        focus: Focus::Pane,
        ..App::default()
    };
    let screen = text(&draw(&mut app, &items, 100, 30, true));
    assert!(screen.contains("Web seeds 1/2 usable"), "{screen}");
    assert!(!screen.contains('\u{1b}'), "escaped: {screen}");
    // The peers are still listed below.
    assert!(screen.contains("127.0.0.2:6881"), "{screen}");
    insta::assert_snapshot!(screen);
}
