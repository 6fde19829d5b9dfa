//! The real binary, end to end: mount-time validation and its messages, daemonizing (returns
//! once the mount is live), foreground mode and signals, the default workdir and a clean upper
//! that kernel overlayfs can take over, read-only unions and `--help`.
//!
//! These tests need root and /dev/fuse. Without them a test prints why and passes, unless the
//! `CI` environment variable is set: in CI nothing is skipped. Every mount is owned by a guard
//! that unmounts it when dropped (a plain umount, then a detached one), so a failing test
//! leaves no stale mount; every wait is a bounded poll.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::mount::UnmountFlags;
use rustix::process::{Pid, Signal};

use crate::fixture::{Stack, dump};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_unionmount");

/// Upper bound for anything that should take well under a second (debug builds, parallel tests).
pub(crate) const TIMEOUT: Duration = Duration::from_secs(20);

/// True if this test can mount; otherwise explains why and returns false (or fails under CI).
pub(crate) fn can_mount() -> bool {
    let missing = if !rustix::process::geteuid().is_root() {
        "not running as root"
    } else if !Path::new("/dev/fuse").exists() {
        "/dev/fuse is missing"
    } else {
        return true;
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the cli tests, but {missing}"
    );
    eprintln!("skipping: {missing} (set CI to make this a failure)");
    false
}

/// Polls `cond` every 10 ms until it holds; panics naming `what` after [`TIMEOUT`].
pub(crate) fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < TIMEOUT,
            "timed out after {TIMEOUT:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Undoes the kernel's `\ooo` escapes in /proc mount tables.
fn unescape(s: &str) -> String {
    String::from_utf8_lossy(&unionmount::setup::unescape_octal(s)).into_owned()
}

/// The /proc/self/mountinfo line whose mount point is `mnt` (the last one if stacked).
pub(crate) fn mountinfo_line(mnt: &Path) -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    info.lines()
        .rev()
        .find(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|m| Path::new(&unescape(m)) == mnt)
        })
        .map(str::to_owned)
}

pub(crate) fn is_mounted(mnt: &Path) -> bool {
    mountinfo_line(mnt).is_some()
}

/// Unmounts `mnt` when dropped, if it is still mounted: `umount`, then a detached unmount.
pub(crate) struct MountGuard(pub(crate) PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        if !is_mounted(&self.0) {
            return;
        }
        let _ = Command::new("umount")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
        if is_mounted(&self.0) {
            let _ = rustix::mount::unmount(&self.0, UnmountFlags::DETACH);
        }
    }
}

/// A child process that is killed (and reaped) when dropped, after its mount is unmounted.
pub(crate) struct Foreground {
    pub(crate) child: Child,
    _mount: MountGuard,
}

impl Drop for Foreground {
    fn drop(&mut self) {
        // Unmount before killing, so the kill cannot leave a dead mount behind.
        drop(MountGuard(self._mount.0.clone()));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary with `args`, capturing its output through pipes (so a daemon that kept
/// them open would hang this, which is a bug); panics if it has not exited within [`TIMEOUT`].
pub(crate) fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    run_in(None, args)
}

/// [`run`] with `cwd` as the current directory (`None`: ours).
pub(crate) fn run_in(cwd: Option<&Path>, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(BIN);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    for a in args {
        cmd.arg(a);
    }
    output_within(&mut cmd, TIMEOUT)
        .unwrap_or_else(|why| panic!("unionmount {:?} {why}", debug_args(args)))
}

/// Runs `cmd` with stdin from /dev/null, capturing stdout and stderr; kills it and returns
/// why if it has not exited (and closed its output) within `limit`.
pub(crate) fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not be started: {e}"))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.map_err(|e| format!("could not be waited for: {e}")),
        Err(_) => {
            if let Some(p) = Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, Signal::KILL);
            }
            Err(format!(
                "did not exit (or close its output) within {limit:?}"
            ))
        }
    }
}

fn debug_args(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<String> {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect()
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Mounts with the daemonizing form and checks it reported success; the guard unmounts.
pub(crate) fn mount(args: &[&dyn AsRef<std::ffi::OsStr>], mnt: &Path) -> MountGuard {
    mount_in(None, args, mnt)
}

/// [`mount`] run in the directory `cwd` (`None`: ours).
pub(crate) fn mount_in(
    cwd: Option<&Path>,
    args: &[&dyn AsRef<std::ffi::OsStr>],
    mnt: &Path,
) -> MountGuard {
    let guard = MountGuard(mnt.to_path_buf());
    let out = run_in(cwd, args);
    assert!(
        out.status.success(),
        "mount {:?} failed: {out:?}\nstderr: {}",
        debug_args(args),
        stderr(&out)
    );
    assert!(
        is_mounted(mnt),
        "unionmount exited 0 before {} was in mountinfo",
        mnt.display()
    );
    guard
}

/// Runs the binary expecting a refusal: non-zero exit, nothing mounted at `mnt`, and a message
/// on stderr containing every one of `needles`. Returns the message.
pub(crate) fn refused(
    args: &[&dyn AsRef<std::ffi::OsStr>],
    mnt: &Path,
    needles: &[&str],
) -> String {
    let _guard = MountGuard(mnt.to_path_buf());
    let out = run(args);
    let msg = stderr(&out);
    assert!(
        !out.status.success(),
        "{:?} should be refused, but exited 0 (stderr: {msg})",
        debug_args(args)
    );
    assert!(
        !is_mounted(mnt),
        "{:?} was refused but left {} mounted",
        debug_args(args),
        mnt.display()
    );
    for n in needles {
        assert!(
            msg.contains(n),
            "stderr of {:?} should mention {n:?}:\n{msg}",
            debug_args(args)
        );
    }
    msg
}

fn canon(p: &Path) -> String {
    fs::canonicalize(p).unwrap().display().to_string()
}

fn default_workdir(upper: &Path) -> PathBuf {
    upper.with_file_name(format!(
        ".{}.unionmount-work",
        upper.file_name().unwrap().to_str().unwrap()
    ))
}

/// Mounts kernel overlayfs (with the fixed [`crate::mounted::KERNEL_OPTIONS`]); `None` (after
/// saying why) if it is unavailable outside CI.
pub(crate) fn kernel_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    mnt: &Path,
) -> Option<MountGuard> {
    let lowerdir: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},{}",
        lowerdir.join(":"),
        upper.display(),
        work.display(),
        crate::mounted::KERNEL_OPTIONS
    );
    let guard = MountGuard(mnt.to_path_buf());
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(mnt)
        .output()
        .expect("run mount");
    if out.status.success() {
        return Some(guard);
    }
    let why = format!(
        "kernel overlayfs mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::env::var_os("CI").is_none(), "{why}");
    eprintln!("skipping: {why}");
    None
}

/// Finds the daemon serving `mnt` by its command line (the re-executed child has
/// `--notify-ready` and the mountpoint argument).
fn daemon_pid(mnt: &Path) -> Option<u32> {
    let want = mnt.as_os_str().as_encoded_bytes();
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        (args.contains(&&b"--notify-ready"[..]) && args.contains(&want) && !exited(pid))
            .then_some(pid)
    })
}

/// True once `pid` is gone or a zombie (PID 1 here may never reap it).
pub(crate) fn exited(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| rest.starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

pub(crate) fn unmount_command(mnt: &Path) -> Command {
    let fusermount = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("fusermount3"))
        .find(|p| p.is_file());
    let mut cmd = match fusermount {
        Some(f) => {
            let mut c = Command::new(f);
            c.arg("-u");
            c
        }
        None => Command::new("umount"),
    };
    cmd.arg(mnt);
    cmd
}

pub(crate) fn errno_of(e: &std::io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw_os_error)
}

// ---------------------------------------------------------------------------------------
// Refusals at mount time
// ---------------------------------------------------------------------------------------

#[test]
fn refuses_missing_lower() {
    if !can_mount() {
        return;
    }
    let s = Stack::new(&["f a x"]);
    let missing = s.tmp.path().join("no-such-lower");
    let lowers = format!("{}:{}", s.lowers[0].display(), missing.display());
    refused(
        &[&lowers, &s.upper, &s.mnt],
        &s.mnt,
        &["lower", &missing.display().to_string()],
    );
}

#[test]
fn refuses_lower_that_is_a_file() {
    if !can_mount() {
        return;
    }
    let s = Stack::new(&["f a x"]);
    let file = s.lowers[0].join("a");
    let msg = refused(
        &[&file, &s.upper, &s.mnt],
        &s.mnt,
        &["lower", &file.display().to_string()],
    );
    assert!(msg.contains("not a directory"), "{msg}");
}

#[test]
fn refuses_missing_upper() {
    if !can_mount() {
        return;
    }
    let s = Stack::new(&["f a x"]);
    let missing = s.tmp.path().join("no-such-upper");
    refused(
        &[&s.lowers[0], &missing, &s.mnt],
        &s.mnt,
        &["upper", &missing.display().to_string()],
    );
    assert!(
        !default_workdir(&missing).exists(),
        "a refused mount created a workdir"
    );
}

#[test]
fn refuses_upper_inside_lower() {
    if !can_mount() {
        return;
    }
    let s = Stack::new(&["f a x\nd sub"]);
    let before = s.lowers_dump();
    let upper = s.lowers[0].join("sub");
    let msg = refused(
        &[&s.lowers[0], &upper, &s.mnt],
        &s.mnt,
        &["upper", &canon(&upper), &canon(&s.lowers[0])],
    );
    assert!(msg.contains("inside"), "{msg}");
    assert_eq!(
        s.lowers_dump(),
        before,
        "a refused mount wrote into the lower (default workdir?)"
    );
}

#[test]
fn refuses_lower_inside_upper() {
    if !can_mount() {
        return;
    }
    let s = Stack::with_upper(&["f a x"], "d inner\nf inner/b y");
    let lower = s.upper.join("inner");
    let lowers = format!("{}:{}", s.lowers[0].display(), lower.display());
    let msg = refused(
        &[&lowers, &s.upper, &s.mnt],
        &s.mnt,
        &["lower", &canon(&lower), &canon(&s.upper)],
    );
    assert!(msg.contains("inside"), "{msg}");
}

#[test]
fn refuses_workdir_inside_upper() {
    if !can_mount() {
        return;
    }
    let s = Stack::with_upper(&["f a x"], "d w");
    let work = s.upper.join("w");
    let msg = refused(
        &[&"--workdir", &work, &s.lowers[0], &s.upper, &s.mnt],
        &s.mnt,
        &["workdir", &canon(&work), &canon(&s.upper)],
    );
    assert!(msg.contains("inside"), "{msg}");
    assert_eq!(
        fs::read_dir(&work).unwrap().count(),
        0,
        "a refused mount wrote into the workdir"
    );
}

#[test]
fn refuses_mountpoint_inside_a_layer() {
    if !can_mount() {
        return;
    }
    let s = Stack::with_upper(&["d m"], "d m");
    for (layer, mnt) in [
        ("lower", s.lowers[0].join("m")),
        ("upper", s.upper.join("m")),
    ] {
        let msg = refused(
            &[&s.lowers[0], &s.upper, &mnt],
            &mnt,
            &["mountpoint", &canon(&mnt)],
        );
        assert!(msg.contains(&format!("inside {layer}")), "{layer}: {msg}");
    }
    // The read-only form too.
    let mnt = s.lowers[0].join("m");
    refused(
        &[&s.lowers[0], &mnt],
        &mnt,
        &["mountpoint", &canon(&mnt), "inside"],
    );
}

#[test]
fn refuses_unknown_mount_option() {
    if !can_mount() {
        return;
    }
    let s = Stack::new(&["f a x"]);
    let msg = refused(
        &[&"-o", &"nosuid,frobnicate", &s.lowers[0], &s.upper, &s.mnt],
        &s.mnt,
        &["frobnicate"],
    );
    assert!(
        !msg.contains("nosuid"),
        "only the unknown option should be named: {msg}"
    );
}

#[test]
fn refuses_too_few_arguments() {
    let out = run(&[]);
    assert!(!out.status.success() && !stderr(&out).is_empty(), "{out:?}");
    let out = run(&[&"/tmp"]);
    assert!(!out.status.success(), "{out:?}");
    let msg = stderr(&out);
    assert!(
        msg.contains("missing MOUNTPOINT") && msg.contains("Usage"),
        "{msg}"
    );
}

#[test]
fn refuses_upper_in_use_by_another_unionmount() {
    if !can_mount() {
        return;
    }
    let s = Stack::new(&["f a from-lower"]);
    let _first = mount(&[&s.lowers[0], &s.upper, &s.mnt], &s.mnt);
    let mnt2 = s.tmp.path().join("mnt2");
    fs::create_dir(&mnt2).unwrap();
    let msg = refused(
        &[&s.lowers[0], &s.upper, &mnt2],
        &mnt2,
        &[&canon(&s.upper), "in use"],
    );
    assert!(msg.contains("upper"), "{msg}");
    // With an explicit, different workdir too: the upper alone is the conflict.
    refused(
        &[&"--workdir", &s.work, &s.lowers[0], &s.upper, &mnt2],
        &mnt2,
        &[&canon(&s.upper), "in use"],
    );
    // The refused attempts did not disturb the first mount.
    assert_eq!(fs::read_to_string(s.mnt.join("a")).unwrap(), "from-lower");
    fs::write(s.mnt.join("b"), "new").unwrap();
    assert_eq!(fs::read_to_string(s.upper.join("b")).unwrap(), "new");
}

#[test]
fn refuses_upper_in_use_by_kernel_overlay() {
    if !can_mount() {
        return;
    }
    let s = Stack::new(&["f a x"]);
    let kmnt = s.tmp.path().join("kernel");
    fs::create_dir(&kmnt).unwrap();
    let Some(_kernel) = kernel_overlay(&s.lowers, &s.upper, &s.work, &kmnt) else {
        return;
    };
    let msg = refused(
        &[&s.lowers[0], &s.upper, &s.mnt],
        &s.mnt,
        &[&canon(&s.upper), "kernel overlay"],
    );
    assert!(msg.contains("upper"), "{msg}");
}

// ---------------------------------------------------------------------------------------
// Daemon and foreground lifecycles
// ---------------------------------------------------------------------------------------

#[test]
fn daemon_returns_once_live_and_exits_on_unmount() {
    if !can_mount() {
        return;
    }
    let s = Stack::new(&["f a from-lower\nd dir\nf dir/b deep"]);
    let before = s.lowers_dump();
    let guard = MountGuard(s.mnt.clone());
    let out = run(&[&s.lowers[0], &s.upper, &s.mnt]);
    // No polling here: the mount must already be live when the command returns.
    assert!(out.status.success(), "{out:?}\nstderr: {}", stderr(&out));
    let line = mountinfo_line(&s.mnt).expect("mounted once the command returned");
    assert!(line.contains(" - fuse"), "not a FUSE mount: {line}");
    assert_eq!(fs::read_to_string(s.mnt.join("a")).unwrap(), "from-lower");
    assert!(
        out.stdout.is_empty(),
        "the daemon's readiness line leaked: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );

    let pid = daemon_pid(&s.mnt).expect("a running daemon serving the mount");

    fs::write(s.mnt.join("new"), "written").unwrap();
    fs::write(s.mnt.join("dir/b"), "changed").unwrap();
    assert_eq!(fs::read_to_string(s.upper.join("new")).unwrap(), "written");
    assert_eq!(
        fs::read_to_string(s.upper.join("dir/b")).unwrap(),
        "changed"
    );
    assert_eq!(s.lowers_dump(), before, "a write reached the lower");

    let status = unmount_command(&s.mnt)
        .status()
        .expect("run the unmount command");
    assert!(status.success(), "unmount failed: {status}");
    assert!(!is_mounted(&s.mnt));
    wait_for("the daemon to exit after unmount", || exited(pid));
    drop(guard);
    assert_eq!(
        fs::read_to_string(s.upper.join("new")).unwrap(),
        "written",
        "upper lost a write"
    );
}

/// Starts `unionmount -f` on the stack and waits for the mount.
fn foreground(s: &Stack) -> Foreground {
    spawn_foreground(&[&s.lowers[0], &s.upper, &s.mnt], &s.mnt)
}

/// Starts `unionmount -f ARGS` and waits until `mnt` is mounted.
pub(crate) fn spawn_foreground(args: &[&dyn AsRef<std::ffi::OsStr>], mnt: &Path) -> Foreground {
    let mut cmd = Command::new(BIN);
    cmd.arg("-f");
    for a in args {
        cmd.arg(a);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn unionmount -f");
    let mut fg = Foreground {
        child,
        _mount: MountGuard(mnt.to_path_buf()),
    };
    wait_for("the foreground mount", || {
        if let Ok(Some(status)) = fg.child.try_wait() {
            panic!(
                "unionmount -f {:?} exited before mounting: {status}",
                debug_args(args)
            );
        }
        is_mounted(mnt)
    });
    fg
}

/// Sends `sig` and waits (bounded) for the foreground process to exit.
fn signal_and_wait(fg: &mut Foreground, sig: Signal) -> ExitStatus {
    let pid = Pid::from_raw(fg.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, sig).expect("send the signal");
    let mut status = None;
    wait_for("the foreground process to exit after the signal", || {
        status = fg.child.try_wait().expect("try_wait");
        status.is_some()
    });
    status.unwrap()
}

#[test]
fn foreground_sigterm_unmounts_with_a_file_held_open_by_another_process() {
    if !can_mount() {
        return;
    }
    let s = Stack::new(&["f a from-lower"]);
    let mut fg = foreground(&s);
    // It stays attached: still running once the mount is live.
    assert!(fg.child.try_wait().unwrap().is_none(), "-f returned");
    fs::write(s.mnt.join("kept"), "data").unwrap();

    // Another process holds a file of the mount open (as its stdin).
    let mut holder = Command::new("sleep")
        .arg("60")
        .stdin(fs::File::open(s.mnt.join("a")).unwrap())
        .spawn()
        .expect("spawn sleep");
    let status = signal_and_wait(&mut fg, Signal::TERM);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(status.success(), "SIGTERM exit: {status}");
    assert!(!is_mounted(&s.mnt), "still in mountinfo after SIGTERM");
    assert_eq!(fs::read_to_string(s.upper.join("kept")).unwrap(), "data");
}

#[test]
fn foreground_sigint_unmounts_with_a_file_held_open_by_a_thread() {
    if !can_mount() {
        return;
    }
    let s = Stack::new(&["f a from-lower"]);
    let mut fg = foreground(&s);
    let mut file = fs::File::open(s.mnt.join("a")).unwrap();
    let (opened_tx, opened_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let holder = thread::spawn(move || {
        let mut first = [0u8; 4];
        file.read_exact(&mut first).unwrap();
        opened_tx.send(first).unwrap();
        // Keep the file open until the daemon is gone; reading it then must not hang.
        let _ = go_rx.recv();
        let mut rest = Vec::new();
        let _ = file.read_to_end(&mut rest);
    });
    assert_eq!(&opened_rx.recv_timeout(TIMEOUT).unwrap(), b"from");
    let status = signal_and_wait(&mut fg, Signal::INT);
    assert!(status.success(), "SIGINT exit: {status}");
    assert!(!is_mounted(&s.mnt), "still in mountinfo after SIGINT");
    go_tx.send(()).unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || done_tx.send(holder.join().is_ok()));
    assert_eq!(
        done_rx.recv_timeout(TIMEOUT),
        Ok(true),
        "reading the held file hung or panicked"
    );
}

// ---------------------------------------------------------------------------------------
// Default workdir, a clean upper, kernel overlayfs round trip
// ---------------------------------------------------------------------------------------

#[test]
fn default_workdir_keeps_upper_clean_for_kernel_overlay() {
    if !can_mount() {
        return;
    }
    let s = Stack::new(&[
        "f top.txt top\nd dir\nf dir/keep k\nf dir/drop d\nf rename-me r",
        "f base.txt base\nd gone\nf gone/x x\nd gone/sub\nf dir/low l",
    ]);
    let lowers = format!("{}:{}", s.lowers[0].display(), s.lowers[1].display());
    let workdir = default_workdir(&s.upper);
    assert!(!workdir.exists());
    let guard = mount(&[&lowers, &s.upper, &s.mnt], &s.mnt);
    assert!(
        fs::symlink_metadata(&workdir).unwrap().is_dir(),
        "default workdir {} not created",
        workdir.display()
    );
    assert_eq!(
        fs::read_dir(&s.work).unwrap().count(),
        0,
        "the fixture's unused workdir was touched"
    );

    let m = &s.mnt;
    fs::write(m.join("new.txt"), "new").unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("dir/keep"))
        .unwrap()
        .write_all(b"+more")
        .unwrap();
    fs::remove_file(m.join("dir/drop")).unwrap();
    fs::remove_file(m.join("base.txt")).unwrap();
    fs::write(m.join("scratch"), "temporary").unwrap();
    fs::remove_file(m.join("scratch")).unwrap();
    fs::create_dir(m.join("tmpdir")).unwrap();
    fs::remove_dir(m.join("tmpdir")).unwrap();
    fs::remove_dir_all(m.join("gone")).unwrap();
    fs::create_dir(m.join("gone")).unwrap();
    fs::write(m.join("gone/fresh"), "fresh").unwrap();
    fs::rename(m.join("rename-me"), m.join("renamed")).unwrap();
    std::os::unix::fs::symlink("top.txt", m.join("link")).unwrap();
    let merged = dump(m);
    drop(guard);
    assert!(!is_mounted(m));

    // The upper holds exactly the changes: files, copied-up parents, whiteouts, an opaque dir.
    let mut entries: Vec<String> = Vec::new();
    collect(&s.upper, &s.upper, &mut entries);
    entries.sort();
    let expected = [
        "base.txt whiteout",
        "dir dir",
        "dir/drop whiteout",
        "dir/keep file",
        "gone dir opaque",
        "gone/fresh file",
        "link symlink",
        "new.txt file",
        "rename-me whiteout",
        "renamed file",
    ];
    assert_eq!(
        entries,
        expected,
        "unexpected upper contents:\n{}",
        dump(&s.upper)
    );
    assert_eq!(
        fs::read_to_string(s.upper.join("dir/keep")).unwrap(),
        "k+more"
    );

    // Kernel overlayfs takes over the same upper and workdir and shows the same tree.
    let kmnt = s.tmp.path().join("kernel");
    fs::create_dir(&kmnt).unwrap();
    let Some(kernel) = kernel_overlay(&s.lowers, &s.upper, &workdir, &kmnt) else {
        return;
    };
    assert_eq!(
        dump(&kmnt),
        merged,
        "kernel overlayfs shows a different tree than unionmount did"
    );
    drop(kernel);
}

/// Lists `dir` recursively as "PATH KIND" with KIND one of file, dir, dir opaque, symlink,
/// whiteout (char 0/0) or other.
fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            let mut buf = [0u8; 8];
            match rustix::fs::lgetxattr(&p, "trusted.overlay.opaque", &mut buf) {
                Ok(n) if &buf[..n] == b"y" => "dir opaque",
                _ => "dir",
            }
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() && md.rdev() == 0 {
            "whiteout"
        } else {
            "other"
        };
        out.push(format!(
            "{} {kind}",
            p.strip_prefix(root).unwrap().display()
        ));
        if ft.is_dir() {
            collect(root, &p, out);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Read-only unions and help
// ---------------------------------------------------------------------------------------

#[test]
fn read_only_union_refuses_writes_with_erofs() {
    if !can_mount() {
        return;
    }
    let s = Stack::new(&["f a top\nd dir", "f b bottom\nf dir/c c"]);
    let before = s.lowers_dump();
    let lowers = format!("{}:{}", s.lowers[0].display(), s.lowers[1].display());
    let _guard = mount(&[&lowers, &s.mnt], &s.mnt);
    let line = mountinfo_line(&s.mnt).unwrap();
    let opts = line.split(' ').nth(5).unwrap();
    assert!(
        opts.split(',').any(|o| o == "ro"),
        "mount options {opts:?} lack ro"
    );
    assert_eq!(fs::read_to_string(s.mnt.join("b")).unwrap(), "bottom");
    assert_eq!(fs::read_to_string(s.mnt.join("dir/c")).unwrap(), "c");

    let m = &s.mnt;
    let attempts: [(&str, std::io::Result<()>); 6] = [
        (
            "write existing",
            fs::OpenOptions::new()
                .write(true)
                .open(m.join("a"))
                .map(drop),
        ),
        ("create", fs::write(m.join("new"), "x")),
        ("mkdir", fs::create_dir(m.join("newdir"))),
        ("unlink", fs::remove_file(m.join("b"))),
        ("rename", fs::rename(m.join("a"), m.join("dir/a"))),
        ("symlink", std::os::unix::fs::symlink("a", m.join("l"))),
    ];
    for (what, r) in attempts {
        let e = r.expect_err(what);
        assert_eq!(errno_of(&e), Some(Errno::ROFS), "{what}: {e}");
    }
    assert_eq!(
        s.lowers_dump(),
        before,
        "a read-only union modified a lower"
    );
    let hidden: Vec<_> = fs::read_dir(s.tmp.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(
        hidden.is_empty() && fs::read_dir(&s.work).unwrap().count() == 0,
        "a read-only union made a workdir: {hidden:?}"
    );
}

#[test]
fn help_prints_usage_with_examples() {
    let out = run(&[&"--help"]);
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Usage:",
        "LOWER1",
        "UPPER",
        "MOUNTPOINT",
        "--workdir",
        "-o",
        "Examples:",
        "unionmount base upper merged",
        "umount",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}
