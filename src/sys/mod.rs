//! The only code that talks to the kernel about layer contents.
//!
//! Invariants: every path handed to a syscall here is either a single name relative to a
//! directory fd, or a relative path opened with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` under a
//! layer root, so no request can reach outside the layer roots. Fds are owned (`OwnedFd`) and
//! borrowed (`BorrowedFd`); errors are `rustix::io::Errno` all the way up.

pub mod copy;
pub mod dir;
pub mod path;
pub mod xattr;

pub use rustix::io::Errno;

/// `Ok(None)` for ENOENT (and ENOTDIR, which means a path component is not a directory, i.e.
/// the name does not exist in that layer), the value otherwise.
pub fn not_found_as_none<T>(r: Result<T, Errno>) -> Result<Option<T>, Errno> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Errno::NOENT) | Err(Errno::NOTDIR) => Ok(None),
        Err(e) => Err(e),
    }
}

/// True for the errnos a filesystem gives when it does not support an xattr namespace.
pub fn is_unsupported(e: Errno) -> bool {
    e == Errno::OPNOTSUPP || e == Errno::NOSYS || e == Errno::PERM
}
