//! Opening things beneath a layer root.
//!
//! `open_beneath` is the only way the engine turns a union path into a directory fd in a layer:
//! it uses openat2 with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`, so a
//! symlink or `..` inside a layer can never lead out of it. The final component of an
//! operation is always a single name passed to an `*at` call with `AT_SYMLINK_NOFOLLOW`.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Stat};

use super::Errno;

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Opens the directory `rel` (relative, may be empty for the root itself) beneath `root`.
///
/// Errors: ENOENT/ENOTDIR when it is absent or not a directory in this layer, EXDEV/ELOOP
/// when resolution would leave the root or cross a symlink.
pub fn open_dir_beneath(root: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd, Errno> {
    let rel: &Path = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    // O_NOATIME: listing a lower directory must not change it. It needs ownership or
    // CAP_FOWNER, so fall back to a plain open when refused.
    let open = |extra: OFlags| {
        retry_eagain(|| {
            rustix::fs::openat2(
                root,
                rel,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW | extra,
                Mode::empty(),
                RESOLVE,
            )
        })
    };
    match open(OFlags::NOATIME) {
        Err(Errno::PERM) => open(OFlags::empty()),
        r => r,
    }
}

/// Opens the object `name` inside `dir` with `flags` (never following a final symlink).
pub fn open_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: OFlags,
    mode: u32,
) -> Result<OwnedFd, Errno> {
    check_name(name)?;
    retry_eagain(|| {
        rustix::fs::openat2(
            dir,
            name,
            flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(mode),
            RESOLVE,
        )
    })
}

/// Opens a file for reading without touching its atime where the kernel lets us
/// (O_NOATIME needs ownership or CAP_FOWNER; without it we open plainly).
pub fn open_noatime(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlags) -> Result<OwnedFd, Errno> {
    match open_at(dir, name, flags | OFlags::NOATIME, 0) {
        Err(Errno::PERM) => open_at(dir, name, flags, 0),
        r => r,
    }
}

/// lstat of `name` inside `dir`.
pub fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Stat, Errno> {
    check_name(name)?;
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
}

/// fstat of an open fd.
pub fn fstat(fd: impl AsFd) -> Result<Stat, Errno> {
    rustix::fs::fstat(fd)
}

/// Rejects names that are not a single path component: FUSE never sends them, but the engine
/// is also driven in-process, and a `/` or `..` here would be an escape.
pub fn check_name(name: &OsStr) -> Result<(), Errno> {
    let b = name.as_encoded_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(Errno::INVAL);
    }
    if b.len() > 255 {
        return Err(Errno::NAMETOOLONG);
    }
    Ok(())
}

fn retry_eagain<T>(mut f: impl FnMut() -> Result<T, Errno>) -> Result<T, Errno> {
    // openat2 with RESOLVE_* returns EAGAIN when a concurrent rename raced with resolution.
    for _ in 0..64 {
        match f() {
            Err(Errno::AGAIN) => continue,
            r => return r,
        }
    }
    f()
}

/// chmod of `name` in `dir` without following it if it is a symlink (one put there behind the
/// union's back could point anywhere). fchmodat cannot refuse to follow, so the object is
/// opened with O_PATH, checked, and changed through its `/proc/self/fd` magic link, which
/// names exactly that inode (what glibc's lchmod does).
///
/// Errors: EOPNOTSUPP for a symlink (Linux cannot change a symlink's mode), what opening gives.
pub fn chmod_nofollow(dir: BorrowedFd<'_>, name: &OsStr, mode: Mode) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let fd = open_at(dir, name, OFlags::PATH, 0)?;
    if rustix::fs::FileType::from_raw_mode(fstat(fd.as_fd())?.st_mode)
        == rustix::fs::FileType::Symlink
    {
        return Err(Errno::OPNOTSUPP);
    }
    rustix::fs::chmod(format!("/proc/self/fd/{}", fd.as_raw_fd()), mode)
}
