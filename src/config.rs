//! Plain data describing one union mount: the layers, the workdir and the mount policies.
//!
//! Built and validated by `cli` (and by tests directly); read by the engine and the FUSE adapter.
//! No I/O happens here: every path in a `Config` has already been checked by `setup`.

use std::path::PathBuf;
use std::time::Duration;

use crate::idmap::IdPolicy;

/// Which namespace the overlay's private xattrs are written to in the upper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrNamespace {
    /// `trusted.overlay.*`: the kernel's default; needs CAP_SYS_ADMIN.
    Trusted,
    /// `user.overlay.*`: the kernel's `userxattr` mode, for unprivileged mounts.
    User,
}

impl XattrNamespace {
    /// The prefix of the overlay's private xattrs in this namespace, e.g. `trusted.overlay.`.
    pub fn overlay_prefix(self) -> &'static str {
        match self {
            XattrNamespace::Trusted => "trusted.overlay.",
            XattrNamespace::User => "user.overlay.",
        }
    }
}

/// Everything the engine needs to serve one union.
#[derive(Clone, Debug)]
pub struct Config {
    /// Lower layers, top first: `lowers[0]` hides `lowers[1]`.
    pub lowers: Vec<PathBuf>,
    /// The read-write layer; `None` makes a read-only union.
    pub upper: Option<PathBuf>,
    /// The workdir on the upper's filesystem (present exactly when `upper` is).
    pub workdir: Option<PathBuf>,
    /// Namespace for markers written to the upper.
    pub xattr_ns: XattrNamespace,
    /// How long the kernel may cache entries and attributes.
    pub timeout: Duration,
    /// Never sync the upper (`-o volatile`, as kernel overlayfs): fsync and fdatasync through
    /// the union succeed without syncing, and copy-ups are not synced before being renamed
    /// into place. A crash may then lose recent changes or leave a copied-up file short.
    pub volatile: bool,
    /// How ownership is shown and stored (mapping, squashing); identity by default.
    pub ids: IdPolicy,
}

impl Config {
    /// A config with defaults for everything but the layers.
    pub fn new(lowers: Vec<PathBuf>, upper: Option<PathBuf>, workdir: Option<PathBuf>) -> Config {
        Config {
            lowers,
            upper,
            workdir,
            xattr_ns: XattrNamespace::Trusted,
            timeout: DEFAULT_TIMEOUT,
            volatile: false,
            ids: IdPolicy::default(),
        }
    }
}

/// How long the kernel may cache entries and attributes by default. Lowers are read-only and
/// every change goes through the mount, so entries stay valid until we change them (and the
/// kernel hears of every change it does not make itself). A stale positive entry the
/// concurrency stress once found with a day-long timeout no longer shows: 17 stress runs (four
/// of 60 s with 16 threads), 1,000 random differential plans and the whole suite passed with an
/// hour. A minute still bounds what an unknown race could leave behind, and keeps nearly all of
/// the gain: a walk revalidates nothing it saw less than a minute ago. `timeout=0` for lowers
/// edited under a live mount.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a worker polls for the next request after a reply, at most, by default (see
/// `fuse::spin`). Measured on these 2-vCPU machines (`getxattr` round trip through the mount):
/// 46 µs without polling, 41/32 µs with 20 µs (two runs), 34 µs with 50 µs, 32-35 µs with
/// 100 µs; 50 µs gets nearly all of the gain. The budget adapts, so sparse requests cost
/// no CPU.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// How the union is presented through FUSE: the mount's own options, as opposed to what the
/// union contains. Defaults depend on privilege and are filled in by `cli`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// Let users other than the mounter in (`allow_other`); unprivileged mounts need
    /// `user_allow_other` in /etc/fuse.conf.
    pub allow_other: bool,
    /// Let the kernel check permissions from the mode bits (`default_permissions`), as kernel
    /// overlayfs does; the engine then never checks access itself.
    pub default_permissions: bool,
    /// Honour set-user-id and set-group-id bits (root only).
    pub suid: bool,
    /// Honour device special files (root only).
    pub dev: bool,
    /// Allow executing files (`noexec` clears it).
    pub exec: bool,
    /// Mount read-only (`ro`); always set for a union without an upper.
    pub read_only: bool,
    /// The source shown in /proc/mounts.
    pub fsname: String,
    /// Whether opens of upper files are handed to the kernel (`-o passthrough=`).
    pub passthrough: Passthrough,
    /// The longest a worker polls for the next request after a reply (`-o spin=`; zero:
    /// never); see `fuse::spin`.
    pub spin: Duration,
}

/// FUSE passthrough policy: the kernel reads and writes an open upper file itself, without a
/// round trip through the daemon (Linux 6.9+, CAP_SYS_ADMIN).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Passthrough {
    /// Never ask the kernel for passthrough.
    Off,
    /// Use passthrough where the kernel allows it; otherwise serve reads and writes here.
    #[default]
    Auto,
    /// Fail the mount if the kernel refuses passthrough.
    On,
}
