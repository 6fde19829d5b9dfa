//! Creating objects: mknod, mkdir, symlink, create (open with O_CREAT) and link.
//!
//! A new object is always made in the upper, in the caller's name (owner from the request,
//! group from a setgid parent, mode minus umask). Over a whiteout it is built in the workdir
//! and swapped in by one rename; a directory made there is marked opaque first, so a deleted
//! directory's old contents can never show through again (`rm -rf d && mkdir d`).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, RenameFlags, Uid};

use super::{Attr, Ctx, Union};
use crate::format;
use crate::layer::upper::remove_tree;
use crate::sys::{self, Errno};

/// What to create.
pub enum NewObject<'a> {
    Dir,
    File(OFlags),
    Symlink(&'a OsStr),
    /// FIFO, socket, character or block device with its device number.
    Special(FileType, u64),
    /// A hard link to the upper object `name` in directory `dir`.
    Link(BorrowedFd<'a>, &'a OsStr),
}

impl Union {
    /// mknod(2): a FIFO, socket, device node (or empty regular file) `name` in `parent`.
    ///
    /// Errors: EEXIST, EROFS, ENOENT/ENOTDIR (parent), EPERM (devices without privilege, or
    /// a char device 0/0, which would be a whiteout), EINVAL (a name that is not one
    /// component, or a `.wh.*` marker name), EOVERFLOW (the caller's uid or gid is outside
    /// the uid/gid mapping).
    pub fn mknod(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u64,
    ) -> Result<Attr, Errno> {
        let kind = FileType::from_raw_mode(mode);
        let spec = match kind {
            FileType::RegularFile => NewObject::File(OFlags::WRONLY),
            // A char device 0/0 is a whiteout in the upper: refused like the kernel does.
            FileType::CharacterDevice if rdev == 0 => return Err(Errno::PERM),
            FileType::Fifo
            | FileType::Socket
            | FileType::CharacterDevice
            | FileType::BlockDevice => NewObject::Special(kind, rdev),
            _ => return Err(Errno::INVAL),
        };
        Ok(self.create_object(ctx, parent, name, mode, spec)?.0)
    }

    /// mkdir(2). Errors as `mknod`.
    pub fn mkdir(&self, ctx: &Ctx, parent: u64, name: &OsStr, mode: u32) -> Result<Attr, Errno> {
        Ok(self
            .create_object(ctx, parent, name, mode | 0o040000, NewObject::Dir)?
            .0)
    }

    /// symlink(2): `name` in `parent` pointing at `target`. Errors as `mknod`.
    pub fn symlink(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
    ) -> Result<Attr, Errno> {
        Ok(self
            .create_object(ctx, parent, name, 0o120777, NewObject::Symlink(target))?
            .0)
    }

    /// open(2) with O_CREAT|O_EXCL semantics: creates `name` and opens it with `flags`.
    /// Errors as `mknod`.
    pub fn create(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: OFlags,
    ) -> Result<(Attr, u64), Errno> {
        let (attr, fd) =
            self.create_object(ctx, parent, name, mode | 0o100000, NewObject::File(flags))?;
        let fd = fd.ok_or(Errno::IO)?;
        Ok((attr, self.new_file_handle(attr.ino, fd, flags, true, false)))
    }

    /// link(2): a new name `newname` in `newparent` for `ino`, copying it up first.
    ///
    /// Errors: EPERM (directories), EEXIST, EROFS, ENOENT.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<Attr, Errno> {
        let node = self.node(ino)?;
        if node.is_dir() {
            return Err(Errno::PERM);
        }
        let _ns = self.ns.write();
        // Refuse a bad or taken name before copying anything up.
        self.check_new_name(&self.node(newparent)?, newname)?;
        let node = self.copy_up_locked(&node, true)?;
        let path = node.path().ok_or(Errno::NOENT)?.to_path_buf();
        let (src_dir, src_name) = self.open_parent(0, &path)?;
        // A link keeps its file's owner and mode: the credentials go unused.
        let r = self.create_locked(
            &Ctx::current(),
            newparent,
            newname,
            0,
            NewObject::Link(src_dir.as_fd(), src_name),
        );
        Ok(r?.0)
    }

    /// Errors for a name that cannot be created in `parent`: EINVAL (not one component, or a
    /// `.wh.*` marker name, which the upper would read as a whiteout), ENOTDIR, EEXIST.
    fn check_new_name(&self, parent: &crate::node::Node, name: &OsStr) -> Result<(), Errno> {
        sys::path::check_name(name)?;
        if format::is_marker_name(name) {
            return Err(Errno::INVAL);
        }
        if !parent.is_dir() {
            return Err(Errno::NOTDIR);
        }
        if self.resolve_child(parent, name)?.is_some() {
            return Err(Errno::EXIST);
        }
        Ok(())
    }

    fn create_object(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        spec: NewObject<'_>,
    ) -> Result<(Attr, Option<OwnedFd>), Errno> {
        let _ns = self.ns.write();
        self.create_locked(ctx, parent, name, mode, spec)
    }

    /// Creates `name` in `parent` (caller holds `ns` for writing) and counts one reference.
    fn create_locked(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        spec: NewObject<'_>,
    ) -> Result<(Attr, Option<OwnedFd>), Errno> {
        let up = self.upper()?;
        let pnode = self.node(parent)?;
        self.check_new_name(&pnode, name)?;
        // The caller's ids as stored, refused (EOVERFLOW) before anything is copied up. A
        // link keeps its file's owner and takes none.
        let caller = match spec {
            NewObject::Link(..) => None,
            _ => Some((self.ids.disk_uid(ctx.uid)?, self.ids.disk_gid(ctx.gid)?)),
        };
        let pnode = self.copy_up_locked(&pnode, true)?;
        let ppath = pnode.path().ok_or(Errno::NOENT)?.to_path_buf();
        let dir = self.layers[0].open_dir(&ppath)?;
        let pst = sys::path::fstat(&dir)?;
        // A setgid directory gives its group to new objects (and setgid to new directories).
        let setgid = pst.st_mode & 0o2000 != 0;
        let mut perm = mode & 0o7777 & !(ctx.umask & 0o777);
        if setgid && matches!(spec, NewObject::Dir) {
            perm |= 0o2000;
        }
        let mut over_whiteout = match sys::not_found_as_none(sys::path::stat_at(dir.as_fd(), name))?
        {
            None => false,
            Some(st) if format::is_whiteout_dev(&st) => true,
            // Something hidden in the upper under a visible-nothing name (e.g. an xattr
            // whiteout): replace it like a whiteout.
            Some(_) => true,
        };
        if !over_whiteout {
            // An AUFS-format whiteout `.wh.NAME` in the upper (written by another tool) hides
            // the name too: turn it into a kernel whiteout first, so the name never shows what
            // is below, and replace that like any whiteout (a directory becomes opaque).
            let aufs = format::aufs_whiteout_name(name);
            if aufs.len() <= 255
                && sys::not_found_as_none(sys::path::stat_at(dir.as_fd(), &aufs))?.is_some()
            {
                up.make_whiteout(dir.as_fd(), name)?;
                rustix::fs::unlinkat(&dir, &aufs, AtFlags::empty())?;
                over_whiteout = true;
            }
        }
        let is_dir = matches!(spec, NewObject::Dir);
        let (target_dir, target_name) = if over_whiteout {
            (up.work.as_fd(), up.tmp_name())
        } else {
            (dir.as_fd(), name.to_os_string())
        };
        // Nothing exists under `target_name` if `make` fails, so only a made object is removed.
        let fd = make(target_dir, &target_name, &spec)?;
        if let Some((uid, gid)) = caller {
            let gid = if setgid { pst.st_gid } else { gid };
            let squash = self.ids.squashes();
            let made = Made {
                dir: target_dir,
                name: &target_name,
                fd: fd.as_ref().map(|f| f.as_fd()),
            };
            if let Err(e) = own(made, (uid, gid), perm, &spec, squash) {
                let _ = remove_tree(target_dir, &target_name);
                return Err(e);
            }
        }
        if over_whiteout {
            let swapped = if is_dir {
                up.set_opaque(up.work.as_fd(), Some(&target_name))
                    .and_then(|()| {
                        rustix::fs::renameat_with(
                            &up.work,
                            &target_name,
                            &dir,
                            name,
                            RenameFlags::EXCHANGE,
                        )
                    })
            } else {
                rustix::fs::renameat_with(&up.work, &target_name, &dir, name, RenameFlags::empty())
            };
            // After the exchange the temporary name holds the old whiteout.
            let _ = remove_tree(up.work.as_fd(), &target_name);
            swapped?;
        }
        let resolved = self.resolve_child(&pnode, name)?.ok_or(Errno::IO)?;
        let node = self.remember(resolved.node);
        Ok((self.attr_from(&node, resolved.top), fd))
    }
}

/// Makes the object itself (owned by us for now); a file comes back open.
fn make(dir: BorrowedFd<'_>, name: &OsStr, spec: &NewObject<'_>) -> Result<Option<OwnedFd>, Errno> {
    match *spec {
        NewObject::Dir => rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)).map(|()| None),
        NewObject::File(flags) => {
            let flags =
                (super::file::open_flags(flags) & !OFlags::TRUNC) | OFlags::CREATE | OFlags::EXCL;
            sys::path::open_at(dir, name, flags, 0o600).map(Some)
        }
        NewObject::Symlink(target) => rustix::fs::symlinkat(target, dir, name).map(|()| None),
        NewObject::Special(kind, rdev) => {
            rustix::fs::mknodat(dir, name, kind, Mode::from_raw_mode(0o600), rdev).map(|()| None)
        }
        NewObject::Link(src_dir, src_name) => {
            rustix::fs::linkat(src_dir, src_name, dir, name, AtFlags::empty()).map(|()| None)
        }
    }
}

/// A just-made object: its name in its directory and, for a file, its open fd.
struct Made<'a> {
    dir: BorrowedFd<'a>,
    name: &'a OsStr,
    fd: Option<BorrowedFd<'a>>,
}

/// Gives the new object its (disk) owner and mode (chown first: it would clear setgid).
/// Under squashing a refused chown is ignored, as fuse-overlayfs does. A file is changed
/// through its fd (two syscalls instead of five for the name-based, never-follow path).
fn own(
    made: Made<'_>,
    (uid, gid): (u32, u32),
    perm: u32,
    spec: &NewObject<'_>,
    squash: bool,
) -> Result<(), Errno> {
    let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    let mode = Mode::from_raw_mode(perm);
    if let Some(fd) = made.fd {
        super::attr::chown_result(rustix::fs::fchown(fd, uid, gid), squash)?;
        return rustix::fs::fchmod(fd, mode);
    }
    let r = rustix::fs::chownat(made.dir, made.name, uid, gid, AtFlags::SYMLINK_NOFOLLOW);
    super::attr::chown_result(r, squash)?;
    if !matches!(spec, NewObject::Symlink(_)) {
        // Made in an upper directory, where it could be replaced behind our back: never
        // follow what is there now.
        sys::path::chmod_nofollow(made.dir, made.name, mode)?;
    }
    Ok(())
}
