//! Unit tests of the command-line forms and their defaults.

use super::*;
use std::time::Duration;

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

/// `s` as `cli` resolves it: against the current directory.
fn abs(s: &str) -> PathBuf {
    std::env::current_dir().unwrap().join(s)
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
    assert_eq!(rw.config.lowers, [abs("l1"), abs("l2")]);
    assert_eq!(rw.config.upper, Some(abs("up")));
    assert_eq!(rw.mountpoint, abs("mnt"));
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
    assert!(!u.mount.allow_other && u.mount.default_permissions && !u.mount.suid && !u.mount.dev);
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
            "noallow_other,nodefault_permissions,nosuid,nodev,fsname=x,spin=20",
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
            exec: true,
            read_only: false,
            fsname: "x".into(),
            passthrough: Passthrough::Auto,
            spin: Duration::from_micros(20),
        }
    );
    for bad in [
        "timeout=-1",
        "timeout=abc",
        "timeout",
        "fsname=",
        "userxattr=1",
        "spin=1001",
        "spin=-1",
        "spin",
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
    assert_eq!(o.config.lowers, [abs("u"), abs("l1"), abs("l2")]);
    assert_eq!((o.config.upper, o.config.workdir), (None, None));
    assert!(o.mount.read_only);
    let rw = parse_as(ROOT, &["-o", "ro,rw", "l", "u", "m"]).unwrap();
    assert!(!rw.mount.read_only && rw.config.upper.is_some());
}

#[test]
fn mount_program_form() {
    // As containers/storage runs it: relative paths, from its storage directory.
    let o = parse_as(
        ROOT,
        &[
            "-o",
            "lowerdir=l/A:l/B,upperdir=diff,workdir=work,,nodev",
            "-o",
            r#"context="system_u:object_r:container_file_t:s0:c1,c2",volatile"#,
            "merged",
        ],
    )
    .unwrap();
    assert_eq!(o.config.lowers, [abs("l/A"), abs("l/B")]);
    assert_eq!(o.config.upper, Some(abs("diff")));
    assert_eq!(o.config.workdir, Some(abs("work")));
    assert_eq!(o.mountpoint, abs("merged"));
    assert!(o.config.volatile && !o.mount.dev && !o.mount.read_only);

    // Absolute paths stay as they are; --workdir may stand for workdir=.
    let o = parse_as(
        ROOT,
        &["-o", "lowerdir=/a,upperdir=/u", "--workdir", "/w", "/m"],
    )
    .unwrap();
    assert_eq!(
        (o.config.lowers, o.config.upper, o.config.workdir),
        (
            vec![PathBuf::from("/a")],
            Some(PathBuf::from("/u")),
            Some(PathBuf::from("/w"))
        )
    );

    // lowerdir= alone: a read-only union; a workdir= there is ignored, as the kernel does.
    let ro = parse_as(ROOT, &["-o", "lowerdir=/a:/b,workdir=/w", "/m"]).unwrap();
    assert!(ro.mount.read_only && ro.config.upper.is_none() && ro.config.workdir.is_none());
    assert!(!ro.config.volatile && ro.mount.exec);
}

#[test]
fn mount8_form_ignores_the_source() {
    // mount.fuse3 runs `unionmount SOURCE MOUNTPOINT -o OPTIONS`.
    let o = parse_as(
        ROOT,
        &[
            "my-union",
            "/mnt/u",
            "-o",
            "rw,nosuid,nodev,noexec,relatime,lowerdir=/a,upperdir=/u,workdir=/w",
        ],
    )
    .unwrap();
    assert_eq!(o.config.lowers, [PathBuf::from("/a")]);
    assert_eq!(o.mountpoint, PathBuf::from("/mnt/u"));
    assert!(!o.mount.suid && !o.mount.dev && !o.mount.exec && !o.mount.read_only);
}

#[test]
fn form_errors() {
    for (args, needle) in [
        (&["-o", "lowerdir=/a", "s", "m", "x"][..], "not 3 arguments"),
        (
            &["-o", "upperdir=/u,workdir=/w", "l", "m"],
            "need -o lowerdir=",
        ),
        (
            &[
                "-o",
                "lowerdir=/a,upperdir=/u,workdir=/w",
                "--workdir",
                "/w",
                "m",
            ],
            "given twice",
        ),
        (
            &["-o", "lowerdir=/a", "--workdir", "/w", "m"],
            "--workdir needs",
        ),
        (&["-o", "lowerdir=/a::/b", "m"], "empty lower directory"),
        (&["only-one"], "missing MOUNTPOINT"),
        (&["a", "b", "c", "d"], "too many arguments"),
        (&["-o", "squash_to_root=1", "l", "m"], "squash_to_root"),
    ] {
        let err = parse_as(ROOT, args).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidValue, "{args:?}");
        assert!(err.to_string().contains(needle), "{args:?}: {err}");
    }
    assert!(parse_as(ROOT, &[]).is_err());
}

#[test]
fn version_flag() {
    let err = parse_as(ROOT, &["--version"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DisplayVersion);
    assert!(err.to_string().contains(env!("CARGO_PKG_VERSION")));
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
    // The forms podman and the man page write; the squash and mapping details are idmap's
    // tests.
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
