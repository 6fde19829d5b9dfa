//! Layer stacks for tests of layer semantics: build layers from a compact text description,
//! open them in-process with the engine (or mount them through FUSE), and dump a tree, a layer
//! or the merged view, as sorted text that compares and diffs well.
//!
//! Description, one entry per line (paths relative to the layer root, parents made as needed):
//! ```text
//! f PATH [CONTENT]   regular file              d PATH            directory
//! l PATH TARGET      symlink                   h PATH EXISTING   hard link
//! p PATH             FIFO                      w PATH            kernel whiteout (char 0/0)
//! W PATH             AUFS whiteout `.wh.NAME`  m PATH OCTAL      chmod
//! o PATH             dir opaque by trusted.overlay.opaque=y
//! O PATH             dir opaque by a `.wh..wh..opq` file
//! U PATH             dir opaque by user.fuseoverlayfs.opaque=y
//! Y PATH             dir opaque by user.overlay.opaque=y (userxattr format)
//! x PATH KEY VALUE   set an xattr              u PATH UID:GID    lchown
//! X PATH             xattr whiteout: zero-size file with trusted.overlay.whiteout, its
//!                    directory marked trusted.overlay.opaque=x
//! F PATH SIZE        SIZE bytes of `pattern`
//! s PATH SIZE        sparse file: `pattern` data only in the 4 KiB block at SIZE/2 and in the
//!                    last 100 bytes, holes elsewhere
//! ```
//! `o`, `X` and `x trusted.*` need root (CAP_SYS_ADMIN); the rest works unprivileged on Linux
//! 5.8 and later. Dumps list one object per line, sorted by path: type, size and content (short
//! text) or a content hash, link target, device number, mode, owner and xattrs; directory
//! sizes and times are left out, as they differ between filesystems.
//!
//! ```
//! use unionmount::layout::{Layers, dump_union};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tmp = tempfile::tempdir()?;
//! // Two layers: the lower has a and b; the upper changes a and deletes b.
//! let layers = Layers::create(tmp.path(), &["f a lower\nf b lower\nd dir"], "f a upper\nw b")?;
//! let union = layers.union()?;
//! let merged = dump_union(&union)?;
//! let names: Vec<&str> = merged.lines().map(|l| l.split(' ').next().unwrap()).collect();
//! assert_eq!(names, ["a", "dir"]);
//! assert!(merged.starts_with("a f 5 \"upper\" "), "{merged}");
//! # Ok(())
//! # }
//! ```

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, OFlags};

use crate::config::{Config, MountOptions};
use crate::sys::Errno;
use crate::union::{Ctx, Union, inode::ROOT};

/// A layer stack on disk: lowers (top first), an upper and its workdir, all under one base
/// directory (`base/lower0`, `base/lower1`, ..., `base/upper`, `base/work`).
#[derive(Clone, Debug)]
pub struct Layers {
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl Layers {
    /// Builds one lower per description (top first) and an upper from `upper` under `base`,
    /// which must exist; the workdir is made empty.
    pub fn create(base: &Path, lowers: &[&str], upper: &str) -> io::Result<Layers> {
        let mut paths = Vec::new();
        for (i, desc) in lowers.iter().enumerate() {
            let p = base.join(format!("lower{i}"));
            fs::create_dir(&p)?;
            build(&p, desc)?;
            paths.push(p);
        }
        let up = base.join("upper");
        fs::create_dir(&up)?;
        build(&up, upper)?;
        let work = base.join("work");
        fs::create_dir(&work)?;
        Ok(Layers {
            lowers: paths,
            upper: up,
            work,
        })
    }

    /// The engine's configuration for this stack (kernel defaults: `trusted.overlay.*`).
    pub fn config(&self) -> Config {
        Config::new(
            self.lowers.clone(),
            Some(self.upper.clone()),
            Some(self.work.clone()),
        )
    }

    /// Opens the stack in-process with the engine.
    pub fn union(&self) -> Result<Union, Errno> {
        Union::new(&self.config())
    }

    /// Mounts the stack through FUSE at `mnt` in a background thread of this process;
    /// dropping the session unmounts (fuser's unmount is not lazy: close files first).
    /// Needs /dev/fuse, and root or fusermount3 for the options asked.
    pub fn mount(&self, mnt: &Path, opts: &MountOptions) -> io::Result<fuser::BackgroundSession> {
        let cfg = self.config();
        let union = Union::new(&cfg).map_err(io::Error::from)?;
        let adapter = crate::fuse::adapter::Adapter::new(union, &cfg);
        crate::fuse::session::spawn(adapter, mnt, opts)
    }
}

fn bad_line(line: &str, why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{line:?}: {why}"))
}

fn set_xattr(p: &Path, key: &str, value: &[u8]) -> io::Result<()> {
    rustix::fs::lsetxattr(p, key, value, rustix::fs::XattrFlags::empty()).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("setxattr {key} on {}: {e}", p.display()),
        )
    })
}

fn mknod(p: &Path, kind: FileType, mode: u32) -> io::Result<()> {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        kind,
        rustix::fs::Mode::from_raw_mode(mode),
        0,
    )
    .map_err(io::Error::from)
}

/// Builds the entries of the description `desc` under `root` (see the module docs).
///
/// Errors: an unknown operation or a malformed line (InvalidInput), and what the filesystem
/// gives (`o`, `X` and trusted xattrs need root).
pub fn build(root: &Path, desc: &str) -> io::Result<()> {
    for line in desc.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut it = line.splitn(3, ' ');
        let op = it.next().unwrap_or_default();
        let path = it.next().ok_or_else(|| bad_line(line, "no path"))?;
        let rest = it.next().unwrap_or("");
        let p = root.join(path);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        let number = |what: &str| rest.parse::<u64>().map_err(|_| bad_line(line, what));
        match op {
            "f" => fs::write(&p, rest)?,
            "d" => fs::create_dir_all(&p)?,
            "l" => std::os::unix::fs::symlink(rest, &p)?,
            "h" => fs::hard_link(root.join(rest), &p)?,
            "p" => mknod(&p, FileType::Fifo, 0o644)?,
            "w" => mknod(&p, FileType::CharacterDevice, 0)?,
            "W" => {
                let name = p.file_name().ok_or_else(|| bad_line(line, "no name"))?;
                fs::write(
                    p.with_file_name(crate::format::aufs_whiteout_name(name)),
                    "",
                )?;
            }
            "o" | "U" | "Y" => {
                fs::create_dir_all(&p)?;
                let key = match op {
                    "o" => "trusted.overlay.opaque",
                    "U" => crate::format::FUSE_OVERLAYFS_OPAQUE,
                    _ => "user.overlay.opaque",
                };
                set_xattr(&p, key, b"y")?;
            }
            "O" => {
                fs::create_dir_all(&p)?;
                fs::write(p.join(crate::format::OPAQUE_MARKER), "")?;
            }
            "u" => {
                let (uid, gid) = rest
                    .split_once(':')
                    .ok_or_else(|| bad_line(line, "expected u PATH UID:GID"))?;
                std::os::unix::fs::lchown(&p, uid.parse().ok(), gid.parse().ok())?;
            }
            "s" => {
                use std::os::unix::fs::FileExt;
                let size = number("expected s PATH SIZE")?;
                let f = fs::File::create(&p)?;
                f.set_len(size)?;
                let block = pattern(path, 4096.min(size as usize));
                f.write_all_at(&block, (size / 2) & !4095)?;
                let tail = pattern(path, 100.min(size as usize));
                f.write_all_at(&tail, size - tail.len() as u64)?;
            }
            "F" => fs::write(&p, pattern(path, number("expected F PATH SIZE")? as usize))?,
            "X" => {
                fs::write(&p, "")?;
                set_xattr(&p, "trusted.overlay.whiteout", b"")?;
                let parent = p.parent().ok_or_else(|| bad_line(line, "no parent"))?;
                set_xattr(parent, "trusted.overlay.opaque", b"x")?;
            }
            "x" => {
                let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
                set_xattr(&p, k, v.as_bytes())?;
            }
            "m" => {
                let mode =
                    u32::from_str_radix(rest, 8).map_err(|_| bad_line(line, "expected OCTAL"))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
            }
            _ => return Err(bad_line(line, "unknown operation")),
        }
    }
    Ok(())
}

/// `len` bytes of content that differ from file to file (seeded by `seed`) and from block to
/// block, so that a misplaced or partial copy shows in the content hash.
pub fn pattern(seed: &str, len: usize) -> Vec<u8> {
    let mut h = fnv(seed.as_bytes());
    (0..len)
        .map(|i| {
            if i % 8 == 0 {
                h = h.rotate_left(5) ^ (i as u64 / 4096);
            }
            (h >> (8 * (i % 8))) as u8
        })
        .collect()
}

/// The description `desc` in the kernel's own marker formats: AUFS whiteouts (`W`) become
/// char 0/0 whiteouts; `.wh..wh..opq` (`O`), `user.fuseoverlayfs.opaque` (`U`) and
/// `user.overlay.opaque` (`Y`) opaque directories become `trusted.overlay.opaque=y`.
pub fn kernel_format(desc: &str) -> String {
    desc.lines()
        .map(|line| match line.trim().split_once(' ') {
            Some(("W", path)) => format!("w {path}"),
            Some(("O" | "U" | "Y", path)) => format!("o {path}"),
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// All xattrs of `p` as `key=value` (sorted), private ones included: dumps compare layers.
/// SELinux labels are left out (they depend on the host).
pub fn xattrs(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut buf[..]).unwrap_or(0);
    let keys = buf[..n]
        .split(|&b| b == 0)
        .filter(|k| !k.is_empty())
        .map(|k| String::from_utf8_lossy(k).into_owned());
    format_xattrs(keys, |k| {
        let mut v = vec![0u8; 65536];
        let m = rustix::fs::lgetxattr(p, k, &mut v[..]).unwrap_or(0);
        v.truncate(m);
        v
    })
}

fn format_xattrs(
    keys: impl Iterator<Item = String>,
    mut value: impl FnMut(&str) -> Vec<u8>,
) -> Vec<String> {
    let mut out: Vec<String> = keys
        .filter(|k| !k.starts_with("security.selinux"))
        .map(|k| {
            let v = value(&k);
            format!("{k}={}", String::from_utf8_lossy(&v))
        })
        .collect();
    out.sort();
    out
}

/// How one object shows in a dump, without its path.
enum Shown {
    Dir,
    Symlink(Vec<u8>),
    File(Vec<u8>),
    Char(u64),
    Block(u64),
    Fifo,
    Socket,
}

fn line(rel: &str, what: Shown, mode: u32, uid: u32, gid: u32, xattrs: &[String]) -> String {
    let what = match what {
        Shown::Dir => "d".to_string(),
        Shown::Symlink(t) => format!("l -> {}", Path::new(OsStr::from_bytes(&t)).display()),
        Shown::File(data) => {
            if data.len() <= 64
                && data
                    .iter()
                    .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\n')
            {
                format!("f {} {:?}", data.len(), String::from_utf8_lossy(&data))
            } else {
                format!("f {} #{:016x}", data.len(), fnv(&data))
            }
        }
        Shown::Char(dev) => format!("c {dev}"),
        Shown::Block(dev) => format!("b {dev}"),
        Shown::Fifo => "p".to_string(),
        Shown::Socket => "s".to_string(),
    };
    format!("{rel} {what} {:o} {uid}:{gid} {xattrs:?}", mode & 0o7777)
}

/// A text dump of the tree under `root` (a layer, or a mountpoint): one sorted line per
/// object. Unreadable entries are dumped as far as they can be read.
pub fn dump(root: &Path) -> String {
    let mut lines = Vec::new();
    walk(root, root, &mut lines);
    lines.sort();
    lines.join("\n")
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
        let Ok(md) = fs::symlink_metadata(&p) else {
            out.push(format!("{rel} ?"));
            continue;
        };
        let ft = md.file_type();
        let what = {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_dir() {
                Shown::Dir
            } else if ft.is_symlink() {
                Shown::Symlink(
                    fs::read_link(&p)
                        .unwrap_or_default()
                        .into_os_string()
                        .into_vec(),
                )
            } else if ft.is_file() {
                Shown::File(fs::read(&p).unwrap_or_default())
            } else if ft.is_char_device() {
                Shown::Char(md.rdev())
            } else if ft.is_fifo() {
                Shown::Fifo
            } else if ft.is_socket() {
                Shown::Socket
            } else {
                Shown::Block(md.rdev())
            }
        };
        out.push(line(&rel, what, md.mode(), md.uid(), md.gid(), &xattrs(&p)));
        if ft.is_dir() {
            walk(root, &p, out);
        }
    }
}

/// The merged view of `union` as text, read through the engine in-process, in the same format
/// as [`dump`] of a mount of it (private overlay xattrs are not visible there either).
///
/// Errors: what the engine gives for a lookup, listing or read.
pub fn dump_union(union: &Union) -> Result<String, Errno> {
    let mut lines = Vec::new();
    walk_union(union, ROOT, "", &mut lines)?;
    lines.sort();
    Ok(lines.join("\n"))
}

fn walk_union(u: &Union, dir: u64, prefix: &str, out: &mut Vec<String>) -> Result<(), Errno> {
    let fh = u.opendir(dir)?;
    let listed = u.readdir(fh, 0);
    u.releasedir(fh);
    for e in listed?.iter().filter(|e| e.name != "." && e.name != "..") {
        let attr = u.lookup(dir, &e.name)?;
        let rel = format!("{prefix}{}", Path::new(&e.name).display());
        let st = attr.st;
        let shown = match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => Shown::Dir,
            FileType::Symlink => Shown::Symlink(u.readlink(attr.ino)?),
            FileType::RegularFile => Shown::File(read_all(u, attr.ino)?),
            FileType::CharacterDevice => Shown::Char(st.st_rdev),
            FileType::BlockDevice => Shown::Block(st.st_rdev),
            FileType::Fifo => Shown::Fifo,
            _ => Shown::Socket,
        };
        let keys = u.listxattr(attr.ino)?.into_iter();
        let xattrs = format_xattrs(keys, |k| {
            u.getxattr(attr.ino, OsStr::new(k)).unwrap_or_default()
        });
        out.push(line(&rel, shown, st.st_mode, st.st_uid, st.st_gid, &xattrs));
        let r = match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => walk_union(u, attr.ino, &format!("{rel}/"), out),
            _ => Ok(()),
        };
        // The kernel would forget what it looked up; so does the dump, keeping the table small.
        u.forget(attr.ino, 1);
        r?;
    }
    Ok(())
}

fn read_all(u: &Union, ino: u64) -> Result<Vec<u8>, Errno> {
    let fh = u.open(&Ctx::current(), ino, OFlags::RDONLY)?;
    let mut data = Vec::new();
    let r = loop {
        match u.read(fh, data.len() as u64, 1 << 20) {
            Ok(chunk) if chunk.is_empty() => break Ok(()),
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(e) => break Err(e),
        }
    };
    u.release(fh);
    r.map(|()| data)
}

/// FNV-1a: a content hash for dumps.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}
