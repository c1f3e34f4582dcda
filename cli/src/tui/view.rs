//! Drawing: the torrent list, the tabs of the selected torrent, the status line and the dialogs,
//! from the UI state and the session's items. Only the rows that fit on screen are built, so a
//! torrent with 10,000 files or a list of hundreds of torrents costs what a screenful costs.
//!
//! Every string that comes from a torrent, a peer or a tracker goes through [`safe`] first.

use std::borrow::Cow;
use std::time::Duration;

use hyperblow_core::time::Instant;
use hyperblow_core::tracker::announce::{TrackerState, TrackerStatus};
use hyperblow_driver::engine::{PeerStats, TorrentStats};
use hyperblow_driver::RateLimits;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Row, Sparkline, Table, Tabs, Wrap};
use ratatui::Frame;

use super::app::{App, Focus, Mode, Tab};
use super::model::{Item, Status};
use crate::safe;

/// Colours, or none (`NO_COLOR`): then only bold, reverse and dim mark things.
#[derive(Debug, Clone, Copy)]
pub struct Theme {
    /// Whether colours are used.
    pub color: bool,
}

impl Theme {
    /// The theme the environment asks for: no colour if `NO_COLOR` is set and not empty.
    pub fn from_env() -> Theme {
        Theme {
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    fn fg(self, c: Color) -> Style {
        if self.color {
            Style::new().fg(c)
        } else {
            Style::new()
        }
    }

    fn status(self, s: &Status) -> Style {
        match s {
            Status::Seeding => self.fg(Color::Green),
            Status::Downloading => self.fg(Color::Cyan),
            Status::Paused | Status::Queued => self.fg(Color::Yellow),
            Status::Error(_) => self.fg(Color::Red).add_modifier(Modifier::BOLD),
            Status::Checking { .. } | Status::Metadata => self.fg(Color::Magenta),
        }
    }

    fn selected(self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED)
    }

    fn header(self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }

    fn dim(self) -> Style {
        Style::new().add_modifier(Modifier::DIM)
    }
}

/// What the view needs besides the app state and the items.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// The engine's clock now (for "next announce in ...").
    pub now: Instant,
    /// Colours.
    pub theme: Theme,
    /// Most torrents downloading at once.
    pub max_active: usize,
    /// The session-wide rate limits (the title bar shows a limited direction's limit after `≤`).
    pub limits: RateLimits,
}

/// Draws the whole screen.
pub fn draw(f: &mut Frame<'_>, app: &mut App, items: &[Item], cx: &Context) {
    let area = f.area();
    let [title, list, tabs, pane, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Percentage(40),
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_title(f, title, app, items, cx);
    draw_list(f, list, app, items, cx);
    let tab_titles: Vec<Line<'_>> = Tab::ALL
        .iter()
        .enumerate()
        .map(|(i, t)| Line::from(format!("{} {}", i + 1, t.title())))
        .collect();
    let tab_index = Tab::ALL.iter().position(|t| *t == app.tab).unwrap_or(0);
    f.render_widget(
        Tabs::new(tab_titles)
            .select(tab_index)
            .highlight_style(cx.theme.selected())
            .divider("|"),
        tabs,
    );
    app.pane_height = pane.height.saturating_sub(1).max(1) as usize;
    let sel = app.selected_index(items).map(|i| &items[i]);
    match sel {
        None => f.render_widget(
            Paragraph::new("No torrent. Add one with :file PATH or :magnet LINK (? for keys).")
                .wrap(Wrap { trim: true }),
            pane,
        ),
        Some(it) => match app.tab {
            Tab::Details => draw_details(f, pane, it, cx),
            Tab::Files => draw_files(f, pane, app, it, cx),
            Tab::Peers => draw_peers(f, pane, app, it, cx),
            Tab::Trackers => draw_trackers(f, pane, app, it, cx),
            Tab::Pieces => draw_pieces(f, pane, it, cx),
            Tab::Bandwidth => draw_bandwidth(f, pane, app, it, cx),
        },
    }
    draw_footer(f, footer, app, cx);
    match &app.mode {
        Mode::Help => draw_help(f, area, cx),
        Mode::Confirm(c) => {
            let q = format!(
                "Remove {}{}? y: yes, any other key: no",
                safe::escape(&c.name),
                if c.delete_data {
                    " AND DELETE ITS DATA"
                } else {
                    " (its files stay)"
                }
            );
            draw_dialog(f, area, "Remove", &[q], cx);
        }
        _ => {}
    }
}

fn draw_title(f: &mut Frame<'_>, area: Rect, app: &App, items: &[Item], cx: &Context) {
    let down: u64 = items.iter().map(Item::down).sum();
    let up: u64 = items.iter().map(Item::up).sum();
    let active = items
        .iter()
        .filter(|i| i.status == Status::Downloading)
        .count();
    let mut spans = vec![
        Span::styled(" hyperblow ", cx.theme.header()),
        Span::raw(format!(
            " {} torrents  {active}/{} active  ↓{}/s{} ↑{}/s{}  sort:{}{}  show:{}",
            items.len(),
            cx.max_active,
            size(down),
            cap(cx.limits.download),
            size(up),
            cap(cx.limits.upload),
            app.sort.label(),
            if app.sort_desc { "▼" } else { "▲" },
            app.state_filter.label()
        )),
    ];
    if !app.filter.is_empty() {
        spans.push(Span::raw(format!("  /{}", safe::escape(&app.filter))));
    }
    f.render_widget(Line::from(spans).style(cx.theme.dim()), area);
}

fn draw_list(f: &mut Frame<'_>, area: Rect, app: &mut App, items: &[Item], cx: &Context) {
    let rows_idx = app.visible(items);
    let height = area.height.saturating_sub(1) as usize;
    app.list_height = height.max(1);
    let sel_pos = app
        .selected
        .and_then(|s| rows_idx.iter().position(|&i| items[i].info_hash == s));
    if let Some(p) = sel_pos {
        app.list_offset = super::app::scroll_to(app.list_offset, p, app.list_height);
    }
    let start = app.list_offset.min(rows_idx.len());
    let end = (start + height).min(rows_idx.len());
    let rows = rows_idx[start..end].iter().map(|&i| {
        let it = &items[i];
        let peers = it
            .stats
            .as_ref()
            .map_or(String::new(), |s| format!("{}/{}", s.peers, s.seeds));
        let eta = it
            .stats
            .as_ref()
            .and_then(|s| s.eta)
            .filter(|_| it.status == Status::Downloading)
            .map_or("-".into(), eta);
        let state = match &it.status {
            Status::Checking { .. } => format!("Check {:.0}%", it.progress() * 100.0),
            s => s.label().to_owned(),
        };
        let mut row = Row::new(vec![
            Line::from(safe::escape(&it.name).into_owned()),
            Line::from(size(it.size())).right_aligned(),
            Line::from(format!("{:.0}%", (it.progress() * 100.0).floor())).right_aligned(),
            Line::styled(state, cx.theme.status(&it.status)),
            Line::from(size(it.down())).right_aligned(),
            Line::from(size(it.up())).right_aligned(),
            Line::from(peers).right_aligned(),
            Line::from(eta).right_aligned(),
            Line::from(format!("{:.2}", it.ratio())).right_aligned(),
        ]);
        if Some(it.info_hash) == app.selected {
            let st = if app.focus == Focus::List {
                cx.theme.selected()
            } else {
                cx.theme.header()
            };
            row = row.style(st);
        }
        row
    });
    let header = Row::new(vec![
        "Name", "Size", "Done", "State", "Down/s", "Up/s", "Peers", "ETA", "Ratio",
    ])
    .style(cx.theme.header());
    let widths = [
        Constraint::Fill(1),
        Constraint::Length(6),
        Constraint::Length(4),
        Constraint::Length(9),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(5),
    ];
    let table = Table::new(rows, widths).header(header).column_spacing(1);
    f.render_widget(table, area);
    if rows_idx.is_empty() {
        let msg = if items.is_empty() {
            "  (no torrents: press : then type file PATH or magnet LINK)"
        } else {
            "  (no torrent matches the filter: Esc clears it, f changes the state filter)"
        };
        let r = Rect {
            y: area.y + 1,
            height: 1,
            ..area
        };
        f.render_widget(Line::styled(msg, cx.theme.dim()), r);
    }
}

fn kv<'a>(k: &'a str, v: impl Into<Cow<'a, str>>, cx: &Context) -> Line<'a> {
    Line::from(vec![
        Span::styled(format!("{k:>12}: "), cx.theme.header()),
        Span::raw(v.into()),
    ])
}

fn draw_details(f: &mut Frame<'_>, area: Rect, it: &Item, cx: &Context) {
    let mut lines = vec![
        kv("Name", safe::escape(&it.name).into_owned(), cx),
        kv("Info-hash", it.info_hash.to_hex(), cx),
        kv(
            "Location",
            safe::escape(&it.output_dir.display().to_string()).into_owned(),
            cx,
        ),
    ];
    let status = match &it.status {
        Status::Error(e) => format!("Error: {}", safe::escape(e)),
        Status::Checking { checked, total } => format!("Checking {checked}/{total} pieces"),
        s => s.label().to_owned(),
    };
    lines.push(kv("Status", status, cx));
    if let Some(start) = it.start {
        let how = match start {
            hyperblow_driver::StartKind::Fresh => "new download (nothing on disk)",
            hyperblow_driver::StartKind::Resumed => "from resume data (no re-check)",
            hyperblow_driver::StartKind::Checked => "checked: every piece on disk hashed",
        };
        lines.push(kv("Data", how, cx));
    }
    if let Some(s) = &it.stats {
        lines.push(kv(
            "Size",
            format!(
                "{} ({} wanted, {} verified)",
                crate::units::bytes(s.total_bytes),
                crate::units::bytes(s.wanted_bytes),
                crate::units::bytes(s.have_bytes)
            ),
            cx,
        ));
        lines.push(kv(
            "Transfer",
            format!(
                "{} down, {} up this session",
                crate::units::bytes(s.downloaded),
                crate::units::bytes(s.uploaded)
            ),
            cx,
        ));
    }
    match &it.details {
        Some(d) => {
            let have = it.stats.as_ref().map_or(0, |s| s.have.count_ones());
            lines.push(kv(
                "Pieces",
                format!(
                    "{have}/{} verified, {} each",
                    d.pieces,
                    crate::units::bytes(u64::from(d.piece_length))
                ),
                cx,
            ));
            lines.push(kv(
                "Private",
                if d.private {
                    "yes (no DHT, no PEX)"
                } else {
                    "no"
                },
                cx,
            ));
            lines.push(kv(
                "Created by",
                d.creator.as_deref().map_or("-".into(), safe::escape),
                cx,
            ));
            lines.push(kv(
                "Comment",
                d.comment.as_deref().map_or("-".into(), safe::escape),
                cx,
            ));
        }
        None => lines.push(kv("Pieces", "unknown until the metadata arrives", cx)),
    }
    f.render_widget(Paragraph::new(lines), area);
}

fn bar(fraction: f64, width: usize) -> String {
    let filled = ((fraction.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

fn draw_files(f: &mut Frame<'_>, area: Rect, app: &App, it: &Item, cx: &Context) {
    let (Some(s), Some((_, tree))) = (&it.stats, &app.tree) else {
        f.render_widget(
            Paragraph::new("The file list comes with the metadata."),
            area,
        );
        return;
    };
    let height = area.height.saturating_sub(1) as usize;
    let start = app.pane_offset.min(tree.len());
    let end = (start + height).min(tree.len());
    let rows = tree.rows()[start..end].iter().enumerate().map(|(k, r)| {
        let (len, have, wanted_n) = r.files.iter().fold((0u64, 0u64, 0usize), |acc, &i| {
            let fs = &s.files[i];
            (
                acc.0 + fs.length,
                acc.1 + fs.have,
                acc.2 + usize::from(fs.wanted),
            )
        });
        let check = if wanted_n == r.files.len() {
            "[x]"
        } else if wanted_n == 0 {
            "[ ]"
        } else {
            "[-]"
        };
        let name = format!(
            "{}{check} {}{}",
            "  ".repeat(r.depth),
            safe::escape(&r.name),
            if r.file.is_none() { "/" } else { "" }
        );
        let frac = if len == 0 {
            1.0
        } else {
            have as f64 / len as f64
        };
        let mut row = Row::new(vec![
            Line::from(name),
            Line::from(size(len)).right_aligned(),
            Line::from(bar(frac, 10)),
            Line::from(format!("{:.0}%", (frac * 100.0).floor())).right_aligned(),
        ]);
        if start + k == app.pane_cursor && app.focus == Focus::Pane {
            row = row.style(cx.theme.selected());
        } else if wanted_n == 0 {
            row = row.style(cx.theme.dim());
        }
        row
    });
    let header = Row::new(vec![
        format!("Files ({} of {})", app.pane_cursor + 1, tree.len()),
        "Size".into(),
        "Progress".into(),
        "Done".into(),
    ])
    .style(cx.theme.header());
    let t = Table::new(
        rows,
        [
            Constraint::Fill(1),
            Constraint::Length(6),
            Constraint::Length(10),
            Constraint::Length(4),
        ],
    )
    .header(header);
    f.render_widget(t, area);
}

/// A client's name from its peer id (Azureus-style `-XX1234-`), or `?`.
pub fn client_from_id(p: &PeerStats) -> String {
    if let Some(c) = &p.client {
        return safe::escape(c).into_owned();
    }
    let Some(id) = p.peer_id else {
        return "?".into();
    };
    let b = id.as_bytes();
    if b[0] == b'-' && b[7] == b'-' && b[1..7].iter().all(u8::is_ascii_alphanumeric) {
        let code = std::str::from_utf8(&b[1..3]).unwrap_or("??");
        let name = match code {
            "HB" => "Hyperblow",
            "LT" | "lt" => "libtorrent",
            "TR" => "Transmission",
            "qB" => "qBittorrent",
            "DE" => "Deluge",
            "UT" => "µTorrent",
            "AZ" => "Vuze",
            "BT" => "BitTorrent",
            "rq" | "RQ" => "rqbit",
            _ => code,
        };
        let v = std::str::from_utf8(&b[3..7]).unwrap_or("");
        return format!("{name} {v}");
    }
    if b.starts_with(b"A2-") {
        return "aria2".into();
    }
    "?".into()
}

/// Flags of a peer: `D`/`d` downloading from it (unchoked/choked, we are interested), `U`/`u`
/// uploading to it (it is interested: unchoked/choked), `S` snubbed, `o`/`i` outgoing/incoming.
pub fn peer_flags(p: &PeerStats) -> String {
    let d = match (p.am_interested, p.peer_choking) {
        (true, false) => 'D',
        (true, true) => 'd',
        _ => '-',
    };
    let u = match (p.peer_interested, p.am_choking) {
        (true, false) => 'U',
        (true, true) => 'u',
        _ => '-',
    };
    let s = if p.snubbed { 'S' } else { '-' };
    let o = if p.outgoing { 'o' } else { 'i' };
    [d, u, s, o].iter().collect()
}

/// Most web seeds listed above the peers (the header gives the total).
const WEB_SEED_ROWS: usize = 4;

/// The torrent's web seeds, above its peers: usable of listed, then per seed its URL, open
/// connections, rate and state (why it is not usable, or the last error it recovered from).
fn draw_web_seeds(f: &mut Frame<'_>, area: Rect, s: &TorrentStats, cx: &Context) {
    let usable = s.web_seeds.iter().filter(|w| w.status.is_none()).count();
    let rows = s.web_seeds.iter().take(WEB_SEED_ROWS).map(|w| {
        let state = match (&w.status, &w.last_error) {
            (Some(why), _) => safe::escape(why).into_owned(),
            (None, Some(e)) => format!("ok (last: {})", safe::escape(e)),
            (None, None) => "ok".into(),
        };
        let row = Row::new(vec![
            Line::from(safe::escape(&w.url).into_owned()),
            Line::from(w.connections.to_string()).right_aligned(),
            Line::from(size(w.download_rate)).right_aligned(),
            Line::from(state),
        ]);
        if w.status.is_some() {
            row.style(cx.theme.dim())
        } else {
            row
        }
    });
    let title = format!("Web seeds {usable}/{} usable", s.web_seeds.len());
    let header = Row::new(vec![title, "Conns".into(), "Down/s".into(), "State".into()])
        .style(cx.theme.header());
    let t = Table::new(
        rows,
        [
            Constraint::Fill(3),
            Constraint::Length(5),
            Constraint::Length(6),
            Constraint::Fill(2),
        ],
    )
    .header(header);
    f.render_widget(t, area);
}

fn draw_peers(f: &mut Frame<'_>, area: Rect, app: &App, it: &Item, cx: &Context) {
    let Some(s) = &it.stats else { return };
    let area = if s.web_seeds.is_empty() {
        area
    } else {
        // Header, rows, and a blank line before the peers.
        let shown = s.web_seeds.len().min(WEB_SEED_ROWS) as u16;
        let [top, rest] =
            Layout::vertical([Constraint::Length(shown + 2), Constraint::Fill(1)]).areas(area);
        draw_web_seeds(f, top, s, cx);
        rest
    };
    let pieces = it.details.as_ref().map_or(0, |d| d.pieces);
    let height = area.height.saturating_sub(1) as usize;
    let start = app.pane_offset.min(s.peer_list.len());
    let end = (start + height).min(s.peer_list.len());
    let rows = s.peer_list[start..end].iter().enumerate().map(|(k, p)| {
        let prog = if pieces == 0 {
            "-".into()
        } else {
            format!("{:.0}%", f64::from(p.pieces) * 100.0 / f64::from(pieces))
        };
        let mut row = Row::new(vec![
            Line::from(p.addr.to_string()),
            Line::from(client_from_id(p)),
            Line::from(peer_flags(p)),
            Line::from(size(p.download_rate)).right_aligned(),
            Line::from(size(p.upload_rate)).right_aligned(),
            Line::from(prog).right_aligned(),
        ]);
        if start + k == app.pane_cursor && app.focus == Focus::Pane {
            row = row.style(cx.theme.selected());
        }
        row
    });
    let header = Row::new(vec!["Address", "Client", "Flags", "Down/s", "Up/s", "Has"])
        .style(cx.theme.header());
    let t = Table::new(
        rows,
        [
            Constraint::Length(21),
            Constraint::Fill(1),
            Constraint::Length(5),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(4),
        ],
    )
    .header(header);
    f.render_widget(t, area);
    if s.peer_list.is_empty() {
        let r = Rect {
            y: area.y + 1,
            height: 1,
            ..area
        };
        f.render_widget(Line::styled("  (no peers connected)", cx.theme.dim()), r);
    }
}

fn ago(now: Instant, t: Option<Instant>) -> String {
    t.map_or("-".into(), |t| {
        format!("{} ago", eta(now.saturating_duration_since(t)))
    })
}

fn tracker_status(t: &TrackerStatus, now: Instant) -> (String, String) {
    let warn = t.warning.as_deref().map(safe::escape);
    match &t.state {
        TrackerState::Idle => ("idle".into(), warn.unwrap_or_default().into_owned()),
        TrackerState::Connecting => ("connecting".into(), String::new()),
        TrackerState::Announcing => ("announcing".into(), String::new()),
        TrackerState::Ok => ("ok".into(), warn.unwrap_or_default().into_owned()),
        TrackerState::Error { message } => ("error".into(), safe::escape(message).into_owned()),
        TrackerState::BackingOff { until, message } => (
            format!("retry {}", eta(until.saturating_duration_since(now))),
            safe::escape(message).into_owned(),
        ),
    }
}

fn draw_trackers(f: &mut Frame<'_>, area: Rect, app: &App, it: &Item, cx: &Context) {
    let Some(s) = &it.stats else { return };
    let height = area.height.saturating_sub(1) as usize;
    let start = app.pane_offset.min(s.trackers.len());
    let end = (start + height).min(s.trackers.len());
    let rows = s.trackers[start..end].iter().enumerate().map(|(k, t)| {
        let (status, error) = tracker_status(t, cx.now);
        let next = t.next_announce.map_or("-".into(), |n| {
            format!("in {}", eta(n.saturating_duration_since(cx.now)))
        });
        let num = |n: Option<u32>| n.map_or("-".into(), |n| n.to_string());
        let mut row = Row::new(vec![
            Line::from(safe::escape(&t.url).into_owned()),
            Line::from(t.tier.to_string()).right_aligned(),
            Line::from(status),
            Line::from(ago(cx.now, t.last_announce)),
            Line::from(next),
            Line::from(num(t.seeders)).right_aligned(),
            Line::from(num(t.leechers)).right_aligned(),
            Line::from(error),
        ]);
        if start + k == app.pane_cursor && app.focus == Focus::Pane {
            row = row.style(cx.theme.selected());
        }
        row
    });
    let header = Row::new(vec![
        "URL", "Tier", "Status", "Last", "Next", "Seeds", "Leech", "Message",
    ])
    .style(cx.theme.header());
    let t = Table::new(
        rows,
        [
            Constraint::Fill(2),
            Constraint::Length(4),
            Constraint::Length(11),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(5),
            Constraint::Length(5),
            Constraint::Fill(1),
        ],
    )
    .header(header);
    f.render_widget(t, area);
    if s.trackers.is_empty() {
        let r = Rect {
            y: area.y + 1,
            height: 1,
            ..area
        };
        f.render_widget(
            Line::styled(
                "  (no trackers: peers come from --peer, PEX or magnet hints)",
                cx.theme.dim(),
            ),
            r,
        );
    }
}

fn draw_pieces(f: &mut Frame<'_>, area: Rect, it: &Item, cx: &Context) {
    let Some(s) = &it.stats else { return };
    let n = s.have.len();
    let [legend, map] = Layout::vertical([Constraint::Length(3), Constraint::Fill(1)]).areas(area);
    let cells = (map.width as usize * map.height as usize).max(1);
    let per = (n as usize).div_ceil(cells).max(1);
    let missing: Vec<u16> = (0..n)
        .filter(|&p| !s.have.get(p))
        .map(|p| s.availability.get(p as usize).copied().unwrap_or(0))
        .collect();
    let avail = if missing.is_empty() {
        "nothing missing".to_owned()
    } else {
        let min = missing.iter().copied().min().unwrap_or(0);
        let none = missing.iter().filter(|a| **a == 0).count();
        let mean = missing.iter().map(|a| f64::from(*a)).sum::<f64>() / missing.len() as f64;
        format!("missing pieces are on {mean:.1} peers on average, least {min}; {none} on none")
    };
    f.render_widget(
        Paragraph::new(vec![
            Line::styled(
                format!(
                    "{}/{n} pieces verified, {} in flight; a cell = {per} piece{}",
                    s.have.count_ones(),
                    s.in_flight.len(),
                    if per == 1 { "" } else { "s" }
                ),
                cx.theme.header(),
            ),
            Line::from(avail),
            Line::from("█ done  ▓ in flight  ▒ partly done  ░ missing  · missing, on no peer"),
        ]),
        legend,
    );
    if n == 0 {
        return;
    }
    let used = (n as usize).div_ceil(per);
    let width = map.width.max(1) as usize;
    let mut lines = Vec::with_capacity(used.div_ceil(width));
    let mut spans: Vec<Span<'_>> = Vec::with_capacity(width);
    let mut flight = s.in_flight.iter().peekable();
    for c in 0..used {
        let lo = (c * per) as u32;
        let hi = (((c + 1) * per) as u32).min(n);
        let done = (lo..hi).filter(|&p| s.have.get(p)).count() as u32;
        while flight.next_if(|&&p| p < lo).is_some() {}
        let in_flight = flight.peek().is_some_and(|&&p| p < hi);
        let seen = (lo..hi)
            .filter(|&p| !s.have.get(p))
            .map(|p| s.availability.get(p as usize).copied().unwrap_or(0))
            .min()
            .unwrap_or(1);
        let (ch, color) = if done == hi - lo {
            ('█', Color::Green)
        } else if in_flight {
            ('▓', Color::Yellow)
        } else if done > 0 {
            ('▒', Color::Green)
        } else if seen == 0 && !s.availability.is_empty() {
            ('·', Color::Red)
        } else {
            ('░', Color::Blue)
        };
        spans.push(Span::styled(ch.to_string(), cx.theme.fg(color)));
        if spans.len() == width {
            lines.push(Line::from(std::mem::take(&mut spans)));
        }
    }
    if !spans.is_empty() {
        lines.push(Line::from(spans));
    }
    f.render_widget(Paragraph::new(lines), map);
}

fn draw_bandwidth(f: &mut Frame<'_>, area: Rect, app: &App, it: &Item, cx: &Context) {
    let empty = super::app::History::default();
    let h = app.history.get(&it.info_hash).unwrap_or(&empty);
    let [top, bottom] = Layout::vertical([Constraint::Fill(1), Constraint::Fill(1)]).areas(area);
    for (rect, name, data, color) in [
        (top, "Download", &h.down, Color::Cyan),
        (bottom, "Upload", &h.up, Color::Green),
    ] {
        let w = rect.width as usize;
        let tail = &data[data.len().saturating_sub(w)..];
        let peak = tail.iter().copied().max().unwrap_or(0);
        let now = tail.last().copied().unwrap_or(0);
        let mut title = format!(
            "{name}: {}/s now, peak {}/s over the last {}",
            size(now),
            size(peak),
            eta(Duration::from_secs(tail.len() as u64))
        );
        let own = match name {
            "Download" => it.limits.download,
            _ => it.limits.upload,
        };
        if own > 0 {
            title.push_str(&format!(", torrent limit {}", limit(own)));
        }
        let spark = Sparkline::default()
            .block(Block::new().borders(Borders::TOP).title(title))
            .data(tail)
            .style(cx.theme.fg(color));
        f.render_widget(spark, rect);
    }
}

fn draw_footer(f: &mut Frame<'_>, area: Rect, app: &App, cx: &Context) {
    let line = match &app.mode {
        Mode::Command(l) => Line::from(format!(":{}█", safe::escape(l))),
        Mode::Filter(t) => Line::from(format!("filter: {}█", safe::escape(t))),
        _ => match (&app.alert, &app.message) {
            (Some(a), _) => Line::styled(
                a.clone(),
                cx.theme.fg(Color::Red).add_modifier(Modifier::BOLD),
            ),
            (None, Some(m)) => Line::from(m.clone()),
            (None, None) => Line::styled(
                "? keys  : add  p pause/resume  d/D remove  r re-check  Enter files  q quit",
                cx.theme.dim(),
            ),
        },
    };
    f.render_widget(line, area);
}

/// Every key, as the help shows it.
pub const KEYS: &[(&str, &str)] = &[
    ("↑ ↓ j k", "move in the list (or in the tab after Enter)"),
    ("PgUp PgDn g G", "page up / down, first / last"),
    ("Enter / Esc", "focus the tab below / back to the list"),
    (
        "Tab ← → 1-6",
        "switch tab: Details Files Peers Trackers Pieces Bandwidth",
    ),
    ("Space", "Files tab: check / uncheck a file or a directory"),
    (":file PATH", "add a .torrent (a also opens the prompt)"),
    (":magnet LINK", "add a magnet link"),
    (
        "p",
        "pause / resume (a resumed torrent may wait in the queue)",
    ),
    ("d / D", "remove (asks) / remove and delete its data (asks)"),
    ("r", "re-check: hash every piece on disk again"),
    (
        ":limit down|up",
        "RATE: session limit (e.g. 500KiB, 1.5MB; 0 = unlimited)",
    ),
    (
        ":limit torrent",
        "down|up RATE: the selected torrent's limit (L opens :limit)",
    ),
    ("s / S", "sort by the next column / reverse the order"),
    (
        "/ f",
        "filter by name / by state (all active seeding paused error)",
    ),
    ("?", "this help"),
    ("q Ctrl-C :q", "quit (trackers told, resume data saved)"),
];

fn draw_help(f: &mut Frame<'_>, area: Rect, cx: &Context) {
    let lines: Vec<String> = KEYS.iter().map(|(k, v)| format!("{k:<14} {v}")).collect();
    draw_dialog(f, area, "Keys (any key closes)", &lines, cx);
}

fn draw_dialog(f: &mut Frame<'_>, area: Rect, title: &str, lines: &[String], cx: &Context) {
    let width = lines
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0)
        .saturating_add(4)
        .min(area.width as usize) as u16;
    let height = (lines.len() as u16 + 2).min(area.height);
    let r = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    f.render_widget(Clear, r);
    let text: Vec<Line<'_>> = lines.iter().map(|l| Line::from(l.as_str())).collect();
    f.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(Span::styled(title, cx.theme.header()))),
        r,
    );
}

/// A session limit as the title bar shows it after the rate: `≤500K`, nothing for none.
fn cap(rate: u64) -> String {
    if rate == 0 {
        String::new()
    } else {
        format!("≤{}", size(rate))
    }
}

/// A rate limit as shown: `500K/s`, or `∞` for none.
fn limit(rate: u64) -> String {
    if rate == 0 {
        "∞".into()
    } else {
        format!("{}/s", size(rate))
    }
}

/// A size or rate in at most 6 columns: `0`, `999B`, `12.3K`, `1.5M`, `20.0G`.
pub fn size(n: u64) -> String {
    if n == 0 {
        return "0".into();
    }
    if n < 1000 {
        return format!("{n}B");
    }
    let mut v = n as f64 / 1024.0;
    for unit in ["K", "M", "G", "T", "P"] {
        if v < 999.5 {
            return if v < 99.95 {
                format!("{v:.1}{unit}")
            } else {
                format!("{v:.0}{unit}")
            };
        }
        v /= 1024.0;
    }
    format!("{v:.0}E")
}

/// A duration in at most 6 columns: `45s`, `12m03s`, `3h05m`, `2d04h`.
pub fn eta(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86400 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s < 100 * 86400 {
        format!("{}d{:02}h", s / 86400, s % 86400 / 3600)
    } else {
        "∞".into()
    }
}
