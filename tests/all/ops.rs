//! Path-based helpers over the engine's id-based operations, for the in-process tests
//! (`semantics`, `regression`, `formats`): walk a union path, list, read, write, and inspect
//! the upper and workdir on disk.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fmt::Debug;

use rustix::fs::OFlags;
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

/// The merged view through the engine, in the format of `fixture::dump` of a mount, so the
/// union and a kernel mount can be compared (`unionmount::layout::dump_union`).
pub fn union_tree(u: &Union) -> String {
    unionmount::layout::dump_union(u).expect("dump of the union")
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
