//! The Files tab's tree: directories and files of a torrent flattened into rows (depth-first, in
//! the order the torrent lists them), built once per torrent and reused by every frame. A
//! directory row stands for every file under it, so toggling it toggles them all.

use hyperblow_driver::engine::FileStats;

/// One row of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeRow {
    /// Nesting depth (0 for the top).
    pub depth: usize,
    /// The directory's or file's own name (unescaped).
    pub name: String,
    /// The file's index, or `None` for a directory.
    pub file: Option<usize>,
    /// For a directory: the files under it; for a file: itself.
    pub files: Vec<usize>,
}

/// A torrent's files as a tree of rows.
#[derive(Debug, Clone, Default)]
pub struct FileTree {
    rows: Vec<TreeRow>,
    file_count: usize,
}

#[derive(Default)]
struct Node {
    name: String,
    file: Option<usize>,
    children: Vec<Node>,
}

impl FileTree {
    /// The tree of `files` (paths joined with `/`).
    pub fn build(files: &[FileStats]) -> FileTree {
        let mut root = Node::default();
        // Index of each directory's children by name, to keep building O(total path length).
        let mut index: std::collections::HashMap<
            Vec<usize>,
            std::collections::HashMap<String, usize>,
        > = std::collections::HashMap::new();
        for (i, f) in files.iter().enumerate() {
            let parts: Vec<&str> = f.path.split('/').collect();
            let mut node = &mut root;
            let mut key: Vec<usize> = Vec::new();
            for (d, part) in parts.iter().enumerate() {
                let last = d + 1 == parts.len();
                if last {
                    node.children.push(Node {
                        name: (*part).to_owned(),
                        file: Some(i),
                        children: Vec::new(),
                    });
                    break;
                }
                let names = index.entry(key.clone()).or_default();
                let pos = match names.get(*part) {
                    Some(&p) => p,
                    None => {
                        node.children.push(Node {
                            name: (*part).to_owned(),
                            file: None,
                            children: Vec::new(),
                        });
                        let p = node.children.len() - 1;
                        names.insert((*part).to_owned(), p);
                        p
                    }
                };
                key.push(pos);
                node = &mut node.children[pos];
            }
        }
        let mut rows = Vec::with_capacity(files.len() + 8);
        for child in &root.children {
            flatten(child, 0, &mut rows);
        }
        FileTree {
            rows,
            file_count: files.len(),
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Number of files it was built from.
    pub fn file_count(&self) -> usize {
        self.file_count
    }

    /// The rows.
    pub fn rows(&self) -> &[TreeRow] {
        &self.rows
    }

    /// The files a row stands for.
    pub fn files_under(&self, row: usize) -> Option<&[usize]> {
        self.rows.get(row).map(|r| r.files.as_slice())
    }
}

/// Appends `node`'s row and its children's; returns the files under it.
fn flatten(node: &Node, depth: usize, rows: &mut Vec<TreeRow>) -> Vec<usize> {
    if let Some(i) = node.file {
        rows.push(TreeRow {
            depth,
            name: node.name.clone(),
            file: Some(i),
            files: vec![i],
        });
        return vec![i];
    }
    let at = rows.len();
    rows.push(TreeRow {
        depth,
        name: node.name.clone(),
        file: None,
        files: Vec::new(),
    });
    let mut all = Vec::new();
    for c in &node.children {
        all.extend(flatten(c, depth + 1, rows));
    }
    rows[at].files.clone_from(&all);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str) -> FileStats {
        FileStats {
            path: path.into(),
            length: 1,
            wanted: true,
            have: 0,
        }
    }

    #[test]
    fn directories_group_their_files_in_torrent_order() {
        let files = [f("t/a/x"), f("t/b"), f("t/a/y"), f("t/a/z/w")];
        let tree = FileTree::build(&files);
        let shown: Vec<(usize, &str, Option<usize>)> = tree
            .rows()
            .iter()
            .map(|r| (r.depth, r.name.as_str(), r.file))
            .collect();
        assert_eq!(
            shown,
            [
                (0, "t", None),
                (1, "a", None),
                (2, "x", Some(0)),
                (2, "y", Some(2)),
                (2, "z", None),
                (3, "w", Some(3)),
                (1, "b", Some(1)),
            ]
        );
        assert_eq!(tree.files_under(0), Some(&[0, 2, 3, 1][..]));
        assert_eq!(tree.files_under(1), Some(&[0, 2, 3][..]));
        assert_eq!(tree.files_under(6), Some(&[1][..]));
        assert_eq!(tree.files_under(7), None);
    }

    #[test]
    fn ten_thousand_files_build_quickly_into_one_row_each_plus_directories() {
        let files: Vec<FileStats> = (0..10_000)
            .map(|i| f(&format!("big/d{}/file{i}.bin", i / 100)))
            .collect();
        let tree = FileTree::build(&files);
        assert_eq!(tree.len(), 10_000 + 100 + 1);
        assert_eq!(tree.files_under(0).map(<[usize]>::len), Some(10_000));
    }
}
