//! Regression tests named after bugs other union filesystems shipped (SEMANTICS.md, last
//! section), driven in-process on the engine. Each states the scenario of the original issue.

use std::fs;
use std::os::unix::fs::MetadataExt;

use rustix::fs::{FileType, OFlags};
use rustix::io::Errno;
use unionmount::union::attr::SetAttr;
use unionmount::union::inode::ROOT;

use crate::fixture::{Stack, dump};
use crate::ops::*;

/// `rm -rf d` through the engine, children first.
fn rm_rf(u: &unionmount::union::Union, path: &str) {
    for name in ls(u, path) {
        let child = format!("{path}/{name}");
        let a = at(u, &child).unwrap();
        if FileType::from_raw_mode(a.st.st_mode) == FileType::Directory {
            rm_rf(u, &child);
        } else {
            unlink(u, &child).unwrap();
        }
    }
    rmdir(u, path).unwrap();
}

/// fuse-overlayfs #324: after `rm -rf d && mkdir d` the old content of `d` came back
/// (podman images broke). It must stay hidden whatever is listed or looked up, also after a
/// remount.
#[test]
fn fuse_overlayfs_324_deleted_dir_content_stays_hidden() {
    let s = Stack::new(&[
        "f d/a a\nd d/sub\nf d/sub/x x\nf d/sub/y y",
        "f d/b b\nd d/sub\nf d/sub/z z\nd d/deep/er",
    ]);
    let before = s.lowers_dump();
    let u = s.union();
    rm_rf(&u, "d");
    mkdir(&u, "d", 0o755).unwrap();
    let check = |u: &unionmount::union::Union| {
        // Looked up before listing, listed, then looked up again; nested names too.
        for p in ["d/a", "d/b", "d/sub", "d/deep"] {
            assert_eq!(err(at(u, p)), Errno::NOENT, "{p}");
        }
        assert_eq!(ls(u, "d"), Vec::<String>::new());
        assert_eq!(err(at(u, "d/sub")), Errno::NOENT);
    };
    check(&u);
    mkdir(&u, "d/sub", 0o755).unwrap();
    assert_eq!(
        ls(&u, "d/sub"),
        Vec::<String>::new(),
        "a new sub merged the deleted one"
    );
    assert_eq!(err(at(&u, "d/sub/x")), Errno::NOENT);
    assert_eq!(err(at(&u, "d/sub/z")), Errno::NOENT);
    rmdir(&u, "d/sub").unwrap();
    check(&u);
    drop(u);
    check(&s.union());
    assert_upper_opaque(&s, "d");
    assert_eq!(upper_paths(&s), ["d"], "\n{}", dump(&s.upper));
    assert_work_empty(&s);
    assert_lowers(&s, &before);
}

/// fuse-overlayfs #354: renaming onto a name that is a whiteout lost the whiteout of the old
/// name, so the lower file came back there.
#[test]
fn fuse_overlayfs_354_rename_over_whiteout_keeps_old_name_whited_out() {
    let s = Stack::new(&["f a A\nf b B\nf d/c C\nf d/e E"]);
    let u = s.union();
    unlink(&u, "b").unwrap();
    mv(&u, "a", "b").unwrap();
    unlink(&u, "d/e").unwrap();
    mv(&u, "d/c", "d/e").unwrap();
    for u in [&u, &s.union()] {
        assert_eq!(err(at(u, "a")), Errno::NOENT);
        assert_eq!(err(at(u, "d/c")), Errno::NOENT);
        assert_eq!(cat(u, "b"), "A");
        assert_eq!(cat(u, "d/e"), "C");
        assert_eq!(ls(u, ""), ["b", "d"]);
        assert_eq!(ls(u, "d"), ["e"]);
    }
    assert_upper_whiteout(&s, "a");
    assert_upper_whiteout(&s, "d/c");
}

/// fuse-overlayfs #327: renaming a file nothing below has left an unnecessary whiteout.
#[test]
fn fuse_overlayfs_327_no_whiteout_for_rename_of_upper_only_file() {
    let s = Stack::new(&["d d\nf lowerfile l"]);
    let u = s.union();
    put(&u, "new", "n").unwrap();
    mv(&u, "new", "d/moved").unwrap();
    mkdir(&u, "dir", 0o755).unwrap();
    put(&u, "dir/f", "f").unwrap();
    mv(&u, "dir", "dir2").unwrap();
    mv(&u, "dir2/f", "dir2/g").unwrap();
    assert_eq!(
        upper_paths(&s),
        ["d", "d/moved", "dir2", "dir2/g"],
        "\n{}",
        dump(&s.upper)
    );
    // A name that exists below does need one, even when the upper file was re-created.
    unlink(&u, "lowerfile").unwrap();
    put(&u, "lowerfile", "again").unwrap();
    mv(&u, "lowerfile", "d/again").unwrap();
    assert_eq!(err(at(&u, "lowerfile")), Errno::NOENT);
    assert_upper_whiteout(&s, "lowerfile");
}

/// fuse-overlayfs #279: creating a symlink over a whiteout did not clear the whiteout, so the
/// new symlink stayed invisible.
#[test]
fn fuse_overlayfs_279_symlink_clears_a_whiteout() {
    let s = Stack::new(&["f a lower\nf d/b lower"]);
    let u = s.union();
    unlink(&u, "a").unwrap();
    unlink(&u, "d/b").unwrap();
    symlink(&u, "a", "target-a").unwrap();
    symlink(&u, "d/b", "../a").unwrap();
    for u in [&u, &s.union()] {
        let a = at(u, "a").unwrap();
        assert_eq!(FileType::from_raw_mode(a.st.st_mode), FileType::Symlink);
        assert_eq!(u.readlink(a.ino).unwrap(), b"target-a");
        assert_eq!(u.readlink(ino(u, "d/b")).unwrap(), b"../a");
        let e = entries(u, ROOT)
            .into_iter()
            .find(|e| e.name == "a")
            .expect("a listed");
        assert_eq!(e.kind, FileType::Symlink);
    }
    assert!(upper_entry(&s, "a").unwrap().starts_with("l -> target-a"));
    assert!(upper_entry(&s, "d/b").unwrap().starts_with("l -> ../a"));
}

/// fuse-overlayfs #151: a whiteout at the root hid files of the same name in every directory.
#[test]
fn fuse_overlayfs_151_root_whiteout_does_not_hide_same_name_in_subdirs() {
    let s = Stack::new(&["w x\nf d/keep k", "f x root\nf d/x sub\nf d/e/x deeper"]);
    let u = s.union();
    assert_eq!(err(at(&u, "x")), Errno::NOENT);
    assert_eq!(cat(&u, "d/x"), "sub");
    assert_eq!(cat(&u, "d/e/x"), "deeper");
    assert_eq!(ls(&u, "d"), ["e", "keep", "x"]);
    // The same after deleting through the engine.
    let s = Stack::new(&["f y root\nf d/y sub"]);
    let u = s.union();
    unlink(&u, "y").unwrap();
    assert_eq!(ls(&u, "d"), ["y"]);
    assert_eq!(cat(&u, "d/y"), "sub");
}

/// fuse-overlayfs #425: a `.wh..wh..opq` nested below another was ignored after some access
/// orders (cached merged state). Every order must give the same view.
#[test]
fn fuse_overlayfs_425_nested_opaque_marker_in_every_access_order() {
    let layers = [
        "O a\nf a/top1 t\nO a/b\nf a/b/top2 t\nd a/c\nO a/c/o\nf a/c/o/top3 t",
        "f a/low l\nf a/b/low l\nd a/b/sub\nf a/c/low l\nf a/c/o/low l",
    ];
    let want_a = vec!["b", "c", "top1"];
    let want_b = vec!["top2"];
    let want_c = vec!["o"];
    let want_o = vec!["top3"];
    type Step = fn(&unionmount::union::Union) -> Vec<String>;
    let steps: [(&str, Step); 4] = [
        ("a", |u| ls(u, "a")),
        ("a/b", |u| ls(u, "a/b")),
        ("a/c", |u| ls(u, "a/c")),
        ("a/c/o", |u| ls(u, "a/c/o")),
    ];
    let orders: [[usize; 4]; 4] = [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]];
    for order in orders {
        let s = Stack::new(&layers);
        let u = s.union();
        // Deep lookups first in half the orders, so nodes exist before any listing.
        if order[0] % 2 == 1 {
            assert_eq!(err(at(&u, "a/c/o/low")), Errno::NOENT);
            assert_eq!(err(at(&u, "a/b/sub")), Errno::NOENT);
        }
        for i in order {
            let (name, f) = steps[i];
            let want = [&want_a, &want_b, &want_c, &want_o][i];
            assert_eq!(&f(&u), want, "{name} in order {order:?}");
        }
        for p in ["a/low", "a/b/low", "a/b/sub", "a/c/low", "a/c/o/low"] {
            assert_eq!(err(at(&u, p)), Errno::NOENT, "{p} in order {order:?}");
        }
    }
}

/// fuse-overlayfs #435 and #192: wrong st_nlink (after link(), for hard links in a lower, and
/// for directories).
#[test]
fn fuse_overlayfs_435_192_nlink() {
    let s = Stack::new(&["f a a\nh b a\nf single s\nd dir\nd dir/s1\nd dir/s2\nf dir/f f"]);
    let u = s.union();
    assert_eq!(at(&u, "a").unwrap().st.st_nlink, 2);
    assert_eq!(at(&u, "b").unwrap().st.st_nlink, 2);
    // First stat after link() already counts the new name.
    let l = link(&u, "single", "single2").unwrap();
    assert_eq!(l.st.st_nlink, 2);
    assert_eq!(at(&u, "single").unwrap().st.st_nlink, 2);
    assert_eq!(u.getattr(ino(&u, "single2")).unwrap().st.st_nlink, 2);
    unlink(&u, "single2").unwrap();
    assert_eq!(at(&u, "single").unwrap().st.st_nlink, 1);
    // Upper-only hard links.
    put(&u, "n", "n").unwrap();
    link(&u, "n", "n2").unwrap();
    link(&u, "n", "n3").unwrap();
    assert_eq!(at(&u, "n2").unwrap().st.st_nlink, 3);
    // A directory that lives in one layer counts its subdirectories like any directory.
    assert_eq!(at(&u, "dir").unwrap().st.st_nlink, 4);
    mkdir(&u, "newdir", 0o755).unwrap();
    mkdir(&u, "newdir/s", 0o755).unwrap();
    assert_eq!(at(&u, "newdir").unwrap().st.st_nlink, 3);
}

/// fuse-overlayfs #391: readdir's d_ino differed from stat's st_ino.
#[test]
fn fuse_overlayfs_391_d_ino_equals_st_ino() {
    let s = Stack::with_upper(
        &[
            "f a 1\nh a2 a\nd d\nf d/x 1\nl s a\np p",
            "f b 2\nd d\nf d/y 2\nd lower",
        ],
        "f u 0\nd d\nf d/z 0",
    );
    let u = s.union();
    let check = |u: &unionmount::union::Union| {
        for dir in ["", "d", "lower"] {
            let dino = ino(u, dir);
            for e in entries(u, dino) {
                if e.name == "." || e.name == ".." {
                    continue;
                }
                let st = u.lookup(dino, &e.name).unwrap();
                assert_eq!(e.ino, st.st.st_ino, "{dir}/{:?}", e.name);
                assert_eq!(u.getattr(st.ino).unwrap().st.st_ino, e.ino);
            }
        }
    };
    check(&u);
    // Copy-ups (one alias of a lower hard link, a merged dir, a plain file) keep them equal.
    put(&u, "a", "changed").unwrap();
    put(&u, "b", "changed").unwrap();
    put(&u, "d/y", "changed").unwrap();
    mkdir(&u, "lower/new", 0o755).unwrap();
    check(&u);
}

/// fuse-overlayfs #414: `mkdir -m 0555 d` failed, and so did creating inside it as root.
#[test]
fn fuse_overlayfs_414_mkdir_0555_then_create_inside() {
    let s = Stack::new(&["d ro\nm ro 555"]);
    let before = s.lowers_dump();
    let u = s.union();
    let d = mkdir(&u, "d", 0o555).unwrap();
    assert_eq!(d.st.st_mode & 0o7777, 0o555);
    put(&u, "d/f", "inside").unwrap();
    mkdir(&u, "d/sub", 0o555).unwrap();
    assert_eq!(ls(&u, "d"), ["f", "sub"]);
    // A lower directory with mode 0555 is copied up with its mode and still usable by root.
    put(&u, "ro/f", "inside").unwrap();
    assert_eq!(at(&u, "ro").unwrap().st.st_mode & 0o7777, 0o555);
    assert_eq!(
        fs::metadata(s.upper.join("ro")).unwrap().mode() & 0o7777,
        0o555
    );
    assert_eq!(
        fs::metadata(s.upper.join("d")).unwrap().mode() & 0o7777,
        0o555
    );
    assert_work_empty(&s);
    assert_lowers(&s, &before);
}

/// fuse-overlayfs #307: a read-only file (and one in a read-only directory) could not be removed.
#[test]
fn fuse_overlayfs_307_unlink_read_only_file() {
    let s = Stack::new(&["f a a\nm a 444\nf ro/b b\nm ro/b 400\nm ro 555\nf c c\nm c 400"]);
    let before = s.lowers_dump();
    let u = s.union();
    unlink(&u, "a").unwrap();
    unlink(&u, "ro/b").unwrap();
    u.setattr(
        &ctx(),
        ino(&u, "c"),
        &SetAttr {
            uid: Some(5),
            ..Default::default()
        },
    )
    .unwrap();
    unlink(&u, "c").unwrap();
    put(&u, "up", "u").unwrap();
    u.setattr(
        &ctx(),
        ino(&u, "up"),
        &SetAttr {
            mode: Some(0o400),
            ..Default::default()
        },
    )
    .unwrap();
    unlink(&u, "up").unwrap();
    for p in ["a", "ro/b", "c", "up"] {
        assert_eq!(err(at(&u, p)), Errno::NOENT, "{p}");
    }
    assert_eq!(ls(&u, "ro"), Vec::<String>::new());
    assert_upper_whiteout(&s, "a");
    assert_upper_whiteout(&s, "ro/b");
    assert_upper_whiteout(&s, "c");
    assert_eq!(upper_entry(&s, "up"), None);
    assert_lowers(&s, &before);
}

/// fuse-overlayfs #265: `sed -i` (write a temporary, then rename it over the original) failed.
#[test]
fn fuse_overlayfs_265_sed_in_place() {
    let s = Stack::new(&["f etc/conf old\nm etc/conf 640"]);
    let u = s.union();
    let orig = at(&u, "etc/conf").unwrap();
    put(&u, "etc/sedAbc123", "new").unwrap();
    u.setattr(
        &ctx(),
        ino(&u, "etc/sedAbc123"),
        &SetAttr {
            mode: Some(orig.st.st_mode & 0o7777),
            ..Default::default()
        },
    )
    .unwrap();
    mv(&u, "etc/sedAbc123", "etc/conf").unwrap();
    assert_eq!(cat(&u, "etc/conf"), "new");
    assert_eq!(at(&u, "etc/conf").unwrap().st.st_mode & 0o7777, 0o640);
    assert_eq!(ls(&u, "etc"), ["conf"]);
    assert_eq!(upper_paths(&s), ["etc", "etc/conf"], "\n{}", dump(&s.upper));
    // And again, now that the file is in the upper.
    put(&u, "etc/sedXyz", "newer").unwrap();
    mv(&u, "etc/sedXyz", "etc/conf").unwrap();
    assert_eq!(cat(&u, "etc/conf"), "newer");
    assert_eq!(upper_paths(&s), ["etc", "etc/conf"]);
}

/// fuse-overlayfs #475: a large (SQLite) file was silently corrupted: copy-up and later writes
/// must give exactly the expected bytes.
#[test]
fn fuse_overlayfs_475_large_file_copy_up_is_exact() {
    let s = Stack::new(&[""]);
    let len: usize = 24 << 20;
    let mut data: Vec<u8> = Vec::with_capacity(len);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    fs::write(s.lowers[0].join("db"), &data).unwrap();
    let u = s.union();
    let i = ino(&u, "db");
    let reader = u.open(&ctx(), i, OFlags::RDONLY).unwrap();
    let fh = u.open(&ctx(), i, OFlags::RDWR).unwrap();
    for (off, page) in [
        (0usize, 0xaau8),
        (len / 2 - 100, 0xbb),
        (len - 4096, 0xcc),
        (17 << 20, 0xdd),
    ] {
        u.write(fh, off as u64, &[page; 4096]).unwrap();
        data[off..off + 4096].fill(page);
    }
    u.write(fh, len as u64, b"tail").unwrap();
    data.extend_from_slice(b"tail");
    u.fsync(fh, false).unwrap();
    u.release(fh);
    let mut got = Vec::with_capacity(data.len());
    loop {
        let chunk = u.read(reader, got.len() as u64, 1 << 20).unwrap();
        if chunk.is_empty() {
            break;
        }
        got.extend(chunk);
    }
    u.release(reader);
    assert_eq!(got.len(), data.len());
    assert!(
        got == data,
        "content differs at byte {:?}",
        got.iter().zip(&data).position(|(a, b)| a != b)
    );
    assert!(fs::read(s.upper.join("db")).unwrap() == data);
}

/// unionfs-fuse #91: after renaming a directory its files were hidden.
#[test]
fn unionfs_fuse_91_directory_rename_keeps_files_visible() {
    let s = Stack::new(&["f other o"]);
    let u = s.union();
    mkdir(&u, "x", 0o755).unwrap();
    put(&u, "x/a", "A").unwrap();
    put(&u, "x/b", "B").unwrap();
    mkdir(&u, "x/sub", 0o755).unwrap();
    put(&u, "x/sub/c", "C").unwrap();
    let sub = ino(&u, "x/sub");
    mv(&u, "x", "y").unwrap();
    assert_eq!(ls(&u, "y"), ["a", "b", "sub"]);
    assert_eq!(cat(&u, "y/a"), "A");
    assert_eq!(cat(&u, "y/sub/c"), "C");
    // The node looked up before the rename follows it.
    assert_eq!(entries(&u, sub).iter().filter(|e| e.name == "c").count(), 1);
    put(&u, "y/sub/d", "D").unwrap();
    mv(&u, "y", "x").unwrap();
    assert_eq!(ls(&u, "x/sub"), ["c", "d"]);
    assert_eq!(err(at(&u, "y")), Errno::NOENT);
    assert_eq!(ls(&s.union(), "x/sub"), ["c", "d"]);
}

/// unionfs-fuse #27: an unlink reported success but the whiteout failed, so the lower file came
/// back. Every successful unlink must leave the name absent, also after a remount.
#[test]
fn unionfs_fuse_27_unlink_success_means_gone() {
    let s = Stack::new(&["f a a\nf d/e/b b\nf c c", "f a bottom\nf c bottom"]);
    let u = s.union();
    put(&u, "c", "copied up").unwrap();
    for p in ["a", "d/e/b", "c"] {
        unlink(&u, p).unwrap();
        assert_eq!(err(at(&u, p)), Errno::NOENT, "{p}");
    }
    let again = s.union();
    for p in ["a", "d/e/b", "c"] {
        assert_eq!(err(at(&again, p)), Errno::NOENT, "{p} after remount");
    }
    assert_eq!(ls(&again, ""), ["d"]);
    assert_eq!(ls(&again, "d/e"), Vec::<String>::new());
}

/// fuse-backend-rs: an errno check that was always true turned every error into "absent".
/// Errors other than ENOENT must come through as themselves.
#[test]
fn fuse_backend_rs_errors_are_not_turned_into_enoent() {
    let s = Stack::new(&["f a a\nd locked\nf locked/in i\nm locked 000"]);
    let u = s.union();
    assert_eq!(err(at(&u, "missing")), Errno::NOENT);
    assert_eq!(err(u.lookup(ROOT, os("a/b"))), Errno::INVAL);
    assert_eq!(err(u.lookup(ROOT, os(".."))), Errno::INVAL);
    assert_eq!(
        err(u.lookup(ROOT, os(&"x".repeat(300)))),
        Errno::NAMETOOLONG
    );
    assert_eq!(err(at(&u, "a/b")), Errno::NOTDIR);
    assert_eq!(
        err(u.getxattr(ino(&u, "a"), os("user.none"))),
        Errno::NODATA
    );
    assert_eq!(err(u.readlink(ino(&u, "a"))), Errno::INVAL);
    assert_eq!(err(put(&u, "a/b", "x")), Errno::NOTDIR);
    // Root reads a mode-000 lower directory (no EACCES turned into "absent").
    assert_eq!(ls(&u, "locked"), ["in"]);
    assert_eq!(cat(&u, "locked/in"), "i");
}

/// Found by the random differential plans once lowers held `user.fuseoverlayfs.opaque`:
/// fuse-overlayfs's opaque marker was shown as an ordinary user xattr (and settable), so a
/// user could read a marker and plant one on an upper directory, making it opaque at the next
/// mount. It is private now, like the kernel's `overlay.*` xattrs.
#[test]
fn fuse_overlayfs_opaque_xattr_is_private() {
    let s = Stack::new(&["U o\nf o/a a", "d o\nf o/hidden h"]);
    let u = s.union();
    let key = os("user.fuseoverlayfs.opaque");
    let o = ino(&u, "o");
    assert_eq!(ls(&u, "o"), ["a"], "the marker still makes o opaque");
    assert!(
        !u.listxattr(o)
            .unwrap()
            .iter()
            .any(|k| k.starts_with("user.fuseoverlayfs."))
    );
    assert_eq!(err(u.getxattr(o, key)), Errno::NODATA);
    mkdir(&u, "new", 0o755).unwrap();
    let new = ino(&u, "new");
    assert_eq!(err(u.setxattr(new, key, b"y", 0)), Errno::PERM);
    assert_eq!(err(u.removexattr(o, key)), Errno::PERM);
    // A copy-up of the opaque directory does not copy the marker (as the kernel does not copy
    // its own): the lower stays opaque below the copy.
    put(&u, "o/b", "b").unwrap();
    assert_eq!(ls(&u, "o"), ["a", "b"]);
    assert!(
        rustix::fs::lgetxattr(
            s.upper.join("o"),
            "user.fuseoverlayfs.opaque",
            &mut [0u8; 8]
        )
        .is_err()
    );
}

/// unionmount crash test: renaming a directory over a merged directory whose lower entries are
/// all whited out removed those whiteouts in place before the rename, so a crash (or an error)
/// in between showed the lower entries again, in a directory that was empty before and after.
/// Here one marker in the old directory cannot be removed (immutable), the in-place clearing
/// stopped half-way and the rename failed; the old directory must instead leave in one step.
#[test]
fn rename_over_emptied_merged_dir_never_shows_its_lower_entries_again() {
    let s = Stack::with_upper(
        &["f d/a a\nf d/b b\nf d/c c"],
        "w d/a\nw d/b\nw d/c\nf d/.wh.zz\nd n\nf n/kept k",
    );
    let stuck = s.upper.join("d/.wh.zz");
    let chattr = |flag: &str, p: &std::path::Path| {
        std::process::Command::new("chattr")
            .args([flag, p.to_str().unwrap()])
            .status()
            .is_ok_and(|st| st.success())
    };
    if !chattr("+i", &stuck) {
        crate::mounted::skip("chattr +i is not supported here");
        return;
    }
    let u = s.union();
    assert_eq!(ls(&u, "d"), Vec::<String>::new());
    let renamed = mv(&u, "n", "d");
    let shown = ls(&u, "d");
    // Wherever the stuck marker ended up (still in the upper, or in the workdir), free it.
    for p in [stuck.clone()].into_iter().chain(
        fs::read_dir(s.work.join("work"))
            .unwrap()
            .flatten()
            .map(|e| e.path().join(".wh.zz")),
    ) {
        chattr("-i", &p);
    }
    assert_eq!(shown, ["kept"], "the lower entries of d came back");
    assert_eq!(renamed, Ok(()), "rename over the emptied directory failed");
    assert_eq!(cat(&u, "d/kept"), "k");
    assert_eq!(err(at(&u, "n")), Errno::NOENT);
}

/// Runs `f` in a thread whose effective capabilities lack CAP_DAC_OVERRIDE and
/// CAP_DAC_READ_SEARCH: root that obeys mode bits, like a daemon a lower is unreadable to.
pub(crate) fn without_dac<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                use rustix::thread::{CapabilitySet, capabilities, set_capabilities};
                let mut caps = capabilities(None).expect("capget");
                caps.effective -= CapabilitySet::DAC_OVERRIDE | CapabilitySet::DAC_READ_SEARCH;
                set_capabilities(None, caps).expect("capset");
                f()
            })
            .join()
            .expect("the thread without DAC capabilities panicked")
    })
}

/// unionmount fault test: looking up a lower directory the daemon may not read (mode 000,
/// daemon without CAP_DAC_*) failed with EACCES, because its markers were read through an open
/// of the directory; under the kernel the name resolves and only listing it fails.
#[test]
fn lookup_of_a_directory_the_daemon_cannot_read_resolves() {
    if !rustix::process::geteuid().is_root() {
        crate::mounted::skip("dropping DAC capabilities needs root");
        return;
    }
    let s = Stack::new(&["d shut\nf shut/in i\nm shut 000", "d shut\nf shut/below b"]);
    let u = s.union();
    let (mode, listed) = without_dac(|| {
        assert!(
            fs::read_dir(s.lowers[0].join("shut")).is_err(),
            "DAC still overridden"
        );
        let shut = at(&u, "shut").expect("lookup of an unreadable directory");
        let listed = u
            .opendir(shut.ino)
            .and_then(|fh| u.readdir(fh, 0).map(|e| e.len()));
        (shut.st.st_mode & 0o7777, listed)
    });
    assert_eq!(mode, 0);
    assert_eq!(listed.map(|_| ()), Err(Errno::ACCESS), "listing it");
    // With the capabilities back, it merges with the lower below as before.
    assert_eq!(ls(&u, "shut"), ["below", "in"]);
}

/// Found by the concurrency stress (stress.rs): EIO from operations on a removed object.
/// The upper filesystem gave a removed directory's inode number to the next new object while
/// the kernel still held the removed one (open here, or mid-operation in another thread);
/// the new object's node id then came with a new generation, the kernel marked its old inode
/// bad, and everything done through the old one failed with EIO. On kernel overlayfs a held
/// removed directory can still be stat'ed and creating in it gives ENOENT; so here.
#[test]
fn stress_removed_dir_held_open_stays_usable_after_its_inode_number_is_reused() {
    use std::os::fd::AsFd;
    if !crate::mounted::fuse_available() {
        return;
    }
    let m = crate::mounted::UnionMount::new(&["d base"]);
    for i in 0..20 {
        let old = m.path(&format!("base/old{i}"));
        fs::create_dir(&old).unwrap();
        let held = fs::File::open(&old).unwrap();
        let old_ino = fs::metadata(&old).unwrap().ino();
        fs::remove_dir(&old).unwrap();
        // Several new objects, so one would take the freed number if it were free.
        for k in 0..4 {
            let new = m.path(&format!("base/new{i}-{k}"));
            fs::create_dir(&new).unwrap();
            assert_ne!(
                fs::metadata(&new).unwrap().ino(),
                old_ino,
                "two live objects share st_ino"
            );
        }
        let st = rustix::fs::fstat(held.as_fd()).expect("fstat of the held removed directory");
        assert_eq!(st.st_ino, old_ino);
        let created = rustix::fs::openat(
            held.as_fd(),
            "f",
            OFlags::CREATE | OFlags::WRONLY,
            rustix::fs::Mode::from_raw_mode(0o644),
        );
        assert_eq!(
            created.err(),
            Some(Errno::NOENT),
            "creating in a removed directory"
        );
        for k in 0..4 {
            fs::remove_dir(m.path(&format!("base/new{i}-{k}"))).unwrap();
        }
    }
}

/// Found by security.rs: chmod followed a symlink put into the upper behind the union's back.
/// The engine changes an object through its path; fchmodat cannot refuse to follow a final
/// symlink, so a file replaced by a link to `/etc/shadow` (or anything) had that target's mode
/// changed, by a daemon running as root. The mode is now set through an O_PATH fd of the very
/// object, and a symlink there is refused.
#[test]
fn security_chmod_never_follows_a_symlink_swapped_into_the_upper() {
    let s = Stack::with_upper(&[""], "f g up");
    let canary = s.tmp.path().join("canary");
    fs::write(&canary, "secret").unwrap();
    fs::set_permissions(&canary, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let u = s.union();
    let g = ino(&u, "g");
    fs::remove_file(s.upper.join("g")).unwrap();
    std::os::unix::fs::symlink(&canary, s.upper.join("g")).unwrap();
    let chmod = SetAttr {
        mode: Some(0o666),
        ..Default::default()
    };
    assert_eq!(err(u.setattr(&ctx(), g, &chmod)), Errno::OPNOTSUPP);
    assert_eq!(fs::metadata(&canary).unwrap().mode() & 0o7777, 0o600);
}

/// pjdfstest `open::etxtbsy`, failing about one run in 50: with atomic O_TRUNC an
/// O_RDONLY|O_TRUNC open of a running program reaches the filesystem before the kernel's
/// ETXTBSY check, and the engine truncated the program (or copied a lower one up empty); it
/// died, and when it died before the check the open even succeeded. While a file has an exec
/// handle (`__FMODE_EXEC`), O_TRUNC must give ETXTBSY and leave it whole, as kernel overlayfs.
#[test]
fn pjdfstest_open_etxtbsy_trunc_of_running_program() {
    const FMODE_EXEC: u32 = 0o40;
    let s = Stack::with_upper(&["f lower-prog lower"], "f upper-prog upper");
    let u = s.union();
    for (path, content) in [("upper-prog", "upper"), ("lower-prog", "lower")] {
        let i = ino(&u, path);
        let exec_flags = OFlags::RDONLY | OFlags::from_bits_retain(FMODE_EXEC);
        let exec = u.open(&ctx(), i, exec_flags).unwrap();
        let trunc = u.open(&ctx(), i, OFlags::RDONLY | OFlags::TRUNC);
        assert_eq!(err(trunc), Errno::TXTBSY, "{path}");
        assert_eq!(cat(&u, path), content, "{path} while running");
        assert_eq!(
            s.upper.join(path).exists(),
            path == "upper-prog",
            "{path}: copied up while running"
        );
        u.release(exec);
        let trunc = u.open(&ctx(), i, OFlags::RDONLY | OFlags::TRUNC).unwrap();
        u.release(trunc);
        assert_eq!(cat(&u, path), "", "{path} after the program ended");
    }
}

/// Fuzzing (`options`): `unescape_octal` computed `\ooo` in a byte, so an escape above `\377`
/// (`\777`) overflowed: a panic in debug builds, a wrong byte in release ones. The kernel
/// never writes such an escape; it is kept as text.
#[test]
fn unescape_octal_escape_above_377_is_kept_as_text() {
    use unionmount::setup::unescape_octal;
    assert_eq!(unescape_octal(r"\777"), br"\777");
    assert_eq!(unescape_octal(r"a\4000"), br"a\4000");
    assert_eq!(unescape_octal(r"\377\040"), b"\xff ");
}

/// Model test (`model::prop`): a read-only handle opened on a lower file went on reading the
/// lower data after the file was copied up (and changed) through another open and then lost
/// its name by unlink or by a rename over it: the handle found the upper copy by its node's
/// path, which no longer existed. The kernel's handle follows the copy-up regardless.
#[test]
fn read_handle_follows_copy_up_when_name_goes_away() {
    let s = Stack::new(&["f a hello\nf b hello\nf c other"]);
    let u = s.union();
    let read_all = |fh| String::from_utf8(u.read(fh, 0, 100).unwrap()).unwrap();
    let truncate = |path: &str| {
        let set = SetAttr {
            size: Some(2),
            ..SetAttr::default()
        };
        u.setattr(&ctx(), ino(&u, path), &set).unwrap();
    };
    let fa = u.open(&ctx(), ino(&u, "a"), OFlags::RDONLY).unwrap();
    truncate("a");
    unlink(&u, "a").unwrap();
    assert_eq!(read_all(fa), "he", "after unlink");

    let fb = u.open(&ctx(), ino(&u, "b"), OFlags::RDONLY).unwrap();
    truncate("b");
    mv(&u, "c", "b").unwrap();
    assert_eq!(read_all(fb), "he", "after a rename over it");
    assert_eq!(cat(&u, "b"), "other");
    u.release(fa);
    u.release(fb);
}

/// Layer tools (`layer_tools`, `diff --lowers` looks below through a read-only union): in a
/// union without an upper, xattr whiteouts in the top lower's subdirectories were ignored (the
/// engine took layer 0 for the upper, where the kernel ignores them), so a name they hide
/// showed; at the root they worked.
#[test]
fn xattr_whiteouts_in_the_top_lower_of_a_read_only_union() {
    let s = Stack::new(&["d i\nX i/v\nX w", "f i/v v\nf i/u u\nf w w"]);
    let cfg = unionmount::config::Config::new(s.lowers.clone(), None, None);
    let u = unionmount::union::Union::new(&cfg).unwrap();
    assert_eq!(ls(&u, ""), ["i"]);
    assert_eq!(ls(&u, "i"), ["u"]);
    assert_eq!(err(at(&u, "i/v")), Errno::NOENT);
}

/// Layer tools (`layer_tools`: `diff --lowers` of an upper from a mount session listed a
/// directory only copied up to hold a changed child): copying a file up changed its parent
/// directory's mtime, because the copy lands in the parent's upper copy; kernel overlayfs
/// restores the parent's times after a copy-up, which is not a change of the directory.
#[test]
fn copy_up_keeps_the_parent_directory_times() {
    let s = Stack::new(&["d e\nf e/y y\nd e/sub\nf e/sub/z z"]);
    let old = rustix::fs::Timespec {
        tv_sec: 1000,
        tv_nsec: 0,
    };
    let times = rustix::fs::Timestamps {
        last_access: old,
        last_modification: old,
    };
    for d in ["e", "e/sub"] {
        let p = s.lowers[0].join(d);
        rustix::fs::utimensat(rustix::fs::CWD, &p, &times, rustix::fs::AtFlags::empty()).unwrap();
    }
    let u = s.union();
    let chmod = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    u.setattr(&ctx(), ino(&u, "e/y"), &chmod).unwrap();
    // A nested copy-up: e/sub is copied up as the parent of e/sub/z, then z into it.
    u.setattr(&ctx(), ino(&u, "e/sub/z"), &chmod).unwrap();
    for d in ["e", "e/sub"] {
        let st = at(&u, d).unwrap().st;
        assert_eq!(
            (st.st_mtime, st.st_mtime_nsec),
            (1000, 0),
            "{d} mtime changed"
        );
        let up = fs::metadata(s.upper.join(d)).unwrap();
        assert_eq!(up.mtime(), 1000, "{d} in the upper");
    }
}

/// podman end-to-end test (`podman`): copying a file up renamed it into its upper parent
/// directory, which set that directory's mtime to now, so `podman diff` and the layer tars
/// listed the directory as changed where kernel overlayfs's do not (the kernel's copy-up
/// gives the parent its times back). A copy-up, also of a hard link's other names, must leave
/// every directory's times as they were.
#[test]
fn copy_up_keeps_parent_directory_times() {
    let s = Stack::new(&["d a/b/c\nf a/b/c/g y\nf x/file z\nh y/link x/file"]);
    let old = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 2_000_000,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 1_000_000,
            tv_nsec: 5,
        },
    };
    for d in ["a", "a/b", "a/b/c", "x", "y"] {
        rustix::fs::utimensat(
            rustix::fs::CWD,
            s.lowers[0].join(d),
            &old,
            rustix::fs::AtFlags::empty(),
        )
        .unwrap();
    }
    let u = s.union();
    let root_before = at(&u, "").unwrap().st;
    // Both names of the hard link are known to the kernel, so both are copied up together.
    ino(&u, "y/link");
    for path in ["a/b/c/g", "x/file"] {
        let chmod = SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        };
        u.setattr(&ctx(), ino(&u, path), &chmod).unwrap();
    }
    assert!(s.upper.join("a/b/c/g").exists() && s.upper.join("y/link").exists());
    for d in ["a", "a/b", "a/b/c", "x", "y"] {
        let st = at(&u, d).unwrap().st;
        assert_eq!(
            (st.st_mtime, st.st_mtime_nsec, st.st_atime),
            (1_000_000, 5, 2_000_000),
            "{d}: times changed by the copy-up"
        );
    }
    let root = at(&u, "").unwrap().st;
    assert_eq!(
        (root.st_mtime, root.st_mtime_nsec),
        (root_before.st_mtime, root_before.st_mtime_nsec),
        "the root's mtime changed by the copy-up"
    );
}

/// Found by tests/all/rootless.rs: after `umount MNT`, the exiting daemon unmounted MNT by
/// path once more (fuser's session end cannot tell the union is already gone), taking down
/// whatever had been mounted on the directory in the meantime: there a kernel overlay over
/// the same upper; with podman, the next mount of a container's rootfs.
#[test]
fn daemon_exit_after_umount_leaves_the_next_mount_on_the_directory_alone() {
    use crate::cli::{can_mount, is_mounted, spawn_foreground, wait_for};
    use rustix::mount::{MountFlags, UnmountFlags};
    if !can_mount() {
        return;
    }
    let s = Stack::new(&["f a x"]);
    // The daemon's exit races with the next mount; a few rounds make a loss near certain.
    for round in 0..20 {
        let mut fg = spawn_foreground(&[&s.lowers[0], &s.upper, &s.mnt], &s.mnt);
        // EBUSY while the daemon's start-up still touches the mount.
        wait_for("umount", || {
            rustix::mount::unmount(&s.mnt, UnmountFlags::empty()) != Err(Errno::BUSY)
        });
        assert!(!is_mounted(&s.mnt));
        rustix::mount::mount("none", &s.mnt, "tmpfs", MountFlags::empty(), None).unwrap();
        wait_for("the daemon to exit", || {
            fg.child.try_wait().unwrap().is_some()
        });
        let kept = is_mounted(&s.mnt);
        if kept {
            rustix::mount::unmount(&s.mnt, UnmountFlags::empty()).unwrap();
        }
        assert!(
            kept,
            "round {round}: the exiting daemon unmounted the next mount"
        );
        drop(fg);
    }
}

/// Found by the apt row of the benchmarks: ioctls were left to fuser's default, which
/// logged a warning for each, and isatty(3) on a file is one (TCGETS): dpkg and apt filled
/// the daemon's stderr. An unknown ioctl must fail with ENOTTY, quietly.
#[test]
fn ioctl_on_a_file_is_enotty_and_logs_nothing() {
    use crate::cli::{BIN, can_mount, is_mounted, wait_for};
    use std::process::{Command, Stdio};
    if !can_mount() {
        return;
    }
    let s = Stack::new(&["f a x"]);
    let child = Command::new(BIN)
        .arg("-f")
        .args([&s.lowers[0], &s.upper, &s.mnt])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn unionmount -f");
    wait_for("the mount", || is_mounted(&s.mnt));
    for name in ["a", "new"] {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(s.mnt.join(name))
            .unwrap();
        assert_eq!(
            rustix::termios::tcgetattr(&f).err(),
            Some(Errno::NOTTY),
            "tcgetattr on {name}"
        );
    }
    rustix::mount::unmount(&s.mnt, rustix::mount::UnmountFlags::empty()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("Not Implemented") && !stderr.contains("ioctl"),
        "the daemon logged: {stderr}"
    );
}
