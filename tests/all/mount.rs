//! Through a real FUSE mount: what programs expect of a filesystem, and the regressions other
//! union filesystems shipped (named after their issue numbers, see SEMANTICS.md).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use rustix::fs::{CWD, FallocateFlags, FileType, Mode, SeekFrom};
use rustix::io::Errno;

use crate::fixture::{Stack, dump};
use crate::mounted::{UnionMount, fuse_available};

fn sh(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `args` as uid/gid 65534 (nobody) with no supplementary groups.
fn as_nobody(args: &[&OsStr]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        "--",
    ])
    .args(args);
    sh(&mut cmd)
}

/// Lets other users reach the stack's mountpoint (temporary directories are 0700).
fn open_to_others(m: &UnionMount) {
    fs::set_permissions(m.stack.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
}

fn errno(r: std::io::Result<impl Sized>) -> Errno {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => Errno::from_io_error(&e).unwrap_or_else(|| panic!("not an OS error: {e}")),
    }
}

/// This process's umask (read without changing it).
fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .expect("Umask in /proc/self/status");
    u32::from_str_radix(line.trim(), 8).unwrap()
}

/// The names in `dir`, sorted.
pub(crate) fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn cp_cat_and_shell_append() {
    if !fuse_available() {
        return;
    }
    let m = UnionMount::new(&["f a hello\nd d\nf d/b in-d"]);
    let lowers = m.stack.lowers_dump();
    ok(Command::new("cp").arg(m.path("a")).arg(m.path("d/copy")));
    assert_eq!(ok(Command::new("cat").arg(m.path("d/copy"))), "hello");
    ok(Command::new("sh")
        .arg("-c")
        .arg(format!("echo more >> '{}'", m.path("a").display())));
    assert_eq!(fs::read_to_string(m.path("a")).unwrap(), "hellomore\n");
    ok(Command::new("cp")
        .arg("-a")
        .arg(m.path("d"))
        .arg(m.path("d2")));
    assert_eq!(names(&m.path("d2")), ["b", "copy"]);
    assert_eq!(
        fs::read_to_string(m.stack.upper.join("a")).unwrap(),
        "hellomore\n"
    );
    assert_eq!(m.stack.lowers_dump(), lowers);
}

/// fuse-overlayfs #265: `sed -i` (temporary file, then rename over the lower file).
#[test]
fn sed_in_place_on_a_lower_file() {
    if !fuse_available() {
        return;
    }
    let m = UnionMount::new(&["d etc\nf etc/conf key=old\nm etc/conf 640"]);
    ok(Command::new("sed")
        .arg("-i")
        .arg("s/old/new/")
        .arg(m.path("etc/conf")));
    assert_eq!(fs::read_to_string(m.path("etc/conf")).unwrap(), "key=new");
    assert_eq!(
        fs::metadata(m.path("etc/conf")).unwrap().mode() & 0o7777,
        0o640
    );
    assert_eq!(names(&m.path("etc")), ["conf"]);
    assert_eq!(
        fs::read_to_string(m.stack.lowers[0].join("etc/conf")).unwrap(),
        "key=old"
    );
    // No temporary of sed's, and no marker, left in the upper.
    assert_eq!(names(&m.stack.upper.join("etc")), ["conf"]);
}

/// fuse-overlayfs #307: removing a read-only lower file, as root and as its (unprivileged)
/// owner in a directory it owns.
#[test]
fn remove_read_only_lower_file() {
    if !fuse_available() {
        return;
    }
    let stack = Stack::new(&["f ro R\nm ro 444\nd pub\nf pub/ro2 R2\nm pub/ro2 444"]);
    for p in ["pub", "pub/ro2"] {
        std::os::unix::fs::chown(stack.lowers[0].join(p), Some(65534), Some(65534)).unwrap();
    }
    let m = UnionMount::mount(stack);
    open_to_others(&m);
    fs::remove_file(m.path("ro")).unwrap();
    assert_eq!(errno(fs::symlink_metadata(m.path("ro"))), Errno::NOENT);
    let out = as_nobody(&[
        OsStr::new("rm"),
        OsStr::new("-f"),
        m.path("pub/ro2").as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "rm as nobody: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(errno(fs::symlink_metadata(m.path("pub/ro2"))), Errno::NOENT);
    assert!(names(&m.path("pub")).is_empty());
    // The copied-up parent keeps its owner; the whiteouts are kernel-format.
    let pub_md = fs::metadata(m.stack.upper.join("pub")).unwrap();
    assert_eq!((pub_md.uid(), pub_md.gid()), (65534, 65534));
    let wh = fs::symlink_metadata(m.stack.upper.join("pub/ro2")).unwrap();
    assert_eq!(
        (FileType::from_raw_mode(wh.mode()), wh.rdev()),
        (FileType::CharacterDevice, 0)
    );
}

/// fuse-overlayfs #414: `mkdir -m 0555` (a directory the creator cannot write into).
#[test]
fn mkdir_with_mode_0555() {
    if !fuse_available() {
        return;
    }
    let stack = Stack::new(&["d d\nf d/x X\nd gone\nf gone/old O\nd pub"]);
    std::os::unix::fs::chown(stack.lowers[0].join("pub"), Some(65534), Some(65534)).unwrap();
    let m = UnionMount::mount(stack);
    open_to_others(&m);
    ok(Command::new("mkdir")
        .args(["-m", "0555"])
        .arg(m.path("new"))
        .arg(m.path("d/new")));
    ok(Command::new("mkdir")
        .args(["-p", "-m", "0555"])
        .arg(m.path("d/p/q")));
    // Over a whiteout: the directory is made opaque, whatever its mode.
    fs::remove_dir_all(m.path("gone")).unwrap();
    ok(Command::new("mkdir")
        .args(["-m", "0555"])
        .arg(m.path("gone")));
    for p in ["new", "d/new", "d/p/q", "gone"] {
        assert_eq!(
            fs::metadata(m.path(p)).unwrap().mode() & 0o7777,
            0o555,
            "{p}"
        );
        assert!(names(&m.path(p)).is_empty(), "{p}");
    }
    assert_eq!(
        crate::fixture::xattrs(&m.stack.upper.join("gone")),
        ["trusted.overlay.opaque=y"]
    );
    // Unprivileged, in a directory it owns.
    let out = as_nobody(&[
        OsStr::new("mkdir"),
        OsStr::new("-m"),
        OsStr::new("0555"),
        m.path("pub/mine").as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "mkdir as nobody: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = fs::metadata(m.path("pub/mine")).unwrap();
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.gid()),
        (0o555, 65534, 65534)
    );
    // And the mode is enforced: nobody cannot create inside it.
    let out = as_nobody(&[OsStr::new("touch"), m.path("pub/mine/f").as_os_str()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The d_ino of `name` in `dir`, from a fresh listing.
fn d_ino(dir: &Path, name: &str) -> u64 {
    use std::os::unix::fs::DirEntryExt;
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.file_name() == name)
        .unwrap_or_else(|| panic!("{name} not listed"))
        .ino()
}

/// fuse-overlayfs #391: st_ino is stable across copy-up and equal to readdir's d_ino.
#[test]
fn st_ino_stable_across_copy_up_and_equal_to_d_ino() {
    if !fuse_available() {
        return;
    }
    let m = UnionMount::new(&["d d\nf d/f F\nl d/s f", "d d\nf d/g G"]);
    let ino = |p: &str| fs::symlink_metadata(m.path(p)).unwrap().ino();
    let (d, f, s, g) = (ino("d"), ino("d/f"), ino("d/s"), ino("d/g"));
    assert_eq!(d_ino(m.mnt(), "d"), d);
    assert_eq!(d_ino(&m.path("d"), "f"), f);
    assert_eq!(d_ino(&m.path("d"), "g"), g);
    assert_eq!(d_ino(&m.path("d"), "s"), s);
    let all = [d, f, s, g, ino("")];
    for (i, a) in all.iter().enumerate() {
        assert!(
            !all[i + 1..].contains(a),
            "st_ino {a} is shared by two objects"
        );
    }
    // Copy-up of a file (and with it its directory), a symlink, a file from the lower lower.
    OpenOptions::new()
        .append(true)
        .open(m.path("d/f"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    std::os::unix::fs::lchown(m.path("d/s"), Some(1), Some(1)).unwrap();
    fs::set_permissions(m.path("d/g"), fs::Permissions::from_mode(0o600)).unwrap();
    assert!(m.stack.upper.join("d/f").exists() && m.stack.upper.join("d/g").exists());
    assert_eq!((ino("d"), ino("d/f"), ino("d/s"), ino("d/g")), (d, f, s, g));
    assert_eq!(d_ino(m.mnt(), "d"), d);
    assert_eq!(d_ino(&m.path("d"), "f"), f);
    assert_eq!(d_ino(&m.path("d"), "g"), g);
    assert_eq!(d_ino(&m.path("d"), "s"), s);
    // fstat through an fd agrees.
    assert_eq!(
        File::open(m.path("d/f")).unwrap().metadata().unwrap().ino(),
        f
    );
}

/// fuse-overlayfs #435/#192: st_nlink is right from the first stat after link(2) of a lower file.
#[test]
fn st_nlink_right_after_link_of_a_lower_file() {
    if !fuse_available() {
        return;
    }
    let m = UnionMount::new(&["f a A\nd d\nf d/b B"]);
    // Stat first, so the kernel has the lower attributes cached.
    assert_eq!(fs::metadata(m.path("a")).unwrap().nlink(), 1);
    fs::hard_link(m.path("a"), m.path("a2")).unwrap();
    let (a, a2) = (
        fs::metadata(m.path("a")).unwrap(),
        fs::metadata(m.path("a2")).unwrap(),
    );
    assert_eq!((a.nlink(), a2.nlink()), (2, 2));
    assert_eq!(a.ino(), a2.ino());
    fs::hard_link(m.path("d/b"), m.path("b3")).unwrap();
    fs::hard_link(m.path("d/b"), m.path("d/b4")).unwrap();
    assert_eq!(fs::metadata(m.path("d/b")).unwrap().nlink(), 3);
    assert_eq!(
        File::open(m.path("b3"))
            .unwrap()
            .metadata()
            .unwrap()
            .nlink(),
        3
    );
    fs::remove_file(m.path("d/b")).unwrap();
    assert_eq!(fs::metadata(m.path("d/b4")).unwrap().nlink(), 2);
    // Writing through one name is seen through the other.
    OpenOptions::new()
        .append(true)
        .open(m.path("b3"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    assert_eq!(fs::read_to_string(m.path("d/b4")).unwrap(), "B+");
    assert_eq!(fs::metadata(m.stack.upper.join("d/b4")).unwrap().nlink(), 2);
}

const MIB: u64 = 1 << 20;

/// A 64 MiB lower file with holes: SEEK_DATA/SEEK_HOLE before and after copy-up, holes kept by
/// the copy-up, fallocate (allocate, punch) through the mount.
#[test]
fn large_sparse_file() {
    if !fuse_available() {
        return;
    }
    let stack = Stack::new(&["d big"]);
    let lower = stack.lowers[0].join("big/file");
    let f = File::create(&lower).unwrap();
    f.set_len(64 * MIB).unwrap();
    f.write_all_at(&[b'A'; 4096], 0).unwrap();
    f.write_all_at(&[b'B'; 4096], 32 * MIB).unwrap();
    drop(f);
    let lower_blocks = fs::metadata(&lower).unwrap().blocks();
    let m = UnionMount::mount(stack);
    let p = m.path("big/file");

    let f = File::open(&p).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 64 * MIB);
    assert_eq!(rustix::fs::seek(&f, SeekFrom::Data(0)).unwrap(), 0);
    assert_eq!(rustix::fs::seek(&f, SeekFrom::Hole(0)).unwrap(), 4096);
    assert_eq!(
        rustix::fs::seek(&f, SeekFrom::Data(4096)).unwrap(),
        32 * MIB
    );
    assert_eq!(
        rustix::fs::seek(&f, SeekFrom::Hole(32 * MIB)).unwrap(),
        32 * MIB + 4096
    );
    assert_eq!(
        rustix::io::Errno::NXIO,
        rustix::fs::seek(&f, SeekFrom::Data(32 * MIB + 4096)).unwrap_err()
    );
    drop(f);
    assert!(
        !m.stack.upper.join("big/file").exists(),
        "reading copied up"
    );

    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.write_all_at(b"C", 48 * MIB).unwrap();
    let up = fs::metadata(m.stack.upper.join("big/file")).unwrap();
    assert_eq!(up.len(), 64 * MIB);
    assert!(
        up.blocks() <= lower_blocks + 64,
        "copy-up filled the holes: {} blocks of 512 bytes",
        up.blocks()
    );
    assert_eq!(rustix::fs::seek(&f, SeekFrom::Hole(0)).unwrap(), 4096);
    assert_eq!(
        rustix::fs::seek(&f, SeekFrom::Data(33 * MIB)).unwrap(),
        48 * MIB
    );

    // Allocate 1 MiB at 60 MiB: no size change, blocks grow, reads zeros.
    rustix::fs::fallocate(&f, FallocateFlags::KEEP_SIZE, 60 * MIB, MIB).unwrap();
    let blocks = f.metadata().unwrap().blocks();
    assert!(
        blocks >= up.blocks() + 2048,
        "fallocate allocated nothing ({} -> {blocks})",
        up.blocks()
    );
    // Extend by allocating past the end.
    rustix::fs::fallocate(&f, FallocateFlags::empty(), 64 * MIB, MIB).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 65 * MIB);
    // Punch the first 4 KiB out.
    rustix::fs::fallocate(
        &f,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        0,
        4096,
    )
    .unwrap();
    let mut buf = [1u8; 4096];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    drop(f);

    // The whole content, read through the mount in one stream.
    let mut data = Vec::new();
    File::open(&p).unwrap().read_to_end(&mut data).unwrap();
    assert_eq!(data.len() as u64, 65 * MIB);
    let nonzero: Vec<(usize, u8)> = data
        .iter()
        .enumerate()
        .filter(|(_, b)| **b != 0)
        .map(|(i, b)| (i, *b))
        .collect();
    assert_eq!(nonzero.len(), 4096 + 1);
    assert!(
        nonzero[..4096]
            .iter()
            .all(|&(i, b)| b == b'B' && (i as u64) >= 32 * MIB && (i as u64) < 32 * MIB + 4096)
    );
    assert_eq!(nonzero[4096], (48 * MIB as usize, b'C'));
    // The lower is untouched.
    assert_eq!(fs::metadata(&lower).unwrap().len(), 64 * MIB);
    let mut head = [0u8; 1];
    File::open(&lower)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert_eq!(head, *b"A");
}

/// The overlay's private xattrs are never listed, read or set through the mount, and refusing
/// does not copy anything up.
#[test]
fn private_xattrs_are_invisible() {
    if !fuse_available() {
        return;
    }
    let m = UnionMount::new(&[
        "f a A\nx a trusted.overlay.origin O\nx a user.overlay.redirect R\nx a user.ok fine\no od\nf od/in I",
        "d od\nf od/hidden H",
    ]);
    let list = |p: &Path| {
        let mut buf = vec![0u8; 4096];
        let n = rustix::fs::llistxattr(p, &mut buf[..]).unwrap();
        buf[..n]
            .split(|&b| b == 0)
            .filter(|k| !k.is_empty())
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
    };
    let get = |p: &Path, k: &str| rustix::fs::lgetxattr(p, k, &mut [0u8; 256][..]);
    assert_eq!(list(&m.path("a")), ["user.ok"]);
    assert!(list(&m.path("od")).is_empty());
    assert_eq!(
        get(&m.path("a"), "trusted.overlay.origin").unwrap_err(),
        Errno::NODATA
    );
    assert_eq!(
        get(&m.path("a"), "user.overlay.redirect").unwrap_err(),
        Errno::NODATA
    );
    assert_eq!(
        get(&m.path("od"), "trusted.overlay.opaque").unwrap_err(),
        Errno::NODATA
    );
    assert_eq!(get(&m.path("a"), "user.ok").unwrap(), 4);
    for k in [
        "trusted.overlay.opaque",
        "user.overlay.opaque",
        "trusted.overlay.whiteout",
    ] {
        assert!(
            rustix::fs::lsetxattr(m.path("a"), k, b"y", rustix::fs::XattrFlags::empty()).is_err(),
            "{k} was settable"
        );
        assert!(
            rustix::fs::lsetxattr(m.path("od"), k, b"y", rustix::fs::XattrFlags::empty()).is_err(),
            "{k} was settable"
        );
        assert!(rustix::fs::lremovexattr(m.path("a"), k).is_err());
    }
    assert!(rustix::fs::lremovexattr(m.path("od"), "trusted.overlay.opaque").is_err());
    // The opaque directory stays opaque; nothing was copied up.
    assert_eq!(names(&m.path("od")), ["in"]);
    assert_eq!(dump(&m.stack.upper), "");
    // A copy-up does not carry the private xattrs along.
    OpenOptions::new()
        .append(true)
        .open(m.path("a"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    assert_eq!(
        crate::fixture::xattrs(&m.stack.upper.join("a")),
        ["user.ok=fine"]
    );
}

/// `.wh.*` names are markers: never shown, never creatable through the mount.
#[test]
fn whiteout_names_cannot_be_created_or_seen() {
    if !fuse_available() {
        return;
    }
    let mut m = UnionMount::new(&[
        "W foo\nf bar B\nO od\nf od/mine M",
        "f foo F\nd od\nf od/old O",
    ]);
    assert_eq!(names(m.mnt()), ["bar", "od"]);
    assert_eq!(names(&m.path("od")), ["mine"]);
    for p in ["foo", ".wh.foo", "od/.wh..wh..opq", "od/old"] {
        assert_eq!(errno(fs::symlink_metadata(m.path(p))), Errno::NOENT, "{p}");
    }
    assert!(File::create(m.path(".wh.new")).is_err());
    assert!(fs::create_dir(m.path(".wh.dir")).is_err());
    assert!(std::os::unix::fs::symlink("bar", m.path(".wh.link")).is_err());
    assert!(fs::hard_link(m.path("bar"), m.path(".wh.hard")).is_err());
    assert!(fs::rename(m.path("bar"), m.path(".wh.bar")).is_err());
    assert!(
        rustix::fs::mknodat(
            CWD,
            m.path("od/.wh..wh..opq"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0
        )
        .is_err()
    );
    assert!(File::create(m.path("od/.wh.mine")).is_err());
    assert_eq!(names(m.mnt()), ["bar", "od"]);
    assert_eq!(names(&m.path("od")), ["mine"]);
    // Creating the whited-out name itself is fine.
    fs::write(m.path("foo"), "new").unwrap();
    assert_eq!(fs::read_to_string(m.path("foo")).unwrap(), "new");
    m.unmount();
    let upper = dump(&m.stack.upper);
    assert!(
        !upper.contains(".wh."),
        "marker name in the upper:\n{upper}"
    );
}

/// Symlinks in layers never lead the engine outside the layer roots: a symlink in a lower
/// ends a merge like any non-directory, and operations on a symlink act on the link.
///
/// What this does not test: `mkdir MNT/esc/x` for a lower symlink `esc -> /etc`. The caller's
/// kernel resolves that path, follows the absolute target from the caller's own root and
/// creates /etc/x without the union being asked (as with kernel overlayfs or any other
/// filesystem). The engine-level counterpart is tested below: a mkdir *in* the symlink's node
/// is refused with ENOTDIR.
#[test]
fn symlinks_never_lead_outside_the_layers() {
    if !fuse_available() {
        return;
    }
    let stack = Stack::new(&[
        "d top\nf top/t T\nd mid/sub\nf mid/sub/own O\nl esc /etc\nl up ..\nl lnk mid",
        "l top OUTSIDE\nl mid/sub OUTSIDE\nd esc\nf esc/x X",
        "d top\nf top/deep D\nd mid/sub\nf mid/sub/deep D",
    ]);
    let outside = stack.tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), "S").unwrap();
    // Point the symlinks at the real outside directory.
    for (layer, path) in [(1, "top"), (1, "mid/sub")] {
        let link = stack.lowers[layer].join(path);
        fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&outside, &link).unwrap();
    }
    let before = dump(&outside);
    let m = UnionMount::mount(stack);

    // A lower symlink ends the merge of the directories above it.
    assert_eq!(names(&m.path("top")), ["t"]);
    assert_eq!(names(&m.path("mid/sub")), ["own"]);
    assert_eq!(
        errno(fs::symlink_metadata(m.path("mid/sub/secret"))),
        Errno::NOENT
    );
    fs::write(m.path("mid/sub/deep"), "new").unwrap();
    fs::write(m.path("top/new"), "n").unwrap();
    fs::create_dir(m.path("top/dir")).unwrap();
    assert_eq!(
        fs::read_to_string(m.stack.upper.join("mid/sub/deep")).unwrap(),
        "new"
    );
    // The top symlink hides the directory below it and stays a symlink.
    assert_eq!(fs::read_link(m.path("esc")).unwrap(), Path::new("/etc"));
    assert_eq!(fs::read_link(m.path("up")).unwrap(), Path::new(".."));
    // Through a relative symlink inside the mount, the kernel comes back to the union.
    fs::create_dir(m.path("lnk/x")).unwrap();
    assert!(m.stack.upper.join("mid/x").is_dir());
    // Operations on the links act on the links.
    std::os::unix::fs::lchown(m.path("esc"), Some(1), Some(1)).unwrap();
    assert_eq!(
        fs::symlink_metadata(m.stack.upper.join("esc"))
            .unwrap()
            .uid(),
        1
    );
    assert_ne!(fs::metadata("/etc").unwrap().uid(), 1);
    fs::rename(m.path("up"), m.path("up2")).unwrap();
    fs::remove_file(m.path("esc")).unwrap();
    assert!(Path::new("/etc").is_dir());
    assert_eq!(
        fs::read_link(m.stack.upper.join("up2")).unwrap(),
        Path::new("..")
    );

    // The engine refuses to treat a symlink node as a directory.
    let u = m.stack.union();
    let ctx = unionmount::union::Ctx::current();
    let root = unionmount::union::inode::ROOT;
    let lnk = u.lookup(root, OsStr::new("lnk")).unwrap();
    let top = u.lookup(root, OsStr::new("top")).unwrap();
    let x = OsStr::new("x");
    assert_eq!(u.mkdir(&ctx, lnk.ino, x, 0o755).unwrap_err(), Errno::NOTDIR);
    assert_eq!(
        u.lookup(lnk.ino, OsStr::new("sub")).unwrap_err(),
        Errno::NOTDIR
    );
    assert_eq!(
        u.mknod(&ctx, lnk.ino, x, 0o100644, 0).unwrap_err(),
        Errno::NOTDIR
    );
    assert_eq!(
        u.symlink(&ctx, lnk.ino, x, OsStr::new("/")).unwrap_err(),
        Errno::NOTDIR
    );
    assert_eq!(
        u.unlink(&ctx, lnk.ino, OsStr::new("sub")).unwrap_err(),
        Errno::NOTDIR
    );
    assert_eq!(u.opendir(lnk.ino).unwrap_err(), Errno::NOTDIR);
    assert!(
        u.rename(
            &ctx,
            top.ino,
            OsStr::new("t"),
            lnk.ino,
            x,
            Default::default()
        )
        .is_err()
    );
    assert_eq!(u.lookup(root, OsStr::new("..")).unwrap_err(), Errno::INVAL);
    assert_eq!(u.lookup(root, OsStr::new("a/b")).unwrap_err(), Errno::INVAL);
    drop(u);

    assert_eq!(
        dump(&outside),
        before,
        "something outside the layers changed"
    );
    assert!(!Path::new("/etc/x").exists());
}

/// statfs reports the upper's filesystem.
#[test]
fn statfs_reports_the_upper() {
    if !fuse_available() {
        return;
    }
    let m = UnionMount::new(&["f a A"]);
    let (s, u) = (
        rustix::fs::statvfs(m.mnt()).unwrap(),
        rustix::fs::statvfs(&m.stack.upper).unwrap(),
    );
    assert_eq!(s.f_bsize, u.f_bsize);
    assert_eq!(s.f_blocks, u.f_blocks);
    assert_eq!(s.f_files, u.f_files);
    assert_eq!(s.f_namemax, u.f_namemax);
    assert!(
        s.f_bavail.abs_diff(u.f_bavail) < s.f_blocks / 100 + 1024,
        "free space far off: {} vs {}",
        s.f_bavail,
        u.f_bavail
    );
}

/// mknod of a character device as root; the device works through the mount (`dev`).
#[test]
fn mknod_char_device_as_root() {
    if !fuse_available() {
        return;
    }
    let m = UnionMount::new(&["d dev"]);
    let null = rustix::fs::makedev(1, 3);
    rustix::fs::mknodat(
        CWD,
        m.path("dev/null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        null,
    )
    .unwrap();
    let md = fs::symlink_metadata(m.path("dev/null")).unwrap();
    assert_eq!(
        (
            FileType::from_raw_mode(md.mode()),
            md.rdev(),
            md.mode() & 0o777
        ),
        (FileType::CharacterDevice, null, 0o666 & !umask())
    );
    OpenOptions::new()
        .write(true)
        .open(m.path("dev/null"))
        .unwrap()
        .write_all(b"discarded")
        .unwrap();
    assert_eq!(fs::read(m.path("dev/null")).unwrap(), b"");
    let up = fs::symlink_metadata(m.stack.upper.join("dev/null")).unwrap();
    assert_eq!(
        (FileType::from_raw_mode(up.mode()), up.rdev()),
        (FileType::CharacterDevice, null)
    );
    // A char device 0/0 would be a whiteout in the upper: refused with EPERM, like the kernel.
    let wh = m.path("dev/wh");
    assert_eq!(
        rustix::fs::mknodat(
            CWD,
            &wh,
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o600),
            0
        )
        .unwrap_err(),
        Errno::PERM
    );
    assert!(!m.stack.upper.join("dev/wh").exists());
}

/// allow_other + default_permissions: the kernel checks mode bits for other users.
#[test]
fn permissions_for_other_users() {
    if !fuse_available() {
        return;
    }
    let m = UnionMount::new(&[
        "f secret S\nm secret 600\nf public P\nm public 644\nd priv\nm priv 700\nf priv/f F\nm priv/f 644",
    ]);
    open_to_others(&m);
    let cat = |p: &str| as_nobody(&[OsStr::new("cat"), m.path(p).as_os_str()]);
    let out = cat("public");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"P");
    for p in ["secret", "priv/f"] {
        let out = cat(p);
        assert!(!out.status.success(), "nobody read {p}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Writing a file it may only read is refused before any copy-up.
    let out = as_nobody(&[
        OsStr::new("sh"),
        OsStr::new("-c"),
        OsStr::new("echo x >> \"$0\""),
        m.path("public").as_os_str(),
    ]);
    assert!(!out.status.success());
    assert!(
        !m.stack.upper.join("public").exists(),
        "a refused write copied the file up"
    );
    // Root still can.
    assert_eq!(fs::read_to_string(m.path("secret")).unwrap(), "S");
}

/// A read-only fd opened before a copy-up sees the copied-up data (as with kernel overlayfs
/// since its stacked file operations), and an unlinked open file stays usable.
#[test]
fn open_files_across_copy_up_and_unlink() {
    if !fuse_available() {
        return;
    }
    let m = UnionMount::new(&["f r old\nf u U"]);
    let reader = File::open(m.path("r")).unwrap();
    fs::write(m.path("r"), "new").unwrap();
    let mut s = String::new();
    (&reader).read_to_string(&mut s).unwrap();
    assert_eq!(s, "new");

    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("u"))
        .unwrap();
    fs::remove_file(m.path("u")).unwrap();
    assert_eq!(errno(fs::symlink_metadata(m.path("u"))), Errno::NOENT);
    f.write_all_at(b"still here", 0).unwrap();
    let mut buf = [0u8; 10];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"still here");
    assert_eq!(f.metadata().unwrap().len(), 10);
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    assert_eq!(f.metadata().unwrap().mode() & 0o777, 0o600);
    assert_eq!(names(m.mnt()), ["r"]);
}

/// Reads the directory `fd` from its current offset with a small buffer: (name, d_ino, cookie
/// of the next entry) for up to `max` entries.
fn getdents(fd: &std::os::fd::OwnedFd, max: usize) -> Vec<(String, u64, u64)> {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 512];
    let mut out = Vec::new();
    let mut dir = rustix::fs::RawDir::new(fd, &mut buf);
    while out.len() < max {
        let Some(e) = dir.next() else { break };
        let e = e.unwrap();
        out.push((
            e.file_name().to_string_lossy().into_owned(),
            e.ino(),
            e.next_entry_cookie(),
        ));
    }
    out
}

/// telldir/seekdir: the offsets of an open directory stay valid while the directory changes,
/// and each listing shows every name exactly once.
#[test]
fn directory_offsets_stay_valid() {
    if !fuse_available() {
        return;
    }
    let mut l0 = String::new();
    let mut l1 = String::new();
    for i in 0..300 {
        l0.push_str(&format!("f d/top-{i:03} t\n"));
        l1.push_str(&format!("f d/low-{i:03} l\nf d/top-{i:03} shadowed\n"));
    }
    let m = UnionMount::new(&[&l0, &l1]);
    let open = || {
        rustix::fs::open(
            m.path("d"),
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    };
    let fd = open();
    let all = getdents(&fd, usize::MAX);
    let mut listed: Vec<&str> = all.iter().map(|(n, _, _)| n.as_str()).collect();
    listed.sort();
    let mut want: Vec<String> = [".".to_string(), "..".to_string()]
        .into_iter()
        .chain((0..300).flat_map(|i| [format!("top-{i:03}"), format!("low-{i:03}")]))
        .collect();
    want.sort();
    assert_eq!(listed, want);
    // Change the directory, then seek back into the open handle's listing.
    fs::remove_file(m.path("d/top-000")).unwrap();
    fs::write(m.path("d/new"), "n").unwrap();
    for i in [0, 1, 17, 150, 400, all.len() - 2] {
        rustix::fs::seek(&fd, SeekFrom::Start(all[i].2)).unwrap();
        let next = getdents(&fd, 1);
        assert_eq!(next[0].0, all[i + 1].0, "entry after offset {}", all[i].2);
    }
    rustix::fs::seek(&fd, SeekFrom::Start(all[all.len() - 1].2)).unwrap();
    assert!(getdents(&fd, 1).is_empty(), "entries after the last offset");
    // A new handle sees the change.
    let now: Vec<String> = getdents(&open(), usize::MAX)
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert!(now.contains(&"new".to_string()) && !now.contains(&"top-000".to_string()));
    assert_eq!(now.len(), all.len());
}

/// Several threads copying up, appending to and creating in the same lower directory at once.
#[test]
fn concurrent_copy_up_and_creates() {
    if !fuse_available() {
        return;
    }
    let m = UnionMount::new(&["d d\nf d/shared 0\nf d/a A\nf d/b B", "d d\nf d/low L"]);
    let root = m.mnt().to_path_buf();
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let root = root.clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    let mut f = OpenOptions::new()
                        .append(true)
                        .open(root.join("d/shared"))
                        .unwrap();
                    f.write_all(format!("<{t}.{i}>").as_bytes()).unwrap();
                    fs::write(root.join(format!("d/t{t}-{i}")), "x").unwrap();
                    if i % 2 == 0 {
                        fs::remove_file(root.join(format!("d/t{t}-{i}"))).unwrap();
                    }
                    let _ = fs::read_dir(root.join("d")).unwrap().count();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let data = fs::read_to_string(m.path("d/shared")).unwrap();
    assert!(data.starts_with('0'));
    for t in 0..6 {
        for i in 0..40 {
            assert_eq!(
                data.matches(&format!("<{t}.{i}>")).count(),
                1,
                "append {t}.{i} lost or doubled"
            );
        }
    }
    let listed = names(&m.path("d"));
    assert_eq!(listed.len(), 4 + 6 * 20, "{listed:?}");
    // Files created and deleted in the upper only leave no whiteouts behind.
    for n in names(&m.stack.upper.join("d")) {
        let md = fs::symlink_metadata(m.stack.upper.join("d").join(&n)).unwrap();
        assert!(
            md.file_type().is_file(),
            "{n} is not a regular file in the upper"
        );
    }
}

/// Two names of one lower file (a hard link inside the lower layer) that are both in use when
/// one is written: the kernel caches both as one inode and open(2) does not say which name it
/// came through, so the copy-up links every name in use to the copy (as kernel overlayfs with
/// `index=on`): both show the new data, one st_ino, nlink 2.
#[test]
fn lower_hard_link_names_in_use_stay_linked() {
    if !fuse_available() {
        return;
    }
    let m = UnionMount::new(&["f h H\nh h2 h\nf other O"]);
    assert_eq!(fs::read_to_string(m.path("h2")).unwrap(), "H");
    let before = fs::metadata(m.path("h")).unwrap();
    assert_eq!(before.nlink(), 2);
    assert_eq!(before.ino(), fs::metadata(m.path("h2")).unwrap().ino());
    OpenOptions::new()
        .append(true)
        .open(m.path("h"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    for name in ["h", "h2"] {
        assert_eq!(fs::read_to_string(m.path(name)).unwrap(), "H+", "{name}");
        let md = fs::metadata(m.path(name)).unwrap();
        assert_eq!(md.ino(), before.ino(), "{name}: st_ino kept across copy-up");
        assert_eq!(md.nlink(), 2, "{name}");
    }
    let upper_h = fs::metadata(m.stack.upper.join("h")).unwrap();
    let upper_h2 = fs::metadata(m.stack.upper.join("h2")).unwrap();
    assert_eq!(
        upper_h.ino(),
        upper_h2.ino(),
        "the upper keeps them one file"
    );
    assert_eq!(
        fs::read_to_string(m.stack.lowers[0].join("h2")).unwrap(),
        "H"
    );
}

/// A name of a hard-linked lower file that was never looked up when another name was copied
/// up stays the lower file (as kernel overlayfs without `index`), and from then on it is a
/// different file, so it gets an st_ino of its own (the kernel would show both names with one).
#[test]
fn lower_hard_link_name_not_in_use_is_broken_off() {
    if !fuse_available() {
        return;
    }
    let m = UnionMount::new(&["f h H\nd d\nh d/h3 h"]);
    OpenOptions::new()
        .append(true)
        .open(m.path("h"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    assert_eq!(fs::read_to_string(m.path("h")).unwrap(), "H+");
    assert_eq!(fs::read_to_string(m.path("d/h3")).unwrap(), "H");
    let (h, h3) = (
        fs::metadata(m.path("h")).unwrap(),
        fs::metadata(m.path("d/h3")).unwrap(),
    );
    assert_ne!(h.ino(), h3.ino());
    assert_eq!(h.nlink(), 1);
    assert!(!m.stack.upper.join("d/h3").exists());
}

/// A program copied into the mount runs (the kernel's exec open carries an internal flag that
/// openat2 refuses with EINVAL; found by pjdfstest), and while it runs, opening it for writing
/// gives ETXTBSY as on any filesystem.
#[test]
fn exec_from_the_mount_and_etxtbsy() {
    if !fuse_available() {
        return;
    }
    let m = UnionMount::new(&["d bin"]);
    let prog = m.path("bin/sleep");
    fs::copy("/bin/sleep", &prog).unwrap();
    fs::set_permissions(&prog, fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = Command::new(&prog)
        .arg("5")
        .spawn()
        .expect("exec from the mount");
    // Poll until the program image is mapped: ETXTBSY is only certain once exec completed.
    let mut busy = None;
    for _ in 0..200 {
        match OpenOptions::new().write(true).open(&prog) {
            Err(e) if e.raw_os_error() == Some(Errno::TXTBSY.raw_os_error()) => {
                busy = Some(());
                break;
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        busy.is_some(),
        "opening a running program for writing must give ETXTBSY"
    );
    assert!(Command::new(&prog).arg("0").status().unwrap().success());
}

/// The upper filesystem reuses the inode number of a removed directory for the next one while
/// the kernel still holds the removed one (here: open); the new directory must be usable, not
/// the dead one (creating in it gave ENOENT; found by pjdfstest).
#[test]
fn reused_inode_number_is_a_new_object() {
    if !fuse_available() {
        return;
    }
    let m = UnionMount::new(&["d base"]);
    let mut reused = 0;
    for i in 0..20 {
        let old = m.path(&format!("base/old{i}"));
        fs::create_dir(&old).unwrap();
        let held = File::open(&old).unwrap();
        let old_ino = fs::metadata(m.stack.upper.join(format!("base/old{i}")))
            .unwrap()
            .ino();
        fs::remove_dir(&old).unwrap();
        let new = m.path(&format!("base/new{i}"));
        fs::create_dir(&new).unwrap();
        if fs::metadata(m.stack.upper.join(format!("base/new{i}")))
            .unwrap()
            .ino()
            == old_ino
        {
            reused += 1;
        }
        fs::write(new.join("f"), "x").expect("create inside the new directory");
        assert_eq!(fs::read_to_string(new.join("f")).unwrap(), "x");
        drop(held);
        fs::remove_file(new.join("f")).unwrap();
        fs::remove_dir(&new).unwrap();
    }
    if reused == 0 {
        eprintln!("note: the upper filesystem never reused an inode number here");
    }
}

/// copy_file_range(2) within the mount (what `cp` and dpkg call): from a lower file to a new
/// file, and from that upper file on into a third, with the bytes intact and the lower
/// untouched.
#[test]
fn copy_file_range_through_the_mount() {
    if !fuse_available() {
        return;
    }
    let s = Stack::new(&["F big 3145728"]);
    let lower = fs::read(s.lowers[0].join("big")).unwrap();
    let m = UnionMount::mount(s);
    let copy = |from: &str, to: &str| {
        let src = File::open(m.path(from)).unwrap();
        let dst = File::create(m.path(to)).unwrap();
        let mut done = 0;
        loop {
            match rustix::fs::copy_file_range(&src, None, &dst, None, 1 << 30).unwrap() {
                0 => break,
                n => done += n,
            }
        }
        done
    };
    assert_eq!(copy("big", "one"), lower.len());
    assert_eq!(copy("one", "two"), lower.len());
    for name in ["one", "two"] {
        assert!(fs::read(m.path(name)).unwrap() == lower, "{name} differs");
    }
    assert!(fs::read(m.stack.lowers[0].join("big")).unwrap() == lower);
    assert!(!m.stack.lowers[0].join("one").exists());
}
