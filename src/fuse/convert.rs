//! Conversions between fuser's request and reply types and the engine's: errnos, caller
//! credentials, attributes, times, device numbers, open flags, and the small reply helpers.
//! Pure functions only; the adapter decides what to call.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FopenFlags, INodeNo, OpenFlags, ReplyEmpty, ReplyXattr, Request, TimeOrNow};
use rustix::fs::{FileType as SysType, OFlags, Timespec};

use crate::sys::Errno;
use crate::union::attr::SetTime;
use crate::union::{Attr, Ctx};

/// The one conversion of engine errors into replies (traced with `-d`, since fuser logs
/// requests but not their outcome).
pub(super) fn fuse_errno(e: Errno) -> fuser::Errno {
    log::debug!("reply error: {e}");
    fuser::Errno::from_i32(e.raw_os_error())
}

pub(super) fn ctx(req: &Request, umask: u32) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
        umask,
    }
}

pub(super) fn kind(t: SysType) -> fuser::FileType {
    match t {
        SysType::Directory => fuser::FileType::Directory,
        SysType::Symlink => fuser::FileType::Symlink,
        SysType::Fifo => fuser::FileType::NamedPipe,
        SysType::Socket => fuser::FileType::Socket,
        SysType::CharacterDevice => fuser::FileType::CharDevice,
        SysType::BlockDevice => fuser::FileType::BlockDevice,
        _ => fuser::FileType::RegularFile,
    }
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

/// The kernel's 32-bit device number encoding (new_encode_dev).
fn encode_dev(dev: u64) -> u32 {
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

pub(super) fn decode_dev(dev: u32) -> u64 {
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    rustix::fs::makedev(major, minor)
}

pub(super) fn file_attr(a: &Attr) -> FileAttr {
    let st = &a.st;
    FileAttr {
        ino: INodeNo(a.ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec as i64),
        mtime: time(st.st_mtime, st.st_mtime_nsec as i64),
        ctime: time(st.st_ctime, st.st_ctime_nsec as i64),
        crtime: UNIX_EPOCH,
        kind: kind(SysType::from_raw_mode(st.st_mode)),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: encode_dev(st.st_rdev),
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// The attributes of a negative entry: node id 0 tells the kernel the name does not exist,
/// and lets it cache that for the entry timeout.
pub(super) fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: fuser::FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

pub(super) fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => {
            let ts = match st.duration_since(UNIX_EPOCH) {
                Ok(d) => Timespec {
                    tv_sec: d.as_secs() as i64,
                    tv_nsec: d.subsec_nanos() as _,
                },
                Err(e) => {
                    let d = e.duration();
                    let (mut s, mut n) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
                    if n < 0 {
                        s -= 1;
                        n += 1_000_000_000;
                    }
                    Timespec {
                        tv_sec: s,
                        tv_nsec: n as _,
                    }
                }
            };
            SetTime::At(ts)
        }
    })
}

/// Every file open says NOFLUSH: `flush` has nothing to do here (writes reach the layer file
/// before they are answered, and locks are the kernel's own), and skipping it saves a round
/// trip per close(2).
pub(super) const OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_NOFLUSH;

pub(super) fn cache_flags(keep_cache: bool) -> FopenFlags {
    if keep_cache {
        OPEN_FLAGS | FopenFlags::FOPEN_KEEP_CACHE
    } else {
        OPEN_FLAGS
    }
}

pub(super) fn oflags(flags: OpenFlags) -> OFlags {
    OFlags::from_bits_retain(flags.0 as u32)
}

pub(super) fn reply_empty(r: Result<(), Errno>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(fuse_errno(e)),
    }
}

pub(super) fn reply_xattr(r: Result<Vec<u8>, Errno>, size: u32, reply: ReplyXattr) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(fuser::Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(fuse_errno(e)),
    }
}
