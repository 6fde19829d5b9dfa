//! The layer stack: one optional upper (index 0 when present) above the read-only lowers.
//!
//! A lower layer offers only root-relative, read-only operations: open a directory beneath its
//! root, probe one name (is it an object, a whiteout, or absent?), read a directory's markers.
//! Mutations live in `upper`, which also owns the workdir. Invariant: nothing here ever writes
//! to a lower layer, and every path is resolved beneath a layer root (`sys::path`).

pub mod upper;

use std::ffi::OsStr;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;
use rustix::fs::{FileType, OFlags, Stat};

use crate::format::{self, MarkerKeys, OpaqueValue};
use crate::sys::{self, Errno, not_found_as_none};
pub use upper::Upper;

/// One directory tree of the stack, opened once at mount.
#[derive(Debug)]
pub struct Layer {
    /// Path given on the command line (for messages only; never used to resolve).
    pub path: PathBuf,
    pub root: OwnedFd,
    /// Directories of a lower recently looked in, by union path (see `lookup_dir`); `None`
    /// for the upper, whose directories move under us, and when lowers may change.
    dirs: Option<Mutex<LruCache<PathBuf, Arc<OwnedFd>>>>,
}

/// Directory fds a lower keeps open for lookups: enough for the working set of a walk or a
/// build, few enough to stay far below the fd limit.
const DIR_CACHE: NonZeroUsize = NonZeroUsize::new(256).unwrap();

/// What a layer holds at one name.
#[derive(Debug)]
pub enum Probe {
    Absent,
    Whiteout,
    Object(Stat),
}

/// Markers of a directory in one layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirMarkers {
    /// Hides everything below this layer.
    pub opaque: bool,
    /// May contain xattr whiteouts (`overlay.opaque` = `x`).
    pub xwhiteouts: bool,
}

/// Private xattr keys honoured in lowers: the kernel's two namespaces.
pub struct LowerKeys {
    pub trusted: MarkerKeys,
    pub user: MarkerKeys,
}

impl Default for LowerKeys {
    fn default() -> Self {
        LowerKeys {
            trusted: MarkerKeys::new("trusted.overlay."),
            user: MarkerKeys::new("user.overlay."),
        }
    }
}

impl Layer {
    /// Opens `path` as a layer root.
    pub fn open(path: &Path) -> Result<Layer, Errno> {
        let root = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        Ok(Layer::from_root(path.to_path_buf(), root))
    }

    /// Wraps an already open root (the upper's, shared with `Upper`).
    pub fn from_root(path: PathBuf, root: OwnedFd) -> Layer {
        Layer {
            path,
            root,
            dirs: None,
        }
    }

    /// Lets `lookup_dir` keep directories of this layer open. Only for a lower that nothing
    /// changes while mounted: a cached fd stays on the directory it was opened on.
    pub fn cache_dirs(&mut self) {
        self.dirs = Some(Mutex::new(LruCache::new(DIR_CACHE)));
    }

    /// `open_dir_opt` for looking names up: from the cache when this layer has one. Every
    /// lookup opened the parent directory in each layer from the layer root, one path walk
    /// and one open/close per layer per request; a lower's directories never move, so the
    /// fd can be reused. Not for listing (the fd's position would be shared).
    pub fn lookup_dir(&self, rel: &Path) -> Result<Option<Arc<OwnedFd>>, Errno> {
        let Some(cache) = &self.dirs else {
            return Ok(self.open_dir_opt(rel)?.map(Arc::new));
        };
        if let Some(fd) = cache.lock().get(rel) {
            return Ok(Some(fd.clone()));
        }
        let fd = self.open_dir_opt(rel)?.map(Arc::new);
        if let Some(fd) = &fd {
            cache.lock().put(rel.to_path_buf(), fd.clone());
        }
        Ok(fd)
    }

    /// The directory at union path `rel` in this layer.
    pub fn open_dir(&self, rel: &Path) -> Result<OwnedFd, Errno> {
        sys::path::open_dir_beneath(self.root.as_fd(), rel)
    }

    /// Like `open_dir`, `Ok(None)` when this layer has no directory there.
    pub fn open_dir_opt(&self, rel: &Path) -> Result<Option<OwnedFd>, Errno> {
        match self.open_dir(rel) {
            Err(Errno::LOOP) | Err(Errno::XDEV) => Ok(None),
            r => not_found_as_none(r),
        }
    }
}

/// What `name` is in the layer directory `dir`. `xwhiteouts` says whether that directory may
/// hold xattr whiteouts (its `overlay.opaque` is `x`).
pub fn probe(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    xwhiteouts: bool,
    keys: &LowerKeys,
) -> Result<Probe, Errno> {
    match not_found_as_none(sys::path::stat_at(dir, name))? {
        Some(st) if format::is_whiteout_dev(&st) => Ok(Probe::Whiteout),
        Some(st) => {
            if xwhiteouts
                && st.st_size == 0
                && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                && is_xattr_whiteout(dir, name, keys)?
            {
                return Ok(Probe::Whiteout);
            }
            Ok(Probe::Object(st))
        }
        None => {
            let wh = format::aufs_whiteout_name(name);
            if wh.len() <= 255 && not_found_as_none(sys::path::stat_at(dir, &wh))?.is_some() {
                Ok(Probe::Whiteout)
            } else {
                Ok(Probe::Absent)
            }
        }
    }
}

/// True when the zero-size regular file `name` carries an `overlay.whiteout` xattr.
pub fn is_xattr_whiteout(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    keys: &LowerKeys,
) -> Result<bool, Errno> {
    for k in [&keys.trusted.whiteout, &keys.user.whiteout] {
        if sys::xattr::get_opt(dir, Some(name), k)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Reads the opaque markers of the directory open as `dir`.
pub fn dir_markers(dir: BorrowedFd<'_>, keys: &LowerKeys) -> Result<DirMarkers, Errno> {
    let mut m = dir_xattr_markers(dir, None, keys)?;
    if !m.opaque {
        m.opaque = not_found_as_none(sys::path::stat_at(dir, OsStr::new(format::OPAQUE_MARKER)))?
            .is_some();
    }
    Ok(m)
}

/// The markers kept in xattrs of the directory `name` in `dir` (of `dir` itself without a
/// name): all the kernel reads, and all that can be read of a directory we may not search.
pub fn dir_xattr_markers(
    dir: BorrowedFd<'_>,
    name: Option<&OsStr>,
    keys: &LowerKeys,
) -> Result<DirMarkers, Errno> {
    let mut m = DirMarkers::default();
    let names = sys::xattr::list(dir, name).unwrap_or_default();
    for key in [
        &keys.trusted.opaque,
        &keys.user.opaque,
        &format::FUSE_OVERLAYFS_OPAQUE.to_string(),
    ] {
        if !names.iter().any(|n| n == key) {
            continue;
        }
        if let Some(v) = sys::xattr::get_opt(dir, name, key)? {
            match format::parse_opaque(&v) {
                OpaqueValue::Opaque => m.opaque = true,
                OpaqueValue::HasXattrWhiteouts => m.xwhiteouts = true,
                OpaqueValue::No => {}
            }
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lower with the cache hands out one fd per directory, still the directory it was
    /// opened on; without the cache every lookup opens afresh; absent directories are None.
    #[test]
    fn lookup_dir_reuses_a_lower_directory() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        let mut lower = Layer::open(t.path()).unwrap();
        let plain = Layer::open(t.path()).unwrap();
        lower.cache_dirs();
        let first = lower.lookup_dir(Path::new("a/b")).unwrap().unwrap();
        let again = lower.lookup_dir(Path::new("a/b")).unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let fresh = plain.lookup_dir(Path::new("a/b")).unwrap().unwrap();
        assert!(!Arc::ptr_eq(
            &fresh,
            &plain.lookup_dir(Path::new("a/b")).unwrap().unwrap()
        ));
        assert_eq!(
            sys::path::fstat(&first).unwrap().st_ino,
            sys::path::fstat(&fresh).unwrap().st_ino
        );
        assert!(lower.lookup_dir(Path::new("a/none")).unwrap().is_none());
        // A new name in a cached directory shows: the fd is the directory, not a snapshot.
        std::fs::write(t.path().join("a/b/new"), "x").unwrap();
        assert!(matches!(
            probe(
                first.as_fd(),
                OsStr::new("new"),
                false,
                &LowerKeys::default()
            )
            .unwrap(),
            Probe::Object(_)
        ));
    }
}
