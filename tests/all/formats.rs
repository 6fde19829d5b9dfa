//! The upper's on-disk format against the kernel: after a sequence of engine operations the
//! upper is mounted with kernel overlayfs as the top lower of a read-only overlay
//! (`lowerdir=UPPER:L0:L1`), and the kernel must show the same merged tree as the engine. That
//! proves the kernel reads every marker we wrote. The other direction (an upper written by the
//! kernel, read by the engine) is checked too.

use std::ffi::CString;
use std::fs;
use std::path::PathBuf;

use rustix::fs::FileType;
use rustix::mount::{MountFlags, UnmountFlags};
use unionmount::union::attr::SetAttr;
use unionmount::union::rename::RenameFlags;
use unionmount::union::{Union, inode::ROOT};

use crate::fixture::{Stack, dump};
use crate::ops::*;

/// A kernel overlay mount, unmounted on drop.
struct KernelOverlay {
    mnt: PathBuf,
}

impl KernelOverlay {
    fn mount(mnt: PathBuf, options: &str, flags: MountFlags) -> KernelOverlay {
        fs::create_dir_all(&mnt).unwrap();
        let data = CString::new(options).unwrap();
        rustix::mount::mount("overlay", &mnt, "overlay", flags, Some(data.as_c_str()))
            .unwrap_or_else(|e| panic!("mount -t overlay -o {options}: {e}"));
        KernelOverlay { mnt }
    }

    /// The upper as the top lower of a read-only overlay over the stack's lowers.
    fn read_only(s: &Stack) -> KernelOverlay {
        let mut dirs = vec![s.upper.display().to_string()];
        dirs.extend(s.lowers.iter().map(|l| l.display().to_string()));
        KernelOverlay::mount(
            s.tmp.path().join("kernel-ro"),
            &format!("lowerdir={}", dirs.join(":")),
            MountFlags::RDONLY,
        )
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        if rustix::mount::unmount(&self.mnt, UnmountFlags::empty()).is_err() {
            let _ = rustix::mount::unmount(&self.mnt, UnmountFlags::DETACH);
        }
    }
}

/// The engine's view, a fresh engine's view over the same layers, and the kernel's view of
/// the upper as a lower must all be the same tree; the workdir must hold nothing.
#[track_caller]
fn assert_kernel_agrees(s: &Stack, u: &Union) -> String {
    let ours = union_tree(u);
    assert_eq!(
        union_tree(&s.union()),
        ours,
        "a fresh engine over the same layers differs"
    );
    let k = KernelOverlay::read_only(s);
    let theirs = dump(&k.mnt);
    assert_eq!(
        theirs,
        ours,
        "kernel (left) vs engine (right); upper:\n{}",
        dump(&s.upper)
    );
    assert_work_empty(s);
    ours
}

const LOWERS: [&str; 2] = [
    "f a a0\nf b b0\nd d\nf d/x x0\nd d/e\nf d/e/y y0\nl sl a\np fifo\nf ro r0\nm ro 444\nx a user.k v",
    "f c c1\nd d\nf d/z z1\nd d/e\nf d/e/w w1\nd only1\nf only1/q q1\nf a under",
];

#[test]
fn kernel_reads_whiteouts_of_deletes() {
    let s = Stack::new(&LOWERS);
    let before = s.lowers_dump();
    let u = s.union();
    unlink(&u, "a").unwrap();
    unlink(&u, "c").unwrap();
    unlink(&u, "d/e/y").unwrap();
    unlink(&u, "d/e/w").unwrap();
    rmdir(&u, "d/e").unwrap();
    unlink(&u, "sl").unwrap();
    unlink(&u, "fifo").unwrap();
    unlink(&u, "only1/q").unwrap();
    rmdir(&u, "only1").unwrap();
    unlink(&u, "ro").unwrap();
    let t = assert_kernel_agrees(&s, &u);
    assert!(!t.contains("only1") && !t.contains("d/e"), "{t}");
    assert_lowers(&s, &before);
}

#[test]
fn kernel_reads_opaque_directories_from_rm_rf_and_mkdir() {
    let s = Stack::new(&LOWERS);
    let before = s.lowers_dump();
    let u = s.union();
    for p in ["d/e/y", "d/e/w", "d/x", "d/z"] {
        unlink(&u, p).unwrap();
    }
    rmdir(&u, "d/e").unwrap();
    rmdir(&u, "d").unwrap();
    mkdir(&u, "d", 0o750).unwrap();
    mkdir(&u, "d/e", 0o700).unwrap();
    put(&u, "d/e/new", "N").unwrap();
    // A directory where a file was.
    unlink(&u, "b").unwrap();
    mkdir(&u, "b", 0o755).unwrap();
    put(&u, "b/in", "I").unwrap();
    // A directory over a whiteout that sits in a lower layer.
    unlink(&u, "only1/q").unwrap();
    rmdir(&u, "only1").unwrap();
    mkdir(&u, "only1", 0o755).unwrap();
    let t = assert_kernel_agrees(&s, &u);
    assert!(
        t.contains("d/e/new f 1 \"N\"") && !t.contains("d/x") && !t.contains("only1/q"),
        "{t}"
    );
    assert_lowers(&s, &before);
}

#[test]
fn kernel_reads_renames() {
    let s = Stack::new(&LOWERS);
    let before = s.lowers_dump();
    let u = s.union();
    mv(&u, "a", "a2").unwrap();
    mv(&u, "d/x", "d/e/x").unwrap();
    unlink(&u, "c").unwrap();
    mv(&u, "b", "c").unwrap();
    rename(&u, "d/z", "d/e/w", RenameFlags::default()).unwrap();
    rename(
        &u,
        "ro",
        "a2",
        RenameFlags {
            noreplace: false,
            exchange: true,
        },
    )
    .unwrap();
    mkdir(&u, "newdir", 0o755).unwrap();
    put(&u, "newdir/f", "F").unwrap();
    mv(&u, "newdir", "moved").unwrap();
    // An upper-only directory moved onto a deleted lower directory's name.
    unlink(&u, "only1/q").unwrap();
    rmdir(&u, "only1").unwrap();
    mv(&u, "moved", "only1").unwrap();
    rename(
        &u,
        "sl",
        "d/sl",
        RenameFlags {
            noreplace: true,
            exchange: false,
        },
    )
    .unwrap();
    let t = assert_kernel_agrees(&s, &u);
    assert!(
        t.contains("only1/f f 1 \"F\"") && !t.contains("only1/q"),
        "{t}"
    );
    assert_lowers(&s, &before);
}

#[test]
fn kernel_reads_copy_ups_and_new_objects() {
    let s = Stack::new(&LOWERS);
    let before = s.lowers_dump();
    let u = s.union();
    put(&u, "d/e/y", "changed").unwrap();
    let c = ctx();
    u.setattr(
        &c,
        ino(&u, "b"),
        &SetAttr {
            mode: Some(0o600),
            uid: Some(12),
            gid: Some(34),
            ..Default::default()
        },
    )
    .unwrap();
    u.setattr(
        &c,
        ino(&u, "d/z"),
        &SetAttr {
            size: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    u.setxattr(ino(&u, "a"), os("user.extra"), b"e", 0).unwrap();
    u.removexattr(ino(&u, "a"), os("user.k")).unwrap();
    u.setxattr(ino(&u, "only1"), os("user.dir"), b"d", 0)
        .unwrap();
    u.setattr(
        &c,
        ino(&u, "sl"),
        &SetAttr {
            uid: Some(7),
            ..Default::default()
        },
    )
    .unwrap();
    u.setattr(
        &c,
        ino(&u, "fifo"),
        &SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .unwrap();
    link(&u, "c", "d/c-link").unwrap();
    symlink(&u, "d/new-sl", "../a").unwrap();
    u.mknod(&c, ino(&u, "d"), os("new-fifo"), 0o010640, 0)
        .unwrap();
    u.mknod(&c, ROOT, os("null"), 0o020666, rustix::fs::makedev(1, 3))
        .unwrap();
    put(&u, "d/e/brand-new", "B").unwrap();
    let t = assert_kernel_agrees(&s, &u);
    assert!(
        t.contains("d/e/y f 7 \"changed\"") && t.contains("b f 2 \"b0\" 600 12:34"),
        "{t}"
    );
    assert_lowers(&s, &before);
}

#[test]
fn kernel_reads_objects_created_over_whiteouts() {
    let s = Stack::new(&LOWERS);
    let u = s.union();
    for n in ["a", "b", "c", "sl", "fifo"] {
        unlink(&u, n).unwrap();
    }
    put(&u, "a", "file again").unwrap();
    symlink(&u, "b", "a").unwrap();
    u.mknod(&ctx(), ROOT, os("c"), 0o010644, 0).unwrap();
    mkdir(&u, "sl", 0o755).unwrap();
    put(&u, "fifo", "was a fifo").unwrap();
    let t = assert_kernel_agrees(&s, &u);
    assert!(
        t.contains("a f 10 \"file again\"") && t.contains("sl d"),
        "{t}"
    );
}

#[test]
fn kernel_reads_a_long_mixed_sequence_over_two_engine_generations() {
    let s = Stack::new(&LOWERS);
    let u = s.union();
    put(&u, "d/e/y", "v1").unwrap();
    unlink(&u, "d/x").unwrap();
    put(&u, "d/x", "x again").unwrap();
    mkdir(&u, "tmp", 0o755).unwrap();
    put(&u, "tmp/t", "t").unwrap();
    mv(&u, "tmp/t", "d/e/t").unwrap();
    rmdir(&u, "tmp").unwrap();
    assert_kernel_agrees(&s, &u);
    drop(u);
    // A second engine continues on the same upper.
    let u = s.union();
    unlink(&u, "d/e/y").unwrap();
    unlink(&u, "d/e/t").unwrap();
    unlink(&u, "d/e/w").unwrap();
    rmdir(&u, "d/e").unwrap();
    mkdir(&u, "d/e", 0o755).unwrap();
    mv(&u, "d/x", "d/e/x").unwrap();
    unlink(&u, "d/z").unwrap();
    let t = assert_kernel_agrees(&s, &u);
    assert!(
        t.contains("d/e/x f 7 \"x again\"") && !t.contains("d/e/w"),
        "{t}"
    );
}

/// The other direction: an upper written by the kernel (read-write mount) reads the same
/// through the engine.
#[test]
fn engine_reads_an_upper_written_by_the_kernel() {
    let s = Stack::new(&LOWERS);
    let before = s.lowers_dump();
    let kwork = s.tmp.path().join("kernel-work");
    fs::create_dir(&kwork).unwrap();
    let lowers: Vec<String> = s.lowers.iter().map(|l| l.display().to_string()).collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        s.upper.display(),
        kwork.display()
    );
    let kernel_view = {
        let k = KernelOverlay::mount(s.tmp.path().join("kernel-rw"), &opts, MountFlags::empty());
        let m = |p: &str| k.mnt.join(p);
        fs::remove_file(m("a")).unwrap();
        fs::remove_file(m("d/e/y")).unwrap();
        fs::remove_file(m("d/e/w")).unwrap();
        fs::remove_dir(m("d/e")).unwrap();
        fs::create_dir(m("d/e")).unwrap();
        fs::write(m("d/e/new"), "N").unwrap();
        fs::write(m("b"), "b changed").unwrap();
        fs::rename(m("c"), m("c2")).unwrap();
        fs::remove_file(m("only1/q")).unwrap();
        fs::remove_dir(m("only1")).unwrap();
        fs::write(m("only1"), "now a file").unwrap();
        std::os::unix::fs::symlink("b", m("d/sl2")).unwrap();
        fs::hard_link(m("d/x"), m("x-link")).unwrap();
        rustix::fs::lsetxattr(
            m("d/z").as_path(),
            "user.z",
            b"zz",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        dump(&k.mnt)
    };
    let u = s.union();
    assert_eq!(
        union_tree(&u),
        kernel_view,
        "engine (left) vs kernel (right); upper:\n{}",
        dump(&s.upper)
    );
    assert_eq!(at(&u, "x-link").unwrap().st.st_nlink, 2);
    assert_eq!(
        FileType::from_raw_mode(at(&u, "only1").unwrap().st.st_mode),
        FileType::RegularFile
    );
    // And the engine can go on writing to it, the kernel reading it back.
    put(&u, "d/e/new", "N2").unwrap();
    unlink(&u, "c2").unwrap();
    assert_kernel_agrees(&s, &u);
    assert_lowers(&s, &before);
}

/// The fixture's trees hold nothing the comparison could miss: a sanity check of the dumps
/// against the engine on an untouched stack.
#[test]
fn untouched_stack_reads_the_same() {
    let s = Stack::new(&LOWERS);
    let u = s.union();
    let t = assert_kernel_agrees(&s, &u);
    let n = t.lines().count();
    assert_eq!(n, 14, "{t}");
}
