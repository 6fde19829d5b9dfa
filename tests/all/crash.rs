//! Crash consistency of the real daemon: `unionmount -f` killed with SIGKILL while workers copy
//! up large files, rename files and directories (over existing targets), delete (whiteouts) and
//! replace merged directories (`rm -rf` then `mkdir`: an opaque directory) through the mount.
//!
//! After each kill the dead mount is detached and a fresh daemon mounts the same lowers, upper
//! and workdir. Invariants, checked every iteration:
//! - each worker's subtree is the state before or after the operation in flight (a model replays
//!   the worker's script): copied-up files equal their lower exactly, never truncated;
//! - nothing staged is visible, in the merged view or in the upper, and `WORKDIR/work` is empty
//!   right after the remount (stale staging is cleared at mount, as the kernel does);
//! - the upper is well-formed: kernel overlayfs mounts it and shows the same merged view;
//! - the lowers are byte-for-byte unchanged.
//!
//! Each iteration's script and kill moment come from a seed, so a failure names the seed and
//! replays with `UNIONMOUNT_CRASH_SEED=S` (which OS scheduling makes close, not exact).
//! `UNIONMOUNT_CRASH_ITERATIONS=N` runs N kills instead of the default [`DEFAULT_ITERATIONS`].

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rustix::mount::UnmountFlags;
use rustix::process::{Pid, Signal};

use crate::cli::{
    Foreground, can_mount, exited, is_mounted, kernel_overlay, spawn_foreground, unmount_command,
    wait_for,
};
use crate::fixture::{Stack, dump};
use crate::random::Rng;

/// Kills per run by default: enough to land in each kind of operation, about a minute.
const DEFAULT_ITERATIONS: u64 = 24;
const WORKERS: usize = 3;
/// Size of each worker's large lower file: big enough that a copy-up takes a while.
const BIG: usize = 12 << 20;
/// Files in each worker's wide lower directory: emptying it leaves that many whiteouts.
const WIDE: usize = 200;
/// Primitive operations per worker script (a directory replacement counts each unlink).
const SCRIPT_LEN: usize = 40;

// ---------------------------------------------------------------------------------------
// Stale staging is cleared at mount
// ---------------------------------------------------------------------------------------

#[test]
fn mount_clears_stale_staging_in_work_without_following_symlinks() {
    let s = Stack::new(&["f a lower"]);
    let outside = s.tmp.path().join("outside");
    crate::fixture::build(&outside, "f keep kept\nd dir\nf dir/also kept");
    let work = s.work.join("work");
    // What a killed daemon leaves: a half-copied file, a staged tree (one of its directories
    // unreadable by mode), a whiteout, and symlinks that point out of the workdir.
    crate::fixture::build(
        &work,
        "f #um0.1 partial\nd #um1.1/sub/deeper\nf #um1.1/sub/deeper/x x\nm #um1.1/sub 0\nw whiteout",
    );
    std::os::unix::fs::symlink(&outside, work.join("#um2.1")).unwrap();
    std::os::unix::fs::symlink(outside.join("dir"), work.join("#um1.1/link")).unwrap();
    fs::write(s.work.join("beside-work"), "not ours").unwrap();
    let (lowers, outside_before) = (s.lowers_dump(), dump(&outside));

    let u = s.union();
    let left: Vec<_> = fs::read_dir(&work).unwrap().flatten().collect();
    assert!(
        left.is_empty(),
        "stale staging survived the mount: {left:?}"
    );
    assert_eq!(dump(&outside), outside_before, "cleanup followed a symlink");
    assert_eq!(
        fs::read_to_string(s.work.join("beside-work")).unwrap(),
        "not ours",
        "cleanup reached outside WORKDIR/work"
    );
    assert_eq!(s.lowers_dump(), lowers);
    assert_eq!(crate::ops::cat(&u, "a"), "lower");
}

// ---------------------------------------------------------------------------------------
// The model of one worker's subtree
// ---------------------------------------------------------------------------------------

/// A seeded choice from `v`, `None` when it is empty.
fn choose<'a, T>(rng: &mut Rng, v: &'a [T]) -> Option<&'a T> {
    (!v.is_empty()).then(|| &v[rng.below(v.len())])
}

/// One object of a worker's subtree. `pure` directories were made by the script (nothing
/// below merges into them), so renaming them is allowed; lower directories give EXDEV.
#[derive(Clone, Debug, PartialEq)]
enum Obj {
    Dir { pure: bool },
    File { content: usize, mode: u32 },
}

/// A worker's subtree: path relative to the worker's directory -> object.
type State = BTreeMap<String, Obj>;

/// Primitive operations, each one syscall through the mount.
#[derive(Clone, Debug)]
enum Op {
    /// chmod: a copy-up with data.
    Chmod(String, u32),
    /// open for writing, then close: a copy-up with data and nothing changed.
    OpenWrite(String),
    Rename(String, String),
    Unlink(String),
    Rmdir(String),
    Mkdir(String),
}

fn parent_of(p: &str) -> Option<&str> {
    p.rsplit_once('/').map(|(d, _)| d)
}

fn apply(st: &State, op: &Op) -> State {
    let mut st = st.clone();
    match op {
        Op::Chmod(p, m) => {
            if let Some(Obj::File { mode, .. }) = st.get_mut(p) {
                *mode = *m;
            }
        }
        Op::OpenWrite(_) => {}
        Op::Rename(from, to) => {
            let moved: Vec<(String, Obj)> = st
                .iter()
                .filter(|(k, _)| *k == from || k.starts_with(&format!("{from}/")))
                .map(|(k, v)| (format!("{to}{}", &k[from.len()..]), v.clone()))
                .collect();
            st.retain(|k, _| !(k == from || k.starts_with(&format!("{from}/")) || k == to));
            st.extend(moved);
        }
        Op::Unlink(p) | Op::Rmdir(p) => {
            st.remove(p);
        }
        Op::Mkdir(p) => {
            st.insert(p.clone(), Obj::Dir { pure: true });
        }
    }
    st
}

fn children<'a>(st: &'a State, dir: &str) -> Vec<&'a String> {
    st.keys().filter(|k| parent_of(k) == Some(dir)).collect()
}

/// Names at the top of a worker's directory that scripts may create.
const TOP_NAMES: [&str; 10] = [
    "big", "f0", "f1", "f2", "f3", "n0", "n1", "n2", "d0", "wide",
];

/// A random script from `st`: every operation valid in the state it runs in (so any error
/// before the kill is a bug), the first one a copy-up of the large file.
fn script(rng: &mut Rng, start: &State) -> Vec<Op> {
    let mut st = start.clone();
    let mut ops = vec![if rng.below(2) == 0 {
        Op::Chmod("big".into(), 0o640)
    } else {
        Op::OpenWrite("big".into())
    }];
    st = apply(&st, &ops[0]);
    while ops.len() < SCRIPT_LEN {
        let files: Vec<String> = st
            .iter()
            .filter(|(_, o)| matches!(o, Obj::File { .. }))
            .map(|(k, _)| k.clone())
            .collect();
        let dirs: Vec<String> = st
            .iter()
            .filter(|(_, o)| matches!(o, Obj::Dir { .. }))
            .map(|(k, _)| k.clone())
            .collect();
        let absent: Vec<String> = TOP_NAMES
            .iter()
            .filter(|n| !st.contains_key(**n))
            .map(|n| n.to_string())
            .collect();
        let mut new = Vec::new();
        match rng.below(8) {
            0 => {
                if let Some(f) = choose(rng, &files) {
                    let mode = rng.pick(&[0o600, 0o640, 0o604, 0o700]);
                    new.push(Op::Chmod(f.clone(), mode));
                }
            }
            1 => {
                if let Some(f) = choose(rng, &files) {
                    new.push(Op::OpenWrite(f.clone()));
                }
            }
            2 => {
                // A file moves onto a new name or over another file, maybe into a directory.
                let (Some(f), Some(dir)) = (choose(rng, &files), choose(rng, &dirs)) else {
                    continue;
                };
                let name = ["x0", "x1", "y0"][rng.below(3)];
                let to = if rng.below(2) == 0 {
                    format!("{dir}/{name}")
                } else {
                    TOP_NAMES[rng.below(TOP_NAMES.len())].to_string()
                };
                if to != *f && !matches!(st.get(&to), Some(Obj::Dir { .. })) {
                    new.push(Op::Rename(f.clone(), to));
                }
            }
            3 => {
                if let Some(f) = choose(rng, &files) {
                    new.push(Op::Unlink(f.clone()));
                }
            }
            4 | 5 => {
                // rm -rf of a directory, usually made again: the new one is opaque.
                if let Some(d) = choose(rng, &dirs) {
                    for c in children(&st, d) {
                        new.push(Op::Unlink(c.clone()));
                    }
                    if rng.below(3) > 0 {
                        new.push(Op::Rmdir(d.clone()));
                        if rng.below(4) > 0 {
                            new.push(Op::Mkdir(d.clone()));
                        }
                    }
                }
            }
            6 => {
                if let Some(n) = choose(rng, &absent) {
                    new.push(Op::Mkdir(n.clone()));
                }
            }
            _ => {
                // A directory the script made moves to a free name or over an empty
                // directory (maybe a merged one whose entries are all whited out).
                let pure: Vec<&String> = dirs
                    .iter()
                    .filter(|d| st.get(*d) == Some(&Obj::Dir { pure: true }))
                    .collect();
                let Some(src) = choose(rng, &pure) else {
                    continue;
                };
                let targets: Vec<String> = TOP_NAMES
                    .iter()
                    .map(|n| n.to_string())
                    .filter(|n| n != *src)
                    .filter(|n| match st.get(n) {
                        None => true,
                        Some(Obj::Dir { .. }) => children(&st, n).is_empty(),
                        Some(Obj::File { .. }) => false,
                    })
                    .collect();
                if let Some(to) = choose(rng, &targets) {
                    new.push(Op::Rename((*src).clone(), to.clone()));
                }
            }
        }
        for op in new {
            st = apply(&st, &op);
            ops.push(op);
        }
    }
    ops
}

/// The lower contents every model state refers to by index.
struct Lower {
    contents: Vec<Vec<u8>>,
    /// Each worker's subtree as the lowers show it.
    start: Vec<State>,
}

/// Writes the lowers: per worker (directory `wN`) a large file, small files, a directory
/// merged across both lowers, and a wide directory in the bottom lower.
fn build_lowers(s: &Stack, rng: &mut Rng) -> Lower {
    let mut contents = Vec::new();
    let mut starts = Vec::new();
    let (top, bottom) = (&s.lowers[0], &s.lowers[1]);
    for w in 0..WORKERS {
        let mut st = State::new();
        let mut file = |layer: &Path, rel: &str, data: Vec<u8>| {
            let p = layer.join(format!("w{w}/{rel}"));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, &data).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
            let content = contents.len();
            contents.push(data);
            st.insert(
                rel.to_string(),
                Obj::File {
                    content,
                    mode: 0o644,
                },
            );
        };
        let mut big = vec![0u8; BIG];
        for chunk in big.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next().to_le_bytes());
        }
        file(top, "big", big);
        for i in 0..4 {
            file(top, &format!("f{i}"), format!("w{w} f{i}").into_bytes());
        }
        file(top, "d0/x0", format!("w{w} d0/x0 top").into_bytes());
        file(bottom, "d0/x1", format!("w{w} d0/x1 bottom").into_bytes());
        for i in 0..WIDE {
            file(
                bottom,
                &format!("wide/y{i}"),
                format!("w{w} {i}").into_bytes(),
            );
        }
        st.insert("d0".into(), Obj::Dir { pure: false });
        st.insert("wide".into(), Obj::Dir { pure: false });
        starts.push(st);
    }
    Lower {
        contents,
        start: starts,
    }
}

// ---------------------------------------------------------------------------------------
// What a tree shows
// ---------------------------------------------------------------------------------------

/// One object as seen on disk or through a mount.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Dir,
    File { mode: u32, data: Vec<u8> },
    Whiteout,
    Other(String),
}

/// Every object under `root`, by relative path.
fn snapshot(root: &Path) -> BTreeMap<String, Seen> {
    let mut out = BTreeMap::new();
    snapshot_into(root, root, &mut out);
    out
}

fn snapshot_into(root: &Path, dir: &Path, out: &mut BTreeMap<String, Seen>) {
    let rd = fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
    for e in rd {
        let p = e.unwrap().path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let seen = if ft.is_dir() {
            snapshot_into(root, &p, out);
            Seen::Dir
        } else if ft.is_file() {
            let data = fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            Seen::File {
                mode: md.mode() & 0o7777,
                data,
            }
        } else if ft.is_char_device() && md.rdev() == 0 {
            Seen::Whiteout
        } else {
            Seen::Other(format!("{ft:?}"))
        };
        out.insert(rel, seen);
    }
}

/// Why `seen` (one worker's subtree) is not `model`, or `None` if it is.
fn mismatch(model: &State, seen: &BTreeMap<String, Seen>, lower: &Lower) -> Option<String> {
    let mut why = Vec::new();
    for (path, obj) in model {
        match (obj, seen.get(path)) {
            (Obj::Dir { .. }, Some(Seen::Dir)) => {}
            (Obj::File { content, mode }, Some(Seen::File { mode: m, data })) => {
                let want = &lower.contents[*content];
                if data != want {
                    why.push(format!(
                        "{path}: {} bytes, want {} bytes{}",
                        data.len(),
                        want.len(),
                        if want.starts_with(data) {
                            " (truncated)"
                        } else {
                            ""
                        }
                    ));
                } else if mode != m {
                    why.push(format!("{path}: mode {m:o}, want {mode:o}"));
                }
            }
            (_, got) => why.push(format!("{path}: {got:?}, want {obj:?}")),
        }
    }
    for path in seen.keys().filter(|p| !model.contains_key(*p)) {
        why.push(format!("{path}: present, want absent"));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// The part of a merged snapshot under worker `w`'s directory, relative to it.
fn worker_view(all: &BTreeMap<String, Seen>, w: usize) -> BTreeMap<String, Seen> {
    let prefix = format!("w{w}/");
    all.iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), v.clone())))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Workers and the daemon
// ---------------------------------------------------------------------------------------

fn run_op(root: &Path, op: &Op) -> std::io::Result<()> {
    match op {
        Op::Chmod(p, m) => fs::set_permissions(root.join(p), fs::Permissions::from_mode(*m)),
        Op::OpenWrite(p) => fs::OpenOptions::new()
            .write(true)
            .open(root.join(p))
            .map(drop),
        Op::Rename(a, b) => fs::rename(root.join(a), root.join(b)),
        Op::Unlink(p) => fs::remove_file(root.join(p)),
        Op::Rmdir(p) => fs::remove_dir(root.join(p)),
        Op::Mkdir(p) => fs::create_dir(root.join(p)),
    }
}

/// A worker's progress: operations completed, and the first error seen before the kill.
#[derive(Default)]
struct Progress {
    done: AtomicUsize,
    finished: AtomicBool,
    error: parking_lot::Mutex<Option<String>>,
}

/// Runs `ops` under `root` until one fails; an error while `killing` is unset is a bug.
fn worker(root: PathBuf, ops: Vec<Op>, progress: Arc<Progress>, killing: Arc<AtomicBool>) {
    for (i, op) in ops.iter().enumerate() {
        if let Err(e) = run_op(&root, op) {
            // Once the kill is under way any error can be the dead connection's (ENOTCONN,
            // ECONNABORTED; EIO for a request cut short); before it, every error is a bug.
            if !killing.load(Ordering::SeqCst) {
                *progress.error.lock() = Some(format!("op {i} {op:?}: {e}"));
            }
            break;
        }
        progress.done.store(i + 1, Ordering::SeqCst);
    }
    progress.finished.store(true, Ordering::SeqCst);
}

/// Layers of one iteration, as arguments of `unionmount -f`.
struct Layers {
    lowers: String,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

impl Layers {
    fn start(&self) -> Foreground {
        spawn_foreground(
            &[
                &"--workdir",
                &self.work,
                &self.lowers,
                &self.upper,
                &self.mnt,
            ],
            &self.mnt,
        )
    }
}

/// SIGKILLs the daemon and detaches its dead mount (what `umount -l` does).
fn kill9(mut fg: Foreground, mnt: &Path) {
    let pid = Pid::from_raw(fg.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, Signal::KILL).expect("SIGKILL the daemon");
    fg.child.wait().expect("reap the daemon");
    rustix::mount::unmount(mnt, UnmountFlags::DETACH).expect("detach the dead mount");
    assert!(!is_mounted(mnt));
}

/// Unmounts a live daemon and waits for it to exit.
fn unmount(mut fg: Foreground, mnt: &Path) {
    let status = unmount_command(mnt)
        .status()
        .expect("run the unmount command");
    assert!(status.success(), "unmount {}: {status}", mnt.display());
    let pid = fg.child.id();
    wait_for("the daemon to exit after unmount", || {
        exited(pid) || fg.child.try_wait().ok().flatten().is_some()
    });
}

fn iterations() -> u64 {
    std::env::var("UNIONMOUNT_CRASH_ITERATIONS")
        .ok()
        .map(|v| v.parse().expect("UNIONMOUNT_CRASH_ITERATIONS: a number"))
        .unwrap_or(DEFAULT_ITERATIONS)
}

fn base_seed() -> u64 {
    std::env::var("UNIONMOUNT_CRASH_SEED")
        .ok()
        .map(|v| v.parse().expect("UNIONMOUNT_CRASH_SEED: a number"))
        .unwrap_or(0x5eed)
}

/// Counts across iterations, printed at the end (`--nocapture` shows them).
#[derive(Default, Debug)]
struct Stats {
    kills_mid_script: u64,
    ops_done: u64,
    stale_staging: u64,
    states_new: u64,
}

#[test]
fn sigkill_during_copy_up_rename_delete_and_replace_leaves_old_or_new() {
    if !can_mount() || !crate::mounted::overlay_available() {
        return;
    }
    let started = Instant::now();
    let s = Stack::new(&["", ""]);
    let mut rng = Rng(base_seed());
    let lower = build_lowers(&s, &mut rng);
    let lowers_before = s.lowers_dump();
    let mut stats = Stats::default();
    let n = iterations();
    for it in 0..n {
        let seed = base_seed().wrapping_add(it.wrapping_mul(0x1_0000_0001));
        crash_once(&s, &lower, seed, it, &mut stats);
    }
    assert_eq!(s.lowers_dump(), lowers_before, "a lower layer was modified");
    eprintln!("crash: {n} kills in {:?}: {stats:?}", started.elapsed());
}

/// One iteration: fresh upper and workdir, workers, SIGKILL at a seeded moment, remount, check.
fn crash_once(s: &Stack, lower: &Lower, seed: u64, it: u64, stats: &mut Stats) {
    let mut rng = Rng(seed);
    let dir = s.tmp.path().join(format!("it{it}"));
    let layers = Layers {
        lowers: format!("{}:{}", s.lowers[0].display(), s.lowers[1].display()),
        upper: dir.join("upper"),
        work: dir.join("work"),
        mnt: dir.join("mnt"),
    };
    for d in [&layers.upper, &layers.work, &layers.mnt] {
        fs::create_dir_all(d).unwrap();
    }
    let scripts: Vec<Vec<Op>> = lower.start.iter().map(|st| script(&mut rng, st)).collect();
    let delay = Duration::from_millis(rng.below(400) as u64);
    let ctx = format!("seed {seed} (iteration {it}, kill after {delay:?})");

    let fg = layers.start();
    let killing = Arc::new(AtomicBool::new(false));
    let progress: Vec<Arc<Progress>> = (0..WORKERS).map(|_| Arc::default()).collect();
    let handles: Vec<_> = scripts
        .iter()
        .enumerate()
        .map(|(w, ops)| {
            let (root, ops) = (layers.mnt.join(format!("w{w}")), ops.clone());
            let (p, k) = (progress[w].clone(), killing.clone());
            thread::spawn(move || worker(root, ops, p, k))
        })
        .collect();
    thread::sleep(delay);
    killing.store(true, Ordering::SeqCst);
    kill9(fg, &layers.mnt);
    wait_for("the workers to see the dead mount", || {
        progress.iter().all(|p| p.finished.load(Ordering::SeqCst))
    });
    for h in handles {
        h.join().expect("worker panicked");
    }
    for (w, p) in progress.iter().enumerate() {
        if let Some(e) = p.error.lock().take() {
            panic!("{ctx}: worker {w} failed before the kill: {e}");
        }
    }
    let staged = fs::read_dir(layers.work.join("work"))
        .map(|rd| rd.flatten().filter(|e| e.file_name() != "whiteout").count())
        .unwrap_or(0);
    stats.stale_staging += u64::from(staged > 0);

    // A fresh daemon on the same layers.
    let fg = layers.start();
    let left: Vec<_> = fs::read_dir(layers.work.join("work"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "{ctx}: WORKDIR/work not cleared at mount: {left:?}"
    );
    let merged = snapshot(&layers.mnt);
    for (w, ops) in scripts.iter().enumerate() {
        let done = progress[w].done.load(Ordering::SeqCst);
        stats.ops_done += done as u64;
        stats.kills_mid_script += u64::from(done < ops.len());
        let seen = worker_view(&merged, w);
        let old = ops[..done]
            .iter()
            .fold(lower.start[w].clone(), |st, op| apply(&st, op));
        let Some(why_old) = mismatch(&old, &seen, lower) else {
            continue;
        };
        let in_flight = ops.get(done);
        let why_new = match in_flight {
            Some(op) => match mismatch(&apply(&old, op), &seen, lower) {
                None => {
                    stats.states_new += 1;
                    continue;
                }
                Some(why) => why,
            },
            None => "no operation was in flight".into(),
        };
        panic!(
            "{ctx}: worker {w} after {done} ops shows neither the old nor the new state of \
             {in_flight:?}\n  vs old: {why_old}\n  vs new: {why_new}\nupper:\n{}",
            dump(&layers.upper.join(format!("w{w}")))
        );
    }
    check_upper(&layers.upper, &merged, &ctx);
    unmount(fg, &layers.mnt);

    // The upper and workdir are kernel overlayfs' format: it shows the same merged view.
    let kmnt = dir.join("kernel");
    fs::create_dir(&kmnt).unwrap();
    let Some(kernel) = kernel_overlay(&s.lowers, &layers.upper, &layers.work, &kmnt) else {
        return;
    };
    let kview = snapshot(&kmnt);
    if kview != merged {
        let diff: Vec<_> = kview
            .keys()
            .chain(merged.keys())
            .filter(|k| kview.get(*k) != merged.get(*k))
            .collect();
        panic!("{ctx}: kernel overlayfs shows another tree; differing paths: {diff:?}");
    }
    drop(kernel);
    fs::remove_dir_all(&dir).unwrap();
}

/// The upper holds nothing staged, a whiteout only where the merged view shows nothing and
/// every other object where the merged view shows one of its kind.
fn check_upper(upper: &Path, merged: &BTreeMap<String, Seen>, ctx: &str) {
    for (path, seen) in snapshot(upper) {
        let name = path.rsplit('/').next().unwrap();
        assert!(
            !name.starts_with("#um") && !name.starts_with(".wh."),
            "{ctx}: staging name {path} in the upper"
        );
        let shown = merged.get(&path);
        let ok = match &seen {
            Seen::Whiteout => shown.is_none(),
            Seen::Dir => shown == Some(&Seen::Dir),
            Seen::File { .. } => matches!(shown, Some(Seen::File { .. })),
            Seen::Other(_) => false,
        };
        assert!(
            ok,
            "{ctx}: upper {path} is {seen:?} but the mount shows {shown:?}"
        );
    }
}
