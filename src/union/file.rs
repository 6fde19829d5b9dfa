//! Open files: open, read, write, flush, fsync, fallocate, lseek, release.
//!
//! Opening for write (or with O_TRUNC) copies the file up first; opening for read serves the
//! topmost copy. A read-only handle on a lower copy follows a later copy-up (see
//! `node::handle`). Reads and writes take no engine lock.

use std::num::NonZeroU64;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;

use rustix::fs::{FallocateFlags, FileType, OFlags, SeekFrom};

use super::{Ctx, Union};
use crate::node::handle::FileHandle;
use crate::sys::{self, Errno};

/// The flags of an open request that are passed on to the backing file. The kernel's
/// requests carry internal bits too (exec opens carry `__FMODE_EXEC`), which openat2, unlike
/// open, refuses with EINVAL; creation flags are the engine's business.
pub(crate) fn open_flags(flags: OFlags) -> OFlags {
    flags
        & (OFlags::ACCMODE
            | OFlags::APPEND
            | OFlags::NONBLOCK
            | OFlags::SYNC
            | OFlags::DSYNC
            | OFlags::DIRECT
            | OFlags::LARGEFILE
            | OFlags::NOATIME
            | OFlags::TRUNC)
}

/// `__FMODE_EXEC`: the kernel's mark on the open of a file being executed.
const FMODE_EXEC: u32 = 0o40;

fn wants_write(flags: OFlags) -> bool {
    flags.intersects(OFlags::WRONLY | OFlags::RDWR) || flags.contains(OFlags::TRUNC)
}

/// How far ahead of a sequential read through the daemon the layer file is read. A cold 1 GiB
/// lower file read through the mount took 0.87-0.98 s with it and 0.80-1.61 s without
/// (medians 0.89 and 1.09 s, eight alternating runs).
const PREFETCH: NonZeroU64 = NonZeroU64::new(4 << 20).unwrap();

impl Union {
    /// Opens `ino` with `flags`.
    ///
    /// Errors: EROFS (write access to a read-only union), EISDIR, ENOENT, ETXTBSY (O_TRUNC
    /// while the file is being executed), and what the layer gives (EACCES).
    pub fn open(&self, _ctx: &Ctx, ino: u64, flags: OFlags) -> Result<u64, Errno> {
        let node = self.node(ino)?;
        if node.is_dir() && wants_write(flags) {
            return Err(Errno::ISDIR);
        }
        let exec = flags.bits() & FMODE_EXEC != 0;
        let flags = open_flags(flags);
        // The kernel refuses write opens of a running executable before asking the filesystem,
        // but with atomic O_TRUNC an O_RDONLY|O_TRUNC open reaches us first: truncating here
        // would cut the running binary (or a copy-up would empty it) before its ETXTBSY.
        if flags.contains(OFlags::TRUNC) && self.files.find(|h| h.ino == ino && h.exec).is_some() {
            return Err(Errno::TXTBSY);
        }
        let node = if wants_write(flags) {
            self.copy_up(&node, !flags.contains(OFlags::TRUNC))?
        } else {
            node
        };
        let _ns = self.ns.read();
        let node = self.node(node.ino).unwrap_or(node);
        let layer = node.top_layer().ok_or(Errno::NOENT)?;
        let path = node.path().ok_or(Errno::NOENT)?;
        let (dir, name) = self.open_parent(layer, path)?;
        // Reads of a lower copy must not touch its atime.
        let fd = if node.upper {
            sys::path::open_at(dir.as_fd(), name, flags, 0)?
        } else {
            sys::path::open_noatime(dir.as_fd(), name, flags)?
        };
        Ok(self.new_file_handle(ino, fd, flags, node.upper, exec))
    }

    pub(crate) fn new_file_handle(
        &self,
        ino: u64,
        fd: OwnedFd,
        flags: OFlags,
        on_upper: bool,
        exec: bool,
    ) -> u64 {
        self.files.insert(FileHandle {
            ino,
            fd: parking_lot::RwLock::new(fd),
            on_upper: on_upper.into(),
            flags,
            exec,
            read_end: u64::MAX.into(),
        })
    }

    fn handle(&self, fh: u64) -> Result<std::sync::Arc<FileHandle>, Errno> {
        let h = self.files.get(fh).ok_or(Errno::BADF)?;
        if !h.on_upper.load(Ordering::Acquire) {
            self.follow_copy_up(&h)?;
        }
        Ok(h)
    }

    /// Reopens a lower handle on the upper copy once its node was copied up.
    fn follow_copy_up(&self, h: &FileHandle) -> Result<(), Errno> {
        let Some(node) = self.nodes.get(h.ino) else {
            return Ok(());
        };
        if !node.upper || self.upper.is_none() {
            return Ok(());
        }
        let Some(path) = node.path() else {
            return Ok(());
        };
        let (dir, name) = self.open_parent(0, path)?;
        let fd = sys::path::open_at(dir.as_fd(), name, h.flags & !OFlags::TRUNC, 0)?;
        *h.fd.write() = fd;
        h.on_upper.store(true, Ordering::Release);
        Ok(())
    }

    /// Moves every handle of `ino` still reading a lower copy onto the upper copy, if there
    /// is one. Called before a name of `ino` goes away: a handle finds the upper copy by the
    /// node's path, so once the last name is gone it would go on reading the lower data that
    /// a copy-up replaced (the kernel's handles follow the copy-up whatever happens to the
    /// name). A handle that cannot be reopened keeps its lower fd, as before.
    pub(crate) fn settle_handles(&self, ino: u64) {
        for h in self
            .files
            .filter(|h| h.ino == ino && !h.on_upper.load(Ordering::Acquire))
        {
            let _ = self.follow_copy_up(&h);
        }
    }

    /// Reads up to `size` bytes at `offset`.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let h = self.handle(fh)?;
        let size = size as usize;
        // Read into uninitialised capacity: the kernel asks for whole readahead windows (up
        // to 1 MiB) even of a 100-byte file, and zeroing such a buffer first cost more than
        // the read itself.
        let mut buf = Vec::with_capacity(size);
        let fd = h.fd.read();
        while buf.len() < size {
            let at = offset + buf.len() as u64;
            if rustix::io::pread(&*fd, rustix::buffer::spare_capacity(&mut buf), at)? == 0 {
                break;
            }
        }
        // The allocation may hold more than asked for; never answer with more.
        buf.truncate(size);
        let end = offset + buf.len() as u64;
        if h.read_end.swap(end, Ordering::Relaxed) == offset && buf.len() == size {
            // A sequential read: have the layer's filesystem read the next windows while the
            // kernel takes this one, so its disk reads overlap the round trips instead of
            // starting only when the next READ arrives.
            let _ = rustix::fs::fadvise(&*fd, end, Some(PREFETCH), rustix::fs::Advice::WillNeed);
        }
        Ok(buf)
    }

    /// Writes `data` at `offset` (or at the end for O_APPEND handles).
    ///
    /// Errors: EBADF (handle not open for writing), ENOSPC, EFBIG, EIO.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        let h = self.handle(fh)?;
        let fd = h.fd.read();
        if h.flags.contains(OFlags::APPEND) {
            let mut done = 0;
            while done < data.len() {
                done += rustix::io::write(&*fd, &data[done..])?;
            }
            return Ok(done);
        }
        sys::copy::write_all_at(fd.as_fd(), data, offset)?;
        Ok(data.len())
    }

    /// copy_file_range(2) between two open files: the kernel copies (or reflinks) the data
    /// between the layer files itself, so it never passes through the daemon. Where the layer
    /// files are on different filesystems that cannot copy between them, it copies at most
    /// 1 MiB here (`sys::copy::copy_some`); a short count is allowed and the caller comes back
    /// for more.
    ///
    /// Errors: EBADF (unknown handle), ENOSPC, EFBIG, EIO from the layer files.
    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<usize, Errno> {
        let h_in = self.handle(fh_in)?;
        let fd_in = h_in.fd.read();
        // Within one handle, one lock: a second read could wait behind a queued writer (the
        // handle following its copy-up) that waits for the first.
        let h_out;
        let other;
        let fd_out = if fh_out == fh_in {
            &fd_in
        } else {
            h_out = self.handle(fh_out)?;
            other = h_out.fd.read();
            &other
        };
        let len = len.min(u32::MAX as u64) as usize;
        sys::copy::copy_some(fd_in.as_fd(), off_in, fd_out.as_fd(), off_out, len)
    }

    /// Flush on close(2): nothing is buffered here; report errors of the backing file.
    pub fn flush(&self, fh: u64) -> Result<(), Errno> {
        self.files.get(fh).map(|_| ()).ok_or(Errno::BADF)
    }

    /// fsync(2) / fdatasync(2); on a volatile union only checks the handle.
    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<(), Errno> {
        let h = self.handle(fh)?;
        let fd = h.fd.read();
        if self.volatile {
            Ok(())
        } else if datasync {
            rustix::fs::fdatasync(&*fd)
        } else {
            rustix::fs::fsync(&*fd)
        }
    }

    /// fsync of a directory: syncs its upper copy, if any (none on a volatile union).
    pub fn fsyncdir(&self, ino: u64) -> Result<(), Errno> {
        let node = self.node(ino)?;
        if node.upper && !self.volatile {
            let fd = self.layers[0].open_dir(node.path().ok_or(Errno::NOENT)?)?;
            rustix::fs::fsync(&fd)?;
        }
        Ok(())
    }

    /// fallocate(2).
    pub fn fallocate(&self, fh: u64, mode: u32, offset: u64, len: u64) -> Result<(), Errno> {
        let h = self.handle(fh)?;
        let flags = FallocateFlags::from_bits(mode).ok_or(Errno::OPNOTSUPP)?;
        rustix::fs::fallocate(&*h.fd.read(), flags, offset, len)
    }

    /// lseek(2) for SEEK_DATA / SEEK_HOLE (the kernel handles the others itself).
    pub fn lseek(&self, fh: u64, offset: i64, whence: u32) -> Result<u64, Errno> {
        let h = self.handle(fh)?;
        let off = u64::try_from(offset).map_err(|_| Errno::INVAL)?;
        let pos = match whence {
            0 => SeekFrom::Start(off),
            3 => SeekFrom::Data(off),
            4 => SeekFrom::Hole(off),
            _ => return Err(Errno::INVAL),
        };
        rustix::fs::seek(&*h.fd.read(), pos)
    }

    /// Closes handle `fh`.
    pub fn release(&self, fh: u64) {
        self.files.remove(fh);
    }

    /// A duplicate of the fd behind `fh` when no copy-up can ever replace its file (for FUSE
    /// passthrough, where the kernel then reads and writes that file itself, and keeps using
    /// it for the inode while any open of it lasts): the upper copy, or any copy in a union
    /// without an upper, where nothing is ever copied up. `None` for a handle on a lower copy
    /// of a read-write union, which a later write-open would copy up to a different file.
    pub fn backing_file(&self, fh: u64) -> Option<OwnedFd> {
        let h = self.files.get(fh)?;
        if self.upper.is_some() && !h.on_upper.load(Ordering::Acquire) {
            return None;
        }
        let fd = h.fd.read();
        fd.try_clone().ok()
    }

    /// Whether the engine still knows inode `ino` (the kernel holds a reference to it).
    pub fn knows(&self, ino: u64) -> bool {
        self.nodes.get(ino).is_some()
    }

    /// The kind of `ino` (for adapters that need it without a stat).
    pub fn kind(&self, ino: u64) -> Result<FileType, Errno> {
        Ok(self.node(ino)?.kind)
    }
}
