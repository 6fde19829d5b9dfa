//! The union engine: every filesystem operation of the merged view, FUSE-free.
//!
//! Operations take node ids and single names, return `Result<T, Errno>`, and are documented
//! like man pages (Errors: ...). They are grouped by job: `resolve` (lookup, where a name lives),
//! `readdir` (merged listings), `copyup`, `create`, `remove`, `rename`, `attr` (stat, setattr,
//! xattrs), `file` (open handles and I/O); `inode` holds the inode-number policy.
//!
//! Concurrency: namespace changes (create, remove, rename, the placing of a copy-up) take `ns`
//! for writing; lookups, listings and anything acting on a node through its path take it for
//! reading, so none sees a half-done change. The data copy of a copy-up is staged before the
//! lock is taken, and reads and writes through open handles take no engine lock at all.

pub mod attr;
pub mod copyup;
pub mod create;
pub mod file;
pub mod inode;
pub mod readdir;
pub mod remove;
pub mod rename;
pub mod resolve;

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use parking_lot::RwLock;
use rustix::fs::Stat;

use crate::config::Config;
use crate::idmap::{self, IdPolicy};
use crate::layer::{Layer, LowerKeys, Upper};
use crate::node::handle::{DirHandle, FileHandle, Handles};
use crate::node::{Node, NodeTable};
use crate::sys::{self, Errno};
use inode::{InoPolicy, ROOT};

/// Who is asking: the caller's credentials, for ownership of new objects.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub umask: u32,
}

impl Ctx {
    /// The credentials of this process (for in-process use and tests).
    pub fn current() -> Ctx {
        Ctx {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            umask: 0o022,
        }
    }
}

/// The attributes of one union object: the backing stat with the union's inode number (and
/// the kernel's nlink convention for merged directories).
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    pub ino: u64,
    /// Changes when `ino` names a new object (see `NodeTable::upsert`).
    pub generation: u64,
    pub st: Stat,
}

/// A mounted union's engine.
pub struct Union {
    /// Index 0 is the upper when there is one; then the lowers, top first.
    layers: Vec<Layer>,
    upper: Option<Upper>,
    lower_keys: LowerKeys,
    nodes: NodeTable,
    inos: InoPolicy,
    files: Handles<FileHandle>,
    dirs: Handles<DirHandle>,
    ns: RwLock<()>,
    /// Nodes whose attributes changed as a side effect the kernel does not know of (an
    /// ancestor directory copied up became merged); the adapter has their cached attributes
    /// dropped.
    stale_attrs: parking_lot::Mutex<Vec<u64>>,
    /// `stale_attrs` may be non-empty: lets every reply check it without taking the lock.
    has_stale_attrs: std::sync::atomic::AtomicBool,
    /// `Config::volatile`: skip every sync of the upper.
    volatile: bool,
    /// How owners are shown and stored (`idmap`).
    ids: IdPolicy,
    /// Some layer root carries `override_stat`, so objects are checked for it (fuse-overlayfs
    /// enables it per layer the same way; here one marked layer enables it for the union, so
    /// an object keeps its overridden owner across copy-up into an unmarked upper).
    override_stat: bool,
    /// Our effective uid: `override_stat` is honoured only on objects we own, the ones
    /// containers/storage writes it on. Anyone may set a `user.*` xattr on a file of their
    /// own, so honouring it on a file of another user would let them show it as setuid root
    /// in a union root mounts (fuse-overlayfs honours it on every file).
    mounter_uid: u32,
}

impl Union {
    /// Opens the layers of `cfg` and the root of the union.
    ///
    /// Errors: whatever opening a layer or preparing the workdir gives (ENOENT, ENOTDIR, EACCES).
    pub fn new(cfg: &Config) -> Result<Union, Errno> {
        let upper = match (&cfg.upper, &cfg.workdir) {
            (Some(u), Some(w)) => Some(Upper::open(u, w, cfg.xattr_ns)?),
            (Some(_), None) => return Err(Errno::INVAL),
            _ => None,
        };
        let mut layers = Vec::new();
        if let Some(u) = &upper {
            layers.push(Layer::from_root(
                u.layer.path.clone(),
                rustix::io::dup(&u.layer.root)?,
            ));
        }
        for l in &cfg.lowers {
            let mut lower = Layer::open(l)?;
            // With caching off (timeout 0) the lowers may be edited under the mount.
            if !cfg.timeout.is_zero() {
                lower.cache_dirs();
            }
            layers.push(lower);
        }
        if layers.is_empty() {
            return Err(Errno::INVAL);
        }
        let mut override_stat = false;
        for l in &layers {
            override_stat |=
                sys::xattr::get_opt(l.root.as_fd(), None, idmap::OVERRIDE_STAT_XATTR)?.is_some();
        }
        let u = Union {
            layers,
            upper,
            lower_keys: LowerKeys::default(),
            nodes: NodeTable::default(),
            inos: InoPolicy::new(),
            files: Handles::default(),
            dirs: Handles::default(),
            ns: RwLock::new(()),
            stale_attrs: Default::default(),
            has_stale_attrs: Default::default(),
            volatile: cfg.volatile,
            ids: cfg.ids.clone(),
            override_stat,
            mounter_uid: rustix::process::geteuid().as_raw(),
        };
        let root = u.resolve_root()?;
        u.remember(root);
        Ok(u)
    }

    /// True when the union has no upper layer.
    pub fn is_read_only(&self) -> bool {
        self.upper.is_none()
    }

    /// Takes the nodes whose attributes changed behind the kernel's attribute cache.
    pub fn take_stale_attrs(&self) -> Vec<u64> {
        use std::sync::atomic::Ordering;
        if !self.has_stale_attrs.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *self.stale_attrs.lock())
    }

    /// Number of nodes the engine holds (kernel references not yet forgotten).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    fn lower_start(&self) -> usize {
        usize::from(self.upper.is_some())
    }

    fn upper(&self) -> Result<&Upper, Errno> {
        self.upper.as_ref().ok_or(Errno::ROFS)
    }

    fn node(&self, ino: u64) -> Result<Node, Errno> {
        self.nodes.get(ino).ok_or(Errno::NOENT)
    }

    /// The directory holding `path` in layer `layer`, and the last component.
    fn open_parent<'p>(&self, layer: usize, path: &'p Path) -> Result<(OwnedFd, &'p OsStr), Errno> {
        let name = path.file_name().ok_or(Errno::INVAL)?;
        let dir = self.layers[layer].open_dir(path.parent().unwrap_or(Path::new("")))?;
        Ok((dir, name))
    }

    /// lstat of `path` in layer `layer` (the layer root itself for "").
    fn stat_in(&self, layer: usize, path: &Path) -> Result<Stat, Errno> {
        if path.as_os_str().is_empty() {
            return sys::path::fstat(self.layers[layer].root.as_fd());
        }
        let (dir, name) = self.open_parent(layer, path)?;
        sys::path::stat_at(dir.as_fd(), name)
    }

    /// Counts one kernel reference to the object `fresh` describes (a lookup or creation
    /// reply) and returns its node.
    fn remember(&self, fresh: Node) -> Node {
        self.nodes
            .upsert(fresh, |ino| self.files.find(|h| h.ino == ino).is_some())
    }

    /// Builds the attributes the union shows for `node` from the backing stat `st`.
    fn attr_from(&self, node: &Node, mut st: Stat) -> Attr {
        if let Some(o) = self.override_of(node, &st) {
            o.apply(&mut st);
        }
        self.ids.show(&mut st);
        st.st_ino = node.ino;
        if node.is_dir() && node.is_merged() {
            // Like the kernel: counting subdirectories of every layer is not worth it, and
            // nlink 1 tells find(1) and friends not to rely on it.
            st.st_nlink = 1;
        }
        Attr {
            ino: node.ino,
            generation: u64::from(node.generation),
            st,
        }
    }

    /// The root node, resolved from the layer roots.
    fn resolve_root(&self) -> Result<Node, Errno> {
        let mut node = Node {
            ino: ROOT,
            kind: rustix::fs::FileType::Directory,
            paths: crate::node::Paths::one(Path::new("")),
            upper: self.upper.is_some(),
            lowers: crate::node::Lowers::default(),
            lookups: 0,
            generation: 0,
        };
        // Like the kernel, an opaque marker on a layer root is ignored: the root always merges
        // every lower.
        for i in self.lower_start()..self.layers.len() {
            node.lowers.push(i);
            if crate::layer::dir_markers(self.layers[i].root.as_fd(), &self.lower_keys)?.xwhiteouts
            {
                node.lowers.mark_xwhiteouts(i);
            }
        }
        Ok(node)
    }
}
