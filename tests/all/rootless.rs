//! Rootless operation: the real binary as root of a user namespace (`unshare --user
//! --map-root-user --mount`) and as an unprivileged user through fusermount3; uid/gid mapping,
//! squashing and `user.containers.override_stat`, with fuse-overlayfs given the same options as
//! the oracle where its behaviour is the one we want.
//!
//! These tests run as root in CI and build the rootless situation themselves: a user namespace
//! (util-linux `unshare`), or `setpriv` to nobody in a private mount namespace where a 0666
//! copy of /dev/fuse is bind-mounted over the real one (which stays 0600). Without root,
//! /dev/fuse, `unshare`, `setpriv` or fuse-overlayfs a test says why and passes, unless `CI` is
//! set. Every mount has a guard (or lives in a namespace that dies with the script); every
//! script runs under `timeout`.
//!
//! Intentional differences from fuse-overlayfs, by name: an owner outside the mapping cannot be
//! written (EOVERFLOW, as kernel idmapped mounts do; fuse-overlayfs stores 65534); a chown or
//! chmod of an object carrying `override_stat` rewrites the xattr (fuse-overlayfs does that
//! only with `xattr_permissions=`); `override_stat` is private (fuse-overlayfs shows it).

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::cli::{BIN, MountGuard, can_mount, is_mounted};
use crate::fixture::{Stack, xattrs};
use crate::mounted::skip;

/// The mapping of the fuse-overlayfs man page: disk 0 -> 1000, disk 1.. -> 100000...
const MAP: &str = "0:1000:1:1:100000:65536";
/// Lower owners and what MAP shows for them (70000 is outside the mapping).
const LOWER: &str = "
    f a A
    u a 0:0
    f b B
    u b 1:1
    f c C
    u c 500:500
    f d D
    u d 70000:70000
    d dir
    m dir 777
";
const SHOWN: &[(&str, &str)] = &[
    ("a", "1000:1000"),
    ("b", "100000:100000"),
    ("c", "100499:100499"),
    ("d", "65534:65534"),
    ("dir", "1000:1000"),
];

/// True when every tool in `tools` is on PATH; otherwise says which is missing.
fn have(tools: &[&str]) -> bool {
    for t in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            skip(&format!("{t} is not installed"));
            return false;
        }
    }
    true
}

/// Runs `cmd` under `timeout 120` and returns its stdout; panics with its stderr on failure.
fn run_ok(cmd: &[&str]) -> String {
    run_env(cmd, &[])
}

/// `run_ok` with environment variables `env` set.
fn run_env(cmd: &[&str], env: &[(&str, &Path)]) -> String {
    let mut c = Command::new("timeout");
    c.arg("120").args(cmd);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run timeout(1)");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Mounts the stack's top lower and upper at `mnt` with the real binary and `-o opts`.
fn mount_unionmount(stack: &Stack, opts: &str) -> MountGuard {
    let (l, u, w, m) = (
        stack.lowers[0].to_str().unwrap(),
        stack.upper.to_str().unwrap(),
        stack.work.to_str().unwrap(),
        stack.mnt.to_str().unwrap(),
    );
    run_ok(&[BIN, "-o", opts, "--workdir", w, l, u, m]);
    assert!(is_mounted(&stack.mnt));
    MountGuard(stack.mnt.clone())
}

/// Mounts the same lower with fuse-overlayfs (its own upper, workdir and mountpoint under the
/// stack's temporary directory) and `-o opts`; returns the guard and the mountpoint.
fn mount_fuse_overlayfs(stack: &Stack, opts: &str) -> (MountGuard, std::path::PathBuf) {
    let base = stack.tmp.path();
    for d in ["fo-upper", "fo-work", "fo-mnt"] {
        fs::create_dir_all(base.join(d)).unwrap();
    }
    let mnt = base.join("fo-mnt");
    let o = format!(
        "lowerdir={},upperdir={},workdir={},{opts}",
        stack.lowers[0].display(),
        base.join("fo-upper").display(),
        base.join("fo-work").display()
    );
    run_ok(&["fuse-overlayfs", "-o", &o, mnt.to_str().unwrap()]);
    assert!(is_mounted(&mnt));
    (MountGuard(mnt.clone()), mnt)
}

/// Runs the shell `script` under `unshare ARGS` with the stack's paths in `$L`, `$U`, `$W`,
/// `$M`, the binary in `$BIN` and `extra` set; returns its stdout.
fn in_namespace(unshare: &[&str], script: &str, stack: &Stack, extra: (&str, &Path)) -> String {
    let cmd: Vec<&str> = ["unshare"]
        .iter()
        .chain(unshare)
        .chain(&["sh", "-c", script])
        .copied()
        .collect();
    let env = [
        ("BIN", Path::new(BIN)),
        ("L", &stack.lowers[0]),
        ("U", &stack.upper),
        ("W", &stack.work),
        ("M", &stack.mnt),
        extra,
    ];
    run_env(&cmd, &env)
}

/// `uid:gid` of `p` (not followed).
fn owner(p: &Path) -> String {
    let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    format!("{}:{}", md.uid(), md.gid())
}

/// `uid:gid mode` of every entry of `dir`, sorted by name.
fn owners(dir: &Path) -> Vec<String> {
    crate::mount::names(dir)
        .iter()
        .map(|n| {
            let md = fs::symlink_metadata(dir.join(n)).unwrap();
            format!("{n} {}:{} {:o}", md.uid(), md.gid(), md.mode() & 0o7777)
        })
        .collect()
}

/// Runs `f` as uid/gid `id` on this thread (the FUSE request carries these ids).
fn as_id<T>(id: u32, f: impl FnOnce() -> T) -> T {
    let _user = crate::script::AsUser::new(id, id);
    f()
}

#[test]
fn uid_gid_mapping_matches_fuse_overlayfs() {
    if !can_mount() || !have(&["fuse-overlayfs"]) {
        return;
    }
    let stack = Stack::new(&[LOWER]);
    let opts = format!("uidmapping={MAP},gidmapping={MAP}");
    let _ours = mount_unionmount(&stack, &opts);
    let (_theirs, fo) = mount_fuse_overlayfs(&stack, &opts);
    for (name, want) in SHOWN {
        assert_eq!(owner(&stack.mnt.join(name)), *want, "unionmount: {name}");
        assert_eq!(owner(&fo.join(name)), *want, "fuse-overlayfs: {name}");
    }
    // readdirplus answers carry the mapped owners too.
    assert_eq!(owners(&stack.mnt), owners(&fo));

    let fo_upper = stack.tmp.path().join("fo-upper");
    for (mnt, upper) in [(&stack.mnt, &stack.upper), (&fo, &fo_upper)] {
        // chown to shown ids stores the disk ids (copy-up keeps disk ids until then).
        std::os::unix::fs::lchown(mnt.join("b"), Some(100005), Some(100006)).unwrap();
        assert_eq!(owner(&mnt.join("b")), "100005:100006");
        assert_eq!(owner(&upper.join("b")), "6:7", "{}", upper.display());
        // A new object of shown uid 100000 is stored as disk uid 1.
        as_id(100000, || fs::write(mnt.join("dir/new"), "n")).unwrap();
        assert_eq!(owner(&mnt.join("dir/new")), "100000:100000");
        assert_eq!(owner(&upper.join("dir/new")), "1:1");
        // A hard link takes no owner: allowed to root, which is outside the mapping.
        fs::hard_link(mnt.join("a"), mnt.join("dir/alink")).unwrap();
        assert_eq!(owner(&upper.join("dir/alink")), "0:0");
        // Copy-up of a data change keeps the disk owner.
        fs::write(mnt.join("c"), "changed").unwrap();
        assert_eq!(owner(&upper.join("c")), "500:500");
        assert_eq!(owner(&mnt.join("c")), "100499:100499");
    }
}

#[test]
fn unmapped_owners_are_refused_with_eoverflow() {
    if !can_mount() {
        return;
    }
    // fuse-overlayfs stores the overflow id 65534 instead, which then shows as 165533: the
    // owner is lost. Refusing is what kernel idmapped mounts do.
    let stack = Stack::new(&[LOWER]);
    // The man page's form, triples separated by commas inside the -o list.
    let opts = "uidmapping=0:1000:1,1:100000:65536,gidmapping=0:1000:1,1:100000:65536";
    let _m = mount_unionmount(&stack, opts);
    assert_eq!(owner(&stack.mnt.join("b")), "100000:100000");
    let overflow = Some(rustix::io::Errno::OVERFLOW.raw_os_error());
    let e = std::os::unix::fs::lchown(stack.mnt.join("c"), Some(5), None).unwrap_err();
    assert_eq!(e.raw_os_error(), overflow, "chown to an unmapped uid: {e}");
    let e = std::os::unix::fs::lchown(stack.mnt.join("c"), None, Some(70000)).unwrap_err();
    assert_eq!(e.raw_os_error(), overflow, "chown to an unmapped gid: {e}");
    // Root (uid 0) is outside the mapping: it cannot create objects here.
    let e = fs::write(stack.mnt.join("rootfile"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), overflow, "create by an unmapped uid: {e}");
    assert!(!stack.upper.join("rootfile").exists());
    // The refused chown copied nothing up.
    assert!(!stack.upper.join("c").exists());
    assert_eq!(owner(&stack.mnt.join("c")), "100499:100499");
}

#[test]
fn posix_acl_ids_go_through_the_mapping() {
    if !can_mount() || !have(&["setfacl", "getfacl"]) {
        return;
    }
    // Kernel idmapped mounts map ACL ids too; fuse-overlayfs does not.
    let stack = Stack::new(&["f secret s\nu secret 2:2\nm secret 600"]);
    let _m = mount_unionmount(&stack, &format!("uidmapping={MAP},gidmapping={MAP}"));
    let secret = stack.mnt.join("secret");
    let s = secret.to_str().unwrap();
    run_ok(&["setfacl", "-m", "u:100005:rw", s]);
    let shown = run_ok(&["getfacl", "-n", "--omit-header", s]);
    assert!(shown.contains("user:100005:rw-"), "{shown}");
    let up = stack.upper.join("secret");
    let stored = run_ok(&["getfacl", "-n", "--omit-header", up.to_str().unwrap()]);
    assert!(stored.contains("user:6:rw-"), "{stored}");
    // The kernel enforces the mapped entry: shown uid 100005 may write, 100006 may not.
    as_id(100005, || fs::write(&secret, "granted")).unwrap();
    let e = as_id(100006, || fs::write(&secret, "denied")).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
    assert_eq!(fs::read_to_string(&up).unwrap(), "granted");
    // An entry for an id outside the mapping cannot be stored.
    let out = Command::new("setfacl")
        .args(["-m", "u:5:r", s])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "setfacl with an unmapped uid succeeded"
    );
    let stored = run_ok(&["getfacl", "-n", "--omit-header", up.to_str().unwrap()]);
    assert!(!stored.contains("user:5:"), "{stored}");
}

#[test]
fn squash_options_match_fuse_overlayfs() {
    if !can_mount() || !have(&["fuse-overlayfs"]) {
        return;
    }
    for (opts, want) in [
        ("squash_to_root".to_string(), "0:0"),
        // squash_to_uid wins over squash_to_root, which still squashes the gid.
        (
            format!("squash_to_root,squash_to_uid=7,uidmapping={MAP}"),
            "7:0",
        ),
        ("squash_to_uid=7,squash_to_gid=8".to_string(), "7:8"),
    ] {
        let stack = Stack::new(&[LOWER]);
        let _ours = mount_unionmount(&stack, &opts);
        let (_theirs, fo) = mount_fuse_overlayfs(&stack, &opts);
        for (name, _) in SHOWN {
            assert_eq!(owner(&stack.mnt.join(name)), want, "{opts}: {name}");
            assert_eq!(owner(&fo.join(name)), want, "fuse-overlayfs {opts}: {name}");
        }
        // A chown is stored (reverse-mapped) but the squashed owner is still what shows.
        std::os::unix::fs::lchown(stack.mnt.join("a"), Some(100002), Some(100003)).unwrap();
        assert_eq!(owner(&stack.mnt.join("a")), want, "{opts}");
        let stored = if opts.contains("uidmapping") {
            "3:100003"
        } else {
            "100002:100003"
        };
        assert_eq!(owner(&stack.upper.join("a")), stored, "{opts}");
    }
}

/// A lower as containers/storage leaves it with `force_mask`: the real owner and mode are
/// the mounting user's (root here), the intended ones in `user.containers.override_stat` (on
/// the layer root too, which is how fuse-overlayfs and unionmount know to look for it).
const OVERRIDDEN: &str = "
    x . user.containers.override_stat 0:0:0755:dir
    f ov data
    m ov 600
    x ov user.containers.override_stat 0:0:4755:file
    f plain p
    m plain 600
    x plain user.containers.override_stat 1000:1000:0644:file
    f theirs t
    u theirs 1234:1234
    m theirs 755
    x theirs user.containers.override_stat 0:0:4755:file
";

#[test]
fn override_stat_shows_owner_and_mode_and_stays_private() {
    if !can_mount() || !have(&["fuse-overlayfs"]) {
        return;
    }
    let stack = Stack::new(&[OVERRIDDEN]);
    let _ours = mount_unionmount(&stack, "noallow_other");
    let (_theirs, fo) = mount_fuse_overlayfs(&stack, "noacl");
    let want = ["ov 0:0 4755", "plain 1000:1000 644"];
    assert_eq!(owners(&stack.mnt)[..2], want);
    assert_eq!(owners(&fo)[..2], want, "fuse-overlayfs");
    // On a file its owner (1234, not the mounter) could have marked, the claim of a setuid
    // root file is not believed; fuse-overlayfs believes it.
    assert_eq!(owners(&stack.mnt)[2], "theirs 1234:1234 755");
    assert_eq!(owners(&fo)[2], "theirs 0:0 4755", "fuse-overlayfs");

    // Private: neither listed, read nor settable through the mount (fuse-overlayfs shows it).
    let ov = stack.mnt.join("ov");
    assert!(xattrs(&ov).is_empty(), "{:?}", xattrs(&ov));
    let key = "user.containers.override_stat";
    let mut buf = [0u8; 64];
    assert_eq!(
        rustix::fs::lgetxattr(&ov, key, &mut buf),
        Err(rustix::io::Errno::NODATA)
    );
    let set = rustix::fs::lsetxattr(&ov, key, b"0:0:6777", rustix::fs::XattrFlags::empty());
    assert_eq!(set, Err(rustix::io::Errno::PERM));
    assert!(
        !stack.upper.join("ov").exists(),
        "a refused setxattr copies nothing up"
    );

    // chmod and chown of an overridden object rewrite the xattr of its copy; the real owner
    // and mode stay the ones that let the rootless user reach it.
    fs::set_permissions(&ov, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::lchown(&ov, Some(5), Some(6)).unwrap();
    assert_eq!(owners(&stack.mnt)[0], "ov 5:6 700");
    let up = stack.upper.join("ov");
    let md = fs::symlink_metadata(&up).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (0, 0, 0o600));
    let mut buf = [0u8; 64];
    let n = rustix::fs::lgetxattr(&up, key, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"5:6:0700:file");

    // A data copy-up carries the xattr along: the owner shown does not change.
    fs::write(stack.mnt.join("plain"), "more").unwrap();
    assert_eq!(owners(&stack.mnt)[1], "plain 1000:1000 644");
    let up_x = xattrs(&stack.upper.join("plain"));
    assert!(
        up_x.contains(&format!("{key}=1000:1000:0644:file")),
        "{up_x:?}"
    );
}

/// What a script sees of the union at `$M`: every entry with type, mode, owner and size,
/// and every file's checksum (the kernel overlayfs view must print the same).
const DUMP: &str = r#"dump() { (cd "$1" && find . -printf '%p %y %m %U:%G %s\n' | sort && find . -type f -exec md5sum {} + | sort); }"#;

#[test]
fn userns_root_mounts_in_userxattr_format_like_kernel_overlayfs() {
    if !can_mount() || !have(&["unshare", "md5sum"]) {
        return;
    }
    let stack = Stack::new(&["
        f keep keep
        f gone gone
        f dir/old old
        d dir/sub
        f other x
    "]);
    let kwork = stack.tmp.path().join("kwork");
    fs::create_dir(&kwork).unwrap();
    // Root of the namespace: unionmount must pick userxattr itself (trusted.* is refused
    // there), mount FUSE directly, and fall back from passthrough (no CAP_SYS_ADMIN in the
    // initial namespace) without being told.
    let script = format!(
        r#"set -eu
{DUMP}
[ "$(cat /proc/self/uid_map | tr -s ' ')" != " 0 0 4294967295" ]
"$BIN" --workdir "$W" "$L" "$U" "$M"
exec 3<>"$M/keep"; echo appended >&3; exec 3>&-
cat "$M/keep"
echo new > "$M/new"
rm "$M/gone" "$M/other"
rm -r "$M/dir"; mkdir "$M/dir"; echo again > "$M/dir/again"
echo '--- union'; dump "$M"
umount "$M"
mount -t overlay overlay -o "userxattr,lowerdir=$L,upperdir=$U,workdir=$K" "$M"
echo '--- kernel'; dump "$M"
umount "$M"
"#
    );
    let userns = ["--user", "--map-root-user", "--mount"];
    let stdout = in_namespace(&userns, &script, &stack, ("K", &kwork));
    // Written through an fd opened read-write at offset 0, over "keep\n".
    assert!(stdout.starts_with("appended\n"), "{stdout}");
    let (union, kernel) = stdout
        .split_once("--- union\n")
        .and_then(|(_, rest)| rest.split_once("--- kernel\n"))
        .expect("both dumps");
    assert_eq!(
        union, kernel,
        "unionmount and kernel overlayfs (userxattr) differ"
    );
    assert!(union.contains("./dir/again") && !union.contains("./dir/old"));
    assert!(!union.contains("./gone") && union.contains("./new"));

    // The upper is in the kernel's userxattr format: whiteouts are char 0/0 (mknod of a
    // whiteout is allowed in a user namespace since Linux 5.8), opaque is user.overlay.opaque.
    let gone = fs::symlink_metadata(stack.upper.join("gone")).unwrap();
    assert!(
        gone.file_type().is_char_device() && gone.rdev() == 0,
        "whiteout: {gone:?}"
    );
    let dir_x = xattrs(&stack.upper.join("dir"));
    assert!(
        dir_x.iter().any(|x| x.starts_with("user.overlay.opaque")),
        "{dir_x:?}"
    );
    for p in ["dir", "new", "keep", "dir/again"] {
        let x = xattrs(&stack.upper.join(p));
        assert!(!x.iter().any(|k| k.starts_with("trusted.")), "{p}: {x:?}");
    }
}

#[test]
fn nobody_mounts_through_fusermount3_with_a_private_dev_fuse() {
    if !can_mount() || !have(&["unshare", "setpriv", "fusermount3", "mknod"]) {
        return;
    }
    let stack = Stack::new(&["
        f keep keep
        f gone gone
        d dir
        f dir/old old
        u dir 65534:65534
    "]);
    // nobody must reach and own the layers and the mountpoint (fusermount3 checks the
    // mountpoint's owner); the lower is only read.
    let base = stack.tmp.path();
    fs::set_permissions(base, fs::Permissions::from_mode(0o755)).unwrap();
    for p in [&stack.upper, &stack.work, &stack.mnt] {
        std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    }
    let dev = base.join("dev");
    fs::create_dir(&dev).unwrap();
    // A private mount namespace in which /dev/fuse is a 0666 node (the real one stays 0600).
    let script = r#"set -eu
mknod -m 0666 "$D/fuse" c 10 229
mount --bind "$D/fuse" /dev/fuse
as_nobody() { setpriv --reuid 65534 --regid 65534 --clear-groups -- "$@"; }
as_nobody "$BIN" --workdir "$W" "$L" "$U" "$M"
grep -q " $M .* fuse" /proc/self/mountinfo
as_nobody sh -c 'cat "$M/keep"; echo new > "$M/new"; rm "$M/gone"; rm -r "$M/dir"; mkdir "$M/dir"'
as_nobody ls -n "$M"
as_nobody fusermount3 -u "$M"
"#;
    let stdout = in_namespace(&["--mount"], script, &stack, ("D", &dev));
    assert!(stdout.starts_with("keep"), "{stdout}");
    // Shown as the mounting user's own objects (no allow_other without user_allow_other).
    assert!(
        stdout.contains("65534 65534") && stdout.contains(" new\n"),
        "{stdout}"
    );
    // What nobody wrote is in the userxattr format, owned by nobody.
    let gone = fs::symlink_metadata(stack.upper.join("gone")).unwrap();
    assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
    assert!(
        xattrs(&stack.upper.join("dir"))
            .iter()
            .any(|x| x.starts_with("user.overlay.opaque"))
    );
    assert_eq!(owner(&stack.upper.join("new")), "65534:65534");
    assert_eq!(
        fs::read_to_string(stack.upper.join("new")).unwrap(),
        "new\n"
    );
}
