//! Copy-up: making a lower object exist in the upper before it is changed.
//!
//! Parents first (the topmost missing ancestor first), each object built completely in the
//! workdir under a temporary name (data with holes kept, xattrs minus private ones, owner,
//! mode, times) and renamed into place with RENAME_NOREPLACE: a crash at any point leaves either
//! the lower version or the complete copy visible, and a leftover temporary only in the
//! workdir, which the next mount clears. Regular files are fsync'ed before the rename, as the
//! kernel does, so a power loss cannot make an empty copy visible (not on a `volatile` mount,
//! which, like the kernel's, trades that for speed); the copy starts writing each chunk back
//! while it copies the next, so that sync waits for little more than the copy itself.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat, Timestamps, XattrFlags};

use super::Union;
use crate::layer::upper::remove_tree;
use crate::node::{Node, Paths};
use crate::sys::{self, Errno};

/// A complete copy of a lower object, waiting in the work directory under `tmp`.
struct Staged {
    tmp: OsString,
    /// The lower object's stat when it was copied.
    src: Stat,
}

/// What `node` is once copied up (to `paths`, its names in the upper): in the upper; a
/// non-directory no longer has a lower copy.
fn copied_up(mut node: Node, paths: Paths) -> Node {
    node.upper = true;
    if !node.is_dir() {
        node.lowers.clear();
        node.paths = paths;
    }
    node
}

impl Union {
    /// Copies `node` up (with its data when `data` is set; open with O_TRUNC and truncate to
    /// zero need none) and returns its refreshed node. A node already in the upper is returned
    /// as it is.
    ///
    /// Errors: EROFS (no upper), ENOENT (it vanished), ENOSPC/EDQUOT/EIO from the upper.
    pub(crate) fn copy_up(&self, node: &Node, data: bool) -> Result<Node, Errno> {
        if node.upper {
            return Ok(node.clone());
        }
        // The data copy, the slow part, runs without the namespace lock, so a large copy-up
        // does not stall every lookup. That is safe: a lower file never changes, and neither
        // does its path until it is copied up (renaming it copies it up first; directories
        // above it have lower copies, so renaming them gives EXDEV). If it was unlinked or
        // copied up meanwhile, the staged copy is dropped below.
        let staged = match (data, node.kind, node.path()) {
            (true, FileType::RegularFile, Some(path)) => {
                Some((path.to_path_buf(), self.stage_one(node, path, true)?))
            }
            _ => None,
        };
        let _ns = self.ns.write();
        self.copy_up_staged(node, data, staged)
    }

    /// `copy_up` for callers already holding `ns` for writing. `node` may be one the table does
    /// not hold (resolved by name, never looked up by the kernel); the table's copy, fresher,
    /// wins when there is one.
    pub(crate) fn copy_up_locked(&self, node: &Node, data: bool) -> Result<Node, Errno> {
        self.copy_up_staged(node, data, None)
    }

    /// `copy_up_locked`, using `staged` (a copy of the object at a path) when it still fits.
    fn copy_up_staged(
        &self,
        node: &Node,
        data: bool,
        staged: Option<(PathBuf, Staged)>,
    ) -> Result<Node, Errno> {
        let node = self.nodes.get(node.ino).unwrap_or_else(|| node.clone());
        let staged = match staged {
            Some((p, s)) if !node.upper && node.paths.contains(&p) => Some((p, s)),
            Some((_, s)) => {
                self.discard(s);
                None
            }
            None => None,
        };
        if node.upper {
            return Ok(node);
        }
        self.upper()?;
        let path = match &staged {
            Some((p, _)) => p.clone(),
            None => node.path().ok_or(Errno::NOENT)?.to_path_buf(),
        };
        let parent = path.parent().ok_or(Errno::INVAL)?;
        if let Err(e) = self.ensure_upper_dir(parent) {
            if let Some((_, s)) = staged {
                self.discard(s);
            }
            return Err(e);
        }
        match staged {
            Some((_, s)) => self.place(&node, &path, s)?,
            None => self.copy_one(&node, &path, data)?,
        }
        // The kernel caches every name it looked up of a hard-linked lower file as this one
        // node, and open/setattr do not say which name they came through: link those names to
        // the copy so all of them keep showing one file (what the kernel's index=on does).
        // Names of the lower file never looked up stay in the lower, renumbered (see copy_one).
        let mut paths = Paths::one(&path);
        for alias in node.paths.iter().filter(|p| *p != path) {
            match self.link_alias(&path, alias) {
                Ok(()) => paths.push(alias),
                Err(e) => log::warn!("copy-up: {} stays a lower file: {e}", alias.display()),
            }
        }
        let ours = paths.clone();
        self.nodes
            .update(node.ino, |n| *n = copied_up(n.clone(), ours));
        Ok(self
            .nodes
            .get(node.ino)
            .unwrap_or_else(|| copied_up(node, paths)))
    }

    /// Makes `alias` a hard link to the already copied-up `path` in the upper.
    fn link_alias(&self, path: &Path, alias: &Path) -> Result<(), Errno> {
        self.ensure_upper_dir(alias.parent().ok_or(Errno::INVAL)?)?;
        let (src_dir, src_name) = self.open_parent(0, path)?;
        let (dst_dir, dst_name) = self.open_parent(0, alias)?;
        keeping_times(&dst_dir, || {
            rustix::fs::linkat(&src_dir, src_name, &dst_dir, dst_name, AtFlags::empty())
        })
    }

    /// Makes every directory of union path `dir` exist in the upper, topmost first.
    pub(crate) fn ensure_upper_dir(&self, dir: &Path) -> Result<(), Errno> {
        let mut cur = self.node(super::inode::ROOT)?;
        for comp in dir.components() {
            let name = comp.as_os_str();
            let child = self.resolve_child(&cur, name)?.ok_or(Errno::NOENT)?.node;
            if !child.is_dir() {
                return Err(Errno::NOTDIR);
            }
            let child_path = child.path().ok_or(Errno::NOENT)?.to_path_buf();
            cur = if child.upper {
                child
            } else {
                self.copy_one(&child, &child_path, true)?;
                // It is merged now (nlink 1), behind the kernel's cached attributes.
                self.stale_attrs.lock().push(child.ino);
                self.has_stale_attrs
                    .store(true, std::sync::atomic::Ordering::Release);
                Node {
                    upper: true,
                    ..child
                }
            };
        }
        Ok(())
    }

    /// Copies the single object `node` at `path` (whose parent is already in the upper).
    fn copy_one(&self, node: &Node, path: &Path, data: bool) -> Result<(), Errno> {
        let staged = self.stage_one(node, path, data)?;
        self.place(node, path, staged)
    }

    /// Builds a complete copy of the lower object `node` at `path` in the work directory.
    fn stage_one(&self, node: &Node, path: &Path, data: bool) -> Result<Staged, Errno> {
        let up = self.upper()?;
        let layer = node.lowers.first().ok_or(Errno::NOENT)?;
        let (src_dir, name) = self.open_parent(layer, path)?;
        let src = sys::path::stat_at(src_dir.as_fd(), name)?;
        let tmp = up.tmp_name();
        if let Err(e) = self.stage_copy(src_dir.as_fd(), name, &src, &tmp, data) {
            let _ = remove_tree(up.work.as_fd(), &tmp);
            return Err(e);
        }
        Ok(Staged { tmp, src })
    }

    /// Drops a staged copy that is not needed any more.
    fn discard(&self, staged: Staged) {
        if let Ok(up) = self.upper() {
            let _ = remove_tree(up.work.as_fd(), &staged.tmp);
        }
    }

    /// Renames the staged copy of `node` into place at `path` (whose parent is in the upper)
    /// and records that the node now lives in the upper.
    fn place(&self, node: &Node, path: &Path, staged: Staged) -> Result<(), Errno> {
        let up = self.upper()?;
        let placed = self.open_parent(0, path).and_then(|(dst_dir, name)| {
            keeping_times(&dst_dir, || {
                rustix::fs::renameat_with(
                    &up.work,
                    &staged.tmp,
                    &dst_dir,
                    name,
                    RenameFlags::NOREPLACE,
                )
            })
            .map(|()| (dst_dir, name))
        });
        let (dst_dir, name) = match placed {
            Ok(p) => p,
            Err(e) => {
                self.discard(staged);
                return Err(e);
            }
        };
        let src = staged.src;
        let now = sys::path::stat_at(dst_dir.as_fd(), name)?;
        self.inos.set_alias((now.st_dev, now.st_ino), node.ino);
        if !node.is_dir() && src.st_nlink > 1 {
            self.inos.break_lower_link((src.st_dev, src.st_ino));
        }
        self.nodes.update(node.ino, |n| n.upper = true);
        Ok(())
    }

    /// Builds a complete copy of `name` (in `src_dir`, described by `st`) as `tmp` in the
    /// work directory.
    fn stage_copy(
        &self,
        src_dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &Stat,
        tmp: &OsStr,
        data: bool,
    ) -> Result<(), Errno> {
        let work = self.upper()?.work.as_fd();
        let kind = FileType::from_raw_mode(st.st_mode);
        let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
        let file: Option<OwnedFd> = match kind {
            FileType::RegularFile => {
                let dst = sys::path::open_at(
                    work,
                    tmp,
                    OFlags::RDWR | OFlags::CREATE | OFlags::EXCL,
                    0o600,
                )?;
                if data && st.st_size > 0 {
                    let src = sys::path::open_noatime(src_dir, name, OFlags::RDONLY)?;
                    let len = st.st_size as u64;
                    sys::copy::copy_data(src.as_fd(), dst.as_fd(), len, !self.volatile)?;
                }
                Some(dst)
            }
            FileType::Directory => {
                rustix::fs::mkdirat(work, tmp, Mode::from_raw_mode(0o700))?;
                None
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(src_dir, name, Vec::new())?;
                rustix::fs::symlinkat(target.as_c_str(), work, tmp)?;
                None
            }
            other => {
                rustix::fs::mknodat(work, tmp, other, Mode::from_raw_mode(0o600), st.st_rdev)?;
                None
            }
        };
        copy_xattrs(src_dir, name, work, tmp)?;
        let uid = rustix::fs::Uid::from_raw(st.st_uid);
        let gid = rustix::fs::Gid::from_raw(st.st_gid);
        // chown before chmod: chown clears setuid/setgid, which must survive as the lower had them.
        rustix::fs::chownat(work, tmp, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)?;
        if kind != FileType::Symlink {
            rustix::fs::chmodat(work, tmp, mode, AtFlags::empty())?;
        }
        rustix::fs::utimensat(work, tmp, &times_of(st), AtFlags::SYMLINK_NOFOLLOW)?;
        if let Some(f) = file.filter(|_| data && st.st_size > 0 && !self.volatile) {
            rustix::fs::fsync(&f)?;
        }
        Ok(())
    }
}

/// Runs `f`, which adds a copied-up entry to the upper directory `dir`, and gives `dir` back
/// the access and modification times it had: a copy-up changes nothing in the union's
/// namespace, and the kernel's copy-up keeps the parent's times too (otherwise a directory
/// would show as modified whenever a child is copied up, and podman's layer diffs list it).
fn keeping_times(dir: &OwnedFd, f: impl FnOnce() -> Result<(), Errno>) -> Result<(), Errno> {
    let before = sys::path::fstat(dir.as_fd());
    f()?;
    if let Ok(st) = before
        && let Err(e) = rustix::fs::futimens(dir, &times_of(&st))
    {
        // Only the directory's times are off; the copy-up itself is complete.
        log::debug!("copy-up: cannot restore a parent directory's times: {e}");
    }
    Ok(())
}

/// The access and modification times of `st`, to set on a copy.
fn times_of(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

/// Copies the xattrs of `name` in `src_dir` to `tmp` in `dst_dir`, leaving out private ones
/// (but keeping `override_stat`, see `format::is_copied_up`).
/// A namespace the upper refuses (e.g. `user.*` on a symlink) is skipped, as the kernel does
/// for xattrs it cannot copy.
fn copy_xattrs(
    src_dir: BorrowedFd<'_>,
    name: &OsStr,
    dst_dir: BorrowedFd<'_>,
    tmp: &OsStr,
) -> Result<(), Errno> {
    for key in sys::xattr::list(src_dir, Some(name))? {
        if !crate::format::is_copied_up(&key) {
            continue;
        }
        let Some(value) = sys::xattr::get_opt(src_dir, Some(name), &key)? else {
            continue;
        };
        match sys::xattr::set(dst_dir, Some(tmp), &key, &value, XattrFlags::empty()) {
            Ok(()) => {}
            Err(e) if sys::is_unsupported(e) => log::debug!("copy-up: xattr {key} not copied: {e}"),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
