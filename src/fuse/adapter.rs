//! The fuser adapter: converts FUSE requests into engine calls and engine results into
//! replies. It holds no union logic; every errno comes from the engine through one explicit
//! conversion (`convert::fuse_errno`), never through `io::Error` (which fuser would turn into EIO).
//! Every handler starts with `let _spin = self.spin.request();`: the guard lives until the
//! handler returns, after its reply, and then polls for the next request (see `spin`).

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, CopyFileRangeFlags, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, IoctlFlags, KernelConfig, LockOwner, Notifier, OpenFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use rustix::fs::OFlags;

use crate::config::{Config, Passthrough};
use crate::fuse::convert::{
    OPEN_FLAGS, cache_flags, ctx, decode_dev, file_attr, fuse_errno, kind, negative_entry, oflags,
    reply_empty, reply_xattr, set_time,
};
use crate::fuse::passthrough::{OpenMode, Opens};
use crate::fuse::spin::Spin;
use crate::sys::Errno;
use crate::union::attr::SetAttr;
use crate::union::rename::RenameFlags;
use crate::union::{Attr, Union};

/// The union served through fuser.
pub struct Adapter {
    union: Union,
    /// Entry and attribute timeout. Unless it is zero (caching off), cached opens also keep
    /// the page cache (`FOPEN_KEEP_CACHE`): every change to a file's data comes through this
    /// mount, so the kernel's page cache of an inode stays right across opens; dropping it at
    /// each open (the default) made every warm read go through the daemon again.
    ttl: Duration,
    /// Filled by the session once mounted (the notifier only exists then).
    notifier: Arc<OnceLock<Notifier>>,
    /// Passthrough policy and the per-inode open modes.
    opens: Opens,
    /// Bytes served by the read and write handlers: what passthrough saves the daemon.
    daemon_io: Arc<AtomicU64>,
    /// Told once INIT succeeded (the mount is usable); dropped unsent if INIT failed.
    ready: Option<Sender<()>>,
    /// Polls the device after each reply (see `spin`).
    spin: Spin,
}

impl Adapter {
    pub fn new(union: Union, cfg: &Config) -> Adapter {
        Adapter {
            union,
            ttl: cfg.timeout,
            notifier: Arc::default(),
            opens: Opens::new(Passthrough::default()),
            daemon_io: Arc::default(),
            ready: None,
            spin: Spin::new(Duration::ZERO),
        }
    }

    /// Sets the passthrough policy (before mounting).
    pub fn set_passthrough(&mut self, policy: Passthrough) {
        self.opens = Opens::new(policy);
    }

    /// Sets the longest poll of the device after a reply (before mounting; zero: never).
    pub fn set_spin(&mut self, max: Duration) {
        self.spin = Spin::new(max);
    }

    /// Where the session puts a duplicate of its device fd for polling.
    pub fn spin_device_slot(&self) -> Arc<OnceLock<OwnedFd>> {
        self.spin.device_slot()
    }

    /// A counter of the bytes the read and write handlers served (for tests and tracing).
    pub fn daemon_io(&self) -> Arc<AtomicU64> {
        self.daemon_io.clone()
    }

    /// `tx` is sent `()` once the kernel's INIT is answered successfully.
    pub fn notify_ready(&mut self, tx: Sender<()>) {
        self.ready = Some(tx);
    }

    /// Answers an open of `ino` through handle `fh` (see `passthrough` for the choice);
    /// `open_backing` is the reply's registration of a backing file with the kernel.
    fn open_mode(
        &self,
        ino: u64,
        fh: u64,
        open_backing: impl FnOnce(&OwnedFd) -> std::io::Result<fuser::BackingId>,
    ) -> OpenMode {
        self.opens.open(ino, !self.ttl.is_zero(), || {
            self.union.backing_file(fh).map(|fd| open_backing(&fd))
        })
    }

    /// Where the session puts its notifier once the mount is live.
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }

    /// Drops the kernel's cached attributes of nodes the last operation changed behind its
    /// back. Called before replying, so the caller's next stat sees the change. Attribute-only
    /// invalidation (offset -1) takes no inode lock in the kernel, so it cannot deadlock with
    /// the request being answered (entry invalidations could, and are never sent here).
    fn invalidate_stale(&self) {
        let stale = self.union.take_stale_attrs();
        let Some(n) = self.notifier.get() else { return };
        for ino in stale {
            if let Err(e) = n.inval_inode(INodeNo(ino), -1, 0) {
                log::debug!("inval_inode({ino}): {e}");
            }
        }
    }

    /// The engine behind the adapter.
    pub fn union(&self) -> &Union {
        &self.union
    }
}

impl Adapter {
    fn reply_entry(&self, r: Result<Attr, Errno>, reply: ReplyEntry) {
        self.invalidate_stale();
        match r {
            Ok(a) => reply.entry(&self.ttl, &file_attr(&a), Generation(a.generation)),
            Err(e) => reply.error(fuse_errno(e)),
        }
    }

    fn reply_empty(&self, r: Result<(), Errno>, reply: ReplyEmpty) {
        self.invalidate_stale();
        reply_empty(r, reply);
    }
}

impl Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_POSIX_ACL
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_ATOMIC_O_TRUNC;
        // Ask for each capability alone: the kernel may lack some, and the rest still help.
        for flag in wanted.iter() {
            if config.add_capabilities(flag).is_err() {
                log::debug!("kernel lacks FUSE capability {flag:?}");
            }
        }
        let _ = config.set_max_write(1 << 20);
        self.opens.init(config)?;
        if let Some(tx) = self.ready.take() {
            let _ = tx.send(());
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _spin = self.spin.request();
        match self.union.lookup(parent.0, name) {
            // A negative entry (node id 0) the kernel may cache as long as a positive one:
            // a name can only appear through this mount, which replaces the negative dentry.
            // Saves a round trip for every repeated miss (PATH and library searches, make).
            Err(Errno::NOENT) if !self.ttl.is_zero() => {
                self.invalidate_stale();
                reply.entry(&self.ttl, &negative_entry(), Generation(0));
            }
            r => self.reply_entry(r, reply),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _spin = self.spin.request();
        self.union.forget(ino.0, nlookup);
        if self.opens.has_stale_cache(ino.0) && !self.union.knows(ino.0) {
            self.opens.forgotten(ino.0);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _spin = self.spin.request();
        match self.union.getattr(ino.0) {
            Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
            Err(e) => reply.error(fuse_errno(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _spin = self.spin.request();
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
            fh: fh.map(|f| f.0),
        };
        let r = self.union.setattr(&ctx(req, 0), ino.0, &set);
        self.invalidate_stale();
        match r {
            Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
            Err(e) => reply.error(fuse_errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _spin = self.spin.request();
        match self.union.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(fuse_errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _spin = self.spin.request();
        self.reply_entry(
            self.union
                .mknod(&ctx(req, umask), parent.0, name, mode, decode_dev(rdev)),
            reply,
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _spin = self.spin.request();
        self.reply_entry(
            self.union.mkdir(&ctx(req, umask), parent.0, name, mode),
            reply,
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _spin = self.spin.request();
        self.reply_empty(self.union.unlink(&ctx(req, 0), parent.0, name), reply);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _spin = self.spin.request();
        self.reply_empty(self.union.rmdir(&ctx(req, 0), parent.0, name), reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _spin = self.spin.request();
        self.reply_entry(
            self.union
                .symlink(&ctx(req, 0), parent.0, link_name, target.as_os_str()),
            reply,
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _spin = self.spin.request();
        let known = fuser::RenameFlags::RENAME_NOREPLACE | fuser::RenameFlags::RENAME_EXCHANGE;
        if !(flags - known).is_empty() {
            // RENAME_WHITEOUT through the union would create a marker: refuse like the kernel.
            return reply.error(fuser::Errno::EINVAL);
        }
        let f = RenameFlags {
            noreplace: flags.contains(fuser::RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(fuser::RenameFlags::RENAME_EXCHANGE),
        };
        reply_empty(
            self.union
                .rename(&ctx(req, 0), parent.0, name, newparent.0, newname, f),
            reply,
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _spin = self.spin.request();
        self.reply_entry(self.union.link(ino.0, newparent.0, newname), reply);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _spin = self.spin.request();
        let r = self.union.open(&ctx(req, 0), ino.0, oflags(flags));
        self.invalidate_stale();
        let fh = match r {
            Ok(fh) => fh,
            Err(e) => return reply.error(fuse_errno(e)),
        };
        match self.open_mode(ino.0, fh, |fd| reply.open_backing(fd)) {
            OpenMode::Passthrough(id) => reply.opened_passthrough(FileHandle(fh), OPEN_FLAGS, &id),
            OpenMode::Cached { keep_cache } => {
                reply.opened(FileHandle(fh), cache_flags(keep_cache))
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _spin = self.spin.request();
        match self.union.read(fh.0, offset, size) {
            Ok(d) => {
                self.daemon_io.fetch_add(d.len() as u64, Ordering::Relaxed);
                reply.data(&d)
            }
            Err(e) => reply.error(fuse_errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _spin = self.spin.request();
        match self.union.write(fh.0, offset, data) {
            Ok(n) => {
                self.daemon_io.fetch_add(n as u64, Ordering::Relaxed);
                reply.written(n as u32)
            }
            Err(e) => reply.error(fuse_errno(e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _spin = self.spin.request();
        if !flags.is_empty() {
            return reply.error(fuser::Errno::EINVAL);
        }
        match self
            .union
            .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(fuse_errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _spin = self.spin.request();
        self.reply_empty(self.union.flush(fh.0), reply);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _spin = self.spin.request();
        self.union.release(fh.0);
        self.opens.release(ino.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _spin = self.spin.request();
        self.reply_empty(self.union.fsync(fh.0, datasync), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _spin = self.spin.request();
        match self.union.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(fuse_errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _spin = self.spin.request();
        let entries = match self.union.readdir(fh.0, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(fuse_errno(e)),
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.ino), i as u64 + 1, kind(e.kind), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _spin = self.spin.request();
        let entries = match self.union.readdir(fh.0, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(fuse_errno(e)),
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let dot = e.name.as_bytes() == b"." || e.name.as_bytes() == b"..";
            // The kernel takes a reference for every entry but `.` and `..`; those get a
            // plain stat-free attribute it ignores.
            let attr = if dot {
                match self.union.getattr(e.ino) {
                    Ok(a) => a,
                    Err(_) => continue,
                }
            } else {
                match self.union.lookup(ino.0, &e.name) {
                    Ok(a) => a,
                    // Vanished since the listing was taken: skip it.
                    Err(_) => continue,
                }
            };
            if reply.add(
                INodeNo(attr.ino),
                i as u64 + 1,
                &e.name,
                &self.ttl,
                &file_attr(&attr),
                Generation(attr.generation),
            ) {
                if !dot {
                    self.union.forget(attr.ino, 1);
                }
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _spin = self.spin.request();
        self.union.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _spin = self.spin.request();
        self.reply_empty(self.union.fsyncdir(ino.0), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _spin = self.spin.request();
        match self.union.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namelen as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(fuse_errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _spin = self.spin.request();
        self.reply_empty(self.union.setxattr(ino.0, name, value, flags as u32), reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _spin = self.spin.request();
        reply_xattr(self.union.getxattr(ino.0, name), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _spin = self.spin.request();
        let list = self.union.listxattr(ino.0).map(|keys| {
            let mut buf = Vec::new();
            for k in keys {
                buf.extend_from_slice(k.as_bytes());
                buf.push(0);
            }
            buf
        });
        reply_xattr(list, size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _spin = self.spin.request();
        self.reply_empty(self.union.removexattr(ino.0, name), reply);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _spin = self.spin.request();
        self.reply_empty(self.union.access(ino.0, mask.bits() as u32), reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _spin = self.spin.request();
        let r = self.union.create(
            &ctx(req, umask),
            parent.0,
            name,
            mode,
            OFlags::from_bits_retain(flags as u32),
        );
        self.invalidate_stale();
        let (a, fh) = match r {
            Ok(created) => created,
            Err(e) => return reply.error(fuse_errno(e)),
        };
        let (attr, generation) = (file_attr(&a), Generation(a.generation));
        match self.open_mode(a.ino, fh, |fd| reply.open_backing(fd)) {
            OpenMode::Passthrough(id) => reply.created_passthrough(
                &self.ttl,
                &attr,
                generation,
                FileHandle(fh),
                OPEN_FLAGS,
                &id,
            ),
            OpenMode::Cached { keep_cache } => reply.created(
                &self.ttl,
                &attr,
                generation,
                FileHandle(fh),
                cache_flags(keep_cache),
            ),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _spin = self.spin.request();
        reply_empty(
            self.union.fallocate(fh.0, mode as u32, offset, length),
            reply,
        );
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _spin = self.spin.request();
        match self.union.lseek(fh.0, offset, whence as u32) {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(fuse_errno(e)),
        }
    }

    /// No ioctl is served (flags such as chattr's are not carried through a union yet):
    /// ENOTTY, what the kernel gives for an ioctl a file does not know, quietly. The default
    /// logged a warning for each, and isatty(3) on a file (dpkg, apt, shells) is an ioctl.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        let _spin = self.spin.request();
        reply.error(fuse_errno(Errno::NOTTY));
    }
}
