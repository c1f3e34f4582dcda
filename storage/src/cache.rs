//! A bounded, least-recently-used cache of open file handles, shared by the worker threads.
//!
//! The bound is strict: a handle is only closed when no thread is using it, and a thread that needs a
//! new handle while every cached one is busy waits until one is released. Each storage operation holds
//! at most one handle at a time, so that wait always ends.
//!
//! I/O happens outside the lock: a [`Lease`] holds an `Arc<File>` and positioned I/O (`pread`/`pwrite`)
//! needs only `&File`, so several threads read and write the same file at once.

use std::collections::BTreeSet;
use std::fs::File;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// One open file.
#[derive(Debug)]
struct Slot {
    file_index: usize,
    handle: Arc<File>,
    writable: bool,
    /// Written through this handle since the last sync.
    dirty: bool,
    last_used: u64,
}

#[derive(Debug, Default)]
struct Inner {
    slots: Vec<Slot>,
    tick: u64,
    /// The most handles ever open at once (for tests and stats).
    peak: usize,
    /// Files written through a handle that was then closed before a sync: `flush` reopens them.
    dirty_closed: BTreeSet<usize>,
}

/// The cache itself; see the module docs.
#[derive(Debug)]
pub(crate) struct HandleCache {
    capacity: usize,
    inner: Mutex<Inner>,
    released: Condvar,
}

/// A handle borrowed from the cache; returning it (on drop) may wake a thread waiting for a slot.
#[derive(Debug)]
pub(crate) struct Lease<'a> {
    handle: Option<Arc<File>>,
    file_index: usize,
    cache: &'a HandleCache,
}

impl Lease<'_> {
    /// The open file.
    pub(crate) fn file(&self) -> &File {
        // Only `drop` takes the handle out.
        match &self.handle {
            Some(h) => h,
            None => unreachable_handle(),
        }
    }
}

impl Lease<'_> {
    /// Records that data was written through this handle, after the write: a [`HandleCache::take_dirty`]
    /// that ran during the write then leaves the file marked for the next flush.
    pub(crate) fn mark_written(&self) {
        let mut inner = self.cache.lock();
        let file = self.file();
        let slot = inner
            .slots
            .iter_mut()
            .find(|s| std::ptr::eq(Arc::as_ptr(&s.handle), file));
        match slot {
            Some(slot) => slot.dirty = true,
            // Not reachable while the lease is alive (a busy handle is never evicted); stay safe anyway.
            None => {
                inner.dirty_closed.insert(self.file_index);
            }
        }
    }
}

#[cold]
fn unreachable_handle() -> ! {
    // `handle` is `Some` from construction until `drop`; a `&self` method cannot observe `None`.
    panic!("file lease used after release")
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        // Take the lock so a waiter cannot check the reference count between our drop and our notify.
        let guard = self.cache.lock();
        self.handle = None;
        drop(guard);
        self.cache.released.notify_all();
    }
}

impl HandleCache {
    /// A cache holding at most `capacity` handles (at least 1).
    pub(crate) fn new(capacity: usize) -> HandleCache {
        HandleCache {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
            released: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` inconsistent in a way that matters here.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The maximum number of handles.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many handles are open now.
    pub(crate) fn open_count(&self) -> usize {
        self.lock().slots.len()
    }

    /// The most handles that were ever open at once.
    pub(crate) fn peak(&self) -> usize {
        self.lock().peak
    }

    /// Borrows the handle of file `file_index`, opening it with `open(writable)` if it is not cached (or
    /// is cached read-only and `writable` is wanted). `open` runs under the cache lock, so one file is
    /// never opened twice at once.
    pub(crate) fn acquire<E>(
        &self,
        file_index: usize,
        writable: bool,
        open: impl FnOnce(bool) -> Result<File, E>,
    ) -> Result<Lease<'_>, E> {
        let mut inner = self.lock();
        loop {
            inner.tick += 1;
            let tick = inner.tick;
            if let Some(pos) = inner.slots.iter().position(|s| s.file_index == file_index) {
                let slot = &mut inner.slots[pos];
                if slot.writable || !writable {
                    slot.last_used = tick;
                    slot.dirty |= writable;
                    let handle = Arc::clone(&slot.handle);
                    return Ok(Lease {
                        handle: Some(handle),
                        file_index,
                        cache: self,
                    });
                }
                // Cached read-only but we must write: replace it once nobody is reading through it.
                if Arc::strong_count(&slot.handle) == 1 {
                    inner.slots.swap_remove(pos);
                    continue;
                }
                inner = self.released.wait(inner).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            if inner.slots.len() >= self.capacity {
                let victim = inner
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| Arc::strong_count(&s.handle) == 1)
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(i, _)| i);
                match victim {
                    Some(i) => {
                        let old = inner.slots.swap_remove(i);
                        if old.dirty {
                            inner.dirty_closed.insert(old.file_index);
                        }
                    }
                    None => {
                        inner = self.released.wait(inner).unwrap_or_else(|e| e.into_inner());
                    }
                }
                continue;
            }
            let handle = Arc::new(open(writable)?);
            inner.slots.push(Slot {
                file_index,
                handle: Arc::clone(&handle),
                writable,
                dirty: writable,
                last_used: tick,
            });
            inner.peak = inner.peak.max(inner.slots.len());
            return Ok(Lease {
                handle: Some(handle),
                file_index,
                cache: self,
            });
        }
    }

    /// Takes the list of files to sync: the open dirty handles (marked clean now) and the indexes of
    /// dirty files whose handle was closed. If syncing fails, call [`HandleCache::mark_dirty`] again.
    pub(crate) fn take_dirty(&self) -> (Vec<(usize, Arc<File>)>, Vec<usize>) {
        let mut inner = self.lock();
        let open = inner
            .slots
            .iter_mut()
            .filter(|s| s.dirty)
            .map(|s| {
                s.dirty = false;
                (s.file_index, Arc::clone(&s.handle))
            })
            .collect();
        let closed = std::mem::take(&mut inner.dirty_closed)
            .into_iter()
            .collect();
        (open, closed)
    }

    /// Gives back the handles [`HandleCache::take_dirty`] lent out, once synced. While lent they
    /// count as in use, so a thread in `acquire` may be waiting for them (a full cache, or a
    /// read-only handle to replace): it is woken as a [`Lease`] drop would wake it, else it could wait
    /// for ever once no other lease is released.
    pub(crate) fn return_synced(&self, handles: Vec<(usize, Arc<File>)>) {
        let guard = self.lock();
        drop(handles);
        drop(guard);
        self.released.notify_all();
    }

    /// Remembers that `file_index` still needs a sync (after a failed one).
    pub(crate) fn mark_dirty(&self, file_index: usize) {
        self.lock().dirty_closed.insert(file_index);
    }

    /// Closes every handle nobody is using (e.g. before deleting or moving files).
    pub(crate) fn close_idle(&self) {
        let mut inner = self.lock();
        let mut kept = Vec::new();
        for slot in std::mem::take(&mut inner.slots) {
            if Arc::strong_count(&slot.handle) > 1 {
                kept.push(slot);
            } else if slot.dirty {
                inner.dirty_closed.insert(slot.file_index);
            }
        }
        inner.slots = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opener(dir: &std::path::Path, i: usize) -> impl FnOnce(bool) -> std::io::Result<File> {
        let path = dir.join(format!("f{i}"));
        move |w| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(w)
                .create(w)
                .truncate(false)
                .open(path)
        }
    }

    #[test]
    fn never_exceeds_capacity_and_evicts_lru() {
        let dir = tempfile::tempdir().unwrap();
        let cache = HandleCache::new(3);
        for i in 0..10 {
            let lease = cache.acquire(i, true, opener(dir.path(), i)).unwrap();
            assert!(cache.open_count() <= 3);
            drop(lease);
        }
        assert_eq!(cache.peak(), 3);
        // 7, 8, 9 are cached; touching 7 makes 8 the least recently used.
        drop(cache.acquire(7, false, opener(dir.path(), 7)).unwrap());
        drop(cache.acquire(0, false, opener(dir.path(), 0)).unwrap());
        let inner = cache.lock();
        let mut cached: Vec<usize> = inner.slots.iter().map(|s| s.file_index).collect();
        cached.sort_unstable();
        assert_eq!(cached, vec![0, 7, 9]);
        // 0..=6 and 8 were written and closed unsynced.
        assert_eq!(
            inner.dirty_closed.iter().copied().collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 5, 6, 8]
        );
    }

    #[test]
    fn waits_for_a_busy_handle_instead_of_exceeding_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(HandleCache::new(1));
        let first = cache.acquire(0, true, opener(dir.path(), 0)).unwrap();
        let c2 = Arc::clone(&cache);
        let path = dir.path().to_path_buf();
        let t = std::thread::spawn(move || {
            let lease = c2.acquire(1, true, opener(&path, 1)).unwrap();
            assert_eq!(c2.open_count(), 1);
            drop(lease);
        });
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert_eq!(cache.open_count(), 1);
        drop(first);
        t.join().unwrap();
        assert_eq!(cache.peak(), 1);
    }

    /// A flush holds the dirty handles while it syncs them; a writer that waits for one of them (the
    /// cache is full) must be woken when the flush gives them back. It was not: a piece write then
    /// waited for ever (a magnet download from libtorrent stalled a few pieces short with a resume
    /// checkpoint flushed after every piece).
    #[test]
    fn a_writer_waiting_for_a_handle_a_flush_holds_is_woken() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(HandleCache::new(1));
        drop(cache.acquire(0, true, opener(dir.path(), 0)).unwrap());
        let (synced, closed) = cache.take_dirty();
        assert_eq!((synced.len(), closed.len()), (1, 0));
        let before = cache.lock().tick;
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let c2 = Arc::clone(&cache);
        let path = dir.path().to_path_buf();
        std::thread::spawn(move || {
            drop(c2.acquire(1, true, opener(&path, 1)).unwrap());
            let _ = done_tx.send(());
        });
        // The writer counts a tick under the lock and gives the lock up only by waiting (no handle
        // is free): once the tick moved, it waits.
        while cache.lock().tick == before {
            std::thread::yield_now();
        }
        cache.return_synced(synced);
        assert!(
            done_rx
                .recv_timeout(std::time::Duration::from_secs(30))
                .is_ok(),
            "the writer was never woken"
        );
        assert_eq!(cache.peak(), 1);
    }
}
