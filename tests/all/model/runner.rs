//! The plan runner: builds the plan's layers on disk, drives the in-process engine with its
//! operations, and checks every answer and the whole merged view against the model.
//!
//! The runner plays the kernel's VFS: it resolves paths by lookups, refuses a parent that is
//! not a directory (ENOTDIR), does not pass on what the VFS answers itself (a rename whose
//! source is an ancestor of its destination or the reverse: EINVAL/ENOTEMPTY; open, truncate,
//! chmod and xattr calls on a symlink, which the VFS follows or refuses). A trapped plain
//! rename is still sent to the engine, which must refuse it without changing the view.
//! Checked after every operation: the answer (errno or listing), the full merged view walked
//! with readdir/lookup/getattr/read/readlink/listxattr (user.* only), d_ino == st_ino, one
//! st_ino per identity and none shared between identities, and each identity's st_ino stable.
//! Also after every operation: lowers byte-for-byte unchanged, nothing created beside the
//! layers, and the workdir's `work/` empty but for the shared whiteout the engine keeps there.
//! At the end a second union over the same directories (a remount) must show the same view.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::Path;

use rustix::fs::{FileType, OFlags};
use rustix::io::Errno;
use unionmount::layer::upper::{SHARED_WHITEOUT, WORK_SUBDIR};
use unionmount::union::attr::SetAttr;
use unionmount::union::inode::ROOT;
use unionmount::union::rename::RenameFlags;
use unionmount::union::{Attr, Ctx, Union};

use super::plan::{Op, Plan, RenameMode, XATTR_KEYS, xattr_value};
use super::reference::{Model, Outcome, UMASK, is_ancestor};
use crate::fixture::{Stack, dump};

fn ctx() -> Ctx {
    Ctx {
        umask: UMASK,
        ..Ctx::current()
    }
}

/// One operation's view of the engine: lookups it made are forgotten when it ends, as the
/// kernel eventually does.
struct Vfs<'u, 'h> {
    u: &'u Union,
    looked_up: Vec<u64>,
    /// File handles kept open across operations (`Op::Open`), each with the inode it holds a
    /// lookup reference to, as the kernel does for an open file.
    handles: &'h mut Vec<(u64, u64)>,
}

impl Drop for Vfs<'_, '_> {
    fn drop(&mut self) {
        for ino in self.looked_up.drain(..) {
            self.u.forget(ino, 1);
        }
    }
}

impl Vfs<'_, '_> {
    fn lookup(&mut self, dir: u64, name: &str) -> Result<Attr, Errno> {
        let a = self.u.lookup(dir, OsStr::new(name))?;
        self.looked_up.push(a.ino);
        Ok(a)
    }

    /// The object `path` names ("" is the root).
    fn resolve(&mut self, path: &str) -> Result<Attr, Errno> {
        let mut cur = self.u.getattr(ROOT)?;
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            cur = self.lookup(cur.ino, comp)?;
        }
        Ok(cur)
    }

    /// The directory holding `path` and its last name (ENOTDIR when the parent is not one).
    fn parent<'p>(&mut self, path: &'p str) -> Result<(u64, &'p OsStr), Errno> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let a = self.resolve(dir)?;
        if kind(&a) != FileType::Directory {
            return Err(Errno::NOTDIR);
        }
        Ok((a.ino, OsStr::new(name)))
    }

    /// `path`, unless it is a symlink (`None`: the VFS would follow or refuse it).
    fn target(&mut self, path: &str) -> Result<Option<Attr>, Errno> {
        let a = self.resolve(path)?;
        Ok((kind(&a) != FileType::Symlink).then_some(a))
    }

    fn exec(&mut self, op: &Op) -> Result<Outcome, Errno> {
        if let Some(path) = op.object_path() {
            return match self.target(path)? {
                Some(a) => self.on_object(&a, op),
                None => Ok(Outcome::Skipped),
            };
        }
        let (u, c) = (self.u, ctx());
        match op {
            Op::Read { slot } => {
                let Some(&(fh, _)) = self.handles.get(slot % self.handles.len().max(1)) else {
                    return Ok(Outcome::Skipped);
                };
                return u.read(fh, 0, 1 << 16).map(Outcome::Data);
            }
            Op::Create { path, mode } => {
                let (p, name) = self.parent(path)?;
                let (_, fh) = u.create(&c, p, name, *mode, OFlags::WRONLY)?;
                u.release(fh);
            }
            Op::Mkdir { path, mode } => {
                let (p, name) = self.parent(path)?;
                u.mkdir(&c, p, name, *mode)?;
            }
            Op::Symlink { path, target } => {
                let (p, name) = self.parent(path)?;
                u.symlink(&c, p, name, OsStr::new(target))?;
            }
            Op::Unlink { path } => {
                let (p, name) = self.parent(path)?;
                u.unlink(&c, p, name)?;
            }
            Op::Rmdir { path } => {
                let (p, name) = self.parent(path)?;
                u.rmdir(&c, p, name)?;
            }
            Op::Rename { from, to, mode } => return self.rename(from, to, *mode),
            Op::Link { from, to } => {
                let src = self.resolve(from)?;
                let (p, name) = self.parent(to)?;
                u.link(src.ino, p, name)?;
            }
            _ => unreachable!("acts on an object: {op:?}"),
        }
        Ok(Outcome::Done)
    }

    /// The operations on an object found by its path.
    fn on_object(&mut self, a: &Attr, op: &Op) -> Result<Outcome, Errno> {
        let (u, c) = (self.u, ctx());
        let setattr = |set: SetAttr| u.setattr(&c, a.ino, &set).map(|_| ());
        match op {
            Op::Write { offset, data, .. } => {
                let fh = u.open(&c, a.ino, OFlags::WRONLY)?;
                let r = u.write(fh, *offset, data.as_bytes());
                u.release(fh);
                assert_eq!(r?, data.len(), "short write");
            }
            Op::Truncate { size, .. } => setattr(SetAttr {
                size: Some(*size),
                ..SetAttr::default()
            })?,
            Op::Chmod { mode, .. } => setattr(SetAttr {
                mode: Some(*mode),
                ..SetAttr::default()
            })?,
            Op::SetXattr {
                key, value, flags, ..
            } => {
                let (k, v) = (OsStr::new(XATTR_KEYS[*key]), xattr_value(*value));
                u.setxattr(a.ino, k, v.as_bytes(), *flags)?;
            }
            Op::RemoveXattr { key, .. } => u.removexattr(a.ino, OsStr::new(XATTR_KEYS[*key]))?,
            Op::Open { .. } if kind(a) == FileType::Directory => return Ok(Outcome::Skipped),
            Op::Open { .. } => {
                let fh = u.open(&c, a.ino, OFlags::RDONLY)?;
                let i = self.looked_up.iter().rposition(|&i| i == a.ino);
                self.looked_up
                    .remove(i.expect("an opened file was looked up"));
                self.handles.push((fh, a.ino));
            }
            Op::Readdir { .. } => {
                let names: Vec<String> = listing(u, a.ino)?.into_keys().collect();
                return Ok(Outcome::Names(names));
            }
            _ => unreachable!("acts on a name: {op:?}"),
        }
        Ok(Outcome::Done)
    }

    fn rename(&mut self, from: &str, to: &str, mode: RenameMode) -> Result<Outcome, Errno> {
        let (sp, sname) = self.parent(from)?;
        let (dp, dname) = self.parent(to)?;
        let flags = RenameFlags {
            noreplace: mode == RenameMode::NoReplace,
            exchange: mode == RenameMode::Exchange,
        };
        let trapped = is_ancestor(from, to) || is_ancestor(to, from);
        if trapped && flags.exchange {
            // Not even asked: the engine would copy the source up before failing, which
            // gives the other names of a hard-linked lower file a new st_ino.
            self.lookup(sp, sname.to_str().unwrap_or_default())?;
            self.lookup(dp, dname.to_str().unwrap_or_default())?;
            return Err(Errno::INVAL);
        }
        let r = self.u.rename(&ctx(), sp, sname, dp, dname, flags);
        if !trapped {
            return r.map(|()| Outcome::Done);
        }
        // The VFS answers these itself; the engine, asked anyway, must refuse.
        if r.is_ok() {
            panic!("the engine renamed {from:?} to {to:?}, an ancestor trap");
        }
        // What the VFS says, in its order: ENOENT/EEXIST come from its own lookups.
        match r {
            Err(e @ (Errno::NOENT | Errno::EXIST)) => Err(e),
            _ if is_ancestor(from, to) => Err(Errno::INVAL),
            _ => Err(Errno::NOTEMPTY),
        }
    }
}

fn kind(a: &Attr) -> FileType {
    FileType::from_raw_mode(a.st.st_mode)
}

/// The names of directory `ino` with their d_ino and d_type, checking `.` and `..` and no
/// duplicates.
fn listing(u: &Union, ino: u64) -> Result<BTreeMap<String, (u64, FileType)>, Errno> {
    let fh = u.opendir(ino)?;
    let r = u.readdir(fh, 0);
    u.releasedir(fh);
    let entries = r?;
    let mut out = BTreeMap::new();
    let mut dots = 0;
    for e in entries.iter() {
        let name = e.name.to_string_lossy().into_owned();
        if name == "." || name == ".." {
            dots += 1;
        } else if out.insert(name.clone(), (e.ino, e.kind)).is_some() {
            panic!("{name:?} listed twice in directory {ino}");
        }
    }
    assert_eq!(dots, 2, "`.` and `..` in the listing of directory {ino}");
    Ok(out)
}

/// The engine's merged view: path -> (description in `Model::render`'s format, st_ino).
fn engine_view(u: &Union) -> Result<BTreeMap<String, (String, u64)>, String> {
    let mut out = BTreeMap::new();
    walk(u, ROOT, "", &mut out).map_err(|e| format!("walking the union: {e}"))?;
    Ok(out)
}

fn walk(
    u: &Union,
    dir: u64,
    prefix: &str,
    out: &mut BTreeMap<String, (String, u64)>,
) -> Result<(), String> {
    let list = listing(u, dir).map_err(|e| format!("listing {prefix:?}: {e}"))?;
    for (name, dirent) in list {
        let path = super::reference::join(prefix, &name);
        let a = u
            .lookup(dir, OsStr::new(&name))
            .map_err(|e| format!("lookup of listed {path:?}: {e}"))?;
        let r = visit(u, &a, dirent, &path, out);
        u.forget(a.ino, 1);
        r?;
    }
    Ok(())
}

fn visit(
    u: &Union,
    a: &Attr,
    (d_ino, d_type): (u64, FileType),
    path: &str,
    out: &mut BTreeMap<String, (String, u64)>,
) -> Result<(), String> {
    if (d_ino, d_type) != (a.ino, kind(a)) {
        return Err(format!(
            "{path:?}: listed as {d_ino} {d_type:?}, looked up as {} {:?}",
            a.ino,
            kind(a)
        ));
    }
    let st = u
        .getattr(a.ino)
        .map_err(|e| format!("getattr of {path:?}: {e}"))?
        .st;
    let fields = |st: &rustix::fs::Stat| (st.st_ino, st.st_mode, st.st_size, st.st_nlink);
    if fields(&st) != fields(&a.st) {
        return Err(format!(
            "{path:?}: getattr {:?} but lookup {:?}",
            fields(&st),
            fields(&a.st)
        ));
    }
    let described = describe(u, a).map_err(|e| format!("reading {path:?}: {e}"))?;
    out.insert(path.to_string(), (described, a.ino));
    if kind(a) == FileType::Directory {
        walk(u, a.ino, path, out)?;
    }
    Ok(())
}

fn describe(u: &Union, a: &Attr) -> Result<String, Errno> {
    let mode = a.st.st_mode & 0o7777;
    let mut keys: Vec<String> = u.listxattr(a.ino)?;
    keys.retain(|k| k.starts_with("user."));
    keys.sort();
    let mut xattrs = Vec::new();
    for k in keys {
        let v = u.getxattr(a.ino, OsStr::new(&k))?;
        xattrs.push(format!("{k}={}", String::from_utf8_lossy(&v)));
    }
    Ok(match kind(a) {
        FileType::Directory => format!("d {mode:o} {xattrs:?}"),
        FileType::RegularFile => {
            let fh = u.open(&ctx(), a.ino, OFlags::RDONLY)?;
            let data = u.read(fh, 0, 1 << 16);
            u.release(fh);
            // st_size is shown beside the content, which gives the model's size.
            format!(
                "f {mode:o} {} {:?} {xattrs:?}",
                a.st.st_size,
                String::from_utf8_lossy(&data?)
            )
        }
        FileType::Symlink => {
            let t = u.readlink(a.ino)?;
            format!("l {mode:o} {:?} {xattrs:?}", String::from_utf8_lossy(&t))
        }
        other => format!("{other:?} {mode:o}"),
    })
}

/// Compares the engine's view with the model's, and st_ino with identities. `seen` remembers
/// the st_ino each identity showed so far in this mount, to check they are stable.
fn check_view(
    u: &Union,
    m: &Model,
    mut seen: Option<&mut HashMap<u32, u64>>,
) -> Result<(), String> {
    let got = engine_view(u)?;
    let want = m.render();
    let got_desc: BTreeMap<&String, &String> = got.iter().map(|(p, (d, _))| (p, d)).collect();
    let want_desc: BTreeMap<&String, &String> = want.iter().collect();
    if got_desc != want_desc {
        let mut diff = Vec::new();
        for p in got_desc
            .keys()
            .chain(want_desc.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            let (g, w) = (got_desc.get(p), want_desc.get(p));
            if g != w {
                diff.push(format!("  {p}: union {g:?}, model {w:?}"));
            }
        }
        return Err(format!("merged view differs:\n{}", diff.join("\n")));
    }
    let mut owner: HashMap<u64, (u32, &str)> = HashMap::new();
    for (path, (_, ino)) in &got {
        let id = m.view[path].id;
        if let Some(&(other, opath)) = owner.get(ino)
            && other != id
        {
            return Err(format!(
                "{path:?} and {opath:?} are different objects sharing st_ino {ino}"
            ));
        }
        owner.insert(*ino, (id, path));
        match seen.as_mut().and_then(|seen| seen.insert(id, *ino)) {
            Some(before) if before != *ino => {
                return Err(format!("st_ino of {path:?} changed from {before} to {ino}"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Everything that must hold of the directories on disk once the plan ran.
fn check_disk(s: &Stack, lowers_before: &[String]) -> Result<(), String> {
    if s.lowers_dump() != lowers_before {
        return Err(format!(
            "a lower was modified:\nbefore {lowers_before:#?}\nafter {:#?}",
            s.lowers_dump()
        ));
    }
    let mut top: Vec<String> = ls(s.tmp.path());
    top.sort();
    let mut expected: Vec<String> = (0..s.lowers.len()).map(|i| format!("lower{i}")).collect();
    expected.extend(["mnt", "upper", "work"].map(String::from));
    expected.sort();
    if top != expected || !ls(&s.mnt).is_empty() || ls(&s.work) != [WORK_SUBDIR] {
        return Err(format!(
            "written outside the upper and the workdir:\n{}",
            dump(s.tmp.path())
        ));
    }
    let left: Vec<String> = dump(&s.work.join(WORK_SUBDIR))
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(&format!("{SHARED_WHITEOUT} c 0 ")))
        .map(String::from)
        .collect();
    if !left.is_empty() {
        return Err(format!("leftovers in the workdir: {left:?}"));
    }
    Ok(())
}

fn ls(p: &Path) -> Vec<String> {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `plan` on a fresh layer stack; `Err` describes the first disagreement with the model
/// or broken invariant.
pub fn run(plan: &Plan) -> Result<(), String> {
    let lowers: Vec<String> = plan.lowers.iter().map(|l| l.fixture_text()).collect();
    let lowers: Vec<&str> = lowers.iter().map(String::as_str).collect();
    let s = Stack::with_upper(&lowers, &plan.upper.fixture_text());
    let lowers_before = s.lowers_dump();
    let u = Union::new(&s.config()).map_err(|e| format!("Union::new: {e}"))?;
    let mut m = Model::new(plan);
    let mut seen = HashMap::new();
    let mut handles = Vec::new();
    check_view(&u, &m, Some(&mut seen)).map_err(|e| format!("before any operation: {e}"))?;
    for (i, op) in plan.ops.iter().enumerate() {
        let want = m.apply(op);
        let got = Vfs {
            u: &u,
            looked_up: Vec::new(),
            handles: &mut handles,
        }
        .exec(op);
        if got != want {
            return Err(format!(
                "op {i} {op:?}: union answered {got:?}, model {want:?}"
            ));
        }
        check_view(&u, &m, Some(&mut seen)).map_err(|e| format!("after op {i} {op:?}: {e}"))?;
        check_disk(&s, &lowers_before).map_err(|e| format!("after op {i} {op:?}: {e}"))?;
    }
    for (fh, ino) in handles {
        u.release(fh);
        u.forget(ino, 1);
    }
    drop(u);
    // What the upper holds must mean the same view to a new mount (markers written right);
    // st_ino may differ, as copy-up numbering lives only as long as a mount.
    let again = Union::new(&s.config()).map_err(|e| format!("Union::new again: {e}"))?;
    check_view(&again, &m, None).map_err(|e| format!("after a remount: {e}"))?;
    drop(again);
    check_disk(&s, &lowers_before)
}
