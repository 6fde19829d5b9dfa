//! The binary as other programs run it: containers/storage's `mount_program` form
//! (`unionmount -o lowerdir=..,upperdir=..,workdir=..[,more] MERGED`, from its storage
//! directory), `lowerdir=` alone for a read-only union, and mount(8) with an fstab line, which
//! goes through mount.fuse3 as `unionmount SOURCE MOUNTPOINT -o OPTIONS`.
//!
//! Needs root and /dev/fuse (skips with a printed reason otherwise, never when `CI` is set).
//! The mount(8) test also needs `unshare` (util-linux): mount(8) runs helpers with the standard
//! PATH only, so the test makes `unionmount` visible as /usr/local/bin/unionmount by a bind
//! mount inside a private mount namespace, leaving the machine's /usr/local/bin untouched; every
//! mount it makes lives and dies in that namespace.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use rustix::io::Errno;

use crate::cli::{
    BIN, can_mount, errno_of, mount_in, mountinfo_line, refused, run, stderr, unmount_command,
};
use crate::fixture::Stack;

/// The per-mount options from a mountinfo line (the sixth field).
fn mount_flags(mnt: &Path) -> Vec<String> {
    let line = mountinfo_line(mnt).expect("mounted");
    line.split(' ')
        .nth(5)
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// `p` relative to the stack's directory.
fn rel<'a>(s: &Stack, p: &'a Path) -> &'a Path {
    p.strip_prefix(s.tmp.path()).unwrap()
}

#[test]
fn storage_form_with_relative_paths() {
    if !can_mount() {
        return;
    }
    let s = Stack::new(&["f a top\nd dir", "f a hidden\nf b bottom\nf dir/c c"]);
    let before = s.lowers_dump();
    // What podman passes: empty elements, a quoted SELinux label with a comma, volatile, nodev.
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={},,nodev,context=\"system_u:object_r:container_file_t:s0:c1,c2\"",
        rel(&s, &s.lowers[0]).display(),
        rel(&s, &s.lowers[1]).display(),
        rel(&s, &s.upper).display(),
        rel(&s, &s.work).display(),
    );
    let mnt = rel(&s, &s.mnt);
    let _guard = mount_in(
        Some(s.tmp.path()),
        &[&"-o", &opts, &"-o", &"volatile,noexec", &mnt],
        &s.mnt,
    );
    // No polling: the mount is live when the command returns.
    assert_eq!(fs::read_to_string(s.mnt.join("a")).unwrap(), "top");
    assert_eq!(fs::read_to_string(s.mnt.join("b")).unwrap(), "bottom");
    let flags = mount_flags(&s.mnt);
    for f in ["nodev", "noexec", "rw"] {
        assert!(flags.iter().any(|x| x == f), "{f} missing from {flags:?}");
    }

    // Writes land in the upper given relative to the storage directory; volatile still
    // answers fsync (without syncing) and keeps the data.
    let f = fs::File::create(s.mnt.join("dir/new")).unwrap();
    std::io::Write::write_all(&mut &f, b"written").unwrap();
    f.sync_all().expect("fsync on a volatile union");
    drop(f);
    fs::write(s.mnt.join("b"), "changed").unwrap();
    assert_eq!(
        fs::read_to_string(s.upper.join("dir/new")).unwrap(),
        "written"
    );
    assert_eq!(fs::read_to_string(s.upper.join("b")).unwrap(), "changed");
    assert!(
        s.work.join("work").is_dir(),
        "the workdir= given was not used"
    );
    assert_eq!(s.lowers_dump(), before, "a write reached a lower");

    // noexec: the kernel refuses to execute, whatever the mode says.
    fs::write(s.mnt.join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    fs::set_permissions(s.mnt.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    let e = Command::new(s.mnt.join("run.sh")).output().unwrap_err();
    assert_eq!(errno_of(&e), Some(Errno::ACCESS), "{e}");

    let status = unmount_command(&s.mnt).status().unwrap();
    assert!(status.success());
    assert_eq!(fs::read_to_string(s.upper.join("b")).unwrap(), "changed");
}

#[test]
fn lowerdir_alone_is_a_read_only_union() {
    if !can_mount() {
        return;
    }
    let s = Stack::new(&["f a top", "f a hidden\nf b bottom"]);
    let opts = format!(
        "lowerdir={}:{}",
        s.lowers[0].display(),
        s.lowers[1].display()
    );
    // The mount(8) form: a SOURCE before the mountpoint, ignored.
    let _guard = mount_in(None, &[&"source", &s.mnt, &"-o", &opts], &s.mnt);
    assert!(mount_flags(&s.mnt).iter().any(|f| f == "ro"));
    assert_eq!(fs::read_to_string(s.mnt.join("a")).unwrap(), "top");
    assert_eq!(fs::read_to_string(s.mnt.join("b")).unwrap(), "bottom");
    let e = fs::write(s.mnt.join("c"), "x").unwrap_err();
    assert_eq!(errno_of(&e), Some(Errno::ROFS), "{e}");
    assert_eq!(fs::read_dir(&s.work).unwrap().count(), 0, "workdir touched");
}

/// containers/storage unpacks layers for a mount program with the OCI/AUFS markers
/// (`.wh.NAME`, `.wh..wh..opq`) where it cannot write the kernel's; the union must honour them.
#[test]
fn oci_whiteouts_in_lowers() {
    if !can_mount() {
        return;
    }
    let s = Stack::new(&[
        "W gone\nO opq\nf opq/new top\nd dir\nW dir/sub",
        "f gone bottom\nd opq\nf opq/old hidden\nf keep k\nf dir/sub s\nf dir/stay y",
    ]);
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        s.lowers[0].display(),
        s.lowers[1].display(),
        s.upper.display(),
        s.work.display()
    );
    let _guard = mount_in(None, &[&"-o", &opts, &s.mnt], &s.mnt);
    let names = |d: &str| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(s.mnt.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(""), ["dir", "keep", "opq"]);
    assert_eq!(names("opq"), ["new"]);
    assert_eq!(names("dir"), ["stay"]);
    for hidden in ["gone", "opq/old", "dir/sub", ".wh.gone", "opq/.wh..wh..opq"] {
        let e = fs::symlink_metadata(s.mnt.join(hidden)).unwrap_err();
        assert_eq!(errno_of(&e), Some(Errno::NOENT), "{hidden}: {e}");
    }
    // Changes over them are written in the kernel's format.
    fs::remove_file(s.mnt.join("keep")).unwrap();
    fs::write(s.mnt.join("gone"), "again").unwrap();
    let wh = fs::symlink_metadata(s.upper.join("keep")).unwrap();
    assert!(
        wh.file_type().is_char_device(),
        "no char 0/0 whiteout for keep"
    );
    assert_eq!(fs::read_to_string(s.mnt.join("gone")).unwrap(), "again");
    assert_eq!(names(""), ["dir", "gone", "opq"]);
}

#[test]
fn refuses_unknown_options_by_name() {
    if !can_mount() {
        return;
    }
    let s = Stack::new(&["f a x"]);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},uidmapping=0:1000:65536,squash_to_root,frobnicate,,",
        s.lowers[0].display(),
        s.upper.display(),
        s.work.display()
    );
    let msg = refused(
        &[&"-o", &opts, &s.mnt],
        &s.mnt,
        &["unknown mount option 'frobnicate'"],
    );
    let first = msg.lines().next().unwrap_or("");
    assert!(
        !first.contains("lowerdir") && !first.contains("workdir"),
        "a valid option was named: {first}"
    );
}

#[test]
fn version_names_the_program() {
    let out = run(&[&"--version"]);
    assert!(out.status.success(), "{out:?}");
    let v = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        v.trim(),
        format!("unionmount {}", env!("CARGO_PKG_VERSION"))
    );
}

/// `mount -t fuse.unionmount` and an fstab line (`mount -T FSTAB MOUNTPOINT`), inside a
/// private mount namespace (see the module docs). The script reports what it saw on stdout;
/// a trap detaches the mount if a step fails, which also ends the daemon.
#[test]
fn mount_command_and_fstab_line() {
    if !can_mount() {
        return;
    }
    if Command::new("unshare").arg("--version").output().is_err() {
        crate::mounted::skip("unshare (util-linux) is not installed");
        return;
    }
    let s = Stack::new(&["f a from-lower"]);
    let bin = s.tmp.path().join("bin");
    fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("unionmount")).unwrap();
    let layers = format!(
        "lowerdir={},upperdir={},workdir={}",
        s.lowers[0].display(),
        s.upper.display(),
        s.work.display()
    );
    let fstab = s.tmp.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "# an fstab line as a user would write it\nmyunion {} fuse.unionmount {layers},nofail,noauto,x-test.opt=1,defaults,noatime 0 0\n",
            s.mnt.display()
        ),
    )
    .unwrap();
    let script = r#"
set -e
trap 'umount -l "$MNT" 2>/dev/null || true' EXIT
mount --bind "$BIN" /usr/local/bin
mount -t fuse.unionmount myunion "$MNT" -o "$LAYERS,nodev,relatime"
grep " $MNT " /proc/self/mountinfo | sed 's/^/first: /'
echo "read: $(cat "$MNT/a")"
echo written > "$MNT/new"
umount "$MNT"
mount -T "$FSTAB" "$MNT"
grep " $MNT " /proc/self/mountinfo | sed 's/^/second: /'
echo "read2: $(cat "$MNT/new")"
umount "$MNT"
echo done
"#;
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("MNT", &s.mnt)
        .env("BIN", &bin)
        .env("LAYERS", &layers)
        .env("FSTAB", &fstab)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("\ndone"),
        "mount script failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        stderr(&out)
    );
    let line = |tag: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(tag))
            .unwrap_or_else(|| panic!("no {tag} line in:\n{stdout}"))
            .to_owned()
    };
    let first = line("first: ");
    assert!(
        first.contains(" - fuse") && first.contains("nodev"),
        "{first}"
    );
    assert!(line("second: ").contains(" - fuse"));
    assert_eq!(line("read: "), "from-lower");
    assert_eq!(line("read2: "), "written");
    assert_eq!(
        fs::read_to_string(s.upper.join("new")).unwrap(),
        "written\n"
    );
    assert!(
        mountinfo_line(&s.mnt).is_none(),
        "a namespace mount leaked out"
    );
}
