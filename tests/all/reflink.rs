//! Copy-up in reflink time where the filesystem allows it: on an xfs with `reflink=1` (a loop
//! mounted image, so the test needs root and installs xfsprogs with apt-get when missing),
//! copying a lower file up shares the lower's extents instead of copying its data, and the
//! copy is still a separate file (a write to it leaves the lower alone).
//!
//! The sharing is read from FIEMAP through `filefrag -v` (e2fsprogs): a reflinked extent
//! carries the `shared` flag; a copied one does not.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::OFlags;
use unionmount::config::Config;
use unionmount::union::Union;

use crate::fixture::test_root;
use crate::mounted::{fuse_available, installed, skip};
use crate::ops::{ctx, ino};

/// An xfs image with reflink on, loop mounted at `mnt`; unmounted (and its loop device
/// freed) when dropped.
struct Xfs {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl Xfs {
    fn new() -> Option<Xfs> {
        if !installed("mkfs.xfs", "xfsprogs") {
            skip("mkfs.xfs is missing and apt-get cannot install xfsprogs");
            return None;
        }
        let dir = tempfile::tempdir_in(test_root()).unwrap();
        let img = dir.path().join("xfs.img");
        fs::File::create(&img).unwrap().set_len(512 << 20).unwrap();
        run(Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&img));
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt));
        Some(Xfs { _dir: dir, mnt })
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        // `umount` of a loop mount also frees the loop device it set up.
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

#[track_caller]
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The extent lines of `filefrag -v`, and whether every one of them is shared.
fn all_extents_shared(p: &Path) -> (bool, String) {
    let out = run(Command::new("filefrag").arg("-v").arg(p));
    let extents: Vec<&str> = out
        .lines()
        .filter(|l| {
            l.trim_start()
                .split(':')
                .next()
                .is_some_and(|n| n.trim().parse::<u32>().is_ok())
        })
        .collect();
    let shared = !extents.is_empty() && extents.iter().all(|l| l.contains("shared"));
    (shared, out)
}

#[test]
fn copy_up_on_a_reflink_filesystem_shares_the_lower_extents() {
    if !fuse_available() {
        return;
    }
    let Some(xfs) = Xfs::new() else { return };
    let (lower, upper, work) = (
        xfs.mnt.join("lower"),
        xfs.mnt.join("upper"),
        xfs.mnt.join("work"),
    );
    for d in [&lower, &upper, &work] {
        fs::create_dir(d).unwrap();
    }
    let data = unionmount::layout::pattern("reflink", 64 << 20);
    fs::write(lower.join("big"), &data).unwrap();
    run(&mut Command::new("sync"));
    let (before, _) = all_extents_shared(&lower.join("big"));
    assert!(!before, "the lower file shares extents before any copy-up");

    let u = Union::new(&Config::new(
        vec![lower.clone()],
        Some(upper.clone()),
        Some(work),
    ))
    .unwrap();
    let fh = u.open(&ctx(), ino(&u, "big"), OFlags::RDWR).unwrap();
    u.fsync(fh, false).unwrap();
    let (shared, report) = all_extents_shared(&upper.join("big"));
    assert!(
        shared,
        "the copy-up copied the data instead of sharing it:\n{report}"
    );

    // Still two files: a write to the copy leaves the lower as it was.
    u.write(fh, 0, b"changed").unwrap();
    u.release(fh);
    assert!(
        fs::read(lower.join("big")).unwrap() == data,
        "the lower changed"
    );
    let copy = fs::read(upper.join("big")).unwrap();
    assert_eq!(&copy[..7], b"changed");
    assert!(copy[7..] == data[7..]);
}
