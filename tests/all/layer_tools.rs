//! The layer tools end to end, through the binary: `apply` of crafted OCI layers then kernel
//! overlayfs over the result, every refusal of a malformed entry (`refusals`), `export`
//! (reproducible, round trip through `apply`, read by umoci and GNU tar, of an upper written by
//! a real mount session), `diff` and `check --repair` on uppers holding every marker format,
//! and the library's `layout` mount helper. All of it takes about a second; the umoci test
//! installs umoci with apt-get when it is missing (skipped with a reason if that fails, a
//! failure when `CI` is set).
//!
//! Views are compared as `layout` dumps: unionmount's in-process (`dump_union`), kernel
//! overlayfs's through a mount. Where they differ on purpose (unionmount reads AUFS and
//! fuse-overlayfs markers, kernel overlayfs does not), the test says so. Mounted tests skip
//! with a reason only without root or overlayfs, never when `CI` is set.

mod refusals;
mod tarfile;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use unionmount::config::Config;
use unionmount::layout::{dump, dump_union};
use unionmount::union::Union;

use crate::cli::{run, spawn_foreground};
use crate::fixture::Stack;
use crate::mounted::{KernelMount, UnionMount, installed, overlay_available, skip};
use tarfile::{LayerTar, MTIME};

/// Runs the binary and returns its stdout, asserting it succeeded.
#[track_caller]
fn ok(args: &[&dyn AsRef<OsStr>]) -> String {
    let out = run(args);
    assert!(out.status.success(), "{}", show(args, &out));
    String::from_utf8(out.stdout).unwrap()
}

fn show(args: &[&dyn AsRef<OsStr>], out: &Output) -> String {
    let args: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    format!(
        "unionmount {}: {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// unionmount's merged view of read-only `layers` (top first), in-process.
fn engine_view(layers: &[PathBuf]) -> String {
    let u = Union::new(&Config::new(layers.to_vec(), None, None)).expect("read-only union");
    dump_union(&u).expect("dump the union")
}

/// Kernel overlayfs's merged view of `layers` (top first) under an empty upper.
fn kernel_view(layers: &[PathBuf]) -> String {
    let mut s = Stack::new(&[]);
    s.lowers = layers.to_vec();
    let k = KernelMount::mount(s);
    dump(k.mnt())
}

/// Every file under `root` whose name starts with `.wh.`, and every fuse-overlayfs xattr.
fn foreign_markers(root: &Path) -> Vec<String> {
    dump(root)
        .lines()
        .filter(|l| {
            l.split(' ')
                .next()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .starts_with(".wh.")
                || l.contains("fuseoverlayfs")
        })
        .map(String::from)
        .collect()
}

#[test]
fn apply_crafted_layers_then_kernel_overlayfs_mounts_them() {
    if !overlay_available() {
        return;
    }
    let mut s = Stack::new(&["", "", ""]);
    let dir = s.tmp.path().to_path_buf();
    let mut base = LayerTar::new();
    base.dir("etc/")
        .file("etc/passwd", "root")
        .symlink("etc/link", "passwd");
    base.hardlink("etc/hard", "etc/passwd").fifo("run/fifo");
    base.xattr("user.k", "v").file("etc/xa", "x");
    base.attrs(1000, 1001, 0o600).file("home/u/secret", "s");
    base.dir("old/")
        .file("old/a", "a")
        .file("gone", "g")
        .dir("keep")
        .file("keep/k", "k");
    base.write(&dir.join("base.tar"));
    let mut top = LayerTar::new();
    top.file(".wh.gone", "")
        .dir("old/")
        .file("old/.wh..wh..opq", "");
    top.file("old/new", "n")
        .file("etc/passwd", "changed")
        .file("keep/.wh.k", "");
    top.write(&dir.join("top.tar.gz"));
    LayerTar::new()
        .file("z", "zstd")
        .write(&dir.join("third.tar.zst"));
    for (layer, into) in [("third.tar.zst", 0), ("top.tar.gz", 1), ("base.tar", 2)] {
        ok(&[&"apply", &dir.join(layer), &s.lowers[into]]);
    }

    // The kernel's formats on disk, nothing else.
    let top_dir = &s.lowers[1];
    assert!(
        fs::symlink_metadata(top_dir.join("gone"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert_eq!(
        fs::symlink_metadata(top_dir.join("gone")).unwrap().rdev(),
        0
    );
    assert_eq!(
        unionmount::layout::xattrs(&top_dir.join("old")),
        ["trusted.overlay.opaque=y"]
    );
    for l in &s.lowers {
        assert_eq!(foreign_markers(l), Vec::<String>::new(), "{}", dump(l));
    }

    let layers = s.lowers.clone();
    let engine = engine_view(&layers);
    s.lowers = layers;
    let k = KernelMount::mount(s);
    let p = |rel: &str| k.path(rel);
    assert!(!p("gone").exists());
    assert_eq!(fs::read_dir(p("old")).unwrap().count(), 1);
    assert_eq!(fs::read_to_string(p("old/new")).unwrap(), "n");
    assert_eq!(fs::read_dir(p("keep")).unwrap().count(), 0);
    assert_eq!(fs::read_to_string(p("etc/passwd")).unwrap(), "changed");
    assert_eq!(fs::read_to_string(p("etc/hard")).unwrap(), "root");
    assert_eq!(fs::metadata(p("etc/hard")).unwrap().nlink(), 2);
    assert_eq!(fs::read_link(p("etc/link")).unwrap(), Path::new("passwd"));
    assert!(
        fs::symlink_metadata(p("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(fs::read_to_string(p("z")).unwrap(), "zstd");
    let secret = fs::metadata(p("home/u/secret")).unwrap();
    assert_eq!(
        (secret.mode() & 0o7777, secret.uid(), secret.gid()),
        (0o600, 1000, 1001)
    );
    assert_eq!(fs::metadata(p("etc/passwd")).unwrap().mtime() as u64, MTIME);
    // Directory times are set after their contents (`old` is the top layer's, filled after
    // its entry).
    assert_eq!(fs::metadata(p("old")).unwrap().mtime() as u64, MTIME);
    let xa = unionmount::layout::xattrs(&p("etc/xa"));
    assert!(xa.contains(&"user.k=v".to_string()), "{xa:?}");
    assert_eq!(
        dump(k.mnt()),
        engine,
        "kernel overlayfs and unionmount disagree"
    );
}

#[test]
fn apply_with_userxattr_writes_user_overlay_markers() {
    let tmp = tempfile::tempdir_in(crate::fixture::test_root()).unwrap();
    let layer = tmp.path().join("layer.tar");
    LayerTar::new()
        .dir("d")
        .file("d/.wh..wh..opq", "")
        .write(&layer);
    ok(&[&"apply", &"--userxattr", &layer, &tmp.path().join("out")]);
    assert_eq!(
        unionmount::layout::xattrs(&tmp.path().join("out/d")),
        ["user.overlay.opaque=y"]
    );
}

/// Lowers in the kernel's formats and an upper with every marker format the engine reads.
const LOWER: &str = "f a a\nf b b\nf c c\nd d\nf d/x x\nd e\nf e/y y\nd g\nf g/z z\nd h\nf h/w w\n\
                     d i\nf i/v v\nf i/u u\nf o o";
const UPPER: &str = "f a changed\nm a 600\nx a user.k v\nw b\nW c\no d\nf d/new n\nO e\nU g\nY h\n\
                     d i\nX i/v\nf n new\nh n2 n\nu n 1000:1000\nl s a\np fifo\nf o o\n\
                     x o trusted.overlay.origin zz";

#[test]
fn export_is_reproducible_and_round_trips_through_apply() {
    if !overlay_available() {
        return;
    }
    let s = Stack::with_upper(&[LOWER], UPPER);
    let view = dump_union(&s.union()).unwrap();
    let (t1, t2) = (s.tmp.path().join("1.tar"), s.tmp.path().join("2.tar"));
    ok(&[&"export", &s.upper, &"-o", &t1]);
    // Reading the upper (atimes) and a second run change nothing in the bytes.
    let _ = dump(&s.upper);
    ok(&[&"export", &s.upper, &"-o", &t2]);
    let stdout = run(&[&"export", &s.upper, &"-o", &"-"]).stdout;
    let bytes = fs::read(&t1).unwrap();
    assert!(bytes == fs::read(&t2).unwrap(), "two exports differ");
    assert!(
        bytes == stdout,
        "export to stdout differs from export to a file"
    );

    let applied = s.tmp.path().join("applied");
    ok(&[&"apply", &t1, &applied]);
    assert_eq!(foreign_markers(&applied), Vec::<String>::new());
    let layers = [applied.clone(), s.lowers[0].clone()];
    assert_eq!(
        engine_view(&layers),
        view,
        "unionmount's view after the round trip"
    );
    assert_eq!(
        kernel_view(&layers),
        view,
        "kernel overlayfs's view of the applied layer"
    );
}

#[test]
fn export_of_an_upper_written_by_a_unionmount_session() {
    if !overlay_available() {
        return;
    }
    let lower = "f a a\nf b b\nd d\nf d/x x\nd e\nf e/y y\nf h h";
    let mut m = UnionMount::new(&[lower]);
    let p = |rel: &str| m.path(rel);
    fs::write(p("a"), "changed").unwrap();
    fs::remove_file(p("b")).unwrap();
    fs::remove_dir_all(p("d")).unwrap();
    fs::create_dir(p("d")).unwrap();
    fs::write(p("d/new"), "n").unwrap();
    fs::create_dir(p("n")).unwrap();
    fs::write(p("n/f"), "f").unwrap();
    fs::hard_link(p("n/f"), p("n/f2")).unwrap();
    fs::set_permissions(
        p("e/y"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    fs::rename(p("h"), p("h2")).unwrap();
    std::os::unix::fs::symlink("a", p("s")).unwrap();
    rustix::fs::setxattr(p("a"), "user.k", b"v", rustix::fs::XattrFlags::empty()).unwrap();
    let view = dump(m.mnt());
    m.unmount();
    let s = &m.stack;

    let diff = ok(&[&"diff", &s.upper, &"--lowers", &s.lowers[0]]);
    assert_eq!(
        diff,
        "C /a\nD /b\nC /d\nA /d/new\nD /d/x\nC /e/y\nD /h\nA /h2\nA /n\nA /n/f\nA /n/f2\nA /s\n"
    );
    let tar = s.tmp.path().join("session.tar");
    ok(&[&"export", &s.upper, &"-o", &tar]);
    let applied = s.tmp.path().join("applied");
    ok(&[&"apply", &tar, &applied]);
    assert_eq!(kernel_view(&[applied, s.lowers[0].clone()]), view);
}

#[test]
fn export_is_unpacked_by_umoci_as_unionmount_shows_it() {
    if !overlay_available() {
        return;
    }
    if !installed("umoci", "umoci") {
        return skip("umoci is not installed and apt-get cannot install it");
    }
    let s = Stack::with_upper(&[LOWER], UPPER);
    let view = dump_union(&s.union()).unwrap();
    let t = s.tmp.path();
    ok(&[&"export", &s.lowers[0], &"-o", &t.join("base.tar")]);
    ok(&[&"export", &s.upper, &"-o", &t.join("top.tar")]);
    let img = format!("{}:t", t.join("img").display());
    let umoci = |args: &[&dyn AsRef<OsStr>]| {
        let out = std::process::Command::new("umoci")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "umoci: {}", show(args, &out));
    };
    umoci(&[&"init", &"--layout", &t.join("img")]);
    umoci(&[&"new", &"--image", &img]);
    for layer in ["base.tar", "top.tar"] {
        umoci(&[&"raw", &"add-layer", &"--image", &img, &t.join(layer)]);
    }
    umoci(&[&"unpack", &"--image", &img, &t.join("bundle")]);
    assert_eq!(dump(&t.join("bundle/rootfs")), view);
}

#[test]
fn export_is_extracted_by_gnu_tar() {
    let long = "d/long-name-to-need-a-gnu-long-name-header-over-one-hundred-bytes-in-the-full-path-of-this-file";
    let s = Stack::with_upper(
        &[],
        &format!("f a a\nx a user.k v\nh a2 a\nl s a\np fifo\nd d\nm d 700\nf {long} x\nu d 7:8"),
    );
    let base = s.tmp.path();
    let tar = base.join("u.tar");
    ok(&[&"export", &s.upper, &"-o", &tar]);
    let out = base.join("out");
    fs::create_dir(&out).unwrap();
    let status = std::process::Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(&tar)
        .arg("-C")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(dump(&out), dump(&s.upper));
    let listing = std::process::Command::new("tar")
        .arg("-tvf")
        .arg(&tar)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("a2 link to a"), "{listing}");
}

/// Sets the mtime of `p` (a directory's changes with every entry made in it).
fn set_mtime(p: &Path, sec: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: 0,
    };
    let ts = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(rustix::fs::CWD, p, &ts, rustix::fs::AtFlags::empty()).unwrap();
}

#[test]
fn diff_reads_every_marker_format() {
    let s = Stack::with_upper(&[LOWER], &format!("{UPPER}\nw nothing"));
    set_mtime(&s.upper.join("i"), 1);
    let by_markers = ok(&[&"diff", &s.upper]);
    assert_eq!(
        by_markers,
        "A /a\nD /b\nD /c\nA /d\nA /d/new\nA /e\nA /fifo\nA /g\nA /h\nC /i\nA /i/v\nA /n\n\
         A /n2\nD /nothing\nC /o\nA /s\n"
    );
    let by_lookup = ok(&[&"diff", &s.upper, &"--lowers", &s.lowers[0]]);
    assert_eq!(
        by_lookup,
        "C /a\nD /b\nD /c\nC /d\nA /d/new\nD /d/x\nC /e\nD /e/y\nA /fifo\nC /g\nD /g/z\nC /h\n\
         D /h/w\nC /i\nC /i/v\nA /n\nA /n2\nC /o\nA /s\n"
    );
}

#[test]
fn check_repair_then_kernel_overlayfs_shows_the_unionmount_view() {
    if !overlay_available() {
        return;
    }
    let upper = "f a changed\nW a\nW c\nO e\nU g\nY h\nw nothing\no d\nw d/x";
    let s = Stack::with_upper(&[LOWER], upper);
    let view = dump_union(&s.union()).unwrap();
    let layers = [s.upper.clone(), s.lowers[0].clone()];
    // unionmount reads AUFS and fuse-overlayfs markers; kernel overlayfs does not, on purpose
    // (here the upper is the kernel's top lower: it reads them in no layer).
    assert_ne!(
        kernel_view(&layers),
        view,
        "the kernel read foreign markers"
    );
    let work = s.work.join("work");
    unionmount::layout::build(&work, "f #1.99 partial\nf tmpdir/sub x\nw whiteout").unwrap();
    let w = s.work.display();
    let check = |extra: &[&str]| {
        let mut args: Vec<&dyn AsRef<OsStr>> =
            vec![&"check", &s.upper, &s.work, &"--lowers", &s.lowers[0]];
        args.extend(extra.iter().map(|e| e as &dyn AsRef<OsStr>));
        let out = run(&args);
        let text = show(&args, &out);
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            text,
        )
    };
    let (code, problems, text) = check(&[]);
    assert_eq!(code, Some(1), "{text}");
    let expected = format!(
        "PROBLEM: a stale workdir temporary {w}/work/#1.99\n\
         PROBLEM: a stale workdir temporary {w}/work/tmpdir\n\
         PROBLEM: a .wh.* file that hides nothing /.wh.a\n\
         PROBLEM: an AUFS whiteout (.wh.NAME file) /c\n\
         PROBLEM: a whiteout that hides nothing /d/x\n\
         PROBLEM: opaque by .wh..wh..opq /e\n\
         PROBLEM: opaque by user.fuseoverlayfs.opaque /g\n\
         PROBLEM: opaque by user.overlay.opaque /h\n\
         PROBLEM: a whiteout that hides nothing /nothing\n"
    );
    assert_eq!(problems, expected);
    let (code, fixed, text) = check(&["--repair"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(fixed, expected.replace("PROBLEM: ", "fixed: "));
    let (code, again, text) = check(&[]);
    assert_eq!((code, again.as_str()), (Some(0), ""), "{text}");
    assert_eq!(foreign_markers(&s.upper), Vec::<String>::new());
    assert!(
        work.join("whiteout").exists(),
        "the shared whiteout is not a temporary"
    );
    let after = dump_union(&s.union()).unwrap();
    assert_eq!(after, view, "repair changed unionmount's view");
    // Kernel overlayfs over the repaired upper (as its upper) shows the same.
    let k = KernelMount::mount(s);
    assert_eq!(dump(k.mnt()), view, "kernel overlayfs after repair");
}

#[test]
fn check_refuses_a_layer_in_use() {
    if !crate::cli::can_mount() {
        return;
    }
    let s = Stack::with_upper(&["f a a"], "W a");
    let _fg = spawn_foreground(
        &[&"--workdir", &s.work, &s.lowers[0], &s.upper, &s.mnt],
        &s.mnt,
    );
    let out = run(&[&"check", &s.upper, &s.work, &"--repair"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&[], &out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    assert!(s.upper.join(".wh.a").exists(), "a live upper was repaired");
}

#[test]
fn tool_names_come_before_lower_names() {
    // `unionmount diff UPPER MNT` is the diff tool (too many arguments), not a mount of `diff`.
    let out = run(&[&"diff", &"upper", &"mnt"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&[], &out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unionmount diff"));
    let help = ok(&[&"--help"]);
    assert!(
        help.contains("./diff"),
        "--help does not say how to name a lower `diff`"
    );
}

#[test]
fn library_layers_mount_through_fuse_and_dump_like_the_engine() {
    if !crate::mounted::fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir_in(crate::fixture::test_root()).unwrap();
    let layers = unionmount::layout::Layers::create(tmp.path(), &[LOWER], UPPER).unwrap();
    let view = dump_union(&layers.union().unwrap()).unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let session = layers
        .mount(&mnt, &crate::mounted::test_mount_options())
        .unwrap();
    let mounted = dump(&mnt);
    if let Err(e) = session.umount_and_join() {
        // Busy while a fork of another test's thread briefly holds our fds: detach.
        eprintln!("unmounting {}: {e}; detaching", mnt.display());
        crate::mounted::detach(&mnt);
    }
    assert_eq!(mounted, view);
    assert!(view.contains("d/new f 1"), "{view}");
}
