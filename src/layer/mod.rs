//! The layer stack: one optional upper (index 0 when present) above the read-only lowers.
//!
//! A lower layer offers only root-relative, read-only operations: open a directory beneath its
//! root, probe one name (is it an object, a whiteout, or absent?), read a directory's markers.
//! Mutations live in `upper`, which also owns the workdir. Invariant: nothing here ever writes
//! to a lower layer, and every path is resolved beneath a layer root (`sys::path`).

pub mod upper;

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

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
}

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
        Ok(Layer {
            path: path.to_path_buf(),
            root,
        })
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
