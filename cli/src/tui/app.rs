//! The UI's own state (selection, tab, sort, filter, scroll positions, the command line, dialogs,
//! bandwidth history) and what each key does. Pure: keys in, [`Command`]s out; no terminal, no
//! session, so every key is tested without either.

use std::collections::HashMap;

use hyperblow_core::InfoHash;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::model::{Command, Direction, Item, Status};
use super::tree::FileTree;

/// The tabs under the torrent list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    /// Info-hash, pieces, location, creator, comment, private.
    Details,
    /// The file tree with check-boxes.
    Files,
    /// Connected peers.
    Peers,
    /// Trackers and their status.
    Trackers,
    /// The piece map.
    Pieces,
    /// Download and upload over the last minutes.
    Bandwidth,
}

impl Tab {
    /// Every tab, in order.
    pub const ALL: [Tab; 6] = [
        Tab::Details,
        Tab::Files,
        Tab::Peers,
        Tab::Trackers,
        Tab::Pieces,
        Tab::Bandwidth,
    ];

    /// The tab's title.
    pub fn title(self) -> &'static str {
        match self {
            Tab::Details => "Details",
            Tab::Files => "Files",
            Tab::Peers => "Peers",
            Tab::Trackers => "Trackers",
            Tab::Pieces => "Pieces",
            Tab::Bandwidth => "Bandwidth",
        }
    }

    fn index(self) -> usize {
        Tab::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

/// What the torrent list is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// The order torrents were added in.
    Added,
    /// Name.
    Name,
    /// Total size.
    Size,
    /// Progress.
    Progress,
    /// Download rate.
    Down,
    /// Upload rate.
    Up,
    /// Ratio.
    Ratio,
    /// State.
    State,
}

impl SortKey {
    const ALL: [SortKey; 8] = [
        SortKey::Added,
        SortKey::Name,
        SortKey::Size,
        SortKey::Progress,
        SortKey::Down,
        SortKey::Up,
        SortKey::Ratio,
        SortKey::State,
    ];

    /// The name shown in the title bar.
    pub fn label(self) -> &'static str {
        match self {
            SortKey::Added => "added",
            SortKey::Name => "name",
            SortKey::Size => "size",
            SortKey::Progress => "progress",
            SortKey::Down => "down",
            SortKey::Up => "up",
            SortKey::Ratio => "ratio",
            SortKey::State => "state",
        }
    }
}

/// Which torrents the list shows, by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFilter {
    /// Every torrent.
    All,
    /// Downloading, queued, checking or fetching metadata.
    Active,
    /// Seeding.
    Seeding,
    /// Paused.
    Paused,
    /// Stopped by an error.
    Error,
}

impl StateFilter {
    const ALL: [StateFilter; 5] = [
        StateFilter::All,
        StateFilter::Active,
        StateFilter::Seeding,
        StateFilter::Paused,
        StateFilter::Error,
    ];

    /// The name shown in the title bar.
    pub fn label(self) -> &'static str {
        match self {
            StateFilter::All => "all",
            StateFilter::Active => "active",
            StateFilter::Seeding => "seeding",
            StateFilter::Paused => "paused",
            StateFilter::Error => "error",
        }
    }

    fn admits(self, s: &Status) -> bool {
        match self {
            StateFilter::All => true,
            StateFilter::Active => matches!(
                s,
                Status::Downloading | Status::Queued | Status::Checking { .. } | Status::Metadata
            ),
            StateFilter::Seeding => *s == Status::Seeding,
            StateFilter::Paused => *s == Status::Paused,
            StateFilter::Error => matches!(s, Status::Error(_)),
        }
    }
}

/// Which pane the arrow keys move in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    /// The torrent list.
    List,
    /// The tab below it (files, peers, trackers scroll; space toggles a file).
    Pane,
}

/// A question waiting for `y`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    /// The torrent to remove.
    pub info_hash: InfoHash,
    /// Its name (for the question).
    pub name: String,
    /// Also delete its data.
    pub delete_data: bool,
}

/// What the keyboard is talking to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Keys are commands.
    Normal,
    /// Typing a `:` command line.
    Command(String),
    /// Typing the list filter.
    Filter(String),
    /// A removal waiting for `y`.
    Confirm(Confirm),
    /// The key help is shown.
    Help,
}

/// One torrent's rate history, one sample per second.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Download rates, oldest first.
    pub down: Vec<u64>,
    /// Upload rates, oldest first.
    pub up: Vec<u64>,
}

/// How many samples of history are kept (10 minutes at one a second).
pub const HISTORY: usize = 600;

/// The whole UI state.
#[derive(Debug)]
pub struct App {
    /// The selected torrent (kept by identity when the list re-sorts).
    pub selected: Option<InfoHash>,
    /// First row of the list on screen.
    pub list_offset: usize,
    /// Rows of the list on screen (set by the last render).
    pub list_height: usize,
    /// The tab shown.
    pub tab: Tab,
    /// Where arrow keys go.
    pub focus: Focus,
    /// Cursor row in the pane (files, peers, trackers).
    pub pane_cursor: usize,
    /// First row of the pane on screen.
    pub pane_offset: usize,
    /// Rows of the pane on screen (set by the last render).
    pub pane_height: usize,
    /// Sort order of the list.
    pub sort: SortKey,
    /// Sort descending.
    pub sort_desc: bool,
    /// Case-insensitive name filter.
    pub filter: String,
    /// State filter.
    pub state_filter: StateFilter,
    /// Keyboard mode.
    pub mode: Mode,
    /// The status line's message.
    pub message: Option<String>,
    /// A problem the user must see (e.g. a state record that did not load): shown instead of the
    /// message until the next key.
    pub alert: Option<String>,
    /// Rate history per torrent.
    pub history: HashMap<InfoHash, History>,
    /// The file tree of the selected torrent, rebuilt when the torrent or its file count changes.
    pub tree: Option<(InfoHash, FileTree)>,
    /// Set when the user asked to quit.
    pub quit: bool,
}

impl Default for App {
    fn default() -> Self {
        App {
            selected: None,
            list_offset: 0,
            list_height: 10,
            tab: Tab::Details,
            focus: Focus::List,
            pane_cursor: 0,
            pane_offset: 0,
            pane_height: 10,
            sort: SortKey::Added,
            sort_desc: false,
            filter: String::new(),
            state_filter: StateFilter::All,
            mode: Mode::Normal,
            message: None,
            alert: None,
            history: HashMap::new(),
            tree: None,
            quit: false,
        }
    }
}

impl App {
    /// Indices into `items` of the rows the list shows, filtered and sorted.
    pub fn visible(&self, items: &[Item]) -> Vec<usize> {
        let needle = self.filter.to_lowercase();
        let mut rows: Vec<usize> = (0..items.len())
            .filter(|&i| self.state_filter.admits(&items[i].status))
            .filter(|&i| needle.is_empty() || items[i].name.to_lowercase().contains(&needle))
            .collect();
        let cmp = |a: &usize, b: &usize| {
            let (x, y) = (&items[*a], &items[*b]);
            let o = match self.sort {
                SortKey::Added => a.cmp(b),
                SortKey::Name => x.name.to_lowercase().cmp(&y.name.to_lowercase()),
                SortKey::Size => x.size().cmp(&y.size()),
                SortKey::Progress => x.progress().total_cmp(&y.progress()),
                SortKey::Down => x.down().cmp(&y.down()),
                SortKey::Up => x.up().cmp(&y.up()),
                SortKey::Ratio => x.ratio().total_cmp(&y.ratio()),
                SortKey::State => x.status.label().cmp(y.status.label()),
            };
            o.then(a.cmp(b))
        };
        rows.sort_by(cmp);
        if self.sort_desc {
            rows.reverse();
        }
        rows
    }

    /// The selected torrent's index in `items`, if it is shown.
    pub fn selected_index(&self, items: &[Item]) -> Option<usize> {
        let sel = self.selected?;
        items.iter().position(|i| i.info_hash == sel)
    }

    /// Keeps the selection on a shown torrent and the list scrolled to it; records the rates.
    pub fn sync(&mut self, items: &[Item], sample: bool) {
        let rows = self.visible(items);
        let pos = self
            .selected
            .and_then(|s| rows.iter().position(|&i| items[i].info_hash == s));
        let pos = match pos {
            Some(p) => Some(p),
            None if rows.is_empty() => None,
            None => Some(0),
        };
        let new_sel = pos.map(|p| items[rows[p]].info_hash);
        if new_sel != self.selected {
            self.selected = new_sel;
            self.pane_cursor = 0;
            self.pane_offset = 0;
        }
        if let Some(p) = pos {
            self.list_offset = scroll_to(self.list_offset, p, self.list_height.max(1));
        }
        self.list_offset = self.list_offset.min(rows.len().saturating_sub(1));
        if sample {
            for it in items {
                let h = self.history.entry(it.info_hash).or_default();
                push(&mut h.down, it.down());
                push(&mut h.up, it.up());
            }
            self.history
                .retain(|ih, _| items.iter().any(|i| i.info_hash == *ih));
        }
        let sel = self.selected_index(items).map(|i| &items[i]);
        let files = sel.and_then(|it| it.stats.as_ref().map(|s| (it.info_hash, &s.files)));
        match files {
            Some((ih, files)) => {
                let stale = self
                    .tree
                    .as_ref()
                    .is_none_or(|(t, tree)| *t != ih || tree.file_count() != files.len());
                if stale {
                    self.tree = Some((ih, FileTree::build(files)));
                }
            }
            None => self.tree = None,
        }
        let len = self.pane_len(sel);
        self.pane_cursor = self.pane_cursor.min(len.saturating_sub(1));
        self.pane_offset = scroll_to(self.pane_offset, self.pane_cursor, self.pane_height.max(1));
    }

    /// Rows in the pane of the current tab (for cursor bounds).
    fn pane_len(&self, item: Option<&Item>) -> usize {
        let Some(s) = item.and_then(|i| i.stats.as_ref()) else {
            return 0;
        };
        match self.tab {
            Tab::Files => self.tree.as_ref().map_or(0, |(_, t)| t.len()),
            Tab::Peers => s.peer_list.len(),
            Tab::Trackers => s.trackers.len(),
            _ => 0,
        }
    }

    /// Handles one key; returns the commands it asks of the session.
    pub fn key(&mut self, key: KeyEvent, items: &[Item]) -> Vec<Command> {
        let mut out = Vec::new();
        self.alert = None;
        self.sync(items, false);
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            self.quit = true;
            return out;
        }
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Normal => self.normal_key(key, items, &mut out),
            Mode::Help => {} // any key closes the help
            Mode::Confirm(c) => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    self.message = Some(format!(
                        "removing {}{}",
                        crate::safe::escape(&c.name),
                        if c.delete_data { " and its data" } else { "" }
                    ));
                    out.push(Command::Remove {
                        info_hash: c.info_hash,
                        delete_data: c.delete_data,
                    });
                }
                _ => self.message = Some("removal cancelled".into()),
            },
            Mode::Command(mut line) => match key.code {
                KeyCode::Enter => self.run_line(&line, items, &mut out),
                KeyCode::Esc => {}
                KeyCode::Backspace => {
                    if line.pop().is_some() || !line.is_empty() {
                        self.mode = Mode::Command(line);
                    }
                }
                KeyCode::Char(c) => {
                    line.push(c);
                    self.mode = Mode::Command(line);
                }
                _ => self.mode = Mode::Command(line),
            },
            Mode::Filter(mut text) => match key.code {
                KeyCode::Enter => self.filter = text,
                KeyCode::Esc => {}
                KeyCode::Backspace => {
                    text.pop();
                    self.filter.clone_from(&text);
                    self.mode = Mode::Filter(text);
                }
                KeyCode::Char(c) => {
                    text.push(c);
                    self.filter.clone_from(&text);
                    self.mode = Mode::Filter(text);
                }
                _ => self.mode = Mode::Filter(text),
            },
        }
        self.sync(items, false);
        out
    }

    fn run_line(&mut self, line: &str, items: &[Item], out: &mut Vec<Command>) {
        let line = line.trim();
        let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
        let arg = arg.trim();
        match cmd {
            "file" | "f" if !arg.is_empty() => {
                let path = expand_home(arg);
                out.push(Command::AddFile(path));
            }
            "magnet" | "m" if !arg.is_empty() => out.push(Command::AddMagnet(arg.to_owned())),
            "limit" => self.limit(arg, items, out),
            "q" | "quit" => self.quit = true,
            _ if crate::download::is_magnet(line) => out.push(Command::AddMagnet(line.to_owned())),
            _ => {
                self.message = Some(format!(
                    "unknown command `{}`: try :file PATH, :magnet LINK or :limit down|up RATE",
                    crate::safe::escape(line)
                ))
            }
        }
    }

    /// `:limit [torrent] down|up RATE`: one direction's limit of the session or of the selected
    /// torrent. A bad line only explains itself.
    fn limit(&mut self, arg: &str, items: &[Item], out: &mut Vec<Command>) {
        const USAGE: &str =
            "usage: :limit [torrent] down|up RATE (e.g. 500KiB, 1.5MB; 0 = unlimited)";
        let words: Vec<&str> = arg.split_whitespace().collect();
        let (scope, rest) = match words.split_first() {
            Some((&"torrent", rest)) => (true, rest),
            _ => (false, &words[..]),
        };
        let (direction, rate) = match rest {
            [d, rate] => match *d {
                "down" | "d" => (Direction::Down, *rate),
                "up" | "u" => (Direction::Up, *rate),
                _ => {
                    self.message = Some(USAGE.into());
                    return;
                }
            },
            _ => {
                self.message = Some(USAGE.into());
                return;
            }
        };
        let rate = match crate::units::parse_rate(rate) {
            Ok(r) => r,
            Err(e) => {
                self.message = Some(format!("limit not changed: {}", crate::safe::escape(&e)));
                return;
            }
        };
        let torrent = if scope {
            match self.selected_index(items) {
                Some(i) => Some(&items[i]),
                None => {
                    self.message = Some("limit not changed: no torrent selected".into());
                    return;
                }
            }
        } else {
            None
        };
        let shown = if rate == 0 {
            "unlimited".to_owned()
        } else {
            format!("{}/s", crate::units::bytes(rate))
        };
        self.message = Some(match torrent {
            Some(it) => format!(
                "{} limit of {}: {shown}",
                direction.name(),
                crate::safe::escape(&it.name)
            ),
            None => format!("session {} limit: {shown}", direction.name()),
        });
        out.push(Command::SetRateLimit {
            torrent: torrent.map(|it| it.info_hash),
            direction,
            rate,
        });
    }

    fn normal_key(&mut self, key: KeyEvent, items: &[Item], out: &mut Vec<Command>) {
        let rows = self.visible(items);
        let sel = self.selected_index(items).map(|i| &items[i]);
        match key.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('?') | KeyCode::F(1) => self.mode = Mode::Help,
            KeyCode::Char(':') => self.mode = Mode::Command(String::new()),
            KeyCode::Char('a') => self.mode = Mode::Command("file ".into()),
            KeyCode::Char('L') => self.mode = Mode::Command("limit ".into()),
            KeyCode::Char('/') => self.mode = Mode::Filter(self.filter.clone()),
            KeyCode::Esc if self.focus == Focus::Pane => self.focus = Focus::List,
            KeyCode::Esc => self.filter.clear(),
            KeyCode::Enter if self.focus == Focus::List => self.focus = Focus::Pane,
            KeyCode::Tab | KeyCode::Right | KeyCode::Char('l') => {
                self.set_tab(Tab::ALL[(self.tab.index() + 1) % Tab::ALL.len()])
            }
            KeyCode::BackTab | KeyCode::Left | KeyCode::Char('h') => {
                self.set_tab(Tab::ALL[(self.tab.index() + Tab::ALL.len() - 1) % Tab::ALL.len()])
            }
            KeyCode::Char(c @ '1'..='6') => {
                self.set_tab(Tab::ALL[usize::from(c as u8 - b'1')]);
            }
            KeyCode::Char('s') => {
                let i = SortKey::ALL
                    .iter()
                    .position(|k| *k == self.sort)
                    .unwrap_or(0);
                self.sort = SortKey::ALL[(i + 1) % SortKey::ALL.len()];
            }
            KeyCode::Char('S') => self.sort_desc = !self.sort_desc,
            KeyCode::Char('f') => {
                let i = StateFilter::ALL
                    .iter()
                    .position(|k| *k == self.state_filter)
                    .unwrap_or(0);
                self.state_filter = StateFilter::ALL[(i + 1) % StateFilter::ALL.len()];
            }
            KeyCode::Up | KeyCode::Char('k') => self.step(&rows, items, -1),
            KeyCode::Down | KeyCode::Char('j') => self.step(&rows, items, 1),
            KeyCode::PageUp => self.step(&rows, items, -(self.page() as isize)),
            KeyCode::PageDown => self.step(&rows, items, self.page() as isize),
            KeyCode::Home | KeyCode::Char('g') => self.step(&rows, items, isize::MIN / 2),
            KeyCode::End | KeyCode::Char('G') => self.step(&rows, items, isize::MAX / 2),
            KeyCode::Char(' ') if self.focus == Focus::Pane && self.tab == Tab::Files => {
                self.toggle_file(sel, out)
            }
            KeyCode::Char('p') | KeyCode::Char(' ') => match sel {
                Some(it) if matches!(it.status, Status::Paused) => {
                    out.push(Command::Resume(it.info_hash))
                }
                Some(it) if matches!(it.status, Status::Error(_)) => {
                    out.push(Command::Resume(it.info_hash))
                }
                Some(it) => out.push(Command::Pause(it.info_hash)),
                None => {}
            },
            KeyCode::Char('d') | KeyCode::Char('D') | KeyCode::Delete => {
                if let Some(it) = sel {
                    self.mode = Mode::Confirm(Confirm {
                        info_hash: it.info_hash,
                        name: it.name.clone(),
                        delete_data: key.code == KeyCode::Char('D'),
                    });
                }
            }
            KeyCode::Char('r') => {
                if let Some(it) = sel {
                    self.message = Some(format!("re-checking {}", crate::safe::escape(&it.name)));
                    out.push(Command::Recheck(it.info_hash));
                }
            }
            _ => {}
        }
    }

    fn page(&self) -> usize {
        match self.focus {
            Focus::List => self.list_height.max(1),
            Focus::Pane => self.pane_height.max(1),
        }
    }

    fn set_tab(&mut self, tab: Tab) {
        if tab != self.tab {
            self.tab = tab;
            self.pane_cursor = 0;
            self.pane_offset = 0;
        }
    }

    fn step(&mut self, rows: &[usize], items: &[Item], delta: isize) {
        match self.focus {
            Focus::List => {
                if rows.is_empty() {
                    return;
                }
                let cur = self
                    .selected
                    .and_then(|s| rows.iter().position(|&i| items[i].info_hash == s))
                    .unwrap_or(0);
                let next = cur.saturating_add_signed(delta).min(rows.len() - 1);
                self.selected = Some(items[rows[next]].info_hash);
                self.pane_cursor = 0;
                self.pane_offset = 0;
            }
            Focus::Pane => {
                let len = self.pane_len(self.selected_index(items).map(|i| &items[i]));
                self.pane_cursor = self
                    .pane_cursor
                    .saturating_add_signed(delta)
                    .min(len.saturating_sub(1));
            }
        }
    }

    fn toggle_file(&mut self, sel: Option<&Item>, out: &mut Vec<Command>) {
        let (Some(it), Some((ih, tree))) = (sel, &self.tree) else {
            return;
        };
        let Some(stats) = it.stats.as_ref().filter(|_| *ih == it.info_hash) else {
            return;
        };
        let mut wanted: Vec<bool> = stats.files.iter().map(|f| f.wanted).collect();
        let Some(files) = tree.files_under(self.pane_cursor) else {
            return;
        };
        let all = files
            .iter()
            .all(|&i| wanted.get(i).copied().unwrap_or(false));
        for &i in files {
            if let Some(w) = wanted.get_mut(i) {
                *w = !all;
            }
        }
        out.push(Command::SetWanted(it.info_hash, wanted));
    }
}

/// The offset that keeps row `pos` within a window of `height` rows starting at `offset`.
pub fn scroll_to(offset: usize, pos: usize, height: usize) -> usize {
    if pos < offset {
        pos
    } else if pos >= offset + height {
        pos + 1 - height
    } else {
        offset
    }
}

fn push(v: &mut Vec<u64>, x: u64) {
    if v.len() >= HISTORY {
        v.remove(0);
    }
    v.push(x);
}

fn expand_home(p: &str) -> std::path::PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => std::path::PathBuf::from(home).join(rest),
        _ => std::path::PathBuf::from(p),
    }
}
