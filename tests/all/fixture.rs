//! Fixtures: temporary layer stacks built from the compact text form of `unionmount::layout`
//! (the library owns the description format, `build`, `dump` and `kernel_format`; see its
//! docs), plus what only the tests need: a temporary directory per stack and a mountpoint.
//!
//! `W`, `O`, `U` and `Y` are formats kernel overlayfs does not read; `kernel_format` translates a
//! description into the kernel's own formats with the same meaning.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use unionmount::config::Config;

/// A temporary layer stack: lowers (top first), an upper, a workdir and a mountpoint.
pub struct Stack {
    pub tmp: tempfile::TempDir,
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
}

impl Stack {
    /// Builds one lower per description, top first, and an empty upper.
    pub fn new(lowers: &[&str]) -> Stack {
        Self::with_upper(lowers, "")
    }

    /// Like `new`, with an upper built from `upper`.
    pub fn with_upper(lowers: &[&str], upper: &str) -> Stack {
        let tmp = tempfile::Builder::new()
            .prefix("um-test")
            .tempdir_in(test_root())
            .unwrap();
        let layers = unionmount::layout::Layers::create(tmp.path(), lowers, upper)
            .unwrap_or_else(|e| panic!("building the fixture {lowers:?} / {upper:?}: {e}"));
        let mnt = tmp.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        Stack {
            tmp,
            lowers: layers.lowers,
            upper: layers.upper,
            work: layers.work,
            mnt,
        }
    }

    pub fn config(&self) -> Config {
        Config::new(
            self.lowers.clone(),
            Some(self.upper.clone()),
            Some(self.work.clone()),
        )
    }

    pub fn union(&self) -> unionmount::union::Union {
        unionmount::union::Union::new(&self.config()).expect("union over the fixture")
    }

    /// Dump of every lower, to check they were never modified.
    pub fn lowers_dump(&self) -> Vec<String> {
        self.lowers.iter().map(|l| dump(l)).collect()
    }
}

/// Where test trees live: a directory on the same filesystem for every test (not tmpfs-only
/// features), overridable with UNIONMOUNT_TEST_DIR.
pub fn test_root() -> PathBuf {
    let p = std::env::var_os("UNIONMOUNT_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    fs::create_dir_all(&p).unwrap();
    p
}

/// Builds the entries of `desc` under `root` (see `unionmount::layout`), panicking on error.
pub fn build(root: &Path, desc: &str) {
    unionmount::layout::build(root, desc)
        .unwrap_or_else(|e| panic!("building {} from {desc:?}: {e}", root.display()));
}

pub use unionmount::layout::{dump, fnv, kernel_format, pattern, xattrs};
