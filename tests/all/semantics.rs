//! In-process engine tests: union semantics without a mount.
//!
//! Each test builds a fresh layer stack, drives the engine by node ids and names, and checks
//! the merged view, the upper's on-disk markers and that no lower was touched.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;

use rustix::fs::{FileType, OFlags, Timespec};
use rustix::io::Errno;
use unionmount::config::Config;
use unionmount::union::attr::{SetAttr, SetTime};
use unionmount::union::rename::RenameFlags;
use unionmount::union::{Ctx, Union, inode::ROOT};

use crate::fixture::{Stack, dump};
use crate::ops::*;

fn names(u: &Union, ino: u64) -> Vec<String> {
    let mut v: Vec<String> = entries(u, ino)
        .iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

const NOREPLACE: RenameFlags = RenameFlags {
    noreplace: true,
    exchange: false,
};
const EXCHANGE: RenameFlags = RenameFlags {
    noreplace: false,
    exchange: true,
};

// ---------------------------------------------------------------------------------------------
// Lookup

#[test]
fn lookup_top_down_and_merge() {
    let s = Stack::new(&["f a top\nd d\nf d/z z", "f a bottom\nf b b\nd d\nf d/x x"]);
    let u = s.union();
    let a = u.lookup(ROOT, OsStr::new("a")).unwrap();
    let fh = u
        .open(&Ctx::current(), a.ino, rustix::fs::OFlags::RDONLY)
        .unwrap();
    assert_eq!(u.read(fh, 0, 100).unwrap(), b"top");
    let d = u.lookup(ROOT, OsStr::new("d")).unwrap();
    assert_eq!(names(&u, d.ino), [".", "..", "x", "z"]);
    assert_eq!(names(&u, ROOT), [".", "..", "a", "b", "d"]);
}

#[test]
fn upper_wins_over_every_lower() {
    let s = Stack::with_upper(&["f a middle", "f a bottom\nf b bottom"], "f a upper");
    let u = s.union();
    assert_eq!(cat(&u, "a"), "upper");
    assert_eq!(cat(&u, "b"), "bottom");
}

#[test]
fn non_directory_hides_everything_below() {
    let s = Stack::new(&["f d file", "d d\nf d/x x"]);
    let u = s.union();
    let d = at(&u, "d").unwrap();
    assert_eq!(FileType::from_raw_mode(d.st.st_mode), FileType::RegularFile);
    assert_eq!(err(u.lookup(d.ino, os("x"))), Errno::NOTDIR);
    assert_eq!(cat(&u, "d"), "file");
    assert_eq!(ls(&u, ""), ["d"]);
}

#[test]
fn directory_merges_only_with_directories() {
    // A file in the middle layer ends the merge: the directory in the bottom layer is hidden.
    let s = Stack::new(&["f d/a a", "f d file", "f d/b b"]);
    let u = s.union();
    assert_eq!(ls(&u, "d"), ["a"]);
    assert_eq!(err(at(&u, "d/b")), Errno::NOENT);
}

#[test]
fn upper_directory_hides_lower_file() {
    let s = Stack::with_upper(&["f d lower-file"], "f d/u u");
    let u = s.union();
    assert_eq!(
        FileType::from_raw_mode(at(&u, "d").unwrap().st.st_mode),
        FileType::Directory
    );
    assert_eq!(ls(&u, "d"), ["u"]);
}

#[test]
fn opaque_directory_stops_the_merge_in_every_format() {
    for (what, mark) in [
        ("trusted.overlay.opaque", "o d"),
        ("user.overlay.opaque", "d d\nx d user.overlay.opaque y"),
        (".wh..wh..opq", "O d"),
        (
            "user.fuseoverlayfs.opaque",
            "d d\nx d user.fuseoverlayfs.opaque y",
        ),
    ] {
        let s = Stack::new(&[
            &format!("{mark}\nf d/top t"),
            "f d/below b\nd d/sub\nf d/sub/x x",
        ]);
        let u = s.union();
        assert_eq!(ls(&u, "d"), ["top"], "{what}");
        assert_eq!(err(at(&u, "d/below")), Errno::NOENT, "{what}");
        assert_eq!(err(at(&u, "d/sub")), Errno::NOENT, "{what}");
        assert_eq!(err(at(&u, "d/.wh..wh..opq")), Errno::NOENT, "{what}");
    }
}

#[test]
fn opaque_in_a_middle_layer_still_merges_above() {
    let s = Stack::new(&["f d/a a", "o d\nf d/b b", "f d/c c"]);
    let u = s.union();
    assert_eq!(ls(&u, "d"), ["a", "b"]);
}

#[test]
fn opaque_value_other_than_y_is_not_opaque() {
    let s = Stack::new(&["d d\nx d trusted.overlay.opaque n\nf d/a a", "f d/b b"]);
    let u = s.union();
    assert_eq!(ls(&u, "d"), ["a", "b"]);
}

#[test]
fn whiteout_hides_lower_in_every_format() {
    for (what, mark) in [
        ("char 0/0", "w"),
        (".wh.NAME", "W"),
        ("xattr whiteout", "X"),
    ] {
        for dir in ["", "sub/"] {
            let s = Stack::new(&[
                &format!("{mark} {dir}gone\nf {dir}keep k"),
                &format!("f {dir}gone g\nf {dir}other o\nd {dir}gonedir"),
            ]);
            let u = s.union();
            assert_eq!(
                err(at(&u, &format!("{dir}gone"))),
                Errno::NOENT,
                "{what} in {dir:?}"
            );
            let listed = ls(&u, dir.trim_end_matches('/'));
            assert_eq!(listed, ["gonedir", "keep", "other"], "{what} in {dir:?}");
        }
    }
}

#[test]
fn whiteout_of_a_directory_hides_its_whole_tree() {
    let s = Stack::new(&["w d\nW e", "f d/a a\nd d/sub\nf e/b b"]);
    let u = s.union();
    assert_eq!(err(at(&u, "d")), Errno::NOENT);
    assert_eq!(err(at(&u, "e")), Errno::NOENT);
    assert_eq!(ls(&u, ""), Vec::<String>::new());
}

#[test]
fn whiteout_in_a_middle_layer_does_not_hide_the_layer_above() {
    let s = Stack::new(&["f a top", "w a\nw b", "f a bottom\nf b bottom\nf c c"]);
    let u = s.union();
    assert_eq!(cat(&u, "a"), "top");
    assert_eq!(err(at(&u, "b")), Errno::NOENT);
    assert_eq!(ls(&u, ""), ["a", "c"]);
}

#[test]
fn upper_whiteout_hides_lower() {
    let s = Stack::with_upper(&["f a a\nf b b"], "w a");
    let u = s.union();
    assert_eq!(err(at(&u, "a")), Errno::NOENT);
    assert_eq!(ls(&u, ""), ["b"]);
}

#[test]
fn merged_directory_attributes_and_xattrs_come_from_the_top_copy() {
    let s = Stack::new(&[
        "d d\nm d 700\nx d user.a top",
        "d d\nm d 755\nx d user.a bottom\nx d user.b bottom\nf d/f f",
    ]);
    let u = s.union();
    let d = at(&u, "d").unwrap();
    assert_eq!(d.st.st_mode & 0o7777, 0o700);
    assert_eq!(u.getxattr(d.ino, os("user.a")).unwrap(), b"top");
    assert_eq!(err(u.getxattr(d.ino, os("user.b"))), Errno::NODATA);
    assert_eq!(u.listxattr(d.ino).unwrap(), ["user.a"]);
}

#[test]
fn lookup_errors() {
    let s = Stack::new(&["f a a\nd d"]);
    let u = s.union();
    assert_eq!(err(u.lookup(ROOT, os("missing"))), Errno::NOENT);
    let a = ino(&u, "a");
    assert_eq!(err(u.lookup(a, os("x"))), Errno::NOTDIR);
    for bad in ["", ".", "..", "d/a", "../a", "a\0b"] {
        assert_eq!(err(u.lookup(ROOT, os(bad))), Errno::INVAL, "{bad:?}");
    }
    assert_eq!(
        err(u.lookup(ROOT, os(&"n".repeat(256)))),
        Errno::NAMETOOLONG
    );
}

#[test]
fn marker_names_are_never_objects() {
    let s = Stack::new(&["W a\nO d\nf d/x x", "f a a"]);
    let u = s.union();
    assert_eq!(err(at(&u, ".wh.a")), Errno::NOENT);
    assert_eq!(err(at(&u, "d/.wh..wh..opq")), Errno::NOENT);
    assert_eq!(ls(&u, ""), ["d"]);
    assert_eq!(ls(&u, "d"), ["x"]);
}

// ---------------------------------------------------------------------------------------------
// Readdir

#[test]
fn readdir_dedups_hides_markers_and_has_dot_entries() {
    let s = Stack::with_upper(
        &[
            "f a 1\nw b\nW c\nd d\nf e 1\nX x",
            "f a 2\nf b 2\nf c 2\nd d\nf e 2\nf f 2\nf x 2",
        ],
        "f a 0\nw e",
    );
    let u = s.union();
    let list = entries(&u, ROOT);
    let mut got: Vec<String> = list
        .iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect();
    let n = got.len();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), n, "a name listed twice: {list:?}");
    assert_eq!(got, [".", "..", "a", "d", "f"]);
    let dot = list.iter().find(|e| e.name == ".").unwrap();
    let dotdot = list.iter().find(|e| e.name == "..").unwrap();
    assert_eq!(dot.ino, ROOT);
    assert_eq!(dotdot.ino, ROOT);
    assert_eq!(dot.kind, FileType::Directory);
}

#[test]
fn readdir_entries_match_lookup() {
    let s = Stack::with_upper(
        &[
            "f a 1\nd d\nf d/x x\nl s a\np fifo\nh hl a",
            "f a 2\nf b 2\nd d\nf d/y y\nd lonely\nd lonely/in",
        ],
        "f u u\nd d\nf d/z z",
    );
    let u = s.union();
    put(&u, "b", "copied up").unwrap();
    for dir in ["", "d", "lonely"] {
        let dino = ino(&u, dir);
        for e in entries(&u, dino) {
            let name = e.name.to_string_lossy().into_owned();
            let (want_ino, want_kind) = match name.as_str() {
                "." => (dino, FileType::Directory),
                ".." => (ROOT, FileType::Directory),
                _ => {
                    let a = u.lookup(dino, &e.name).unwrap();
                    (a.ino, FileType::from_raw_mode(a.st.st_mode))
                }
            };
            assert_eq!(e.ino, want_ino, "d_ino of {dir}/{name}");
            assert_eq!(e.kind, want_kind, "d_type of {dir}/{name}");
        }
    }
    // Hard links show one inode number.
    assert_eq!(ino(&u, "a"), ino(&u, "hl"));
    assert_eq!(
        ino(&u, "lonely/in"),
        entries(&u, ino(&u, "lonely"))
            .iter()
            .find(|e| e.name == "in")
            .unwrap()
            .ino
    );
}

#[test]
fn readdir_snapshot_stays_valid_while_entries_change() {
    let s = Stack::new(&["f a a\nf b b\nf c c\nf d d\nf e e"]);
    let u = s.union();
    let before = s.lowers_dump();
    let fh = u.opendir(ROOT).unwrap();
    let first = u.readdir(fh, 0).unwrap().to_vec();
    assert_eq!(first.len(), 7);
    let victims: Vec<_> = first[2..4].iter().map(|e| e.name.clone()).collect();
    for v in &victims {
        u.unlink(&ctx(), ROOT, v).unwrap();
    }
    put(&u, "new", "n").unwrap();
    // Continuing from any offset serves the same snapshot.
    for off in 1..=first.len() as u64 {
        let again = u.readdir(fh, off).unwrap();
        let names_a: Vec<_> = again.iter().map(|e| &e.name).collect();
        let names_b: Vec<_> = first.iter().map(|e| &e.name).collect();
        assert_eq!(names_a, names_b, "offset {off}");
    }
    // A rewind takes a new snapshot; so does a new handle.
    let rewound: Vec<_> = u
        .readdir(fh, 0)
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    u.releasedir(fh);
    assert_eq!(rewound.len(), 6);
    for v in &victims {
        assert!(!rewound.contains(v), "{v:?} still listed after rewind");
    }
    assert!(rewound.iter().any(|n| n == "new"));
    assert_eq!(names(&u, ROOT).len(), 6);
    assert_lowers(&s, &before);
}

#[test]
fn readdir_of_a_non_directory_fails() {
    let s = Stack::new(&["f a a"]);
    let u = s.union();
    assert_eq!(err(u.opendir(ino(&u, "a"))), Errno::NOTDIR);
    assert_eq!(err(u.readdir(9999, 0)), Errno::BADF);
}

// ---------------------------------------------------------------------------------------------
// Copy-up

fn set_times(p: &std::path::Path, sec: i64) {
    let ts = rustix::fs::Timestamps {
        last_access: Timespec {
            tv_sec: sec,
            tv_nsec: 111,
        },
        last_modification: Timespec {
            tv_sec: sec + 1,
            tv_nsec: 222,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &ts,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

#[test]
fn copy_up_keeps_data_mode_owner_times_and_xattrs() {
    let s = Stack::new(&[
        "f d/a hello\nm d/a 4750\nx d/a user.k v\nx d/a trusted.overlay.origin zz\nx d/a user.overlay.x y\nx d/a trusted.t tv\nm d 750\nx d user.dir dv",
    ]);
    let la = s.lowers[0].join("d/a");
    std::os::unix::fs::lchown(&la, Some(1234), Some(5678)).unwrap();
    rustix::fs::chmod(&la, rustix::fs::Mode::from_raw_mode(0o4750)).unwrap();
    std::os::unix::fs::lchown(s.lowers[0].join("d"), Some(42), Some(43)).unwrap();
    set_times(&la, 1_000_000);
    let before = s.lowers_dump();
    let lst = fs::symlink_metadata(&la).unwrap();
    let u = s.union();
    let i = ino(&u, "d/a");
    u.setxattr(i, os("user.new"), b"n", 0).unwrap();

    let ua = s.upper.join("d/a");
    let ust = fs::symlink_metadata(&ua).unwrap();
    assert_eq!(fs::read(&ua).unwrap(), b"hello");
    assert_eq!(
        ust.mode() & 0o7777,
        0o4750,
        "mode (setuid included) as the lower had it"
    );
    assert_eq!((ust.uid(), ust.gid()), (1234, 5678));
    assert_eq!(
        (ust.mtime(), ust.mtime_nsec()),
        (lst.mtime(), lst.mtime_nsec())
    );
    assert_eq!(
        (ust.atime(), ust.atime_nsec()),
        (lst.atime(), lst.atime_nsec())
    );
    let x = crate::fixture::xattrs(&ua);
    assert_eq!(
        x,
        ["trusted.t=tv", "user.k=v", "user.new=n"],
        "private xattrs must not be copied"
    );
    // The parent was copied up first, with its owner, mode and xattrs.
    let ud = fs::symlink_metadata(s.upper.join("d")).unwrap();
    assert_eq!(ud.mode() & 0o7777, 0o750);
    assert_eq!((ud.uid(), ud.gid()), (42, 43));
    assert_eq!(crate::fixture::xattrs(&s.upper.join("d")), ["user.dir=dv"]);
    // Through the union: the same attributes, the same inode number.
    let a = u.getattr(i).unwrap();
    assert_eq!(a.ino, i);
    assert_eq!(
        (a.st.st_uid, a.st.st_gid, a.st.st_mode & 0o7777),
        (1234, 5678, 0o4750)
    );
    assert_eq!(upper_paths(&s), ["d", "d/a"]);
    assert_work_empty(&s);
    assert_lowers(&s, &before);
}

#[test]
fn open_for_read_does_not_copy_up_open_for_write_does() {
    let s = Stack::new(&["f d/e/a data"]);
    let before = s.lowers_dump();
    let u = s.union();
    let i = ino(&u, "d/e/a");
    let fh = u.open(&ctx(), i, OFlags::RDONLY).unwrap();
    assert_eq!(u.read(fh, 0, 10).unwrap(), b"data");
    u.release(fh);
    assert_eq!(upper_paths(&s), Vec::<String>::new(), "a read copied up");
    let fh = u.open(&ctx(), i, OFlags::WRONLY).unwrap();
    u.release(fh);
    assert_eq!(upper_paths(&s), ["d", "d/e", "d/e/a"]);
    assert_eq!(fs::read(s.upper.join("d/e/a")).unwrap(), b"data");
    assert_work_empty(&s);
    assert_lowers(&s, &before);
}

#[test]
fn open_with_o_trunc_copies_up_an_empty_file() {
    let s = Stack::new(&["f a long content"]);
    let before = s.lowers_dump();
    let u = s.union();
    let fh = u
        .open(&ctx(), ino(&u, "a"), OFlags::WRONLY | OFlags::TRUNC)
        .unwrap();
    u.write(fh, 0, b"x").unwrap();
    u.release(fh);
    assert_eq!(cat(&u, "a"), "x");
    assert_eq!(fs::read(s.upper.join("a")).unwrap(), b"x");
    assert_lowers(&s, &before);
}

#[test]
fn every_attribute_change_copies_up() {
    let s = Stack::new(&["f m m\nf o o\nf t t\nf s sized\nf x x\nl l target\np fifo"]);
    let before = s.lowers_dump();
    let u = s.union();
    let c = ctx();
    u.setattr(
        &c,
        ino(&u, "m"),
        &SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .unwrap();
    u.setattr(
        &c,
        ino(&u, "o"),
        &SetAttr {
            uid: Some(7),
            gid: Some(8),
            ..Default::default()
        },
    )
    .unwrap();
    let ts = Timespec {
        tv_sec: 12345,
        tv_nsec: 6,
    };
    u.setattr(
        &c,
        ino(&u, "t"),
        &SetAttr {
            mtime: Some(SetTime::At(ts)),
            ..Default::default()
        },
    )
    .unwrap();
    u.setattr(
        &c,
        ino(&u, "s"),
        &SetAttr {
            size: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    u.setxattr(ino(&u, "x"), os("user.q"), b"1", 0).unwrap();
    u.setattr(
        &c,
        ino(&u, "l"),
        &SetAttr {
            uid: Some(9),
            ..Default::default()
        },
    )
    .unwrap();
    u.setattr(
        &c,
        ino(&u, "fifo"),
        &SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(upper_paths(&s), ["fifo", "l", "m", "o", "s", "t", "x"]);
    assert_eq!(
        fs::symlink_metadata(s.upper.join("m")).unwrap().mode() & 0o7777,
        0o600
    );
    assert_eq!(fs::symlink_metadata(s.upper.join("o")).unwrap().uid(), 7);
    assert_eq!(
        fs::symlink_metadata(s.upper.join("t")).unwrap().mtime(),
        12345
    );
    assert_eq!(fs::read(s.upper.join("s")).unwrap(), b"si");
    assert_eq!(
        fs::read_link(s.upper.join("l")).unwrap().to_str(),
        Some("target")
    );
    assert_eq!(fs::symlink_metadata(s.upper.join("l")).unwrap().uid(), 9);
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::symlink_metadata(s.upper.join("fifo"))
            .unwrap()
            .file_type()
    ));
    assert_eq!(cat(&u, "s"), "si");
    assert_eq!(u.getattr(ino(&u, "m")).unwrap().st.st_mode & 0o7777, 0o600);
    assert_work_empty(&s);
    assert_lowers(&s, &before);
}

#[test]
fn copy_up_keeps_holes() {
    let s = Stack::new(&[""]);
    let lp = s.lowers[0].join("sparse");
    {
        let f = fs::File::create(&lp).unwrap();
        f.set_len(64 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"middle", 32 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"end", (64 << 20) - 3).unwrap();
    }
    let before = s.lowers_dump();
    let u = s.union();
    let i = ino(&u, "sparse");
    let fh = u.open(&ctx(), i, OFlags::RDWR).unwrap();
    u.write(fh, 0, b"start").unwrap();
    assert_eq!(u.read(fh, 32 << 20, 6).unwrap(), b"middle");
    assert_eq!(u.read(fh, (64 << 20) - 3, 10).unwrap(), b"end");
    assert_eq!(u.read(fh, 1 << 20, 4).unwrap(), [0; 4]);
    u.release(fh);
    let st = fs::metadata(s.upper.join("sparse")).unwrap();
    assert_eq!(st.len(), 64 << 20);
    assert!(
        st.blocks() * 512 < 4 << 20,
        "holes were filled: {} bytes allocated",
        st.blocks() * 512
    );
    assert_lowers(&s, &before);
}

#[test]
fn st_ino_is_stable_across_copy_up() {
    let s = Stack::new(&["f d/a a\nd d/e"]);
    let u = s.union();
    let (a, d, e) = (ino(&u, "d/a"), ino(&u, "d"), ino(&u, "d/e"));
    put(&u, "d/a", "changed").unwrap();
    mkdir(&u, "d/e/new", 0o755).unwrap();
    assert_eq!(ino(&u, "d/a"), a);
    assert_eq!(ino(&u, "d"), d);
    assert_eq!(ino(&u, "d/e"), e);
    assert_eq!(u.getattr(a).unwrap().st.st_ino, a);
    assert_eq!(
        entries(&u, d).iter().find(|x| x.name == "a").unwrap().ino,
        a
    );
    assert_eq!(
        entries(&u, ROOT)
            .iter()
            .find(|x| x.name == "d")
            .unwrap()
            .ino,
        d
    );
    assert_eq!(u.lookup(d, os("a")).unwrap().st.st_ino, a);
}

#[test]
fn reader_opened_before_copy_up_sees_later_writes() {
    let s = Stack::new(&["f a old"]);
    let u = s.union();
    let i = ino(&u, "a");
    let r = u.open(&ctx(), i, OFlags::RDONLY).unwrap();
    assert_eq!(u.read(r, 0, 10).unwrap(), b"old");
    let w = u.open(&ctx(), i, OFlags::WRONLY).unwrap();
    u.write(w, 0, b"new").unwrap();
    u.release(w);
    assert_eq!(u.read(r, 0, 10).unwrap(), b"new");
    u.release(r);
}

#[test]
fn lower_atime_untouched_by_reads_listings_and_copy_up() {
    let s = Stack::new(&["f d/a data\nf d/b b"]);
    let la = s.lowers[0].join("d/a");
    let ld = s.lowers[0].join("d");
    set_times(&la, 1_000_000);
    set_times(&ld, 1_000_000);
    let atime = |p: &std::path::Path| {
        let m = fs::symlink_metadata(p).unwrap();
        (m.atime(), m.atime_nsec())
    };
    let (a0, d0) = (atime(&la), atime(&ld));
    let u = s.union();
    assert_eq!(cat(&u, "d/a"), "data");
    assert_eq!(ls(&u, "d"), ["a", "b"]);
    put(&u, "d/b", "copy").unwrap();
    u.setxattr(ino(&u, "d/a"), os("user.x"), b"1", 0).unwrap();
    assert_eq!(atime(&la), a0, "lower file atime changed");
    assert_eq!(atime(&ld), d0, "lower directory atime changed");
}

// ---------------------------------------------------------------------------------------------
// Deletes

#[test]
fn unlink_of_a_lower_file_leaves_a_kernel_whiteout() {
    let s = Stack::new(&["f a a\nf d/e/b b\nf keep k"]);
    let before = s.lowers_dump();
    let u = s.union();
    unlink(&u, "a").unwrap();
    unlink(&u, "d/e/b").unwrap();
    assert_eq!(err(at(&u, "a")), Errno::NOENT);
    assert_eq!(err(at(&u, "d/e/b")), Errno::NOENT);
    assert_eq!(ls(&u, ""), ["d", "keep"]);
    assert_eq!(ls(&u, "d/e"), Vec::<String>::new());
    assert_eq!(upper_paths(&s), ["a", "d", "d/e", "d/e/b"]);
    assert_upper_whiteout(&s, "a");
    assert_upper_whiteout(&s, "d/e/b");
    assert_work_empty(&s);
    assert_lowers(&s, &before);
}

#[test]
fn unlink_of_a_pure_upper_file_leaves_nothing() {
    let s = Stack::new(&["d d"]);
    let u = s.union();
    put(&u, "new", "n").unwrap();
    put(&u, "d/new", "n").unwrap();
    symlink(&u, "sl", "t").unwrap();
    unlink(&u, "new").unwrap();
    unlink(&u, "d/new").unwrap();
    unlink(&u, "sl").unwrap();
    assert_eq!(
        upper_paths(&s),
        ["d"],
        "spurious markers:\n{}",
        dump(&s.upper)
    );
    assert_work_empty(&s);
}

#[test]
fn unlink_of_a_copied_up_file_leaves_a_whiteout() {
    let s = Stack::new(&["f a lower"]);
    let u = s.union();
    put(&u, "a", "upper").unwrap();
    unlink(&u, "a").unwrap();
    assert_eq!(err(at(&u, "a")), Errno::NOENT);
    assert_upper_whiteout(&s, "a");
}

#[test]
fn unlink_in_an_opaque_upper_directory_needs_no_whiteout() {
    let s = Stack::with_upper(&["f d/x lower"], "o d\nf d/x upper");
    let u = s.union();
    assert_eq!(cat(&u, "d/x"), "upper");
    unlink(&u, "d/x").unwrap();
    assert_eq!(err(at(&u, "d/x")), Errno::NOENT);
    assert_eq!(upper_paths(&s), ["d"]);
}

#[test]
fn unlink_and_rmdir_errors() {
    let s = Stack::new(&["f a a\nd d\nf d/x x"]);
    let u = s.union();
    assert_eq!(err(unlink(&u, "missing")), Errno::NOENT);
    assert_eq!(err(unlink(&u, "d")), Errno::ISDIR);
    assert_eq!(err(rmdir(&u, "a")), Errno::NOTDIR);
    assert_eq!(err(rmdir(&u, "missing")), Errno::NOENT);
    assert_eq!(err(u.unlink(&ctx(), ROOT, os("d/x"))), Errno::INVAL);
    assert_eq!(err(u.rmdir(&ctx(), ROOT, os(".."))), Errno::INVAL);
    assert_eq!(upper_paths(&s), Vec::<String>::new());
}

#[test]
fn rmdir_of_a_non_empty_merged_directory_fails_until_emptied() {
    let s = Stack::with_upper(&["f d/a a\nd d/sub"], "f d/u u");
    let before = s.lowers_dump();
    let u = s.union();
    assert_eq!(err(rmdir(&u, "d")), Errno::NOTEMPTY);
    unlink(&u, "d/a").unwrap();
    assert_eq!(err(rmdir(&u, "d")), Errno::NOTEMPTY);
    unlink(&u, "d/u").unwrap();
    assert_eq!(err(rmdir(&u, "d")), Errno::NOTEMPTY);
    rmdir(&u, "d/sub").unwrap();
    // Now the upper copy holds only whiteouts: the merged view is empty.
    assert_eq!(ls(&u, "d"), Vec::<String>::new());
    rmdir(&u, "d").unwrap();
    assert_eq!(err(at(&u, "d")), Errno::NOENT);
    assert_eq!(upper_paths(&s), ["d"]);
    assert_upper_whiteout(&s, "d");
    assert_work_empty(&s);
    assert_lowers(&s, &before);
}

#[test]
fn rmdir_of_a_directory_empty_only_in_the_merged_view() {
    let s = Stack::new(&["w d/a\nW d/b", "f d/a a\nf d/b b"]);
    let u = s.union();
    assert_eq!(ls(&u, "d"), Vec::<String>::new());
    rmdir(&u, "d").unwrap();
    assert_eq!(err(at(&u, "d")), Errno::NOENT);
    assert_eq!(upper_paths(&s), ["d"]);
    assert_upper_whiteout(&s, "d");
}

#[test]
fn rmdir_of_a_pure_upper_directory_leaves_nothing() {
    let s = Stack::new(&[""]);
    let u = s.union();
    mkdir(&u, "d", 0o755).unwrap();
    mkdir(&u, "d/e", 0o755).unwrap();
    rmdir(&u, "d/e").unwrap();
    rmdir(&u, "d").unwrap();
    assert_eq!(upper_paths(&s), Vec::<String>::new());
    assert_work_empty(&s);
}

#[test]
fn mkdir_over_a_whiteout_is_opaque_and_empty() {
    let s = Stack::new(&["f d/a a\nd d/sub\nf d/sub/x x\nf f file"]);
    let before = s.lowers_dump();
    let u = s.union();
    rmdir(&u, "d/sub")
        .map(|_| ())
        .or_else(|e| if e == Errno::NOTEMPTY { Ok(()) } else { Err(e) })
        .unwrap();
    unlink(&u, "d/sub/x").unwrap();
    rmdir(&u, "d/sub").unwrap();
    unlink(&u, "d/a").unwrap();
    rmdir(&u, "d").unwrap();
    let d = mkdir(&u, "d", 0o755).unwrap();
    assert_eq!(d.st.st_mode & 0o7777, 0o755);
    assert_eq!(ls(&u, "d"), Vec::<String>::new());
    assert_eq!(err(at(&u, "d/a")), Errno::NOENT);
    assert_eq!(err(at(&u, "d/sub")), Errno::NOENT);
    assert_upper_opaque(&s, "d");
    assert_eq!(
        err(u.getxattr(d.ino, os("trusted.overlay.opaque"))),
        Errno::NODATA
    );
    assert_eq!(u.listxattr(d.ino).unwrap(), Vec::<String>::new());
    // A directory made where a file was deleted is opaque too (the kernel does the same).
    unlink(&u, "f").unwrap();
    mkdir(&u, "f", 0o700).unwrap();
    assert_upper_opaque(&s, "f");
    // Nothing else in the upper: the old whiteouts inside `d` are gone.
    assert_eq!(upper_paths(&s), ["d", "f"]);
    assert_work_empty(&s);
    assert_lowers(&s, &before);
}

#[test]
fn create_over_a_whiteout_replaces_it() {
    let s = Stack::new(&["f a lower\nf b lower\nf c lower"]);
    let u = s.union();
    for n in ["a", "b", "c"] {
        unlink(&u, n).unwrap();
    }
    put(&u, "a", "new").unwrap();
    symlink(&u, "b", "tgt").unwrap();
    u.mknod(&ctx(), ROOT, os("c"), 0o010644, 0).unwrap();
    assert_eq!(cat(&u, "a"), "new");
    assert_eq!(u.readlink(ino(&u, "b")).unwrap(), b"tgt");
    assert_eq!(
        FileType::from_raw_mode(at(&u, "c").unwrap().st.st_mode),
        FileType::Fifo
    );
    assert!(upper_entry(&s, "a").unwrap().starts_with("f 3 \"new\""));
    assert!(upper_entry(&s, "b").unwrap().starts_with("l -> tgt"));
    assert!(upper_entry(&s, "c").unwrap().starts_with("p "));
    assert_eq!(upper_paths(&s), ["a", "b", "c"]);
    assert_work_empty(&s);
}

#[test]
fn create_of_an_existing_name_fails() {
    let s = Stack::new(&["f a a\nd d"]);
    let u = s.union();
    assert_eq!(
        err(u.create(&ctx(), ROOT, os("a"), 0o644, OFlags::WRONLY)),
        Errno::EXIST
    );
    assert_eq!(err(mkdir(&u, "d", 0o755)), Errno::EXIST);
    assert_eq!(err(symlink(&u, "a", "x")), Errno::EXIST);
    assert_eq!(upper_paths(&s), Vec::<String>::new());
}

#[test]
fn marker_and_invalid_names_are_rejected() {
    let s = Stack::new(&["f a a"]);
    let u = s.union();
    let c = ctx();
    for bad in [".wh.x", ".wh..wh..opq"] {
        assert_eq!(
            err(u.create(&c, ROOT, os(bad), 0o644, OFlags::WRONLY)),
            Errno::INVAL,
            "create {bad}"
        );
        assert_eq!(
            err(u.mkdir(&c, ROOT, os(bad), 0o755)),
            Errno::INVAL,
            "mkdir {bad}"
        );
        assert_eq!(
            err(u.symlink(&c, ROOT, os(bad), os("t"))),
            Errno::INVAL,
            "symlink {bad}"
        );
        assert_eq!(
            err(u.mknod(&c, ROOT, os(bad), 0o010644, 0)),
            Errno::INVAL,
            "mknod {bad}"
        );
        assert_eq!(
            err(u.link(ino(&u, "a"), ROOT, os(bad))),
            Errno::INVAL,
            "link {bad}"
        );
        assert_eq!(
            err(u.rename(&c, ROOT, os("a"), ROOT, os(bad), RenameFlags::default())),
            Errno::INVAL,
            "rename {bad}"
        );
    }
    for bad in ["x/y", "..", ".", ""] {
        assert_eq!(
            err(u.create(&c, ROOT, os(bad), 0o644, OFlags::WRONLY)),
            Errno::INVAL,
            "create {bad:?}"
        );
        assert_eq!(
            err(u.mkdir(&c, ROOT, os(bad), 0o755)),
            Errno::INVAL,
            "mkdir {bad:?}"
        );
        assert_eq!(
            err(u.rename(&c, ROOT, os("a"), ROOT, os(bad), RenameFlags::default())),
            Errno::INVAL,
            "rename to {bad:?}"
        );
        assert_eq!(
            err(u.rename(&c, ROOT, os(bad), ROOT, os("b"), RenameFlags::default())),
            Errno::INVAL,
            "rename from {bad:?}"
        );
    }
    assert_eq!(upper_paths(&s), Vec::<String>::new());
    assert_eq!(ls(&u, ""), ["a"]);
}

// ---------------------------------------------------------------------------------------------
// Rename

#[test]
fn rename_of_a_lower_file_leaves_a_whiteout() {
    let s = Stack::new(&["f a A\nf d/b B"]);
    let before = s.lowers_dump();
    let u = s.union();
    let i = ino(&u, "a");
    mv(&u, "a", "d/moved").unwrap();
    assert_eq!(err(at(&u, "a")), Errno::NOENT);
    assert_eq!(cat(&u, "d/moved"), "A");
    assert_eq!(
        ino(&u, "d/moved"),
        i,
        "st_ino kept across copy-up and rename"
    );
    assert_eq!(ls(&u, ""), ["d"]);
    assert_eq!(ls(&u, "d"), ["b", "moved"]);
    assert_eq!(upper_paths(&s), ["a", "d", "d/moved"]);
    assert_upper_whiteout(&s, "a");
    assert_work_empty(&s);
    assert_lowers(&s, &before);
}

#[test]
fn rename_of_a_pure_upper_file_leaves_no_whiteout() {
    let s = Stack::new(&["d d"]);
    let u = s.union();
    put(&u, "a", "A").unwrap();
    mv(&u, "a", "b").unwrap();
    mv(&u, "b", "d/c").unwrap();
    assert_eq!(cat(&u, "d/c"), "A");
    assert_eq!(
        upper_paths(&s),
        ["d", "d/c"],
        "spurious markers:\n{}",
        dump(&s.upper)
    );
}

#[test]
fn rename_over_an_existing_file() {
    let s = Stack::new(&["f a A\nf b B"]);
    let u = s.union();
    mv(&u, "a", "b").unwrap();
    assert_eq!(cat(&u, "b"), "A");
    assert_eq!(ls(&u, ""), ["b"]);
    assert_upper_whiteout(&s, "a");
    assert!(upper_entry(&s, "b").unwrap().starts_with("f 1 \"A\""));
}

#[test]
fn rename_over_a_whiteout() {
    let s = Stack::new(&["f a A\nf b B"]);
    let u = s.union();
    unlink(&u, "b").unwrap();
    mv(&u, "a", "b").unwrap();
    assert_eq!(cat(&u, "b"), "A");
    assert_eq!(err(at(&u, "a")), Errno::NOENT);
    assert_upper_whiteout(&s, "a");
    assert!(upper_entry(&s, "b").unwrap().starts_with("f 1 \"A\""));
    assert_eq!(upper_paths(&s), ["a", "b"]);
}

#[test]
fn rename_noreplace_and_exchange() {
    let s = Stack::with_upper(&["f a A\nf b B"], "f u U");
    let before = s.lowers_dump();
    let u = s.union();
    assert_eq!(err(rename(&u, "a", "b", NOREPLACE)), Errno::EXIST);
    assert_eq!(err(rename(&u, "a", "u", NOREPLACE)), Errno::EXIST);
    assert_eq!(err(rename(&u, "a", "none", EXCHANGE)), Errno::NOENT);
    assert_eq!(
        err(rename(
            &u,
            "a",
            "b",
            RenameFlags {
                noreplace: true,
                exchange: true
            }
        )),
        Errno::INVAL
    );
    assert_eq!(upper_paths(&s), ["u"], "a failed rename changed the upper");
    rename(&u, "a", "new", NOREPLACE).unwrap();
    assert_eq!(cat(&u, "new"), "A");
    rename(&u, "new", "u", EXCHANGE).unwrap();
    assert_eq!(cat(&u, "new"), "U");
    assert_eq!(cat(&u, "u"), "A");
    rename(&u, "b", "u", EXCHANGE).unwrap();
    assert_eq!(cat(&u, "b"), "A");
    assert_eq!(cat(&u, "u"), "B");
    assert_eq!(ls(&u, ""), ["b", "new", "u"]);
    assert_eq!(upper_paths(&s), ["a", "b", "new", "u"]);
    assert_upper_whiteout(&s, "a");
    assert_lowers(&s, &before);
}

#[test]
fn rename_of_a_lower_or_merged_directory_is_exdev() {
    let s = Stack::with_upper(
        &["d low\nf low/x x\nd merged\nf merged/y y"],
        "d merged\nf merged/z z",
    );
    let u = s.union();
    assert_eq!(err(mv(&u, "low", "other")), Errno::XDEV);
    assert_eq!(err(mv(&u, "merged", "other")), Errno::XDEV);
    assert_eq!(ls(&u, "low"), ["x"]);
    assert_eq!(ls(&u, "merged"), ["y", "z"]);
}

#[test]
fn rename_of_an_upper_only_directory() {
    let s = Stack::new(&["f keep k"]);
    let u = s.union();
    mkdir(&u, "x", 0o755).unwrap();
    put(&u, "x/a", "A").unwrap();
    mkdir(&u, "x/sub", 0o755).unwrap();
    put(&u, "x/sub/b", "B").unwrap();
    let a = ino(&u, "x/a");
    mv(&u, "x", "y").unwrap();
    assert_eq!(err(at(&u, "x")), Errno::NOENT);
    assert_eq!(ls(&u, "y"), ["a", "sub"]);
    assert_eq!(cat(&u, "y/sub/b"), "B");
    assert_eq!(ino(&u, "y/a"), a);
    // The inode looked up before the rename still works.
    let fh = u.open(&ctx(), a, OFlags::RDONLY).unwrap();
    assert_eq!(u.read(fh, 0, 9).unwrap(), b"A");
    u.release(fh);
    assert_eq!(upper_paths(&s), ["y", "y/a", "y/sub", "y/sub/b"]);
}

#[test]
fn rename_of_a_directory_onto_a_deleted_lower_directory_is_opaque() {
    let s = Stack::new(&["f d/old o"]);
    let u = s.union();
    unlink(&u, "d/old").unwrap();
    rmdir(&u, "d").unwrap();
    mkdir(&u, "n", 0o755).unwrap();
    put(&u, "n/f", "F").unwrap();
    mv(&u, "n", "d").unwrap();
    assert_eq!(ls(&u, "d"), ["f"]);
    assert_eq!(err(at(&u, "d/old")), Errno::NOENT);
    assert_eq!(err(at(&u, "n")), Errno::NOENT);
    assert_upper_opaque(&s, "d");
    assert_eq!(upper_paths(&s), ["d", "d/f"]);
    assert_work_empty(&s);
}

#[test]
fn rename_of_a_directory_onto_an_empty_merged_directory() {
    let s = Stack::new(&["f t/old o"]);
    let u = s.union();
    unlink(&u, "t/old").unwrap();
    mkdir(&u, "n", 0o755).unwrap();
    put(&u, "n/f", "F").unwrap();
    mv(&u, "n", "t").unwrap();
    assert_eq!(ls(&u, "t"), ["f"]);
    assert_eq!(err(at(&u, "t/old")), Errno::NOENT);
    assert_upper_opaque(&s, "t");
}

#[test]
fn rename_type_errors() {
    let s = Stack::new(&["f a a\nd d\nd e\nf e/x x"]);
    let u = s.union();
    mkdir(&u, "up", 0o755).unwrap();
    assert_eq!(err(mv(&u, "a", "d")), Errno::ISDIR);
    assert_eq!(err(mv(&u, "up", "a")), Errno::NOTDIR);
    assert_eq!(err(mv(&u, "up", "e")), Errno::NOTEMPTY);
    assert_eq!(err(mv(&u, "missing", "z")), Errno::NOENT);
}

// ---------------------------------------------------------------------------------------------
// Links, inode numbers, special objects

#[test]
fn link_of_a_lower_file() {
    let s = Stack::new(&["f d/a data"]);
    let before = s.lowers_dump();
    let u = s.union();
    let i = ino(&u, "d/a");
    let l = link(&u, "d/a", "b").unwrap();
    assert_eq!(l.ino, i);
    assert_eq!(l.st.st_nlink, 2);
    assert_eq!(u.getattr(i).unwrap().st.st_nlink, 2);
    assert_eq!(at(&u, "b").unwrap().st.st_nlink, 2);
    assert_eq!(at(&u, "d/a").unwrap().st.st_nlink, 2);
    assert_eq!(ino(&u, "b"), i);
    assert_eq!(
        entries(&u, ROOT)
            .iter()
            .find(|e| e.name == "b")
            .unwrap()
            .ino,
        i
    );
    put(&u, "b", "via b").unwrap();
    assert_eq!(cat(&u, "d/a"), "via b");
    let ua = fs::metadata(s.upper.join("d/a")).unwrap();
    let ub = fs::metadata(s.upper.join("b")).unwrap();
    assert_eq!(ua.ino(), ub.ino());
    assert_eq!(ua.nlink(), 2);
    assert_eq!(err(link(&u, "d", "dirlink")), Errno::PERM);
    assert_eq!(err(link(&u, "b", "d/a")), Errno::EXIST);
    assert_lowers(&s, &before);
}

#[test]
fn inode_numbers_are_unique() {
    let s = Stack::with_upper(
        &["f a 1\nf b 1\nd d\nf d/c 1", "f e 2\nf f 2\nd g\nf g/h 2"],
        "f i 3\nf j 3",
    );
    let u = s.union();
    let paths = ["", "a", "b", "d", "d/c", "e", "f", "g", "g/h", "i", "j"];
    let attrs: Vec<_> = paths.iter().map(|p| at(&u, p).unwrap()).collect();
    let mut inos: Vec<u64> = attrs.iter().map(|a| a.ino).collect();
    inos.sort();
    inos.dedup();
    assert_eq!(inos.len(), paths.len(), "two objects share an inode number");
    for (p, a) in paths.iter().zip(&attrs) {
        assert_eq!(a.st.st_ino, a.ino, "{p}");
    }
}

#[test]
fn symlink_fifo_and_device_nodes() {
    let s = Stack::new(&[""]);
    let u = s.union();
    let l = symlink(&u, "sl", "../some/where").unwrap();
    assert_eq!(FileType::from_raw_mode(l.st.st_mode), FileType::Symlink);
    assert_eq!(u.readlink(l.ino).unwrap(), b"../some/where");
    let p = u.mknod(&ctx(), ROOT, os("fifo"), 0o010640, 0).unwrap();
    assert_eq!(FileType::from_raw_mode(p.st.st_mode), FileType::Fifo);
    assert_eq!(p.st.st_mode & 0o777, 0o640 & !0o022);
    let c = u
        .mknod(
            &ctx(),
            ROOT,
            os("null"),
            0o020666,
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
    assert_eq!(
        FileType::from_raw_mode(c.st.st_mode),
        FileType::CharacterDevice
    );
    assert_eq!(c.st.st_rdev, rustix::fs::makedev(1, 3));
    assert_eq!(err(u.readlink(p.ino)), Errno::INVAL);
    assert_eq!(ls(&u, ""), ["fifo", "null", "sl"]);
    assert!(
        upper_entry(&s, "sl")
            .unwrap()
            .starts_with("l -> ../some/where")
    );
    assert!(upper_entry(&s, "fifo").unwrap().starts_with("p 640"));
    assert!(
        upper_entry(&s, "null")
            .unwrap()
            .starts_with(&format!("c {} 644", rustix::fs::makedev(1, 3)))
    );
}

#[test]
fn new_objects_get_the_callers_owner_and_umask() {
    let s = Stack::new(&[""]);
    let u = s.union();
    let c = Ctx {
        uid: 1000,
        gid: 100,
        umask: 0o027,
    };
    let (a, fh) = u.create(&c, ROOT, os("f"), 0o666, OFlags::WRONLY).unwrap();
    u.release(fh);
    assert_eq!(
        (a.st.st_uid, a.st.st_gid, a.st.st_mode & 0o7777),
        (1000, 100, 0o640)
    );
    let d = u.mkdir(&c, ROOT, os("d"), 0o777).unwrap();
    assert_eq!(
        (d.st.st_uid, d.st.st_gid, d.st.st_mode & 0o7777),
        (1000, 100, 0o750)
    );
    let md = fs::metadata(s.upper.join("f")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 100));
}

// ---------------------------------------------------------------------------------------------
// Xattrs

#[test]
fn private_xattrs_are_invisible_and_unsettable() {
    let s = Stack::new(&[
        "f f f\nx f trusted.overlay.origin abc\nx f user.overlay.foo z\nx f user.ok 1\no d",
    ]);
    let before = s.lowers_dump();
    let u = s.union();
    let f = ino(&u, "f");
    let d = ino(&u, "d");
    assert_eq!(
        err(u.getxattr(f, os("trusted.overlay.origin"))),
        Errno::NODATA
    );
    assert_eq!(err(u.getxattr(f, os("user.overlay.foo"))), Errno::NODATA);
    assert_eq!(
        err(u.getxattr(d, os("trusted.overlay.opaque"))),
        Errno::NODATA
    );
    assert_eq!(u.listxattr(f).unwrap(), ["user.ok"]);
    assert_eq!(u.listxattr(d).unwrap(), Vec::<String>::new());
    for key in [
        "trusted.overlay.opaque",
        "user.overlay.whiteout",
        "trusted.overlay.redirect",
    ] {
        assert_eq!(err(u.setxattr(f, os(key), b"y", 0)), Errno::PERM, "{key}");
        assert_eq!(err(u.setxattr(d, os(key), b"y", 0)), Errno::PERM, "{key}");
        assert_eq!(err(u.removexattr(f, os(key))), Errno::PERM, "{key}");
    }
    assert_eq!(
        upper_paths(&s),
        Vec::<String>::new(),
        "a refused xattr change copied up"
    );
    assert_eq!(u.getxattr(f, os("user.ok")).unwrap(), b"1");
    u.setxattr(f, os("user.new"), b"2", 0).unwrap();
    u.removexattr(f, os("user.ok")).unwrap();
    assert_eq!(u.listxattr(f).unwrap(), ["user.new"]);
    assert_eq!(err(u.removexattr(f, os("user.absent"))), Errno::NODATA);
    assert_lowers(&s, &before);
}

#[test]
fn removing_an_absent_xattr_does_not_copy_up() {
    let s = Stack::new(&["f f f"]);
    let u = s.union();
    assert_eq!(
        err(u.removexattr(ino(&u, "f"), os("user.absent"))),
        Errno::NODATA
    );
    assert_eq!(upper_paths(&s), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// Read-only union

#[test]
fn read_only_union_refuses_every_write() {
    let s = Stack::new(&["f a a\nd d\nf d/x x\nx a user.k v", "f b b"]);
    let before = s.lowers_dump();
    let u = Union::new(&Config::new(s.lowers.clone(), None, None)).unwrap();
    assert!(u.is_read_only());
    let c = ctx();
    let a = ino(&u, "a");
    let d = ino(&u, "d");
    assert_eq!(cat(&u, "a"), "a");
    assert_eq!(ls(&u, ""), ["a", "b", "d"]);
    assert_eq!(
        err(u.create(&c, ROOT, os("n"), 0o644, OFlags::WRONLY)),
        Errno::ROFS
    );
    assert_eq!(err(u.mkdir(&c, ROOT, os("n"), 0o755)), Errno::ROFS);
    assert_eq!(err(u.mknod(&c, ROOT, os("n"), 0o010644, 0)), Errno::ROFS);
    assert_eq!(err(u.symlink(&c, ROOT, os("n"), os("t"))), Errno::ROFS);
    assert_eq!(err(u.link(a, ROOT, os("n"))), Errno::ROFS);
    assert_eq!(err(u.unlink(&c, ROOT, os("a"))), Errno::ROFS);
    assert_eq!(err(u.rmdir(&c, d, os("x"))), Errno::ROFS);
    assert_eq!(err(u.rmdir(&c, ROOT, os("d"))), Errno::ROFS);
    assert_eq!(
        err(u.rename(&c, ROOT, os("a"), ROOT, os("z"), RenameFlags::default())),
        Errno::ROFS
    );
    assert_eq!(
        err(u.setattr(
            &c,
            a,
            &SetAttr {
                mode: Some(0o600),
                ..Default::default()
            }
        )),
        Errno::ROFS
    );
    assert_eq!(
        err(u.setattr(
            &c,
            a,
            &SetAttr {
                size: Some(0),
                ..Default::default()
            }
        )),
        Errno::ROFS
    );
    assert_eq!(err(u.setxattr(a, os("user.n"), b"1", 0)), Errno::ROFS);
    assert_eq!(err(u.removexattr(a, os("user.k"))), Errno::ROFS);
    assert_eq!(err(u.open(&c, a, OFlags::WRONLY)), Errno::ROFS);
    assert_eq!(err(u.open(&c, a, OFlags::RDWR)), Errno::ROFS);
    assert_eq!(
        err(u.open(&c, a, OFlags::RDONLY | OFlags::TRUNC)),
        Errno::ROFS
    );
    assert_eq!(err(u.access(a, 2)), Errno::ROFS);
    u.access(a, 4).unwrap();
    let top = rustix::fs::statfs(&s.lowers[0]).unwrap();
    assert_eq!(u.statfs().unwrap().f_blocks, top.f_blocks);
    assert_lowers(&s, &before);
}

#[test]
fn statfs_reports_the_upper() {
    let s = Stack::new(&["f a a"]);
    let u = s.union();
    let up = rustix::fs::statfs(&s.upper).unwrap();
    let got = u.statfs().unwrap();
    assert_eq!((got.f_type, got.f_blocks), (up.f_type, up.f_blocks));
}

// ---------------------------------------------------------------------------------------------
// The upper on disk after a mixed sequence

#[test]
fn upper_on_disk_after_a_mixed_sequence() {
    let s = Stack::new(&[
        "f a a\nf b b\nd d\nf d/x x\nd d/e\nf d/e/y y\nd keep\nf keep/k k\nl sl a",
        "f c c\nd d\nf d/z z",
    ]);
    let before = s.lowers_dump();
    let u = s.union();
    unlink(&u, "a").unwrap();
    put(&u, "b", "B2").unwrap();
    unlink(&u, "c").unwrap();
    put(&u, "c", "c-again").unwrap();
    unlink(&u, "d/e/y").unwrap();
    rmdir(&u, "d/e").unwrap();
    mkdir(&u, "d/e", 0o755).unwrap();
    put(&u, "d/e/new", "N").unwrap();
    mv(&u, "d/x", "d/x2").unwrap();
    put(&u, "tmp", "T").unwrap();
    mv(&u, "tmp", "d/z").unwrap();
    unlink(&u, "sl").unwrap();
    symlink(&u, "sl", "b").unwrap();
    let want = [
        ("a", "c 0 "),
        ("b", "f 2 \"B2\""),
        ("c", "f 7 \"c-again\""),
        ("d", "d "),
        ("d/e", "d "),
        ("d/e/new", "f 1 \"N\""),
        ("d/x", "c 0 "),
        ("d/x2", "f 1 \"x\""),
        ("d/z", "f 1 \"T\""),
        ("sl", "l -> b "),
    ];
    assert_eq!(
        upper_paths(&s),
        want.iter().map(|w| w.0).collect::<Vec<_>>(),
        "\n{}",
        dump(&s.upper)
    );
    for (p, prefix) in want {
        let e = upper_entry(&s, p).unwrap();
        assert!(e.starts_with(prefix), "{p}: {e}");
    }
    assert_upper_opaque(&s, "d/e");
    assert!(
        !upper_entry(&s, "d").unwrap().contains("overlay"),
        "d must stay merged"
    );
    assert_eq!(ls(&u, ""), ["b", "c", "d", "keep", "sl"]);
    assert_eq!(ls(&u, "d"), ["e", "x2", "z"]);
    assert_eq!(ls(&u, "d/e"), ["new"]);
    assert_work_empty(&s);
    assert_lowers(&s, &before);
    // A fresh engine over the same layers sees the same tree.
    let again = s.union();
    assert_eq!(union_tree(&again), union_tree(&u));
}

// ---------------------------------------------------------------------------------------------
// More corners

#[test]
fn aufs_whiteouts_in_the_upper_are_honoured_when_names_are_reused() {
    let s = Stack::with_upper(&["f d/old o\nf f lower\nf g lower"], "W d\nW f\nW g");
    let before = s.lowers_dump();
    let u = s.union();
    assert_eq!(ls(&u, ""), Vec::<String>::new());
    mkdir(&u, "d", 0o755).unwrap();
    assert_eq!(
        ls(&u, "d"),
        Vec::<String>::new(),
        "the deleted directory's content came back"
    );
    assert_eq!(err(at(&u, "d/old")), Errno::NOENT);
    put(&u, "f", "new").unwrap();
    assert_eq!(cat(&u, "f"), "new");
    unlink(&u, "f").unwrap();
    assert_eq!(err(at(&u, "f")), Errno::NOENT, "the lower file came back");
    assert_eq!(ls(&u, ""), ["d"]);
    assert_eq!(ls(&s.union(), "d"), Vec::<String>::new());
    assert_upper_opaque(&s, "d");
    assert_upper_whiteout(&s, "f");
    assert_eq!(upper_paths(&s), [".wh.g", "d", "f"], "\n{}", dump(&s.upper));
    assert_lowers(&s, &before);
}

#[test]
fn unlinked_open_file_stays_usable() {
    let s = Stack::new(&["f low lower"]);
    let u = s.union();
    let (a, fh) = u
        .create(&ctx(), ROOT, os("tmp"), 0o600, OFlags::RDWR)
        .unwrap();
    u.write(fh, 0, b"data").unwrap();
    unlink(&u, "tmp").unwrap();
    assert_eq!(err(at(&u, "tmp")), Errno::NOENT);
    u.write(fh, 4, b"more").unwrap();
    assert_eq!(u.read(fh, 0, 100).unwrap(), b"datamore");
    assert_eq!(u.getattr(a.ino).unwrap().st.st_size, 8);
    u.release(fh);
    // The same for a lower file opened before its deletion.
    let l = ino(&u, "low");
    let fh = u.open(&ctx(), l, OFlags::RDONLY).unwrap();
    unlink(&u, "low").unwrap();
    assert_eq!(u.read(fh, 0, 100).unwrap(), b"lower");
    u.release(fh);
    assert_eq!(upper_paths(&s), ["low"]);
    assert_upper_whiteout(&s, "low");
}

#[test]
fn exchange_of_an_upper_directory_and_a_lower_file() {
    let s = Stack::new(&["f f lower-file"]);
    let before = s.lowers_dump();
    let u = s.union();
    mkdir(&u, "x", 0o755).unwrap();
    put(&u, "x/in", "I").unwrap();
    rename(&u, "x", "f", EXCHANGE).unwrap();
    assert_eq!(cat(&u, "x"), "lower-file");
    assert_eq!(ls(&u, "f"), ["in"]);
    assert_eq!(cat(&u, "f/in"), "I");
    assert_eq!(ls(&u, ""), ["f", "x"]);
    assert_eq!(ls(&s.union(), "f"), ["in"]);
    assert_lowers(&s, &before);
}

#[test]
fn mkdir_over_a_whiteout_in_a_lower_layer_does_not_merge_below_it() {
    let s = Stack::new(&["w d", "f d/old o"]);
    let u = s.union();
    assert_eq!(err(at(&u, "d")), Errno::NOENT);
    mkdir(&u, "d", 0o755).unwrap();
    assert_eq!(ls(&u, "d"), Vec::<String>::new());
    assert_eq!(ls(&s.union(), "d"), Vec::<String>::new());
}

#[test]
fn rename_of_a_directory_onto_an_empty_lower_only_directory() {
    let s = Stack::new(&["d t", "f t/hidden h"]);
    let u = s.union();
    mkdir(&u, "n", 0o755).unwrap();
    put(&u, "n/f", "F").unwrap();
    assert_eq!(err(mv(&u, "n", "t")), Errno::NOTEMPTY);
    unlink(&u, "t/hidden").unwrap();
    mv(&u, "n", "t").unwrap();
    assert_eq!(ls(&u, "t"), ["f"]);
    assert_eq!(ls(&s.union(), "t"), ["f"]);
    assert_eq!(err(at(&u, "n")), Errno::NOENT);
}

#[test]
fn rename_of_an_opaque_directory_made_over_a_whiteout() {
    let s = Stack::new(&["f d/old o"]);
    let before = s.lowers_dump();
    let u = s.union();
    unlink(&u, "d/old").unwrap();
    rmdir(&u, "d").unwrap();
    mkdir(&u, "d", 0o755).unwrap();
    put(&u, "d/new", "N").unwrap();
    mv(&u, "d", "e").unwrap();
    for u in [&u, &s.union()] {
        assert_eq!(
            err(at(u, "d")),
            Errno::NOENT,
            "the deleted lower directory came back"
        );
        assert_eq!(ls(u, "e"), ["new"]);
        assert_eq!(ls(u, ""), ["e"]);
    }
    assert_upper_whiteout(&s, "d");
    assert_eq!(upper_paths(&s), ["d", "e", "e/new"]);
    assert_work_empty(&s);
    assert_lowers(&s, &before);
}

/// `-o userxattr` (and every unprivileged mount): markers written to the upper go to
/// `user.overlay.*`, the kernel's userxattr format; nothing is written as `trusted.*`.
#[test]
fn userxattr_mode_writes_user_overlay_markers() {
    let s = Stack::new(&["d d\nf d/a a"]);
    let mut cfg = s.config();
    cfg.xattr_ns = unionmount::config::XattrNamespace::User;
    let u = Union::new(&cfg).unwrap();
    unlink(&u, "d/a").unwrap();
    rmdir(&u, "d").unwrap();
    mkdir(&u, "d", 0o755).unwrap();
    assert_eq!(ls(&u, "d"), Vec::<String>::new());
    let up = dump(&s.upper);
    assert!(up.contains("user.overlay.opaque=y"), "{up}");
    assert!(!up.contains("trusted."), "{up}");
}

/// chmod of a lower symlink and truncate of a lower directory fail without copying anything
/// up (the kernel's VFS refuses them before overlayfs sees them).
#[test]
fn refused_setattr_copies_nothing_up() {
    let s = Stack::new(&["l link target\nd dir"]);
    let u = s.union();
    let chmod = SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    assert_eq!(
        err(u.setattr(&ctx(), ino(&u, "link"), &chmod)),
        Errno::OPNOTSUPP
    );
    let truncate = SetAttr {
        size: Some(0),
        ..Default::default()
    };
    assert_eq!(
        err(u.setattr(&ctx(), ino(&u, "dir"), &truncate)),
        Errno::ISDIR
    );
    assert_eq!(upper_paths(&s), Vec::<String>::new());
}

/// copy_file_range(2) between handles: from a lower file into a new upper one (the lower is
/// not touched), and within one read-write handle; short counts are continued like the kernel
/// would.
#[test]
fn copy_file_range_between_handles() {
    let s = Stack::new(&[""]);
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(s.lowers[0].join("src"), &data).unwrap();
    let before = s.lowers_dump();
    let u = s.union();
    let src = u.open(&ctx(), ino(&u, "src"), OFlags::RDONLY).unwrap();
    let (_, dst) = u
        .create(&ctx(), ROOT, OsStr::new("dst"), 0o644, OFlags::RDWR)
        .unwrap();
    let mut done = 0u64;
    while done < data.len() as u64 {
        let n = u
            .copy_file_range(src, done, dst, done, data.len() as u64 - done)
            .unwrap();
        assert!(n > 0, "no progress at {done}");
        done += n as u64;
    }
    assert_eq!(u.copy_file_range(src, done, dst, done, 10).unwrap(), 0);
    // Within one handle: the first 4 KiB again after the end.
    let n = u
        .copy_file_range(dst, 0, dst, data.len() as u64, 4096)
        .unwrap();
    assert_eq!(n, 4096);
    u.release(src);
    u.release(dst);
    let got = fs::read(s.upper.join("dst")).unwrap();
    assert_eq!(got.len(), data.len() + 4096);
    assert!(got[..data.len()] == data[..], "copied data differs");
    assert!(got[data.len()..] == data[..4096]);
    assert_eq!(
        u.copy_file_range(src, 0, dst, 0, 1),
        Err(Errno::BADF),
        "released handles"
    );
    assert_lowers(&s, &before);
}
