//! Extended attributes of a named object inside a directory fd, for every file type.
//!
//! fgetxattr cannot be used on symlinks or on special files we must not open, so xattrs are
//! reached through `/proc/self/fd/<dirfd>/<name>` with the `l*` calls: the magic link resolves
//! to the directory we opened beneath a layer root, and `name` is a single component that is
//! never followed. This needs /proc, which `setup` checks at mount time.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;

use rustix::fs::XattrFlags;

use super::Errno;
use super::path::check_name;

/// `/proc/self/fd/<dir>/<name>`; without a name the caller uses the fd itself (an `l*` call on
/// the bare magic link would act on the link, not the directory).
fn proc_path(dir: BorrowedFd<'_>, name: Option<&OsStr>) -> Result<PathBuf, Errno> {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    if let Some(name) = name {
        check_name(name)?;
        p.push(name);
    }
    Ok(p)
}

/// The value of xattr `key` of `name` in `dir` (or of `dir` itself when `name` is None).
pub fn get(dir: BorrowedFd<'_>, name: Option<&OsStr>, key: &str) -> Result<Vec<u8>, Errno> {
    let p = proc_path(dir, name)?;
    let mut buf = vec![0u8; 256];
    loop {
        let r = match name {
            Some(_) => rustix::fs::lgetxattr(&p, key, &mut buf[..]),
            None => rustix::fs::fgetxattr(dir, key, &mut buf[..]),
        };
        match r {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e),
        }
    }
}

/// Like `get`, but `Ok(None)` when the xattr is absent or the filesystem has no xattrs.
pub fn get_opt(
    dir: BorrowedFd<'_>,
    name: Option<&OsStr>,
    key: &str,
) -> Result<Option<Vec<u8>>, Errno> {
    match get(dir, name, key) {
        Ok(v) => Ok(Some(v)),
        Err(Errno::NODATA) | Err(Errno::OPNOTSUPP) | Err(Errno::PERM) | Err(Errno::ACCESS) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// All xattr names of the object.
pub fn list(dir: BorrowedFd<'_>, name: Option<&OsStr>) -> Result<Vec<String>, Errno> {
    let p = proc_path(dir, name)?;
    let mut buf = vec![0u8; 1024];
    let n = loop {
        let r = match name {
            Some(_) => rustix::fs::llistxattr(&p, &mut buf[..]),
            None => rustix::fs::flistxattr(dir, &mut buf[..]),
        };
        match r {
            Ok(n) => break n,
            Err(Errno::RANGE) => buf.resize(buf.len() * 4, 0),
            Err(Errno::OPNOTSUPP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    };
    Ok(buf[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// Sets xattr `key`; `flags` are XATTR_CREATE / XATTR_REPLACE as given by the caller.
pub fn set(
    dir: BorrowedFd<'_>,
    name: Option<&OsStr>,
    key: &str,
    value: &[u8],
    flags: XattrFlags,
) -> Result<(), Errno> {
    match name {
        Some(_) => rustix::fs::lsetxattr(proc_path(dir, name)?, key, value, flags),
        None => rustix::fs::fsetxattr(dir, key, value, flags),
    }
}

/// Removes xattr `key`.
pub fn remove(dir: BorrowedFd<'_>, name: Option<&OsStr>, key: &str) -> Result<(), Errno> {
    match name {
        Some(_) => rustix::fs::lremovexattr(proc_path(dir, name)?, key),
        None => rustix::fs::fremovexattr(dir, key),
    }
}
