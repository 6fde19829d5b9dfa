//! The benchmark's layers, built once under the bench directory and reused by later runs
//! (a stamp file records a finished build; delete the directory to rebuild):
//! - `rootfs`: a minimal Debian (debootstrap --variant=minbase), the bottom layer, with the
//!   .deb files of `PACKAGES` downloaded into its apt cache for the package-install workload;
//! - `update`: what an image update layer looks like over it: 200 modified binaries, kernel
//!   whiteouts for half of /usr/share/doc, an opaque /var/cache/debconf, 1,000 new files;
//! - `data` (top): a 1 GiB file, two 512 MiB files and 100,000 small files in 100 directories;
//! - `untar.tar`: 20,000 small files to extract into the union.
//!
//! With `small`, sizes shrink (no debootstrap: the host's /usr/share/doc stands in for the
//! rootfs) so that the harness itself can be checked in a minute.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Packages installed and purged by the `dpkg` workload (few dependencies, all in minbase's
/// reach).
pub const PACKAGES: [&str; 4] = ["less", "bc", "file", "libmagic1"];

pub struct Layers {
    /// Lowers, top first.
    pub lowers: Vec<PathBuf>,
    pub untar: PathBuf,
    pub big_size: u64,
    pub half_size: u64,
    /// Whether the rootfs is a real Debian one (chroot workloads need it).
    pub real_rootfs: bool,
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// Deterministic, incompressible-looking content.
fn fill(path: &Path, size: u64, seed: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(path).unwrap());
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

fn small_files(root: &Path, dirs: usize, per_dir: usize) {
    for d in 0..dirs {
        let dir = root.join(format!("d{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..per_dir {
            let len = 100 + (d * 7919 + f * 104_729) % 3900;
            fs::write(
                dir.join(format!("f{f:04}")),
                vec![b'a' + (f % 26) as u8; len],
            )
            .unwrap();
        }
    }
}

fn whiteout(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
}

fn rootfs(dir: &Path, small: bool) -> PathBuf {
    let rootfs = dir.join("rootfs");
    if small {
        fs::create_dir_all(rootfs.join("usr/share")).unwrap();
        run(Command::new("cp")
            .arg("-a")
            .arg("/usr/share/doc")
            .arg(rootfs.join("usr/share/")));
        fs::create_dir_all(rootfs.join("var/cache/debconf")).unwrap();
        fs::write(rootfs.join("var/cache/debconf/config.dat"), "x").unwrap();
        return rootfs;
    }
    let mirror = std::env::var("UNIONMOUNT_BENCH_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    eprintln!("building the rootfs with debootstrap from {mirror} (about a minute)");
    run(Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&rootfs)
        .arg(&mirror)
        .stdout(std::process::Stdio::null()));
    // The packages' .debs, so that installing them later needs no network.
    fs::copy("/etc/resolv.conf", rootfs.join("etc/resolv.conf")).unwrap();
    run(Command::new("chroot")
        .arg(&rootfs)
        .args(["apt-get", "-qq", "update"]));
    run(Command::new("chroot")
        .arg(&rootfs)
        .args(["apt-get", "-qq", "install", "--download-only", "-y"])
        .args(PACKAGES));
    rootfs
}

fn update_layer(dir: &Path, rootfs: &Path) -> PathBuf {
    let update = dir.join("update");
    let bin = rootfs.join("usr/bin");
    if bin.is_dir() {
        let mut names: Vec<_> = fs::read_dir(&bin)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name())
            .collect();
        names.sort();
        fs::create_dir_all(update.join("usr/bin")).unwrap();
        for name in names.iter().take(200) {
            let mut data = fs::read(bin.join(name)).unwrap();
            data.push(0);
            let new = update.join("usr/bin").join(name);
            fs::write(&new, data).unwrap();
            fs::set_permissions(&new, fs::metadata(bin.join(name)).unwrap().permissions()).unwrap();
        }
    }
    let doc = rootfs.join("usr/share/doc");
    let mut pkgs: Vec<_> = fs::read_dir(&doc)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    pkgs.sort();
    for p in pkgs.iter().step_by(2) {
        whiteout(&update.join("usr/share/doc").join(p));
    }
    let cache = update.join("var/cache/debconf");
    fs::create_dir_all(&cache).unwrap();
    rustix::fs::lsetxattr(
        &cache,
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::write(cache.join("config.dat"), "replaced\n").unwrap();
    small_files(&update.join("opt/app"), 10, 100);
    update
}

/// Builds the layers under `dir` unless a previous run did.
pub fn build(dir: &Path, small: bool) -> Layers {
    let dir = dir.join(if small { "small" } else { "full" });
    let (big_size, half_size) = if small {
        (64 << 20, 32 << 20)
    } else {
        (1 << 30, 512 << 20)
    };
    let data = dir.join("data");
    let layers = Layers {
        lowers: vec![data.clone(), dir.join("update"), dir.join("rootfs")],
        untar: dir.join("untar.tar"),
        big_size,
        half_size,
        real_rootfs: !small,
    };
    let stamp = dir.join(".built");
    if stamp.exists() {
        return layers;
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).unwrap();
    }
    fs::create_dir_all(&dir).unwrap();
    let rootfs = rootfs(&dir, small);
    update_layer(&dir, &rootfs);
    eprintln!("building the data layer");
    let files = data.join("data");
    fs::create_dir_all(&files).unwrap();
    fill(&files.join("big"), big_size, 1);
    fill(&files.join("r1"), half_size, 2);
    fill(&files.join("r2"), half_size, 3);
    let (dirs, per_dir) = if small { (10, 500) } else { (100, 1000) };
    small_files(&files.join("small"), dirs, per_dir);
    let src = dir.join("untar-src");
    small_files(&src, if small { 20 } else { 200 }, 100);
    run(Command::new("tar")
        .arg("cf")
        .arg(&layers.untar)
        .arg("-C")
        .arg(&src)
        .arg("."));
    fs::remove_dir_all(&src).unwrap();
    fs::write(stamp, "").unwrap();
    layers
}
