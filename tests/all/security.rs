//! Security: what no request may achieve, in-process where it is the engine's job and through
//! a real mount where the kernel takes part, with kernel overlayfs as the oracle for errnos.
//!
//! Invariants: nothing outside the layer roots is ever read, written, created or has its
//! attributes changed, whatever symlinks the layers hold and whatever is renamed or replaced
//! in the layers behind the union's back (a canary tree outside the roots is compared before
//! and after); private overlay xattrs are never listed, read, set or removed through the
//! union (`trusted.overlay.*`, and `user.overlay.*` with `-o userxattr`); no `.wh.*` name can
//! be made through the union (unionmount reads AUFS whiteouts, so such a name would hide a
//! lower object: EINVAL, where kernel overlayfs, which ignores AUFS markers, allows it); an
//! unprivileged user gains no setuid/setgid bit or file capability through copy-up, cannot
//! change a root file's mode or owner, and with `allow_other,default_permissions` cannot read,
//! list or write what the mode bits deny.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rustix::fs::OFlags;
use rustix::io::Errno;
use unionmount::union::attr::{SetAttr, SetTime};
use unionmount::union::inode::ROOT;
use unionmount::union::{Ctx, Union};

use crate::fixture::{Stack, build, dump};
use crate::mounted::{KernelMount, UnionMount, fuse_available, overlay_available};

mod privileges;

const CANARY: &str = "canary secret";

/// A tree outside the layer roots (next to them) that nothing may touch: a canary file, a
/// directory, and what their dump looks like now.
struct Outside {
    dir: PathBuf,
    before: String,
}

impl Outside {
    fn new(stack: &Stack) -> Outside {
        let dir = stack.tmp.path().join("outside");
        fs::create_dir(&dir).unwrap();
        build(
            &dir,
            &format!("f canary {CANARY}\nm canary 600\nd sub\nf sub/file x"),
        );
        Outside {
            before: dump(&dir),
            dir,
        }
    }

    fn canary(&self) -> PathBuf {
        self.dir.join("canary")
    }

    /// Fails if anything outside changed (contents, modes, owners, xattrs, new names).
    fn assert_untouched(&self) {
        assert_eq!(
            dump(&self.dir),
            self.before,
            "something outside the layer roots changed"
        );
    }
}

/// Replaces `path` (in a layer, behind the union's back) by a symlink to `target`.
fn replace_by_symlink(path: &Path, target: &Path) {
    let aside = path.with_extension("aside");
    fs::rename(path, &aside).unwrap();
    std::os::unix::fs::symlink(target, path).unwrap();
}

fn lookup(u: &Union, path: &str) -> u64 {
    let mut cur = ROOT;
    for c in path.split('/') {
        cur = u
            .lookup(cur, OsStr::new(c))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .ino;
    }
    cur
}

/// Every operation on a node, its result ignored: only what it does outside matters. Data read
/// must never be the canary's.
fn poke(u: &Union, ino: u64) {
    let ctx = Ctx::current();
    let sets = [
        SetAttr {
            mode: Some(0o666),
            ..Default::default()
        },
        SetAttr {
            uid: Some(65534),
            gid: Some(65534),
            ..Default::default()
        },
        SetAttr {
            size: Some(1),
            ..Default::default()
        },
        SetAttr {
            mtime: Some(SetTime::Now),
            ..Default::default()
        },
    ];
    for set in &sets {
        let _ = u.setattr(&ctx, ino, set);
    }
    let _ = u.setxattr(ino, OsStr::new("user.evil"), b"1", 0);
    let _ = u.removexattr(ino, OsStr::new("user.evil"));
    let _ = u.getxattr(ino, OsStr::new("user.evil"));
    let _ = u.listxattr(ino);
    let _ = u.readlink(ino);
    let _ = u.getattr(ino);
    for flags in [OFlags::RDONLY, OFlags::WRONLY | OFlags::TRUNC, OFlags::RDWR] {
        if let Ok(fh) = u.open(&ctx, ino, flags) {
            if let Ok(data) = u.read(fh, 0, 4096) {
                assert!(!data.starts_with(CANARY.as_bytes()), "read the canary");
            }
            let _ = u.write(fh, 0, b"pwned");
            u.release(fh);
        }
    }
    // As a directory: look up, list, create, remove, rename inside it.
    let _ = u.lookup(ino, OsStr::new("canary"));
    if let Ok(fh) = u.opendir(ino) {
        if let Ok(list) = u.readdir(fh, 0) {
            assert!(
                !list.iter().any(|e| e.name == "canary"),
                "listed the canary"
            );
        }
        u.releasedir(fh);
    }
    if let Ok((_, fh)) = u.create(&ctx, ino, OsStr::new("planted"), 0o644, OFlags::WRONLY) {
        u.release(fh);
    }
    let _ = u.mkdir(&ctx, ino, OsStr::new("planted-dir"), 0o755);
    let _ = u.symlink(&ctx, ino, OsStr::new("planted-link"), OsStr::new("x"));
    let _ = u.rename(
        &ctx,
        ino,
        OsStr::new("sub"),
        ino,
        OsStr::new("moved"),
        Default::default(),
    );
    let _ = u.unlink(&ctx, ino, OsStr::new("canary"));
    let _ = u.rmdir(&ctx, ino, OsStr::new("sub"));
    let _ = u.link(ino, ROOT, OsStr::new("linked"));
}

/// Nodes looked up, then their objects (upper and lower, files and directories) replaced by
/// symlinks to the outside behind the union's back: no operation on the stale nodes reaches
/// the outside, absolute or relative link.
#[test]
fn stale_nodes_replaced_by_symlinks_never_reach_outside() {
    let s = Stack::with_upper(
        &["d d\nf d/f low\nf lf low\nd rel\nf rel/f low"],
        "f g up\nd u\nf u/h up\nf uf up",
    );
    let out = Outside::new(&s);
    let u = s.union();
    let names = ["d", "d/f", "lf", "rel", "rel/f", "g", "u", "u/h", "uf"];
    let inos: Vec<u64> = names.iter().map(|n| lookup(&u, n)).collect();
    let lower = &s.lowers[0];
    replace_by_symlink(&lower.join("d"), &out.dir);
    replace_by_symlink(&lower.join("lf"), &out.canary());
    replace_by_symlink(&lower.join("rel"), Path::new("../outside"));
    replace_by_symlink(&s.upper.join("g"), &out.canary());
    replace_by_symlink(&s.upper.join("u"), &out.dir);
    replace_by_symlink(&s.upper.join("uf"), Path::new("../outside/canary"));
    for (name, &ino) in names.iter().zip(&inos) {
        poke(&u, ino);
        out.assert_untouched();
        let _ = name;
    }
    // Fresh lookups through the symlinks give symlinks, never the outside objects.
    for name in ["d", "u", "rel"] {
        let _ = u.lookup(ROOT, OsStr::new(name)).map(|a| poke(&u, a.ino));
        assert!(
            u.lookup(lookup(&u, name), OsStr::new("canary")).is_err(),
            "{name}/canary resolved through a symlink"
        );
    }
    out.assert_untouched();
}

pub use crate::script::AsUser;

pub const NOBODY: u32 = 65534;

/// Lets other users reach the mount and the layers (tempdirs are 0700).
pub fn open_up(s: &Stack) {
    fs::set_permissions(s.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
}

/// Through a real mount, while one thread renames and swaps directories of the upper behind
/// the union's back (a directory replaced by a symlink to the outside, and back) and through
/// the mount, another (nobody, owner of everything in the union) looks up deep paths and
/// changes what it finds. The union then shows a symlink to the outside at times, which the
/// caller's own resolution follows; as nobody that reaches nothing it may change or read. So
/// any change outside, or the canary's content read, would be the daemon's doing.
#[test]
fn renames_racing_lookups_never_reach_outside() {
    if !fuse_available() {
        return;
    }
    let s = Stack::with_upper(
        &["d a/b/c\nf a/b/c/f low"],
        "d x/y/z\nf x/y/z/f up\nf x/y/g up\nm x/y/z/f 666\nm x/y/g 666",
    );
    open_up(&s);
    for p in ["x", "x/y", "x/y/z", "x/y/z/f", "x/y/g"] {
        let p = s.upper.join(p);
        rustix::fs::chown(
            &p,
            Some(rustix::process::Uid::from_raw(NOBODY)),
            Some(rustix::process::Gid::from_raw(NOBODY)),
        )
        .unwrap();
    }
    let out = Outside::new(&s);
    let m = UnionMount::mount(s);
    let upper = m.stack.upper.clone();
    let stop = AtomicBool::new(false);
    let end = Instant::now() + Duration::from_secs(3);
    let mut swaps = 0u64;
    let mut ops = 0u64;
    thread::scope(|sc| {
        sc.spawn(|| {
            // Behind the back: x/y moves away and a symlink to the outside takes its place.
            while Instant::now() < end {
                let (y, aside) = (upper.join("x/y"), upper.join("x/y.aside"));
                if fs::rename(&y, &aside).is_ok() {
                    let _ = std::os::unix::fs::symlink(&out.dir, &y);
                    thread::yield_now();
                    let _ = fs::remove_file(&y);
                    let _ = fs::rename(&aside, &y);
                }
                // And a file swapped for a symlink to the canary.
                let (g, g_aside) = (upper.join("x/y/g"), upper.join("x/y/g.aside"));
                if fs::rename(&g, &g_aside).is_ok() {
                    let _ = std::os::unix::fs::symlink(out.canary(), &g);
                    thread::sleep(Duration::from_millis(1));
                    let _ = fs::remove_file(&g);
                    let _ = fs::rename(&g_aside, &g);
                }
                // Through the mount: a directory tree renamed back and forth.
                let _ = fs::rename(m.path("x/y"), m.path("x/w"));
                let _ = fs::rename(m.path("x/w"), m.path("x/y"));
                swaps += 1;
            }
            stop.store(true, Ordering::Relaxed);
        });
        let _nobody = AsUser::new(NOBODY, NOBODY);
        while !stop.load(Ordering::Relaxed) {
            for p in ["x/y/z/f", "x/y/g", "x/y/canary", "x/y/sub/file", "x/w/z/f"] {
                let p = m.path(p);
                let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o666));
                let _ = rustix::fs::chown(&p, Some(rustix::process::Uid::from_raw(65534)), None);
                let _ = fs::OpenOptions::new().append(true).open(&p).map(|mut f| {
                    use std::io::Write;
                    let _ = f.write_all(b"pwned");
                });
                let _ =
                    rustix::fs::setxattr(&p, "user.evil", b"1", rustix::fs::XattrFlags::empty());
                if let Ok(data) = fs::read(&p) {
                    assert!(!data.starts_with(CANARY.as_bytes()), "read the canary");
                }
                ops += 1;
            }
            let _ = fs::write(m.path("x/y/planted"), "x");
            let _ = fs::create_dir(m.path("x/y/planted-dir"));
            let _ = fs::remove_file(m.path("x/y/planted"));
            let _ = fs::remove_dir(m.path("x/y/planted-dir"));
        }
    });
    eprintln!("{swaps} swaps against {ops} path operations");
    out.assert_untouched();
}

/// The errno of an xattr call, or "ok" (with the value or the names when it succeeded).
pub fn xattr_outcome<T: std::fmt::Debug>(r: Result<T, Errno>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => format!("errno {}", e.raw_os_error()),
    }
}

/// Every way of reaching private xattrs through a mounted union at `root`: listing, getting,
/// setting and removing them on an opaque directory (upper and lower), a file with a private
/// key and a plain file.
fn private_xattr_probe(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for p in ["uo", "lo", "lo/f", "f", "plain"] {
        let path = root.join(p);
        let mut buf = vec![0u8; 4096];
        let names = rustix::fs::llistxattr(&path, &mut buf[..]).map(|n| {
            let mut v: Vec<String> = buf[..n]
                .split(|&b| b == 0)
                .filter(|k| !k.is_empty())
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .filter(|k| !k.starts_with("security."))
                .collect();
            v.sort();
            v
        });
        out.push(format!("{p} list {}", xattr_outcome(names)));
        for key in [
            "trusted.overlay.opaque",
            "trusted.overlay.redirect",
            "trusted.overlay.x",
        ] {
            let mut v = [0u8; 256];
            let got = rustix::fs::lgetxattr(&path, key, &mut v[..]).map(|n| v[..n].to_vec());
            out.push(format!("{p} get {key} {}", xattr_outcome(got)));
            let set = rustix::fs::lsetxattr(&path, key, b"y", rustix::fs::XattrFlags::empty());
            out.push(format!("{p} set {key} {}", xattr_outcome(set)));
            let rm = rustix::fs::lremovexattr(&path, key);
            out.push(format!("{p} remove {key} {}", xattr_outcome(rm)));
        }
    }
    out
}

const XATTR_LOWER: &str = "o lo\nf lo/f in\nf f file\nx f trusted.overlay.x v\nf plain p";
const XATTR_UPPER: &str = "o uo\nf uo/g g";

/// Private overlay xattrs are never shown, readable, settable or removable through the mount,
/// and the real markers in the upper stay as they were. Listing and getting match kernel
/// overlayfs. Named difference: setting or removing `trusted.overlay.*` succeeds on the kernel
/// (since 6.7 it escapes them, stored as `trusted.overlay.overlay.*`, for nested overlays)
/// while unionmount, which does not nest, refuses with EPERM.
#[test]
fn private_xattrs_are_invisible_and_untouchable() {
    if !overlay_available() {
        return;
    }
    let mut k = KernelMount::mount(Stack::with_upper(&[XATTR_LOWER], XATTR_UPPER));
    let kernel = private_xattr_probe(k.mnt());
    k.unmount();
    let mut m = UnionMount::mount(Stack::with_upper(&[XATTR_LOWER], XATTR_UPPER));
    let union = private_xattr_probe(m.mnt());
    m.unmount();
    for (u, k) in union.iter().zip(&kernel) {
        if u.contains(" set ") || u.contains(" remove ") {
            assert!(u.ends_with("errno 1"), "not refused with EPERM: {u}");
        } else {
            assert!(
                !(u.contains(" list ") && u.contains("overlay.")),
                "a private xattr was listed: {u}"
            );
            assert_eq!(u, k, "unionmount and kernel overlayfs differ");
        }
    }
    for s in [&k.stack, &m.stack] {
        let marks = crate::fixture::xattrs(&s.upper.join("uo"));
        assert!(
            marks.contains(&"trusted.overlay.opaque=y".to_string()),
            "the upper's opaque marker changed: {marks:?}"
        );
    }
    assert_eq!(dump(&m.stack.lowers[0]), dump(&k.stack.lowers[0]));
}

/// With `-o userxattr` the markers are `user.overlay.*`: on the engine, an opaque directory's
/// and a file's private keys are not listed, read, set or removed, and the directory stays
/// opaque. (unionmount hides `user.overlay.*` in both modes, as fuse-overlayfs does; kernel
/// overlayfs without userxattr shows them as ordinary user xattrs.)
#[test]
fn userxattr_private_xattrs_are_invisible_and_untouchable() {
    let s = Stack::with_upper(
        &["d lo\nf lo/hidden h\nf f x\nx f user.overlay.x v\nx f user.plain p"],
        "d uo\nx uo user.overlay.opaque y",
    );
    // The upper's marker hides the lower's `lo` content only once `uo` is opaque; use it.
    fs::rename(s.upper.join("uo"), s.upper.join("lo")).unwrap();
    let mut cfg = s.config();
    cfg.xattr_ns = unionmount::config::XattrNamespace::User;
    let u = Union::new(&cfg).unwrap();
    let (lo, f) = (lookup(&u, "lo"), lookup(&u, "f"));
    assert!(
        u.lookup(lo, OsStr::new("hidden")).is_err(),
        "the opaque marker was not honoured"
    );
    assert_eq!(u.listxattr(lo).unwrap(), Vec::<String>::new());
    assert_eq!(u.listxattr(f).unwrap(), ["user.plain"]);
    for (ino, key) in [
        (lo, "user.overlay.opaque"),
        (f, "user.overlay.x"),
        (f, "user.overlay.new"),
    ] {
        let key = OsStr::new(key);
        assert!(matches!(u.getxattr(ino, key), Err(Errno::NODATA)));
        assert_eq!(u.setxattr(ino, key, b"n", 0), Err(Errno::PERM));
        assert_eq!(u.removexattr(ino, key), Err(Errno::PERM));
    }
    let marks = crate::fixture::xattrs(&s.upper.join("lo"));
    assert!(
        marks.contains(&"user.overlay.opaque=y".to_string()),
        "{marks:?}"
    );
    assert_eq!(
        crate::fixture::xattrs(&s.lowers[0].join("f")),
        ["user.overlay.x=v", "user.plain=p"]
    );
}

/// Every way of making a name: none may make a `.wh.*` name, which unionmount would read as
/// an AUFS whiteout hiding a lower object. Named difference: kernel overlayfs ignores AUFS
/// markers and allows these names; unionmount refuses them with EINVAL.
#[test]
fn whiteout_names_cannot_be_made_through_the_mount() {
    if !fuse_available() {
        return;
    }
    let m = UnionMount::new(&["f a lower\nd d\nf d/b lower"]);
    fs::write(m.path("mine"), "x").unwrap();
    let einval = Some(Errno::INVAL.raw_os_error());
    for name in [
        ".wh.a",
        "d/.wh.b",
        ".wh..wh..opq",
        "d/.wh..wh..opq",
        ".wh.new",
    ] {
        let p = m.path(name);
        let tries: [(&str, std::io::Result<()>); 6] = [
            ("create", fs::write(&p, "x")),
            ("mkdir", fs::create_dir(&p)),
            ("symlink", std::os::unix::fs::symlink("a", &p)),
            ("link", fs::hard_link(m.path("mine"), &p)),
            ("rename", fs::rename(m.path("mine"), &p)),
            ("mknod", {
                let r = rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &p,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o644),
                    0,
                );
                r.map_err(std::io::Error::from)
            }),
        ];
        for (op, r) in tries {
            assert_eq!(r.map_err(|e| e.raw_os_error()), Err(einval), "{op} {name}");
        }
    }
    assert_eq!(fs::read_to_string(m.path("a")).unwrap(), "lower");
    assert_eq!(fs::read_to_string(m.path("d/b")).unwrap(), "lower");
    let upper = dump(&m.stack.upper);
    assert!(
        !upper.contains(".wh."),
        "a marker name reached the upper:\n{upper}"
    );
}
