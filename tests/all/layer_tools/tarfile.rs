//! Crafting layer tars for the tests, including malformed ones: names are written into the
//! header as raw bytes, so `..`, absolute paths and bare markers get through (the `tar`
//! crate's own path setters refuse them, rightly).

use std::io::Write;
use std::path::Path;

use tar::{Builder, EntryType, Header};

/// A layer tar under construction.
pub struct LayerTar {
    b: Builder<Vec<u8>>,
    xattrs: Vec<(String, Vec<u8>)>,
    owner: (u64, u64),
    mode: Option<u32>,
}

/// The mtime every crafted entry carries (2001-09-09).
pub const MTIME: u64 = 1_000_000_000;

impl LayerTar {
    pub fn new() -> LayerTar {
        LayerTar {
            b: Builder::new(Vec::new()),
            xattrs: Vec::new(),
            owner: (0, 0),
            mode: None,
        }
    }

    /// An xattr for the next entry (a PAX `SCHILY.xattr.` record).
    pub fn xattr(&mut self, key: &str, value: &str) -> &mut Self {
        self.xattrs
            .push((format!("SCHILY.xattr.{key}"), value.into()));
        self
    }

    /// Owner and mode of the next entry.
    pub fn attrs(&mut self, uid: u64, gid: u64, mode: u32) -> &mut Self {
        self.owner = (uid, gid);
        self.mode = Some(mode);
        self
    }

    /// Any entry; `name` and `link` go into the header unchecked (at most 100 bytes).
    pub fn raw(&mut self, name: &str, kind: EntryType, link: &str, data: &[u8]) -> &mut Self {
        if !self.xattrs.is_empty() {
            let recs = std::mem::take(&mut self.xattrs);
            self.b
                .append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .unwrap();
        }
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        let default = if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        };
        h.set_mode(self.mode.take().unwrap_or(default));
        let (uid, gid) = std::mem::take(&mut self.owner);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(MTIME);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn file(&mut self, name: &str, data: &str) -> &mut Self {
        self.raw(name, EntryType::Regular, "", data.as_bytes())
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(name, EntryType::Directory, "", b"")
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, EntryType::Symlink, target, b"")
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, EntryType::Link, target, b"")
    }

    pub fn fifo(&mut self, name: &str) -> &mut Self {
        self.raw(name, EntryType::Fifo, "", b"")
    }

    /// The finished archive.
    pub fn bytes(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }

    /// Writes the archive to `path` as it is, gzip- or zstd-compressed (by `path`'s extension).
    pub fn write(&mut self, path: &Path) {
        let tar = self.bytes();
        let data = match path.extension().and_then(|e| e.to_str()) {
            Some("gz") => {
                let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                z.write_all(&tar).unwrap();
                z.finish().unwrap()
            }
            Some("zst") => zstd::encode_all(&tar[..], 3).unwrap(),
            _ => tar,
        };
        std::fs::write(path, data).unwrap();
    }
}
