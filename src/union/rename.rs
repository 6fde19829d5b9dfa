//! rename(2) and renameat2(2) with RENAME_NOREPLACE and RENAME_EXCHANGE.
//!
//! The source is copied up, the destination's parent too, and the move is one rename in the
//! upper. When a lower layer still shows the old name, RENAME_WHITEOUT leaves a whiteout
//! there in the same step; when nothing below has it, no marker is written (fuse-overlayfs
//! #327). A directory moved onto a name that lower layers still have is marked opaque, so their
//! contents do not merge into it. Directories that have lower copies give EXDEV, as the kernel
//! does without `redirect_dir`.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{FileType, RenameFlags as SysRename};

use super::{Ctx, Union};
use crate::format;
use crate::node::{Node, child_path};
use crate::sys::{self, Errno};

/// renameat2 flags the engine understands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    pub noreplace: bool,
    pub exchange: bool,
}

impl Union {
    /// Renames `name` in `parent` to `newname` in `newparent`.
    ///
    /// Errors: ENOENT (no source, or no destination with `exchange`), EEXIST (`noreplace` and
    /// the destination exists), ENOTDIR/EISDIR (type mismatch), ENOTEMPTY (a non-empty
    /// directory would be replaced), EXDEV (a directory with lower copies), EROFS, EINVAL.
    pub fn rename(
        &self,
        _ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if flags.noreplace && flags.exchange {
            return Err(Errno::INVAL);
        }
        sys::path::check_name(newname)?;
        if format::is_marker_name(newname) {
            return Err(Errno::INVAL);
        }
        let _ns = self.ns.write();
        let up = self.upper()?;
        let sp = self.node(parent)?;
        let dp = self.node(newparent)?;
        let src = self.resolve_child(&sp, name)?.ok_or(Errno::NOENT)?.node;
        let dst = self.resolve_child(&dp, newname)?.map(|r| r.node);
        match (&dst, flags.exchange) {
            (None, true) => return Err(Errno::NOENT),
            (Some(_), _) if flags.noreplace => return Err(Errno::EXIST),
            _ => {}
        }
        if let Some(d) = &dst {
            if d.ino == src.ino {
                // Two names of one file: rename(2) does nothing.
                return Ok(());
            }
            if !flags.exchange {
                match (src.is_dir(), d.is_dir()) {
                    (true, false) => return Err(Errno::NOTDIR),
                    (false, true) => return Err(Errno::ISDIR),
                    _ => {}
                }
            }
        }
        // EXDEV before ENOTEMPTY, as the kernel checks.
        let has_lower_dir = |n: &Node| n.is_dir() && (!n.lowers.is_empty());
        if has_lower_dir(&src) || (flags.exchange && dst.as_ref().is_some_and(has_lower_dir)) {
            return Err(Errno::XDEV);
        }
        if let Some(d) = &dst
            && !flags.exchange
            && src.is_dir()
            && d.is_dir()
            && !self.merged_entries(d)?.is_empty()
        {
            return Err(Errno::NOTEMPTY);
        }
        let src_path = src.path().ok_or(Errno::NOENT)?.to_path_buf();
        let src_below = self.lower_has(&sp, name)?;
        let dst_below = self.lower_has(&dp, newname)?;

        // Everything the rename touches must be in the upper.
        self.copy_up_locked(&src, true)?;
        if let (true, Some(d)) = (flags.exchange, &dst) {
            self.copy_up_locked(d, true)?;
        }
        let sp = self.copy_up_locked(&sp, true)?;
        let dp = self.copy_up_locked(&dp, true)?;
        let sdir = self.layers[0].open_dir(sp.path().ok_or(Errno::NOENT)?)?;
        let ddir = self.layers[0].open_dir(dp.path().ok_or(Errno::NOENT)?)?;
        let new_path = child_path(dp.path().ok_or(Errno::NOENT)?, newname);

        // A directory landing where lower layers still have the name must hide them.
        if src.is_dir() && dst_below {
            up.set_opaque(sdir.as_fd(), Some(name))?;
        }
        if flags.exchange {
            if dst.as_ref().is_some_and(|d| d.is_dir()) && src_below {
                up.set_opaque(ddir.as_fd(), Some(newname))?;
            }
            rustix::fs::renameat_with(&sdir, name, &ddir, newname, SysRename::EXCHANGE)?;
            let d = dst.as_ref().ok_or(Errno::NOENT)?;
            self.nodes.rename_paths(
                &[(&src_path, &new_path), (&new_path, &src_path)],
                &[src.ino, d.ino],
                src.is_dir() || d.is_dir(),
            );
            return Ok(());
        }

        if let Some(d) = &dst {
            self.settle_handles(d.ino);
        }
        let dst_pin = dst
            .as_ref()
            .and_then(|d| self.pin_removed(ddir.as_fd(), newname, d));
        // An upper directory being replaced may still hold whiteouts (it is empty in the
        // merged view, checked above): swap it for an empty one first so the rename onto it
        // succeeds, without ever showing what the whiteouts hide.
        let upper_dst = sys::not_found_as_none(sys::path::stat_at(ddir.as_fd(), newname))?;
        if let Some(st) = &upper_dst {
            let dst_kind = FileType::from_raw_mode(st.st_mode);
            if dst_kind == FileType::Directory {
                up.empty_dir(ddir.as_fd(), newname, st, dst_below)?;
            } else if src.is_dir() && dst_kind == FileType::CharacterDevice {
                // A directory cannot be renamed onto a whiteout: exchange them instead, which
                // leaves the whiteout at the old name, where it is kept only if needed.
                rustix::fs::renameat_with(&sdir, name, &ddir, newname, SysRename::EXCHANGE)?;
                if !src_below {
                    rustix::fs::unlinkat(&sdir, name, rustix::fs::AtFlags::empty())?;
                }
                self.finish_move(&src, dst.as_ref(), &src_path, &new_path, dst_pin);
                return Ok(());
            }
        }
        let mut rflags = SysRename::empty();
        if src_below {
            rflags |= SysRename::WHITEOUT;
        }
        match rustix::fs::renameat_with(&sdir, name, &ddir, newname, rflags) {
            Err(Errno::INVAL) if src_below => {
                // No RENAME_WHITEOUT on this filesystem: rename, then whiteout.
                rustix::fs::renameat_with(&sdir, name, &ddir, newname, SysRename::empty())?;
                up.make_whiteout(sdir.as_fd(), name)?;
            }
            r => r?,
        }
        self.finish_move(&src, dst.as_ref(), &src_path, &new_path, dst_pin);
        Ok(())
    }

    /// Updates the node table after `src` moved from `from` to `to`, replacing `dst` (pinned
    /// by `dst_pin`, see `Node::pin`).
    fn finish_move(
        &self,
        src: &Node,
        dst: Option<&Node>,
        from: &Path,
        to: &Path,
        dst_pin: Option<std::os::fd::OwnedFd>,
    ) {
        if let Some(d) = dst {
            self.nodes.unlink_path(d.ino, to, dst_pin);
        }
        self.nodes
            .rename_paths(&[(from, to)], &[src.ino], src.is_dir());
        if src.is_dir() {
            // It was upper-only; after the move it merges nothing (opaque or nothing below).
            self.nodes.update(src.ino, |n| n.lowers.clear());
        }
    }
}
