//! `unionmount export`: an upper layer as an OCI image-spec layer changeset (a tar).
//!
//! Whiteouts (every format) become empty `.wh.NAME` files; an opaque directory (every format)
//! is its directory entry followed by an empty `DIR/.wh..wh..opq`. Objects keep their owner
//! (numeric ids, no names), mode, mtime (whole seconds) and xattrs (PAX `SCHILY.xattr.KEY`),
//! except the overlay's private ones (`format::is_private_xattr`) and SELinux labels (they
//! belong to the host). Hard links within the upper are tar hard links to the first path in
//! archive order. Sockets cannot be archived and are skipped with a warning; the root
//! directory itself is not archived (layers do not carry one).
//!
//! Invariant: the output is a function of the upper's contents only. Entries come in the
//! scan's order (`scan`), headers are GNU headers with no atime, ctime or user/group names,
//! markers carry mode 0, owner 0:0 and mtime 0, and PAX records are sorted by key; the same
//! upper gives the same bytes.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, OFlags, Stat};
use tar::{Builder, EntryType, Header};

use super::scan::{self, Item, What};
use crate::format;
use crate::layer::Layer;
use crate::sys::{self, Errno};

/// Writes the changeset of `upper` to `out`; returns how many entries were written.
///
/// Errors: a message naming the path that could not be read, or the write error.
pub fn export(upper: &Path, out: impl Write) -> Result<usize, String> {
    let items = scan::scan(upper).map_err(|e| format!("cannot read {}: {e}", upper.display()))?;
    let layer = Layer::open(upper).map_err(|e| format!("cannot open {}: {e}", upper.display()))?;
    let mut w = Writer {
        tar: Builder::new(out),
        root: layer,
        links: HashMap::new(),
        count: 0,
    };
    for it in &items {
        w.item(it)
            .map_err(|e| format!("cannot export {}: {e}", scan::slash(&it.path)))?;
    }
    w.tar
        .into_inner()
        .and_then(|mut o| o.flush())
        .map_err(|e| format!("cannot write the archive: {e}"))?;
    Ok(w.count)
}

struct Writer<W: Write> {
    tar: Builder<W>,
    root: Layer,
    /// First archived path of each multiply-linked inode (dev, ino).
    links: HashMap<(u64, u64), PathBuf>,
    count: usize,
}

fn io_err(e: Errno) -> std::io::Error {
    std::io::Error::from(e)
}

impl<W: Write> Writer<W> {
    fn item(&mut self, it: &Item) -> std::io::Result<()> {
        match &it.what {
            What::Inert => Ok(()),
            What::Whiteout(_) => {
                let name = format::aufs_whiteout_name(it.path.file_name().unwrap_or_default());
                self.marker(&it.path.with_file_name(name))
            }
            What::Dir { opaque } => {
                self.object(it)?;
                if !opaque.is_empty() {
                    self.marker(&it.path.join(format::OPAQUE_MARKER))?;
                }
                Ok(())
            }
            What::Object => self.object(it),
        }
    }

    /// An empty marker file with fixed metadata.
    fn marker(&mut self, path: &Path) -> std::io::Result<()> {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        self.count += 1;
        self.tar.append_data(&mut h, path, std::io::empty())
    }

    fn object(&mut self, it: &Item) -> std::io::Result<()> {
        let parent = it.path.parent().unwrap_or(Path::new(""));
        let dir = sys::path::open_dir_beneath(self.root.root.as_fd(), parent).map_err(io_err)?;
        let name = it.name.as_os_str();
        let st = &it.st;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind == FileType::Socket {
            log::warn!(
                "{}: sockets cannot be archived; skipped",
                scan::slash(&it.path)
            );
            return Ok(());
        }
        self.pax_xattrs(dir.as_fd(), it)?;
        let mut h = header(st);
        self.count += 1;
        if kind != FileType::Directory && st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key) {
                h.set_entry_type(EntryType::Link);
                h.set_size(0);
                return self.tar.append_link(&mut h, &it.path, first);
            }
            self.links.insert(key, it.path.clone());
        }
        match kind {
            FileType::Directory => {
                h.set_entry_type(EntryType::Directory);
                self.tar.append_data(&mut h, &it.path, std::io::empty())
            }
            FileType::Symlink => {
                let target =
                    rustix::fs::readlinkat(dir.as_fd(), name, Vec::new()).map_err(io_err)?;
                h.set_entry_type(EntryType::Symlink);
                let target: std::ffi::OsString =
                    std::os::unix::ffi::OsStringExt::from_vec(target.into_bytes());
                self.tar.append_link(&mut h, &it.path, target)
            }
            FileType::RegularFile => {
                let fd =
                    sys::path::open_noatime(dir.as_fd(), name, OFlags::RDONLY).map_err(io_err)?;
                h.set_entry_type(EntryType::Regular);
                h.set_size(st.st_size as u64);
                let data = Exact {
                    file: std::fs::File::from(fd),
                    left: st.st_size as u64,
                };
                self.tar.append_data(&mut h, &it.path, data)
            }
            FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo => {
                h.set_entry_type(match kind {
                    FileType::CharacterDevice => EntryType::Char,
                    FileType::BlockDevice => EntryType::Block,
                    _ => EntryType::Fifo,
                });
                if kind != FileType::Fifo {
                    h.set_device_major(rustix::fs::major(st.st_rdev))?;
                    h.set_device_minor(rustix::fs::minor(st.st_rdev))?;
                }
                self.tar.append_data(&mut h, &it.path, std::io::empty())
            }
            _ => Err(std::io::Error::other("unknown file type")),
        }
    }

    /// The object's public xattrs as a PAX header (sorted, so the bytes are fixed).
    fn pax_xattrs(&mut self, dir: std::os::fd::BorrowedFd<'_>, it: &Item) -> std::io::Result<()> {
        let name = Some(it.name.as_os_str());
        let mut keys: Vec<String> = sys::xattr::list(dir, name)
            .map_err(io_err)?
            .into_iter()
            .filter(|k| !format::is_private_xattr(k) && !k.starts_with("security.selinux"))
            .collect();
        keys.sort();
        let mut records = Vec::new();
        for k in keys {
            if let Some(v) = sys::xattr::get_opt(dir, name, &k).map_err(io_err)? {
                records.push((format!("SCHILY.xattr.{k}"), v));
            }
        }
        self.tar
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
    }
}

/// A header with the object's fixed metadata: mode, owner, mtime; nothing that changes when
/// the upper is only read (atime, ctime) or that depends on the host (user names).
fn header(st: &Stat) -> Header {
    let mut h = Header::new_gnu();
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(st.st_uid.into());
    h.set_gid(st.st_gid.into());
    h.set_mtime(st.st_mtime.max(0) as u64);
    h.set_size(0);
    h
}

/// Reads exactly `left` bytes of `file`: a file that shrinks while being archived is an
/// error, not a short entry that would corrupt the stream (one that grows is cut).
struct Exact {
    file: std::fs::File,
    left: u64,
}

impl std::io::Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file shrank while being archived",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
