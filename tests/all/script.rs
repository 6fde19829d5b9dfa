//! The operations of differential scripts (`Op`) and how one runs under a mount root (`run`),
//! described as a comparable string: `ok RESULT` or `err ERRNO`. The same operation runs on
//! kernel overlayfs and on unionmount (oracle.rs, random.rs), so a result holds only what
//! POSIX fixes: where the order or presence of something is unspecified (readdir while
//! unlinking), `run` reports whether the guarantees held instead of the raw sequence.

use std::fs::{self, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{AtFlags, CWD, FileType, Mode, RenameFlags, Timespec, Timestamps, XattrFlags};

/// One step of a script. Paths are relative to the mount root. Files are opened with
/// O_NONBLOCK, so a FIFO never blocks (reads see EOF, writes ENXIO without a reader).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    /// open(O_WRONLY) without O_TRUNC, pwrite at offset 0.
    Write(&'static str, &'static str),
    /// open(O_WRONLY) without O_TRUNC, pwrite of LEN bytes of `fixture::pattern` at OFFSET:
    /// a partial overwrite, or an extension past the end that leaves a hole.
    WriteAt(&'static str, u64, usize),
    /// open(O_RDWR), mmap(MAP_SHARED) of the whole file, the data stored at OFFSET through
    /// the mapping, msync, munmap. Nothing is stored where it would fall past the end of the
    /// file (that would be SIGBUS): the result says `short` instead.
    MmapWrite(&'static str, u64, &'static str),
    /// open(O_WRONLY|O_APPEND), write.
    Append(&'static str, &'static str),
    /// open(O_WRONLY), ftruncate.
    Truncate(&'static str, u64),
    /// open(O_WRONLY|O_TRUNC) and write: a copy-up without data.
    Rewrite(&'static str, &'static str),
    /// open(O_CREAT|O_EXCL|O_WRONLY, 0644), write.
    Create(&'static str, &'static str),
    Chmod(&'static str, u32),
    /// lchown.
    Chown(&'static str, u32, u32),
    /// utimensat(AT_SYMLINK_NOFOLLOW) with atime = mtime = the given second.
    Utimes(&'static str, i64),
    Unlink(&'static str),
    Rmdir(&'static str),
    /// `rm -rf`.
    RmRf(&'static str),
    Mkdir(&'static str, u32),
    /// `mkdir -p`.
    MkdirP(&'static str),
    Rename(&'static str, &'static str),
    RenameNoreplace(&'static str, &'static str),
    RenameExchange(&'static str, &'static str),
    Link(&'static str, &'static str),
    /// symlink(target, path).
    Symlink(&'static str, &'static str),
    Mkfifo(&'static str),
    /// mknod of a character device (major, minor), mode 0644.
    MknodChar(&'static str, u32, u32),
    SetXattr(&'static str, &'static str, &'static str),
    RemoveXattr(&'static str, &'static str),
    GetXattr(&'static str, &'static str),
    ListXattr(&'static str),
    Read(&'static str),
    Readlink(&'static str),
    /// lstat: type, mode, nlink, size (not for directories), owner, device.
    Stat(&'static str),
    /// mtime seconds (only after `Utimes`: times are not compared otherwise).
    Mtime(&'static str),
    /// Sorted names of a directory.
    List(&'static str),
    /// Reads directory DIR a few entries per getdents, and unlinks DIR/NAME after the first
    /// entry: the result is the unlink's, and whether every other entry came exactly once and
    /// nothing unknown came (POSIX leaves open only whether the unlinked name comes).
    ListUnlinking(&'static str, &'static str),
    /// Reads directory DIR a few entries per getdents, remembers the position after K
    /// entries (telldir), reads to the end, seeks back (seekdir) and reads again: the second
    /// pass must repeat the first from that position.
    Seekdir(&'static str, usize),
    /// The inner operation as uid/gid 65534 with no supplementary groups.
    Nobody(&'static Op),
}

/// Runs `f` with this thread's credentials switched to uid/gid 65534 and no supplementary
/// groups (credentials are per thread for the raw syscalls rustix makes), then switches back.
pub(crate) fn as_nobody<T>(f: impl FnOnce() -> T) -> T {
    let _nobody = AsUser::new(65534, 65534);
    f()
}

/// Per-thread credentials of another user while alive (the FUSE workers keep theirs), no
/// supplementary groups. The saved uid stays 0, so switching back is allowed.
pub struct AsUser {
    groups: Vec<rustix::process::Gid>,
}

impl AsUser {
    pub fn new(uid: u32, gid: u32) -> AsUser {
        use rustix::process::{Gid, Uid};
        use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
        let groups = rustix::process::getgroups().unwrap();
        let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
        set_thread_groups(&[]).unwrap();
        set_thread_res_gid(g, g, Gid::ROOT).unwrap();
        set_thread_res_uid(u, u, Uid::ROOT).unwrap();
        AsUser { groups }
    }
}

impl Drop for AsUser {
    fn drop(&mut self) {
        use rustix::process::{Gid, Uid};
        use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
        set_thread_res_uid(Uid::ROOT, Uid::ROOT, Uid::ROOT).unwrap();
        set_thread_res_gid(Gid::ROOT, Gid::ROOT, Gid::ROOT).unwrap();
        set_thread_groups(&self.groups).unwrap();
    }
}

fn describe(e: io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("{:?}", rustix::io::Errno::from_raw_os_error(n)),
        None => format!("{e}"),
    }
}

fn stat_line(p: &Path) -> io::Result<String> {
    let md = fs::symlink_metadata(p)?;
    let kind = FileType::from_raw_mode(md.mode());
    let size = if kind == FileType::Directory {
        String::new()
    } else {
        format!(" size={}", md.size())
    };
    let rdev = if matches!(kind, FileType::CharacterDevice | FileType::BlockDevice) {
        format!(" rdev={}", md.rdev())
    } else {
        String::new()
    };
    Ok(format!(
        "{kind:?} {:o} nlink={}{size} {}:{}{rdev}",
        md.mode() & 0o7777,
        md.nlink(),
        md.uid(),
        md.gid()
    ))
}

fn xattr_names(p: &Path) -> io::Result<String> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut buf[..])?;
    let mut names: Vec<String> = buf[..n]
        .split(|&b| b == 0)
        .filter(|k| !k.is_empty())
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .filter(|k| !k.starts_with("security."))
        .collect();
    names.sort();
    Ok(names.join(","))
}

/// Runs `op` under `root` and describes the outcome.
pub(crate) fn run(root: &Path, op: Op) -> String {
    if let Op::Nobody(inner) = op {
        return as_nobody(|| run(root, *inner));
    }
    let p = |r: &str| root.join(r);
    let opts = || {
        use std::os::unix::fs::OpenOptionsExt;
        let mut o = OpenOptions::new();
        o.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
        o
    };
    let res: io::Result<String> = (|| {
        Ok(match op {
            Op::Write(f, data) => {
                opts()
                    .write(true)
                    .open(p(f))?
                    .write_all_at(data.as_bytes(), 0)?;
                String::new()
            }
            Op::WriteAt(f, offset, len) => {
                let data = crate::fixture::pattern(&format!("{f}@{offset}"), len);
                opts().write(true).open(p(f))?.write_all_at(&data, offset)?;
                String::new()
            }
            Op::MmapWrite(f, offset, data) => mmap_write(&p(f), offset, data.as_bytes())?,
            Op::Append(f, data) => {
                opts().append(true).open(p(f))?.write_all(data.as_bytes())?;
                String::new()
            }
            Op::Truncate(f, len) => {
                opts().write(true).open(p(f))?.set_len(len)?;
                String::new()
            }
            Op::Rewrite(f, data) => {
                opts()
                    .write(true)
                    .truncate(true)
                    .open(p(f))?
                    .write_all(data.as_bytes())?;
                String::new()
            }
            Op::Create(f, data) => {
                use std::os::unix::fs::OpenOptionsExt;
                opts()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(p(f))?
                    .write_all(data.as_bytes())?;
                String::new()
            }
            Op::Chmod(f, mode) => {
                fs::set_permissions(p(f), fs::Permissions::from_mode(mode))?;
                String::new()
            }
            Op::Chown(f, uid, gid) => {
                std::os::unix::fs::lchown(p(f), Some(uid), Some(gid))?;
                String::new()
            }
            Op::Utimes(f, sec) => {
                let t = Timespec {
                    tv_sec: sec,
                    tv_nsec: 0,
                };
                rustix::fs::utimensat(
                    CWD,
                    p(f),
                    &Timestamps {
                        last_access: t,
                        last_modification: t,
                    },
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
                String::new()
            }
            Op::Unlink(f) => {
                fs::remove_file(p(f))?;
                String::new()
            }
            Op::Rmdir(f) => {
                fs::remove_dir(p(f))?;
                String::new()
            }
            Op::RmRf(f) => {
                fs::remove_dir_all(p(f))?;
                String::new()
            }
            Op::Mkdir(f, mode) => {
                rustix::fs::mkdirat(CWD, p(f), Mode::from_raw_mode(mode))?;
                String::new()
            }
            Op::MkdirP(f) => {
                fs::create_dir_all(p(f))?;
                String::new()
            }
            Op::Rename(a, b) => {
                fs::rename(p(a), p(b))?;
                String::new()
            }
            Op::RenameNoreplace(a, b) => {
                rustix::fs::renameat_with(CWD, p(a), CWD, p(b), RenameFlags::NOREPLACE)?;
                String::new()
            }
            Op::RenameExchange(a, b) => {
                rustix::fs::renameat_with(CWD, p(a), CWD, p(b), RenameFlags::EXCHANGE)?;
                String::new()
            }
            Op::Link(a, b) => {
                fs::hard_link(p(a), p(b))?;
                String::new()
            }
            Op::Symlink(target, f) => {
                std::os::unix::fs::symlink(target, p(f))?;
                String::new()
            }
            Op::Mkfifo(f) => {
                rustix::fs::mknodat(CWD, p(f), FileType::Fifo, Mode::from_raw_mode(0o644), 0)?;
                String::new()
            }
            Op::MknodChar(f, major, minor) => {
                rustix::fs::mknodat(
                    CWD,
                    p(f),
                    FileType::CharacterDevice,
                    Mode::from_raw_mode(0o644),
                    rustix::fs::makedev(major, minor),
                )?;
                String::new()
            }
            Op::SetXattr(f, k, v) => {
                rustix::fs::lsetxattr(p(f), k, v.as_bytes(), XattrFlags::empty())?;
                String::new()
            }
            Op::RemoveXattr(f, k) => {
                rustix::fs::lremovexattr(p(f), k)?;
                String::new()
            }
            Op::GetXattr(f, k) => {
                let mut buf = vec![0u8; 65536];
                let n = rustix::fs::lgetxattr(p(f), k, &mut buf[..])?;
                String::from_utf8_lossy(&buf[..n]).into_owned()
            }
            Op::ListXattr(f) => xattr_names(&p(f))?,
            Op::Read(f) => {
                let mut data = Vec::new();
                opts().read(true).open(p(f))?.read_to_end(&mut data)?;
                if data.len() <= 64 {
                    String::from_utf8_lossy(&data).into_owned()
                } else {
                    format!("{} bytes #{:016x}", data.len(), crate::fixture::fnv(&data))
                }
            }
            Op::ListUnlinking(dir, name) => list_unlinking(&p(dir), name)?,
            Op::Seekdir(dir, k) => seekdir(&p(dir), k)?,
            Op::Readlink(f) => fs::read_link(p(f))?.display().to_string(),
            Op::Stat(f) => stat_line(&p(f))?,
            Op::Mtime(f) => fs::symlink_metadata(p(f))?.mtime().to_string(),
            Op::Nobody(_) => unreachable!("handled above"),
            Op::List(f) => {
                let mut v: Vec<String> = fs::read_dir(p(f))?
                    .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect::<io::Result<_>>()?;
                v.sort();
                v.join(" ")
            }
        })
    })();
    match res {
        Ok(s) => format!("ok {s}"),
        Err(e) => format!("err {}", describe(e)),
    }
}

/// A getdents buffer that holds only a couple of entries, so that a directory of a few names
/// takes several calls and what happens between them matters.
const SMALL_DIRENT_BUF: usize = 64;

fn open_dir(dir: &Path) -> io::Result<rustix::fd::OwnedFd> {
    use rustix::fs::OFlags;
    Ok(rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The entries (but `.` and `..`) read from `fd`'s current position to the end, each with
/// the position after it.
fn read_entries(
    fd: &rustix::fd::OwnedFd,
    mut between: impl FnMut(),
) -> io::Result<Vec<(String, u64)>> {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); SMALL_DIRENT_BUF];
    let mut dir = rustix::fs::RawDir::new(fd, &mut buf);
    let mut out = Vec::new();
    while let Some(e) = dir.next() {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            out.push((name, e.next_entry_cookie()));
            between();
        }
    }
    Ok(out)
}

fn sorted_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut v: Vec<String> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<io::Result<_>>()?;
    v.sort();
    Ok(v)
}

fn list_unlinking(dir: &Path, name: &str) -> io::Result<String> {
    let before = sorted_names(dir)?;
    let fd = open_dir(dir)?;
    let mut unlinked = None;
    let seen = read_entries(&fd, || {
        if unlinked.is_none() {
            unlinked = Some(match fs::remove_file(dir.join(name)) {
                Ok(()) => "ok".to_string(),
                Err(e) => describe(e),
            });
        }
    })?;
    let mut problems = Vec::new();
    for survivor in before.iter().filter(|n| *n != name) {
        let times = seen.iter().filter(|(n, _)| n == survivor).count();
        if times != 1 {
            problems.push(format!("{survivor} came {times} times"));
        }
    }
    for (n, _) in &seen {
        if !before.contains(n) {
            problems.push(format!("{n} came but was not there"));
        }
    }
    if seen.iter().filter(|(n, _)| n == name).count() > 1 {
        problems.push(format!("{name} came more than once"));
    }
    let unlinked = unlinked.unwrap_or_else(|| "not tried: empty directory".into());
    if problems.is_empty() {
        problems.push("every other entry came once".into());
    }
    Ok(format!("unlink {unlinked}; {}", problems.join(", ")))
}

fn seekdir(dir: &Path, k: usize) -> io::Result<String> {
    let fd = open_dir(dir)?;
    let first = read_entries(&fd, || {})?;
    let k = k.min(first.len());
    let position = if k == 0 { 0 } else { first[k - 1].1 };
    rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(position))?;
    let again = read_entries(&fd, || {})?;
    let names = |v: &[(String, u64)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    let mut all = names(&first);
    all.sort();
    if names(&first[k..]) == names(&again) {
        Ok(format!(
            "{} entries, from {k} again the same: {}",
            first.len(),
            all.join(" ")
        ))
    } else {
        Ok(format!(
            "from {k}: first {:?}, after seekdir {:?}",
            names(&first[k..]),
            names(&again)
        ))
    }
}

/// `Op::MmapWrite`.
fn mmap_write(path: &Path, offset: u64, data: &[u8]) -> io::Result<String> {
    use rustix::mm::{MapFlags, MsyncFlags, ProtFlags};
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    if len == 0 || offset + data.len() as u64 > len {
        return Ok(format!("short: {len} bytes"));
    }
    // SAFETY: a fresh shared mapping of `len` bytes of a file we hold open, used only as a
    // byte slice within its bounds (checked above), and unmapped before returning. Another
    // process truncating the file meanwhile could SIGBUS us; the tests do not do that.
    unsafe {
        let map = rustix::mm::mmap(
            std::ptr::null_mut(),
            len as usize,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            &file,
            0,
        )?;
        let bytes = std::slice::from_raw_parts_mut(map.cast::<u8>(), len as usize);
        bytes[offset as usize..][..data.len()].copy_from_slice(data);
        let synced = rustix::mm::msync(map, len as usize, MsyncFlags::SYNC);
        rustix::mm::munmap(map, len as usize)?;
        synced?;
    }
    Ok(String::new())
}
