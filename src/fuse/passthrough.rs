//! FUSE passthrough: decides, open by open, whether the kernel reads and writes the upper file
//! itself (no round trip through the daemon) or goes through the read/write handlers with its
//! page cache ("cached"), and keeps the per-inode state the kernel's rules require.
//!
//! Kernel rules (measured on 6.18, see FUSER.md): one backing file per inode at a time, so all
//! passthrough opens of an inode share one [`BackingId`], kept alive until the inode's last
//! release; and no mixing: while a passthrough open of an inode exists, a cached open of it
//! fails with EIO, and the other way round. Hence the invariant: an inode with opens is either
//! all cached or all passthrough, and a new open joins the mode its inode already has. Our
//! count of an inode's opens is never below the kernel's (we count before replying and only
//! forget at RELEASE, which the kernel sends after it dropped its own open), so joining the
//! recorded mode never mixes.
//!
//! In a read-write union only handles on the upper copy use passthrough. A read-only open of
//! a file still in a lower stays cached: a later write-open copies the file up to a different
//! file, and the kernel would keep serving the inode from the lower backing file (one backing
//! file per inode), so reads through the union would miss the new data. A cached inode stays
//! cached until its last release, even after a copy-up; the engine's handles follow the
//! copy-up. A union without an upper never copies up, so there every open of a lower file
//! is passthrough too (podman's read-only image mounts, `-o ro`).
//!
//! Coherence: passthrough writes bypass the FUSE inode's page cache, so the first cached open
//! after passthrough opens must drop that cache (no `FOPEN_KEEP_CACHE`): `stale_cache` holds
//! those inodes until then, or until the kernel forgets the inode (and its cache with it).

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fuser::{BackingId, InitFlags, KernelConfig};
use parking_lot::Mutex;

use crate::config::Passthrough;

/// How one open is answered.
pub enum OpenMode {
    /// Through the read/write handlers; `keep_cache` says whether the kernel may keep the
    /// inode's page cache from earlier opens.
    Cached { keep_cache: bool },
    /// Served by the kernel from the inode's shared backing file.
    Passthrough(Arc<BackingId>),
}

enum InodeOpens {
    Cached(usize),
    Passthrough(usize, Arc<BackingId>),
}

#[derive(Default)]
struct State {
    /// Inodes with at least one open, by their mode.
    inodes: HashMap<u64, InodeOpens>,
    /// Inodes written (possibly) through passthrough since their page cache was last dropped.
    stale_cache: HashSet<u64>,
}

/// The passthrough policy and the open state of every inode.
pub struct Opens {
    policy: Passthrough,
    /// False until the kernel granted passthrough at INIT, and again after the kernel refused
    /// a backing file (then every later open is cached).
    enabled: AtomicBool,
    state: Mutex<State>,
}

impl Opens {
    pub fn new(policy: Passthrough) -> Opens {
        Opens {
            policy,
            enabled: AtomicBool::new(false),
            state: Mutex::default(),
        }
    }

    /// At INIT: asks the kernel for passthrough unless it is off. `auto` goes on without it
    /// when the kernel lacks it; `on` fails INIT, and so the mount, instead.
    pub fn init(&self, config: &mut KernelConfig) -> io::Result<()> {
        if self.policy == Passthrough::Off {
            return Ok(());
        }
        // Depth 1: backing files may not be on a stacked filesystem (an upper on overlayfs
        // gets ELOOP at open and falls back), and this mount may be a layer of one.
        let granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.set_enabled(granted);
        match (granted, self.policy) {
            (true, _) => log::debug!("FUSE passthrough enabled"),
            (false, Passthrough::On) => {
                log::error!(
                    "-o passthrough=on: the kernel does not offer FUSE passthrough (needs Linux \
                     6.9+ with CONFIG_FUSE_PASSTHROUGH)"
                );
                return Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::OPNOTSUPP.raw_os_error(),
                ));
            }
            (false, _) => log::info!("the kernel does not offer FUSE passthrough; not using it"),
        }
        Ok(())
    }

    /// Whether the kernel granted passthrough (and the policy wants it).
    fn set_enabled(&self, granted: bool) {
        let on = granted && self.policy != Passthrough::Off;
        self.enabled.store(on, Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Decides how an open of `ino` is answered and records it. `new_backing` registers the
    /// handle's file with the kernel (`None` for a handle a copy-up could replace); it is called
    /// only when the inode has no open yet. The open must be matched by one
    /// [`Opens::release`].
    pub fn open(
        &self,
        ino: u64,
        keep_cache: bool,
        new_backing: impl FnOnce() -> Option<io::Result<BackingId>>,
    ) -> OpenMode {
        let mut st = self.state.lock();
        match st.inodes.get_mut(&ino) {
            Some(InodeOpens::Cached(n)) => {
                *n += 1;
                return OpenMode::Cached { keep_cache };
            }
            Some(InodeOpens::Passthrough(n, id)) => {
                *n += 1;
                return OpenMode::Passthrough(id.clone());
            }
            None => {}
        }
        if self.enabled() {
            match new_backing() {
                None => {}
                Some(Ok(id)) => {
                    let id = Arc::new(id);
                    st.inodes
                        .insert(ino, InodeOpens::Passthrough(1, id.clone()));
                    st.stale_cache.insert(ino);
                    return OpenMode::Passthrough(id);
                }
                Some(Err(e)) => self.refused(e),
            }
        }
        st.inodes.insert(ino, InodeOpens::Cached(1));
        let stale = st.stale_cache.remove(&ino);
        OpenMode::Cached {
            keep_cache: keep_cache && !stale,
        }
    }

    /// The kernel refused a backing file (EPERM without CAP_SYS_ADMIN, ELOOP for an upper on
    /// a stacked filesystem): serve this open and every later one through the handlers, and
    /// say so once. Asking again would fail the same way at every open.
    fn refused(&self, e: io::Error) {
        if self.enabled.swap(false, Ordering::Relaxed) {
            let msg = "the kernel refused a passthrough backing file";
            match self.policy {
                Passthrough::On => log::warn!("{msg}: {e}; serving reads and writes here"),
                _ => log::info!("{msg}: {e}; serving reads and writes here"),
            }
        }
    }

    /// Forgets one open of `ino`; the last one drops the inode's state (and so its backing
    /// file, once no reply still holds it).
    pub fn release(&self, ino: u64) {
        let mut st = self.state.lock();
        let last = match st.inodes.get_mut(&ino) {
            Some(InodeOpens::Cached(n) | InodeOpens::Passthrough(n, _)) => {
                *n -= 1;
                *n == 0
            }
            None => false,
        };
        if last {
            st.inodes.remove(&ino);
        }
    }

    /// Whether `ino` is marked for dropping its page cache at its next cached open (so that
    /// the adapter asks the engine whether the inode still exists only when it matters).
    pub fn has_stale_cache(&self, ino: u64) -> bool {
        self.state.lock().stale_cache.contains(&ino)
    }

    /// The kernel forgot `ino`, and its page cache with it.
    pub fn forgotten(&self, ino: u64) {
        self.state.lock().stale_cache.remove(&ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(m: OpenMode) -> bool {
        match m {
            OpenMode::Cached { keep_cache } => keep_cache,
            OpenMode::Passthrough(_) => panic!("passthrough without a backing file"),
        }
    }

    /// Lower handles stay cached; a refusal is asked once, then every open is cached.
    #[test]
    fn refusal_disables_and_lower_handles_stay_cached() {
        let o = Opens::new(Passthrough::Auto);
        o.set_enabled(true);
        assert!(cached(o.open(1, true, || None)));
        // Joins the cached inode without asking for a backing file.
        assert!(cached(
            o.open(1, true, || panic!("asked for a backing file"))
        ));
        let refusal = || Some(Err(io::Error::from_raw_os_error(1)));
        assert!(cached(o.open(2, true, refusal)));
        assert!(!o.enabled());
        assert!(cached(
            o.open(3, true, || panic!("asked again after a refusal"))
        ));
        for ino in [1, 1, 2, 3] {
            o.release(ino);
        }
        assert!(o.state.lock().inodes.is_empty());
    }

    #[test]
    fn off_never_asks() {
        let o = Opens::new(Passthrough::Off);
        o.set_enabled(true);
        assert!(!o.enabled());
        assert!(!cached(
            o.open(1, false, || panic!("asked with passthrough=off"))
        ));
    }

    /// The first cached open after passthrough opens drops the page cache, later ones keep it.
    #[test]
    fn stale_cache_is_dropped_once() {
        let o = Opens::new(Passthrough::Auto);
        o.state.lock().stale_cache.insert(7);
        assert!(o.has_stale_cache(7));
        assert!(!cached(o.open(7, true, || None)));
        o.release(7);
        assert!(cached(o.open(7, true, || None)));
        o.release(7);
        o.state.lock().stale_cache.insert(8);
        o.forgotten(8);
        assert!(!o.has_stale_cache(8));
    }
}
