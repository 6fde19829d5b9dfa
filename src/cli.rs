//! Command-line parsing: turns `argv` into [`Options`], the plain data that `setup` validates
//! and the daemon serves.
//!
//! Three forms. Two take the layers as arguments and are told apart by their number, like
//! kernel overlayfs's "with or without upperdir": `LOWERS UPPER MOUNTPOINT` is a read-write
//! union, `LOWERS MOUNTPOINT` a read-only one. The third takes them as kernel overlayfs's mount
//! options, `-o lowerdir=LOWERS[,upperdir=U,workdir=W] [SOURCE] MOUNTPOINT`: what
//! containers/storage runs as a `mount_program`, and what mount.fuse3 runs for `mount -t
//! fuse.unionmount SOURCE MOUNTPOINT -o ...` (an fstab line), where SOURCE is ignored. `LOWERS`
//! lists directories top first, separated by `:`, with kernel overlayfs's escaping (`\:` for a
//! colon inside a path, `\\` for a backslash). Relative paths are made absolute against the
//! current directory here, before anything else runs, because container engines pass paths
//! relative to their storage directory.
//!
//! Invariants of the result: every path is absolute; `config.lowers` is non-empty;
//! `config.upper.is_none()` exactly when `mount.read_only`; `config.workdir` is only ever `Some`
//! together with an upper (its default is filled in later by `setup`, which does the I/O).
//! Nothing here touches the layers; the only I/O is reading the current directory, the
//! effective uid, /proc/self/uid_map and /etc/fuse.conf to choose privilege-dependent
//! defaults, and the kernel's overflow ids.

mod options;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::{ArgAction, CommandFactory, Parser};

use crate::config::{Config, DEFAULT_SPIN, MountOptions, Passthrough, XattrNamespace};
use options::{MountOpts, parse_mount_options};

use crate::idmap;

/// Everything the binary needs, parsed from the command line.
#[derive(Clone, Debug)]
pub struct Options {
    /// The union itself (layers, markers' namespace, cache timeout).
    pub config: Config,
    /// How it is mounted.
    pub mount: MountOptions,
    /// Where it is mounted (absolute, not yet canonicalised).
    pub mountpoint: PathBuf,
    /// Stay in the foreground instead of returning once mounted (`-f`).
    pub foreground: bool,
    /// Trace requests (`-d`): debug-level logging for this crate and fuser.
    pub debug: bool,
    /// Hidden: set by the daemonizing parent on the child it re-executes; the child prints
    /// `ready` on stdout once the mount is live and then detaches from stdio.
    pub notify_ready: bool,
}

const USAGE: &str = "unionmount [OPTIONS] LOWER1[:LOWER2...] UPPER MOUNTPOINT\n       \
                     unionmount [OPTIONS] LOWER1[:LOWER2...] MOUNTPOINT\n       \
                     unionmount [OPTIONS] -o lowerdir=LOWER1[:LOWER2...][,upperdir=UPPER,workdir=WORK] [SOURCE] MOUNTPOINT";

const AFTER_HELP: &str = "\
Mount options (-o, comma-separated, repeatable; the last of two opposites wins):
  lowerdir=L1[:L2...]    the lower directories, top first (instead of the LOWERS argument)
  upperdir=DIR           with lowerdir=: the upper directory (without it: read-only union)
  workdir=DIR            with upperdir=: the workdir (like --workdir)
  userxattr              keep overlay markers in user.overlay.* instead of trusted.overlay.*
                         (on unless run as root of the initial user namespace: trusted.*
                         needs CAP_SYS_ADMIN in it, which root of a user namespace, as in
                         rootless podman or unshare -r, does not have)
  uidmapping=ID:MAPPED-ID:LEN[,ID2:MAPPED-ID2:LEN2...]
  gidmapping=...         show ids ID..ID+LEN stored in the layers as MAPPED-ID..; new owners
                         are stored mapped back; unmapped stored ids show as 65534 and
                         unmapped new owners are refused (EOVERFLOW); triples may be
                         separated by ':' too (fuse-overlayfs's syntax, as podman passes it)
  squash_to_root         show every object owned by 0:0
  squash_to_uid=UID, squash_to_gid=GID
                         show every object owned by UID / GID (over squash_to_root)
  timeout=SECONDS        how long the kernel caches entries and attributes (default 60;
                         0 = no caching, for lowers edited under a live mount)
  spin=MICROSECONDS      after a reply, how long a worker may poll for the next request
                         instead of sleeping (default 50, 0 to 1000; adaptive: sparse
                         requests cost no CPU; 0 = never poll)
  volatile               never sync the upper: fsync/fdatasync/syncfs through the union and
                         the sync before a copy-up is renamed into place are skipped (a crash
                         may then lose or truncate recent changes; for throw-away containers)
  noallow_other          only the mounting user may access the mount
  nodefault_permissions  do not let the kernel check permissions from the mode bits
  nosuid, nodev, noexec  ignore set-user-id bits / device files / execute permission
                         (nosuid and nodev are the default when not root)
  ro                     mount read-only; an UPPER then becomes the topmost lower layer
  fsname=NAME            the source shown in /proc/mounts (default: unionmount)
  passthrough=on|off|auto
                         let the kernel read and write open upper files directly (and every
                         file of a union without an upper; Linux 6.9+, root only); auto
                         (default) falls back when refused, on fails the mount
  allow_other, default_permissions, suid, dev, exec, rw
                         the opposites, to undo an earlier option
Accepted and ignored, so that fstab lines and container engines work unchanged: atime,
noatime, relatime and the other access-time options, async, defaults, auto, noauto, nofail,
_netdev, user, users, owner, comment=, x-*, SELinux context=/fscontext=/defcontext=/
rootcontext= (quotes may protect commas), and redirect_dir=off, index=off, metacopy=off,
xino=off, nfs_export=off (what unionmount always does). `\\,` is a comma inside a value.

Examples:
  # Read-write union: changes go to ./upper, ./base stays untouched
  unionmount base upper merged

  # Two lowers (top first) with an explicit workdir on the upper's filesystem
  unionmount --workdir /var/tmp/work app:runtime /var/tmp/upper /mnt/union

  # The same with kernel overlayfs's options (as podman/buildah run a mount_program)
  unionmount -o lowerdir=app:runtime,upperdir=/var/tmp/upper,workdir=/var/tmp/work /mnt/union

  # Read-only union of three directories, shorter cache, in the foreground with tracing
  unionmount -f -d -o timeout=0.1 a:b:c /mnt/view

  # A lower whose name contains a colon
  unionmount 'dir\\:with\\:colons:base' upper merged

  # mount(8) and /etc/fstab (mount.fuse3 runs `unionmount SOURCE MOUNTPOINT -o ...`)
  mount -t fuse.unionmount union /mnt/union -o lowerdir=/a:/b,upperdir=/u,workdir=/w
  union  /mnt/union  fuse.unionmount  lowerdir=/a:/b,upperdir=/u,workdir=/w,nofail  0 0

  # podman/buildah: storage.conf, [storage.options.overlay]
  mount_program = \"/usr/local/bin/unionmount\"

  # Unmount
  fusermount3 -u merged        (or, as root: umount merged)

Without --workdir, the workdir is a hidden sibling of the upper, `.<UPPER name>.unionmount-work`,
so the upper stays clean and can later be mounted by kernel overlayfs.

Layer tools (see `unionmount TOOL --help`): unionmount diff | export | apply | check ...
A lower directory named like a tool must then be written with a path: ./diff, not diff.";

#[derive(Parser, Debug)]
#[command(
    name = "unionmount",
    version,
    about = "Mount a union of directories (kernel overlayfs semantics) through FUSE",
    override_usage = USAGE,
    after_help = AFTER_HELP
)]
struct Args {
    /// LOWERS [UPPER] MOUNTPOINT; with -o lowerdir=: [SOURCE] MOUNTPOINT (SOURCE is ignored).
    /// LOWERS lists the lower directories, top first, separated by ':' ('\:' is a colon
    /// inside a path)
    #[arg(value_name = "ARGS", required = true)]
    positional: Vec<OsString>,
    /// Work directory on the upper's filesystem [default: <parent of UPPER>/.<UPPER name>.unionmount-work]
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Stay in the foreground (do not daemonize once mounted)
    #[arg(short, long)]
    foreground: bool,
    /// Trace requests: debug-level logging (RUST_LOG can refine it)
    #[arg(short, long)]
    debug: bool,
    /// Mount options, see below
    #[arg(short = 'o', value_name = "OPT[,OPT...]", action = ArgAction::Append)]
    options: Vec<OsString>,
    #[arg(long, hide = true)]
    notify_ready: bool,
}

/// The facts about the caller that defaults depend on.
#[derive(Clone, Copy, Debug)]
struct Privilege {
    /// Root in the initial user namespace: may write trusted.* xattrs, honour suid and
    /// devices, use passthrough.
    root: bool,
    /// Root inside a user namespace (`unshare --user --map-root-user`, rootless podman):
    /// mounts FUSE itself and may let the namespace's other users in, nothing more.
    userns_root: bool,
    /// /etc/fuse.conf has `user_allow_other`.
    user_allow_other: bool,
}

impl Privilege {
    fn current() -> Privilege {
        let euid_root = rustix::process::geteuid().is_root();
        let initial_ns =
            std::fs::read_to_string("/proc/self/uid_map").map_or(true, |m| is_initial_uid_map(&m));
        let root = euid_root && initial_ns;
        let user_allow_other = !root
            && std::fs::read_to_string("/etc/fuse.conf").is_ok_and(|s| fuse_conf_allows_other(&s));
        Privilege {
            root,
            userns_root: euid_root && !initial_ns,
            user_allow_other,
        }
    }
}

/// True for the initial user namespace's uid_map: every id mapped to itself. Any other map
/// means a user namespace, where trusted.* xattrs are refused even to its root.
fn is_initial_uid_map(map: &str) -> bool {
    let lines: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|f: &Vec<&str>| !f.is_empty())
        .collect();
    lines == [["0", "0", "4294967295"]]
}

/// Parses the process's command line; prints help, version or a usage error and exits as
/// clap does (0 or 2) when there is nothing to run.
pub fn parse() -> Options {
    parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
}

/// Parses `args` (the first item is the program name) with the current user's defaults.
pub fn parse_from<I, T>(args: I) -> Result<Options, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    build(Args::try_parse_from(args)?, Privilege::current())
}

fn usage_error(msg: String) -> clap::Error {
    Args::command().error(ErrorKind::InvalidValue, msg)
}

fn build(args: Args, privilege: Privilege) -> Result<Options, clap::Error> {
    let o = parse_mount_options(&args.options).map_err(usage_error)?;
    let Layers {
        mut lowers,
        mut upper,
        mut workdir,
        mountpoint,
    } = layers(&args, &o).map_err(usage_error)?;

    let mut mount = MountOptions {
        allow_other: o
            .allow_other
            .unwrap_or(privilege.root || privilege.userns_root || privilege.user_allow_other),
        default_permissions: o.default_permissions.unwrap_or(true),
        suid: o.suid.unwrap_or(privilege.root),
        dev: o.dev.unwrap_or(privilege.root),
        exec: o.exec.unwrap_or(true),
        read_only: false,
        fsname: o.fsname.unwrap_or_else(|| "unionmount".into()),
        passthrough: o.passthrough.unwrap_or_default(),
        spin: o.spin.unwrap_or(DEFAULT_SPIN),
    };
    if mount.passthrough == Passthrough::On && !privilege.root {
        // The kernel refuses to register backing files without CAP_SYS_ADMIN (EPERM).
        return Err(usage_error(
            "-o passthrough=on needs root (the kernel allows backing files only with \
             CAP_SYS_ADMIN); use passthrough=auto or off"
                .into(),
        ));
    }
    if o.read_only == Some(true) {
        // `-o ro` with an upper: the upper's contents (including its whiteouts and opaque
        // markers) must stay visible, so it becomes the topmost lower rather than being
        // dropped; nothing is written, so the workdir is not needed and is ignored.
        if let Some(u) = upper.take() {
            lowers.insert(0, u);
        }
        workdir = None;
    }
    mount.read_only = upper.is_none();

    // Unprivileged processes, and root in a user namespace, cannot write trusted.* xattrs, so
    // such a mount uses the kernel's userxattr format whether or not it was asked for.
    let xattr_ns = if o.userxattr || !privilege.root {
        XattrNamespace::User
    } else {
        XattrNamespace::Trusted
    };
    let mut config = Config::new(lowers, upper, workdir);
    config.xattr_ns = xattr_ns;
    config.volatile = o.volatile;
    if let Some(t) = o.timeout {
        config.timeout = t;
    }
    config.ids = o.ids.policy(idmap::kernel_overflow_ids());
    Ok(Options {
        config,
        mount,
        mountpoint,
        foreground: args.foreground,
        debug: args.debug,
        notify_ready: args.notify_ready,
    })
}

/// The layers and the mountpoint, from whichever form was used, made absolute.
struct Layers {
    lowers: Vec<PathBuf>,
    upper: Option<PathBuf>,
    workdir: Option<PathBuf>,
    mountpoint: PathBuf,
}

fn layers(args: &Args, o: &MountOpts) -> Result<Layers, String> {
    let pos = &args.positional;
    let (lowers, upper, workdir, mountpoint) = if let Some(lowerdir) = &o.lowerdir {
        let mountpoint = match pos.as_slice() {
            [m] | [_, m] => PathBuf::from(m),
            _ => {
                return Err(format!(
                    "with -o lowerdir=, give only the MOUNTPOINT (or SOURCE MOUNTPOINT, as \
                     mount(8) does), not {} arguments",
                    pos.len()
                ));
            }
        };
        if args.workdir.is_some() && o.workdir.is_some() {
            return Err(
                "the workdir is given twice (--workdir and -o workdir=); give it once".into(),
            );
        }
        let workdir = o.workdir.clone().or_else(|| args.workdir.clone());
        if o.upperdir.is_none() && args.workdir.is_some() {
            return Err(
                "--workdir needs -o upperdir=: a union without one is read-only and writes nothing"
                    .into(),
            );
        }
        // Kernel overlayfs ignores a workdir= without upperdir= (read-only mount); so do we.
        let workdir = workdir.filter(|_| o.upperdir.is_some());
        (
            split_lowers(lowerdir)?,
            o.upperdir.clone(),
            workdir,
            mountpoint,
        )
    } else {
        if o.upperdir.is_some() || o.workdir.is_some() {
            return Err(
                "-o upperdir= and -o workdir= need -o lowerdir= (or give the layers \
                        as arguments: LOWERS UPPER MOUNTPOINT)"
                    .into(),
            );
        }
        let (lowers, upper, mountpoint) = match pos.as_slice() {
            [l, u, m] => (l, Some(PathBuf::from(u)), PathBuf::from(m)),
            [l, m] => (l, None, PathBuf::from(m)),
            [_] => {
                return Err(
                    "missing MOUNTPOINT: give LOWERS [UPPER] MOUNTPOINT, or the layers with \
                     -o lowerdir=..."
                        .into(),
                );
            }
            _ => {
                return Err(format!(
                    "too many arguments ({}): expected LOWERS [UPPER] MOUNTPOINT",
                    pos.len()
                ));
            }
        };
        if upper.is_none() && args.workdir.is_some() {
            return Err(
                "--workdir needs an UPPER: a union without one is read-only and writes nothing"
                    .into(),
            );
        }
        (
            split_lowers(lowers)?,
            upper,
            args.workdir.clone(),
            mountpoint,
        )
    };
    Ok(Layers {
        lowers: lowers
            .iter()
            .map(|l| absolute(l))
            .collect::<Result<_, _>>()?,
        upper: upper.as_deref().map(absolute).transpose()?,
        workdir: workdir.as_deref().map(absolute).transpose()?,
        mountpoint: absolute(&mountpoint)?,
    })
}

/// `p` made absolute against the current directory, without touching the filesystem
/// otherwise (`setup` canonicalises later, in the daemon).
fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("cannot make {} absolute: {e}", p.display()))
}

/// True if fuse.conf enables `user_allow_other` (a line of its own; `#` starts a comment).
fn fuse_conf_allows_other(conf: &str) -> bool {
    conf.lines()
        .any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other")
}

/// Splits `LOWERS` at unescaped colons. `\:` stands for a colon and `\\` for a backslash
/// (kernel overlayfs's escapes); any other backslash is kept as it is.
///
/// Errors: an empty component (`a::b`, a leading or trailing colon), which would otherwise
/// silently mean the current directory.
pub fn split_lowers(s: &OsStr) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = s.as_bytes().iter().copied();
    let mut finish = |cur: &mut Vec<u8>| -> Result<(), String> {
        if cur.is_empty() {
            return Err(format!(
                "empty lower directory in '{}': lowers are separated by single colons",
                s.to_string_lossy()
            ));
        }
        out.push(PathBuf::from(OsString::from_vec(std::mem::take(cur))));
        Ok(())
    };
    while let Some(b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(c @ (b':' | b'\\')) => cur.push(c),
                Some(c) => cur.extend([b'\\', c]),
                None => cur.push(b'\\'),
            },
            b':' => finish(&mut cur)?,
            _ => cur.push(b),
        }
    }
    finish(&mut cur)?;
    Ok(out)
}

#[cfg(test)]
mod tests;
