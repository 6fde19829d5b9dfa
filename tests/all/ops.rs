//! Path-based helpers over the engine's id-based operations, for the in-process tests
//! (`semantics`, `regression`, `formats`): walk a union path, list, read, write, and inspect
//! the upper and workdir on disk.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fmt::Debug;
use std::path::Path;

use rustix::fs::{FileType, OFlags};
use rustix::io::Errno;
use unionmount::node::handle::DirEntry;
use unionmount::union::rename::RenameFlags;
use unionmount::union::{Attr, Ctx, Union, inode::ROOT};

use unionmount::layer::upper::SHARED_WHITEOUT;

use crate::fixture::{Stack, dump};

pub fn ctx() -> Ctx {
    Ctx {
        uid: 0,
        gid: 0,
        umask: 0o022,
    }
}

pub fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// The error of `r`, panicking with `what` when it succeeded.
#[track_caller]
pub fn err<T: Debug>(r: Result<T, Errno>) -> Errno {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e,
    }
}

/// Looks up every component of union path `path` ("" is the root).
pub fn at(u: &Union, path: &str) -> Result<Attr, Errno> {
    let mut cur = u.getattr(ROOT)?;
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        cur = u.lookup(cur.ino, OsStr::new(comp))?;
    }
    Ok(cur)
}

/// The inode number of `path`, which must exist.
#[track_caller]
pub fn ino(u: &Union, path: &str) -> u64 {
    at(u, path)
        .unwrap_or_else(|e| panic!("lookup {path:?}: {e}"))
        .ino
}

/// The parent directory's inode and the last component of `path`.
#[track_caller]
pub fn split<'p>(u: &Union, path: &'p str) -> (u64, &'p OsStr) {
    match path.rsplit_once('/') {
        Some((dir, name)) => (ino(u, dir), OsStr::new(name)),
        None => (ROOT, OsStr::new(path)),
    }
}

/// The full listing of directory `ino` (`.` and `..` included), in listing order.
pub fn entries(u: &Union, ino: u64) -> Vec<DirEntry> {
    let fh = u.opendir(ino).expect("opendir");
    let v = u.readdir(fh, 0).expect("readdir").to_vec();
    u.releasedir(fh);
    v
}

/// Sorted names of directory `path`, without `.` and `..`.
#[track_caller]
pub fn ls(u: &Union, path: &str) -> Vec<String> {
    let mut v: Vec<String> = entries(u, ino(u, path))
        .into_iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    v.sort();
    v
}

/// The whole content of file `path`.
#[track_caller]
pub fn cat(u: &Union, path: &str) -> String {
    let i = ino(u, path);
    let fh = u
        .open(&ctx(), i, OFlags::RDONLY)
        .unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    let mut out = Vec::new();
    loop {
        let chunk = u.read(fh, out.len() as u64, 1 << 16).expect("read");
        if chunk.is_empty() {
            break;
        }
        out.extend(chunk);
    }
    u.release(fh);
    String::from_utf8(out).expect("utf-8 content")
}

/// Replaces the content of `path` (creating it when absent).
pub fn put(u: &Union, path: &str, data: &str) -> Result<(), Errno> {
    let fh = match at(u, path) {
        Ok(a) => u.open(&ctx(), a.ino, OFlags::WRONLY | OFlags::TRUNC)?,
        Err(Errno::NOENT) => {
            let (p, name) = split(u, path);
            u.create(&ctx(), p, name, 0o644, OFlags::WRONLY)?.1
        }
        Err(e) => return Err(e),
    };
    let r = u.write(fh, 0, data.as_bytes());
    u.release(fh);
    assert_eq!(r?, data.len());
    Ok(())
}

pub fn mkdir(u: &Union, path: &str, mode: u32) -> Result<Attr, Errno> {
    let (p, name) = split(u, path);
    u.mkdir(&ctx(), p, name, mode)
}

pub fn unlink(u: &Union, path: &str) -> Result<(), Errno> {
    let (p, name) = split(u, path);
    u.unlink(&ctx(), p, name)
}

pub fn rmdir(u: &Union, path: &str) -> Result<(), Errno> {
    let (p, name) = split(u, path);
    u.rmdir(&ctx(), p, name)
}

pub fn symlink(u: &Union, path: &str, target: &str) -> Result<Attr, Errno> {
    let (p, name) = split(u, path);
    u.symlink(&ctx(), p, name, OsStr::new(target))
}

pub fn link(u: &Union, from: &str, to: &str) -> Result<Attr, Errno> {
    let i = at(u, from)?.ino;
    let (p, name) = split(u, to);
    u.link(i, p, name)
}

pub fn rename(u: &Union, from: &str, to: &str, flags: RenameFlags) -> Result<(), Errno> {
    let (sp, sname) = split(u, from);
    let (dp, dname) = split(u, to);
    u.rename(&ctx(), sp, sname, dp, dname, flags)
}

pub fn mv(u: &Union, from: &str, to: &str) -> Result<(), Errno> {
    rename(u, from, to, RenameFlags::default())
}

/// Every object of the union below `path`, one line each (sorted): path, type, permission
/// bits, owner, size and content or link target, and the xattrs the union lists. The same
/// format as `tree`, so the union and a kernel mount can be compared.
pub fn union_tree(u: &Union) -> String {
    let mut out = Vec::new();
    walk_union(u, ROOT, "", &mut out);
    out.sort();
    out.join("\n")
}

fn walk_union(u: &Union, dir: u64, prefix: &str, out: &mut Vec<String>) {
    for e in entries(u, dir) {
        let name = e.name.to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let a = u
            .lookup(dir, &e.name)
            .unwrap_or_else(|err| panic!("lookup of listed {rel:?}: {err}"));
        let kind = FileType::from_raw_mode(a.st.st_mode);
        let what = match kind {
            FileType::Directory => "d".to_string(),
            FileType::Symlink => {
                format!("l {}", String::from_utf8_lossy(&u.readlink(a.ino).unwrap()))
            }
            FileType::RegularFile => format!("f {}", cat(u, &rel)),
            FileType::Fifo => "p".to_string(),
            other => format!("{other:?} {}", a.st.st_rdev),
        };
        let mut keys: Vec<String> = u.listxattr(a.ino).unwrap_or_default();
        keys.sort();
        let xattrs: Vec<String> = keys
            .iter()
            .map(|k| {
                format!(
                    "{k}={}",
                    String::from_utf8_lossy(&u.getxattr(a.ino, OsStr::new(k)).unwrap_or_default())
                )
            })
            .collect();
        out.push(format!(
            "{rel} {what} {:o} {}:{} {xattrs:?}",
            a.st.st_mode & 0o7777,
            a.st.st_uid,
            a.st.st_gid
        ));
        if kind == FileType::Directory {
            walk_union(u, a.ino, &rel, out);
        }
        u.forget(a.ino, 1);
    }
}

/// `union_tree`'s format for a directory tree read with std::fs (a kernel mount).
pub fn tree(root: &Path) -> String {
    let mut out = Vec::new();
    walk_fs(root, root, &mut out);
    out.sort();
    out.join("\n")
}

fn walk_fs(root: &Path, dir: &Path, out: &mut Vec<String>) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let md = std::fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let what = if ft.is_dir() {
            "d".to_string()
        } else if ft.is_symlink() {
            format!("l {}", std::fs::read_link(&p).unwrap().display())
        } else if ft.is_file() {
            format!("f {}", std::fs::read_to_string(&p).unwrap())
        } else if ft.is_fifo() {
            "p".to_string()
        } else {
            format!("{:?} {}", FileType::from_raw_mode(md.mode()), md.rdev())
        };
        let xattrs: Vec<String> = crate::fixture::xattrs(&p)
            .into_iter()
            .filter(|kv| !kv.starts_with("trusted.overlay.") && !kv.starts_with("user.overlay."))
            .collect();
        out.push(format!(
            "{rel} {what} {:o} {}:{} {xattrs:?}",
            md.mode() & 0o7777,
            md.uid(),
            md.gid()
        ));
        if ft.is_dir() {
            walk_fs(root, &p, out);
        }
    }
}

/// The paths present in the upper (sorted).
pub fn upper_paths(s: &Stack) -> Vec<String> {
    let d = dump(&s.upper);
    d.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

/// The dump line of `path` in the upper without the path, or `None`.
pub fn upper_entry(s: &Stack, path: &str) -> Option<String> {
    let d = dump(&s.upper);
    let prefix = format!("{path} ");
    d.lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
}

/// Asserts `path` in the upper is a kernel whiteout (char device 0/0).
#[track_caller]
pub fn assert_upper_whiteout(s: &Stack, path: &str) {
    let e = upper_entry(s, path)
        .unwrap_or_else(|| panic!("no {path:?} in the upper:\n{}", dump(&s.upper)));
    assert!(
        e.starts_with("c 0 "),
        "{path:?} in the upper is not a char 0/0 whiteout: {e}"
    );
}

/// Asserts `path` in the upper is a directory marked opaque with `trusted.overlay.opaque=y`.
#[track_caller]
pub fn assert_upper_opaque(s: &Stack, path: &str) {
    let e = upper_entry(s, path)
        .unwrap_or_else(|| panic!("no {path:?} in the upper:\n{}", dump(&s.upper)));
    assert!(
        e.starts_with("d "),
        "{path:?} in the upper is not a directory: {e}"
    );
    assert!(
        e.contains("\"trusted.overlay.opaque=y\""),
        "{path:?} in the upper is not opaque: {e}"
    );
}

/// Asserts the workdir's staging directory holds nothing.
#[track_caller]
pub fn assert_work_empty(s: &Stack) {
    // The shared whiteout that whiteouts are hard links to (as the kernel keeps one) may stay
    // while the union is mounted; it must be a whiteout, and nothing else may be there.
    let left: Vec<String> = dump(&s.work.join("work"))
        .lines()
        .filter(|l| !l.starts_with(&format!("{SHARED_WHITEOUT} c 0 ")))
        .map(String::from)
        .collect();
    assert_eq!(left, Vec::<String>::new(), "leftovers in the workdir");
}

/// Asserts the lowers still dump as `before`.
#[track_caller]
pub fn assert_lowers(s: &Stack, before: &[String]) {
    assert_eq!(s.lowers_dump(), before, "a lower layer was modified");
}
