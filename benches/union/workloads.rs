//! The workloads: each gets a fresh mount (fresh upper), an untimed `prepare`, then (for cold
//! workloads) a sync and a drop of the page, dentry and inode caches, then the timed `run`.
//! Every workload checks what it did (a count or a size), so a broken mount cannot look fast.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use crate::layers::{Layers, PACKAGES};

pub struct Workload {
    pub name: &'static str,
    /// Caches dropped before the timed run.
    pub cold: bool,
    /// Needs the real Debian rootfs (chroot).
    pub needs_rootfs: bool,
    pub prepare: fn(&Path, &Layers),
    pub run: fn(&Path, &Layers),
}

fn nothing(_: &Path, _: &Layers) {}

fn sh(cmd: &mut Command) {
    let out = cmd
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Calls `f` on every path under `dir` (not following symlinks), with its metadata.
fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let md = fs::symlink_metadata(&p).unwrap();
        f(&p, &md);
        if md.is_dir() {
            walk(&p, f);
        }
    }
}

fn read_all(path: &Path, buf: &mut [u8]) -> u64 {
    let mut f = fs::File::open(path).unwrap();
    let mut total = 0;
    loop {
        match f.read(buf).unwrap() {
            0 => return total,
            n => total += n as u64,
        }
    }
}

fn stat_all(mnt: &Path, _: &Layers) {
    let mut n = 0;
    walk(mnt, &mut |_, _| n += 1);
    assert!(n > 1000, "only {n} entries");
}

fn ls_lr(mnt: &Path, _: &Layers) {
    sh(Command::new("ls").arg("-lR").arg(mnt.join("usr")));
}

fn read_files_under(dir: &Path) {
    let mut buf = vec![0u8; 1 << 20];
    let (mut files, mut bytes) = (0, 0);
    walk(dir, &mut |p, md| {
        if md.is_file() {
            files += 1;
            bytes += read_all(p, &mut buf);
        }
    });
    assert!(files > 100 && bytes > 0, "{files} files, {bytes} bytes");
}

fn read_rootfs(mnt: &Path, _: &Layers) {
    read_files_under(&mnt.join("usr"));
}

fn read_small(mnt: &Path, _: &Layers) {
    read_files_under(&mnt.join("data/small"));
}

fn untar(mnt: &Path, l: &Layers) {
    let dest = mnt.join("untar");
    fs::create_dir(&dest).unwrap();
    sh(Command::new("tar")
        .arg("xf")
        .arg(&l.untar)
        .arg("-C")
        .arg(&dest));
}

fn seq_read(mnt: &Path, l: &Layers) {
    let n = read_all(&mnt.join("data/big"), &mut vec![0u8; 1 << 20]);
    assert_eq!(n, l.big_size);
}

fn seq_write(mnt: &Path, l: &Layers) {
    let mut f = fs::File::create(mnt.join("data/written")).unwrap();
    let block = vec![7u8; 1 << 20];
    for _ in 0..l.big_size >> 20 {
        f.write_all(&block).unwrap();
    }
    f.sync_all().unwrap();
}

fn fio_args(mnt: &Path, l: &Layers) -> Vec<String> {
    let size = (l.half_size / 2) >> 20;
    vec![
        "--name=randrw".into(),
        format!("--filename={}", mnt.join("fio.dat").display()),
        "--rw=randrw".into(),
        "--bs=4k".into(),
        format!("--size={size}M"),
        format!("--io_size={}M", size / 2),
        "--ioengine=psync".into(),
        "--randrepeat=1".into(),
        "--output=/dev/null".into(),
    ]
}

fn fio_layout(mnt: &Path, l: &Layers) {
    sh(Command::new("fio")
        .args(fio_args(mnt, l))
        .arg("--create_only=1"));
}

fn fio(mnt: &Path, l: &Layers) {
    sh(Command::new("fio").args(fio_args(mnt, l)));
}

fn copy_up_append(mnt: &Path, l: &Layers) {
    let p = mnt.join("data/big");
    let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"!").unwrap();
    drop(f);
    assert_eq!(fs::metadata(&p).unwrap().len(), l.big_size + 1);
}

fn rm_rf_usr(mnt: &Path, _: &Layers) {
    fs::remove_dir_all(mnt.join("usr")).unwrap();
    assert!(!mnt.join("usr").exists());
}

/// Renames of 2,000 lower files (each a copy-up and a whiteout) and back again (upper only).
fn rename_loop(mnt: &Path, _: &Layers) {
    let mut n = 0;
    for d in 0..4 {
        let dir = mnt.join(format!("data/small/d{d:03}"));
        for f in 0..500 {
            let (a, b) = (dir.join(format!("f{f:04}")), dir.join(format!("r{f:04}")));
            fs::rename(&a, &b).unwrap();
            fs::rename(&b, &a).unwrap();
            n += 1;
        }
    }
    assert_eq!(n, 2000);
}

fn dpkg(mnt: &Path, _: &Layers) {
    sh(Command::new("chroot")
        .arg(mnt)
        .args(["apt-get", "-qq", "install", "-y", "--no-download"])
        .args(PACKAGES)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    sh(Command::new("chroot")
        .arg(mnt)
        .args(["dpkg", "--purge"])
        .args(PACKAGES));
}

fn parallel_readers(mnt: &Path, l: &Layers) {
    std::thread::scope(|s| {
        for name in ["data/r1", "data/r2"] {
            s.spawn(move || {
                let n = read_all(&mnt.join(name), &mut vec![0u8; 1 << 20]);
                assert_eq!(n, l.half_size);
            });
        }
    });
}

fn warm_big(mnt: &Path, l: &Layers) {
    seq_read(mnt, l);
}

pub fn all() -> Vec<Workload> {
    let w = |name, cold, prepare: fn(&Path, &Layers), run: fn(&Path, &Layers)| Workload {
        name,
        cold,
        needs_rootfs: false,
        prepare,
        run,
    };
    let mut v = vec![
        w("stat-all", true, nothing, stat_all),
        w("ls-lR-usr", true, nothing, ls_lr),
        w("read-rootfs", true, nothing, read_rootfs),
        w("read-100k-small", true, nothing, read_small),
        w("untar-20k", false, nothing, untar),
        w("seq-read-1g-cold", true, nothing, seq_read),
        w("seq-read-1g-warm", false, warm_big, seq_read),
        w("seq-write-1g", false, nothing, seq_write),
        w("fio-4k-randrw", false, fio_layout, fio),
        w("copy-up-append-1g", true, nothing, copy_up_append),
        w("rm-rf-usr", true, nothing, rm_rf_usr),
        w("rename-2k", true, nothing, rename_loop),
        w("two-readers", true, nothing, parallel_readers),
    ];
    v.push(Workload {
        needs_rootfs: true,
        ..w("apt-install-purge", false, nothing, dpkg)
    });
    v
}
