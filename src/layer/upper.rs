//! The upper layer and its workdir: the only place anything is ever written.
//!
//! Invariants: a new object that must appear atomically (a copy-up, a directory replacing a
//! whiteout) is built in `WORKDIR/work` under a temporary name and renamed into place; markers
//! are written in the kernel's format only (char 0/0 whiteouts, `<ns>.overlay.opaque` = `y`);
//! the workdir's temporaries are removed at mount, so a crash leaves nothing visible behind.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, RenameFlags, Stat, Uid, XattrFlags};

use super::Layer;
use crate::config::XattrNamespace;
use crate::format::MarkerKeys;
use crate::sys::{self, Errno};

/// Name of the staging directory inside the workdir (the kernel uses the same name, and clears
/// it at its own mounts, so one workdir can serve both).
pub const WORK_SUBDIR: &str = "work";

/// The read-write layer plus its workdir.
#[derive(Debug)]
pub struct Upper {
    pub layer: Layer,
    /// `WORKDIR/work`, on the upper's filesystem.
    pub work: OwnedFd,
    /// The workdir itself, kept open (and flock'ed by `setup`) for the life of the mount.
    pub workdir: OwnedFd,
    pub keys: MarkerKeys,
    next_tmp: AtomicU64,
    /// Whether `WORK_SUBDIR/SHARED_WHITEOUT` exists for new whiteouts to be hard links to.
    shared_whiteout: parking_lot::Mutex<bool>,
}

/// The whiteout in the work directory that whiteouts are hard links to.
pub const SHARED_WHITEOUT: &str = "whiteout";

impl Upper {
    /// Opens the upper and prepares `WORKDIR/work`, clearing what a crashed mount left there.
    pub fn open(upper: &Path, workdir: &Path, ns: XattrNamespace) -> Result<Upper, Errno> {
        let layer = Layer::open(upper)?;
        let wd = Layer::open(workdir)?;
        let work_name = OsStr::new(WORK_SUBDIR);
        match rustix::fs::mkdirat(&wd.root, work_name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e),
        }
        let work = sys::path::open_at(
            wd.root.as_fd(),
            work_name,
            OFlags::RDONLY | OFlags::DIRECTORY,
            0,
        )?;
        let up = Upper {
            layer,
            work,
            workdir: wd.root,
            keys: MarkerKeys::new(ns.overlay_prefix()),
            next_tmp: AtomicU64::new(0),
            shared_whiteout: parking_lot::Mutex::new(false),
        };
        up.clear_work()?;
        Ok(up)
    }

    /// Removes every leftover in `WORKDIR/work`.
    pub fn clear_work(&self) -> Result<(), Errno> {
        let fd = sys::path::open_dir_beneath(self.work.as_fd(), Path::new(""))?;
        for e in sys::dir::read_all(fd)? {
            remove_tree(self.work.as_fd(), &e.name)?;
        }
        Ok(())
    }

    /// A fresh temporary name in the work directory.
    pub fn tmp_name(&self) -> OsString {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        OsString::from(format!("#um{:x}.{}", n, std::process::id()))
    }

    /// Creates a kernel-format whiteout (char 0/0) at `name` in `dir`.
    ///
    /// Like the kernel, whiteouts are hard links to one whiteout kept in the work directory:
    /// allocating a fresh inode for each is what made `rm -rf` of a lower tree slow (ext4
    /// scans for recently deleted inodes on every allocation). When a link is refused (too
    /// many links, or a filesystem without hard links to devices) a fresh one is made.
    pub fn make_whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
        let src = OsStr::new(SHARED_WHITEOUT);
        let mut shared = self.shared_whiteout.lock();
        for _ in 0..2 {
            if !*shared {
                // Full (its links elsewhere stay), or never made: start a new one.
                let _ = rustix::fs::unlinkat(&self.work, src, AtFlags::empty());
                new_whiteout(self.work.as_fd(), src)?;
                *shared = true;
            }
            match rustix::fs::linkat(&self.work, src, dir, name, AtFlags::empty()) {
                Ok(()) => return Ok(()),
                Err(Errno::MLINK) | Err(Errno::NOENT) => *shared = false,
                Err(Errno::EXIST) => return Err(Errno::EXIST),
                Err(e) => {
                    log::debug!("whiteouts cannot be hard links here ({e}); making each anew");
                    break;
                }
            }
        }
        new_whiteout(dir, name)
    }

    /// Marks the directory `name` in `dir` opaque.
    pub fn set_opaque(&self, dir: BorrowedFd<'_>, name: Option<&OsStr>) -> Result<(), Errno> {
        sys::xattr::set(dir, name, &self.keys.opaque, b"y", XattrFlags::empty())
    }

    /// Makes the upper directory `name` in `dir` (`st`, empty in the merged view but maybe
    /// holding markers) empty, in one step: like the kernel's `ovl_clear_empty`, an empty
    /// directory with its owner and mode (opaque when `opaque`: lower layers have the name) is
    /// staged in the work directory and exchanged with it, and the old one is removed there.
    /// Removing the markers in place would show what they hide until the last one is gone,
    /// and for good after a crash or an error half-way.
    pub fn empty_dir(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &Stat,
        opaque: bool,
    ) -> Result<(), Errno> {
        let list = sys::path::open_at(dir, name, OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
        if sys::dir::read_all(list)?.is_empty() {
            return Ok(());
        }
        let tmp = self.tmp_name();
        rustix::fs::mkdirat(&self.work, &tmp, Mode::from_raw_mode(0o700))?;
        let swapped = rustix::fs::chownat(
            &self.work,
            &tmp,
            Some(Uid::from_raw(st.st_uid)),
            Some(Gid::from_raw(st.st_gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .and_then(|()| {
            let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
            rustix::fs::chmodat(&self.work, &tmp, mode, AtFlags::empty())
        })
        .and_then(|()| match opaque {
            true => self.set_opaque(self.work.as_fd(), Some(&tmp)),
            false => Ok(()),
        })
        .and_then(|()| {
            rustix::fs::renameat_with(&self.work, &tmp, dir, name, RenameFlags::EXCHANGE)
        });
        // After the exchange the temporary name holds the old directory; out of sight, so a
        // failure to remove it only leaves what the next mount clears.
        if let Err(e) = remove_tree(self.work.as_fd(), &tmp) {
            log::warn!(
                "cannot remove {} from the work directory: {e}",
                tmp.to_string_lossy()
            );
        }
        swapped
    }

    /// Moves `name` out of `dir` into the work directory and removes it there, leaving a
    /// whiteout in its place when `whiteout` is set. The name disappears (or turns into a
    /// whiteout) in one rename; the removal of its contents happens out of sight.
    pub fn remove(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        is_dir: bool,
        whiteout: bool,
    ) -> Result<(), Errno> {
        if !whiteout && !is_dir {
            return rustix::fs::unlinkat(dir, name, AtFlags::empty());
        }
        let tmp = self.tmp_name();
        if whiteout {
            // The kernel's way: a whiteout staged in the workdir (a link to the shared one)
            // exchanged with the victim. Not RENAME_WHITEOUT: its new whiteout would take the
            // group of a setgid directory, where the kernel's is the mounter's.
            self.make_whiteout(self.work.as_fd(), &tmp)?;
            if let Err(e) =
                rustix::fs::renameat_with(&self.work, &tmp, dir, name, RenameFlags::EXCHANGE)
            {
                let _ = rustix::fs::unlinkat(&self.work, &tmp, AtFlags::empty());
                return Err(e);
            }
        } else {
            rustix::fs::renameat_with(dir, name, &self.work, &tmp, RenameFlags::NOREPLACE)?;
        }
        remove_tree(self.work.as_fd(), &tmp)
    }
}

fn new_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    rustix::fs::mknodat(dir, name, FileType::CharacterDevice, Mode::empty(), 0)
}

impl Drop for Upper {
    /// Leaves the workdir empty at unmount (the next mount, ours or the kernel's, would clear
    /// it anyway).
    fn drop(&mut self) {
        let _ = rustix::fs::unlinkat(&self.work, SHARED_WHITEOUT, AtFlags::empty());
    }
}

/// Removes `name` in `dir` and, if it is a directory, everything below it (never following
/// symlinks). Only ever called on the workdir or on upper directories holding only markers.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    }
    let sub = sys::path::open_at(dir, name, OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
    let list = sys::path::open_dir_beneath(sub.as_fd(), Path::new(""))?;
    for e in sys::dir::read_all(list)? {
        remove_tree(sub.as_fd(), &e.name)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}
