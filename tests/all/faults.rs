//! Faults of the layers, through the real daemon: an upper that runs out of space or inodes
//! (a small tmpfs mounted by the test), and lower files the caller or the daemon may not read.
//!
//! Invariants: the caller gets the filesystem's errno (ENOSPC, EACCES), never EIO or a hang;
//! a failed operation leaves no half-made state (no partial copy in the upper, `WORKDIR/work`
//! clean, a name that failed to go is still shown with its content); the mount keeps serving
//! and succeeds again once space is freed; lowers are never written. Where kernel overlayfs can
//! run the same scenario, its errno is compared.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};
use unionmount::union::attr::SetAttr;

use crate::cli::{Foreground, can_mount, errno_of, kernel_overlay, spawn_foreground};
use crate::fixture::{Stack, dump};
use crate::ops::{at, cat, ctx, err, ino};
use crate::regression::without_dac;

/// A tmpfs mounted by the test (unmounted when dropped) holding the upper and the workdir.
struct SmallUpper {
    root: PathBuf,
    upper: PathBuf,
    work: PathBuf,
}

impl SmallUpper {
    /// Mounts a tmpfs with `opts` (e.g. `size=2m`) in the stack's temporary directory.
    fn mount(s: &Stack, opts: &str) -> SmallUpper {
        let root = s.tmp.path().join("small");
        fs::create_dir(&root).unwrap();
        let data = std::ffi::CString::new(opts).unwrap();
        rustix::mount::mount(
            "tmpfs",
            &root,
            "tmpfs",
            MountFlags::empty(),
            Some(data.as_c_str()),
        )
        .unwrap_or_else(|e| panic!("mount tmpfs -o {opts}: {e}"));
        let (upper, work) = (root.join("upper"), root.join("work"));
        fs::create_dir(&upper).unwrap();
        fs::create_dir(&work).unwrap();
        SmallUpper { root, upper, work }
    }

    /// Starts `unionmount -f` on the stack's lowers with this upper, at the stack's mountpoint.
    fn serve(&self, s: &Stack) -> Foreground {
        let lowers: Vec<String> = s.lowers.iter().map(|l| l.display().to_string()).collect();
        spawn_foreground(
            &[
                &"--workdir",
                &self.work,
                &lowers.join(":"),
                &self.upper,
                &s.mnt,
            ],
            &s.mnt,
        )
    }

    /// Leftovers in `WORKDIR/work` (the shared whiteout excepted).
    fn staged(&self) -> Vec<String> {
        fs::read_dir(self.work.join("work"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != unionmount::layer::upper::SHARED_WHITEOUT)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for SmallUpper {
    fn drop(&mut self) {
        if rustix::mount::unmount(&self.root, UnmountFlags::empty()).is_err() {
            let _ = rustix::mount::unmount(&self.root, UnmountFlags::DETACH);
        }
    }
}

#[track_caller]
fn errno(r: std::io::Result<impl std::fmt::Debug>) -> Errno {
    let e = r.expect_err("expected an error");
    errno_of(&e).unwrap_or_else(|| panic!("not an OS error: {e}"))
}

/// `len` bytes of a pattern that shows where a truncation or shift happened.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn open_write(p: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new().write(true).open(p)
}

#[test]
fn copy_up_larger_than_the_free_space_gives_enospc_and_leaves_nothing() {
    if !can_mount() {
        return;
    }
    let s = Stack::new(&["f small lower"]);
    let big = pattern(3 << 20);
    fs::write(s.lowers[0].join("big"), &big).unwrap();
    let lowers = s.lowers_dump();
    let small = SmallUpper::mount(&s, "size=2m");
    let fg = small.serve(&s);
    let m = &s.mnt;

    assert_eq!(
        errno(open_write(&m.join("big"))),
        Errno::NOSPC,
        "open for writing"
    );
    assert_eq!(
        errno(fs::set_permissions(
            m.join("big"),
            fs::Permissions::from_mode(0o600)
        )),
        Errno::NOSPC,
        "chmod"
    );
    assert!(
        !small.upper.join("big").exists(),
        "a partial copy-up in the upper"
    );
    assert_eq!(
        small.staged(),
        Vec::<String>::new(),
        "leftovers in the workdir"
    );
    assert!(
        fs::read(m.join("big")).unwrap() == big,
        "the lower content is not shown whole"
    );
    // The mount keeps serving: a copy-up that fits succeeds.
    open_write(&m.join("small"))
        .unwrap()
        .write_all(b"LOW")
        .unwrap();
    assert_eq!(fs::read_to_string(m.join("small")).unwrap(), "LOWer");
    drop(fg);

    // Kernel overlayfs on the same tiny upper refuses the same copy-up the same way.
    let kmnt = s.tmp.path().join("kernel");
    fs::create_dir(&kmnt).unwrap();
    if let Some(_k) = kernel_overlay(&s.lowers, &small.upper, &small.work, &kmnt) {
        let kernel = errno(fs::set_permissions(
            kmnt.join("big"),
            fs::Permissions::from_mode(0o600),
        ));
        assert_eq!(kernel, Errno::NOSPC, "kernel overlayfs differs");
    }
    assert_eq!(s.lowers_dump(), lowers, "a lower layer was modified");
}

#[test]
fn writes_that_fill_the_upper_give_enospc_and_keep_their_prefix() {
    if !can_mount() {
        return;
    }
    let s = Stack::new(&["f later lower-small"]);
    let small = SmallUpper::mount(&s, "size=1m");
    let _fg = small.serve(&s);
    let m = &s.mnt;

    let data = pattern(4 << 20);
    let mut f = fs::File::create(m.join("fill")).unwrap();
    let mut written = 0;
    let e = loop {
        match f.write(&data[written..(written + (64 << 10)).min(data.len())]) {
            Ok(0) => panic!("write returned 0 before the filesystem was full"),
            Ok(n) => written += n,
            Err(e) => break e,
        }
    };
    assert_eq!(errno_of(&e), Some(Errno::NOSPC), "{e}");
    assert!(written > 0 && written < data.len(), "wrote {written} bytes");
    drop(f);
    let back = fs::read(m.join("fill")).unwrap();
    assert_eq!(
        back.len(),
        written,
        "the file does not hold what was acknowledged"
    );
    assert!(
        back == data[..written],
        "the written prefix is not what was written"
    );

    // Even a small copy-up fails now, and leaves the lower version.
    assert_eq!(errno(open_write(&m.join("later"))), Errno::NOSPC);
    assert_eq!(fs::read_to_string(m.join("later")).unwrap(), "lower-small");
    assert!(!small.upper.join("later").exists());
    assert_eq!(small.staged(), Vec::<String>::new());

    // Freeing the space makes it succeed, once the upper file is really gone: FUSE sends the
    // RELEASE of the closed handles and the FORGET of the removed inode asynchronously, and
    // until they arrive unionmount holds the file (kernel overlayfs frees it at unlink).
    let used = || {
        let st = rustix::fs::statvfs(&small.root).unwrap();
        st.f_blocks - st.f_bfree
    };
    let full = used();
    fs::remove_file(m.join("fill")).unwrap();
    crate::cli::wait_for("the removed file's blocks to be freed", || {
        used() + (written as u64 / 2) / 4096 < full
    });
    let mut later = fs::OpenOptions::new()
        .append(true)
        .open(m.join("later"))
        .unwrap();
    later.write_all(b"+x").unwrap();
    drop(later);
    assert_eq!(
        fs::read_to_string(m.join("later")).unwrap(),
        "lower-small+x"
    );
}

/// Whether a failed removal of `name` left it whole: gone with a whiteout in the upper when it
/// succeeded, still shown with `content` when it failed.
#[track_caller]
fn removed_or_whole(r: std::io::Result<()>, m: &Path, upper: &Path, name: &str, content: &str) {
    match r {
        Ok(()) => {
            assert!(!m.join(name).exists(), "{name} removed but still shown");
            let st = rustix::fs::lstat(upper.join(name)).expect("a whiteout in the upper");
            assert_eq!(
                rustix::fs::FileType::from_raw_mode(st.st_mode),
                rustix::fs::FileType::CharacterDevice,
                "{name} in the upper is not a whiteout"
            );
        }
        Err(e) => {
            assert_eq!(errno_of(&e), Some(Errno::NOSPC), "removing {name}: {e}");
            assert_eq!(fs::read_to_string(m.join(name)).unwrap(), content, "{name}");
        }
    }
}

#[test]
fn inode_exhaustion_gives_enospc_and_no_half_made_state() {
    if !can_mount() {
        return;
    }
    let s = Stack::new(&["f a lower-a\nf c lower-c\nf d/x lower-x"]);
    let lowers = s.lowers_dump();
    let small = SmallUpper::mount(&s, "size=4m,nr_inodes=32");
    let fg = small.serve(&s);
    let m = &s.mnt;
    // c is in the upper with a lower copy below: removing it needs a whiteout.
    fs::write(m.join("c"), "upper-c").unwrap();

    let mut made = 0;
    let e = loop {
        match fs::write(m.join(format!("n{made}")), "n") {
            Ok(()) => made += 1,
            Err(e) => break e,
        }
        assert!(made < 100, "nr_inodes=32 but {made} files were created");
    };
    assert_eq!(
        errno_of(&e),
        Some(Errno::NOSPC),
        "create on a full upper: {e}"
    );
    let failed = format!("n{made}");
    assert!(!m.join(&failed).exists(), "the failed create is shown");
    assert!(
        !small.upper.join(&failed).exists(),
        "the failed create is in the upper"
    );
    assert_eq!(
        errno(fs::create_dir(m.join("newdir"))),
        Errno::NOSPC,
        "mkdir"
    );
    assert!(!m.join("newdir").exists() && !small.upper.join("newdir").exists());

    // No whiteout was ever made, so the first removal of a lower name needs a new inode.
    assert_eq!(
        errno(fs::remove_file(m.join("a"))),
        Errno::NOSPC,
        "unlink of a lower file"
    );
    assert_eq!(fs::read_to_string(m.join("a")).unwrap(), "lower-a");
    assert!(!small.upper.join("a").exists());
    removed_or_whole(
        fs::remove_file(m.join("c")),
        m,
        &small.upper,
        "c",
        "upper-c",
    );
    // Copying up d (to hold the whiteout of x) needs an inode too.
    removed_or_whole(
        fs::remove_file(m.join("d/x")),
        m,
        &small.upper,
        "d/x",
        "lower-x",
    );
    assert_eq!(
        small.staged(),
        Vec::<String>::new(),
        "leftovers in the workdir"
    );

    // Freeing inodes makes everything work again: once the kernel has forgotten the removed
    // files. Until its FORGET arrives (asynchronously, after the unlink) unionmount keeps
    // each removed upper inode pinned (`Node::pin`), as kernel overlayfs keeps an upper inode
    // while its overlay inode lives; so wait for tmpfs to count the inodes free again.
    let free_inodes = || rustix::fs::statvfs(&small.root).unwrap().f_ffree;
    let before = free_inodes();
    let freed = made.min(4);
    for i in 0..freed {
        fs::remove_file(m.join(format!("n{i}"))).unwrap();
    }
    crate::cli::wait_for("the removed files' inodes to be freed", || {
        free_inodes() >= before + freed as u64
    });
    fs::remove_file(m.join("a")).unwrap();
    assert!(!m.join("a").exists());
    fs::create_dir(m.join("newdir")).unwrap();
    drop(fg);
    assert_eq!(s.lowers_dump(), lowers, "a lower layer was modified");
}

/// Runs `cat path` as uid/gid 65534 and returns its exit success and stderr.
fn cat_as_nobody(path: &Path) -> (bool, String) {
    let out = Command::new("cat")
        .arg(path)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run cat as nobody");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn non_root_caller_gets_eacces_for_a_root_only_lower_file() {
    if !can_mount() {
        return;
    }
    let s = Stack::new(&["f secret s\nm secret 600\nf public p\nm public 644"]);
    // The caller must be able to reach the mountpoint at all.
    fs::set_permissions(s.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let check = |mnt: &Path, what: &str| {
        let (ok, msg) = cat_as_nobody(&mnt.join("public"));
        assert!(ok, "{what}: nobody cannot read a 0644 file: {msg}");
        let (ok, msg) = cat_as_nobody(&mnt.join("secret"));
        assert!(!ok && msg.contains("Permission denied"), "{what}: {msg}");
        // Opening for writing as nobody is refused before any copy-up.
        let out = Command::new("sh")
            .args(["-c", "echo x >> \"$1\"", "sh"])
            .arg(mnt.join("public"))
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let msg = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && msg.contains("Permission denied"),
            "{what}: {msg}"
        );
    };
    let serve = spawn_foreground(&[&s.lowers[0], &s.upper, &s.mnt], &s.mnt);
    check(&s.mnt, "unionmount");
    drop(serve);
    assert_eq!(
        fs::read_dir(&s.upper).unwrap().count(),
        0,
        "a refused open copied up"
    );
    let kmnt = s.tmp.path().join("kernel");
    fs::create_dir(&kmnt).unwrap();
    if let Some(_k) = kernel_overlay(&s.lowers, &s.upper, &s.work, &kmnt) {
        check(&kmnt, "kernel overlayfs");
    }
}

/// The engine in a thread without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, as a daemon a
/// lower file is unreadable to. (Kernel overlayfs copies up with the mounter's credentials,
/// so there is no kernel errno to compare.)
#[test]
fn copy_up_the_daemon_cannot_read_gives_eacces_and_leaves_nothing() {
    if !rustix::process::geteuid().is_root() {
        crate::mounted::skip("dropping DAC capabilities needs root");
        return;
    }
    let s = Stack::new(&["f locked secret\nm locked 000\nd shut\nf shut/in i\nm shut 000"]);
    let lowers = s.lowers_dump();
    let u = s.union();
    without_dac(|| {
        // The thread really obeys mode bits now.
        assert!(fs::read(s.lowers[0].join("locked")).is_err());

        let locked = ino(&u, "locked");
        let chmod = SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        };
        assert_eq!(
            err(u.setattr(&ctx(), locked, &chmod)),
            Errno::ACCESS,
            "chmod"
        );
        let wr = rustix::fs::OFlags::WRONLY;
        assert_eq!(
            err(u.open(&ctx(), locked, wr)),
            Errno::ACCESS,
            "open for writing"
        );
        let rd = rustix::fs::OFlags::RDONLY;
        assert_eq!(
            err(u.open(&ctx(), locked, rd)),
            Errno::ACCESS,
            "open for reading"
        );
        // A directory it cannot read has a name and attributes, as under the kernel; only
        // listing it fails (at opendir or at the first readdir).
        let shut = ino(&u, "shut");
        let listed = u
            .opendir(shut)
            .and_then(|fh| u.readdir(fh, 0).map(|e| e.len()));
        assert_eq!(
            err(listed),
            Errno::ACCESS,
            "listing an unreadable directory"
        );
    });
    assert_eq!(
        dump(&s.upper),
        "",
        "a failed copy-up left something in the upper"
    );
    let work = s.work.join("work");
    assert_eq!(
        fs::read_dir(&work).unwrap().count(),
        0,
        "leftovers in the workdir"
    );
    assert_eq!(s.lowers_dump(), lowers);
    // With its capabilities the engine copies it up as before.
    assert_eq!(at(&u, "locked").unwrap().st.st_mode & 0o7777, 0);
    assert_eq!(cat(&u, "locked"), "secret");
}
