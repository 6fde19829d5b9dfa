//! What one OCI layer tar entry asks for, decided from its header alone: pure functions, so
//! every rule for rejecting an entry is unit-tested without a filesystem.
//!
//! Rules: a path is relative; `.` and empty components are dropped; `..` anywhere and a
//! leading `/` are refused (an entry never names anything outside the target directory,
//! however it would normalise); each name fits in 255 bytes. `.wh.NAME` is a whiteout of
//! NAME; `.wh..wh..opq` marks its directory opaque; both must be regular files (what every
//! layer writer emits). A bare `.wh.`, a whiteout of `.` or `..`, other AUFS metadata
//! (`.wh..wh.*`), an opaque marker at the root (kernel overlayfs ignores markers on a layer's
//! root) and entry types other than files, directories, links, devices and FIFOs are refused.
//! PAX global headers carry nothing a layer needs and are skipped, as containerd does.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use tar::EntryType;

use crate::format;

/// A normalised entry path: its components, never empty for an object.
pub type Components = Vec<OsString>;

/// What applying one entry does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// The root directory's own entry (`./`): nothing to do.
    Root,
    /// A PAX global header: nothing to do.
    Skip,
    /// Replace `path` with a whiteout.
    Whiteout,
    /// Mark the directory `path` opaque (`path` is the directory, not the marker).
    Opaque,
    Dir,
    File,
    Symlink(Vec<u8>),
    /// A hard link to the (normalised) target.
    Link(Components),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// Metadata an entry carries for the object it makes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    /// From PAX `SCHILY.xattr.KEY` records, in archive order.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// One planned entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// The entry's path as written in the archive, for messages.
    pub raw: String,
    pub path: Components,
    pub op: Op,
    pub meta: Meta,
}

/// Splits and checks a raw entry path.
///
/// Errors: a message saying why the path is refused.
pub fn normalize(raw: &[u8]) -> Result<Components, String> {
    if raw.starts_with(b"/") {
        return Err("absolute path: a layer's paths are relative to its root".into());
    }
    let mut out = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("`..` would lead outside the target directory".into()),
            c if c.len() > 255 => return Err("a name longer than 255 bytes".into()),
            c => out.push(OsString::from_vec(c.to_vec())),
        }
    }
    Ok(out)
}

/// The path of `c` for messages and for `*_beneath` calls.
pub fn as_path(c: &[OsString]) -> PathBuf {
    c.iter().collect()
}

/// Decides what an entry with this header does.
///
/// Errors: a message naming the entry and the rule it breaks.
pub fn plan(
    raw: &[u8],
    kind: EntryType,
    link: Option<&[u8]>,
    dev: (u32, u32),
    meta: Meta,
) -> Result<Planned, String> {
    let shown = String::from_utf8_lossy(raw).into_owned();
    let fail = |why: String| format!("entry {shown:?}: {why}");
    if kind == EntryType::XGlobalHeader {
        return Ok(Planned {
            raw: shown,
            path: Vec::new(),
            op: Op::Skip,
            meta,
        });
    }
    let mut path = normalize(raw).map_err(fail)?;
    let Some(last) = path.last().cloned() else {
        return match kind {
            EntryType::Directory => Ok(Planned {
                raw: shown,
                path,
                op: Op::Root,
                meta,
            }),
            _ => Err(fail("only a directory can stand for the root".into())),
        };
    };
    let regular = matches!(kind, EntryType::Regular | EntryType::Continuous);
    let name = last.as_bytes();
    let op = if name == format::OPAQUE_MARKER.as_bytes() {
        if !regular {
            return Err(fail("the opaque marker must be a regular file".into()));
        }
        path.pop();
        if path.is_empty() {
            return Err(fail(
                "an opaque marker at the root cannot be represented: kernel overlayfs \
                 ignores markers on a layer's root"
                    .into(),
            ));
        }
        Op::Opaque
    } else if name.starts_with(format::WH_PREFIX) {
        let Some(target) = format::aufs_whiteout_target(&last) else {
            return Err(fail("`.wh.` alone names no file to white out".into()));
        };
        let t = target.as_bytes();
        if super::scan::is_aufs_meta(&last) {
            return Err(fail(
                "AUFS metadata (`.wh..wh.*`) is not part of an OCI layer".into(),
            ));
        }
        if t == b"." || t == b".." {
            return Err(fail("a whiteout of `.` or `..`".into()));
        }
        if !regular {
            return Err(fail("a whiteout must be a regular file".into()));
        }
        *path.last_mut().expect("non-empty") = target.to_os_string();
        Op::Whiteout
    } else {
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Op::File,
            EntryType::Directory => Op::Dir,
            EntryType::Symlink => match link {
                Some(t) if !t.is_empty() => Op::Symlink(t.to_vec()),
                _ => return Err(fail("a symlink without a target".into())),
            },
            EntryType::Link => {
                let t = link.ok_or_else(|| fail("a hard link without a target".into()))?;
                let target = normalize(t)
                    .map_err(|why| fail(format!("hard link target {:?}: {why}", lossy(t))))?;
                if target.is_empty() {
                    return Err(fail("a hard link to the root directory".into()));
                }
                Op::Link(target)
            }
            EntryType::Char => Op::Char(dev.0, dev.1),
            EntryType::Block => Op::Block(dev.0, dev.1),
            EntryType::Fifo => Op::Fifo,
            other => return Err(fail(format!("unsupported entry type {other:?}"))),
        }
    };
    Ok(Planned {
        raw: shown,
        path,
        op,
        meta,
    })
}

pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(raw: &str, kind: EntryType) -> Result<Planned, String> {
        plan(raw.as_bytes(), kind, None, (0, 0), Meta::default())
    }

    fn comps(c: &[&str]) -> Components {
        c.iter().map(OsString::from).collect()
    }

    #[test]
    fn paths_are_normalised_or_refused() {
        assert_eq!(normalize(b"./a//b/./c/").unwrap(), comps(&["a", "b", "c"]));
        assert_eq!(normalize(b"./").unwrap(), Components::new());
        for bad in ["/etc/passwd", "../x", "a/../../x", "a/..", "a/../b"] {
            assert!(normalize(bad.as_bytes()).is_err(), "{bad} accepted");
        }
        assert!(normalize(&[b'a'; 256]).is_err());
    }

    #[test]
    fn markers() {
        let w = p("d/.wh.x", EntryType::Regular).unwrap();
        assert_eq!((w.path, w.op), (comps(&["d", "x"]), Op::Whiteout));
        let o = p("d/e/.wh..wh..opq", EntryType::Regular).unwrap();
        assert_eq!((o.path, o.op), (comps(&["d", "e"]), Op::Opaque));
        for (raw, kind, why) in [
            ("d/.wh.", EntryType::Regular, "alone"),
            (".wh..wh..opq", EntryType::Regular, "root"),
            ("d/.wh..wh..opq", EntryType::Directory, "regular file"),
            ("d/.wh..wh..opq", EntryType::Symlink, "regular file"),
            ("d/.wh.x", EntryType::Directory, "regular file"),
            ("d/.wh..wh.plnk", EntryType::Regular, "AUFS metadata"),
            ("d/.wh...", EntryType::Regular, "`..`"),
        ] {
            let e = p(raw, kind).unwrap_err();
            assert!(e.contains(why) && e.contains(raw), "{raw}: {e}");
        }
    }

    #[test]
    fn types() {
        assert_eq!(p("./", EntryType::Directory).unwrap().op, Op::Root);
        assert!(p("./", EntryType::Regular).is_err());
        assert_eq!(p("x", EntryType::XGlobalHeader).unwrap().op, Op::Skip);
        let e = p("x", EntryType::new(b'V')).unwrap_err();
        assert!(e.contains("unsupported entry type"), "{e}");
        let link = |t: &str| {
            plan(
                b"l",
                EntryType::Link,
                Some(t.as_bytes()),
                (0, 0),
                Meta::default(),
            )
        };
        assert_eq!(link("./a/b").unwrap().op, Op::Link(comps(&["a", "b"])));
        assert!(link("../a").unwrap_err().contains("hard link target"));
        assert!(link("/a").unwrap_err().contains("absolute"));
        assert!(link(".").is_err());
        assert!(p("s", EntryType::Symlink).is_err());
    }
}
