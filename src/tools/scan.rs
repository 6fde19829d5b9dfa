//! Reading an upper layer as the tools see it: every object, every whiteout and every opaque
//! marker, in every format the engine reads in an upper (`crate::format`), in a fixed order.
//! Xattr whiteouts (`overlay.whiteout` in an `overlay.opaque=x` directory) are not among them:
//! the engine, like kernel overlayfs, honours them in lower layers only, so in an upper such a
//! file is an ordinary (empty) file of the merged view.
//!
//! Invariants: the order is depth-first with each directory's entries sorted by name bytes
//! (a whiteout sorts under the name it hides), so a parent always comes before its children
//! and two scans of the same tree give the same list; nothing is ever followed (symlinks are
//! objects, directories are opened beneath the layer root with `sys::path`); the root itself is
//! not an item. The `.wh..wh..opq` file is not an item either: it is folded into its
//! directory's `opaque` list.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, OFlags, Stat};

use crate::format::{self, OpaqueValue};
use crate::layer;
use crate::sys::{self, Errno, not_found_as_none};

/// One object or marker of the upper.
#[derive(Debug)]
pub struct Item {
    /// Relative to the layer root; for a whiteout, the path of the name it hides.
    pub path: PathBuf,
    /// The name of the file that carries it in its directory (`.wh.NAME` for AUFS whiteouts).
    pub name: OsString,
    pub st: Stat,
    pub what: What,
}

/// What an item means for the merged view.
#[derive(Debug, PartialEq, Eq)]
pub enum What {
    /// Hides the name in the layers below.
    Whiteout(WhiteoutForm),
    /// A directory; opaque when it has any opaque marker.
    Dir { opaque: Vec<OpaqueForm> },
    /// A file, symlink, device, FIFO or socket.
    Object,
    /// A `.wh.*` file that hides nothing: a whiteout of a name that exists beside it (the
    /// object wins), a bare `.wh.`, or AUFS metadata (`.wh..wh.*`). Never visible.
    Inert,
}

/// The formats of a whiteout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhiteoutForm {
    /// Character device 0/0: the kernel's.
    Kernel,
    /// Empty file `.wh.NAME` (AUFS/OCI).
    Aufs,
}

/// The formats of an opaque-directory marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpaqueForm {
    /// `trusted.overlay.opaque=y`.
    Trusted,
    /// `user.overlay.opaque=y` (the kernel's userxattr mode).
    User,
    /// `user.fuseoverlayfs.opaque=y`.
    FuseOverlayfs,
    /// A `.wh..wh..opq` file inside.
    AufsFile,
}

impl What {
    pub fn is_opaque_dir(&self) -> bool {
        matches!(self, What::Dir { opaque } if !opaque.is_empty())
    }
}

/// Scans the layer at `root`.
///
/// Errors: what opening, listing or stat-ing gives (EACCES, ENOENT, ENOTDIR).
pub fn scan(root: &Path) -> Result<Vec<Item>, Errno> {
    let layer = layer::Layer::open(root)?;
    let mut out = Vec::new();
    scan_dir(layer.root.as_fd(), Path::new(""), &mut out)?;
    Ok(out)
}

fn scan_dir(dir: BorrowedFd<'_>, rel: &Path, out: &mut Vec<Item>) -> Result<(), Errno> {
    let list = sys::path::open_dir_beneath(dir, Path::new(""))?;
    let names: Vec<OsString> = sys::dir::read_all(list)?
        .into_iter()
        .map(|e| e.name)
        .collect();
    let mut items: Vec<(OsString, OsString, Stat, What)> = Vec::new();
    for name in &names {
        if name == format::OPAQUE_MARKER {
            continue;
        }
        let st = sys::path::stat_at(dir, name)?;
        let kind = FileType::from_raw_mode(st.st_mode);
        let (shown, what) = if format::is_marker_name(name) {
            match format::aufs_whiteout_target(name) {
                Some(t) if !names.iter().any(|n| n == t) && !is_aufs_meta(name) => {
                    (t.to_os_string(), What::Whiteout(WhiteoutForm::Aufs))
                }
                _ => (name.clone(), What::Inert),
            }
        } else if format::is_whiteout_dev(&st) {
            (name.clone(), What::Whiteout(WhiteoutForm::Kernel))
        } else if kind == FileType::Directory {
            let opaque = opaque_forms(dir, name)?;
            (name.clone(), What::Dir { opaque })
        } else {
            (name.clone(), What::Object)
        };
        items.push((shown, name.clone(), st, what));
    }
    items.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    for (shown, name, st, what) in items {
        let path = rel.join(&shown);
        let is_dir = matches!(what, What::Dir { .. });
        out.push(Item {
            path: path.clone(),
            name: name.clone(),
            st,
            what,
        });
        if is_dir {
            let sub = sys::path::open_at(dir, &name, OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
            scan_dir(sub.as_fd(), &path, out)?;
        }
    }
    Ok(())
}

/// AUFS's own metadata names (`.wh..wh.plnk`, `.wh..wh.aufs`): not whiteouts of anything.
pub fn is_aufs_meta(name: &OsStr) -> bool {
    name.as_bytes().starts_with(b".wh..wh.")
}

/// Every opaque marker of the directory `name` in `dir`.
pub fn opaque_forms(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Vec<OpaqueForm>, Errno> {
    let mut forms = Vec::new();
    let keys = sys::xattr::list(dir, Some(name)).unwrap_or_default();
    for (key, form) in [
        ("trusted.overlay.opaque", OpaqueForm::Trusted),
        ("user.overlay.opaque", OpaqueForm::User),
        (format::FUSE_OVERLAYFS_OPAQUE, OpaqueForm::FuseOverlayfs),
    ] {
        if !keys.iter().any(|k| k == key) {
            continue;
        }
        if let Some(v) = sys::xattr::get_opt(dir, Some(name), key)?
            && format::parse_opaque(&v) == OpaqueValue::Opaque
        {
            forms.push(form);
        }
    }
    let sub = sys::path::open_at(dir, name, OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
    if not_found_as_none(sys::path::stat_at(
        sub.as_fd(),
        OsStr::new(format::OPAQUE_MARKER),
    ))?
    .is_some()
    {
        forms.push(OpaqueForm::AufsFile);
    }
    Ok(forms)
}

/// `/path` for messages and change lists.
pub fn slash(path: &Path) -> String {
    format!("/{}", path.display())
}
