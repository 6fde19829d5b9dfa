//! Mount-time validation: everything that can be checked before mounting, with messages that
//! name the offending path and say what to do.
//!
//! [`validate`] canonicalises every path in [`Options`] in place (so the engine and the
//! messages see absolute, symlink-free paths), fills in the default workdir, and checks the
//! layout rules kernel overlayfs enforces (no layer inside another, workdir on the upper's
//! filesystem, nothing mounted over a layer) plus what the upper's filesystem must support
//! (the chosen xattr namespace, char 0/0 whiteouts). It returns [`Locks`]: exclusive flocks on
//! the upper and the workdir that the caller keeps for the life of the daemon, so a second
//! unionmount of the same upper fails here instead of corrupting the first. Order matters:
//! the locks are taken before anything is written into `WORKDIR/work`, so a refused mount never
//! touches a running one's workdir.

use std::ffi::OsStr;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags, XattrFlags};
use rustix::io::Errno;

use crate::cli::Options;
use crate::config::XattrNamespace;

/// A mount-time error: a complete message for the user (without the `unionmount: ` prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupError(pub String);

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SetupError {}

fn err<T>(msg: impl Into<String>) -> Result<T, SetupError> {
    Err(SetupError(msg.into()))
}

/// Exclusive flocks on the upper and the workdir; released when dropped (or when the process
/// exits, however it exits). Empty for a read-only union.
#[derive(Debug)]
pub struct Locks {
    pub upper: Option<OwnedFd>,
    pub workdir: Option<OwnedFd>,
}

/// Name of the default workdir, a hidden sibling of the upper.
fn default_workdir_name(upper: &Path) -> Option<PathBuf> {
    let name = upper.file_name()?;
    let mut s = std::ffi::OsString::from(".");
    s.push(name);
    s.push(".unionmount-work");
    Some(upper.with_file_name(s))
}

/// Validates and canonicalises `opts` in place (see the module docs) and takes the locks.
pub fn validate(opts: &mut Options) -> Result<Locks, SetupError> {
    if !Path::new("/proc/self/fd").is_dir() {
        return err(
            "/proc is not mounted (no /proc/self/fd): unionmount reaches xattrs through it; mount proc first (mount -t proc proc /proc)",
        );
    }
    let cfg = &mut opts.config;
    if cfg.lowers.is_empty() {
        return err("no lower directory given");
    }
    // Layer indices are stored in 15 bits per node (see `node::compact`).
    if cfg.lowers.len() >= crate::node::MAX_LAYERS {
        return err(format!(
            "{} lower directories given; at most {} can be stacked",
            cfg.lowers.len(),
            crate::node::MAX_LAYERS - 1
        ));
    }
    for l in &mut cfg.lowers {
        *l = canonical_dir(l, "lower directory")?;
    }
    for (i, a) in cfg.lowers.iter().enumerate() {
        if cfg.lowers[..i].contains(a) {
            return err(format!(
                "lower directory {} is listed twice; list each lower once",
                a.display()
            ));
        }
    }
    let mountpoint = canonical_dir(&opts.mountpoint, "mountpoint")?;
    opts.mountpoint = mountpoint.clone();
    for l in &cfg.lowers {
        if *l == mountpoint {
            return err(format!(
                "mountpoint {} is also a lower directory: the mount would hide that layer's own path and a second mount there would stack on top of the union; mount somewhere else",
                l.display()
            ));
        }
        if mountpoint.starts_with(l) {
            return err(format!(
                "mountpoint {} is inside lower directory {}: the union would appear inside its own layer and looking it up would recurse into the mount; mount outside the layers",
                mountpoint.display(),
                l.display()
            ));
        }
    }

    let Some(upper_arg) = cfg.upper.clone() else {
        return Ok(Locks {
            upper: None,
            workdir: None,
        });
    };
    let upper = canonical_dir(&upper_arg, "upper directory")?;
    cfg.upper = Some(upper.clone());
    let upper_dev = dev_of(&upper)?;
    let (workdir, default) = match &cfg.workdir {
        Some(w) => (canonical_dir(w, "workdir")?, false),
        None => {
            let Some(w) = default_workdir_name(&upper) else {
                return err(format!(
                    "upper {} has no parent directory for the default workdir; pass --workdir DIR on the same filesystem",
                    upper.display()
                ));
            };
            let parent = w.parent().unwrap_or(Path::new("/"));
            if dev_of(parent)? != upper_dev {
                return err(format!(
                    "upper {} is a mountpoint, so the default workdir {} would be on another filesystem; pass --workdir DIR on the upper's filesystem",
                    upper.display(),
                    w.display()
                ));
            }
            (w, true)
        }
    };

    check_layout(&cfg.lowers, &upper, &workdir, &mountpoint)?;
    if default {
        create_default_workdir(&workdir)?;
    }
    cfg.workdir = Some(workdir.clone());
    if dev_of(&workdir)? != upper_dev {
        return err(format!(
            "workdir {} is not on the same filesystem as upper {}; choose a workdir on the upper's filesystem",
            workdir.display(),
            upper.display()
        ));
    }

    if let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo")
        && let Some((what, path)) = overlay_conflict(&mountinfo, &upper, &workdir)
    {
        return err(format!(
            "{what} {} is in use by a kernel overlayfs mount; unmount it first",
            path.display()
        ));
    }

    let locks = Locks {
        upper: Some(lock_dir(&upper, "upper")?),
        workdir: Some(lock_dir(&workdir, "workdir")?),
    };
    probe_upper(&upper, &workdir, cfg.xattr_ns)?;
    Ok(locks)
}

/// The layout rules between paths that are all absolute and canonical: the upper and workdir
/// must be disjoint from each other and from every lower, and the mountpoint must not be in the
/// upper or workdir. (Lowers are opened before mounting, so a layer inside the mountpoint is
/// fine.)
fn check_layout(
    lowers: &[PathBuf],
    upper: &Path,
    workdir: &Path,
    mountpoint: &Path,
) -> Result<(), SetupError> {
    const KEEP_APART: &str = "the upper must be a separate directory outside every lower";
    const CLEARED: &str =
        "its work/ subdirectory is emptied at every mount: choose another workdir";
    const WORK_OUT: &str = "choose a workdir outside every layer, on the upper's filesystem";
    for l in lowers {
        apart(("upper", upper), ("lower directory", l), KEEP_APART)?;
        apart(("lower directory", l), ("upper", upper), KEEP_APART)?;
        apart(("workdir", workdir), ("lower directory", l), WORK_OUT)?;
        apart(("lower directory", l), ("workdir", workdir), CLEARED)?;
    }
    apart(("workdir", workdir), ("upper", upper), WORK_OUT)?;
    apart(("upper", upper), ("workdir", workdir), CLEARED)?;
    let mnt_out = "mount outside the upper and the workdir";
    apart(("mountpoint", mountpoint), ("upper", upper), mnt_out)?;
    apart(("mountpoint", mountpoint), ("workdir", workdir), mnt_out)
}

/// Fails if the path `a` is `b` or lies inside it, with a message naming both and `advice`.
fn apart(
    (a_name, a): (&str, &Path),
    (b_name, b): (&str, &Path),
    advice: &str,
) -> Result<(), SetupError> {
    let rel = if a == b {
        "is the same directory as"
    } else if a.starts_with(b) {
        "is inside"
    } else {
        return Ok(());
    };
    err(format!(
        "{a_name} {} {rel} {b_name} {}; {advice}",
        a.display(),
        b.display()
    ))
}

/// Canonicalises `p` and checks that it is a directory; `what` names it in messages.
fn canonical_dir(p: &Path, what: &str) -> Result<PathBuf, SetupError> {
    let c = std::fs::canonicalize(p).map_err(|e| {
        SetupError(format!(
            "{what} {}: {}; create it or fix the path",
            p.display(),
            plain(&e)
        ))
    })?;
    match std::fs::metadata(&c) {
        Ok(m) if m.is_dir() => Ok(c),
        Ok(_) => err(format!("{what} {} is not a directory", p.display())),
        Err(e) => err(format!("{what} {}: {}", p.display(), plain(&e))),
    }
}

/// An io::Error's message without the " (os error N)" suffix.
fn plain(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

fn dev_of(p: &Path) -> Result<u64, SetupError> {
    rustix::fs::stat(p)
        .map(|st| st.st_dev)
        .map_err(|e| SetupError(format!("cannot stat {}: {e}", p.display())))
}

fn create_default_workdir(w: &Path) -> Result<(), SetupError> {
    match rustix::fs::mkdir(w, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => {
            return err(format!(
                "cannot create the default workdir {}: {e}; pass --workdir DIR on the upper's filesystem",
                w.display()
            ));
        }
    }
    // A symlink planted at the default name must not redirect the workdir (it gets cleared).
    match std::fs::symlink_metadata(w) {
        Ok(m) if m.is_dir() => Ok(()),
        _ => err(format!(
            "default workdir {} exists but is not a directory; remove it or pass --workdir DIR",
            w.display()
        )),
    }
}

/// Opens `dir` and takes a non-blocking exclusive flock on it.
pub fn lock_dir(dir: &Path, what: &str) -> Result<OwnedFd, SetupError> {
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SetupError(format!("cannot open {what} {}: {e}", dir.display())))?;
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(fd),
        Err(Errno::WOULDBLOCK) => err(format!(
            "{what} {} is already in use by another unionmount; unmount that first",
            dir.display()
        )),
        Err(e) => err(format!("cannot lock {what} {}: {e}", dir.display())),
    }
}

/// Checks that the upper's filesystem supports what the engine will write there: the
/// `<ns>.overlay.*` xattrs and char 0/0 whiteouts. Probes in `WORKDIR/work` (which exists on
/// the same filesystem and is cleared at mount anyway) so the upper itself is never touched.
fn probe_upper(upper: &Path, workdir: &Path, ns: XattrNamespace) -> Result<(), SetupError> {
    let wd = rustix::fs::open(
        workdir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SetupError(format!("cannot open workdir {}: {e}", workdir.display())))?;
    match rustix::fs::mkdirat(&wd, "work", Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => {
            return err(format!(
                "cannot create {}/work: {e}; the workdir must be writable",
                workdir.display()
            ));
        }
    }
    let work = rustix::fs::openat(
        &wd,
        "work",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| SetupError(format!("cannot open {}/work: {e}", workdir.display())))?;
    let name = format!("#unionmount-probe.{}", std::process::id());
    let name = OsStr::new(&name);
    let _ = rustix::fs::unlinkat(&work, name, AtFlags::empty());

    let file = rustix::fs::openat(
        &work,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| {
        SetupError(format!(
            "cannot create a file in {}/work: {e}; the workdir must be writable",
            workdir.display()
        ))
    })?;
    let key = format!("{}test", ns.overlay_prefix());
    let xattr = rustix::fs::fsetxattr(file.as_fd(), &key, b"y", XattrFlags::empty())
        .and_then(|()| rustix::fs::fremovexattr(file.as_fd(), &key));
    drop(file);
    let _ = rustix::fs::unlinkat(&work, name, AtFlags::empty());
    if let Err(e) = xattr {
        let ns_name = match ns {
            XattrNamespace::Trusted => "trusted.*",
            XattrNamespace::User => "user.*",
        };
        let advice = match ns {
            XattrNamespace::Trusted => {
                "mount as root, use -o userxattr, or put the upper on ext4/xfs/btrfs/tmpfs"
            }
            XattrNamespace::User => {
                "put the upper on a filesystem with user xattrs (ext4, xfs, btrfs, tmpfs on Linux 6.6+)"
            }
        };
        return err(format!(
            "upper filesystem at {} does not support {ns_name} xattrs ({e}); {advice}",
            upper.display()
        ));
    }

    let wh = rustix::fs::mknodat(&work, name, FileType::CharacterDevice, Mode::empty(), 0);
    let _ = rustix::fs::unlinkat(&work, name, AtFlags::empty());
    if let Err(e) = wh {
        return err(format!(
            "upper filesystem at {} cannot hold whiteouts (character device 0/0): {e}; mount as root or put the upper on ext4/xfs/btrfs/tmpfs (Linux 5.8+ for unprivileged whiteouts)",
            upper.display()
        ));
    }
    Ok(())
}

/// Finds a kernel overlayfs mount (in /proc/self/mountinfo text) whose upperdir or workdir is
/// `upper` or `workdir`; returns which option matched and the path.
fn overlay_conflict(
    mountinfo: &str,
    upper: &Path,
    workdir: &Path,
) -> Option<(&'static str, PathBuf)> {
    for line in mountinfo.lines() {
        // "<id> <parent> <dev> <root> <mnt> <opts> [optional...] - <fstype> <source> <superopts>"
        let Some((_, tail)) = line.split_once(" - ") else {
            continue;
        };
        let mut f = tail.split(' ');
        if f.next() != Some("overlay") {
            continue;
        }
        let Some(superopts) = f.nth(1) else { continue };
        for opt in superopts.split(',') {
            let (what, value) = match opt.split_once('=') {
                Some(("upperdir", v)) => ("upper", v),
                Some(("workdir", v)) => ("workdir", v),
                _ => continue,
            };
            let raw = PathBuf::from(OsStr::from_bytes(&unescape_octal(value)));
            // The kernel shows the path as given at its mount; compare canonical forms.
            let p = std::fs::canonicalize(&raw).unwrap_or(raw);
            if p == upper || p == workdir {
                return Some((what, p));
            }
        }
    }
    None
}

/// Undoes the kernel's `\ooo` octal escapes in /proc mount tables (space, tab, newline,
/// backslash, and for overlay options also `,` and `=`). An escape encodes one byte, so it
/// is at most `\377`; anything else after a backslash is kept as it is.
pub fn unescape_octal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn layout_rules() {
        let lowers = [p("/l1"), p("/l2")];
        let ok = |u: &str, w: &str, m: &str| check_layout(&lowers, &p(u), &p(w), &p(m));
        assert!(ok("/u", "/w", "/m").is_ok());
        assert!(
            ok("/u", "/w", "/l1x").is_ok(),
            "a sibling with a common prefix is not nested"
        );
        assert!(ok("/u", "/w", "/m/l1").is_ok());
        assert!(
            ok("/l1", "/w", "/m")
                .unwrap_err()
                .0
                .contains("upper /l1 is the same directory as lower directory /l1")
        );
        assert!(
            ok("/l1/u", "/w", "/m")
                .unwrap_err()
                .0
                .contains("upper /l1/u is inside lower directory /l1")
        );
        assert!(ok("/", "/w", "/m").unwrap_err().0.contains("inside upper"));
        assert!(ok("/u", "/l2/w", "/m").is_err());
        assert!(ok("/u", "/u/w", "/m").is_err());
        assert!(ok("/w/u", "/w", "/m").is_err());
        assert!(ok("/u", "/", "/m").is_err());
        assert!(ok("/u", "/w", "/u/m").unwrap_err().0.contains("mountpoint"));
        assert!(ok("/u", "/w", "/w").unwrap_err().0.contains("mountpoint"));
    }

    #[test]
    fn default_workdir() {
        assert_eq!(
            default_workdir_name(&p("/a/up")),
            Some(p("/a/.up.unionmount-work"))
        );
        assert_eq!(default_workdir_name(&p("/")), None);
    }

    #[test]
    fn mountinfo_overlays() {
        let mi = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                  40 1 0:40 / /merged rw,relatime - overlay overlay rw,lowerdir=/lo,upperdir=/my\\040up,workdir=/wd,uuid=on\n";
        assert_eq!(
            overlay_conflict(mi, &p("/my up"), &p("/other")),
            Some(("upper", p("/my up")))
        );
        assert_eq!(
            overlay_conflict(mi, &p("/x"), &p("/wd")),
            Some(("workdir", p("/wd")))
        );
        assert_eq!(overlay_conflict(mi, &p("/lo"), &p("/x")), None);
    }

    #[test]
    fn octal_unescape() {
        assert_eq!(unescape_octal(r"a\040b\134c\054"), b"a b\\c,");
        assert_eq!(unescape_octal(r"x\04"), br"x\04");
        assert_eq!(unescape_octal(r"\9"), br"\9");
    }

    #[test]
    fn validate_real_dirs() {
        let t = tempfile::tempdir().unwrap();
        for d in ["lo", "up", "mnt"] {
            std::fs::create_dir(t.path().join(d)).unwrap();
        }
        let args = ["unionmount", "lo", "up", "mnt"].map(|a| {
            if a == "unionmount" {
                a.into()
            } else {
                t.path().join(a).into_os_string()
            }
        });
        let mut opts = crate::cli::parse_from(args).unwrap();
        let locks = match validate(&mut opts) {
            Ok(l) => l,
            // The temp dir's filesystem may lack trusted.* xattrs (or whiteouts) without root.
            Err(e) if e.0.contains("does not support") || e.0.contains("whiteouts") => return,
            Err(e) => panic!("{e}"),
        };
        let root = std::fs::canonicalize(t.path()).unwrap();
        assert_eq!(opts.config.workdir, Some(root.join(".up.unionmount-work")));
        assert!(root.join(".up.unionmount-work/work").is_dir());
        let mut again = crate::cli::parse_from([
            "unionmount".into(),
            root.join("lo").into_os_string(),
            root.join("up").into_os_string(),
            root.join("mnt").into_os_string(),
        ])
        .unwrap();
        let e = validate(&mut again).unwrap_err();
        assert!(e.0.contains("already in use"), "{e}");
        drop(locks);
        assert!(validate(&mut again).is_ok());
    }
}
