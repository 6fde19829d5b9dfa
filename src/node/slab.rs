//! Storage of the node table: nodes inline in fixed-size chunks, found through a hash index
//! of their positions, plus the rare pins of removed objects on the side.
//!
//! A walk of a million entries leaves a million nodes. Boxed nodes in a
//! `HashMap<u64, Box<Node>>` cost a 16-byte slot (a hash table keeps up to twice as many slots
//! as entries) plus the allocation; here a node costs its inline size plus a 5-byte index slot.
//! Invariants:
//! - positions `0..len` hold the nodes, densely: removal moves the last node into the hole
//!   and repoints its index entry, so memory follows the node count;
//! - chunk `k` holds positions `k * CHUNK ..`, each chunk allocated once at its full size, so
//!   growing never copies (a single vector doubling to 64 MiB held both copies and left the
//!   old ones in the heap) and a chunk is freed when the nodes recede, keeping one spare to
//!   avoid freeing and allocating at a boundary;
//! - `pins` has an entry only for a node present in the table.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use hashbrown::HashTable;

use super::Node;

/// Nodes per chunk: 256 KiB of 64-byte nodes.
const CHUNK: usize = 4096;

#[derive(Default)]
pub(super) struct Slab {
    chunks: Vec<Vec<Node>>,
    len: usize,
    /// Positions of the nodes, hashed by their node id.
    index: HashTable<u32>,
    hasher: std::hash::RandomState,
    /// See `Node` and `NodeTable::unlink_path`: few nodes are pinned, so not a field of each.
    pub pins: HashMap<u64, Arc<OwnedFd>>,
}

impl Slab {
    fn hash(&self, ino: u64) -> u64 {
        self.hasher.hash_one(ino)
    }

    fn at(&self, i: usize) -> &Node {
        &self.chunks[i / CHUNK][i % CHUNK]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn find(&self, ino: u64) -> Option<&Node> {
        self.position(ino).map(|i| self.at(i))
    }

    pub fn find_mut(&mut self, ino: u64) -> Option<&mut Node> {
        let i = self.position(ino)?;
        Some(&mut self.chunks[i / CHUNK][i % CHUNK])
    }

    fn position(&self, ino: u64) -> Option<usize> {
        self.index
            .find(self.hash(ino), |&i| self.at(i as usize).ino == ino)
            .map(|&i| i as usize)
    }

    /// Adds `node`, whose id must not be in the table yet.
    pub fn insert(&mut self, node: Node) -> &mut Node {
        let i = self.len;
        let pos = u32::try_from(i).expect("fewer than 2^32 nodes");
        let hash = self.hash(node.ino);
        let (chunks, hasher) = (&self.chunks, &self.hasher);
        self.index.insert_unique(hash, pos, |&j| {
            let j = j as usize;
            hasher.hash_one(chunks[j / CHUNK][j % CHUNK].ino)
        });
        if i / CHUNK == self.chunks.len() {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.len += 1;
        let chunk = &mut self.chunks[i / CHUNK];
        chunk.push(node);
        chunk.last_mut().expect("just pushed")
    }

    pub fn remove(&mut self, ino: u64) {
        let Some(i) = self.position(ino) else {
            return;
        };
        let hash = self.hash(ino);
        let at = |j: u32| j as usize == i;
        if let Ok(entry) = self.index.find_entry(hash, |&j| at(j)) {
            entry.remove();
        }
        let last = self.len - 1;
        let tail = self.chunks[last / CHUNK].pop().expect("position below len");
        if i != last {
            let hash = self.hash(tail.ino);
            *self
                .index
                .find_mut(hash, |&j| j as usize == last)
                .expect("every node is indexed") = i as u32;
            self.chunks[i / CHUNK][i % CHUNK] = tail;
        }
        self.len = last;
        self.pins.remove(&ino);
        while self.chunks.len() > self.len.div_ceil(CHUNK) + 1 {
            self.chunks.pop();
        }
        // Rehashing is linear: shrink the index only once it is four times too large.
        if self.index.capacity() > CHUNK && self.len * 4 < self.index.capacity() {
            let (chunks, hasher) = (&self.chunks, &self.hasher);
            self.index.shrink_to(self.len * 2, |&j| {
                let j = j as usize;
                hasher.hash_one(chunks[j / CHUNK][j % CHUNK].ino)
            });
        }
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Node> {
        self.chunks.iter_mut().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{Lowers, Paths};
    use rustix::fs::FileType;

    fn node(ino: u64) -> Node {
        Node {
            ino,
            lookups: 1,
            generation: 0,
            paths: Paths::default(),
            lowers: Lowers::default(),
            kind: FileType::RegularFile,
            upper: true,
        }
    }

    #[test]
    fn removal_keeps_every_other_node_findable_across_chunks() {
        let mut s = Slab::default();
        let n = 3 * CHUNK as u64 + 5;
        for ino in 0..n {
            s.insert(node(ino * 7));
        }
        assert_eq!(s.chunks.len(), 4);
        // Remove from the front, so every removal moves the last node.
        for ino in 0..n - 10 {
            s.remove(ino * 7);
            assert!(s.find(ino * 7).is_none());
        }
        assert_eq!(s.len(), 10);
        for ino in n - 10..n {
            assert_eq!(s.find(ino * 7).map(|n| n.ino), Some(ino * 7));
        }
        assert_eq!(s.chunks.len(), 2, "one chunk in use, one spare");
        assert_eq!(s.iter_mut().count(), 10);
    }
}
