//! Command-line parsing: turns `argv` into [`Options`], the plain data that `setup` validates
//! and the daemon serves.
//!
//! Two forms, told apart by the number of positional arguments, like kernel overlayfs's
//! "with or without upperdir": `LOWERS UPPER MOUNTPOINT` is a read-write union, `LOWERS
//! MOUNTPOINT` a read-only one. `LOWERS` lists directories top first, separated by `:`, with
//! kernel overlayfs's escaping (`\:` for a colon inside a path, `\\` for a backslash).
//! Invariants of the result: `config.lowers` is non-empty; `config.upper.is_none()` exactly when
//! `mount.read_only`; `config.workdir` is only ever `Some` together with an upper (its default
//! is filled in later by `setup`, which does the I/O). Nothing here touches the layers; the only
//! I/O is reading the effective uid, /proc/self/uid_map and /etc/fuse.conf to choose
//! privilege-dependent defaults, and the kernel's overflow ids.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{ArgAction, CommandFactory, Parser};

use crate::config::{Config, MountOptions, Passthrough, XattrNamespace};
use crate::idmap::{self, IdOptions};

/// Everything the binary needs, parsed from the command line.
#[derive(Clone, Debug)]
pub struct Options {
    /// The union itself (layers, markers' namespace, cache timeout).
    pub config: Config,
    /// How it is mounted.
    pub mount: MountOptions,
    /// Where it is mounted (not yet canonicalised).
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
                     unionmount [OPTIONS] LOWER1[:LOWER2...] MOUNTPOINT";

const AFTER_HELP: &str = "\
Mount options (-o, comma-separated, repeatable; the last of two opposites wins):
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
  timeout=SECONDS        how long the kernel caches entries and attributes (default 1;
                         0 = no caching, for lowers edited under a live mount)
  noallow_other          only the mounting user may access the mount
  nodefault_permissions  do not let the kernel check permissions from the mode bits
  nosuid, nodev          ignore set-user-id bits / device files (default when not root)
  ro                     mount read-only; an UPPER then becomes the topmost lower layer
  fsname=NAME            the source shown in /proc/mounts (default: unionmount)
  passthrough=on|off|auto
                         let the kernel read and write open upper files directly (Linux 6.9+,
                         root only); auto (default) falls back when refused, on fails the mount
  allow_other, default_permissions, suid, dev, rw
                         the opposites, to undo an earlier option

Examples:
  # Read-write union: changes go to ./upper, ./base stays untouched
  unionmount base upper merged

  # Two lowers (top first) with an explicit workdir on the upper's filesystem
  unionmount --workdir /var/tmp/work app:runtime /var/tmp/upper /mnt/union

  # Read-only union of three directories, shorter cache, in the foreground with tracing
  unionmount -f -d -o timeout=0.1 a:b:c /mnt/view

  # A lower whose name contains a colon
  unionmount 'dir\\:with\\:colons:base' upper merged

  # Unmount
  fusermount3 -u merged        (or, as root: umount merged)

Without --workdir, the workdir is a hidden sibling of the upper, `.<UPPER name>.unionmount-work`,
so the upper stays clean and can later be mounted by kernel overlayfs.";

#[derive(Parser, Debug)]
#[command(
    name = "unionmount",
    version,
    about = "Mount a union of directories (kernel overlayfs semantics) through FUSE",
    override_usage = USAGE,
    after_help = AFTER_HELP
)]
struct Args {
    /// Lower directories, top first, separated by ':' ('\:' is a colon inside a path)
    #[arg(value_name = "LOWERS")]
    lowers: OsString,
    /// The upper directory (read-write union) or the mountpoint (read-only union)
    #[arg(value_name = "UPPER|MOUNTPOINT")]
    second: PathBuf,
    /// The mountpoint of a read-write union
    #[arg(value_name = "MOUNTPOINT")]
    third: Option<PathBuf>,
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
    options: Vec<String>,
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
    let mut lowers = split_lowers(&args.lowers).map_err(usage_error)?;
    let (mut upper, mountpoint) = match args.third {
        Some(mnt) => (Some(args.second), mnt),
        None => (None, args.second),
    };
    if upper.is_none() && args.workdir.is_some() {
        return Err(usage_error(
            "--workdir needs an UPPER: a union without one is read-only and writes nothing".into(),
        ));
    }
    let o = parse_mount_options(&args.options).map_err(usage_error)?;

    let mut mount = MountOptions {
        allow_other: o
            .allow_other
            .unwrap_or(privilege.root || privilege.userns_root || privilege.user_allow_other),
        default_permissions: o.default_permissions.unwrap_or(true),
        suid: o.suid.unwrap_or(privilege.root),
        dev: o.dev.unwrap_or(privilege.root),
        read_only: false,
        fsname: o.fsname.unwrap_or_else(|| "unionmount".into()),
        passthrough: o.passthrough.unwrap_or_default(),
    };
    if mount.passthrough == Passthrough::On && !privilege.root {
        // The kernel refuses to register backing files without CAP_SYS_ADMIN (EPERM).
        return Err(usage_error(
            "-o passthrough=on needs root (the kernel allows backing files only with \
             CAP_SYS_ADMIN); use passthrough=auto or off"
                .into(),
        ));
    }
    let mut workdir = args.workdir;
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

/// `-o` options as given; `None` means "not mentioned, use the default".
#[derive(Debug, Default, PartialEq)]
struct MountOpts {
    userxattr: bool,
    timeout: Option<Duration>,
    allow_other: Option<bool>,
    default_permissions: Option<bool>,
    suid: Option<bool>,
    dev: Option<bool>,
    read_only: Option<bool>,
    fsname: Option<String>,
    passthrough: Option<Passthrough>,
    ids: IdOptions,
}

/// Parses every `-o` value. Unknown options are collected and reported together, so one run
/// tells the user everything that is wrong.
fn parse_mount_options(values: &[String]) -> Result<MountOpts, String> {
    let mut o = MountOpts::default();
    let mut unknown = Vec::new();
    let opts = IdOptions::rejoin(values.iter().flat_map(|v| v.split(',')));
    for opt in opts.iter().map(String::as_str).filter(|s| !s.is_empty()) {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        match (key, value) {
            ("userxattr", None) => o.userxattr = true,
            ("timeout", Some(v)) => o.timeout = Some(parse_timeout(v)?),
            ("fsname", Some(v)) if !v.is_empty() => o.fsname = Some(v.to_owned()),
            ("fsname", _) => return Err("-o fsname needs a value, e.g. -o fsname=myunion".into()),
            ("allow_other", None) => o.allow_other = Some(true),
            ("noallow_other", None) => o.allow_other = Some(false),
            ("default_permissions", None) => o.default_permissions = Some(true),
            ("nodefault_permissions", None) => o.default_permissions = Some(false),
            ("suid", None) => o.suid = Some(true),
            ("nosuid", None) => o.suid = Some(false),
            ("dev", None) => o.dev = Some(true),
            ("nodev", None) => o.dev = Some(false),
            ("passthrough", Some(v)) => o.passthrough = Some(parse_passthrough(v)?),
            ("ro", None) => o.read_only = Some(true),
            ("rw", None) => o.read_only = Some(false),
            (k, v) if IdOptions::KEYS.contains(&k) => o.ids.set(k, v)?,
            _ => unknown.push(opt),
        }
    }
    if !unknown.is_empty() {
        let list: Vec<String> = unknown.iter().map(|u| format!("'{u}'")).collect();
        return Err(format!(
            "unknown mount option{} {} (see --help for the supported -o options)",
            if unknown.len() > 1 { "s" } else { "" },
            list.join(", ")
        ));
    }
    Ok(o)
}

fn parse_passthrough(v: &str) -> Result<Passthrough, String> {
    match v {
        "on" => Ok(Passthrough::On),
        "off" => Ok(Passthrough::Off),
        "auto" => Ok(Passthrough::Auto),
        _ => Err(format!("-o passthrough={v}: expected on, off or auto")),
    }
}

fn parse_timeout(v: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| {
            format!("-o timeout={v}: expected a number of seconds >= 0, e.g. timeout=0.5")
        })
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
mod tests {
    use super::*;

    const ROOT: Privilege = Privilege {
        root: true,
        userns_root: false,
        user_allow_other: false,
    };
    const USER: Privilege = Privilege {
        root: false,
        userns_root: false,
        user_allow_other: false,
    };
    const USERNS_ROOT: Privilege = Privilege {
        root: false,
        userns_root: true,
        user_allow_other: false,
    };

    fn parse_as(p: Privilege, args: &[&str]) -> Result<Options, clap::Error> {
        build(
            Args::try_parse_from(std::iter::once("unionmount").chain(args.iter().copied()))?,
            p,
        )
    }

    fn lowers(s: &str) -> Vec<String> {
        split_lowers(OsStr::new(s))
            .unwrap()
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn colon_escapes() {
        assert_eq!(lowers("a:b:c"), ["a", "b", "c"]);
        assert_eq!(lowers(r"a\:b:c"), ["a:b", "c"]);
        assert_eq!(lowers(r"a\\:b"), [r"a\", "b"]);
        assert_eq!(lowers(r"a\nb"), [r"a\nb"]);
        assert_eq!(lowers(r"trailing\"), [r"trailing\"]);
        for bad in ["", ":a", "a:", "a::b"] {
            assert!(
                split_lowers(OsStr::new(bad)).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn two_forms() {
        let rw = parse_as(ROOT, &["l1:l2", "up", "mnt"]).unwrap();
        assert_eq!(rw.config.lowers, [PathBuf::from("l1"), PathBuf::from("l2")]);
        assert_eq!(rw.config.upper, Some(PathBuf::from("up")));
        assert_eq!(rw.mountpoint, PathBuf::from("mnt"));
        assert!(!rw.mount.read_only);

        let ro = parse_as(ROOT, &["l1", "mnt"]).unwrap();
        assert_eq!(ro.config.upper, None);
        assert!(ro.mount.read_only);
        assert!(parse_as(ROOT, &["l1", "mnt", "--workdir", "w"]).is_err());
        assert!(parse_as(ROOT, &["l1"]).is_err());
        assert!(parse_as(ROOT, &["a", "b", "c", "d"]).is_err());
    }

    #[test]
    fn privilege_defaults() {
        let r = parse_as(ROOT, &["l", "u", "m"]).unwrap();
        assert!(r.mount.allow_other && r.mount.default_permissions && r.mount.suid && r.mount.dev);
        assert_eq!(r.config.xattr_ns, XattrNamespace::Trusted);
        assert_eq!(r.config.timeout, crate::config::DEFAULT_TIMEOUT);
        assert_eq!(r.mount.fsname, "unionmount");

        let u = parse_as(USER, &["l", "u", "m"]).unwrap();
        assert!(
            !u.mount.allow_other && u.mount.default_permissions && !u.mount.suid && !u.mount.dev
        );
        assert_eq!(u.config.xattr_ns, XattrNamespace::User);
        let u2 = parse_as(
            Privilege {
                user_allow_other: true,
                ..USER
            },
            &["l", "u", "m"],
        )
        .unwrap();
        assert!(u2.mount.allow_other);
    }

    #[test]
    fn mount_options() {
        let o = parse_as(
            ROOT,
            &[
                "-o",
                "userxattr,timeout=0.25",
                "-o",
                "noallow_other,nodefault_permissions,nosuid,nodev,fsname=x",
                "l",
                "u",
                "m",
            ],
        )
        .unwrap();
        assert_eq!(o.config.xattr_ns, XattrNamespace::User);
        assert_eq!(o.config.timeout, Duration::from_millis(250));
        assert_eq!(
            o.mount,
            MountOptions {
                allow_other: false,
                default_permissions: false,
                suid: false,
                dev: false,
                read_only: false,
                fsname: "x".into(),
                passthrough: Passthrough::Auto,
            }
        );
        for bad in [
            "timeout=-1",
            "timeout=abc",
            "timeout",
            "fsname=",
            "userxattr=1",
        ] {
            assert!(
                parse_as(ROOT, &["-o", bad, "l", "u", "m"]).is_err(),
                "{bad}"
            );
        }
        let err = parse_as(ROOT, &["-o", "bogus,nosuid,other=1", "l", "u", "m"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'bogus'") && err.contains("'other=1'") && !err.contains("nosuid"),
            "{err}"
        );
    }

    #[test]
    fn passthrough_option() {
        for (v, want) in [
            ("on", Passthrough::On),
            ("off", Passthrough::Off),
            ("auto", Passthrough::Auto),
        ] {
            let o = parse_as(ROOT, &["-o", &format!("passthrough={v}"), "l", "u", "m"]).unwrap();
            assert_eq!(o.mount.passthrough, want, "{v}");
        }
        for bad in ["passthrough=yes", "passthrough=", "passthrough"] {
            let err = parse_as(ROOT, &["-o", bad, "l", "u", "m"])
                .unwrap_err()
                .to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
        let user = USER;
        let err = parse_as(user, &["-o", "passthrough=on", "l", "u", "m"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("passthrough=on needs root"), "{err}");
        let o = parse_as(user, &["l", "u", "m"]).unwrap();
        assert_eq!(o.mount.passthrough, Passthrough::Auto);
    }

    #[test]
    fn ro_turns_upper_into_top_lower() {
        let o = parse_as(ROOT, &["-o", "ro", "--workdir", "w", "l1:l2", "u", "m"]).unwrap();
        assert_eq!(
            o.config.lowers,
            [PathBuf::from("u"), PathBuf::from("l1"), PathBuf::from("l2")]
        );
        assert_eq!((o.config.upper, o.config.workdir), (None, None));
        assert!(o.mount.read_only);
        let rw = parse_as(ROOT, &["-o", "ro,rw", "l", "u", "m"]).unwrap();
        assert!(!rw.mount.read_only && rw.config.upper.is_some());
    }

    #[test]
    fn userns_root_defaults() {
        let o = parse_as(USERNS_ROOT, &["l", "u", "m"]).unwrap();
        assert_eq!(o.config.xattr_ns, XattrNamespace::User);
        assert!(o.mount.allow_other && o.mount.default_permissions);
        assert!(!o.mount.suid && !o.mount.dev);
        let err = parse_as(USERNS_ROOT, &["-o", "passthrough=on", "l", "u", "m"]).unwrap_err();
        assert!(err.to_string().contains("needs root"), "{err}");
        assert!(is_initial_uid_map("         0          0 4294967295\n"));
        assert!(!is_initial_uid_map("         0          0          1\n"));
        assert!(!is_initial_uid_map("0 1000 1\n1 100000 65536\n"));
        assert!(!is_initial_uid_map(""));
    }

    #[test]
    fn id_options() {
        // The forms podman and the man page write; the squash and mapping details are
        // idmap's tests.
        let opts = "uidmapping=:0:1000:1:1:100000:65536,gidmapping=0:2000:1,1:3000:9,nosuid";
        let o = parse_as(ROOT, &["-o", opts, "-o", "squash_to_uid=5", "l", "u", "m"]).unwrap();
        let ids = &o.config.ids;
        assert_eq!(
            (ids.uids.shown(2), ids.gids.shown(3)),
            (Some(100001), Some(3002))
        );
        assert_eq!(
            (ids.squash_uid, ids.squash_gid, o.mount.suid),
            (Some(5), None, false)
        );
        assert!(
            parse_as(ROOT, &["l", "u", "m"])
                .unwrap()
                .config
                .ids
                .is_identity()
        );
        for bad in [
            "uidmapping=0:1",
            "gidmapping=",
            "squash_to_uid=x",
            "squash_to_root=1",
        ] {
            let err = parse_as(ROOT, &["-o", bad, "l", "u", "m"])
                .unwrap_err()
                .to_string();
            assert!(err.contains(bad.split('=').next().unwrap()), "{bad}: {err}");
        }
    }

    #[test]
    fn fuse_conf() {
        assert!(fuse_conf_allows_other(
            "# comment\n  user_allow_other  # yes\n"
        ));
        assert!(!fuse_conf_allows_other(
            "#user_allow_other\nmount_max = 1000\n"
        ));
    }

    #[test]
    fn help_has_examples() {
        let help = Args::command().render_long_help().to_string();
        assert!(help.contains("Examples:") && help.contains("userxattr"));
        Args::command().debug_assert();
    }
}
