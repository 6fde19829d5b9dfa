//! Copying file data, for copy-up and for copy_file_range through the mount: reflink first,
//! then copy_file_range over data extents only (holes stay holes), then bounded chunks through
//! memory. Never reads a whole file into memory.

use std::os::fd::BorrowedFd;

use rustix::fs::SeekFrom;

use super::Errno;

const CHUNK: usize = 1 << 20;

/// Copies `len` bytes of `src` into the empty regular file `dst`, keeping holes. With
/// `write_back`, for a caller that syncs `dst` next, the writeback of each copied chunk starts
/// while the next one is copied: the final sync then waits only for the last chunks instead
/// of writing the whole file after the copy (see `start_write_back`).
pub fn copy_data(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    len: u64,
    write_back: bool,
) -> Result<(), Errno> {
    if len == 0 {
        return Ok(());
    }
    if rustix::fs::ioctl_ficlone(dst, src).is_ok() {
        return Ok(());
    }
    let mut pos = 0u64;
    while pos < len {
        // Find the next data extent; a filesystem without SEEK_DATA treats all as data.
        let start = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(Errno::NXIO) => break, // only a hole remains
            Err(_) => pos,
        };
        if start >= len {
            break;
        }
        let end = rustix::fs::seek(src, SeekFrom::Hole(start))
            .unwrap_or(len)
            .min(len);
        copy_range(src, dst, start, end, write_back)?;
        pos = end;
    }
    // Extends the file over a trailing hole (and fixes the size if the source shrank).
    rustix::fs::ftruncate(dst, len)
}

fn copy_range(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    start: u64,
    end: u64,
    write_back: bool,
) -> Result<(), Errno> {
    let mut off = start;
    while off < end {
        let want = ((end - off) as usize).min(CHUNK * 64);
        match copy_some(src, off, dst, off, want)? {
            0 => return Ok(()), // source shorter than its stat said
            n => {
                if write_back {
                    start_write_back(dst, off, n as u64);
                }
                off += n as u64
            }
        }
    }
    Ok(())
}

/// Starts writing `len` bytes of `dst` at `off` back to disk without waiting.
/// `POSIX_FADV_DONTNEED` does that (an asynchronous writeback of the range's dirty pages, as
/// `sync_file_range`'s `SYNC_FILE_RANGE_WRITE` does, which rustix lacks); it drops only pages
/// already clean, so none of the copy's dirty pages leave the page cache unwritten. Advisory:
/// an error costs only the overlap.
fn start_write_back(dst: BorrowedFd<'_>, off: u64, len: u64) {
    if let Some(len) = std::num::NonZeroU64::new(len) {
        let _ = rustix::fs::fadvise(dst, off, Some(len), rustix::fs::Advice::DontNeed);
    }
}

/// Copies up to `len` bytes of `src` at `off_in` to `dst` at `off_out` and says how many (0 at
/// the end of `src`): in the kernel with copy_file_range (a reflink where the filesystem shares
/// extents), or, where the two files' filesystems cannot copy between them, at most `CHUNK`
/// bytes through memory.
pub fn copy_some(
    src: BorrowedFd<'_>,
    off_in: u64,
    dst: BorrowedFd<'_>,
    off_out: u64,
    len: usize,
) -> Result<usize, Errno> {
    let (mut i, mut o) = (off_in, off_out);
    match rustix::fs::copy_file_range(src, Some(&mut i), dst, Some(&mut o), len) {
        Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {}
        r => return r,
    }
    let mut buf = vec![0u8; len.min(CHUNK)];
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(src, &mut buf[done..], off_in + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    write_all_at(dst, &buf[..done], off_out)?;
    Ok(done)
}

/// pwrite until everything is written.
pub fn write_all_at(fd: BorrowedFd<'_>, mut data: &[u8], mut off: u64) -> Result<(), Errno> {
    while !data.is_empty() {
        let n = rustix::io::pwrite(fd, data, off)?;
        if n == 0 {
            return Err(Errno::IO);
        }
        data = &data[n..];
        off += n as u64;
    }
    Ok(())
}
