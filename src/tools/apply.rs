//! `unionmount apply`: unpack an OCI layer (tar, gzip or zstd, told apart by magic bytes) into
//! a directory in kernel overlay format, as containerd's overlay applier does, so that a stack
//! of applied layers mounts with kernel overlayfs (or unionmount) directly: `.wh.NAME` becomes
//! a char 0/0 whiteout, `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on its directory
//! (`user.overlay.opaque` with `--userxattr`).
//!
//! Safety invariants: nothing outside the target directory is ever created, changed or
//! removed. Every entry is checked before anything is written (`entry` for the rules on one
//! header; here the rules that need state: a parent that an earlier entry made a symlink or a
//! file, a parent that is a symlink or file in the directory already, a hard link to a target
//! neither archived before nor present), so a refused archive leaves the directory as it was.
//! While writing, parents are walked one component at a time with `sys::path` (beneath the
//! root, never following a symlink) and the last component is only ever used with `*at` calls
//! that do not follow it, so even a directory changed behind our back cannot redirect a write.
//! Directory mtimes are set last, deepest first, so that filling them does not undo them.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};

use super::entry::{self, Components, Meta, Op, Planned, as_path};
use crate::config::XattrNamespace;
use crate::format;
use crate::layer::upper::remove_tree;
use crate::sys::{self, Errno, not_found_as_none};

/// Unpacks the layer file `layer` into `dir` (which must exist); returns how many entries were
/// applied.
///
/// Errors: a message naming the entry that was refused or failed.
pub fn apply(layer: &Path, dir: &Path, ns: XattrNamespace) -> Result<usize, String> {
    let root = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
    // First pass: check everything, write nothing.
    let mut check = Checker {
        root: root.as_fd(),
        state: BTreeMap::new(),
    };
    each_entry(layer, |p, _| check.entry(p))?;
    // Second pass: write.
    let mut w = Applier {
        root: root.as_fd(),
        ns,
        dir_times: Vec::new(),
        root_user: rustix::process::geteuid().is_root(),
        count: 0,
    };
    each_entry(layer, |p, data| {
        w.entry(p, data)
            .map_err(|e| format!("entry {:?}: {e}", p.raw))
    })?;
    w.finish()
        .map_err(|e| format!("cannot set directory times: {e}"))?;
    Ok(w.count)
}

/// Opens a layer file, decompressing by its magic bytes.
fn open_layer(path: &Path) -> Result<Box<dyn Read>, String> {
    let f = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut r = BufReader::new(f);
    let magic = r
        .fill_buf()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(match magic {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(r)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(
            zstd::Decoder::with_buffer(r)
                .map_err(|e| format!("cannot read {} as zstd: {e}", path.display()))?,
        ),
        _ => Box::new(r),
    })
}

/// Calls `f` on every entry of the layer with the entry's data.
fn each_entry(
    layer: &Path,
    mut f: impl FnMut(&Planned, &mut dyn Read) -> Result<(), String>,
) -> Result<(), String> {
    let mut ar = tar::Archive::new(open_layer(layer)?);
    let bad = |e: std::io::Error| format!("{}: not a readable tar archive: {e}", layer.display());
    for e in ar.entries().map_err(bad)? {
        let mut e = e.map_err(bad)?;
        let planned = plan_entry(&mut e)?;
        f(&planned, &mut e)?;
    }
    Ok(())
}

fn plan_entry<R: Read>(e: &mut tar::Entry<'_, R>) -> Result<Planned, String> {
    let raw = e.path_bytes().into_owned();
    let bad = |what: &str, err: std::io::Error| {
        format!("entry {:?}: bad {what}: {err}", entry::lossy(&raw))
    };
    let mut xattrs = Vec::new();
    if let Some(pax) = e.pax_extensions().map_err(|err| bad("PAX header", err))? {
        for rec in pax {
            let rec = rec.map_err(|err| bad("PAX record", err))?;
            if let Some(k) = rec.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                xattrs.push((entry::lossy(k), rec.value_bytes().to_vec()));
            }
        }
    }
    let h = e.header();
    let num = |r: std::io::Result<u64>, what: &str| r.map_err(|err| bad(what, err));
    let meta = Meta {
        mode: h.mode().map_err(|err| bad("mode", err))? & 0o7777,
        uid: num(h.uid(), "uid")? as u32,
        gid: num(h.gid(), "gid")? as u32,
        mtime: num(h.mtime(), "mtime")? as i64,
        xattrs,
    };
    let dev = (
        h.device_major().ok().flatten().unwrap_or(0),
        h.device_minor().ok().flatten().unwrap_or(0),
    );
    let kind = h.entry_type();
    let link = e.link_name_bytes().map(|l| l.into_owned());
    entry::plan(&raw, kind, link.as_deref(), dev, meta)
}

/// What a path is, as far as the check pass knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    Symlink,
    Other,
}

/// The first pass: the archive's effect on the tree, tracked by path (`None`: removed by an
/// earlier entry), with what is already in the target directory probed read-only.
struct Checker<'a> {
    root: BorrowedFd<'a>,
    state: BTreeMap<Components, Option<Kind>>,
}

impl Checker<'_> {
    fn entry(&mut self, p: &Planned) -> Result<(), String> {
        let fail = |why: String| format!("entry {:?}: {why}", p.raw);
        if matches!(p.op, Op::Root | Op::Skip) {
            return Ok(());
        }
        let dir_end = if p.op == Op::Opaque {
            p.path.len()
        } else {
            p.path.len() - 1
        };
        for i in 1..=dir_end {
            match self.kind_of(&p.path[..i]).map_err(&fail)? {
                None | Some(Kind::Dir) => {
                    self.state.insert(p.path[..i].to_vec(), Some(Kind::Dir));
                }
                Some(Kind::Symlink) => {
                    return Err(fail(format!(
                        "its parent {} is a symlink, and applying never follows symlinks",
                        as_path(&p.path[..i]).display()
                    )));
                }
                Some(Kind::Other) => {
                    return Err(fail(format!(
                        "its parent {} is not a directory",
                        as_path(&p.path[..i]).display()
                    )));
                }
            }
        }
        let kind = match &p.op {
            Op::Opaque => return Ok(()),
            Op::Dir => Kind::Dir,
            Op::Symlink(_) => Kind::Symlink,
            Op::Link(target) => match self.kind_of(target).map_err(&fail)? {
                Some(Kind::Dir) => return Err(fail("a hard link to a directory".into())),
                Some(_) => Kind::Other,
                None => {
                    return Err(fail(format!(
                        "hard link to {}, which is neither in the archive before it nor in \
                         the directory",
                        as_path(target).display()
                    )));
                }
            },
            _ => Kind::Other,
        };
        if kind != Kind::Dir {
            // Whatever was below the name goes with what it was (a whiteout, a file over a
            // directory).
            let below: Vec<Components> = self
                .state
                .range(p.path.clone()..)
                .take_while(|(k, _)| k.starts_with(&p.path))
                .map(|(k, _)| k.clone())
                .collect();
            for k in below {
                self.state.insert(k, None);
            }
        }
        self.state.insert(p.path.clone(), Some(kind));
        Ok(())
    }

    /// What `path` is: as the archive left it, or else as the directory has it.
    fn kind_of(&self, path: &[OsString]) -> Result<Option<Kind>, String> {
        if let Some(k) = self.state.get(path) {
            return Ok(*k);
        }
        let (name, parent) = path.split_last().expect("non-empty path");
        let dir = match sys::path::open_dir_beneath(self.root, &as_path(parent)) {
            Ok(d) => d,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) | Err(Errno::XDEV) => {
                return Err(format!(
                    "{} leads through a symlink in the directory, and applying never follows \
                     symlinks",
                    as_path(path).display()
                ));
            }
            Err(Errno::NOTDIR) => return Ok(Some(Kind::Other)),
            Err(e) => return Err(format!("cannot look at {}: {e}", as_path(parent).display())),
        };
        let st = not_found_as_none(sys::path::stat_at(dir.as_fd(), name))
            .map_err(|e| format!("cannot look at {}: {e}", as_path(path).display()))?;
        Ok(st.map(|st| match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        }))
    }
}

/// The second pass: writes each entry.
struct Applier<'a> {
    root: BorrowedFd<'a>,
    ns: XattrNamespace,
    dir_times: Vec<(Components, i64)>,
    root_user: bool,
    count: usize,
}

impl Applier<'_> {
    fn entry(&mut self, p: &Planned, data: &mut dyn Read) -> Result<(), Errno> {
        if matches!(p.op, Op::Root | Op::Skip) {
            return Ok(());
        }
        self.count += 1;
        if p.op == Op::Opaque {
            let dir = self.parent_dir(&p.path, true)?;
            let key = format!("{}opaque", self.ns.overlay_prefix());
            return sys::xattr::set(dir.as_fd(), None, &key, b"y", XattrFlags::empty());
        }
        let (name, parent) = p.path.split_last().expect("non-empty path");
        let dir = self.parent_dir(parent, true)?;
        let dir = dir.as_fd();
        let existing = not_found_as_none(sys::path::stat_at(dir, name))?;
        let is_dir =
            |st: &rustix::fs::Stat| FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        match (&p.op, &existing) {
            (Op::Dir, Some(st)) if is_dir(st) => {}
            (_, Some(_)) => remove_tree(dir, name)?,
            _ => {}
        }
        let m = &p.meta;
        match &p.op {
            Op::Whiteout => {
                rustix::fs::mknodat(dir, name, FileType::CharacterDevice, Mode::empty(), 0)?;
                return self.chown(dir, name, m);
            }
            Op::Dir => {
                if existing.as_ref().is_none_or(|st| !is_dir(st)) {
                    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))?;
                }
                self.dir_times.push((p.path.clone(), m.mtime));
            }
            Op::File => {
                let fd = sys::path::open_at(
                    dir,
                    name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
                    0o600,
                )?;
                let mut f = File::from(fd);
                std::io::copy(data, &mut f)
                    .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
            }
            Op::Symlink(target) => rustix::fs::symlinkat(target.as_slice(), dir, name)?,
            Op::Link(target) => {
                let (tname, tparent) = target.split_last().expect("non-empty target");
                let tdir = self.parent_dir(tparent, false)?;
                // No AT_SYMLINK_FOLLOW: a symlink target is linked itself, never followed.
                return rustix::fs::linkat(tdir.as_fd(), tname, dir, name, AtFlags::empty());
            }
            Op::Char(maj, min) | Op::Block(maj, min) => {
                let kind = match p.op {
                    Op::Char(..) => FileType::CharacterDevice,
                    _ => FileType::BlockDevice,
                };
                let dev = rustix::fs::makedev(*maj, *min);
                rustix::fs::mknodat(dir, name, kind, Mode::from_raw_mode(0o600), dev)?;
            }
            Op::Fifo => {
                rustix::fs::mknodat(dir, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)?
            }
            Op::Opaque | Op::Root | Op::Skip => unreachable!("handled above"),
        }
        self.chown(dir, name, m)?;
        if !matches!(p.op, Op::Symlink(_)) {
            // After chown, which clears set-id bits.
            sys::path::chmod_nofollow(dir, name, Mode::from_raw_mode(m.mode))?;
        }
        self.xattrs(dir, name, &p.raw, &m.xattrs)?;
        if p.op != Op::Dir {
            set_mtime(dir, Some(name), m.mtime)?;
        }
        Ok(())
    }

    /// Opens the directory `path`, making missing components (0755) when `create`; never
    /// follows a symlink, never leaves the root.
    fn parent_dir(&self, path: &[OsString], create: bool) -> Result<OwnedFd, Errno> {
        let mut cur = sys::path::open_dir_beneath(self.root, Path::new(""))?;
        for comp in path {
            let open = |d: BorrowedFd<'_>| {
                sys::path::open_at(d, comp, OFlags::RDONLY | OFlags::DIRECTORY, 0)
            };
            let next = match open(cur.as_fd()) {
                Err(Errno::NOENT) if create => {
                    rustix::fs::mkdirat(&cur, comp.as_os_str(), Mode::from_raw_mode(0o755))?;
                    open(cur.as_fd())?
                }
                r => r?,
            };
            cur = next;
        }
        Ok(cur)
    }

    /// Sets the entry's owner; an unprivileged apply keeps its own where it may not give one.
    fn chown(&self, dir: BorrowedFd<'_>, name: &OsStr, m: &Meta) -> Result<(), Errno> {
        let r = rustix::fs::chownat(
            dir,
            name,
            Some(Uid::from_raw(m.uid)),
            Some(Gid::from_raw(m.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        );
        match r {
            Err(Errno::PERM) if !self.root_user => Ok(()),
            r => r,
        }
    }

    fn xattrs(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        raw: &str,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<(), Errno> {
        for (k, v) in xattrs {
            if format::is_private_xattr(k) {
                log::warn!("entry {raw:?}: private overlay xattr {k} not applied");
                continue;
            }
            match sys::xattr::set(dir, Some(name), k, v, XattrFlags::empty()) {
                Err(e @ (Errno::OPNOTSUPP | Errno::PERM)) => {
                    log::warn!("entry {raw:?}: xattr {k} not applied: {e}");
                }
                r => r?,
            }
        }
        Ok(())
    }

    /// Sets directory mtimes, deepest (latest) first.
    fn finish(&self) -> Result<(), Errno> {
        for (path, mtime) in self.dir_times.iter().rev() {
            let dir = sys::path::open_dir_beneath(self.root, &as_path(path))?;
            set_mtime(dir.as_fd(), None, *mtime)?;
        }
        Ok(())
    }
}

/// Sets atime and mtime of `name` in `dir` (of `dir` itself without a name), not following.
fn set_mtime(dir: BorrowedFd<'_>, name: Option<&OsStr>, mtime: i64) -> Result<(), Errno> {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    let ts = Timestamps {
        last_access: t,
        last_modification: t,
    };
    match name {
        Some(n) => rustix::fs::utimensat(dir, n, &ts, AtFlags::SYMLINK_NOFOLLOW),
        None => rustix::fs::futimens(dir, &ts),
    }
}
