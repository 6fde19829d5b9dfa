//! Copying file data for copy-up: reflink first, then copy_file_range over data extents only
//! (holes stay holes), then a bounded read/write loop. Never reads a whole file into memory.

use std::os::fd::BorrowedFd;

use rustix::fs::SeekFrom;

use super::Errno;

const CHUNK: usize = 1 << 20;

/// Copies `len` bytes of `src` into the empty regular file `dst`, keeping holes.
pub fn copy_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, len: u64) -> Result<(), Errno> {
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
        copy_range(src, dst, start, end)?;
        pos = end;
    }
    // Extends the file over a trailing hole (and fixes the size if the source shrank).
    rustix::fs::ftruncate(dst, len)
}

fn copy_range(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, start: u64, end: u64) -> Result<(), Errno> {
    let mut off_in = start;
    let mut off_out = start;
    while off_in < end {
        let want = ((end - off_in) as usize).min(CHUNK * 64);
        match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
            Ok(0) => return Ok(()), // source shorter than its stat said
            Ok(_) => {}
            Err(Errno::XDEV) | Err(Errno::INVAL) | Err(Errno::NOSYS) | Err(Errno::OPNOTSUPP) => {
                return copy_loop(src, dst, off_in, end);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn copy_loop(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    mut off: u64,
    end: u64,
) -> Result<(), Errno> {
    let mut buf = vec![0u8; CHUNK];
    while off < end {
        let want = ((end - off) as usize).min(CHUNK);
        let n = rustix::io::pread(src, &mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        write_all_at(dst, &buf[..n], off)?;
        off += n as u64;
    }
    Ok(())
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
