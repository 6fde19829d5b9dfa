//! Fixtures: layer trees built from a compact text form, and a text dump of any tree.
//!
//! Layer description, one entry per line (paths relative to the layer root, parents made as
//! needed):
//!   `f PATH [CONTENT]`   regular file        `d PATH`            directory
//!   `l PATH TARGET`      symlink             `h PATH EXISTING`   hard link
//!   `p PATH`             FIFO                `w PATH`            kernel whiteout (char 0/0)
//!   `W PATH`             AUFS whiteout `.wh.NAME`
//!   `o PATH`             directory opaque by `trusted.overlay.opaque=y`
//!   `O PATH`             directory opaque by a `.wh..wh..opq` file
//!   `x PATH KEY VALUE`   set an xattr        `m PATH OCTAL`      chmod
//!   `X PATH`             xattr whiteout: zero-size file with `trusted.overlay.whiteout`, and
//!                        its directory marked `trusted.overlay.opaque=x`
//!   `U PATH`             directory opaque by `user.fuseoverlayfs.opaque=y`
//!   `Y PATH`             directory opaque by `user.overlay.opaque=y` (userxattr format)
//!   `u PATH UID:GID`     lchown              `F PATH SIZE`       SIZE bytes of `pattern`
//!   `s PATH SIZE`        sparse file of SIZE bytes: `pattern` data only in the 4 KiB block at
//!                        SIZE/2 and in the last 100 bytes, holes elsewhere
//!
//! `W`, `O`, `U` and `Y` are formats kernel overlayfs does not read; `kernel_format` translates a
//! description into the kernel's own formats with the same meaning.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use unionmount::config::Config;

/// A temporary layer stack: lowers (top first), an upper, a workdir and a mountpoint.
pub struct Stack {
    pub tmp: tempfile::TempDir,
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
}

impl Stack {
    /// Builds one lower per description, top first, and an empty upper.
    pub fn new(lowers: &[&str]) -> Stack {
        Self::with_upper(lowers, "")
    }

    /// Like `new`, with an upper built from `upper`.
    pub fn with_upper(lowers: &[&str], upper: &str) -> Stack {
        let tmp = tempfile::Builder::new()
            .prefix("um-test")
            .tempdir_in(test_root())
            .unwrap();
        let mut paths = Vec::new();
        for (i, desc) in lowers.iter().enumerate() {
            let p = tmp.path().join(format!("lower{i}"));
            fs::create_dir(&p).unwrap();
            build(&p, desc);
            paths.push(p);
        }
        let up = tmp.path().join("upper");
        fs::create_dir(&up).unwrap();
        build(&up, upper);
        let work = tmp.path().join("work");
        fs::create_dir(&work).unwrap();
        let mnt = tmp.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        Stack {
            tmp,
            lowers: paths,
            upper: up,
            work,
            mnt,
        }
    }

    pub fn config(&self) -> Config {
        Config::new(
            self.lowers.clone(),
            Some(self.upper.clone()),
            Some(self.work.clone()),
        )
    }

    pub fn union(&self) -> unionmount::union::Union {
        unionmount::union::Union::new(&self.config()).expect("union over the fixture")
    }

    /// Dump of every lower, to check they were never modified.
    pub fn lowers_dump(&self) -> Vec<String> {
        self.lowers.iter().map(|l| dump(l)).collect()
    }
}

/// Where test trees live: a directory on the same filesystem for every test (not tmpfs-only
/// features), overridable with UNIONMOUNT_TEST_DIR.
pub fn test_root() -> PathBuf {
    let p = std::env::var_os("UNIONMOUNT_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    fs::create_dir_all(&p).unwrap();
    p
}

fn set_xattr(p: &Path, key: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, key, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {key} on {}: {e}", p.display()));
}

/// Builds the entries of `desc` under `root`.
pub fn build(root: &Path, desc: &str) {
    for line in desc.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut it = line.splitn(3, ' ');
        let (op, path) = (it.next().unwrap(), it.next().expect("path"));
        let rest = it.next().unwrap_or("");
        let p = root.join(path);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        match op {
            "f" => fs::write(&p, rest).unwrap(),
            "d" => fs::create_dir_all(&p).unwrap(),
            "l" => std::os::unix::fs::symlink(rest, &p).unwrap(),
            "h" => fs::hard_link(root.join(rest), &p).unwrap(),
            "p" => rustix::fs::mknodat(
                rustix::fs::CWD,
                &p,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o644),
                0,
            )
            .unwrap(),
            "w" => rustix::fs::mknodat(
                rustix::fs::CWD,
                &p,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                0,
            )
            .unwrap(),
            "W" => {
                let name = p.file_name().unwrap().to_str().unwrap().to_string();
                fs::write(p.with_file_name(format!(".wh.{name}")), "").unwrap();
            }
            "o" => {
                fs::create_dir_all(&p).unwrap();
                set_xattr(&p, "trusted.overlay.opaque", b"y");
            }
            "O" => {
                fs::create_dir_all(&p).unwrap();
                fs::write(p.join(".wh..wh..opq"), "").unwrap();
            }
            "U" | "Y" => {
                fs::create_dir_all(&p).unwrap();
                let key = if op == "U" {
                    "user.fuseoverlayfs.opaque"
                } else {
                    "user.overlay.opaque"
                };
                set_xattr(&p, key, b"y");
            }
            "u" => {
                let (uid, gid) = rest.split_once(':').expect("u PATH UID:GID");
                std::os::unix::fs::lchown(&p, uid.parse().ok(), gid.parse().ok()).unwrap();
            }
            "s" => {
                use std::os::unix::fs::FileExt;
                let size: u64 = rest.parse().expect("s PATH SIZE");
                let f = fs::File::create(&p).unwrap();
                f.set_len(size).unwrap();
                let block = pattern(path, 4096.min(size as usize));
                f.write_all_at(&block, (size / 2) & !4095).unwrap();
                let tail = pattern(path, 100.min(size as usize));
                f.write_all_at(&tail, size - tail.len() as u64).unwrap();
            }
            "F" => fs::write(&p, pattern(path, rest.parse().expect("F PATH SIZE"))).unwrap(),
            "X" => {
                fs::write(&p, "").unwrap();
                set_xattr(&p, "trusted.overlay.whiteout", b"");
                set_xattr(p.parent().unwrap(), "trusted.overlay.opaque", b"x");
            }
            "x" => {
                let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
                set_xattr(&p, k, v.as_bytes());
            }
            "m" => fs::set_permissions(
                &p,
                fs::Permissions::from_mode(u32::from_str_radix(rest, 8).unwrap()),
            )
            .unwrap(),
            other => panic!("unknown fixture op {other:?} in {line:?}"),
        }
    }
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
/// char 0/0 whiteouts, `.wh..wh..opq` (`O`), `user.fuseoverlayfs.opaque` (`U`) and
/// `user.overlay.opaque` (`Y`) opaque directories become `trusted.overlay.opaque=y`. Everything else is kept.
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
pub fn xattrs(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut buf[..]).unwrap_or(0);
    let mut out: Vec<String> = buf[..n]
        .split(|&b| b == 0)
        .filter(|k| !k.is_empty())
        .map(|k| {
            let k = String::from_utf8_lossy(k).into_owned();
            let mut v = vec![0u8; 65536];
            let m = rustix::fs::lgetxattr(p, k.as_str(), &mut v[..]).unwrap_or(0);
            format!("{k}={}", String::from_utf8_lossy(&v[..m]))
        })
        .filter(|kv| !kv.starts_with("security.selinux"))
        .collect();
    out.sort();
    out
}

/// A text dump of the tree under `root`: one sorted line per object with its type, mode,
/// owner, size, content (short files) or hash, link target, device number and xattrs.
/// Directory sizes and times are left out (they differ between filesystems).
pub fn dump(root: &Path) -> String {
    let mut lines = Vec::new();
    walk(root, root, &mut lines);
    lines.sort();
    lines.join("\n")
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd {
        let e = e.unwrap();
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let ft = md.file_type();
        let mode = md.mode() & 0o7777;
        let what = if ft.is_dir() {
            "d".to_string()
        } else if ft.is_symlink() {
            format!("l -> {}", fs::read_link(&p).unwrap().display())
        } else if ft.is_file() {
            let data = fs::read(&p).unwrap_or_default();
            if data.len() <= 64
                && data
                    .iter()
                    .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\n')
            {
                format!("f {} {:?}", data.len(), String::from_utf8_lossy(&data))
            } else {
                format!("f {} #{:016x}", data.len(), fnv(&data))
            }
        } else {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_char_device() {
                format!("c {}", md.rdev())
            } else if ft.is_fifo() {
                "p".to_string()
            } else if ft.is_socket() {
                "s".to_string()
            } else {
                format!("b {}", md.rdev())
            }
        };
        out.push(format!(
            "{rel} {what} {mode:o} {}:{} {:?}",
            md.uid(),
            md.gid(),
            xattrs(&p)
        ));
        if ft.is_dir() {
            walk(root, &p, out);
        }
    }
}

/// FNV-1a: a content hash for dumps and results.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}
