//! Merged directory listings.
//!
//! Upper first, then each merged lower directory: a name is shown once, from the topmost layer
//! that has it; whiteouts (every format) hide the name in the layers below and are never shown,
//! nor are `.wh.*` markers. Each entry's d_ino is the st_ino a lookup of that name gives.
//! A directory handle keeps the listing taken at its first read from offset 0 (and at every
//! rewind), so offsets stay valid: offset `i + 1` means "after entry i".

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::sync::Arc;

use parking_lot::Mutex;
use rustix::fs::FileType;

use super::Union;
use crate::format;
use crate::layer;
use crate::node::Node;
use crate::node::handle::{DirEntry, DirHandle};
use crate::sys::{self, Errno};

impl Union {
    /// Opens directory `ino` for listing.
    ///
    /// Errors: ENOENT, ENOTDIR.
    pub fn opendir(&self, ino: u64) -> Result<u64, Errno> {
        let node = self.node(ino)?;
        if !node.is_dir() {
            return Err(Errno::NOTDIR);
        }
        Ok(self.dirs.insert(DirHandle {
            ino,
            entries: Mutex::new(None),
        }))
    }

    /// The entries of handle `fh` from `offset` on (`.` and `..` included), with the offset of
    /// the entry after each.
    ///
    /// Errors: EBADF for an unknown handle, ENOENT when the directory vanished.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Arc<Vec<DirEntry>>, Errno> {
        let h = self.dirs.get(fh).ok_or(Errno::BADF)?;
        let mut cached = h.entries.lock();
        if offset == 0 || cached.is_none() {
            let node = self.node(h.ino)?;
            let mut list = vec![
                DirEntry {
                    name: ".".into(),
                    ino: node.ino,
                    kind: FileType::Directory,
                },
                DirEntry {
                    name: "..".into(),
                    ino: self.parent_ino(&node),
                    kind: FileType::Directory,
                },
            ];
            let _ns = self.ns.read();
            list.extend(self.merged_entries(&node)?);
            *cached = Some(Arc::new(list));
        }
        Ok(cached.clone().unwrap_or_default())
    }

    /// Drops handle `fh`.
    pub fn releasedir(&self, fh: u64) {
        self.dirs.remove(fh);
    }

    /// The inode number of the parent of directory `node` (the root is its own parent).
    fn parent_ino(&self, node: &Node) -> u64 {
        let parent = node.path().and_then(|p| p.parent());
        let Some(parent) = parent else {
            return node.ino;
        };
        self.resolve_path(parent)
            .map(|n| n.ino)
            .unwrap_or(super::inode::ROOT)
    }

    /// Resolves a union path from the root without counting references.
    pub(crate) fn resolve_path(&self, path: &std::path::Path) -> Result<Node, Errno> {
        let mut cur = self.node(super::inode::ROOT)?;
        for comp in path.components() {
            cur = self
                .resolve_child(&cur, comp.as_os_str())?
                .ok_or(Errno::NOENT)?
                .node;
        }
        Ok(cur)
    }

    /// The merged listing of directory `dir` (without `.` and `..`); callers hold `ns`.
    pub(crate) fn merged_entries(&self, dir: &Node) -> Result<Vec<DirEntry>, Errno> {
        let path = dir.path().ok_or(Errno::NOENT)?;
        let mut out = Vec::new();
        let mut seen: HashSet<OsString> = HashSet::new();
        let mut whited: HashSet<OsString> = HashSet::new();
        for (layer, xwh) in self.search_layers(dir) {
            let Some(fd) = self.layers[layer].open_dir_opt(path)? else {
                continue;
            };
            let dev = sys::path::fstat(&fd)?.st_dev;
            let list = rustix::io::dup(&fd)?;
            let mut layer_whiteouts = Vec::new();
            for e in sys::dir::read_all(list)? {
                if format::is_marker_name(&e.name) {
                    if let Some(t) = format::aufs_whiteout_target(&e.name) {
                        layer_whiteouts.push(t.to_os_string());
                    }
                    continue;
                }
                if seen.contains(&e.name) || whited.contains(&e.name) {
                    continue;
                }
                // d_type may be unknown on some filesystems; stat then.
                let needs_stat = e.kind == FileType::CharacterDevice
                    || e.kind == FileType::Unknown
                    || (xwh && e.kind == FileType::RegularFile);
                let (kind, dev) = if needs_stat {
                    let Some(st) = sys::not_found_as_none(sys::path::stat_at(fd.as_fd(), &e.name))?
                    else {
                        continue;
                    };
                    if format::is_whiteout_dev(&st)
                        || (xwh
                            && st.st_size == 0
                            && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                            && layer::is_xattr_whiteout(fd.as_fd(), &e.name, &self.lower_keys)?)
                    {
                        layer_whiteouts.push(e.name.clone());
                        continue;
                    }
                    (FileType::from_raw_mode(st.st_mode), st.st_dev)
                } else {
                    (e.kind, dev)
                };
                seen.insert(e.name.clone());
                out.push(DirEntry {
                    ino: self.inos.of((dev, e.ino)),
                    name: e.name,
                    kind,
                });
            }
            whited.extend(layer_whiteouts);
        }
        Ok(out)
    }
}
