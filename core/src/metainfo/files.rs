//! The file layout of a torrent and the map between pieces (or blocks) and byte ranges of files.
//!
//! A v1 torrent's content is the concatenation of its files in order; pieces cut that stream into
//! `piece length` chunks regardless of file boundaries. Everything here is pure arithmetic so that
//! storage (which file regions a block touches), file selection (which pieces a set of files needs) and
//! resume can share it.

use std::ops::Range;

use super::MetainfoError;

/// One file of a torrent, with its place in the concatenated content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// The path relative to the download directory, as components. For a multi-file torrent the first
    /// component is the torrent's name (its directory); for a single-file torrent it is just the name.
    /// Every component has been checked to be safe (see [`check_component`]).
    pub path: Vec<String>,
    /// Length in bytes; may be zero (such a file covers no bytes of any piece).
    pub length: u64,
    /// Offset of the file's first byte in the concatenated content.
    pub offset: u64,
    /// BEP 47 padding file (`attr` contains `p`): its content is zeros and need not be written to disk.
    pub padding: bool,
}

impl FileEntry {
    /// The path joined with `/`, for display and error messages.
    pub fn display_path(&self) -> String {
        self.path.join("/")
    }
}

/// A contiguous byte range inside one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSlice {
    /// Index into [`Layout::files`].
    pub file_index: usize,
    /// Offset within that file.
    pub offset: u64,
    /// Number of bytes (never zero).
    pub length: u64,
}

/// Files, piece length and derived sizes of a torrent; the piece <-> file arithmetic lives here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    files: Vec<FileEntry>,
    piece_length: u32,
    total_length: u64,
    piece_count: u32,
}

/// Checks one path component (or a torrent name) and explains the first problem found.
///
/// Rejected: empty, `.`, `..`, anything containing `/`, `\` or NUL (which would let a torrent write
/// outside its directory or be cut short by C APIs).
pub fn check_component(component: &str) -> Result<(), &'static str> {
    if component.is_empty() {
        Err("empty path component")
    } else if component == "." {
        Err("path component is `.`")
    } else if component == ".." {
        Err("path component is `..`")
    } else if component.contains('/') {
        Err("path component contains `/`")
    } else if component.contains('\\') {
        Err("path component contains `\\`")
    } else if component.contains('\0') {
        Err("path component contains NUL")
    } else {
        Ok(())
    }
}

impl Layout {
    /// Builds a layout from `(path, length, padding)` in content order, computing offsets and piece
    /// count. Checks that the piece length is non-zero, that the total length is non-zero and fits in
    /// `u64`, and that the piece count fits in `u32` (piece indices are `u32` on the wire). Paths are
    /// taken as they are; the metainfo parser and the builder check them.
    pub fn new(
        files: impl IntoIterator<Item = (Vec<String>, u64, bool)>,
        piece_length: u32,
    ) -> Result<Layout, MetainfoError> {
        if piece_length == 0 {
            return Err(MetainfoError::InvalidPieceLength(0));
        }
        let mut offset: u64 = 0;
        let mut entries = Vec::new();
        for (path, length, padding) in files {
            let next = offset
                .checked_add(length)
                .ok_or(MetainfoError::TotalLengthOverflow)?;
            entries.push(FileEntry {
                path,
                length,
                offset,
                padding,
            });
            offset = next;
        }
        if entries.is_empty() {
            return Err(MetainfoError::NoFiles);
        }
        if offset == 0 {
            return Err(MetainfoError::EmptyTorrent);
        }
        let count = offset.div_ceil(u64::from(piece_length));
        let piece_count = u32::try_from(count).map_err(|_| MetainfoError::TooManyPieces(count))?;
        Ok(Layout {
            files: entries,
            piece_length,
            total_length: offset,
            piece_count,
        })
    }

    /// The files in content order.
    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    /// The nominal piece length (every piece but the last has exactly this length).
    pub fn piece_length(&self) -> u32 {
        self.piece_length
    }

    /// The sum of all file lengths.
    pub fn total_length(&self) -> u64 {
        self.total_length
    }

    /// The number of pieces: `ceil(total_length / piece_length)`, at least 1.
    pub fn piece_count(&self) -> u32 {
        self.piece_count
    }

    /// The length of piece `index` (the last one is usually shorter), or `None` if out of range.
    pub fn piece_len(&self, index: u32) -> Option<u32> {
        if index >= self.piece_count {
            return None;
        }
        let start = self.piece_offset(index);
        let len = (self.total_length - start).min(u64::from(self.piece_length));
        // `len` is at most `piece_length`, a u32.
        u32::try_from(len).ok()
    }

    /// The offset of piece `index`'s first byte in the concatenated content (not range-checked).
    pub fn piece_offset(&self, index: u32) -> u64 {
        u64::from(index) * u64::from(self.piece_length)
    }

    /// The file ranges covered by `length` bytes starting at `offset` in the concatenated content, in
    /// order; `None` if the range runs past the end. Zero-length files never appear.
    pub fn byte_ranges(&self, offset: u64, length: u64) -> Option<FileSlices<'_>> {
        let end = offset.checked_add(length)?;
        if end > self.total_length {
            return None;
        }
        let index = self
            .files
            .partition_point(|f| f.offset + f.length <= offset);
        Some(FileSlices {
            files: &self.files,
            index,
            pos: offset,
            end,
        })
    }

    /// The file ranges covered by a whole piece; `None` if the index is out of range.
    pub fn piece_ranges(&self, index: u32) -> Option<FileSlices<'_>> {
        let len = self.piece_len(index)?;
        self.byte_ranges(self.piece_offset(index), u64::from(len))
    }

    /// The file ranges covered by the block `(piece, begin, length)` of a `request`/`piece` message;
    /// `None` if the block does not lie inside the piece.
    pub fn block_ranges(&self, piece: u32, begin: u32, length: u32) -> Option<FileSlices<'_>> {
        let piece_len = self.piece_len(piece)?;
        if u64::from(begin) + u64::from(length) > u64::from(piece_len) {
            return None;
        }
        self.byte_ranges(
            self.piece_offset(piece) + u64::from(begin),
            u64::from(length),
        )
    }

    /// The pieces that hold bytes of file `index` (empty for a zero-length file); `None` if out of range.
    pub fn file_pieces(&self, index: usize) -> Option<Range<u32>> {
        let file = self.files.get(index)?;
        let pl = u64::from(self.piece_length);
        let first = file.offset / pl;
        let end = if file.length == 0 {
            first
        } else {
            (file.offset + file.length - 1) / pl + 1
        };
        // Both are at most piece_count, which fits in u32; clamp the empty range of a trailing empty file.
        let first = u32::try_from(first)
            .unwrap_or(u32::MAX)
            .min(self.piece_count);
        let end = u32::try_from(end).unwrap_or(u32::MAX).min(self.piece_count);
        Some(first..end.max(first))
    }

    /// Which pieces are needed to get every file whose entry in `wanted` is true (missing entries count
    /// as not wanted). A piece straddling a wanted and an unwanted file is needed.
    pub fn pieces_for_files(&self, wanted: &[bool]) -> Vec<bool> {
        let mut needed = vec![false; self.piece_count as usize];
        for (index, _) in wanted.iter().enumerate().filter(|(_, w)| **w) {
            if let Some(range) = self.file_pieces(index) {
                for p in range {
                    if let Some(slot) = needed.get_mut(p as usize) {
                        *slot = true;
                    }
                }
            }
        }
        needed
    }
}

/// Iterator over the [`FileSlice`]s of a byte range; allocation-free.
#[derive(Debug, Clone)]
pub struct FileSlices<'a> {
    files: &'a [FileEntry],
    index: usize,
    pos: u64,
    end: u64,
}

impl Iterator for FileSlices<'_> {
    type Item = FileSlice;

    fn next(&mut self) -> Option<FileSlice> {
        while self.pos < self.end {
            let file = self.files.get(self.index)?;
            let file_end = file.offset + file.length;
            if file_end <= self.pos {
                self.index += 1;
                continue;
            }
            let take = file_end.min(self.end) - self.pos;
            let slice = FileSlice {
                file_index: self.index,
                offset: self.pos - file.offset,
                length: take,
            };
            self.pos += take;
            if file_end <= self.pos {
                self.index += 1;
            }
            return Some(slice);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn layout(lengths: &[u64], piece_length: u32) -> Layout {
        Layout::new(
            lengths
                .iter()
                .enumerate()
                .map(|(i, &l)| (vec![format!("f{i}")], l, false)),
            piece_length,
        )
        .unwrap()
    }

    fn slices(it: Option<FileSlices<'_>>) -> Vec<(usize, u64, u64)> {
        it.unwrap()
            .map(|s| (s.file_index, s.offset, s.length))
            .collect()
    }

    #[test]
    fn sizes_and_last_piece() {
        let l = layout(&[10, 0, 7], 4);
        assert_eq!(l.total_length(), 17);
        assert_eq!(l.piece_count(), 5);
        assert_eq!(l.piece_len(0), Some(4));
        assert_eq!(l.piece_len(3), Some(4));
        assert_eq!(l.piece_len(4), Some(1));
        assert_eq!(l.piece_len(5), None);
        assert_eq!(l.files()[2].offset, 10);
        let exact = layout(&[8], 4);
        assert_eq!(exact.piece_count(), 2);
        assert_eq!(exact.piece_len(1), Some(4));
    }

    #[test]
    fn pieces_straddle_files_and_skip_empty_ones() {
        let l = layout(&[10, 0, 7], 4);
        // Piece 2 = bytes 8..12: last 2 bytes of f0, nothing of the empty f1, first 2 of f2.
        assert_eq!(slices(l.piece_ranges(2)), vec![(0, 8, 2), (2, 0, 2)]);
        assert_eq!(slices(l.piece_ranges(4)), vec![(2, 6, 1)]);
        assert_eq!(slices(l.block_ranges(2, 1, 2)), vec![(0, 9, 1), (2, 0, 1)]);
        assert!(l.block_ranges(4, 0, 2).is_none());
        assert!(l.block_ranges(9, 0, 1).is_none());
        assert!(l.piece_ranges(5).is_none());
        assert!(l.byte_ranges(u64::MAX, 2).is_none());
    }

    #[test]
    fn file_to_pieces() {
        let l = layout(&[10, 0, 7, 0], 4);
        assert_eq!(l.file_pieces(0), Some(0..3));
        assert_eq!(l.file_pieces(1), Some(2..2));
        assert_eq!(l.file_pieces(2), Some(2..5));
        assert_eq!(l.file_pieces(3), Some(4..4));
        assert_eq!(l.file_pieces(4), None);
        assert_eq!(
            l.pieces_for_files(&[false, true, true]),
            vec![false, false, true, true, true]
        );
        assert_eq!(
            l.pieces_for_files(&[true]),
            vec![true, true, true, false, false]
        );
        assert_eq!(l.pieces_for_files(&[]), vec![false; 5]);
        // A trailing empty file exactly at a piece boundary maps to an empty range, not past the end.
        let b = layout(&[8, 0], 4);
        assert_eq!(b.file_pieces(1), Some(2..2));
    }

    #[test]
    fn rejects_degenerate_layouts() {
        assert_eq!(
            Layout::new(vec![(vec!["a".into()], 1, false)], 0),
            Err(MetainfoError::InvalidPieceLength(0))
        );
        assert_eq!(
            Layout::new(Vec::<(Vec<String>, u64, bool)>::new(), 4),
            Err(MetainfoError::NoFiles)
        );
        assert_eq!(
            Layout::new(vec![(vec!["a".into()], 0, false)], 4),
            Err(MetainfoError::EmptyTorrent)
        );
        assert_eq!(
            Layout::new(
                vec![
                    (vec!["a".into()], u64::MAX, false),
                    (vec!["b".into()], 1, false)
                ],
                4
            ),
            Err(MetainfoError::TotalLengthOverflow)
        );
        assert!(matches!(
            Layout::new(vec![(vec!["a".into()], u64::MAX, false)], 1),
            Err(MetainfoError::TooManyPieces(_))
        ));
    }

    #[test]
    fn components() {
        assert!(check_component("ok name.txt").is_ok());
        for bad in ["", ".", "..", "a/b", "/abs", "a\\b", "nul\0"] {
            assert!(check_component(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        /// Every piece maps to ranges that tile exactly its bytes, in order, inside file bounds, and
        /// the per-file piece ranges agree with that map.
        #[test]
        fn piece_map_is_consistent(
            lengths in proptest::collection::vec(0u64..40, 1..8),
            piece_length in 1u32..16,
        ) {
            prop_assume!(lengths.iter().sum::<u64>() > 0);
            let l = layout(&lengths, piece_length);
            let mut covered = vec![0u64; lengths.len()];
            let mut touched: Vec<Vec<u32>> = vec![Vec::new(); lengths.len()];
            let mut global = 0u64;
            for p in 0..l.piece_count() {
                let mut sum = 0;
                for s in l.piece_ranges(p).unwrap() {
                    let f = &l.files()[s.file_index];
                    prop_assert!(s.length > 0);
                    prop_assert!(s.offset + s.length <= f.length);
                    prop_assert_eq!(f.offset + s.offset, global);
                    global += s.length;
                    sum += s.length;
                    covered[s.file_index] += s.length;
                    if touched[s.file_index].last() != Some(&p) {
                        touched[s.file_index].push(p);
                    }
                }
                prop_assert_eq!(sum, u64::from(l.piece_len(p).unwrap()));
            }
            prop_assert_eq!(global, l.total_length());
            prop_assert_eq!(&covered, &lengths);
            for (i, t) in touched.iter().enumerate() {
                let r = l.file_pieces(i).unwrap();
                prop_assert_eq!(t.clone(), r.collect::<Vec<_>>());
            }
        }
    }
}
