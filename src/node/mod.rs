//! The node table: every inode the kernel holds a reference to, keyed by its node id (which is
//! also its st_ino, see `union::inode`).
//!
//! A node records where its object lives in the layer stack (upper, lower copies) and the union
//! paths it is known by, so the engine can act on it without a lookup. Invariants:
//! - `lookups` counts the entries replied to the kernel minus its forgets; a node at zero is
//!   dropped (the root is never dropped);
//! - a directory has exactly one path; a non-directory has one per known hard link, and none
//!   once it was unlinked (it then lives on only through open handles);
//! - `upper` is true once the object exists in the upper at its first path (copy-up flips it);
//! - a node id names one object while the kernel holds it: an upper object whose last known
//!   name is removed stays pinned (`NodeTable::pin`) until the kernel forgets it, so the upper
//!   filesystem cannot give its inode number (hence the node id) to a new object meanwhile;
//! - memory is proportional to the nodes held: a node is 64 bytes inline (`slab`) with no
//!   heap allocation while its paths fit `compact`'s inline buffer and it has at most three
//!   lowers, and the table gives memory back as the kernel forgets.

pub mod compact;
pub mod handle;
mod slab;

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustix::fs::FileType;

use slab::Slab;

pub use compact::{Lowers, MAX_LAYERS, Paths};

/// Where one object of the union lives. Small and without heap allocations in the common case
/// (one short path, few lowers): the table holds it inline and `NodeTable::get` copies it.
#[derive(Clone, Debug)]
pub struct Node {
    pub ino: u64,
    pub lookups: u64,
    /// Told to the kernel with the node id: it changes when the id, an inode number, is
    /// reused by the upper filesystem for a new object while the kernel may still hold the
    /// old one (see `NodeTable::upsert`).
    pub generation: u32,
    /// Union paths (relative, "" for the root) this object is reachable by.
    pub paths: Paths,
    /// The lower copies that matter: for a non-directory the one it is read from (empty once
    /// copied up); for a directory every lower directory merged into it, each flagged when
    /// its copy may hold xattr whiteouts.
    pub lowers: Lowers,
    pub kind: FileType,
    /// Present in the upper layer.
    pub upper: bool,
}

impl Node {
    /// The path the engine uses to act on the object; `None` once it was unlinked.
    pub fn path(&self) -> Option<&Path> {
        self.paths.first()
    }

    pub fn is_dir(&self) -> bool {
        self.kind == FileType::Directory
    }

    /// Exists in more than one layer (a directory whose listing merges several layers).
    pub fn is_merged(&self) -> bool {
        self.lowers.len() + usize::from(self.upper) > 1
    }

    /// The layer holding the topmost copy.
    pub fn top_layer(&self) -> Option<usize> {
        if self.upper {
            Some(0)
        } else {
            self.lowers.first()
        }
    }
}

/// Joins a union directory path and a name.
pub fn child_path(dir: &Path, name: &OsStr) -> PathBuf {
    if dir.as_os_str().is_empty() {
        PathBuf::from(name)
    } else {
        dir.join(name)
    }
}

#[derive(Default)]
pub struct NodeTable {
    slab: RwLock<Slab>,
}

impl NodeTable {
    pub fn get(&self, ino: u64) -> Option<Node> {
        self.slab.read().find(ino).cloned()
    }

    /// The pin of removed node `ino`, if it has one (see `unlink_path`).
    pub fn pin(&self, ino: u64) -> Option<Arc<OwnedFd>> {
        self.slab.read().pins.get(&ino).cloned()
    }

    /// Inserts or refreshes the node for `fresh` (same ino) and counts one kernel reference.
    /// An existing node keeps its lookup count and gains `fresh`'s path.
    ///
    /// An existing node without paths is a removed object; when it is not pinned and
    /// `is_open(ino)` says nothing holds it open either, the backing inode may be free and
    /// `fresh` a new object that the filesystem gave the same inode number (a pinned one is
    /// still the same object: a hard link not known before). The kernel may still hold the
    /// dead one (a removed directory it has not forgotten yet, where creating anything gives
    /// ENOENT), so the generation changes: the kernel then drops its old inode instead of
    /// reusing it.
    pub fn upsert(&self, fresh: Node, is_open: impl Fn(u64) -> bool) -> Node {
        let mut slab = self.slab.write();
        let pinned = slab.pins.contains_key(&fresh.ino);
        let n = match slab.find(fresh.ino) {
            Some(_) => slab.find_mut(fresh.ino).expect("just found"),
            None => slab.insert(Node {
                lookups: 0,
                ..fresh.clone()
            }),
        };
        if n.paths.is_empty() && !pinned && (n.is_dir() || !is_open(n.ino)) {
            n.generation = n.generation.wrapping_add(1);
        }
        let path = fresh.path().expect("a looked-up object has a path");
        if fresh.kind == FileType::Directory {
            n.paths = Paths::one(path);
        } else {
            // Make the path just looked up the one acted on.
            n.paths.make_first(path);
        }
        n.kind = fresh.kind;
        n.upper = fresh.upper;
        n.lowers = fresh.lowers;
        n.lookups += 1;
        n.clone()
    }

    /// Applies `f` to the node, if present.
    pub fn update(&self, ino: u64, f: impl FnOnce(&mut Node)) {
        if let Some(n) = self.slab.write().find_mut(ino) {
            f(n);
        }
    }

    /// Drops `n` kernel references; removes the node at zero. The root is kept.
    pub fn forget(&self, ino: u64, n: u64) {
        let mut slab = self.slab.write();
        if let Some(node) = slab.find_mut(ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 && ino != crate::union::inode::ROOT {
                slab.remove(ino);
            }
        }
    }

    /// Forgets the path `path` of node `ino` (the name was unlinked or replaced); `pin`, an
    /// fd to the removed upper object opened before the removal, is kept if that was the
    /// node's last path: like the kernel's overlay inode holding its upper inode, it keeps the
    /// inode number from being reused until the kernel forgets the node. Without it, a new
    /// object got the removed one's node id, the kernel marked the inode it still held bad,
    /// and everything done through it (fstat of an open removed directory, an operation
    /// racing with the removal) failed with EIO. It also lets the removed object be stat'ed.
    pub fn unlink_path(&self, ino: u64, path: &Path, pin: Option<OwnedFd>) {
        let mut slab = self.slab.write();
        let Some(n) = slab.find_mut(ino) else {
            return;
        };
        n.paths.remove(path);
        if let (true, Some(pin)) = (n.paths.is_empty(), pin) {
            slab.pins.insert(ino, Arc::new(pin));
        }
    }

    /// Rewrites paths after a rename: a path equal to or below the `from` of a move is moved
    /// below its `to`; the moves apply at once, so an exchange is two moves. Only the nodes
    /// `inos` are visited, unless a directory moved (`subtree`): then every node is, since its
    /// descendants move too.
    pub fn rename_paths(&self, moves: &[(&Path, &Path)], inos: &[u64], subtree: bool) {
        let rewrite = |n: &mut Node| {
            n.paths.rewrite(|p| {
                moves.iter().find_map(|(from, to)| {
                    let rest = p.strip_prefix(from).ok()?;
                    Some(if rest.as_os_str().is_empty() {
                        to.to_path_buf()
                    } else {
                        to.join(rest)
                    })
                })
            })
        };
        let mut slab = self.slab.write();
        if subtree {
            slab.iter_mut().for_each(rewrite);
        } else {
            for &ino in inos {
                if let Some(n) = slab.find_mut(ino) {
                    rewrite(n);
                }
            }
        }
    }

    /// Number of nodes held (for memory checks).
    pub fn len(&self) -> usize {
        self.slab.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ino: u64, kind: FileType, path: &str) -> Node {
        Node {
            ino,
            kind,
            paths: Paths::one(Path::new(path)),
            upper: true,
            lowers: Lowers::default(),
            lookups: 0,
            generation: 0,
        }
    }

    #[test]
    fn a_node_is_64_bytes() {
        // What a walk of a million entries costs (benches/memwalk.sh); see `slab`.
        assert_eq!(std::mem::size_of::<Node>(), 64);
    }

    #[test]
    fn a_removed_object_reappearing_gets_a_new_generation() {
        let t = NodeTable::default();
        let closed = |_| false;
        assert_eq!(
            t.upsert(node(7, FileType::Directory, "a"), closed)
                .generation,
            0
        );
        // Looked up again while alive: same object.
        assert_eq!(
            t.upsert(node(7, FileType::Directory, "a"), closed)
                .generation,
            0
        );
        t.unlink_path(7, Path::new("a"), None);
        let again = t.upsert(node(7, FileType::Directory, "b"), closed);
        assert_eq!(again.generation, 1);
        assert_eq!(
            again.lookups, 3,
            "the kernel forgets both inodes under the one id"
        );
        assert_eq!(again.paths, Paths::one(Path::new("b")));
    }

    #[test]
    fn an_unlinked_open_file_is_still_the_same_object() {
        let t = NodeTable::default();
        t.upsert(node(9, FileType::RegularFile, "f"), |_| true);
        t.unlink_path(9, Path::new("f"), None);
        // Held open, so its inode number cannot have been reused: another name of it.
        assert_eq!(
            t.upsert(node(9, FileType::RegularFile, "g"), |_| true)
                .generation,
            0
        );
        t.unlink_path(9, Path::new("g"), None);
        assert_eq!(
            t.upsert(node(9, FileType::RegularFile, "h"), |_| false)
                .generation,
            1
        );
    }

    #[test]
    fn a_pinned_removed_object_found_again_is_the_same_object() {
        let t = NodeTable::default();
        t.upsert(node(5, FileType::RegularFile, "f"), |_| false);
        let pin = rustix::fs::open(".", rustix::fs::OFlags::PATH, rustix::fs::Mode::empty());
        t.unlink_path(5, Path::new("f"), Some(pin.unwrap()));
        assert!(t.pin(5).is_some());
        // Pinned, its number cannot have been reused: another name of it, same generation.
        let again = t.upsert(node(5, FileType::RegularFile, "g"), |_| false);
        assert_eq!(again.generation, 0);
        t.forget(5, 2);
        assert!(t.get(5).is_none());
        assert!(t.pin(5).is_none(), "the pin goes with the node");
    }
}
