//! Mounted fixtures: a [`Stack`] served by unionmount through a real FUSE mount (an in-process
//! background session), and the same layers mounted by kernel overlayfs, for differential tests.
//!
//! Both unmount when dropped. unionmount's unmount goes through fuser first; if that fails (fuser's
//! unmount is not lazy: EBUSY while something is open), a detached unmount (`MNT_DETACH`) takes
//! the mount out of the namespace so the temporary directories can still be removed.
//!
//! Skipping: mounting needs /dev/fuse (and overlayfs, and root). Without them a test prints why
//! and returns early, unless `CI` is set: there a missing facility is a failure, never a skip.

#![allow(dead_code)]

use std::ffi::CString;
use std::path::{Path, PathBuf};

use fuser::BackgroundSession;
use rustix::mount::{MountFlags, UnmountFlags};
use unionmount::config::{DEFAULT_SPIN, MountOptions, Passthrough};
use unionmount::fuse::adapter::Adapter;

use crate::fixture::Stack;

/// True when mounted tests can run here. Without /dev/fuse (or root, or overlayfs) it prints the
/// reason and returns false, so the caller returns early; with `CI` set it panics instead.
pub fn fuse_available() -> bool {
    let mut missing = Vec::new();
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse is missing");
    }
    if !rustix::process::geteuid().is_root() {
        missing.push("not running as root (mounting directly and overlayfs need it)");
    }
    if missing.is_empty() {
        return true;
    }
    let why = missing.join("; ");
    if std::env::var_os("CI").is_some() {
        panic!("mounted tests cannot run: {why} (CI is set, so this is a failure, not a skip)");
    }
    eprintln!("skipping mounted test: {why}");
    false
}

/// Says why a test cannot run here and lets it return early; with `CI` set, panics instead:
/// in CI a missing facility is a failure, never a skip.
pub fn skip(why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "cannot run: {why} (CI is set, so this is a failure, not a skip)"
    );
    eprintln!("skipping: {why}");
}

/// True when `program` can be started, after installing `package` with apt-get if it could
/// not (tests install what they need: CI runs them on a clean machine).
pub fn installed(program: &str, package: &str) -> bool {
    let runs = || {
        std::process::Command::new(program)
            .arg("--version")
            .output()
            .is_ok()
    };
    if runs() {
        return true;
    }
    let apt = |args: &[&str]| {
        std::process::Command::new("apt-get")
            // Other sessions may be installing too: wait for dpkg's lock instead of failing.
            .args(["-o", "DPkg::Lock::Timeout=300"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !apt(&["install", "-y", package]) {
        apt(&["update"]);
        apt(&["install", "-y", package]);
    }
    runs()
}

/// True when kernel overlayfs can be mounted here (in addition to `fuse_available`); same
/// policy: prints and returns false, or panics when `CI` is set.
pub fn overlay_available() -> bool {
    if !fuse_available() {
        return false;
    }
    let listed = std::fs::read_to_string("/proc/filesystems")
        .map(|s| s.lines().any(|l| l.ends_with("\toverlay")))
        .unwrap_or(false);
    if listed {
        return true;
    }
    // Not loaded yet: one attempt to load it (harmless when it is built in or unavailable).
    let _ = std::process::Command::new("modprobe")
        .arg("overlay")
        .status();
    let listed = std::fs::read_to_string("/proc/filesystems")
        .map(|s| s.lines().any(|l| l.ends_with("\toverlay")))
        .unwrap_or(false);
    if listed {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("kernel overlayfs is not available (CI is set, so this is a failure, not a skip)");
    }
    eprintln!("skipping oracle test: kernel overlayfs is not available");
    false
}

/// Mount options for tests: as root, like a system mount (allow_other, default_permissions,
/// dev, suid).
pub fn test_mount_options() -> MountOptions {
    MountOptions {
        allow_other: true,
        default_permissions: true,
        suid: true,
        dev: true,
        exec: true,
        read_only: false,
        fsname: "unionmount-test".into(),
        passthrough: Passthrough::Auto,
        spin: DEFAULT_SPIN,
    }
}

/// A [`Stack`] mounted by unionmount at `stack.mnt`; unmounted when dropped.
pub struct UnionMount {
    session: Option<BackgroundSession>,
    pub stack: Stack,
}

impl UnionMount {
    /// Builds the stack from the descriptions (see `fixture`) and mounts it.
    pub fn new(lowers: &[&str]) -> UnionMount {
        Self::mount(Stack::new(lowers))
    }

    /// Mounts an existing stack.
    pub fn mount(stack: Stack) -> UnionMount {
        let cfg = stack.config();
        let union = unionmount::union::Union::new(&cfg).expect("union over the fixture");
        let adapter = Adapter::new(union, &cfg);
        let session = unionmount::fuse::session::spawn(adapter, &stack.mnt, &test_mount_options())
            .unwrap_or_else(|e| panic!("mounting unionmount at {}: {e}", stack.mnt.display()));
        UnionMount {
            session: Some(session),
            stack,
        }
    }

    /// The mountpoint.
    pub fn mnt(&self) -> &Path {
        &self.stack.mnt
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.stack.mnt.join(rel)
    }

    /// Unmounts now (dropping does the same); the layers stay for inspection.
    pub fn unmount(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        if let Err(e) = session.umount_and_join() {
            // fuser's unmount is not lazy: detach instead, so the mountpoint is free. The
            // session thread ends by itself once the kernel closes the connection.
            eprintln!("unmounting {}: {e}; detaching", self.stack.mnt.display());
            detach(&self.stack.mnt);
        }
    }
}

impl Drop for UnionMount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// A [`Stack`] mounted by kernel overlayfs at `stack.mnt`; unmounted when dropped.
pub struct KernelMount {
    mounted: bool,
    pub stack: Stack,
}

/// Kernel overlayfs options that make its behaviour fixed whatever the kernel's build defaults
/// (redirect_dir off: renaming a lower directory gives EXDEV, as unionmount does; no index,
/// metacopy or xino, which would change what the upper holds or the inode numbers).
pub const KERNEL_OPTIONS: &str = "index=off,redirect_dir=off,metacopy=off,xino=off";

impl KernelMount {
    /// Builds the stack from the descriptions and mounts it with kernel overlayfs.
    pub fn new(lowers: &[&str]) -> KernelMount {
        Self::mount(Stack::new(lowers))
    }

    /// Mounts an existing stack with kernel overlayfs.
    pub fn mount(stack: Stack) -> KernelMount {
        let lowerdir: Vec<String> = stack
            .lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={},{KERNEL_OPTIONS}",
            lowerdir.join(":"),
            stack.upper.display(),
            stack.work.display()
        );
        let data = CString::new(data).unwrap();
        rustix::mount::mount(
            "overlay",
            &stack.mnt,
            "overlay",
            MountFlags::empty(),
            Some(data.as_c_str()),
        )
        .unwrap_or_else(|e| panic!("mount -t overlay -o {data:?} {}: {e}", stack.mnt.display()));
        KernelMount {
            mounted: true,
            stack,
        }
    }

    pub fn mnt(&self) -> &Path {
        &self.stack.mnt
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.stack.mnt.join(rel)
    }

    /// Unmounts now (dropping does the same). The upper can be inspected afterwards.
    pub fn unmount(&mut self) {
        if !std::mem::take(&mut self.mounted) {
            return;
        }
        if let Err(e) = rustix::mount::unmount(&self.stack.mnt, UnmountFlags::empty()) {
            eprintln!(
                "unmounting overlay at {}: {e}; detaching",
                self.stack.mnt.display()
            );
            detach(&self.stack.mnt);
        }
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Detached unmount, the fallback when a plain unmount fails.
pub fn detach(mnt: &Path) {
    if let Err(e) = rustix::mount::unmount(mnt, UnmountFlags::DETACH) {
        eprintln!("detaching {}: {e}", mnt.display());
    }
}

#[test]
fn union_mount_and_unmount() {
    if !fuse_available() {
        return;
    }
    let mut m = UnionMount::new(&["f a hello"]);
    assert_eq!(std::fs::read_to_string(m.path("a")).unwrap(), "hello");
    let mnt = m.mnt().to_path_buf();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mounts.contains(mnt.to_str().unwrap()),
        "{} not in mountinfo",
        mnt.display()
    );
    // Unmounting with a file open falls back to a detached unmount.
    let f = std::fs::File::open(m.path("a")).unwrap();
    m.unmount();
    drop(f);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(mnt.to_str().unwrap()),
        "{} still mounted",
        mnt.display()
    );
}

#[test]
fn kernel_mount_and_unmount() {
    if !overlay_available() {
        return;
    }
    let mut k = KernelMount::new(&["f a hello"]);
    assert_eq!(std::fs::read_to_string(k.path("a")).unwrap(), "hello");
    std::fs::write(k.path("b"), "new").unwrap();
    k.unmount();
    assert_eq!(
        std::fs::read_to_string(k.stack.upper.join("b")).unwrap(),
        "new"
    );
    assert!(!k.path("a").exists());
}
