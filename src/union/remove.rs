//! Removing names: unlink and rmdir.
//!
//! A name that some lower layer still shows below is replaced by a whiteout in the same
//! rename that moves the upper object away (the kernel's exchange with a whiteout staged in
//! the workdir); a name only the upper has is simply removed, leaving no
//! marker behind. A removed directory's leftover whiteouts are cleared inside the workdir, out
//! of sight.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::OFlags;

use super::{Ctx, Union};
use crate::node::{Node, child_path};
use crate::sys::{self, Errno};

impl Union {
    /// unlink(2).
    ///
    /// Errors: ENOENT, EISDIR, EROFS, ENOTDIR (parent).
    pub fn unlink(&self, _ctx: &Ctx, parent: u64, name: &OsStr) -> Result<(), Errno> {
        self.remove_name(parent, name, false)
    }

    /// rmdir(2).
    ///
    /// Errors: ENOENT, ENOTDIR, ENOTEMPTY (something is listed in the merged view), EROFS.
    pub fn rmdir(&self, _ctx: &Ctx, parent: u64, name: &OsStr) -> Result<(), Errno> {
        self.remove_name(parent, name, true)
    }

    fn remove_name(&self, parent: u64, name: &OsStr, want_dir: bool) -> Result<(), Errno> {
        let _ns = self.ns.write();
        let up = self.upper()?;
        let pnode = self.node(parent)?;
        let victim = self.resolve_child(&pnode, name)?.ok_or(Errno::NOENT)?.node;
        match (want_dir, victim.is_dir()) {
            (true, false) => return Err(Errno::NOTDIR),
            (false, true) => return Err(Errno::ISDIR),
            _ => {}
        }
        if want_dir && !self.merged_entries(&victim)?.is_empty() {
            return Err(Errno::NOTEMPTY);
        }
        let whiteout = !victim.lowers.is_empty() || self.lower_has(&pnode, name)?;
        let pnode = self.copy_up_locked(&pnode, true)?;
        let dir = self.layers[0].open_dir(pnode.path().ok_or(Errno::NOENT)?)?;
        let pin = self.pin_removed(dir.as_fd(), name, &victim);
        if victim.upper {
            self.settle_handles(victim.ino);
            up.remove(dir.as_fd(), name, want_dir, whiteout)?;
        } else {
            up.make_whiteout(dir.as_fd(), name)?;
        }
        let path = child_path(pnode.path().ok_or(Errno::NOENT)?, name);
        self.nodes.unlink_path(victim.ino, &path, pin);
        Ok(())
    }

    /// An `O_PATH` fd to the upper object `name` in `dir`, about to be removed, when the
    /// kernel holds its node by no other name (see `Node::pin`).
    pub(crate) fn pin_removed(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        victim: &Node,
    ) -> Option<OwnedFd> {
        let held = self.nodes.get(victim.ino)?;
        if !victim.upper || held.paths.len() > 1 {
            return None;
        }
        sys::path::open_at(dir, name, OFlags::PATH, 0).ok()
    }
}
