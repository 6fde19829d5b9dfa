//! The `unionmount` binary: parse, validate, daemonize, build the engine, serve.
//!
//! Daemonizing is a re-exec, never a fork: by the time we would fork, fuser (and the signal
//! thread) may have started threads, and a forked child of a threaded process may only call
//! async-signal-safe functions. Without `-f`, the process re-executes itself as
//! `unionmount --foreground --notify-ready ARGS...` with stdin from /dev/null, stdout a pipe and
//! stderr shared, and waits: the child prints `ready` on the pipe once the mount is live (the
//! parent then exits 0), or exits with an error it has already printed on the shared stderr
//! (the parent exits with the child's code). The child leaves the caller's session with
//! `setsid` and, once ready, points stdin, stdout and stderr at /dev/null so that a caller
//! reading our output to EOF (a test's `Command::output()`, podman) is not held open by the
//! daemon; with `-d` stderr is kept so the trace stays visible.
//!
//! Exit codes: 0 mounted (or unmounted cleanly in the foreground), 1 setup or mount failure,
//! 2 usage error (clap).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::process::{Command, ExitCode, Stdio};

use rustix::fs::{Mode, OFlags};
use unionmount::cli::{self, Options};
use unionmount::fuse::adapter::Adapter;
use unionmount::fuse::session;
use unionmount::setup;
use unionmount::union::Union;

/// The line the daemon child prints on stdout once the mount is live.
const READY: &str = "ready";

fn main() -> ExitCode {
    ensure_std_fds();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(code) = unionmount::tools::dispatch(&args) {
        return code;
    }
    let opts = cli::parse();
    init_logger(opts.debug);
    if !opts.foreground {
        return spawn_daemon();
    }
    match run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("unionmount: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Warnings by default; `-d` adds debug for this crate and fuser (whose request dispatch logs
/// every operation); RUST_LOG, applied last, refines or overrides either.
fn init_logger(debug: bool) {
    let mut b = env_logger::Builder::new();
    b.filter_level(log::LevelFilter::Warn);
    // fuser's session warns "Failed to umount filesystem: EINVAL" after every unmount done
    // outside it (ours on a signal, or the user's umount): its is_mounted() check treats
    // POLLERR as "still mounted". Keep that noise out unless tracing.
    b.filter_module("fuser::session", log::LevelFilter::Error);
    if debug {
        b.filter_module("unionmount", log::LevelFilter::Debug);
        b.filter_module("fuser", log::LevelFilter::Debug);
    }
    b.parse_default_env();
    b.init();
}

/// Makes sure fds 0, 1 and 2 are open (on /dev/null if they were closed, as under some CI
/// runners), so that no file, socket or /dev/fuse fd opened later lands on them and gets
/// written to by a stray print or redirected away by the daemon's stdio cleanup.
fn ensure_std_fds() {
    while let Ok(fd) = rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
    {
        if fd.as_raw_fd() > 2 {
            break; // dropped: 0..=2 are all taken
        }
        // Keep it open for good as the missing standard fd; it must survive exec, and the
        // standard fds are expected to be inheritable.
        let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty());
        let _ = fd.into_raw_fd();
    }
}

/// The parent side of daemonizing (see the module docs).
fn spawn_daemon() -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("unionmount: cannot find my own executable to daemonize: {e}; use -f");
            return ExitCode::FAILURE;
        }
    };
    // The added flags go first so that a `--` among the user's arguments cannot turn them
    // into positionals.
    let child = Command::new(&exe)
        .arg("--foreground")
        .arg("--notify-ready")
        .args(std::env::args_os().skip(1))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("unionmount: cannot start {}: {e}", exe.display());
            return ExitCode::FAILURE;
        }
    };
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if line.trim_end() == READY {
        // Mounted; the daemon lives on without us (not waited for, so not reaped by us).
        return ExitCode::SUCCESS;
    }
    // EOF before `ready`: the child failed and has said why on the shared stderr.
    match child.wait() {
        Ok(status) => match status.code() {
            Some(0) | None => ExitCode::FAILURE,
            Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        },
        Err(e) => {
            eprintln!("unionmount: cannot wait for the daemon: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Validates, builds the engine and serves until unmounted.
fn run(mut opts: Options) -> Result<(), String> {
    if opts.notify_ready {
        // Leave the caller's session and process group: a ^C or hangup meant for the shell
        // that started us must not reach the daemon. Fails only if we lead a group already.
        let _ = rustix::process::setsid();
    }
    // Held until we return: the flocks mark the upper and workdir as in use.
    let _locks = setup::validate(&mut opts).map_err(|e| e.to_string())?;
    log::debug!("options: {opts:?}");

    let union = Union::new(&opts.config).map_err(|e| {
        let mut layers: Vec<String> = opts
            .config
            .lowers
            .iter()
            .map(|l| format!("lower {}", l.display()))
            .collect();
        if let (Some(u), Some(w)) = (&opts.config.upper, &opts.config.workdir) {
            layers.push(format!("upper {}", u.display()));
            layers.push(format!("workdir {}", w.display()));
        }
        format!("cannot open the layers ({}): {e}", layers.join(", "))
    })?;
    let fs = Adapter::new(union, &opts.config);
    let notify = opts.notify_ready;
    let keep_stderr = opts.debug;
    session::serve(fs, &opts.mountpoint, &opts.mount, opts.debug, move || {
        if notify {
            announce_ready(keep_stderr);
        }
    })
    .map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied && !rustix::process::geteuid().is_root() {
            "; unprivileged mounts need read-write access to /dev/fuse (usually mode 0666) and fusermount3"
        } else {
            ""
        };
        format!("cannot mount on {}: {e}{hint}", opts.mountpoint.display())
    })
}

/// Tells the waiting parent the mount is live, then detaches from its stdio.
fn announce_ready(keep_stderr: bool) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{READY}").and_then(|()| out.flush());
    drop(out);
    let Ok(null) = rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
    else {
        log::warn!("cannot open /dev/null; keeping the caller's stdio");
        return;
    };
    // dup2 clears CLOEXEC on the targets, so they stay ordinary standard fds.
    let _ = rustix::stdio::dup2_stdin(&null);
    let _ = rustix::stdio::dup2_stdout(&null);
    if !keep_stderr {
        let _ = rustix::stdio::dup2_stderr(&null);
    }
}
