//! Lookup: where a name of a union directory lives in the layer stack.
//!
//! Per name, top layer first (the parent's upper copy, then the lower directories merged into
//! the parent): a whiteout ends the search with "absent"; a non-directory ends it and hides
//! everything below; a directory continues into lower directories only, unless it is opaque.

use std::ffi::OsStr;
use std::os::fd::AsFd;

use rustix::fs::{FileType, Stat};

use super::{Attr, Union};
use crate::layer::{self, Probe};
use crate::node::{Lowers, Node, Paths, child_path};
use crate::sys::Errno;

/// Where one union object lives, before it becomes a node.
pub(crate) struct Resolved {
    pub node: Node,
    /// lstat of the topmost copy.
    pub top: Stat,
}

impl Union {
    /// Looks `name` up in directory `parent` and counts one kernel reference to the result.
    ///
    /// Errors: ENOENT (absent or whited out), ENOTDIR (parent is not a directory), EINVAL (a
    /// name that is not one path component), or what the layers give (EACCES, EIO).
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        let _ns = self.ns.read();
        let p = self.node(parent)?;
        let r = self.resolve_child(&p, name)?.ok_or(Errno::NOENT)?;
        let node = self.remember(r.node);
        Ok(self.attr_from(&node, r.top))
    }

    /// Drops `n` kernel references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.nodes.forget(ino, n);
    }

    /// The layers of directory `dir` to search, top first, each with whether its copy of the
    /// directory may hold xattr whiteouts.
    pub(crate) fn search_layers(&self, dir: &Node) -> Vec<(usize, bool)> {
        let mut v = Vec::with_capacity(dir.lowers.len() + 1);
        if dir.upper {
            v.push((0, false));
        }
        v.extend(dir.lowers.with_xwhiteouts());
        v
    }

    /// Resolves `name` in directory node `parent`; `None` when absent or whited out.
    pub(crate) fn resolve_child(
        &self,
        parent: &Node,
        name: &OsStr,
    ) -> Result<Option<Resolved>, Errno> {
        crate::sys::path::check_name(name)?;
        if !parent.is_dir() {
            return Err(Errno::NOTDIR);
        }
        if crate::format::is_marker_name(name) {
            // `.wh.*` names are markers, never objects of the union.
            return Ok(None);
        }
        let dir_path = parent.path().ok_or(Errno::NOENT)?;
        let path = child_path(dir_path, name);
        let mut found: Option<Resolved> = None;
        for (layer, xwh) in self.search_layers(parent) {
            let Some(dirfd) = self.layers[layer].lookup_dir(dir_path)? else {
                continue;
            };
            let st = match layer::probe(dirfd.as_fd(), name, xwh, &self.lower_keys)? {
                Probe::Absent => continue,
                Probe::Whiteout => break,
                Probe::Object(st) => st,
            };
            let kind = FileType::from_raw_mode(st.st_mode);
            match &mut found {
                None => {
                    let mut node = Node {
                        ino: 0,
                        kind,
                        paths: Paths::one(&path),
                        upper: layer == 0 && self.upper.is_some(),
                        lowers: Lowers::default(),
                        lookups: 0,
                        generation: 0,
                    };
                    node.ino = self.inos.of((st.st_dev, st.st_ino));
                    if !node.upper {
                        node.lowers.push(layer);
                    }
                    let stop = kind != FileType::Directory
                        || self.dir_layer_markers(&dirfd, name, layer, &mut node)?;
                    found = Some(Resolved { node, top: st });
                    if stop {
                        break;
                    }
                }
                Some(r) => {
                    // Below a directory only directories merge; anything else ends the merge.
                    if kind != FileType::Directory {
                        break;
                    }
                    r.node.lowers.push(layer);
                    if self.dir_layer_markers(&dirfd, name, layer, &mut r.node)? {
                        break;
                    }
                }
            }
        }
        Ok(found)
    }

    /// Reads the markers of directory `name` in layer `layer`, records xattr-whiteout layers,
    /// and says whether it is opaque (the merge stops there).
    fn dir_layer_markers(
        &self,
        parent: &impl AsFd,
        name: &OsStr,
        layer: usize,
        node: &mut Node,
    ) -> Result<bool, Errno> {
        let open = crate::sys::path::open_noatime(
            parent.as_fd(),
            name,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        );
        let m = match open {
            Ok(fd) => layer::dir_markers(fd.as_fd(), &self.lower_keys)?,
            // A directory the daemon may not read (without CAP_DAC_*, or over NFS with root
            // squashed) still has a name, attributes and xattrs, as under the kernel, where
            // only listing it fails; its `.wh..wh..opq` file cannot be looked for.
            Err(Errno::ACCESS) => {
                layer::dir_xattr_markers(parent.as_fd(), Some(name), &self.lower_keys)?
            }
            Err(e) => return Err(e),
        };
        // Xattr whiteouts count in lowers only; layer 0 is a lower when there is no upper.
        if m.xwhiteouts && layer >= self.lower_start() {
            node.lowers.mark_xwhiteouts(layer);
        }
        Ok(m.opaque)
    }

    /// True when a lower layer under directory `parent` still shows `name`, so removing or
    /// renaming it away needs a whiteout.
    pub(crate) fn lower_has(&self, parent: &Node, name: &OsStr) -> Result<bool, Errno> {
        let dir_path = parent.path().ok_or(Errno::NOENT)?;
        for (layer, xwh) in parent.lowers.with_xwhiteouts() {
            let Some(dirfd) = self.layers[layer].lookup_dir(dir_path)? else {
                continue;
            };
            match layer::probe(dirfd.as_fd(), name, xwh, &self.lower_keys)? {
                Probe::Absent => continue,
                Probe::Whiteout => return Ok(false),
                Probe::Object(_) => return Ok(true),
            }
        }
        Ok(false)
    }
}
