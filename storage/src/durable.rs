//! Which written pieces are durable: a piece is durable once a sync of its files that *began after
//! its write returned* has completed. Resume records claim only durable pieces (see
//! [`crate::Storage::save_checkpoint`]), so neither `kill -9` nor a power loss leaves a record that
//! claims bytes the disk does not hold.
//!
//! The rule is kept apart from the files in [`Durability::flush`], which drives a [`SyncLayer`]: the
//! storage's real one `fdatasync`s its files; the tests' fake one keeps a model of the page cache and
//! the disk and interleaves writes with syncs without any timing.

use std::sync::{Mutex, MutexGuard, PoisonError};

use hyperblow_core::bitfield::Bitfield;

/// The files side of a flush.
pub(crate) trait SyncLayer {
    /// Why a sync failed.
    type Error;
    /// Takes the set of files written since the last call and syncs each (`fdatasync`), so that
    /// every write that returned before this call is durable; a file whose sync failed goes back
    /// into the set.
    fn sync_dirty(&self) -> Result<(), Self::Error>;
}

/// The pieces written and not yet covered by a completed sync, and those that are.
#[derive(Debug)]
pub(crate) struct Durability {
    inner: Mutex<Inner>,
    /// Held for a whole [`Durability::flush`]: one flush at a time per storage. A file's dirty mark
    /// taken by a flush is then always synced (by that flush) before a later flush decides, which
    /// is what makes "not dirty now" mean "synced after every write that returned so far".
    flushing: Mutex<()>,
}

#[derive(Debug)]
struct Inner {
    /// Written (the write returned) since the last flush began.
    pending: Vec<u32>,
    /// Bytes of those writes.
    pending_bytes: u64,
    /// Covered by a completed flush (or trusted from a record written after one).
    durable: Bitfield,
    /// A sync failed: from then on no piece becomes durable in this session (see
    /// [`Durability::flush`]).
    failed: bool,
}

impl Durability {
    /// Nothing written, nothing durable, for a torrent of `pieces` pieces.
    pub(crate) fn new(pieces: u32) -> Durability {
        Durability {
            inner: Mutex::new(Inner {
                pending: Vec::new(),
                pending_bytes: 0,
                durable: Bitfield::new(pieces),
                failed: false,
            }),
            flushing: Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that piece `index` (`bytes` long) was written: called after the write returned (and
    /// after its files were marked dirty), never before.
    pub(crate) fn wrote(&self, index: u32, bytes: u64) {
        let mut inner = self.lock();
        inner.pending.push(index);
        inner.pending_bytes = inner.pending_bytes.saturating_add(bytes);
    }

    /// Records pieces as durable without a sync: they come from a record that a flush preceded.
    pub(crate) fn trust(&self, pieces: &Bitfield) {
        let mut inner = self.lock();
        for i in 0..pieces.len().min(inner.durable.len()) {
            if pieces.get(i) {
                inner.durable.set(i);
            }
        }
    }

    /// Bytes written since the last flush began (what the next flush will have to make durable).
    pub(crate) fn pending_bytes(&self) -> u64 {
        self.lock().pending_bytes
    }

    /// The durable pieces.
    pub(crate) fn durable(&self) -> Bitfield {
        self.lock().durable.clone()
    }

    /// Syncs every dirty file of `layer` and then counts the pieces written before the flush began
    /// as durable.
    ///
    /// A failed sync ends all trust for the rest of the session: no piece written so far that is
    /// not durable yet, nor any written later, is ever counted durable. The kernel may have dropped
    /// any page that was dirty while the failed writeback ran, including pages of writes that
    /// returned during this flush (which are not in its list), and it reports such an error once
    /// per file, so a later successful sync proves nothing about them. Records then claim only what
    /// was durable before the failure, and a restart hashes the rest again.
    pub(crate) fn flush<L: SyncLayer>(&self, layer: &L) -> Result<(), L::Error> {
        let _one_at_a_time = self.flushing.lock().unwrap_or_else(PoisonError::into_inner);
        // The pieces first, the files second: every piece taken here had its files marked dirty
        // before, so the files are in this sync's set (or were taken by an earlier flush, which has
        // synced them since the mark, and the mark came after the write returned).
        let pieces = {
            let mut inner = self.lock();
            inner.pending_bytes = 0;
            std::mem::take(&mut inner.pending)
        };
        let synced = layer.sync_dirty();
        let mut inner = self.lock();
        if synced.is_err() {
            inner.failed = true;
        }
        if inner.failed {
            inner.pending.clear();
            inner.pending_bytes = 0;
            return synced;
        }
        for i in pieces {
            if i < inner.durable.len() {
                inner.durable.set(i);
            }
        }
        Ok(())
    }

    /// Whether a sync has failed in this session (nothing becomes durable any more).
    #[cfg(test)]
    pub(crate) fn failed(&self) -> bool {
        self.lock().failed
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::{BTreeMap, BTreeSet};
    use std::io;

    use proptest::prelude::*;

    use super::*;

    /// A model of files in the page cache and on the disk. A write puts a piece in the cache
    /// (volatile); a sync of a file moves that file's volatile pieces to the disk, or, failing,
    /// drops them (as the kernel may). `during_sync` runs inside the next sync, after it has taken
    /// its snapshot: the writes it makes returned after the sync began, so the sync does not cover
    /// them.
    #[derive(Default)]
    struct FakeFiles {
        volatile: RefCell<BTreeMap<usize, BTreeSet<u32>>>,
        on_disk: RefCell<BTreeSet<u32>>,
        dirty: RefCell<BTreeSet<usize>>,
        fail_next_sync: RefCell<bool>,
        during_sync: RefCell<Vec<(u32, usize)>>,
    }

    impl FakeFiles {
        /// Writes piece `p` into `file` and records it, in the storage's order: the write, the
        /// dirty mark, then [`Durability::wrote`].
        fn write(&self, d: &Durability, p: u32, file: usize) {
            self.volatile
                .borrow_mut()
                .entry(file)
                .or_default()
                .insert(p);
            self.dirty.borrow_mut().insert(file);
            d.wrote(p, 1);
        }
    }

    /// The fake needs the tracker inside `sync` to record the writes it makes there.
    struct Layer<'a> {
        files: &'a FakeFiles,
        durability: &'a Durability,
    }

    impl SyncLayer for Layer<'_> {
        type Error = io::Error;

        fn sync_dirty(&self) -> io::Result<()> {
            let dirty = std::mem::take(&mut *self.files.dirty.borrow_mut());
            let mut result = Ok(());
            for file in dirty {
                if let Err(e) = self.sync(file) {
                    self.files.dirty.borrow_mut().insert(file);
                    result = Err(e);
                }
            }
            result
        }
    }

    impl Layer<'_> {
        fn sync(&self, file: usize) -> io::Result<()> {
            let covered = self
                .files
                .volatile
                .borrow_mut()
                .remove(&file)
                .unwrap_or_default();
            // Writes that return while this sync runs: not covered by it.
            for (p, f) in std::mem::take(&mut *self.files.during_sync.borrow_mut()) {
                self.files.write(self.durability, p, f);
            }
            if std::mem::take(&mut *self.files.fail_next_sync.borrow_mut()) {
                // The failed writeback may drop every page of the file that was dirty while it
                // ran, also those of writes that returned during it.
                self.files.volatile.borrow_mut().remove(&file);
                return Err(io::Error::other("EIO"));
            }
            self.files.on_disk.borrow_mut().extend(covered);
            Ok(())
        }
    }

    fn durable_set(d: &Durability) -> BTreeSet<u32> {
        let b = d.durable();
        (0..b.len()).filter(|&i| b.get(i)).collect()
    }

    #[test]
    fn a_piece_written_after_a_sync_began_is_not_durable_until_the_next_one() {
        let files = FakeFiles::default();
        let d = Durability::new(8);
        let layer = Layer {
            files: &files,
            durability: &d,
        };
        files.write(&d, 0, 0);
        files.write(&d, 1, 1);
        // Piece 2 lands in file 0 while the flush syncs: after the flush began.
        files.during_sync.borrow_mut().push((2, 0));
        d.flush(&layer).unwrap();
        assert_eq!(durable_set(&d), BTreeSet::from([0, 1]));
        assert_eq!(d.pending_bytes(), 1);
        d.flush(&layer).unwrap();
        assert_eq!(durable_set(&d), BTreeSet::from([0, 1, 2]));
        assert_eq!(*files.on_disk.borrow(), BTreeSet::from([0, 1, 2]));
    }

    #[test]
    fn pieces_of_a_failed_sync_never_become_durable() {
        let files = FakeFiles::default();
        let d = Durability::new(8);
        let layer = Layer {
            files: &files,
            durability: &d,
        };
        files.write(&d, 0, 1);
        d.flush(&layer).unwrap();
        files.write(&d, 3, 0);
        *files.fail_next_sync.borrow_mut() = true;
        assert!(d.flush(&layer).is_err());
        assert!(d.failed());
        // The file is synced again next time, but piece 3's bytes may be gone: never claimed.
        // Nor is anything written later: the session no longer trusts its syncs. What was
        // durable before the failure stays durable.
        files.write(&d, 4, 0);
        d.flush(&layer).unwrap();
        assert_eq!(durable_set(&d), BTreeSet::from([0]));
        assert_eq!(d.pending_bytes(), 0);
        assert!(!files.on_disk.borrow().contains(&3));
    }

    #[test]
    fn a_write_that_returned_during_a_failed_sync_is_never_durable() {
        let files = FakeFiles::default();
        let d = Durability::new(8);
        let layer = Layer {
            files: &files,
            durability: &d,
        };
        files.write(&d, 1, 0);
        // Piece 2 lands in file 0 while the failing sync runs: the failed writeback may take
        // its page too, and the kernel reports that error only once.
        files.during_sync.borrow_mut().push((2, 0));
        *files.fail_next_sync.borrow_mut() = true;
        assert!(d.flush(&layer).is_err());
        d.flush(&layer).unwrap();
        assert!(durable_set(&d).is_empty());
        assert!(files.on_disk.borrow().is_empty());
    }

    /// One step of a random history: a write of a piece into a file, a write that lands during
    /// the next sync, a flush, or a flush whose first sync fails.
    #[derive(Debug, Clone)]
    enum Step {
        Write(u32, usize),
        WriteDuringSync(u32, usize),
        Flush,
        FailingFlush,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u32..32, 0usize..3).prop_map(|(p, f)| Step::Write(p, f)),
            2 => (0u32..32, 0usize..3).prop_map(|(p, f)| Step::WriteDuringSync(p, f)),
            2 => Just(Step::Flush),
            1 => Just(Step::FailingFlush),
        ]
    }

    proptest! {
        /// Whatever the interleaving, every piece counted durable is on the fake disk: the record
        /// never lists a piece written after the last completed sync began.
        #[test]
        fn durable_pieces_are_always_on_disk(steps in proptest::collection::vec(step(), 0..60)) {
            let files = FakeFiles::default();
            let d = Durability::new(32);
            let layer = Layer { files: &files, durability: &d };
            // A piece is written once (a verified piece is never rewritten while had), so a
            // piece id names one write.
            let mut used = BTreeSet::new();
            for s in steps {
                match s {
                    Step::Write(p, f) => {
                        if used.insert(p) {
                            files.write(&d, p, f);
                        }
                    }
                    Step::WriteDuringSync(p, f) => {
                        if used.insert(p) {
                            files.during_sync.borrow_mut().push((p, f));
                        }
                    }
                    Step::Flush => {
                        let _ = d.flush(&layer);
                    }
                    Step::FailingFlush => {
                        *files.fail_next_sync.borrow_mut() = true;
                        let _ = d.flush(&layer);
                        *files.fail_next_sync.borrow_mut() = false;
                    }
                }
                let durable = durable_set(&d);
                let on_disk = files.on_disk.borrow();
                prop_assert!(durable.is_subset(&on_disk), "durable {durable:?} on disk {on_disk:?}");
            }
        }
    }
}
