//! The three implementations under test, mounted over the same lowers with a fresh upper and
//! workdir each time: kernel overlayfs (mount(2)), unionmount and fuse-overlayfs (daemons kept in
//! the foreground as children, so their peak RSS can be read before unmounting).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Kernel,
    Unionmount,
    /// unionmount with the extra `-o` options of `UNIONMOUNT_BENCH_VARIANT`, to measure an
    /// option against the defaults in the same run.
    Variant,
    FuseOverlayfs,
}

/// The `-o` options of [`Impl::Variant`], if the variant is wanted.
pub fn variant_options() -> Option<String> {
    std::env::var("UNIONMOUNT_BENCH_VARIANT").ok()
}

impl Impl {
    /// Every implementation of this run, kernel overlayfs first.
    pub fn all() -> Vec<Impl> {
        let mut v = vec![Impl::Kernel, Impl::Unionmount];
        if variant_options().is_some() {
            v.push(Impl::Variant);
        }
        v.push(Impl::FuseOverlayfs);
        v
    }

    pub fn name(self) -> &'static str {
        match self {
            Impl::Kernel => "kernel",
            Impl::Unionmount => "unionmount",
            Impl::Variant => "unionmount-variant",
            Impl::FuseOverlayfs => "fuse-overlayfs",
        }
    }
}

/// A live mount; unmounted by `unmount` (or, failing that, detached when dropped).
pub struct Mounted {
    pub mnt: PathBuf,
    daemon: Option<Child>,
}

impl Mounted {
    /// The daemon's peak resident set (VmHWM) in KiB; None for kernel overlayfs.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.daemon.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Unmounts and waits for the daemon to exit.
    pub fn unmount(mut self) {
        self.detach(false);
    }

    fn detach(&mut self, lazy: bool) {
        let flags = if lazy {
            rustix::mount::UnmountFlags::DETACH
        } else {
            rustix::mount::UnmountFlags::empty()
        };
        if let Err(e) = rustix::mount::unmount(&self.mnt, flags)
            && !lazy
        {
            eprintln!("unmount {}: {e}; detaching", self.mnt.display());
            let _ = rustix::mount::unmount(&self.mnt, rustix::mount::UnmountFlags::DETACH);
        }
        if let Some(mut child) = self.daemon.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.daemon.is_some() || is_mountpoint(&self.mnt) {
            self.detach(true);
        }
    }
}

fn is_mountpoint(p: &Path) -> bool {
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    match (dev(p), p.parent().and_then(dev)) {
        (Some(a), Some(b)) => a != b,
        _ => false,
    }
}

/// Mounts `imp` over `lowers` (top first) with `upper` and `work` (empty directories) at `mnt`.
pub fn mount(
    imp: Impl,
    unionmount: &Path,
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    mnt: &Path,
) -> Mounted {
    assert!(
        !is_mountpoint(mnt),
        "{} is still a mountpoint (a previous unmount failed)",
        mnt.display()
    );
    let lowerdir = lowers
        .iter()
        .map(|l| l.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let opts = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    let daemon = match imp {
        Impl::Kernel => {
            let status = Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &opts])
                .arg(mnt)
                .status()
                .expect("mount(8)");
            assert!(status.success(), "kernel overlay mount failed");
            None
        }
        Impl::Unionmount | Impl::Variant => Some(
            Command::new(unionmount)
                .arg("-f")
                .args(
                    variant_options()
                        .filter(|_| imp == Impl::Variant)
                        .map(|o| ["-o".to_string(), o])
                        .into_iter()
                        .flatten(),
                )
                .arg("--workdir")
                .arg(work)
                .arg(&lowerdir)
                .arg(upper)
                .arg(mnt)
                .stdin(Stdio::null())
                .spawn()
                .expect("unionmount"),
        ),
        Impl::FuseOverlayfs => Some(
            Command::new("fuse-overlayfs")
                .args(["-f", "-o", &opts])
                .arg(mnt)
                .stdin(Stdio::null())
                // It warns about every mount option it ignores (`lazytime`) on each mount.
                .stderr(Stdio::null())
                .spawn()
                .expect("fuse-overlayfs (apt-get install fuse-overlayfs)"),
        ),
    };
    let mut m = Mounted {
        mnt: mnt.to_path_buf(),
        daemon,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !is_mountpoint(mnt) {
        if let Some(status) = m.daemon.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!("{} exited before mounting: {status}", imp.name());
        }
        assert!(
            Instant::now() < deadline,
            "{} did not mount within 30 s",
            imp.name()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    m
}
