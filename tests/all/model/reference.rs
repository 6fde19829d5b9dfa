//! The reference model: the merged view as an in-memory tree, and every plan operation applied
//! to it with POSIX and kernel-overlayfs semantics.
//!
//! The view is built once from the layer specs by the overlay lookup rules (top layer first; a
//! whiteout in any format ends the search, a non-directory hides everything below, directories
//! merge until an opaque one; the layer root is never opaque) and from then on only the view
//! changes: after the start, no question is ever answered from the layers again. Objects are
//! named by identity (`id`): hard links share one, and an id keeps its st_ino for the life of
//! the union. Two unionmount choices are modelled explicitly: renaming a directory that has
//! lower copies gives EXDEV (the kernel without `redirect_dir`), and copying up one name of a
//! hard-linked lower file gives the names left in the lower a new identity (the kernel without
//! `index`: the copy is a different file from then on).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rustix::io::Errno;

use super::plan::{
    Entry, LayerSpec, Op, Opaque, Plan, RenameMode, XATTR_KEYS, parent, xattr_value,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// A name of the merged view.
#[derive(Clone, Debug)]
pub struct VObj {
    pub id: u32,
    pub kind: Kind,
    /// A directory that has lower copies (lower-only or merged): renaming it gives EXDEV.
    pub has_lower: bool,
}

/// What an identity holds: content (or link target), mode, user xattrs, and where it lives.
#[derive(Clone, Debug)]
pub struct Inode {
    pub data: Vec<u8>,
    pub mode: u32,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub upper: bool,
}

/// What an operation returned besides success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Sorted names of a listing.
    Names(Vec<String>),
    /// What a read returned.
    Data(Vec<u8>),
    /// The kernel would not pass this to the filesystem (it follows the symlink first).
    Skipped,
}

/// The umask of the in-process caller (`ops::ctx`).
pub const UMASK: u32 = 0o022;

pub struct Model {
    pub view: BTreeMap<String, VObj>,
    pub inodes: HashMap<u32, Inode>,
    next_id: u32,
    /// The identities open handles were opened on: a handle follows its file through
    /// copy-up, rename and unlink, and holds a lookup reference to it, as the kernel does.
    handles: Vec<u32>,
}

enum Probe<'a> {
    Absent,
    Whiteout,
    Object(&'a Entry),
}

/// Layer 0 is the upper, then the lowers top first, as in the engine.
fn layers(plan: &Plan) -> Vec<&LayerSpec> {
    std::iter::once(&plan.upper).chain(&plan.lowers).collect()
}

fn probe<'a>(l: &'a LayerSpec, path: &str, xwh: bool) -> Probe<'a> {
    match l.entries.get(path) {
        None => Probe::Absent,
        Some(Entry::Whiteout | Entry::AufsWhiteout) => Probe::Whiteout,
        Some(Entry::XWhiteout) if xwh => Probe::Whiteout,
        Some(e) => Probe::Object(e),
    }
}

fn kind_of(e: &Entry) -> Kind {
    match e {
        Entry::Dir { .. } => Kind::Dir,
        Entry::Symlink(_) => Kind::Symlink,
        _ => Kind::File,
    }
}

/// Whether `layer`'s copy of directory `path` may hold xattr whiteouts (never the upper's).
fn xwh(layers: &[&LayerSpec], layer: usize, path: &str) -> bool {
    layer != 0 && layers[layer].has_xwhiteouts(path)
}

pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// True when `anc` is a proper ancestor of `path`.
pub fn is_ancestor(anc: &str, path: &str) -> bool {
    path.len() > anc.len() && path.starts_with(anc) && path.as_bytes()[anc.len()] == b'/'
}

impl Model {
    /// The merged view of the plan's layer stack.
    pub fn new(plan: &Plan) -> Model {
        let mut m = Model {
            view: BTreeMap::new(),
            inodes: HashMap::new(),
            next_id: 1,
            handles: Vec::new(),
        };
        let ls = layers(plan);
        let root: Vec<(usize, bool)> = (0..ls.len()).map(|l| (l, xwh(&ls, l, ""))).collect();
        m.merge_dir(&ls, "", &root, &mut HashMap::new());
        m
    }

    fn merge_dir(
        &mut self,
        ls: &[&LayerSpec],
        dir: &str,
        dir_layers: &[(usize, bool)],
        ids: &mut HashMap<(usize, String), u32>,
    ) {
        let names: BTreeSet<&str> = dir_layers
            .iter()
            .flat_map(|&(l, _)| ls[l].entries.keys())
            .filter(|p| !p.is_empty() && parent(p) == dir)
            .map(|p| p.rsplit('/').next().unwrap_or(p))
            .collect();
        for name in names {
            let path = join(dir, name);
            let mut found: Option<(&Entry, usize)> = None;
            let mut below = Vec::new();
            for &(l, x) in dir_layers {
                let e = match probe(ls[l], &path, x) {
                    Probe::Absent => continue,
                    Probe::Whiteout => break,
                    Probe::Object(e) => e,
                };
                if found.is_some() && kind_of(e) != Kind::Dir {
                    break;
                }
                found.get_or_insert((e, l));
                if kind_of(e) != Kind::Dir {
                    break;
                }
                below.push((l, xwh(ls, l, &path)));
                if ls[l].opaque_of(&path) != Opaque::No {
                    break;
                }
            }
            let Some((entry, top)) = found else { continue };
            // Hard links of one layer share the identity of the file they link to.
            let (canon, entry) = match entry {
                Entry::Link(to) => (to.clone(), &ls[top].entries[to]),
                e => (path.clone(), e),
            };
            let id = match ids.get(&(top, canon.clone())) {
                Some(&id) => id,
                None => {
                    let id = self.fresh_id(inode_of(entry, top == 0));
                    ids.insert((top, canon), id);
                    id
                }
            };
            let kind = kind_of(entry);
            let has_lower = kind == Kind::Dir && below.iter().any(|&(l, _)| l != 0);
            self.view.insert(
                path.clone(),
                VObj {
                    id,
                    kind,
                    has_lower,
                },
            );
            if kind == Kind::Dir {
                self.merge_dir(ls, &path, &below, ids);
            }
        }
    }

    fn fresh_id(&mut self, inode: Inode) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        self.inodes.insert(id, inode);
        id
    }

    /// Checks the ancestors of `path` as path resolution does (ENOENT, ENOTDIR), then returns
    /// what `path` names.
    fn lookup(&self, path: &str) -> Result<Option<&VObj>, Errno> {
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        for i in 1..comps.len() {
            match self.view.get(&comps[..i].join("/")) {
                None => return Err(Errno::NOENT),
                Some(o) if o.kind != Kind::Dir => return Err(Errno::NOTDIR),
                Some(_) => {}
            }
        }
        Ok(self.view.get(path))
    }

    fn existing(&self, path: &str) -> Result<VObj, Errno> {
        self.lookup(path)?.cloned().ok_or(Errno::NOENT)
    }

    fn children(&self, dir: &str) -> Vec<String> {
        self.view
            .keys()
            .filter(|p| !dir.is_empty() || !p.contains('/'))
            .filter(|p| dir.is_empty() || (is_ancestor(dir, p) && parent(p) == dir))
            .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
            .collect()
    }

    /// A copy-up of `path`: a lower identity moves to the upper. Its other names are linked
    /// to the copy when the engine knows them (unionmount's choice, like the kernel's
    /// `index=on`): that is when an open handle keeps its node alive, since the runner looks
    /// every name up after each operation and a lower file gains no names. Otherwise they
    /// stay in the lower and become a file of their own.
    fn copy_up(&mut self, path: &str) {
        let id = self.view[path].id;
        if self.inodes[&id].upper {
            return;
        }
        self.inodes.get_mut(&id).unwrap().upper = true;
        if self.handles.contains(&id) {
            return;
        }
        let others: Vec<String> = self
            .view
            .iter()
            .filter(|(p, o)| o.id == id && p.as_str() != path)
            .map(|(p, _)| p.clone())
            .collect();
        if !others.is_empty() {
            let mut copy = self.inodes[&id].clone();
            copy.upper = false;
            let fresh = self.fresh_id(copy);
            for p in others {
                self.view.get_mut(&p).unwrap().id = fresh;
            }
        }
    }

    fn inode(&mut self, path: &str) -> &mut Inode {
        let id = self.view[path].id;
        self.inodes.get_mut(&id).unwrap()
    }

    fn create(&mut self, path: &str, kind: Kind, data: &[u8], mode: u32) -> Result<Outcome, Errno> {
        if self.lookup(path)?.is_some() {
            return Err(Errno::EXIST);
        }
        let id = self.fresh_id(Inode {
            data: data.to_vec(),
            mode,
            xattrs: BTreeMap::new(),
            upper: true,
        });
        self.view.insert(
            path.to_string(),
            VObj {
                id,
                kind,
                has_lower: false,
            },
        );
        Ok(Outcome::Done)
    }

    /// Moves `from` and everything below it to `to`.
    fn move_tree(&mut self, from: &str, to: &str) {
        let moved: Vec<(String, VObj)> = self
            .view
            .iter()
            .filter(|(p, _)| p.as_str() == from || is_ancestor(from, p))
            .map(|(p, o)| (p.clone(), o.clone()))
            .collect();
        for (p, _) in &moved {
            self.view.remove(p);
        }
        for (p, o) in moved {
            self.view.insert(format!("{to}{}", &p[from.len()..]), o);
        }
    }

    /// Applies `op`, returning what the union must answer.
    pub fn apply(&mut self, op: &Op) -> Result<Outcome, Errno> {
        if let Some(path) = op.object_path()
            && !path.is_empty()
            && self.existing(path)?.kind == Kind::Symlink
        {
            return Ok(Outcome::Skipped);
        }
        match op {
            Op::Create { path, mode } => self.create(path, Kind::File, b"", mode & !UMASK),
            Op::Mkdir { path, mode } => self.create(path, Kind::Dir, b"", mode & !UMASK),
            Op::Symlink { path, target } => {
                self.create(path, Kind::Symlink, target.as_bytes(), 0o777)
            }
            Op::Unlink { path } => {
                if self.existing(path)?.kind == Kind::Dir {
                    return Err(Errno::ISDIR);
                }
                self.view.remove(path);
                Ok(Outcome::Done)
            }
            Op::Rmdir { path } => {
                if self.existing(path)?.kind != Kind::Dir {
                    return Err(Errno::NOTDIR);
                }
                if !self.children(path).is_empty() {
                    return Err(Errno::NOTEMPTY);
                }
                self.view.remove(path);
                Ok(Outcome::Done)
            }
            Op::Rename { from, to, mode } => self.rename(from, to, *mode),
            Op::Link { from, to } => {
                let src = self.existing(from)?;
                self.lookup(to)?;
                if src.kind == Kind::Dir {
                    return Err(Errno::PERM);
                }
                if self.view.contains_key(to) {
                    return Err(Errno::EXIST);
                }
                self.copy_up(from);
                let id = self.view[from.as_str()].id;
                self.view.insert(
                    to.clone(),
                    VObj {
                        id,
                        kind: src.kind,
                        has_lower: false,
                    },
                );
                Ok(Outcome::Done)
            }
            Op::Write { path, offset, data } => {
                self.writable_file(path)?;
                let off = *offset as usize;
                let ino = self.inode(path);
                if ino.data.len() < off + data.len() {
                    ino.data.resize(off + data.len(), 0);
                }
                ino.data[off..off + data.len()].copy_from_slice(data.as_bytes());
                Ok(Outcome::Done)
            }
            Op::Truncate { path, size } => {
                self.writable_file(path)?;
                self.inode(path).data.resize(*size as usize, 0);
                Ok(Outcome::Done)
            }
            Op::Chmod { path, mode } => {
                self.copy_up(path);
                self.inode(path).mode = *mode;
                Ok(Outcome::Done)
            }
            Op::SetXattr {
                path,
                key,
                value,
                flags,
            } => {
                // Like the kernel, the copy-up comes before the upper's checks of `flags`.
                self.copy_up(path);
                let k = XATTR_KEYS[*key];
                let present = self.inode(path).xattrs.contains_key(k);
                match (*flags, present) {
                    (1, true) => return Err(Errno::EXIST),
                    (2, false) => return Err(Errno::NODATA),
                    _ => {}
                }
                let v = xattr_value(*value).as_bytes().to_vec();
                self.inode(path).xattrs.insert(k.to_string(), v);
                Ok(Outcome::Done)
            }
            Op::RemoveXattr { path, key } => {
                if !self.inode(path).xattrs.contains_key(XATTR_KEYS[*key]) {
                    return Err(Errno::NODATA);
                }
                self.copy_up(path);
                self.inode(path).xattrs.remove(XATTR_KEYS[*key]);
                Ok(Outcome::Done)
            }
            Op::Open { path } => {
                let o = self.existing(path)?;
                if o.kind == Kind::Dir {
                    return Ok(Outcome::Skipped);
                }
                self.handles.push(o.id);
                Ok(Outcome::Done)
            }
            Op::Read { slot } => match self.handles.len() {
                0 => Ok(Outcome::Skipped),
                n => Ok(Outcome::Data(
                    self.inodes[&self.handles[slot % n]].data.clone(),
                )),
            },
            Op::Readdir { path } => {
                if !path.is_empty() && self.existing(path)?.kind != Kind::Dir {
                    return Err(Errno::NOTDIR);
                }
                Ok(Outcome::Names(self.children(path)))
            }
        }
    }

    /// open(O_WRONLY) or truncate of `path`: EISDIR for a directory, else a copy-up.
    fn writable_file(&mut self, path: &str) -> Result<(), Errno> {
        if self.existing(path)?.kind == Kind::Dir {
            return Err(Errno::ISDIR);
        }
        self.copy_up(path);
        Ok(())
    }

    /// rename(2)/renameat2(2), in the kernel's order of checks: the VFS's (ENOENT, EEXIST,
    /// the ancestor traps EINVAL/ENOTEMPTY, same inode), then the overlay's.
    fn rename(&mut self, from: &str, to: &str, mode: RenameMode) -> Result<Outcome, Errno> {
        self.lookup(from)?;
        self.lookup(to)?;
        let src = self.existing(from)?;
        let dst = self.view.get(to).cloned();
        match (&dst, mode) {
            (None, RenameMode::Exchange) => return Err(Errno::NOENT),
            (Some(_), RenameMode::NoReplace) => return Err(Errno::EXIST),
            _ => {}
        }
        let exchange = mode == RenameMode::Exchange;
        if is_ancestor(from, to) {
            return Err(Errno::INVAL);
        }
        if is_ancestor(to, from) {
            return Err(if exchange {
                Errno::INVAL
            } else {
                Errno::NOTEMPTY
            });
        }
        if let Some(d) = &dst {
            if d.id == src.id {
                return Ok(Outcome::Done);
            }
            if !exchange {
                match (src.kind == Kind::Dir, d.kind == Kind::Dir) {
                    (true, false) => return Err(Errno::NOTDIR),
                    (false, true) => return Err(Errno::ISDIR),
                    _ => {}
                }
            }
        }
        if src.has_lower || (exchange && dst.as_ref().is_some_and(|d| d.has_lower)) {
            return Err(Errno::XDEV);
        }
        if let Some(d) = &dst
            && !exchange
            && d.kind == Kind::Dir
            && !self.children(to).is_empty()
        {
            return Err(Errno::NOTEMPTY);
        }
        self.copy_up(from);
        if exchange {
            self.copy_up(to);
            const TMP: &str = "\u{0}swap";
            self.move_tree(to, TMP);
            self.move_tree(from, to);
            self.move_tree(TMP, from);
        } else {
            self.view.remove(to);
            self.move_tree(from, to);
        }
        Ok(Outcome::Done)
    }

    /// The expected snapshot of every name (see `runner::Snapshot`).
    pub fn render(&self) -> BTreeMap<String, String> {
        self.view
            .iter()
            .map(|(p, o)| (p.clone(), self.describe(o)))
            .collect()
    }

    fn describe(&self, o: &VObj) -> String {
        let i = &self.inodes[&o.id];
        let data = String::from_utf8_lossy(&i.data);
        let mode = match o.kind {
            Kind::Symlink => 0o777,
            _ => i.mode,
        };
        let xattrs: Vec<String> = i
            .xattrs
            .iter()
            .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
            .collect();
        match o.kind {
            Kind::Dir => format!("d {mode:o} {xattrs:?}"),
            Kind::File => format!("f {mode:o} {} {data:?} {xattrs:?}", i.data.len()),
            Kind::Symlink => format!("l {mode:o} {data:?} {xattrs:?}"),
        }
    }
}

fn inode_of(e: &Entry, upper: bool) -> Inode {
    let (data, mode, xattr) = match e {
        Entry::File { data, mode, xattr } => (data.as_bytes().to_vec(), *mode, *xattr),
        Entry::Dir { mode, xattr, .. } => (Vec::new(), *mode, *xattr),
        Entry::Symlink(t) => (t.as_bytes().to_vec(), 0o777, None),
        // An xattr whiteout the union shows as a file (its directory is not `opaque=x`).
        _ => (Vec::new(), 0o644, None),
    };
    let xattrs = xattr
        .map(|(k, v)| {
            (
                XATTR_KEYS[k].to_string(),
                xattr_value(v).as_bytes().to_vec(),
            )
        })
        .into_iter()
        .collect();
    Inode {
        data,
        mode,
        xattrs,
        upper,
    }
}
