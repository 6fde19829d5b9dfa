//! The concurrency stress on the engine alone: the same workload as the mounted one, made
//! the way the adapter makes it (no kernel caches in between), and every kernel reference
//! taken is given back, so the node table must end with the root alone.

use std::ffi::OsStr;
use std::sync::Arc;

use rustix::fs::OFlags;
use rustix::io::Errno;
use unionmount::union::attr::SetAttr;
use unionmount::union::inode::ROOT;
use unionmount::union::rename::RenameFlags;
use unionmount::union::{Attr, Ctx, Union};

use super::{DATA, DIRS, LOWERS, Rng, Tally, check_layers, run_workers};
use crate::fixture::Stack;
use crate::mounted::overlay_available;

/// Kernel references taken by one engine operation, given back (forgotten) when dropped, as
/// the kernel does once it drops its inodes.
struct Refs<'u> {
    u: &'u Union,
    inos: Vec<u64>,
}

impl<'u> Refs<'u> {
    fn new(u: &'u Union) -> Self {
        Refs {
            u,
            inos: Vec::new(),
        }
    }

    fn keep(&mut self, a: Attr) -> u64 {
        self.inos.push(a.ino);
        a.ino
    }

    /// The node of union path `path`, looked up component by component.
    fn at(&mut self, path: &str) -> Result<u64, Errno> {
        let mut cur = ROOT;
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            let a = self.u.lookup(cur, OsStr::new(comp))?;
            cur = self.keep(a);
        }
        Ok(cur)
    }

    /// The parent directory's node and the last component of `path`.
    fn parent<'p>(&mut self, path: &'p str) -> Result<(u64, &'p OsStr), Errno> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        Ok((self.at(dir)?, OsStr::new(name)))
    }
}

impl Drop for Refs<'_> {
    fn drop(&mut self) {
        for &ino in &self.inos {
            self.u.forget(ino, 1);
        }
    }
}

/// One random operation on the engine, as the adapter would make it.
fn engine_op(u: &Union, rng: &mut Rng, tally: &Tally) {
    let (p, q) = (rng.path(), rng.path());
    let data = rng.pick(&DATA);
    let ctx = Ctx::current();
    let mut refs = Refs::new(u);
    let r = &mut refs;
    let write = |u: &Union, fh: u64| -> Result<(), Errno> {
        let w = u.write(fh, 0, data).map(drop);
        u.release(fh);
        w
    };
    let (op, res): (&str, Result<(), Errno>) = match rng.below(17) {
        0 => (
            "create",
            (|| {
                let (dir, name) = r.parent(&p)?;
                let (a, fh) = u.create(&ctx, dir, name, 0o644, OFlags::WRONLY)?;
                r.keep(a);
                write(u, fh)
            })(),
        ),
        1 => (
            "append",
            (|| {
                let fh = u.open(&ctx, r.at(&p)?, OFlags::WRONLY | OFlags::APPEND)?;
                write(u, fh)
            })(),
        ),
        2 => (
            "read",
            (|| {
                let fh = u.open(&ctx, r.at(&p)?, OFlags::RDONLY)?;
                let got = u.read(fh, 0, 4096).map(drop);
                u.release(fh);
                got
            })(),
        ),
        3 => (
            "unlink",
            r.parent(&p).and_then(|(d, n)| u.unlink(&ctx, d, n)),
        ),
        4 => ("rmdir", r.parent(&p).and_then(|(d, n)| u.rmdir(&ctx, d, n))),
        5..=7 => (
            "rename",
            (|| {
                let flags = RenameFlags {
                    noreplace: rng.below(3) == 0,
                    exchange: rng.below(3) == 0,
                };
                let ((sd, sn), (dd, dn)) = (r.parent(&p)?, r.parent(&q)?);
                u.rename(&ctx, sd, sn, dd, dn, flags)
            })(),
        ),
        8 | 9 => (
            "mkdir",
            (|| {
                let (dir, name) = r.parent(&p)?;
                r.keep(u.mkdir(&ctx, dir, name, 0o755)?);
                Ok(())
            })(),
        ),
        10 => (
            "link",
            (|| {
                let (ino, (dir, name)) = (r.at(&p)?, r.parent(&q)?);
                r.keep(u.link(ino, dir, name)?);
                Ok(())
            })(),
        ),
        11 => (
            "symlink",
            (|| {
                let (dir, name) = r.parent(&p)?;
                r.keep(u.symlink(&ctx, dir, name, OsStr::new(&q))?);
                Ok(())
            })(),
        ),
        12 => (
            "chmod-truncate",
            (|| {
                let mut set = SetAttr::default();
                if rng.below(2) == 0 {
                    set.mode = Some(rng.pick(&[0o644, 0o600, 0o755]));
                } else {
                    set.size = Some(data.len() as u64);
                }
                let ino = r.at(&p)?;
                if u.kind(ino)? == rustix::fs::FileType::Symlink {
                    // The VFS follows symlinks for chmod and truncate: none reaches the engine.
                    return Ok(());
                }
                u.setattr(&ctx, ino, &set).map(drop)
            })(),
        ),
        13 => (
            "setxattr",
            (|| u.setxattr(r.at(&p)?, OsStr::new("user.k"), data, 0))(),
        ),
        14 | 15 => (
            "readdir",
            (|| {
                let dir = r.at(rng.pick(&DIRS))?;
                let fh = u.opendir(dir)?;
                let list = u.readdir(fh, 0);
                u.releasedir(fh);
                for e in list?.iter().filter(|e| e.name != "." && e.name != "..") {
                    // Listed then removed by another thread: a race, not an error.
                    match u.lookup(dir, &e.name) {
                        Ok(a) => drop(r.keep(a)),
                        Err(Errno::NOENT) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            })(),
        ),
        _ => ("getattr", r.at(&p).and_then(|i| u.getattr(i)).map(drop)),
    };
    drop(refs);
    tally.record(op, &format!("{p} {q}"), res);
}

/// The engine alone under the same workload (no kernel caches in between), then the same
/// final checks; and every reference taken was given back, so the node table holds the root
/// alone again.
#[test]
fn engine_stress_keeps_the_union_consistent() {
    let stack = Stack::new(&LOWERS);
    let lowers = stack.lowers_dump();
    let u = Arc::new(stack.union());
    let tally = Arc::new(Tally::default());
    let op = {
        let (u, tally) = (u.clone(), tally.clone());
        Arc::new(move |rng: &mut Rng| engine_op(&u, rng, &tally))
    };
    run_workers(op, || {});
    tally.check("engine stress");
    assert_eq!(
        u.node_count(),
        1,
        "nodes left after every lookup was forgotten"
    );
    drop(u);
    if overlay_available() {
        check_layers(&stack, &lowers, None);
    }
}
