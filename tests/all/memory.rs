//! Memory bound: the daemon's memory and open files stay bounded while the kernel looks up
//! and forgets many objects, and the engine's node table shrinks back to the root once every
//! lookup is forgotten.
//!
//! The mounted test runs the real binary (`-f`, `-o timeout=0`) over a lower of
//! `DIRS` x `FILES_PER_DIR` files, stats every file per cycle and then has the kernel drop its
//! dentries and inodes (`echo 2 > /proc/sys/vm/drop_caches`), which sends FORGETs for all of
//! them; some cycles also create and remove files, whose removed objects the engine pins
//! until the kernel forgets them. The resident set after the last cycle may exceed the one
//! after the first by `RSS_SLACK_KIB` at most (anything kept per lookup adds up over the
//! cycles), and the daemon's open fds must come back to their count after the first cycle.
//! Measurements (RSS per stage, lookups/s) are printed. That the node table itself shrinks
//! back is checked on the engine, where its size can be read.
//!
//! `UNIONMOUNT_MEMORY_LOOKUPS=N` sets the number of lookups of each test (default
//! `DEFAULT_LOOKUPS`, a few hundred thousand; millions take minutes mounted, seconds on the
//! engine).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::fixture::Stack;
use crate::mounted::{detach, fuse_available};
use crate::stress::env_u64;

const BIN: &str = env!("CARGO_BIN_EXE_unionmount");
const DEFAULT_LOOKUPS: u64 = 160_000;
const DIRS: usize = 20;
const FILES_PER_DIR: usize = 500;
/// Growth of the resident set allowed between the first and the last cycle. Measured: 0.3 to
/// 3 MiB, reached within the first cycles and flat after (25 cycles, 500,000 lookups: 11.2 to
/// 11.6 MiB); anything kept per lookup from ~50 bytes up exceeds it at the default count.
const RSS_SLACK_KIB: u64 = 8 * 1024;
/// Files created and removed by every fourth cycle.
const CHURN: usize = 500;
/// Upper bound for the mount to appear.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);

fn lookups() -> u64 {
    env_u64("UNIONMOUNT_MEMORY_LOOKUPS", DEFAULT_LOOKUPS)
}

/// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// The daemon in the foreground; unmounted (SIGTERM, then a detach) and reaped when stopped
/// or dropped. Its stderr is collected, so a panic it logs fails the test.
struct Daemon {
    child: Child,
    mnt: std::path::PathBuf,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Daemon {
    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, Signal::TERM);
        }
        let start = Instant::now();
        while start.elapsed() < MOUNT_TIMEOUT {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        detach(&self.mnt);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Unmounts, waits for the daemon to exit, and returns what it wrote on stderr.
    fn stop(mut self) -> String {
        self.terminate();
        let log = self
            .stderr
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        eprint!("{log}");
        log
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn mount_daemon(s: &Stack) -> Daemon {
    let parent_dev = fs::metadata(s.mnt.parent().unwrap()).unwrap().dev();
    let child = Command::new(BIN)
        .args(["-f", "-o", "timeout=0", "--workdir"])
        .arg(&s.work)
        .arg(&s.lowers[0])
        .arg(&s.upper)
        .arg(&s.mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn unionmount -f");
    let mut d = Daemon {
        child,
        mnt: s.mnt.clone(),
        stderr: None,
    };
    let mut err = d.child.stderr.take().unwrap();
    d.stderr = Some(thread::spawn(move || {
        let mut log = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut log);
        log
    }));
    let start = Instant::now();
    while fs::metadata(&s.mnt).map(|m| m.dev()).ok() == Some(parent_dev) {
        if let Ok(Some(status)) = d.child.try_wait() {
            panic!("unionmount -f exited before mounting: {status}");
        }
        assert!(
            start.elapsed() < MOUNT_TIMEOUT,
            "not mounted after {MOUNT_TIMEOUT:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    d
}

/// Has the kernel drop its unused dentries and inodes: it forgets every node it looked up.
fn drop_caches() {
    fs::write("/proc/sys/vm/drop_caches", "2").expect("write /proc/sys/vm/drop_caches");
}

/// Builds the lower directly (faster than the fixture text for 20,000 files).
fn big_lower(root: &Path) {
    for d in 0..DIRS {
        let dir = root.join(format!("d{d}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..FILES_PER_DIR {
            fs::write(dir.join(format!("f{f}")), "").unwrap();
        }
    }
}

#[test]
fn daemon_memory_stays_bounded_across_lookups_and_forgets() {
    if !fuse_available() {
        return;
    }
    let s = Stack::new(&[""]);
    big_lower(&s.lowers[0]);
    let daemon = mount_daemon(&s);
    let pid = daemon.child.id();
    // With timeout=0 every stat looks up both components again.
    let per_cycle = 2 * (DIRS * FILES_PER_DIR) as u64;
    let cycles = lookups().div_ceil(per_cycle).max(2);
    let rss_start = status_kib(pid, "VmRSS");
    let (mut rss_first, mut fds_first, mut rss_max) = (0, 0, 0);
    let start = Instant::now();
    let mut dropping = Duration::ZERO;
    let mut per_cycle_rss = Vec::new();
    for cycle in 0..cycles {
        for d in 0..DIRS {
            for f in 0..FILES_PER_DIR {
                let p = s.mnt.join(format!("d{d}/f{f}"));
                fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
        }
        if cycle % 4 == 1 {
            let churn = s.mnt.join("churn");
            fs::create_dir(&churn).unwrap();
            for i in 0..CHURN {
                fs::write(churn.join(i.to_string()), "x").unwrap();
            }
            fs::remove_dir_all(&churn).unwrap();
        }
        let t = Instant::now();
        drop_caches();
        dropping += t.elapsed();
        // FORGETs are queued by the kernel as it evicts; give the daemon a moment for them.
        thread::sleep(Duration::from_millis(200));
        let rss = status_kib(pid, "VmRSS");
        rss_max = rss_max.max(rss);
        per_cycle_rss.push(rss);
        if cycle == 0 {
            (rss_first, fds_first) = (rss, open_fds(pid));
        }
    }
    let elapsed = start.elapsed();
    let (rss_last, hwm, fds_last) = (
        status_kib(pid, "VmRSS"),
        status_kib(pid, "VmHWM"),
        open_fds(pid),
    );
    eprintln!(
        "{} lookups in {cycles} cycles, {elapsed:.1?} ({:.0} lookups/s; drop_caches took \
         {dropping:.1?}); \
         RSS KiB: mounted {rss_start}, after cycle 1 {rss_first}, max {rss_max}, last \
         {rss_last}, VmHWM {hwm}; fds {fds_first} -> {fds_last}; RSS per cycle {per_cycle_rss:?}",
        cycles * per_cycle,
        (cycles * per_cycle) as f64 / elapsed.as_secs_f64()
    );
    let log = daemon.stop();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
    assert!(
        rss_last <= rss_first + RSS_SLACK_KIB,
        "the daemon grew from {rss_first} KiB to {rss_last} KiB over {cycles} cycles"
    );
    assert!(
        fds_last <= fds_first + 2,
        "the daemon's open fds grew from {fds_first} to {fds_last}: pins or handles leak"
    );
}

/// The engine alone: after every cycle of lookups and forgets (of files, and of the
/// directories the lookups went through) the node table holds the root alone again.
#[test]
fn engine_node_table_returns_to_the_root_after_forgets() {
    use std::ffi::OsStr;
    use unionmount::union::inode::ROOT;

    const FILES: usize = 2000;
    let s = Stack::new(&[""]);
    let dir = s.lowers[0].join("d");
    fs::create_dir(&dir).unwrap();
    for f in 0..FILES {
        fs::write(dir.join(format!("f{f}")), "").unwrap();
    }
    let u = s.union();
    let cycles = lookups().div_ceil(FILES as u64);
    let start = Instant::now();
    for _ in 0..cycles {
        let d = u.lookup(ROOT, OsStr::new("d")).unwrap().ino;
        let names: Vec<String> = (0..FILES).map(|f| format!("f{f}")).collect();
        let inos: Vec<u64> = names
            .iter()
            .map(|n| u.lookup(d, OsStr::new(n)).unwrap().ino)
            .collect();
        assert_eq!(u.node_count(), FILES + 2);
        for ino in inos {
            u.forget(ino, 1);
        }
        u.forget(d, 1);
        assert_eq!(
            u.node_count(),
            1,
            "nodes left after every lookup was forgotten"
        );
    }
    eprintln!(
        "engine: {} lookups and forgets in {:.1?}",
        cycles * FILES as u64,
        start.elapsed()
    );
}
