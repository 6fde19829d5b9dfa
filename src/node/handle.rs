//! Open file and directory handles.
//!
//! A file handle owns the fd it reads and writes through. A handle opened on a lower copy
//! follows a later copy-up of its node: before each read it checks whether the node moved to
//! the upper and reopens there, so readers see writers' data (the kernel does the same since
//! 4.19). A directory handle holds the merged listing taken at its first read from offset 0,
//! so offsets (telldir/seekdir) stay valid while the directory changes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use rustix::fs::{FileType, OFlags};

pub struct FileHandle {
    pub ino: u64,
    pub fd: RwLock<OwnedFd>,
    /// The fd refers to the upper copy (no reopen will ever be needed).
    pub on_upper: AtomicBool,
    /// The open flags, to reopen with after a copy-up.
    pub flags: OFlags,
    /// Opened by execve: while it lives the kernel denies writes to the file (ETXTBSY).
    pub exec: bool,
    /// Where the last read through the daemon ended: a read starting there continues a
    /// sequential read (see `Union::read`).
    pub read_end: AtomicU64,
}

/// One entry of a merged directory listing.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    pub kind: FileType,
}

pub struct DirHandle {
    pub ino: u64,
    pub entries: Mutex<Option<Arc<Vec<DirEntry>>>>,
}

/// A table of handles of one kind, with fresh numbers for each open.
pub struct Handles<T> {
    map: RwLock<HashMap<u64, Arc<T>>>,
    next: AtomicU64,
}

impl<T> Default for Handles<T> {
    fn default() -> Self {
        Handles {
            map: RwLock::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }
}

impl<T> Handles<T> {
    pub fn insert(&self, h: T) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.map.write().insert(fh, Arc::new(h));
        fh
    }

    pub fn get(&self, fh: u64) -> Option<Arc<T>> {
        self.map.read().get(&fh).cloned()
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<T>> {
        self.map.write().remove(&fh)
    }

    /// Any handle satisfying `pred` (used to stat an unlinked but open file).
    pub fn find(&self, pred: impl Fn(&T) -> bool) -> Option<Arc<T>> {
        self.map.read().values().find(|h| pred(h)).cloned()
    }

    /// Every handle satisfying `pred`.
    pub fn filter(&self, pred: impl Fn(&T) -> bool) -> Vec<Arc<T>> {
        self.map
            .read()
            .values()
            .filter(|h| pred(h))
            .cloned()
            .collect()
    }
}
