//! FUSE passthrough (`-o passthrough=on|off|auto`), mounted: opens of upper files are served
//! by the kernel from the upper file, and the daemon's read/write handlers see none of their
//! bytes (checked with the adapter's `daemon_io` counter, so the tests prove passthrough is in
//! effect rather than only that data comes out right); data stays coherent between
//! passthrough opens, cached opens and copy-up, compared with kernel overlayfs where the
//! sequence involves a copy-up.
//!
//! Passthrough needs Linux 6.9+ and root; the tests skip (fail under `CI`) on older kernels.
//! Everything here is bounded and small (a few MiB of I/O); no environment variables.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fuser::BackgroundSession;
use unionmount::config::{Config, Passthrough};
use unionmount::fuse::adapter::Adapter;

use crate::cli::{can_mount, mount, refused};
use crate::fixture::Stack;
use crate::mounted::{KernelMount, fuse_available, overlay_available, skip, test_mount_options};

/// A union mounted in-process with a chosen passthrough policy, with the adapter's counter of
/// bytes served by the daemon's read and write handlers.
struct Mount {
    session: Option<BackgroundSession>,
    stack: Stack,
    daemon_io: Arc<AtomicU64>,
}

impl Mount {
    fn new(stack: Stack, policy: Passthrough) -> Mount {
        let cfg = stack.config();
        Self::with_config(stack, cfg, policy)
    }

    /// Mounts `stack` as `cfg` describes it (e.g. without its upper).
    fn with_config(stack: Stack, cfg: Config, policy: Passthrough) -> Mount {
        let union = unionmount::union::Union::new(&cfg).expect("union over the fixture");
        let adapter = Adapter::new(union, &cfg);
        let daemon_io = adapter.daemon_io();
        let mut opts = test_mount_options();
        opts.passthrough = policy;
        opts.read_only = cfg.upper.is_none();
        let session = unionmount::fuse::session::spawn(adapter, &stack.mnt, &opts)
            .unwrap_or_else(|e| panic!("mounting at {}: {e}", stack.mnt.display()));
        Mount {
            session: Some(session),
            stack,
            daemon_io,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.stack.mnt.join(rel)
    }

    fn daemon_io(&self) -> u64 {
        self.daemon_io.load(Ordering::Relaxed)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take()
            && s.umount_and_join().is_err()
        {
            crate::mounted::detach(&self.stack.mnt);
        }
    }
}

/// True when FUSE can be mounted and the kernel has passthrough (6.9+).
fn passthrough_available() -> bool {
    if !fuse_available() {
        return false;
    }
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy().into_owned();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    if (major, minor) < (6, 9) {
        skip(&format!("kernel {release} has no FUSE passthrough (6.9+)"));
        return false;
    }
    true
}

/// `len` bytes of a pattern that differs at every offset modulo 251 (a prime, so pages differ).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

const BIG: usize = 4 << 20;

/// An upper file read and written through passthrough opens costs the daemon no read or
/// write request; with `passthrough=off` the same I/O all goes through the daemon.
#[test]
fn passthrough_io_bypasses_the_daemon() {
    if !passthrough_available() {
        return;
    }
    for (policy, through_daemon) in [(Passthrough::Auto, false), (Passthrough::Off, true)] {
        let stack = Stack::new(&[""]);
        fs::write(stack.upper.join("big"), pattern(BIG, 1)).unwrap();
        let m = Mount::new(stack, policy);
        let data = fs::read(m.path("big")).unwrap();
        assert!(data == pattern(BIG, 1), "{policy:?}: read back differs");
        let f = OpenOptions::new().write(true).open(m.path("big")).unwrap();
        f.write_all_at(&pattern(BIG, 2), 0).unwrap();
        drop(f);
        let upper = fs::read(m.stack.upper.join("big")).unwrap();
        assert!(upper == pattern(BIG, 2), "{policy:?}: upper file differs");
        let served = m.daemon_io();
        if through_daemon {
            assert!(
                served >= 2 * BIG as u64,
                "{policy:?}: daemon served {served}"
            );
        } else {
            assert_eq!(served, 0, "{policy:?}: passthrough I/O reached the daemon");
        }
    }
}

/// A union without an upper never copies up, so lower files are served by passthrough too:
/// reads, and an mmap of a lower file, cost the daemon nothing. In a read-write union the
/// same reads go through the daemon (a later write-open would copy the file up).
#[test]
fn read_only_union_serves_lower_files_by_passthrough() {
    if !passthrough_available() {
        return;
    }
    for read_only in [true, false] {
        let stack = Stack::new(&[""]);
        fs::write(stack.lowers[0].join("big"), pattern(BIG, 3)).unwrap();
        let cfg = if read_only {
            Config::new(stack.lowers.clone(), None, None)
        } else {
            stack.config()
        };
        let m = Mount::with_config(stack, cfg, Passthrough::Auto);
        let data = fs::read(m.path("big")).unwrap();
        assert!(
            data == pattern(BIG, 3),
            "read_only={read_only}: read differs"
        );
        let f = File::open(m.path("big")).unwrap();
        let want: u64 = pattern(BIG, 3).iter().map(|&b| u64::from(b)).sum();
        assert_eq!(
            mapped_sum(&f, BIG),
            want,
            "read_only={read_only}: mapping differs"
        );
        let served = m.daemon_io();
        if read_only {
            assert_eq!(
                served, 0,
                "lower reads of a read-only union reached the daemon"
            );
        } else {
            assert!(
                served >= BIG as u64,
                "read-write union: daemon served {served}"
            );
        }
    }
}

/// The sum of the first `len` bytes of `f`, read through a private read-only mapping.
fn mapped_sum(f: &File, len: usize) -> u64 {
    use rustix::mm::{MapFlags, ProtFlags, mmap, munmap};
    // SAFETY: a fresh read-only mapping of a file we hold open, only read here and unmapped
    // before returning; nothing else aliases it.
    unsafe {
        let p = mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ,
            MapFlags::PRIVATE,
            f,
            0,
        )
        .unwrap();
        let sum = std::slice::from_raw_parts(p.cast::<u8>(), len)
            .iter()
            .map(|&b| u64::from(b))
            .sum();
        munmap(p, len).unwrap();
        sum
    }
}

/// Two passthrough opens of one created file see each other's writes at once, and stat
/// through the path reports the size and mtime the passthrough writes left (the kernel
/// updates the FUSE inode's attributes after a passthrough write).
#[test]
fn concurrent_passthrough_opens_and_attributes() {
    if !passthrough_available() {
        return;
    }
    let m = Mount::new(Stack::new(&[""]), Passthrough::Auto);
    let mut a = File::create(m.path("new")).unwrap();
    a.write_all(&pattern(10_000, 3)).unwrap();
    let b = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("new"))
        .unwrap();
    let mut buf = vec![0u8; 10_000];
    b.read_exact_at(&mut buf, 0).unwrap();
    assert!(
        buf == pattern(10_000, 3),
        "second open misses the first's write"
    );
    let before = fs::metadata(m.path("new")).unwrap();
    assert_eq!(before.len(), 10_000);
    std::thread::sleep(std::time::Duration::from_millis(20));
    b.write_all_at(b"tail", 20_000).unwrap();
    let after = fs::metadata(m.path("new")).unwrap();
    assert_eq!(after.len(), 20_004, "size after a passthrough write");
    assert!(
        after.modified().unwrap() > before.modified().unwrap(),
        "mtime after a passthrough write"
    );
    let upper = fs::metadata(m.stack.upper.join("new")).unwrap();
    assert_eq!(upper.len(), 20_004);
    let mut c = File::open(m.path("new")).unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all).unwrap();
    assert_eq!(&all[20_000..], b"tail");
    assert!(all[10_000..20_000].iter().all(|&b| b == 0));
    drop((a, b, c));
    assert_eq!(
        m.daemon_io(),
        0,
        "created file was not opened in passthrough"
    );
}

/// What a read-only fd opened on a lower file sees across a copy-up triggered by a
/// write-open, and what later opens see after writes through passthrough: the same results
/// as kernel overlayfs gives for the same sequence.
fn copy_up_sequence(mnt: &Path) -> Vec<String> {
    let mut seen = Vec::new();
    let mut read_at = |f: &File, what: &str| {
        let mut buf = vec![0u8; 64];
        let n = f.read_at(&mut buf, 0).unwrap();
        seen.push(format!("{what}: {}", String::from_utf8_lossy(&buf[..n])));
    };
    let reader = File::open(mnt.join("r")).unwrap();
    read_at(&reader, "reader before");
    let writer = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mnt.join("r"))
        .unwrap();
    writer.write_all_at(b"NEW", 0).unwrap();
    read_at(&writer, "writer");
    read_at(&reader, "reader after copy-up");
    drop(writer);
    drop(reader);
    // Everything closed: the next write-open is of an upper file.
    let writer = OpenOptions::new().write(true).open(mnt.join("r")).unwrap();
    writer.write_all_at(b"ZZ", 4).unwrap();
    let reader = File::open(mnt.join("r")).unwrap();
    read_at(&reader, "reader after second write");
    drop(writer);
    seen.push(format!(
        "size: {}",
        fs::metadata(mnt.join("r")).unwrap().len()
    ));
    seen
}

#[test]
fn lower_file_open_read_only_across_copy_up_like_kernel() {
    if !passthrough_available() || !overlay_available() {
        return;
    }
    let desc = "f r old-lower-data";
    let k = KernelMount::new(&[desc]);
    let want = copy_up_sequence(k.mnt());
    drop(k);
    let m = Mount::new(Stack::new(&[desc]), Passthrough::Auto);
    let got = copy_up_sequence(&m.stack.mnt);
    assert_eq!(got, want);
    // The read-only fd opened on the lower copy follows the copy-up.
    assert_eq!(got[2], "reader after copy-up: NEW-lower-data");
    assert_eq!(
        fs::read_to_string(m.stack.upper.join("r")).unwrap(),
        "NEW-ZZwer-data"
    );
    // The first opens were of a lower file (cached, through the daemon); the second
    // write-open and its reader were of the upper file, in passthrough.
    assert!(m.daemon_io() > 0);
}

/// Writes through a shared mapping of a passthrough open reach the upper file, and a later
/// open reads them; none of it goes through the daemon.
#[test]
fn mmap_write_through_passthrough() {
    use rustix::mm::{MapFlags, MsyncFlags, ProtFlags, mmap, msync, munmap};
    if !passthrough_available() {
        return;
    }
    let stack = Stack::new(&[""]);
    fs::write(stack.upper.join("m"), pattern(65_536, 4)).unwrap();
    let m = Mount::new(stack, Passthrough::Auto);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("m"))
        .unwrap();
    // SAFETY: a fresh shared mapping of a file we hold open, unmapped below; nothing else
    // aliases it.
    unsafe {
        let p = mmap(
            std::ptr::null_mut(),
            65_536,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            &f,
            0,
        )
        .unwrap();
        let s = std::slice::from_raw_parts_mut(p.cast::<u8>(), 65_536);
        assert!(s[..] == pattern(65_536, 4)[..], "mapping shows other data");
        s[4096..4096 + 6].copy_from_slice(b"mapped");
        msync(p, 65_536, MsyncFlags::SYNC).unwrap();
        munmap(p, 65_536).unwrap();
    }
    drop(f);
    let upper = fs::read(m.stack.upper.join("m")).unwrap();
    assert_eq!(&upper[4096..4102], b"mapped");
    let through = fs::read(m.path("m")).unwrap();
    assert_eq!(through, upper);
    assert_eq!(m.daemon_io(), 0);
}

/// The option through the binary: `on` and `off` mount and serve data; an unknown value is
/// refused with a message naming it.
#[test]
fn passthrough_option_on_the_command_line() {
    if !can_mount() || !passthrough_available() {
        return;
    }
    for value in ["on", "off", "auto"] {
        let s = Stack::new(&["f low lower"]);
        let opt = format!("passthrough={value}");
        let _g = mount(&[&"-o", &opt, &s.lowers[0], &s.upper, &s.mnt], &s.mnt);
        fs::write(s.mnt.join("new"), "created").unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(s.mnt.join("low"))
            .unwrap()
            .write_all(b"+")
            .unwrap();
        assert_eq!(fs::read_to_string(s.mnt.join("new")).unwrap(), "created");
        assert_eq!(fs::read_to_string(s.mnt.join("low")).unwrap(), "lower+");
        assert_eq!(fs::read_to_string(s.upper.join("low")).unwrap(), "lower+");
    }
    let s = Stack::new(&["f a x"]);
    refused(
        &[&"-o", &"passthrough=always", &s.lowers[0], &s.upper, &s.mnt],
        &s.mnt,
        &["passthrough=always"],
    );
}
