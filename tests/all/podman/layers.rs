//! OCI image layers and trees for the podman test: applying the layers of a `podman save
//! --format oci-dir` in order, reading a tree into comparable entries, and comparing two.
//!
//! Applying follows the OCI image spec: in each layer, `.wh..wh..opq` in a directory removes
//! what earlier layers put in it and `.wh.NAME` removes NAME; both apply before the layer's
//! own entries, which are then extracted by GNU tar (owners, modes, xattrs kept).

use std::collections::BTreeMap;
use std::fs;
use std::hash::Hasher;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One entry of a tree: everything compared but times, and its mtime on the side.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub line: String,
    pub mtime: i64,
}

/// A tree by path relative to its root.
pub type Tree = BTreeMap<String, Entry>;

fn tar(args: &[&str], archive: &Path, dir: Option<&Path>) -> String {
    let mut c = Command::new("tar");
    c.args(["--numeric-owner", "--xattrs", "--xattrs-include=*"])
        .args(args)
        .arg("-f")
        .arg(archive);
    if let Some(d) = dir {
        c.arg("-C").arg(d);
    }
    let out = c.output().expect("run tar");
    assert!(
        out.status.success(),
        "tar {args:?} {}: {}",
        archive.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Extracts `archive` into the new directory `dir` and reads the tree.
pub fn extract_tree(archive: &Path, dir: &Path) -> Tree {
    fs::create_dir_all(dir).unwrap();
    tar(&["-xp"], archive, Some(dir));
    read_tree(dir)
}

/// Every `sha256:` digest in `text`, in order.
fn digests(text: &str) -> Vec<String> {
    text.match_indices("sha256:")
        .filter_map(|(i, _)| text.get(i + 7..i + 71))
        .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .collect()
}

fn blob(oci: &Path, digest: &str) -> PathBuf {
    oci.join("blobs/sha256").join(digest)
}

/// The layer blobs of the one image in the OCI directory `oci`, base first.
fn layer_blobs(oci: &Path) -> Vec<PathBuf> {
    let index = fs::read_to_string(oci.join("index.json")).unwrap();
    let manifest_digest = digests(&index).into_iter().next().expect("a manifest");
    let manifest = fs::read_to_string(blob(oci, &manifest_digest)).unwrap();
    let layers = manifest
        .split_once("\"layers\"")
        .and_then(|(_, rest)| rest.split_once(']'))
        .expect("a layers list")
        .0;
    digests(layers).iter().map(|d| blob(oci, d)).collect()
}

/// Applies every layer of the image in `oci` onto the new directory `dir`; returns the tree
/// after each layer.
pub fn apply_all(oci: &Path, dir: &Path) -> Vec<Tree> {
    fs::create_dir_all(dir).unwrap();
    layer_blobs(oci)
        .iter()
        .map(|layer| {
            apply(layer, dir);
            read_tree(dir)
        })
        .collect()
}

fn apply(layer: &Path, dir: &Path) {
    for name in tar(&["-t"], layer, None).lines() {
        let rel = Path::new(name.trim_start_matches("./").trim_end_matches('/'));
        let (Some(parent), Some(file)) = (rel.parent(), rel.file_name()) else {
            continue;
        };
        let file = file.to_string_lossy();
        let target = dir.join(parent);
        if file == ".wh..wh..opq" {
            for child in fs::read_dir(&target).into_iter().flatten().flatten() {
                remove(&child.path());
            }
        } else if let Some(hidden) = file.strip_prefix(".wh.") {
            remove(&target.join(hidden));
        }
    }
    tar(&["-xp", "--exclude=.wh.*"], layer, Some(dir));
}

fn remove(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).unwrap(),
        Ok(_) => fs::remove_file(p).unwrap(),
        Err(_) => {}
    }
}

/// Reads the tree under `root`: for each entry its type, mode, owner, link count (not for
/// directories), content hash, link target or device number, and xattrs.
pub fn read_tree(root: &Path) -> Tree {
    let mut out = Tree::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Tree) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let what = if ft.is_dir() {
            "dir".to_owned()
        } else if ft.is_symlink() {
            format!("symlink -> {}", fs::read_link(&p).unwrap().display())
        } else if ft.is_file() {
            // std's SipHash runs optimized even in a debug build; these trees are ~200 MB.
            let mut h = std::hash::DefaultHasher::new();
            h.write(&fs::read(&p).unwrap());
            format!(
                "file {} #{:016x} nlink {}",
                md.len(),
                h.finish(),
                md.nlink()
            )
        } else {
            format!("special {:o} rdev {}", md.mode() & 0o170000, md.rdev())
        };
        let line = format!(
            "{what} mode {:o} owner {}:{} xattrs {:?}",
            md.mode() & 0o7777,
            md.uid(),
            md.gid(),
            crate::fixture::xattrs(&p)
        );
        out.insert(
            rel,
            Entry {
                line,
                mtime: md.mtime(),
            },
        );
        if ft.is_dir() {
            walk(root, &p, out);
        }
    }
}

/// Panics, listing up to 40 differences, unless `ours` and `theirs` have the same entries
/// with the same lines, and the same mtime wherever the kernel's is before `since` (the
/// builds did not touch it, so a copy-up must not have either), or ours is and the entry is
/// not a directory. A directory may keep an old mtime with unionmount where the kernel's is
/// new: podman's naive diff leaves out directories whose only change is their mtime.
pub fn assert_same(ours: &Tree, theirs: &Tree, since: i64, what: &str) {
    let mut diffs = Vec::new();
    for (path, a) in ours {
        match theirs.get(path) {
            None => diffs.push(format!("only with unionmount: {path} {}", a.line)),
            Some(b) if a.line != b.line => diffs.push(format!(
                "{path}:\n  unionmount {}\n  kernel     {}",
                a.line, b.line
            )),
            Some(b)
                if a.mtime != b.mtime && (b.mtime < since || (a.mtime < since && !is_dir(a))) =>
            {
                diffs.push(format!(
                    "{path}: mtime {} with unionmount, {} with the kernel",
                    a.mtime, b.mtime
                ))
            }
            Some(_) => {}
        }
    }
    for (path, b) in theirs {
        if !ours.contains_key(path) {
            diffs.push(format!("only with the kernel: {path} {}", b.line));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} differences between unionmount and kernel overlayfs:\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn is_dir(e: &Entry) -> bool {
    e.line.starts_with("dir ")
}

/// What the Containerfile's RUN steps must have left, checked on the unionmount side so a
/// test that compared two equally wrong trees still fails.
pub fn assert_built_content(t: &Tree) {
    let line = |p: &str| t.get(p).map(|e| e.line.as_str()).unwrap_or("(missing)");
    for gone in [
        "data/gone",
        "data/replace/sub",
        "data/tree",
        "etc/issue",
        "usr/share/doc/copyright",
    ] {
        assert!(!t.contains_key(gone), "{gone} survived its deletion");
    }
    assert!(t.contains_key("data/replace/c") && t.contains_key("usr/share/doc/new"));
    assert!(
        line("data/replace/c").contains("owner 1:2"),
        "{}",
        line("data/replace/c")
    );
    assert!(
        line("data/moved/a/b/f").starts_with("file 5 "),
        "{}",
        line("data/moved/a/b/f")
    );
    assert!(line("data/link").starts_with("symlink -> /etc/os-release"));
    assert!(
        line("data/fifo").starts_with("special 10000"),
        "{}",
        line("data/fifo")
    );
    assert!(line("data/keep").contains("mode 751"));
    // The hard link was made in layer 2; layer 3 copied each name up on its own (touch, then
    // chmod): as with kernel overlayfs without index=on, they are two files since.
    assert!(line("data/hard").contains("mode 4755") && line("data/hard").contains("nlink 1"));
    assert!(line("data/keep/a").starts_with("file 8 ") && line("data/keep/a").contains("mode 644"));
    assert_eq!(t.get("data/keep/a").map(|e| e.mtime), Some(1_000_000));
}
