//! `unionmount diff`: the changes an upper layer makes, as `docker diff` prints them: `A /path`
//! (added), `C /path` (changed), `D /path` (deleted), one per line, sorted by path.
//!
//! With `--lowers`, each upper object is looked up in the merged lowers (through the engine):
//! present below means C, absent A; a whiteout is D when it hides something (a whiteout of
//! nothing changes nothing and is left out); a directory present below with the same mode,
//! owner and mtime is left out (it was only copied up to hold a change below it, as docker
//! does); an opaque directory over a lower directory is C, and each lower name it hides that
//! the upper does not hold again is D.
//! Without `--lowers` only the upper's markers tell: a whiteout is D; an opaque directory is A
//! (made in the union, over nothing or over something deleted) and so is all below it; another
//! directory is C (copied up to hold a change); a non-directory is C when it carries the
//! kernel's copy-up record `overlay.origin`, else A (unionmount writes no origin: pass
//! `--lowers` for an exact answer).

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Stat};

use super::below::Below;
use super::scan::{self, What, slash};

/// One line of the output.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    pub path: PathBuf,
    pub kind: char,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, slash(&self.path))
    }
}

/// The changes of `upper` over `lowers` (or by its markers alone when `lowers` is `None`),
/// sorted by path.
///
/// Errors: a message naming the layer that could not be read.
pub fn changes(upper: &Path, lowers: Option<&[PathBuf]>) -> Result<Vec<Change>, String> {
    let items = scan::scan(upper).map_err(|e| format!("cannot read {}: {e}", upper.display()))?;
    let below = lowers.map(Below::open).transpose()?;
    let mut out = Vec::new();
    match &below {
        Some(b) => {
            for it in &items {
                by_lookup(it, &items, b, &mut out)
                    .map_err(|e| format!("cannot look up {} below: {e}", slash(&it.path)))?;
            }
        }
        None => by_markers(upper, &items, &mut out),
    }
    out.sort_by(|a, b| {
        a.path
            .as_os_str()
            .as_bytes()
            .cmp(b.path.as_os_str().as_bytes())
    });
    out.dedup();
    Ok(out)
}

fn change(path: &Path, kind: char) -> Change {
    Change {
        path: path.to_path_buf(),
        kind,
    }
}

fn by_lookup(
    it: &scan::Item,
    items: &[scan::Item],
    below: &Below,
    out: &mut Vec<Change>,
) -> Result<(), rustix::io::Errno> {
    let lower = below.lookup(&it.path)?;
    match (&it.what, lower) {
        (What::Inert, _) | (What::Whiteout(_), None) => {}
        (What::Whiteout(_), Some(_)) => out.push(change(&it.path, 'D')),
        (_, None) => out.push(change(&it.path, 'A')),
        (What::Dir { opaque }, Some(l)) if !opaque.is_empty() => {
            out.push(change(&it.path, 'C'));
            if FileType::from_raw_mode(l.st.st_mode) == FileType::Directory {
                let kept: BTreeSet<&Path> = items
                    .iter()
                    .filter(|i| i.path.parent() == Some(it.path.as_path()))
                    .map(|i| i.path.as_path())
                    .collect();
                for name in below.names(l.ino)? {
                    let p = it.path.join(&name);
                    if !kept.contains(p.as_path()) {
                        out.push(change(&p, 'D'));
                    }
                }
            }
        }
        (What::Dir { .. }, Some(l)) if same_dir(&it.st, &l.st) => {}
        (_, Some(_)) => out.push(change(&it.path, 'C')),
    }
    Ok(())
}

/// A directory copied up only to hold a change below it: same type, mode, owner and mtime.
fn same_dir(up: &Stat, low: &Stat) -> bool {
    FileType::from_raw_mode(low.st_mode) == FileType::Directory
        && up.st_mode == low.st_mode
        && up.st_uid == low.st_uid
        && up.st_gid == low.st_gid
        && up.st_mtime == low.st_mtime
        && up.st_mtime_nsec == low.st_mtime_nsec
}

fn by_markers(upper: &Path, items: &[scan::Item], out: &mut Vec<Change>) {
    let mut added: Vec<&Path> = Vec::new();
    for it in items {
        let under_added = added.iter().any(|a| it.path.starts_with(a));
        let kind = match &it.what {
            What::Inert => continue,
            What::Whiteout(_) => 'D',
            _ if under_added => 'A',
            w if w.is_opaque_dir() => {
                added.push(&it.path);
                'A'
            }
            What::Dir { .. } => 'C',
            What::Object if has_origin(&upper.join(&it.path)) => 'C',
            What::Object => 'A',
        };
        out.push(change(&it.path, kind));
    }
}

/// True when the kernel recorded a copy-up origin on `p` (either namespace).
fn has_origin(p: &Path) -> bool {
    ["trusted.overlay.origin", "user.overlay.origin"]
        .iter()
        .any(|k| rustix::fs::lgetxattr(p, *k, &mut [0u8; 0][..]).is_ok())
}
