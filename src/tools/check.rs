//! `unionmount check`: problems of an upper layer and its workdir, and the safe repairs.
//!
//! Problems found: temporaries a crash left in `WORKDIR/work` (a char 0/0 whiteout there is
//! not one: it is the target new whiteouts are hard links to, which the kernel leaves behind);
//! markers kernel overlayfs does not read in an upper (`.wh.NAME` files, `.wh..wh..opq`,
//! `user.fuseoverlayfs.opaque`, an `overlay.opaque` in the other namespace, `.wh.*` files
//! that hide nothing); and, with `--lowers`, whiteouts that hide nothing (nothing
//! below, or below an opaque upper directory).
//!
//! `--repair` does only what keeps the merged view as it is: it empties `WORKDIR/work`,
//! converts every foreign marker to the kernel's format in the chosen namespace (a whiteout
//! becomes char 0/0, an opaque marker `<ns>.overlay.opaque=y`), removes inert `.wh.*` files
//! and whiteouts that hide nothing. Afterwards kernel overlayfs shows what unionmount showed.
//! The upper and workdir are flock'ed as a mount locks them, so a running unionmount is never
//! repaired under its feet. Each problem is reported as `PROBLEM: what /path` (`fixed: ...`
//! once repaired).

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, XattrFlags};

use super::below::Below;
use super::scan::{self, OpaqueForm, What, WhiteoutForm, slash};
use crate::config::XattrNamespace;
use crate::format;
use crate::layer::Layer;
use crate::layer::upper::{WORK_SUBDIR, remove_tree};
use crate::sys::{self, Errno};

/// One problem and how to repair it.
#[derive(Debug)]
pub struct Problem {
    pub what: String,
    /// Where it is, for messages: `/path` in the upper, or `WORKDIR/work/NAME`.
    pub place: String,
    fix: Fix,
}

#[derive(Debug)]
enum Fix {
    RemoveWork(std::ffi::OsString),
    /// Replace the marker file `name` in directory `dir` by a kernel whiteout at `target`.
    Whiteout {
        dir: PathBuf,
        name: std::ffi::OsString,
        target: std::ffi::OsString,
    },
    /// Remove the marker file `name` in `dir`.
    RemoveMarker {
        dir: PathBuf,
        name: std::ffi::OsString,
    },
    /// Mark `dir` opaque in the chosen namespace and drop every other opaque marker.
    Opaque(PathBuf),
}

/// Options of one check.
pub struct CheckOptions<'a> {
    pub lowers: Option<&'a [PathBuf]>,
    pub ns: XattrNamespace,
}

/// The problems of `upper` and `workdir`.
///
/// Errors: a message naming what could not be read or locked.
pub fn check(upper: &Path, workdir: &Path, o: &CheckOptions<'_>) -> Result<Vec<Problem>, String> {
    let _locks = (lock(upper, "upper")?, lock(workdir, "workdir")?);
    let mut out = work_leftovers(workdir)?;
    let items = scan::scan(upper).map_err(|e| format!("cannot read {}: {e}", upper.display()))?;
    let below = o.lowers.map(Below::open).transpose()?;
    let mut opaque_dirs: Vec<&Path> = Vec::new();
    for it in &items {
        let parent = it.path.parent().unwrap_or(Path::new("")).to_path_buf();
        let marker = |fix| Problem {
            what: String::new(),
            place: slash(&it.path),
            fix,
        };
        match &it.what {
            What::Inert => out.push(Problem {
                what: "a .wh.* file that hides nothing".into(),
                place: slash(&parent.join(&it.name)),
                ..marker(Fix::RemoveMarker {
                    dir: parent.clone(),
                    name: it.name.clone(),
                })
            }),
            What::Whiteout(form) => {
                let hidden = opaque_dirs.iter().any(|d| it.path.starts_with(d));
                let nothing_below = match &below {
                    Some(b) => {
                        hidden
                            || b.lookup(&it.path)
                                .map_err(|e| {
                                    format!("cannot look up {} below: {e}", slash(&it.path))
                                })?
                                .is_none()
                    }
                    None => false,
                };
                if nothing_below {
                    out.push(Problem {
                        what: "a whiteout that hides nothing".into(),
                        ..marker(Fix::RemoveMarker {
                            dir: parent.clone(),
                            name: it.name.clone(),
                        })
                    });
                } else if *form == WhiteoutForm::Aufs {
                    out.push(Problem {
                        what: "an AUFS whiteout (.wh.NAME file)".into(),
                        ..marker(Fix::Whiteout {
                            dir: parent.clone(),
                            name: it.name.clone(),
                            target: it.path.file_name().unwrap_or_default().to_os_string(),
                        })
                    });
                }
            }
            What::Dir { opaque } if !opaque.is_empty() => {
                opaque_dirs.push(&it.path);
                let native = match o.ns {
                    XattrNamespace::Trusted => OpaqueForm::Trusted,
                    XattrNamespace::User => OpaqueForm::User,
                };
                let foreign: Vec<&str> = opaque
                    .iter()
                    .filter(|f| **f != native)
                    .map(|f| match f {
                        OpaqueForm::Trusted => "trusted.overlay.opaque",
                        OpaqueForm::User => "user.overlay.opaque",
                        OpaqueForm::FuseOverlayfs => format::FUSE_OVERLAYFS_OPAQUE,
                        OpaqueForm::AufsFile => format::OPAQUE_MARKER,
                    })
                    .collect();
                if !foreign.is_empty() {
                    out.push(Problem {
                        what: format!("opaque by {}", foreign.join(", ")),
                        ..marker(Fix::Opaque(it.path.clone()))
                    });
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Takes the lock a mount holds on `dir` (see `setup`), so that a live mount is left alone.
fn lock(dir: &Path, what: &str) -> Result<OwnedFd, String> {
    crate::setup::lock_dir(dir, what).map_err(|e| e.to_string())
}

fn open_work(workdir: &Path) -> Result<Option<OwnedFd>, String> {
    let wd = Layer::open(workdir).map_err(|e| format!("cannot open {}: {e}", workdir.display()))?;
    sys::not_found_as_none(sys::path::open_at(
        wd.root.as_fd(),
        OsStr::new(WORK_SUBDIR),
        OFlags::RDONLY | OFlags::DIRECTORY,
        0,
    ))
    .map_err(|e| format!("cannot open {}/{WORK_SUBDIR}: {e}", workdir.display()))
}

fn work_leftovers(workdir: &Path) -> Result<Vec<Problem>, String> {
    let Some(work) = open_work(workdir)? else {
        return Ok(Vec::new());
    };
    let list = sys::path::open_dir_beneath(work.as_fd(), Path::new(""))
        .and_then(sys::dir::read_all)
        .map_err(|e| format!("cannot list {}/{WORK_SUBDIR}: {e}", workdir.display()))?;
    let mut out = Vec::new();
    for e in list {
        let st = sys::path::stat_at(work.as_fd(), &e.name).map_err(|err| err.to_string())?;
        if format::is_whiteout_dev(&st) {
            continue;
        }
        out.push(Problem {
            what: "a stale workdir temporary".into(),
            place: format!("{}/{WORK_SUBDIR}/{}", workdir.display(), e.name.display()),
            fix: Fix::RemoveWork(e.name),
        });
    }
    out.sort_by(|a, b| a.place.cmp(&b.place));
    Ok(out)
}

/// Repairs `problems` (as `check` found them, the layers unchanged since); returns the
/// problems it could not repair, with why.
pub fn repair(
    upper: &Path,
    workdir: &Path,
    ns: XattrNamespace,
    problems: Vec<Problem>,
) -> Result<Vec<(Problem, Errno)>, String> {
    let _locks = (lock(upper, "upper")?, lock(workdir, "workdir")?);
    let root = Layer::open(upper).map_err(|e| format!("cannot open {}: {e}", upper.display()))?;
    let work = open_work(workdir)?;
    let mut failed = Vec::new();
    for p in problems {
        let r = match &p.fix {
            Fix::RemoveWork(name) => match &work {
                Some(w) => remove_tree(w.as_fd(), name),
                None => Ok(()),
            },
            Fix::RemoveMarker { dir, name } => in_dir(&root, dir, |d| remove_tree(d, name)),
            Fix::Whiteout { dir, name, target } => in_dir(&root, dir, |d| {
                remove_tree(d, name)?;
                rustix::fs::mknodat(
                    d,
                    target.as_os_str(),
                    FileType::CharacterDevice,
                    Mode::empty(),
                    0,
                )
            }),
            Fix::Opaque(path) => opaque(&root, path, ns),
        };
        match r {
            Ok(()) => println!("fixed: {} {}", p.what, p.place),
            Err(e) => failed.push((p, e)),
        }
    }
    Ok(failed)
}

fn in_dir(
    root: &Layer,
    dir: &Path,
    f: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> Result<(), Errno>,
) -> Result<(), Errno> {
    let d = sys::path::open_dir_beneath(root.root.as_fd(), dir)?;
    f(d.as_fd())
}

/// Makes `path` opaque in the kernel's format of `ns` and removes the other markers.
fn opaque(root: &Layer, path: &Path, ns: XattrNamespace) -> Result<(), Errno> {
    let d = sys::path::open_dir_beneath(root.root.as_fd(), path)?;
    let key = format!("{}opaque", ns.overlay_prefix());
    sys::xattr::set(d.as_fd(), None, &key, b"y", XattrFlags::empty())?;
    for other in [
        "trusted.overlay.opaque",
        "user.overlay.opaque",
        format::FUSE_OVERLAYFS_OPAQUE,
    ] {
        if other != key {
            match sys::xattr::remove(d.as_fd(), None, other) {
                Ok(()) | Err(Errno::NODATA) => {}
                Err(e) => return Err(e),
            }
        }
    }
    match rustix::fs::unlinkat(&d, format::OPAQUE_MARKER, rustix::fs::AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e),
    }
}
