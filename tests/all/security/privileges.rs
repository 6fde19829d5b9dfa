//! Privileges through a mount: an unprivileged user gains no setuid/setgid bit or file
//! capability through copy-up and cannot change a root file (kernel overlayfs as the oracle),
//! and with `allow_other,default_permissions` other users are held to the mode bits and to
//! POSIX ACLs.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use rustix::io::Errno;

use super::{AsUser, NOBODY, open_up, xattr_outcome};
use crate::fixture::{Stack, dump};
use crate::mounted::{KernelMount, UnionMount, fuse_available, overlay_available};

/// Root-owned lower files and directories an unprivileged user acts on.
const PRIV_LOWER: &str = "f suid x\nm suid 4777\nf sgid x\nm sgid 2777\nf cap x\nm cap 777\n\
                          f trunc x\nm trunc 4777\nf rootfile r\nm rootfile 644\n\
                          f chowned x\nm chowned 4755\nd sgdir\nm sgdir 2777";

/// A file capability (v2, effective, CAP_NET_RAW permitted) on the lower `cap`.
fn set_capability(lower: &Path) {
    let mut v = Vec::new();
    for word in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        v.extend_from_slice(&word.to_le_bytes());
    }
    rustix::fs::lsetxattr(
        lower.join("cap"),
        "security.capability",
        &v,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
}

fn mode_of(p: &Path) -> String {
    match fs::symlink_metadata(p) {
        Ok(md) => format!("{:o} {}:{}", md.mode() & 0o7777, md.uid(), md.gid()),
        Err(e) => format!("errno {:?}", e.raw_os_error()),
    }
}

fn io_outcome(r: std::io::Result<()>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("errno {:?}", e.raw_os_error()),
    }
}

/// What nobody (and root, for chown) achieves on `PRIV_LOWER` through the mount at `root`.
fn privilege_probe(root: &Path) -> Vec<String> {
    let p = |n: &str| root.join(n);
    let mut out = Vec::new();
    {
        let _nobody = AsUser::new(NOBODY, NOBODY);
        for f in ["suid", "sgid", "cap"] {
            let w = fs::OpenOptions::new()
                .write(true)
                .open(p(f))
                .map(|mut file| {
                    use std::io::Write;
                    file.write_all(b"y").unwrap();
                });
            out.push(format!(
                "write {f}: {} -> {}",
                io_outcome(w),
                mode_of(&p(f))
            ));
        }
        let t = fs::OpenOptions::new()
            .write(true)
            .open(p("trunc"))
            .and_then(|f| f.set_len(0));
        out.push(format!(
            "truncate: {} -> {}",
            io_outcome(t),
            mode_of(&p("trunc"))
        ));
        let chmod = fs::set_permissions(p("rootfile"), fs::Permissions::from_mode(0o4777));
        out.push(format!("chmod rootfile: {}", io_outcome(chmod)));
        let chown = rustix::fs::chown(
            p("rootfile"),
            Some(rustix::process::Uid::from_raw(NOBODY)),
            None,
        );
        out.push(format!(
            "chown rootfile: {}",
            io_outcome(chown.map_err(Into::into))
        ));
        out.push(format!("rootfile: {}", mode_of(&p("rootfile"))));
        let made = fs::write(p("sgdir/f"), "n");
        out.push(format!(
            "create in sgdir: {} -> {}",
            io_outcome(made),
            mode_of(&p("sgdir/f"))
        ));
        let made = fs::create_dir(p("sgdir/d"));
        out.push(format!(
            "mkdir in sgdir: {} -> {}",
            io_outcome(made),
            mode_of(&p("sgdir/d"))
        ));
        // Not in the file's group (0): setting setgid on one's own file is silently dropped.
        let chmod = fs::set_permissions(p("sgdir/f"), fs::Permissions::from_mode(0o2777));
        out.push(format!(
            "chmod g+s own: {} -> {}",
            io_outcome(chmod),
            mode_of(&p("sgdir/f"))
        ));
    }
    let cap = rustix::fs::lgetxattr(p("cap"), "security.capability", &mut [0u8; 64][..]);
    out.push(format!("cap after write: {}", xattr_outcome(cap.map(drop))));
    let nobody = (
        Some(rustix::process::Uid::from_raw(NOBODY)),
        Some(rustix::process::Gid::from_raw(NOBODY)),
    );
    let chown = rustix::fs::chown(p("chowned"), nobody.0, nobody.1);
    out.push(format!(
        "root chown: {} -> {}",
        io_outcome(chown.map_err(Into::into)),
        mode_of(&p("chowned"))
    ));
    out
}

/// An unprivileged user gains no setuid/setgid bit or capability through copy-up, cannot
/// change a root file, and setgid directories pass their group on: the same outcomes as on
/// kernel overlayfs, and each of them the safe one.
#[test]
fn no_privilege_is_gained_through_copy_up() {
    if !overlay_available() {
        return;
    }
    let probe = |s: Stack, kernel: bool| {
        open_up(&s);
        set_capability(&s.lowers[0]);
        if kernel {
            privilege_probe(KernelMount::mount(s).mnt())
        } else {
            privilege_probe(UnionMount::mount(s).mnt())
        }
    };
    let kernel = probe(Stack::new(&[PRIV_LOWER]), true);
    let union = probe(Stack::new(&[PRIV_LOWER]), false);
    eprintln!("{}", union.join("\n"));
    assert_eq!(
        union.join("\n"),
        kernel.join("\n"),
        "unionmount and kernel overlayfs differ"
    );
    let expect = [
        "write suid: ok -> 777 0:0",
        "write sgid: ok -> 777 0:0",
        "truncate: ok -> 777 0:0",
        "chmod rootfile: errno Some(1)",
        "chown rootfile: errno Some(1)",
        "rootfile: 644 0:0",
        "create in sgdir: ok -> 644 65534:0",
        "cap after write: errno 61",
        "root chown: ok -> 755 65534:65534",
    ];
    for e in expect {
        assert!(
            union.iter().any(|l| l == e),
            "missing {e:?} in\n{}",
            union.join("\n")
        );
    }
    let mkdir = union
        .iter()
        .find(|l| l.starts_with("mkdir in sgdir"))
        .unwrap();
    assert!(mkdir.ends_with("2755 65534:0"), "{mkdir}");
}

/// The `tests` user of the CI image; any uid other than root and nobody does.
const OTHER: u32 = 1001;

/// With allow_other and default_permissions (root's defaults), other users are held to the
/// mode bits: no reading another user's 0600 file (root's or a user's), no listing a 0700
/// directory, no writing a 0644 file; the owners can (the control).
#[test]
fn other_users_are_held_to_the_mode_bits() {
    if !fuse_available() {
        return;
    }
    let s = Stack::new(&[
        "f rootsecret r\nm rootsecret 600\nf usersecret u\nm usersecret 600\n\
         d private\nf private/in p\nm private 700\nf public r\nm public 644",
    ]);
    open_up(&s);
    let own = |p: &str, uid: u32| {
        let id = (
            Some(rustix::process::Uid::from_raw(uid)),
            Some(rustix::process::Gid::from_raw(uid)),
        );
        rustix::fs::chown(s.lowers[0].join(p), id.0, id.1).unwrap();
    };
    own("usersecret", OTHER);
    own("private", NOBODY);
    let m = UnionMount::mount(s);
    let eacces = Some(Errno::ACCESS.raw_os_error());
    let denied = |uid: u32, what: &str, r: std::io::Result<()>| {
        assert_eq!(
            r.map_err(|e| e.raw_os_error()),
            Err(eacces),
            "uid {uid}: {what}"
        );
    };
    {
        let _u = AsUser::new(NOBODY, NOBODY);
        denied(
            NOBODY,
            "read root's 0600",
            fs::read(m.path("rootsecret")).map(drop),
        );
        denied(
            NOBODY,
            "read a user's 0600",
            fs::read(m.path("usersecret")).map(drop),
        );
        denied(
            NOBODY,
            "write root's 0644",
            fs::write(m.path("public"), "w"),
        );
        assert_eq!(
            fs::read_dir(m.path("private")).unwrap().count(),
            1,
            "the owner lists"
        );
    }
    {
        let _u = AsUser::new(OTHER, OTHER);
        denied(
            OTHER,
            "list nobody's 0700",
            fs::read_dir(m.path("private")).map(drop),
        );
        denied(
            OTHER,
            "read in nobody's 0700",
            fs::read(m.path("private/in")).map(drop),
        );
        denied(
            OTHER,
            "read root's 0600",
            fs::read(m.path("rootsecret")).map(drop),
        );
        assert_eq!(
            fs::read_to_string(m.path("usersecret")).unwrap(),
            "u",
            "the owner reads"
        );
    }
    assert_eq!(fs::read_to_string(m.path("public")).unwrap(), "r");
    assert!(
        dump(&m.stack.upper).is_empty(),
        "a refused access copied something up"
    );
}

/// A POSIX access ACL in the kernel's xattr form (`system.posix_acl_access`): version 2, then
/// (tag, perm, id) entries sorted by tag.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    v
}

/// POSIX ACLs on lower objects are enforced like the mode bits, as under kernel overlayfs: an
/// ACL entry takes read away from nobody on a 0644 file, and one gives nobody write to a 0755
/// directory of root's. (With default_permissions the kernel checks them only when the mount
/// says it speaks POSIX ACLs.)
#[test]
fn posix_acls_are_enforced_like_the_mode_bits() {
    if !fuse_available() {
        return;
    }
    let s = Stack::new(&["f shared r\nm shared 644\nd drop\nm drop 755"]);
    open_up(&s);
    const USER_OBJ: u16 = 0x01;
    const USER: u16 = 0x02;
    const GROUP_OBJ: u16 = 0x04;
    const MASK: u16 = 0x10;
    const OTHER_ENTRY: u16 = 0x20;
    let set = |p: &str, entries: &[(u16, u16, u32)]| {
        rustix::fs::setxattr(
            s.lowers[0].join(p),
            "system.posix_acl_access",
            &acl(entries),
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
    };
    set(
        "shared",
        &[
            (USER_OBJ, 6, u32::MAX),
            (USER, 0, NOBODY),
            (GROUP_OBJ, 4, u32::MAX),
            (MASK, 4, u32::MAX),
            (OTHER_ENTRY, 4, u32::MAX),
        ],
    );
    set(
        "drop",
        &[
            (USER_OBJ, 7, u32::MAX),
            (USER, 7, NOBODY),
            (GROUP_OBJ, 5, u32::MAX),
            (MASK, 7, u32::MAX),
            (OTHER_ENTRY, 5, u32::MAX),
        ],
    );
    let m = UnionMount::mount(s);
    {
        let _u = AsUser::new(NOBODY, NOBODY);
        assert_eq!(
            fs::read(m.path("shared")).map_err(|e| e.raw_os_error()),
            Err(Some(Errno::ACCESS.raw_os_error())),
            "nobody read a file its ACL entry denies"
        );
        fs::write(m.path("drop/mine"), "n").expect("nobody writes where its ACL entry allows");
    }
    {
        let _u = AsUser::new(OTHER, OTHER);
        assert_eq!(fs::read_to_string(m.path("shared")).unwrap(), "r");
        assert!(fs::write(m.path("drop/theirs"), "o").is_err());
    }
}
