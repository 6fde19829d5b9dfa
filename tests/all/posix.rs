//! POSIX conformance: the whole pjdfstest suite (0.2.2, the Rust rewrite from crates.io) run on
//! unionmount as users run it (the real binary, daemonized, with the root defaults
//! allow_other,default_permissions,suid,dev) and on kernel overlayfs over the same layout, in the
//! same test run, in three places: the merged root of lowers that hold content, a stack whose
//! lower is empty (upper only), and a directory that exists only in a lower, so pjdfstest's
//! first mkdir copies it up.
//!
//! Invariants, for each place: every test kernel overlayfs passes, unionmount passes; every test
//! that fails on unionmount is listed with its reason in `tests/pjdfstest/expected-failures.txt`,
//! and every listed test still fails on unionmount (so the list stays honest); the lowers are never
//! modified; unionmount leaves the same upper behind as kernel overlayfs (but for the xattrs only
//! the kernel writes) and nothing staged in its workdir. The pass/fail/skip counts of both filesystems are printed. The configuration is
//! `tests/pjdfstest/unionmount.toml`.
//!
//! Finding pjdfstest: `target/tools/bin`, then `PATH`, then `$CARGO_HOME/bin` (`~/.cargo/bin`);
//! only version 0.2.2 is taken, since the test names and the expected failures belong to it.
//! Where it is missing the test installs it into `target/tools` (`cargo install`, a release
//! build of a few minutes, once per checkout), and creates the users `nobody` and `tests` that
//! pjdfstest switches to if they are missing, so that `cargo test` alone runs it on a clean
//! machine. A failure to do so fails the test: only a missing FUSE is a reason to skip.
//!
//! Cost: one run of the full suite takes a few seconds on either filesystem (unionmount's debug
//! build: 3-13 s with load), so every test of the suite runs by default.
//!
//! `UNIONMOUNT_PJDFSTEST_FULL=1` also runs every place on unionmount mounted with `-o timeout=0`,
//! so that no answer comes from the kernel's entry and attribute caches (7-60 s a run here).
//!
//! pjdfstest has no machine-readable output: `output` parses its text strictly.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::fixture::{Stack, dump, test_root};
use crate::mounted::{KernelMount, detach, fuse_available, overlay_available};
use crate::oracle::strip_kernel_xattrs;

mod output;
use output::{Run, Status, parse};

const BIN: &str = env!("CARGO_BIN_EXE_unionmount");
const PJDFSTEST_VERSION: &str = "0.2.2";
/// The users pjdfstest switches to by default (its config has no `[dummy_auth]`).
const USERS: [&str; 2] = ["nobody", "tests"];
/// Deadlock guard for one run of the suite (which takes seconds).
const SUITE_TIMEOUT: Duration = Duration::from_secs(600);

/// Lowers with content for the first and the last place: files, a symlink, a FIFO, a name in
/// both lowers, a whiteout in the upper, and `data` merged from both lowers.
const LOWERS: [&str; 2] = [
    "f etc/motd hello\nd data/cache\nl link etc/motd\np fifo\nf shadowed lower0",
    "f shadowed lower1\nf data/deep/file deep\nf gone bye\nm data 755\nm data/deep 755",
];
const UPPER: &str = "w gone";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn pjdfstest_merged_root() {
    compare_with_kernel("merged root", &LOWERS, UPPER, "");
}

#[test]
fn pjdfstest_upper_only() {
    compare_with_kernel("upper only", &[""], "", "");
}

/// `data/deep` is only in the lower: the suite's own temporary directory is created in it, which
/// copies `data` (merged from both lowers) and `data/deep` up first.
#[test]
fn pjdfstest_copied_up_dir() {
    compare_with_kernel("copied-up dir", &LOWERS, UPPER, "data/deep");
}

/// Runs the suite in `dir` of a stack built from `lowers` and `upper`, on kernel overlayfs and on
/// unionmount (each on a fresh copy), and asserts the module's invariants.
fn compare_with_kernel(place: &str, lowers: &[&str], upper: &str, dir: &str) {
    if !overlay_available() || !fuse_available() {
        return;
    }
    let pjdfstest = pjdfstest();
    let (kernel, kernel_upper) = run_on(Fs::Kernel, &pjdfstest, lowers, upper, dir);
    // One print at the end: the places run in parallel.
    let mut report = format!("pjdfstest {PJDFSTEST_VERSION}, {place}:\n");
    report += &format!("  {:25} {kernel}\n", "kernel overlayfs:");
    let mut options = vec![""];
    if std::env::var_os("UNIONMOUNT_PJDFSTEST_FULL").is_some() {
        options.push("timeout=0");
    }
    let expected = expected_failures();
    let mut problems = Vec::new();
    for opts in options {
        let (union, union_upper) = run_on(Fs::Union(opts), &pjdfstest, lowers, upper, dir);
        let label = match opts {
            "" => "unionmount".to_string(),
            o => format!("unionmount -o {o}"),
        };
        report += &format!("  {:25} {union}\n", format!("{label}:"));
        for (name, status) in &union.results {
            if *status == Status::Pass && kernel.results[name] != Status::Pass {
                report += &format!(
                    "  passes on {label} only: {name} ({:?} on kernel overlayfs: {})\n",
                    kernel.results[name],
                    kernel.detail(name)
                );
            }
        }
        let mut found = violations(&union, &kernel, &expected);
        if union_upper != kernel_upper {
            found.push(format!(
                "the uppers left behind differ:\nunionmount:\n{union_upper}\nkernel overlayfs:\n{kernel_upper}"
            ));
        }
        problems.extend(found.into_iter().map(|p| format!("{label}: {p}")));
    }
    print!("{report}");
    assert!(
        problems.is_empty(),
        "pjdfstest, {place}: {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Every way `union` breaks the module's invariants, one line each.
fn violations(union: &Run, kernel: &Run, expected: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    if union.results.keys().ne(kernel.results.keys()) {
        out.push("the two runs did not run the same tests".to_string());
    }
    for (name, status) in &union.results {
        let on_kernel = kernel.results.get(name).copied();
        if on_kernel == Some(Status::Pass) && *status != Status::Pass {
            out.push(format!(
                "{name}: passes on kernel overlayfs, {status:?} on unionmount: {}",
                union.detail(name)
            ));
        } else if *status == Status::Fail && !expected.contains_key(name) {
            out.push(format!(
                "{name}: fails on unionmount (and does not pass on kernel overlayfs) but is not in \
                 expected-failures.txt: {}",
                union.detail(name)
            ));
        }
    }
    for (name, reason) in expected {
        match union.results.get(name) {
            Some(Status::Fail) => {}
            Some(status) => out.push(format!(
                "{name}: listed in expected-failures.txt ({reason}) but {status:?} on unionmount: \
                 remove it from the list"
            )),
            None => out.push(format!(
                "{name}: listed in expected-failures.txt but pjdfstest has no such test"
            )),
        }
    }
    out
}

/// `tests/pjdfstest/expected-failures.txt`: test name to reason.
fn expected_failures() -> BTreeMap<String, String> {
    let path = repo().join("tests/pjdfstest/expected-failures.txt");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, reason) = line.split_once('#').unwrap_or((line, ""));
        let (name, reason) = (name.trim(), reason.trim());
        assert!(
            !reason.is_empty(),
            "{}:{}: {name} has no reason (`NAME # reason`)",
            path.display(),
            i + 1
        );
        let dup = out.insert(name.to_string(), reason.to_string());
        assert!(dup.is_none(), "{}: {name} is listed twice", path.display());
    }
    out
}

#[derive(Clone, Copy)]
enum Fs {
    /// unionmount, with these `-o` options (none when empty).
    Union(&'static str),
    Kernel,
}

/// Builds a fresh stack, mounts it with `fs`, runs the suite in `dir` of the mount and unmounts.
/// Checks the lowers were not modified, and returns the run with a dump of the upper left
/// behind (kernel overlayfs's without the xattrs only it writes, see `oracle`).
fn run_on(fs_kind: Fs, pjdfstest: &Path, lowers: &[&str], upper: &str, dir: &str) -> (Run, String) {
    let stack = Stack::with_upper(lowers, upper);
    let before = stack.lowers_dump();
    open_to_others(&stack);
    let secondary = stack.tmp.path().join("secondary");
    fs::create_dir(&secondary).unwrap();
    let suite = |stack: &Stack| run_suite(pjdfstest, &stack.mnt.join(dir), &secondary);
    let untouched = |stack: &Stack| {
        assert_eq!(before, stack.lowers_dump(), "pjdfstest modified a lower");
    };
    match fs_kind {
        Fs::Union(opts) => {
            let mut m = CliMount::mount(stack, opts);
            let run = suite(&m.stack);
            m.unmount();
            untouched(&m.stack);
            // Every copy-up and whiteout staged in the workdir was renamed into place.
            assert_eq!(dump(&m.stack.work.join("work")), "", "staging leftovers");
            (run, dump(&m.stack.upper))
        }
        Fs::Kernel => {
            let mut k = KernelMount::mount(stack);
            let run = suite(&k.stack);
            k.unmount();
            untouched(&k.stack);
            strip_kernel_xattrs(&k.stack.upper);
            (run, dump(&k.stack.upper))
        }
    }
}

/// pjdfstest runs most tests as `nobody` and `tests`, who must reach the mount: the stack's
/// directories become 0755, and every directory above them must already be searchable.
fn open_to_others(stack: &Stack) {
    let open = fs::Permissions::from_mode(0o755);
    for dir in [stack.tmp.path(), &stack.upper, &stack.mnt]
        .into_iter()
        .chain(stack.lowers.iter().map(PathBuf::as_path))
    {
        fs::set_permissions(dir, open.clone()).unwrap();
    }
    let root = test_root().canonicalize().unwrap();
    for dir in root.ancestors() {
        let mode = fs::metadata(dir).unwrap().mode();
        assert!(
            mode & 0o001 != 0,
            "{} is not searchable by others, so pjdfstest's unprivileged users cannot reach \
             the mounts: set UNIONMOUNT_TEST_DIR to a directory they can reach",
            dir.display()
        );
    }
}

/// Runs the whole suite in `dir`; its output goes to a file next to the stack's layers.
fn run_suite(pjdfstest: &Path, dir: &Path, secondary: &Path) -> Run {
    let config = repo().join("tests/pjdfstest/unionmount.toml");
    let log_dir = secondary.parent().unwrap();
    let (out_path, err_path) = (log_dir.join("pjdfstest.out"), log_dir.join("pjdfstest.err"));
    let start = Instant::now();
    let mut child = Command::new(pjdfstest)
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(dir)
        .arg("-s")
        .arg(secondary)
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", pjdfstest.display()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > SUITE_TIMEOUT {
            // Not waited for: a process stuck in a FUSE request dies only once it is answered.
            let _ = child.kill();
            let out = fs::read_to_string(&out_path).unwrap_or_default();
            let lines: Vec<&str> = out.lines().collect();
            panic!(
                "pjdfstest in {} did not finish in {SUITE_TIMEOUT:?} (a deadlock?); it hung after:\n{}",
                dir.display(),
                lines[lines.len().saturating_sub(5)..].join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = start.elapsed();
    let out = fs::read_to_string(&out_path).unwrap();
    let err = fs::read_to_string(&err_path).unwrap();
    let mut run = parse(&out).unwrap_or_else(|e| {
        panic!(
            "pjdfstest output in {}: {e}\n{out}\nstderr:\n{err}",
            dir.display()
        )
    });
    run.elapsed = elapsed;
    // pjdfstest exits with an error exactly when a test failed; anything else went wrong.
    assert_eq!(
        status.success(),
        run.count(Status::Fail) == 0,
        "pjdfstest exited with {status} for {run}; stderr:\n{err}"
    );
    run
}

/// A stack mounted by the unionmount binary (which daemonizes and returns once the mount is
/// live); unmounted when dropped, detached if a plain unmount fails.
struct CliMount {
    mounted: bool,
    stack: Stack,
}

impl CliMount {
    fn mount(stack: Stack, opts: &str) -> CliMount {
        let lowers: Vec<String> = stack
            .lowers
            .iter()
            .map(|p| p.to_str().unwrap().replace(':', "\\:"))
            .collect();
        let mut cmd = Command::new(BIN);
        if !opts.is_empty() {
            cmd.args(["-o", opts]);
        }
        let out = cmd
            .arg("--workdir")
            .arg(&stack.work)
            .arg(lowers.join(":"))
            .arg(&stack.upper)
            .arg(&stack.mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run unionmount");
        assert!(
            out.status.success(),
            "unionmount failed to mount {}: {}",
            stack.mnt.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let mounted = CliMount {
            mounted: true,
            stack,
        };
        let dev = |p: &Path| fs::metadata(p).unwrap().dev();
        assert_ne!(
            dev(&mounted.stack.mnt),
            dev(mounted.stack.tmp.path()),
            "unionmount returned but {} is not a mount",
            mounted.stack.mnt.display()
        );
        mounted
    }

    fn unmount(&mut self) {
        if std::mem::take(&mut self.mounted)
            && let Err(e) =
                rustix::mount::unmount(&self.stack.mnt, rustix::mount::UnmountFlags::empty())
        {
            eprintln!("unmounting {}: {e}; detaching", self.stack.mnt.display());
            detach(&self.stack.mnt);
        }
    }
}

impl Drop for CliMount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// pjdfstest 0.2.2 where `find_pjdfstest` looks, installed into `target/tools` first if it
/// is not there, and the users it switches to, created if missing: a clean machine needs only
/// `cargo test`. Anything that fails is a test failure (with how to fix it), never a skip.
fn pjdfstest() -> PathBuf {
    static SETUP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    for user in USERS {
        if !user_exists(user) {
            eprintln!("pjdfstest: creating the user {user} it switches to");
            let status = Command::new("useradd")
                .args(["--system", "--user-group", "--no-create-home"])
                .args(["--shell", "/usr/sbin/nologin", user])
                .status();
            assert!(
                status.is_ok_and(|s| s.success()) && user_exists(user),
                "pjdfstest needs the user {user}: `useradd --system --user-group {user}` failed"
            );
        }
    }
    if let Some(found) = find_pjdfstest() {
        return found;
    }
    eprintln!(
        "pjdfstest {PJDFSTEST_VERSION} not found: installing it into target/tools \
         (a release build, a few minutes, once)"
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "install",
            "pjdfstest",
            "--version",
            PJDFSTEST_VERSION,
            "--locked",
        ])
        .arg("--root")
        .arg(repo().join("target/tools"))
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "`cargo install pjdfstest --version {PJDFSTEST_VERSION} --locked --root target/tools` failed"
    );
    find_pjdfstest().expect("pjdfstest installed but not found in target/tools/bin")
}

fn user_exists(user: &str) -> bool {
    Command::new("id")
        .args(["-u", user])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// pjdfstest 0.2.2 in `target/tools/bin`, `PATH` or `$CARGO_HOME/bin`; other versions are
/// passed over (the test names and expected failures belong to this one).
fn find_pjdfstest() -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    let path = std::env::var_os("PATH").unwrap_or_default();
    let wanted = format!("pjdfstest {PJDFSTEST_VERSION}");
    std::iter::once(repo().join("target/tools/bin"))
        .chain(std::env::split_paths(&path))
        .chain(cargo_home.map(|h| h.join("bin")))
        .map(|d| d.join("pjdfstest"))
        .filter(|bin| bin.is_file())
        .find(|bin| {
            Command::new(bin)
                .arg("--version")
                .output()
                .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == wanted)
        })
}

#[test]
fn pjdfstest_violations() {
    let run = |results: &[(&str, Status)]| Run {
        results: results.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
        details: BTreeMap::new(),
        elapsed: Duration::ZERO,
    };
    let expected: BTreeMap<String, String> = [("a::listed", "why")]
        .into_iter()
        .map(|(n, r)| (n.to_string(), r.to_string()))
        .collect();
    let kernel = run(&[
        ("a::listed", Status::Fail),
        ("b::both_fail", Status::Fail),
        ("c::regressed", Status::Pass),
        ("d::skip", Status::Skip),
    ]);
    let clean = run(&[
        ("a::listed", Status::Fail),
        ("b::both_fail", Status::Pass),
        ("c::regressed", Status::Pass),
        ("d::skip", Status::Skip),
    ]);
    assert_eq!(violations(&clean, &kernel, &expected), Vec::<String>::new());
    let bad = run(&[
        ("a::listed", Status::Pass),
        ("b::both_fail", Status::Fail),
        ("c::regressed", Status::Skip),
        ("d::skip", Status::Skip),
    ]);
    let found = violations(&bad, &kernel, &expected);
    let names: Vec<&str> = found.iter().map(|v| v.split(':').next().unwrap()).collect();
    assert_eq!(names, ["b", "c", "a"], "{found:#?}");
}
