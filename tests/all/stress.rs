//! Concurrency stress: many threads run random namespace and data operations on overlapping
//! names of a small tree over a two-lower stack, through a real mount and directly on the
//! engine, for a bounded time; then the final state is checked for consistency.
//!
//! Invariants checked: no operation fails with an errno outside the ones a racing caller must
//! expect (ENOENT, EEXIST, ENOTEMPTY, ENOTDIR, EISDIR, EXDEV, EINVAL, ENODATA, ELOOP from random symlinks...) - EIO, ESTALE,
//! ENOTCONN are failures; no worker of the FUSE session panics (a panic hook counts panics on
//! fuser's `fuser-*` threads, which would otherwise die silently); workers keep making
//! progress (a watchdog fails the test, after detaching the mount, if none completes an
//! operation for `WATCHDOG`); afterwards every listed name can be stat'ed and every probe
//! name that can be stat'ed is listed, st_ino is unique except for hard links whose nlink
//! equals the names found, no `.wh.*` or staging name shows, the workdir holds no leftover,
//! the lowers are unchanged, and the upper reads the same through a fresh unionmount and
//! through kernel overlayfs. The engine run also checks that the node table returns to the
//! root alone once every lookup is forgotten.
//!
//! `UNIONMOUNT_STRESS_SECS=N` runs each stress for N seconds (default `DEFAULT_SECS`);
//! `UNIONMOUNT_STRESS_THREADS=N` sets the number of workers (default `DEFAULT_THREADS`).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use rustix::fs::RenameFlags;
use rustix::io::Errno;

use crate::fixture::{Stack, dump};
use crate::mounted::{KernelMount, UnionMount, detach, overlay_available};

mod engine;

/// Seconds each stress runs by default.
const DEFAULT_SECS: u64 = 10;
/// Workers by default: more than the CPUs and the FUSE workers, so requests queue up.
const DEFAULT_THREADS: usize = 12;
/// No operation completing for this long means a deadlock (generous: debug build, loaded CI).
const WATCHDOG: Duration = Duration::from_secs(120);

/// Lower layers: top first. Names overlap across layers so lookups merge and copy-ups race.
const LOWERS: [&str; 2] = [
    "d x\nf x/a top-a\nf b top-b\nd y\nf y/c top-yc\nl s x/a\nx b user.k lower\nd x/z\nf x/z/a deep",
    "d x\nf x/b low-b\nf x/c low-c\nf a low-a\nd y\nf y/a low-ya\nd d\nf d/a da\nm x/c 600",
];
const DIRS: [&str; 6] = ["", "x", "y", "d", "x/z", "y/d"];
const NAMES: [&str; 4] = ["a", "b", "c", "d"];
const DATA: [&[u8]; 4] = [b"", b"1", b"twenty-two bytes long.", b"0123456789abcdef"];

/// Errnos any racing caller must be ready for.
const EXPECTED: [Errno; 12] = [
    Errno::LOOP,
    Errno::NOENT,
    Errno::EXIST,
    Errno::NOTEMPTY,
    Errno::NOTDIR,
    Errno::ISDIR,
    Errno::XDEV,
    Errno::INVAL,
    Errno::NODATA,
    Errno::PERM,
    Errno::MLINK,
    Errno::BUSY,
];

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?}: not a number"))
        })
        .unwrap_or(default)
}

fn duration() -> Duration {
    Duration::from_secs(env_u64("UNIONMOUNT_STRESS_SECS", DEFAULT_SECS))
}

fn threads() -> usize {
    env_u64("UNIONMOUNT_STRESS_THREADS", DEFAULT_THREADS as u64) as usize
}

/// xorshift64*: deterministic per worker, so a run's mix is reproducible in kind.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }

    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }

    fn path(&mut self) -> String {
        let dir = self.pick(&DIRS);
        let name = self.pick(&NAMES);
        if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        }
    }
}

/// Panics on fuser's worker threads since the hook was installed: fuser only reports them
/// when its session is joined, and a dead non-first worker is not reported at all.
static FUSER_PANICS: AtomicUsize = AtomicUsize::new(0);

/// Installs (once) a panic hook counting panics on fuser's threads, then chaining to the
/// previous hook so the message is still printed.
pub fn count_fuser_panics() -> usize {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if thread::current()
                .name()
                .is_some_and(|n| n.starts_with("fuser-"))
            {
                FUSER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            prev(info);
        }));
    });
    FUSER_PANICS.load(Ordering::SeqCst)
}

/// What the workers saw: counts per operation and errno, and the unexpected outcomes.
#[derive(Default)]
struct Tally {
    counts: Mutex<BTreeMap<String, u64>>,
    unexpected: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, op: &str, what: &str, r: Result<(), Errno>) {
        let key = match r {
            Ok(()) => format!("{op} ok"),
            Err(e) => format!("{op} errno {}", e.raw_os_error()),
        };
        *self.counts.lock().unwrap().entry(key).or_default() += 1;
        if let Err(e) = r
            && !EXPECTED.contains(&e)
        {
            self.unexpected
                .lock()
                .unwrap()
                .push(format!("{op} {what}: {e}"));
        }
    }

    fn check(&self, label: &str) -> u64 {
        let counts = self.counts.lock().unwrap();
        let total: u64 = counts.values().sum();
        eprintln!("{label}: {total} operations");
        for (k, n) in counts.iter() {
            eprintln!("  {k}: {n}");
        }
        let unexpected = self.unexpected.lock().unwrap();
        assert!(
            unexpected.is_empty(),
            "{label}: {} unexpected errors, first ones:\n{}",
            unexpected.len(),
            unexpected[..unexpected.len().min(20)].join("\n")
        );
        total
    }
}

/// One random operation through the mount at `root`.
fn mounted_op(root: &Path, rng: &mut Rng, tally: &Tally) {
    let p = rng.path();
    let q = rng.path();
    let (a, b) = (root.join(&p), root.join(&q));
    let what = format!("{p} {q}");
    let data = rng.pick(&DATA);
    let (op, r): (&str, Result<(), Errno>) = match rng.below(20) {
        0 => ("create", io(fs::write(&a, data))),
        1 => ("append", {
            io(fs::OpenOptions::new()
                .append(true)
                .open(&a)
                .and_then(|mut f| f.write_all(data)))
        }),
        2 => ("read", {
            io(fs::File::open(&a).and_then(|mut f| f.read_to_end(&mut Vec::new()).map(drop)))
        }),
        3 => ("unlink", io(fs::remove_file(&a))),
        4 => ("rename", io(fs::rename(&a, &b))),
        5 => ("rename-noreplace", rename2(&a, &b, RenameFlags::NOREPLACE)),
        6 => ("rename-exchange", rename2(&a, &b, RenameFlags::EXCHANGE)),
        7 | 8 => ("mkdir", io(fs::create_dir(&a))),
        9 => ("rmdir", io(fs::remove_dir(&a))),
        10 => ("link", io(fs::hard_link(&a, &b))),
        11 => ("symlink", io(std::os::unix::fs::symlink(&q, &a))),
        12 => ("chmod", {
            let mode = rng.pick(&[0o644, 0o600, 0o755, 0o700]);
            io(fs::set_permissions(&a, fs::Permissions::from_mode(mode)))
        }),
        13 => ("setxattr", {
            rustix::fs::lsetxattr(&a, "user.k", data, rustix::fs::XattrFlags::empty())
        }),
        14 => ("getxattr", {
            rustix::fs::lgetxattr(&a, "user.k", &mut [0u8; 64][..]).map(drop)
        }),
        15 | 16 => ("readdir", list_and_stat(&root.join(rng.pick(&DIRS)))),
        17 => ("truncate", {
            io(fs::OpenOptions::new()
                .write(true)
                .open(&a)
                .and_then(|f| f.set_len(data.len() as u64)))
        }),
        18 => ("stat", io(fs::symlink_metadata(&a).map(drop))),
        _ => ("rm-tree", io(fs::remove_dir_all(&a))),
    };
    tally.record(op, &what, r);
}

fn rename2(a: &Path, b: &Path, flags: RenameFlags) -> Result<(), Errno> {
    rustix::fs::renameat_with(rustix::fs::CWD, a, rustix::fs::CWD, b, flags)
}

/// Lists `dir` and stats every entry; a name vanishing between the two is a race, not an
/// error.
fn list_and_stat(dir: &Path) -> Result<(), Errno> {
    for e in io(fs::read_dir(dir))? {
        let e = io(e)?;
        match fs::symlink_metadata(e.path()) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            r => io(r.map(drop))?,
        }
    }
    Ok(())
}

fn io<T>(r: std::io::Result<T>) -> Result<T, Errno> {
    r.map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))
}

/// Runs `threads()` workers calling `op` until `duration()` is over and returns the number
/// of operations done. Workers are detached threads, not scoped ones: when none completes an
/// operation for `WATCHDOG`, `on_hang` runs (it detaches the mount so that the harness's
/// unmount does not wait for the stuck session) and the test fails without joining them.
fn run_workers(op: Arc<dyn Fn(&mut Rng) + Send + Sync>, on_hang: impl FnOnce()) -> u64 {
    let done = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicUsize::new(threads()));
    let end = Instant::now() + duration();
    for t in 0..threads() {
        let (op, done, running) = (op.clone(), done.clone(), running.clone());
        thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) * 0x1000_0001));
            while Instant::now() < end {
                op(&mut rng);
                done.fetch_add(1, Ordering::Relaxed);
            }
            // What the operation holds (a union) is released before the caller goes on.
            drop(op);
            running.fetch_sub(1, Ordering::SeqCst);
        });
    }
    let (mut last, mut since) = (0, Instant::now());
    while running.load(Ordering::SeqCst) > 0 {
        thread::sleep(Duration::from_millis(100));
        let now = done.load(Ordering::Relaxed);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() > WATCHDOG {
            on_hang();
            panic!(
                "{} workers made no progress for {WATCHDOG:?} (after {now} operations): deadlock",
                running.load(Ordering::SeqCst)
            );
        }
    }
    done.load(Ordering::Relaxed)
}

/// Every object under the mount at `root` by union path, checked on the way: each listed
/// name can be stat'ed and is neither a marker nor a staging name; st_ino is unique except
/// for the names of one hard-linked file, whose nlink counts them; each probe name that can
/// be stat'ed is listed.
pub fn check_tree(root: &Path) -> BTreeMap<String, fs::Metadata> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![String::new()];
    while let Some(dir) = dirs.pop() {
        let list = fs::read_dir(root.join(&dir)).unwrap_or_else(|e| panic!("listing {dir:?}: {e}"));
        for e in list {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(
                !name.starts_with(".wh.") && !name.starts_with("#um"),
                "{dir}/{name}: a marker or staging name is visible"
            );
            let rel = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            let md = fs::symlink_metadata(root.join(&rel))
                .unwrap_or_else(|e| panic!("{rel} is listed but stat fails: {e}"));
            if md.is_dir() {
                dirs.push(rel.clone());
            }
            found.insert(rel, md);
        }
    }
    let mut by_ino: HashMap<u64, Vec<&str>> = HashMap::new();
    for (rel, md) in &found {
        by_ino.entry(md.ino()).or_default().push(rel);
    }
    for (ino, names) in &by_ino {
        let md = &found[names[0]];
        if md.is_dir() {
            assert_eq!(names.len(), 1, "directories share st_ino {ino}: {names:?}");
        } else {
            assert_eq!(
                md.nlink(),
                names.len() as u64,
                "st_ino {ino}: nlink {} but names {names:?}",
                md.nlink()
            );
        }
    }
    let probes = DIRS
        .iter()
        .flat_map(|d| NAMES.iter().map(move |n| Path::new(d).join(n)));
    for p in probes {
        let rel = p.to_str().unwrap();
        if fs::symlink_metadata(root.join(rel)).is_ok() {
            assert!(
                found.contains_key(rel),
                "{rel} can be stat'ed but is not listed"
            );
        }
    }
    found
}

/// After unmounting: the workdir holds nothing but (at most) the shared whiteout.
fn check_workdir(work: &Path) {
    let left: Vec<String> = fs::read_dir(work.join("work"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "whiteout")
        .collect();
    assert!(left.is_empty(), "leftovers in the workdir: {left:?}");
}

/// The merged view of `stack`'s layers through a fresh mount (unionmount, or kernel overlayfs
/// when `kernel`), checked by `check_tree`, as a `dump`.
fn fresh_view(stack: &Stack, kernel: bool) -> String {
    let tmp = tempfile::tempdir_in(crate::fixture::test_root()).unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let again = Stack {
        tmp,
        lowers: stack.lowers.clone(),
        upper: stack.upper.clone(),
        work: stack.work.clone(),
        mnt,
    };
    if kernel {
        let k = KernelMount::mount(again);
        check_tree(k.mnt());
        dump(k.mnt())
    } else {
        let u = UnionMount::mount(again);
        check_tree(u.mnt());
        dump(u.mnt())
    }
}

/// The layers after a stress: workdir empty, lowers as they were, and the same merged view
/// through `seen` (if given), a fresh unionmount and kernel overlayfs.
fn check_layers(stack: &Stack, lowers: &[String], seen: Option<&str>) {
    check_workdir(&stack.work);
    assert_eq!(stack.lowers_dump(), lowers, "a lower was modified");
    let fresh = fresh_view(stack, false);
    if let Some(seen) = seen {
        assert_eq!(seen, fresh, "the stressed mount and a fresh one differ");
    }
    let kernel = fresh_view(stack, true);
    assert_eq!(
        fresh, kernel,
        "unionmount and kernel overlayfs read the upper differently"
    );
    eprintln!("final tree: {} objects", fresh.lines().count());
}

#[test]
fn mounted_stress_keeps_the_union_consistent() {
    if !overlay_available() {
        return;
    }
    let panics = count_fuser_panics();
    let stack = Stack::new(&LOWERS);
    let lowers = stack.lowers_dump();
    let mut m = UnionMount::mount(stack);
    let root = m.mnt().to_path_buf();
    let tally = Arc::new(Tally::default());
    let op = {
        let (root, tally) = (root.clone(), tally.clone());
        Arc::new(move |rng: &mut Rng| mounted_op(&root, rng, &tally))
    };
    let start = Instant::now();
    run_workers(op, || detach(&root));
    let n = tally.check("mounted stress");
    eprintln!(
        "{n} operations by {} threads in {:.1?}",
        threads(),
        start.elapsed()
    );
    check_tree(&root);
    let seen = dump(&root);
    m.unmount();
    assert_eq!(
        count_fuser_panics(),
        panics,
        "a FUSE worker thread panicked (see the message above)"
    );
    check_layers(&m.stack, &lowers, Some(&seen));
}
