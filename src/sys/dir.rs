//! Reading the entries of one directory of one layer.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;

use rustix::fs::{Dir, FileType};

use super::Errno;

/// One raw entry of a layer directory (`.` and `..` are skipped).
#[derive(Clone, Debug)]
pub struct RawEntry {
    pub name: OsString,
    pub ino: u64,
    pub kind: FileType,
}

/// All entries of the directory open as `fd` (consumed), in the order the filesystem gives.
pub fn read_all(fd: OwnedFd) -> Result<Vec<RawEntry>, Errno> {
    let mut dir = Dir::new(fd)?;
    let mut out = Vec::new();
    while let Some(ent) = dir.read() {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push(RawEntry {
            name: OsString::from_vec(name.to_vec()),
            ino: ent.ino(),
            kind: ent.file_type(),
        });
    }
    Ok(out)
}
