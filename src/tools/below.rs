//! What the lower layers show under an upper: a read-only union of the lowers, read through
//! the engine, so that "is there something below" follows exactly the lookup rules of a mount
//! (whiteouts and opaque directories of every format inside the lowers included).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::sys::{Errno, not_found_as_none};
use crate::union::{Attr, Union, inode::ROOT};

/// The merged view of a stack of lowers (top first).
pub struct Below {
    union: Union,
}

impl Below {
    /// Opens the lowers read-only.
    ///
    /// Errors: a message naming the lowers when one cannot be opened.
    pub fn open(lowers: &[PathBuf]) -> Result<Below, String> {
        let union = Union::new(&Config::new(lowers.to_vec(), None, None)).map_err(|e| {
            let list: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
            format!("cannot open the lowers {}: {e}", list.join(":"))
        })?;
        Ok(Below { union })
    }

    /// The object at `path` (relative) in the merged lowers, `None` when there is none.
    ///
    /// Errors: what a lookup gives other than ENOENT/ENOTDIR (EACCES, EIO).
    pub fn lookup(&self, path: &Path) -> Result<Option<Attr>, Errno> {
        let mut cur = self.union.getattr(ROOT)?;
        for comp in path.iter() {
            match not_found_as_none(self.union.lookup(cur.ino, comp))? {
                Some(a) => cur = a,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// The names in the merged lower directory `ino` (without `.` and `..`).
    ///
    /// Errors: ENOTDIR, and what listing gives.
    pub fn names(&self, ino: u64) -> Result<Vec<OsString>, Errno> {
        let fh = self.union.opendir(ino)?;
        let r = self.union.readdir(fh, 0);
        self.union.releasedir(fh);
        Ok(r?
            .iter()
            .filter(|e| e.name != OsStr::new(".") && e.name != OsStr::new(".."))
            .map(|e| e.name.clone())
            .collect())
    }
}
