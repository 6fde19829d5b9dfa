//! The inode-number policy: what st_ino (and FUSE node id) each object shows.
//!
//! An object found in a layer is named by its backing `(st_dev, st_ino)`. Its union inode
//! number packs a small per-device index above the backing inode number (like the kernel's
//! `xino`), so objects on different layers never collide and hard links within a layer share
//! one number. Two tables refine that formula for the life of the mount:
//! - `alias`: an upper object made by copy-up keeps the number of its lower origin, so st_ino
//!   is stable across copy-up (and every hard link to the copied-up file shows it too);
//! - the same table re-numbers the remaining lower aliases of a hard-linked lower file once one
//!   alias was copied up (the copy is a different file from then on; see `break_lower_link`).
//!
//! Invariant: `ROOT` (1) is the root directory's number and no other object gets it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

/// The FUSE root node id.
pub const ROOT: u64 = 1;

const DEV_SHIFT: u32 = 47;
const MAX_PACKED_INO: u64 = (1 << DEV_SHIFT) - 1;
/// Numbers handed out when the formula cannot be used start here (device index 0 is never a
/// real device's, and `ROOT` is below the range).
const ALLOC_BASE: u64 = 1 << 20;

/// Backing identity of an object in a layer.
pub type DevIno = (u64, u64);

#[derive(Default)]
pub struct InoPolicy {
    devs: RwLock<HashMap<u64, u64>>,
    alias: RwLock<HashMap<DevIno, u64>>,
    next_alloc: AtomicU64,
}

impl InoPolicy {
    pub fn new() -> InoPolicy {
        InoPolicy {
            next_alloc: AtomicU64::new(ALLOC_BASE),
            ..Default::default()
        }
    }

    /// The union inode number of the backing object `id`.
    pub fn of(&self, id: DevIno) -> u64 {
        if let Some(&n) = self.alias.read().get(&id) {
            return n;
        }
        let (dev, ino) = id;
        let idx = self.dev_index(dev);
        if ino <= MAX_PACKED_INO && idx < (1 << (64 - DEV_SHIFT)) {
            return (idx << DEV_SHIFT) | ino;
        }
        // Too large to pack: give it a number of its own, remembered for the mount's life.
        let mut alias = self.alias.write();
        *alias
            .entry(id)
            .or_insert_with(|| self.next_alloc.fetch_add(1, Ordering::Relaxed))
    }

    /// Records that the upper object `upper` (made by copy-up) shows as `ino`.
    pub fn set_alias(&self, upper: DevIno, ino: u64) {
        self.alias.write().insert(upper, ino);
    }

    /// A lower file with several hard links was copied up through one alias, which keeps the
    /// number: the aliases still in the lower get a fresh number of their own from now on.
    pub fn break_lower_link(&self, lower: DevIno) {
        let fresh = self.next_alloc.fetch_add(1, Ordering::Relaxed);
        self.alias.write().insert(lower, fresh);
    }

    fn dev_index(&self, dev: u64) -> u64 {
        if let Some(&i) = self.devs.read().get(&dev) {
            return i;
        }
        let mut devs = self.devs.write();
        let next = devs.len() as u64 + 1;
        *devs.entry(dev).or_insert(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_devices_do_not_collide() {
        let p = InoPolicy::new();
        let a = p.of((10, 5));
        let b = p.of((11, 5));
        assert_ne!(a, b);
        assert_eq!(a, p.of((10, 5)));
        assert_ne!(a, ROOT);
    }

    #[test]
    fn alias_keeps_number_and_break_renumbers() {
        let p = InoPolicy::new();
        let lower = p.of((10, 7));
        p.set_alias((20, 99), lower);
        assert_eq!(p.of((20, 99)), lower);
        p.break_lower_link((10, 7));
        assert_ne!(p.of((10, 7)), lower);
    }

    #[test]
    fn huge_inode_numbers_get_allocated_numbers() {
        let p = InoPolicy::new();
        let a = p.of((10, u64::MAX));
        let b = p.of((10, u64::MAX - 1));
        assert_ne!(a, b);
        assert_eq!(a, p.of((10, u64::MAX)));
    }
}
