//! `apply` refusing malformed layers: every rule, each with a valid entry before the bad one
//! (the check pass must refuse before anything is written), and symlinks already in the
//! target directory, which are replaced but never followed. After each refusal the target
//! directory and its neighbour are dumped and must be unchanged.

use std::fs;
use std::os::unix::fs::FileTypeExt;

use unionmount::layout::dump;

use super::tarfile::LayerTar;
use super::{ok, show};
use crate::cli::run;

/// One malformed archive: how to build it, and what the error must name.
type Case = (&'static str, fn(&mut LayerTar), &'static [&'static str]);

const MALFORMED: &[Case] = &[
    (
        "dotdot",
        |t| _ = t.file("../outside/evil", "x"),
        &["../outside/evil", "`..`"],
    ),
    (
        "inner dotdot",
        |t| _ = t.file("a/../../outside/evil", "x"),
        &["a/../../outside/evil", "`..`"],
    ),
    (
        "absolute",
        |t| _ = t.file("/tmp/evil", "x"),
        &["/tmp/evil", "absolute"],
    ),
    (
        "bare .wh.",
        |t| _ = t.file("d/.wh.", ""),
        &["d/.wh.", "alone"],
    ),
    (
        "root opq",
        |t| _ = t.file(".wh..wh..opq", ""),
        &[".wh..wh..opq", "root"],
    ),
    (
        "opq dir",
        |t| _ = t.dir("d/.wh..wh..opq"),
        &["d/.wh..wh..opq", "regular file"],
    ),
    (
        "opq symlink",
        |t| _ = t.symlink("d/.wh..wh..opq", "x"),
        &["d/.wh..wh..opq", "regular file"],
    ),
    (
        "whiteout dir",
        |t| _ = t.dir("d/.wh.x"),
        &["d/.wh.x", "regular file"],
    ),
    (
        "aufs meta",
        |t| _ = t.file("d/.wh..wh.plnk", ""),
        &["d/.wh..wh.plnk", "AUFS"],
    ),
    (
        "through own symlink",
        |t| {
            t.symlink("sl", "../outside").file("sl/evil", "x");
        },
        &["sl/evil", "symlink"],
    ),
    (
        "through own abs symlink",
        |t| {
            t.symlink("sl", "/").file("sl/tmp/evil", "x");
        },
        &["sl/tmp/evil", "symlink"],
    ),
    (
        "link to missing",
        |t| _ = t.hardlink("hl", "missing"),
        &["hl", "missing"],
    ),
    (
        "link escaping",
        |t| _ = t.hardlink("hl", "../outside/file"),
        &["hl", "`..`"],
    ),
    (
        "link to dir",
        |t| {
            t.dir("dd").hardlink("hl", "dd");
        },
        &["hl", "directory"],
    ),
    (
        "under a file",
        |t| {
            t.file("f", "x").file("f/x", "y");
        },
        &["f/x", "not a directory"],
    ),
    (
        "volume header",
        |t| _ = t.raw("vol", tar::EntryType::new(b'V'), "", b""),
        &["vol", "unsupported entry type"],
    ),
];

#[test]
fn apply_refuses_malformed_entries_and_leaves_everything_unchanged() {
    let tmp = tempfile::tempdir_in(crate::fixture::test_root()).unwrap();
    let dir = tmp.path().join("dir");
    let outside = tmp.path().join("outside");
    unionmount::layout::build(&dir, "f pre existing\nd d").unwrap();
    unionmount::layout::build(&outside, "f file secret").unwrap();
    let (dir_before, outside_before) = (dump(&dir), dump(&outside));
    for (what, make, needles) in MALFORMED {
        let mut t = LayerTar::new();
        // A valid entry first: the check pass must refuse before anything is written.
        t.file("ok", "fine");
        make(&mut t);
        let layer = tmp.path().join("layer.tar");
        t.write(&layer);
        let out = run(&[&"apply", &layer, &dir]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: {}",
            show(&[&"apply"], &out)
        );
        for n in *needles {
            assert!(
                err.contains(n),
                "{what}: the error does not say {n:?}: {err}"
            );
        }
        assert_eq!(dump(&dir), dir_before, "{what}: the directory changed");
        assert_eq!(
            dump(&outside),
            outside_before,
            "{what}: something outside changed"
        );
    }
    // A target directory that did not exist is not left behind by a refusal.
    let fresh = tmp.path().join("fresh");
    let out = run(&[&"apply", &tmp.path().join("layer.tar"), &fresh]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&[], &out));
    assert!(!fresh.exists(), "a refused apply created its target");
}

#[test]
fn apply_never_follows_a_symlink_already_in_the_directory() {
    let tmp = tempfile::tempdir_in(crate::fixture::test_root()).unwrap();
    let dir = tmp.path().join("dir");
    let outside = tmp.path().join("outside");
    unionmount::layout::build(&dir, "l evil ../outside\nl abs /").unwrap();
    unionmount::layout::build(&outside, "f file secret").unwrap();
    let outside_before = dump(&outside);
    let layer = tmp.path().join("layer.tar");
    for name in ["evil/file", "abs/tmp/x", "evil/.wh.file"] {
        LayerTar::new().file(name, "x").write(&layer);
        let out = run(&[&"apply", &layer, &dir]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", show(&[], &out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("symlink"));
        assert_eq!(dump(&outside), outside_before, "{name} reached outside");
    }
    // Replacing the symlink itself is fine: the link goes, its target stays.
    LayerTar::new()
        .file("evil", "now a file")
        .file(".wh.abs", "")
        .write(&layer);
    ok(&[&"apply", &layer, &dir]);
    assert_eq!(fs::read_to_string(dir.join("evil")).unwrap(), "now a file");
    assert!(
        fs::symlink_metadata(dir.join("abs"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert_eq!(dump(&outside), outside_before);
}
