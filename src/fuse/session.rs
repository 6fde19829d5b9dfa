//! Mounting and serving: turns [`MountOptions`] into a fuser session, runs it until the union is
//! unmounted, and unmounts cleanly on SIGINT, SIGTERM and SIGHUP.
//!
//! fuser installs no signal handlers, and its own unmount is not lazy (EBUSY while a file is
//! open, and it cannot be retried). So a signal thread does a detached unmount (`umount2` with
//! `MNT_DETACH`, or `fusermount3 -u -z` when unprivileged): the mount disappears from the
//! namespace at once, the kernel closes the FUSE connection when its last user is gone, the
//! workers see ENODEV, `run()` returns and `destroy` runs; if files stay open on the detached
//! mount, the daemon exits after a short grace period instead. The signal handlers are registered
//! before mounting so a signal that arrives during the mount is not lost (and does not kill the
//! process with a mount left behind).

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use fuser::{BackgroundSession, MountOption, Session, SessionACL};
use log::{debug, info, warn};
use rustix::io::Errno;
use rustix::mount::UnmountFlags;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::MountOptions;
use crate::fuse::adapter::Adapter;

/// Worker threads at most: measured gains flatten out well before this (FUSER.md), and each
/// worker holds a 16 MiB request buffer.
const MAX_THREADS: usize = 8;

/// The fuser configuration for `opts`: mount options, ACL and worker threads.
pub fn fuser_config(opts: &MountOptions) -> fuser::Config {
    let mut mount_options = vec![
        MountOption::FSName(opts.fsname.clone()),
        MountOption::Subtype("unionmount".into()),
        if opts.suid {
            MountOption::Suid
        } else {
            MountOption::NoSuid
        },
        if opts.dev {
            MountOption::Dev
        } else {
            MountOption::NoDev
        },
        if opts.exec {
            MountOption::Exec
        } else {
            MountOption::NoExec
        },
        if opts.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    if opts.default_permissions {
        mount_options.push(MountOption::DefaultPermissions);
    }
    // `Config` is non_exhaustive: start from the default and set fields.
    let mut config = fuser::Config::default();
    config.mount_options = mount_options;
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    config.n_threads = Some(cpus.clamp(1, MAX_THREADS));
    config.clone_fd = true;
    config
}

/// Mounts `fs` at `mountpoint`, calls `on_ready` (from another thread) once the mount is live
/// (the kernel's INIT is answered successfully, so a refused `-o passthrough=on` is reported
/// as a mount failure, not after `ready`), and serves requests until the union is unmounted: by `umount`/`fusermount3 -u`,
/// or by SIGINT/SIGTERM/SIGHUP, which trigger a detached unmount.
///
/// Errors: whatever mounting fails with (fuser's message, e.g. from fusermount3), an error
/// registering the signal handlers, or the session loop's final error.
pub fn serve(
    mut fs: Adapter,
    mountpoint: &Path,
    opts: &MountOptions,
    debug: bool,
    on_ready: impl FnOnce() + Send + 'static,
) -> io::Result<()> {
    let (ready_tx, ready_rx) = mpsc::channel();
    fs.notify_ready(ready_tx);
    let config = fuser_config(opts);
    if debug {
        info!("mounting {} with {:?}", mountpoint.display(), config);
    }
    // Registered before mounting: a signal during the mount is queued and handled below.
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let session = mount(fs, mountpoint, opts, &config)?;
    info!("mounted {} at {}", opts.fsname, mountpoint.display());

    let handle = signals.handle();
    let mnt = mountpoint.to_path_buf();
    let watcher = thread::Builder::new()
        .name("unionmount-signals".into())
        .spawn(move || {
            let mut deadline_set = false;
            // Every signal retries: a second ^C helps if the first unmount failed.
            for sig in signals.forever() {
                info!("signal {sig}: unmounting {}", mnt.display());
                detach_unmount(&mnt);
                if !deadline_set {
                    deadline_set = true;
                    exit_after_grace(mnt.clone());
                }
            }
        });
    let watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            // Dropping the session unmounts; do not leave a mount nobody serves.
            drop(session);
            return Err(e);
        }
    };

    // INIT is read and answered inside run(); a failed INIT drops the sender unsent.
    let live = mountpoint.to_path_buf();
    let announcer = thread::Builder::new()
        .name("unionmount-ready".into())
        .spawn(move || {
            if ready_rx.recv().is_ok() {
                raise_readahead(&live);
                on_ready();
            }
        })?;
    let result = run_without_final_unmount(session);
    let _ = announcer.join();
    debug!("session for {} ended: {result:?}", mountpoint.display());
    handle.close();
    let _ = watcher.join();
    result
}

/// Runs the session until the union is unmounted, without fuser's unmount of the mountpoint
/// path when it ends. That unmount cannot tell the union is already gone (its `is_mounted`
/// takes the disconnected device's POLLERR for "mounted"), so it would take down whatever
/// was mounted on the directory since: the next mount of a container's rootfs, a kernel
/// overlay over the same upper. After an error the union may still be mounted, and fuser's
/// unmount runs as before.
fn run_without_final_unmount(session: Session<Adapter>) -> io::Result<()> {
    // spawn() moves the mount out of the session into the handle, whose drop unmounts; the
    // handle's join consumes it, so its public thread handle is swapped out and joined here.
    let mut background = session.spawn()?;
    let guard = std::mem::replace(&mut background.guard, thread::spawn(|| Ok(())));
    let result = guard
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the session thread panicked")));
    if result.is_ok() {
        std::mem::forget(background);
    }
    result
}

/// Readahead for the mount, in KiB: one READ request per MiB instead of per 128 KiB (the
/// kernel's default) for sequential reads served here. It matches `max_write`, which also sets
/// how many pages one request may carry.
const READ_AHEAD_KB: u32 = 1024;

/// Raises the mount's readahead through sysfs, the only place the kernel takes it above the
/// default at INIT. Needs root; otherwise the default stays and reads just take more requests.
fn raise_readahead(mountpoint: &Path) {
    // The FUSE superblock's device names its backing-device-info in sysfs.
    let dev = match rustix::fs::stat(mountpoint) {
        Ok(st) => st.st_dev,
        Err(e) => return debug!("cannot stat {}: {e}", mountpoint.display()),
    };
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        rustix::fs::major(dev),
        rustix::fs::minor(dev)
    );
    match std::fs::write(&knob, READ_AHEAD_KB.to_string()) {
        Ok(()) => debug!("{knob} = {READ_AHEAD_KB}"),
        Err(e) => debug!("cannot raise readahead through {knob}: {e}"),
    }
}

/// How long a signalled daemon keeps serving files that are still open on the detached mount.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// After a detached unmount the kernel keeps the FUSE connection (and so our session) alive
/// while any file on it is open or any process has its cwd there, which may be forever. Like
/// libfuse daemons, do not wait for them: if the session has not ended within
/// [`SHUTDOWN_GRACE`], exit. Closing our /dev/fuse fds aborts the connection; the holders then
/// get ENOTCONN. (If the session ends first, `main` returns and this thread dies with it.)
fn exit_after_grace(mnt: PathBuf) {
    let spawned = thread::Builder::new()
        .name("unionmount-grace".into())
        .spawn(move || {
            thread::sleep(SHUTDOWN_GRACE);
            warn!(
                "{} is still in use after unmounting; exiting, its open files become unusable",
                mnt.display()
            );
            std::process::exit(0);
        });
    if let Err(e) = spawned {
        warn!("cannot start the shutdown timer: {e}");
    }
}

/// Mounts `fs` with a background session, for tests: dropping the returned session unmounts.
pub fn spawn(fs: Adapter, mountpoint: &Path, opts: &MountOptions) -> io::Result<BackgroundSession> {
    mount(fs, mountpoint, opts, &fuser_config(opts))?.spawn()
}

/// Mounts `fs` (INIT is answered once the session runs) and gives the adapter what exists only
/// from then on: the notifier and the device fd it polls.
fn mount(
    mut fs: Adapter,
    mountpoint: &Path,
    opts: &MountOptions,
    config: &fuser::Config,
) -> io::Result<Session<Adapter>> {
    fs.set_passthrough(opts.passthrough);
    fs.set_spin(opts.spin);
    let notifier = fs.notifier_slot();
    let device = fs.spin_device_slot();
    let session = Session::new(fs, mountpoint, config)?;
    let _ = notifier.set(session.notifier());
    if !opts.spin.is_zero() {
        let _ = device.set(rustix::io::fcntl_dupfd_cloexec(&session, 0)?);
    }
    Ok(session)
}

/// Detaches the mount at `mountpoint`. Unprivileged processes get EPERM from umount2 and go
/// through the setuid helper instead (`-z` is its lazy unmount).
pub fn detach_unmount(mountpoint: &Path) {
    match rustix::mount::unmount(mountpoint, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
        Ok(()) => {}
        // Not a mountpoint (any more): someone unmounted it already.
        Err(Errno::INVAL) => debug!("{} is not mounted", mountpoint.display()),
        Err(Errno::PERM) => fusermount_unmount(mountpoint.to_path_buf()),
        Err(e) => warn!("cannot unmount {}: {e}", mountpoint.display()),
    }
}

fn fusermount_unmount(mountpoint: PathBuf) {
    for helper in ["fusermount3", "fusermount"] {
        match Command::new(helper)
            .arg("-u")
            .arg("-z")
            .arg("--")
            .arg(&mountpoint)
            .status()
        {
            Ok(s) if s.success() => return,
            Ok(s) => {
                warn!("{helper} -u -z {} failed: {s}", mountpoint.display());
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                warn!("cannot run {helper}: {e}");
                return;
            }
        }
    }
    warn!(
        "cannot unmount {}: not permitted and no fusermount3 found",
        mountpoint.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_options() {
        let opts = MountOptions {
            allow_other: true,
            default_permissions: true,
            suid: false,
            dev: true,
            exec: false,
            read_only: true,
            fsname: "u".into(),
            passthrough: crate::config::Passthrough::Auto,
            spin: Duration::ZERO,
        };
        let c = fuser_config(&opts);
        assert_eq!(c.acl, SessionACL::All);
        assert!(c.clone_fd);
        assert!((1..=MAX_THREADS).contains(&c.n_threads.unwrap()));
        for o in [
            MountOption::FSName("u".into()),
            MountOption::Subtype("unionmount".into()),
            MountOption::NoSuid,
            MountOption::Dev,
            MountOption::NoExec,
            MountOption::RO,
            MountOption::DefaultPermissions,
        ] {
            assert!(c.mount_options.contains(&o), "{o:?} missing");
        }
        let c = fuser_config(&MountOptions {
            allow_other: false,
            default_permissions: false,
            read_only: false,
            ..opts
        });
        assert_eq!(c.acl, SessionACL::Owner);
        assert!(c.mount_options.contains(&MountOption::RW));
        assert!(!c.mount_options.contains(&MountOption::DefaultPermissions));
    }
}
