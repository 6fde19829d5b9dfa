//! Attributes: stat, setattr (chmod, chown, truncate, utimens), readlink, statfs, access and
//! extended attributes. Every change copies the object up first; the overlay's private xattrs
//! are neither listed, read nor settable.

use std::ffi::OsStr;
use std::os::fd::AsFd;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, StatFs, Timespec, Timestamps, XattrFlags};

use super::{Attr, Ctx, Union};
use crate::format;
use crate::idmap::{OVERRIDE_STAT_XATTR, OverrideStat};
use crate::node::Node;
use crate::sys::{self, Errno};

/// A timestamp to set.
#[derive(Clone, Copy, Debug)]
pub enum SetTime {
    Now,
    At(Timespec),
}

/// What a setattr changes; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// The open handle the change came through, if any (ftruncate).
    pub fh: Option<u64>,
}

const UTIME_NOW: i64 = (1 << 30) - 1;
const UTIME_OMIT: i64 = (1 << 30) - 2;

fn timespec(t: Option<SetTime>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        Some(SetTime::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_NOW,
        },
        Some(SetTime::At(ts)) => ts,
    }
}

/// The result of a chown of the upper; under squashing a refusal is ignored, as
/// fuse-overlayfs does (the owner shown is the squashed one either way).
pub(super) fn chown_result(r: Result<(), Errno>, squash: bool) -> Result<(), Errno> {
    match r {
        Err(Errno::PERM | Errno::INVAL) if squash => Ok(()),
        r => r,
    }
}

/// Applies owner, mode and time changes of `set` to an open fd.
fn apply_fd(fd: std::os::fd::BorrowedFd<'_>, set: &SetAttr, squash: bool) -> Result<(), Errno> {
    if set.uid.is_some() || set.gid.is_some() {
        let r = rustix::fs::fchown(
            fd,
            set.uid.map(rustix::fs::Uid::from_raw),
            set.gid.map(rustix::fs::Gid::from_raw),
        );
        chown_result(r, squash)?;
    }
    if let Some(mode) = set.mode {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777))?;
    }
    if set.atime.is_some() || set.mtime.is_some() {
        let ts = Timestamps {
            last_access: timespec(set.atime),
            last_modification: timespec(set.mtime),
        };
        rustix::fs::futimens(fd, &ts)?;
    }
    Ok(())
}

impl Union {
    /// The attributes of `ino`.
    ///
    /// Errors: ENOENT when the node is unknown or its object vanished.
    pub fn getattr(&self, ino: u64) -> Result<Attr, Errno> {
        let _ns = self.ns.read();
        let node = self.node(ino)?;
        self.attr_of(&node)
    }

    pub(crate) fn attr_of(&self, node: &Node) -> Result<Attr, Errno> {
        let st = match (node.path(), node.top_layer()) {
            (Some(path), Some(layer)) => self.stat_in(layer, path)?,
            // Unlinked but still open: stat through a handle, or the pin of a removed object
            // the kernel still holds.
            _ => match self.files.find(|h| h.ino == node.ino) {
                Some(h) => sys::path::fstat(&*h.fd.read())?,
                None => sys::path::fstat(&*self.nodes.pin(node.ino).ok_or(Errno::NOENT)?)?,
            },
        };
        Ok(self.attr_from(node, st))
    }

    /// Changes attributes of `ino`, copying it up first. New owners are shown ids, stored
    /// reverse-mapped (`idmap`); on an object carrying `override_stat`, owner and mode changes
    /// go to that xattr instead (see `set_override`).
    ///
    /// Errors: EROFS (read-only union), ENOENT, EISDIR (truncate of a directory), EOVERFLOW (an
    /// owner outside the uid/gid mapping), and what the upper filesystem gives (EPERM, EINVAL,
    /// ENOSPC).
    pub fn setattr(&self, _ctx: &Ctx, ino: u64, set: &SetAttr) -> Result<Attr, Errno> {
        let node = self.node(ino)?;
        let mut set = SetAttr {
            uid: set.uid.map(|u| self.ids.disk_uid(u)).transpose()?,
            gid: set.gid.map(|g| self.ids.disk_gid(g)).transpose()?,
            ..*set
        };
        let squash = self.ids.squashes();
        // Refuse what cannot succeed before copying anything up (the kernel's VFS refuses
        // these before overlayfs is asked).
        if set.size.is_some() && node.is_dir() {
            return Err(Errno::ISDIR);
        }
        if set.mode.is_some() && node.kind == FileType::Symlink {
            return Err(Errno::OPNOTSUPP);
        }
        // Truncating to zero needs no data copy.
        let node = self.copy_up(&node, set.size != Some(0))?;
        // No rename may move the object while it is changed through its path.
        let _ns = self.ns.read();
        let node = self.node(node.ino).unwrap_or(node);
        self.set_override(&node, &mut set)?;
        if let Some(size) = set.size {
            match set.fh.and_then(|fh| self.files.get(fh)) {
                Some(h) if h.on_upper.load(std::sync::atomic::Ordering::Acquire) => {
                    rustix::fs::ftruncate(&*h.fd.read(), size)?
                }
                _ => {
                    let (dir, name) = self.open_parent(0, node.path().ok_or(Errno::NOENT)?)?;
                    let fd = sys::path::open_at(dir.as_fd(), name, OFlags::WRONLY, 0)?;
                    rustix::fs::ftruncate(&fd, size)?;
                }
            }
        }
        match node.path() {
            // The root has no parent to act through: change the upper root itself.
            Some(p) if p.as_os_str().is_empty() => {
                apply_fd(self.layers[0].root.as_fd(), &set, squash)?
            }
            Some(path) => {
                let (dir, name) = self.open_parent(0, path)?;
                if set.uid.is_some() || set.gid.is_some() {
                    let uid = set.uid.map(rustix::fs::Uid::from_raw);
                    let gid = set.gid.map(rustix::fs::Gid::from_raw);
                    let r = rustix::fs::chownat(&dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW);
                    chown_result(r, squash)?;
                }
                if let Some(mode) = set.mode {
                    sys::path::chmod_nofollow(
                        dir.as_fd(),
                        name,
                        Mode::from_raw_mode(mode & 0o7777),
                    )?;
                }
                if set.atime.is_some() || set.mtime.is_some() {
                    let ts = Timestamps {
                        last_access: timespec(set.atime),
                        last_modification: timespec(set.mtime),
                    };
                    rustix::fs::utimensat(&dir, name, &ts, AtFlags::SYMLINK_NOFOLLOW)?;
                }
            }
            // Unlinked but open: change what the handle points at.
            None => {
                let h = self.files.find(|h| h.ino == node.ino).ok_or(Errno::NOENT)?;
                apply_fd(h.fd.read().as_fd(), &set, squash)?;
            }
        }
        self.attr_of(&node)
    }

    /// The `override_stat` of the topmost copy of `node` (whose disk stat is `st`), if it
    /// carries a well-formed one that is honoured: in a union with `override_stat` enabled, on
    /// an object we own (see `Union::mounter_uid`).
    pub(crate) fn override_of(&self, node: &Node, st: &Stat) -> Option<OverrideStat> {
        if !self.override_stat || st.st_uid != self.mounter_uid {
            return None;
        }
        let v = self
            .with_top(node, |dir, name| {
                sys::xattr::get_opt(dir, name, OVERRIDE_STAT_XATTR)
            })
            .ok()??;
        OverrideStat::parse(&v)
    }

    /// On an object (already in the upper) that carries `override_stat`, a chown or chmod
    /// rewrites that value instead of the file, as fuse-overlayfs does: the file keeps the
    /// owner and mode that let the rootless user reach it. Takes the fields it handled out
    /// of `set`.
    fn set_override(&self, node: &Node, set: &mut SetAttr) -> Result<(), Errno> {
        if !self.override_stat || set.uid.is_none() && set.gid.is_none() && set.mode.is_none() {
            return Ok(());
        }
        let Some(path) = node.path() else {
            return Ok(());
        };
        let st = self.stat_in(0, path)?;
        let Some(mut o) = self.override_of(node, &st) else {
            return Ok(());
        };
        o.uid = set.uid.take().unwrap_or(o.uid);
        o.gid = set.gid.take().unwrap_or(o.gid);
        o.mode = set.mode.take().map_or(o.mode, |m| m & 0o7777);
        let value = o.to_value();
        self.with_top(node, |dir, name| {
            sys::xattr::set(
                dir,
                name,
                OVERRIDE_STAT_XATTR,
                value.as_bytes(),
                XattrFlags::empty(),
            )
        })
    }

    /// The target of symlink `ino`.
    ///
    /// Errors: EINVAL when it is not a symlink, ENOENT.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let _ns = self.ns.read();
        let node = self.node(ino)?;
        if node.kind != FileType::Symlink {
            return Err(Errno::INVAL);
        }
        let (layer, path) = (
            node.top_layer().ok_or(Errno::NOENT)?,
            node.path().ok_or(Errno::NOENT)?,
        );
        let (dir, name) = self.open_parent(layer, path)?;
        Ok(rustix::fs::readlinkat(&dir, name, Vec::new())?.into_bytes())
    }

    /// Filesystem statistics: the upper's, or the top lower's in a read-only union.
    pub fn statfs(&self) -> Result<StatFs, Errno> {
        rustix::fs::fstatfs(&self.layers[0].root)
    }

    /// access(2): existence, and EROFS for write access to a read-only union. Permission bits
    /// are checked by the kernel (default_permissions).
    pub fn access(&self, ino: u64, mask: u32) -> Result<(), Errno> {
        let _ns = self.ns.read();
        let node = self.node(ino)?;
        self.attr_of(&node)?;
        if mask & 2 != 0 && self.is_read_only() {
            return Err(Errno::ROFS);
        }
        Ok(())
    }

    /// The value of xattr `key` (the ids of a POSIX ACL mapped, see `IdPolicy::show_xattr`).
    ///
    /// Errors: ENODATA when absent, or private (the overlay's own xattrs do not exist for the
    /// user); ENOTSUP where the layer has no xattrs.
    pub fn getxattr(&self, ino: u64, key: &OsStr) -> Result<Vec<u8>, Errno> {
        let key = key.to_str().ok_or(Errno::NODATA)?;
        if format::is_private_xattr(key) {
            return Err(Errno::NODATA);
        }
        let _ns = self.ns.read();
        let node = self.node(ino)?;
        let value = self.with_top(&node, |dir, name| sys::xattr::get(dir, name, key))?;
        Ok(self.ids.show_xattr(key, value))
    }

    /// The names of the xattrs of `ino`, private ones left out.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<String>, Errno> {
        let _ns = self.ns.read();
        let node = self.node(ino)?;
        let mut keys = self.with_top(&node, sys::xattr::list)?;
        keys.retain(|k| !format::is_private_xattr(k));
        Ok(keys)
    }

    /// Sets xattr `key` after copying the object up (the ids of a POSIX ACL reverse-mapped).
    ///
    /// Errors: EPERM for private overlay xattrs, EROFS, EEXIST/ENODATA per `flags`, ENOTSUP,
    /// EINVAL for an ACL naming an id outside the uid/gid mapping.
    pub fn setxattr(&self, ino: u64, key: &OsStr, value: &[u8], flags: u32) -> Result<(), Errno> {
        let key = key.to_str().ok_or(Errno::OPNOTSUPP)?;
        if format::is_private_xattr(key) {
            return Err(Errno::PERM);
        }
        let value = self.ids.disk_xattr(key, value)?;
        self.copy_up(&self.node(ino)?, true)?;
        let _ns = self.ns.read();
        let node = self.node(ino)?;
        let flags = XattrFlags::from_bits(flags).ok_or(Errno::INVAL)?;
        self.with_top(&node, |dir, name| {
            sys::xattr::set(dir, name, key, &value, flags)
        })
    }

    /// Removes xattr `key` after copying the object up.
    ///
    /// Errors: EPERM for private overlay xattrs, ENODATA when absent, EROFS.
    pub fn removexattr(&self, ino: u64, key: &OsStr) -> Result<(), Errno> {
        let key = key.to_str().ok_or(Errno::NODATA)?;
        if format::is_private_xattr(key) {
            return Err(Errno::PERM);
        }
        let node = self.node(ino)?;
        // Removing an absent xattr must not copy up.
        self.getxattr(ino, OsStr::new(key))?;
        self.copy_up(&node, true)?;
        let _ns = self.ns.read();
        let node = self.node(ino)?;
        self.with_top(&node, |dir, name| sys::xattr::remove(dir, name, key))
    }

    /// Runs `f` on the topmost copy of `node` as (directory fd, name); the root is the layer
    /// root itself (name `None`).
    pub(crate) fn with_top<T>(
        &self,
        node: &Node,
        f: impl FnOnce(std::os::fd::BorrowedFd<'_>, Option<&OsStr>) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let layer = node.top_layer().ok_or(Errno::NOENT)?;
        let path = node.path().ok_or(Errno::NOENT)?;
        if path.as_os_str().is_empty() {
            return f(self.layers[layer].root.as_fd(), None);
        }
        let (dir, name) = self.open_parent(layer, path)?;
        f(dir.as_fd(), Some(name))
    }
}
