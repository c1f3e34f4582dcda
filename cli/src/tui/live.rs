//! The real session behind the UI: a `SessionHandle` (commands in, stats and events out), the
//! state directory that remembers every torrent, and the download queue.
//!
//! Nothing here blocks the UI for long: commands that take time (adding a torrent whose data must
//! be checked, removing one, fetching a magnet's metadata) are kept as [`Pending`] answers and
//! polled on each [`Session::refresh`]; only the stats snapshot is waited for (it is answered at
//! once by the event loop).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant as StdInstant};

use hyperblow_core::magnet::MagnetLink;
use hyperblow_core::metainfo::Metainfo;
use hyperblow_core::time::Instant;
use hyperblow_core::InfoHash;
use hyperblow_driver::engine::{Event, TorrentId, TorrentState, TorrentStats};
use hyperblow_driver::{
    AddMagnetRequest, AddTorrentRequest, AddedMagnet, AddedTorrent, EventStream, Pending,
    RateLimits, RecvError, SessionEvent, SessionHandle, StartKind,
};

use super::model::{Command, Details, Item, Session, Status};
use super::state::{Loaded, Record, Saved, StateDir};
use crate::safe;

/// How often stats are fetched when nothing else happens.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// One torrent of the session.
#[derive(Debug)]
struct Entry {
    info_hash: InfoHash,
    name: String,
    id: Option<TorrentId>,
    record: Record,
    meta: Option<Metainfo>,
    magnet: Option<MagnetLink>,
    details: Option<Details>,
    /// Paused by the scheduler for want of a download slot (the engine has it paused).
    queued: bool,
    /// Being added (checking existing data): pieces checked of total.
    checking: Option<(u32, u32)>,
    /// Why adding it failed.
    error: Option<String>,
    start: Option<StartKind>,
    /// A command waits for its answer (no other is started for it meanwhile).
    busy: bool,
    /// Its own rate limits (set from the UI; applied again whenever it is added to the engine).
    limits: RateLimits,
}

/// A command whose answer has not come yet.
#[derive(Debug)]
enum Op {
    Add(InfoHash, Pending<AddedTorrent>),
    AddMagnet(InfoHash, Pending<AddedMagnet>),
    /// The removal before a re-check's add.
    RecheckRemove(InfoHash, Pending<()>),
    Remove(InfoHash, Pending<()>, bool),
    TorrentFile(InfoHash, Pending<Option<Vec<u8>>>),
    Simple(InfoHash, &'static str, Pending<()>),
    /// A change of the session-wide rate limits.
    Limit(Pending<()>),
}

/// The live session.
#[derive(Debug)]
pub struct Live {
    handle: SessionHandle,
    events: EventStream,
    state: StateDir,
    origin: StdInstant,
    entries: Vec<Entry>,
    by_id: HashMap<TorrentId, InfoHash>,
    ops: Vec<Op>,
    items: Vec<Item>,
    messages: Vec<String>,
    stats: Vec<TorrentStats>,
    last_stats: Option<StdInstant>,
    dirty: bool,
    next_order: u64,
    /// Where torrents added from the UI go.
    pub output_dir: PathBuf,
    /// Peers given with `--peer`, tried for every torrent.
    pub peers: Vec<SocketAddr>,
    /// Most torrents downloading at once; the rest wait, queued.
    pub max_active: usize,
    /// The session-wide rate limits in force (the session is started with them, see
    /// `--max-download-rate`; the UI changes them).
    pub session_limits: RateLimits,
}

fn poll_now<T>(p: &mut Pending<T>) -> Poll<Result<T, hyperblow_driver::SessionError>> {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(p).poll(&mut cx)
}

impl Live {
    /// The UI's side of a session just started. `origin` is when it was started (the engine's
    /// clock counts from about then). The saved torrents are added by [`Live::restore`].
    pub fn new(
        handle: SessionHandle,
        origin: StdInstant,
        state: StateDir,
        output_dir: PathBuf,
        max_active: usize,
    ) -> Live {
        let events = handle.events();
        Live {
            handle,
            events,
            state,
            origin,
            entries: Vec::new(),
            by_id: HashMap::new(),
            ops: Vec::new(),
            items: Vec::new(),
            messages: Vec::new(),
            stats: Vec::new(),
            last_stats: None,
            dirty: true,
            next_order: 0,
            output_dir,
            peers: Vec::new(),
            max_active: max_active.max(1),
            session_limits: RateLimits::default(),
        }
    }

    /// The engine's clock now.
    pub fn now(&self) -> Instant {
        Instant::from_origin(self.origin.elapsed())
    }

    /// Whether an answer is awaited (the UI then polls more often).
    pub fn busy(&self) -> bool {
        !self.ops.is_empty()
    }

    /// Adds every torrent saved in the state directory, reporting records that do not load.
    pub fn restore(&mut self) {
        let (loaded, problems) = self.state.load();
        for p in problems {
            self.messages.push(format!(
                "state: skipped {} (any key hides this)",
                safe::escape(&p)
            ));
        }
        for l in loaded {
            self.add_loaded(l);
        }
    }

    fn add_loaded(&mut self, l: Loaded) {
        let Loaded {
            info_hash,
            source,
            record,
        } = l;
        self.next_order = self.next_order.max(record.order + 1);
        let (meta, magnet) = match source {
            Saved::Torrent(m) => (Some(*m), None),
            Saved::Magnet(m) => (None, Some(*m)),
        };
        self.start_entry(info_hash, record, meta, magnet, false);
    }

    /// Adds a `.torrent` file's torrent (from the command line or `:file`).
    pub fn add_file(&mut self, path: &std::path::Path, paused: bool) {
        let meta = match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| Metainfo::from_bytes(&b).map_err(|e| format!("not a valid torrent: {e}")))
        {
            Ok(m) => m,
            Err(e) => {
                self.messages.push(format!(
                    "{}: {}",
                    safe::escape(&path.display().to_string()),
                    safe::escape(&e)
                ));
                return;
            }
        };
        let ih = meta.info_hash();
        if self.entry(&ih).is_some() {
            self.messages.push(format!(
                "{} is already in the session",
                safe::escape(meta.info.name())
            ));
            return;
        }
        let mut record = self.new_record(None);
        record.paused = paused;
        if let Err(e) = self.state.save_torrent(&ih, &meta.to_bytes()) {
            self.messages
                .push(format!("cannot save to the state directory: {e}"));
        }
        self.start_entry(ih, record, Some(meta), None, true);
    }

    /// Adds a magnet link's torrent.
    pub fn add_magnet(&mut self, link: &str, paused: bool) {
        let parsed = match MagnetLink::parse(link) {
            Ok(l) => l,
            Err(e) => {
                self.messages.push(format!(
                    "not a usable magnet link: {}",
                    safe::escape(&e.to_string())
                ));
                return;
            }
        };
        let ih = parsed.info_hash;
        if self.entry(&ih).is_some() {
            self.messages
                .push(format!("{} is already in the session", ih.to_hex()));
            return;
        }
        let mut record = self.new_record(Some(link.trim().to_owned()));
        record.paused = paused;
        self.start_entry(ih, record, None, Some(parsed), true);
    }

    fn new_record(&mut self, magnet: Option<String>) -> Record {
        let order = self.next_order;
        self.next_order += 1;
        Record {
            output_dir: self.output_dir.clone(),
            wanted: None,
            paused: false,
            order,
            magnet,
        }
    }

    fn start_entry(
        &mut self,
        info_hash: InfoHash,
        record: Record,
        meta: Option<Metainfo>,
        magnet: Option<MagnetLink>,
        save: bool,
    ) {
        let name = match (&meta, &magnet) {
            (Some(m), _) => m.info.name().to_owned(),
            (None, Some(l)) => l.display_name.clone().unwrap_or_else(|| info_hash.to_hex()),
            (None, None) => info_hash.to_hex(),
        };
        // Join the queue if every download slot is taken (a complete torrent is let out at once).
        let queued = !record.paused && self.active_count() >= self.max_active;
        let mut e = Entry {
            info_hash,
            name,
            id: None,
            details: meta.as_ref().map(Details::of),
            meta,
            magnet,
            record,
            queued,
            checking: None,
            error: None,
            start: None,
            busy: false,
            limits: RateLimits::default(),
        };
        if save {
            self.save(&e);
        }
        self.issue_add(&mut e, false);
        self.entries.push(e);
        self.dirty = true;
    }

    fn issue_add(&mut self, e: &mut Entry, force_check: bool) {
        let paused = e.record.paused || e.queued;
        if let Some(meta) = &e.meta {
            let mut req = AddTorrentRequest::new(meta.clone(), e.record.output_dir.clone())
                .peers(self.peers.clone())
                .paused(paused)
                .force_check(force_check);
            if let Some(w) = &e.record.wanted {
                req = req.wanted_files(w.clone());
            }
            e.checking = Some((0, meta.info.layout().piece_count()));
            e.busy = true;
            self.ops
                .push(Op::Add(e.info_hash, self.handle.add_torrent(req)));
        } else if let Some(link) = &e.magnet {
            let mut req = AddMagnetRequest::new(link.clone(), e.record.output_dir.clone())
                .peers(self.peers.clone())
                .paused(paused);
            if let Some(w) = &e.record.wanted {
                req = req.wanted_files(w.clone());
            }
            e.busy = true;
            self.ops
                .push(Op::AddMagnet(e.info_hash, self.handle.add_magnet(req)));
        }
    }

    fn save(&mut self, e: &Entry) {
        if let Err(err) = self.state.save_record(&e.info_hash, &e.record) {
            self.messages.push(format!(
                "cannot save the state of {}: {err}",
                safe::escape(&e.name)
            ));
        }
    }

    fn entry(&self, ih: &InfoHash) -> Option<usize> {
        self.entries.iter().position(|e| e.info_hash == *ih)
    }

    fn stats_of(&self, id: Option<TorrentId>) -> Option<&TorrentStats> {
        let id = id?;
        self.stats.iter().find(|s| s.id == id)
    }

    /// Torrents holding a download slot: not paused, not queued, and not known to be complete.
    fn active_count(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| !e.record.paused && !e.queued && e.error.is_none())
            .filter(|e| {
                !matches!(
                    self.stats_of(e.id).map(|s| &s.state),
                    Some(TorrentState::Seeding | TorrentState::Error(_))
                )
            })
            .count()
    }

    /// Lets queued torrents out while slots are free (complete ones at once), and queues the
    /// newest downloads beyond the limit.
    fn schedule(&mut self) {
        let now_stats: HashMap<TorrentId, (TorrentState, bool)> = self
            .stats
            .iter()
            .map(|s| {
                (
                    s.id,
                    (
                        s.state.clone(),
                        s.have_bytes >= s.wanted_bytes && s.wanted_bytes > 0,
                    ),
                )
            })
            .collect();
        let snapshot: Vec<Slot> = self
            .entries
            .iter()
            .map(|e| {
                let st = e.id.and_then(|id| now_stats.get(&id));
                Slot {
                    eligible: !e.record.paused && e.error.is_none() && !e.busy && e.id.is_some(),
                    queued: e.queued,
                    complete: st.is_some_and(|s| s.1 || s.0 == TorrentState::Seeding),
                    failed: st.is_some_and(|s| matches!(s.0, TorrentState::Error(_))),
                }
            })
            .collect();
        let (start, stop) = plan_queue(&snapshot, self.max_active);
        for i in start {
            let e = &mut self.entries[i];
            e.queued = false;
            if let Some(id) = e.id {
                self.ops
                    .push(Op::Simple(e.info_hash, "resume", self.handle.resume(id)));
            }
        }
        for i in stop {
            let e = &mut self.entries[i];
            e.queued = true;
            if let Some(id) = e.id {
                self.ops
                    .push(Op::Simple(e.info_hash, "queue", self.handle.pause(id)));
            }
        }
    }

    fn poll_ops(&mut self) {
        let ops = std::mem::take(&mut self.ops);
        let mut left = Vec::with_capacity(ops.len());
        for mut op in ops {
            if self.try_finish(&mut op) {
                self.dirty = true;
            } else {
                left.push(op);
            }
        }
        // Commands issued while finishing (a re-check's add, a magnet's .torrent) come after.
        left.append(&mut self.ops);
        self.ops = left;
    }

    /// Polls `op`; if its answer is in, acts on it and returns true.
    fn try_finish(&mut self, op: &mut Op) -> bool {
        match op {
            Op::Add(ih, p) => {
                let ih = *ih;
                let Poll::Ready(r) = poll_now(p) else {
                    return false;
                };
                let Some(k) = self.entry(&ih) else {
                    return true;
                };
                let e = &mut self.entries[k];
                e.busy = false;
                e.checking = None;
                match r {
                    Ok(a) => {
                        e.id = Some(a.id);
                        e.start = Some(a.start);
                        self.by_id.insert(a.id, ih);
                        if e.limits != RateLimits::default() {
                            let p = self.handle.set_rate_limits(Some(a.id), e.limits);
                            self.ops.push(Op::Simple(ih, "rate limit", p));
                        }
                        let how = match a.start {
                            StartKind::Fresh => "new download".to_owned(),
                            StartKind::Resumed => format!(
                                "{}/{} pieces from resume data (no re-check)",
                                a.have_pieces, a.total_pieces
                            ),
                            StartKind::Checked => {
                                format!(
                                    "checked: {}/{} pieces on disk",
                                    a.have_pieces, a.total_pieces
                                )
                            }
                        };
                        self.messages
                            .push(format!("{}: {how}", safe::escape(&e.name)));
                    }
                    Err(err) => {
                        let msg = err.to_string();
                        self.messages.push(format!(
                            "{}: {}",
                            safe::escape(&e.name),
                            safe::escape(&msg)
                        ));
                        e.error = Some(msg);
                    }
                }
            }
            Op::AddMagnet(ih, p) => {
                let ih = *ih;
                let Poll::Ready(r) = poll_now(p) else {
                    return false;
                };
                let Some(k) = self.entry(&ih) else {
                    return true;
                };
                let e = &mut self.entries[k];
                e.busy = false;
                match r {
                    Ok(a) => {
                        e.id = Some(a.id);
                        self.by_id.insert(a.id, ih);
                        if e.limits != RateLimits::default() {
                            let p = self.handle.set_rate_limits(Some(a.id), e.limits);
                            self.ops.push(Op::Simple(ih, "rate limit", p));
                        }
                    }
                    Err(err) => e.error = Some(err.to_string()),
                }
            }
            Op::RecheckRemove(ih, p) => {
                let ih = *ih;
                let Poll::Ready(r) = poll_now(p) else {
                    return false;
                };
                let Some(k) = self.entry(&ih) else {
                    return true;
                };
                if let Err(err) = r {
                    self.messages
                        .push(format!("re-check: {}", safe::escape(&err.to_string())));
                }
                let mut e = self.entries.remove(k);
                if let Some(id) = e.id.take() {
                    self.by_id.remove(&id);
                }
                e.error = None;
                self.issue_add(&mut e, true);
                self.entries.insert(k, e);
            }
            Op::Remove(ih, p, delete) => {
                let (ih, delete) = (*ih, *delete);
                let Poll::Ready(r) = poll_now(p) else {
                    return false;
                };
                let Some(k) = self.entry(&ih) else {
                    return true;
                };
                let e = self.entries.remove(k);
                if let Some(id) = e.id {
                    self.by_id.remove(&id);
                }
                if let Err(err) = self.state.forget(&ih) {
                    self.messages
                        .push(format!("cannot update the state directory: {err}"));
                }
                match r {
                    Ok(()) => self.messages.push(format!(
                        "removed {}{}",
                        safe::escape(&e.name),
                        if delete { " and its data" } else { "" }
                    )),
                    Err(err) => self.messages.push(format!(
                        "removed {}, but: {}",
                        safe::escape(&e.name),
                        safe::escape(&err.to_string())
                    )),
                }
            }
            Op::TorrentFile(ih, p) => {
                let ih = *ih;
                let Poll::Ready(r) = poll_now(p) else {
                    return false;
                };
                if let Ok(Some(bytes)) = r {
                    if let Ok(meta) = Metainfo::from_bytes(&bytes) {
                        let _ = self.state.save_torrent(&ih, &bytes);
                        if let Some(k) = self.entry(&ih) {
                            let e = &mut self.entries[k];
                            e.name = meta.info.name().to_owned();
                            e.details = Some(Details::of(&meta));
                            e.meta = Some(meta);
                        }
                    }
                }
            }
            Op::Simple(ih, what, p) => {
                let (ih, what) = (*ih, *what);
                let Poll::Ready(r) = poll_now(p) else {
                    return false;
                };
                if let Some(k) = self.entry(&ih) {
                    self.entries[k].busy = false;
                }
                if let Err(err) = r {
                    self.messages
                        .push(format!("{what}: {}", safe::escape(&err.to_string())));
                }
            }
            Op::Limit(p) => {
                let Poll::Ready(r) = poll_now(p) else {
                    return false;
                };
                if let Err(err) = r {
                    self.messages
                        .push(format!("rate limit: {}", safe::escape(&err.to_string())));
                }
            }
        }
        true
    }

    fn event(&mut self, ev: SessionEvent) {
        match ev {
            SessionEvent::Checking {
                info_hash,
                checked,
                total,
            } => {
                if let Some(k) = self.entry(&info_hash) {
                    self.entries[k].checking = Some((checked, total));
                }
            }
            SessionEvent::MagnetReady(a) => {
                if let Some(k) = self.entry(&a.info_hash) {
                    self.entries[k].start = Some(a.start);
                }
                self.ops
                    .push(Op::TorrentFile(a.info_hash, self.handle.torrent_file(a.id)));
            }
            SessionEvent::StorageError { message, .. } => {
                self.messages.push(safe::escape(&message).into_owned());
            }
            SessionEvent::Engine(Event::TorrentCompleted(id)) => {
                if let Some(ih) = self.by_id.get(&id).copied() {
                    if let Some(k) = self.entry(&ih) {
                        self.messages
                            .push(format!("{}: complete", safe::escape(&self.entries[k].name)));
                    }
                }
                self.last_stats = None;
            }
            _ => {}
        }
    }

    /// Shuts the session down (trackers told `stopped`, files flushed, resume data saved), waiting
    /// at most `bound`.
    pub fn shutdown(&self, bound: Duration) -> Result<(), hyperblow_driver::SessionError> {
        self.handle.shutdown().wait_timeout(bound)
    }

    fn rebuild(&mut self) {
        let items: Vec<Item> = self
            .entries
            .iter()
            .map(|e| {
                let stats = self.stats_of(e.id).cloned();
                let status = if let Some((c, t)) = e.checking.filter(|_| e.id.is_none()) {
                    Status::Checking {
                        checked: c,
                        total: t,
                    }
                } else if let Some(err) = &e.error {
                    Status::Error(err.clone())
                } else if e.queued {
                    Status::Queued
                } else if let Some(s) = &stats {
                    Status::from_state(&s.state)
                } else if e.magnet.is_some() && e.meta.is_none() {
                    Status::Metadata
                } else {
                    Status::Checking {
                        checked: 0,
                        total: e.details.as_ref().map_or(0, |d| d.pieces),
                    }
                };
                let name = stats
                    .as_ref()
                    .map(|s| s.name.clone())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| e.name.clone());
                Item {
                    info_hash: e.info_hash,
                    name,
                    output_dir: e.record.output_dir.clone(),
                    status,
                    stats,
                    details: e.details.clone(),
                    start: e.start,
                    limits: e.limits,
                }
            })
            .collect();
        self.items = items;
    }
}

/// One torrent as the queue sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Not paused by the user, not failed, in the engine, no command pending.
    pub eligible: bool,
    /// Waiting in the queue now.
    pub queued: bool,
    /// Every wanted piece is verified.
    pub complete: bool,
    /// Stopped by an error.
    pub failed: bool,
}

/// Which queued torrents to start and which running downloads to queue so that at most
/// `max_active` incomplete torrents run: complete torrents always run (seeding takes no slot);
/// the earlier a torrent was added, the earlier it gets a slot. Returns (start, stop) indices.
pub fn plan_queue(slots: &[Slot], max_active: usize) -> (Vec<usize>, Vec<usize>) {
    let mut start = Vec::new();
    let mut stop = Vec::new();
    let mut active = 0;
    for (i, s) in slots.iter().enumerate() {
        if !s.eligible || s.failed {
            continue;
        }
        if s.complete {
            if s.queued {
                start.push(i);
            }
            continue;
        }
        if active < max_active {
            active += 1;
            if s.queued {
                start.push(i);
            }
        } else if !s.queued {
            stop.push(i);
        }
    }
    (start, stop)
}

impl Session for Live {
    fn refresh(&mut self) -> bool {
        loop {
            match self.events.try_recv() {
                Ok(ev) => {
                    self.event(ev);
                    self.dirty = true;
                }
                Err(RecvError::Empty) => break,
                Err(RecvError::Closed) => break,
            }
        }
        self.poll_ops();
        let due = self.last_stats.is_none_or(|t| t.elapsed() >= STATS_EVERY);
        if due || self.dirty {
            if let Ok(stats) = self.handle.stats().wait_timeout(Duration::from_secs(2)) {
                self.stats = stats;
            }
            self.last_stats = Some(StdInstant::now());
            self.schedule();
            self.rebuild();
            self.dirty = false;
            return true;
        }
        false
    }

    fn items(&self) -> &[Item] {
        &self.items
    }

    fn command(&mut self, command: Command) {
        self.dirty = true;
        let ih = match &command {
            Command::SetRateLimit {
                torrent: None,
                direction,
                rate,
            } => {
                let limits = direction.apply(self.session_limits, *rate);
                self.session_limits = limits;
                let p = self.handle.set_rate_limits(None, limits);
                self.ops.push(Op::Limit(p));
                return;
            }
            Command::AddFile(p) => return self.add_file(&p.clone(), false),
            Command::AddMagnet(l) => return self.add_magnet(&l.clone(), false),
            Command::Pause(ih)
            | Command::Resume(ih)
            | Command::Recheck(ih)
            | Command::SetWanted(ih, _)
            | Command::SetRateLimit {
                torrent: Some(ih), ..
            }
            | Command::Remove { info_hash: ih, .. } => *ih,
        };
        let Some(k) = self.entry(&ih) else { return };
        if self.entries[k].busy {
            self.messages
                .push("busy with the previous command for it, try again".into());
            return;
        }
        let id = self.entries[k].id;
        match command {
            Command::Pause(_) => {
                let e = &mut self.entries[k];
                e.record.paused = true;
                let was_queued = std::mem::replace(&mut e.queued, false);
                let e_snapshot = e.record.clone();
                let _ = self.state.save_record(&ih, &e_snapshot);
                if let (Some(id), false) = (id, was_queued) {
                    self.ops
                        .push(Op::Simple(ih, "pause", self.handle.pause(id)));
                }
            }
            Command::Resume(_) => {
                let full = self.active_count() >= self.max_active;
                let e = &mut self.entries[k];
                e.record.paused = false;
                let had_error = e.error.take().is_some();
                let complete =
                    e.id.and_then(|id| self.stats.iter().find(|s| s.id == id))
                        .is_some_and(|s| s.have_bytes >= s.wanted_bytes);
                e.queued = full && !complete;
                let rec = e.record.clone();
                let queued = e.queued;
                let _ = self.state.save_record(&ih, &rec);
                match id {
                    Some(id) if !queued => {
                        self.ops
                            .push(Op::Simple(ih, "resume", self.handle.resume(id)))
                    }
                    None if had_error => {
                        let mut e = self.entries.remove(k);
                        self.issue_add(&mut e, false);
                        self.entries.insert(k, e);
                    }
                    _ => {}
                }
            }
            Command::Remove { delete_data, .. } => match id {
                Some(id) => {
                    self.entries[k].busy = true;
                    self.ops.push(Op::Remove(
                        ih,
                        self.handle.remove(id, delete_data),
                        delete_data,
                    ));
                }
                None => {
                    let e = self.entries.remove(k);
                    let _ = self.state.forget(&ih);
                    self.messages
                        .push(format!("removed {}", safe::escape(&e.name)));
                }
            },
            Command::Recheck(_) => match (id, self.entries[k].meta.is_some()) {
                (Some(id), true) => {
                    self.entries[k].busy = true;
                    self.entries[k].checking = Some((0, 0));
                    self.ops
                        .push(Op::RecheckRemove(ih, self.handle.remove(id, false)));
                }
                _ => self
                    .messages
                    .push("nothing to re-check before the metadata is known".into()),
            },
            Command::SetWanted(_, wanted) => {
                let e = &mut self.entries[k];
                e.record.wanted = Some(wanted.clone());
                let rec = e.record.clone();
                let _ = self.state.save_record(&ih, &rec);
                if let Some(id) = id {
                    self.ops.push(Op::Simple(
                        ih,
                        "file selection",
                        self.handle.set_wanted_files(id, wanted),
                    ));
                }
            }
            Command::SetRateLimit {
                direction, rate, ..
            } => {
                let e = &mut self.entries[k];
                e.limits = direction.apply(e.limits, rate);
                // Not added yet: the limits are applied when it is.
                if let Some(id) = id {
                    let p = self.handle.set_rate_limits(Some(id), e.limits);
                    self.ops.push(Op::Simple(ih, "rate limit", p));
                }
            }
            Command::AddFile(_) | Command::AddMagnet(_) => {}
        }
    }

    fn take_messages(&mut self) -> Vec<String> {
        std::mem::take(&mut self.messages)
    }

    fn rate_limits(&self) -> RateLimits {
        self.session_limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(queued: bool, complete: bool) -> Slot {
        Slot {
            eligible: true,
            queued,
            complete,
            failed: false,
        }
    }

    #[test]
    fn limit_commands_reach_a_real_session() {
        use super::super::model::Direction;
        let dir = tempfile::tempdir().expect("tempdir");
        let config = hyperblow_driver::SessionConfig {
            listen_port: 0,
            bind_addr: std::net::Ipv4Addr::LOCALHOST.into(),
            ..hyperblow_driver::SessionConfig::default()
        };
        let handle = hyperblow_tokio::start(config).expect("session");
        let store = StateDir::open(&dir.path().join("state")).expect("state dir");
        let mut live = Live::new(handle, StdInstant::now(), store, dir.path().to_owned(), 3);
        live.session_limits = RateLimits {
            download: 0,
            upload: 4096,
        };
        live.command(Command::SetRateLimit {
            torrent: None,
            direction: Direction::Down,
            rate: 500 * 1024,
        });
        // Only the named direction changes.
        assert_eq!(
            live.rate_limits(),
            RateLimits {
                download: 500 * 1024,
                upload: 4096,
            }
        );
        // A torrent the session does not have is ignored.
        live.command(Command::SetRateLimit {
            torrent: Some(InfoHash([7; 20])),
            direction: Direction::Up,
            rate: 1,
        });
        let deadline = StdInstant::now() + Duration::from_secs(20);
        while live.busy() && StdInstant::now() < deadline {
            live.refresh();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!live.busy(), "the session never answered");
        let messages = live.take_messages();
        assert!(messages.is_empty(), "{messages:?}");
        live.shutdown(Duration::from_secs(10)).expect("shutdown");
    }

    #[test]
    fn the_queue_keeps_at_most_max_active_downloads_oldest_first() {
        // Three downloads running with a limit of 2: the newest is queued.
        let s = [slot(false, false), slot(false, false), slot(false, false)];
        assert_eq!(plan_queue(&s, 2), (vec![], vec![2]));
        // One running, two queued, limit 2: the older queued one starts.
        let s = [slot(false, false), slot(true, false), slot(true, false)];
        assert_eq!(plan_queue(&s, 2), (vec![1], vec![]));
        // A queued torrent that is complete starts at once and takes no slot.
        let s = [slot(false, false), slot(false, false), slot(true, true)];
        assert_eq!(plan_queue(&s, 2), (vec![2], vec![]));
        // Paused and failed torrents are left alone and take no slot.
        let mut paused = slot(false, false);
        paused.eligible = false;
        let mut failed = slot(false, false);
        failed.failed = true;
        let s = [paused, failed, slot(true, false)];
        assert_eq!(plan_queue(&s, 1), (vec![2], vec![]));
    }
}
