//! Whiteout and opaque markers as pure functions: how to recognise every format we honour in a
//! layer, and the names the kernel's format uses. No I/O here; `layer` applies these to what it
//! reads, so the rules can be unit-tested (and fuzzed) on plain values.
//!
//! Recognised (read) in every layer:
//! - whiteout: char device 0/0 (kernel); empty file `.wh.NAME` (AUFS/OCI); zero-size regular
//!   file with xattr `overlay.whiteout` in a directory whose `overlay.opaque` is `x`.
//! - opaque directory: xattr `overlay.opaque` = `y` (trusted or user namespace), xattr
//!   `user.fuseoverlayfs.opaque` = `y`, or a file `.wh..wh..opq` inside.
//!
//! Written to the upper: only the kernel's format (char 0/0, `<ns>.overlay.opaque` = `y`).

use std::ffi::OsStr;

use rustix::fs::{FileType, Stat};

/// Prefix of AUFS/OCI whiteout names.
pub const WH_PREFIX: &[u8] = b".wh.";
/// Name of the AUFS/OCI opaque marker file.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// fuse-overlayfs's own opaque xattr.
pub const FUSE_OVERLAYFS_OPAQUE: &str = "user.fuseoverlayfs.opaque";
/// Prefixes of the xattrs private to an overlay: the kernel's `overlay.*` in both namespaces,
/// and fuse-overlayfs's own (`user.fuseoverlayfs.opaque` is a marker we honour: shown, it
/// would be copied up and settable, letting a user make a directory opaque).
pub const PRIVATE_PREFIXES: [&str; 3] =
    ["trusted.overlay.", "user.overlay.", "user.fuseoverlayfs."];

/// True when `st` is a kernel-format whiteout (a character device with device number 0/0).
pub fn is_whiteout_dev(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// True for names that belong to the marker vocabulary and are never shown in the union
/// (`.wh.NAME` whiteouts and the `.wh..wh..opq` opaque marker).
pub fn is_marker_name(name: &OsStr) -> bool {
    name.as_encoded_bytes().starts_with(WH_PREFIX)
}

/// For an AUFS/OCI whiteout file name `.wh.NAME`, returns `NAME`. The opaque marker and a bare
/// `.wh.` are not whiteouts of anything.
pub fn aufs_whiteout_target(name: &OsStr) -> Option<&OsStr> {
    let b = name.as_encoded_bytes();
    if b == OPAQUE_MARKER.as_bytes() || !b.starts_with(WH_PREFIX) || b.len() == WH_PREFIX.len() {
        return None;
    }
    use std::os::unix::ffi::OsStrExt;
    Some(OsStr::from_bytes(&b[WH_PREFIX.len()..]))
}

/// The AUFS/OCI whiteout name for `name`: `.wh.NAME`.
pub fn aufs_whiteout_name(name: &OsStr) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from(".wh.");
    s.push(name);
    s
}

/// True when `key` is one of the overlay's private xattrs, never shown or settable. The
/// `override_stat` xattr is private too: settable through the mount, it would let a user show
/// any file as owned by root with the set-user-id bit.
pub fn is_private_xattr(key: &str) -> bool {
    PRIVATE_PREFIXES.iter().any(|p| key.starts_with(p)) || key == crate::idmap::OVERRIDE_STAT_XATTR
}

/// True when copy-up carries `key` to the upper: every xattr the user sees, and
/// `override_stat`, which belongs to the object (its owner and mode as shown), not the layer.
pub fn is_copied_up(key: &str) -> bool {
    !is_private_xattr(key) || key == crate::idmap::OVERRIDE_STAT_XATTR
}

/// What an `overlay.opaque` value says about a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpaqueValue {
    /// Not opaque.
    No,
    /// `y`: hides everything below.
    Opaque,
    /// `x`: not opaque, but may hold xattr whiteouts (zero-size files marked `overlay.whiteout`).
    HasXattrWhiteouts,
}

/// Interprets the value of an `overlay.opaque` (or `user.fuseoverlayfs.opaque`) xattr.
pub fn parse_opaque(value: &[u8]) -> OpaqueValue {
    match value {
        b"y" => OpaqueValue::Opaque,
        b"x" => OpaqueValue::HasXattrWhiteouts,
        _ => OpaqueValue::No,
    }
}

/// The private xattr names of one overlay namespace (e.g. `trusted.overlay.`).
#[derive(Clone, Debug)]
pub struct MarkerKeys {
    pub opaque: String,
    pub whiteout: String,
}

impl MarkerKeys {
    pub fn new(prefix: &str) -> MarkerKeys {
        MarkerKeys {
            opaque: format!("{prefix}opaque"),
            whiteout: format!("{prefix}whiteout"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aufs_names() {
        assert_eq!(
            aufs_whiteout_target(OsStr::new(".wh.foo")),
            Some(OsStr::new("foo"))
        );
        assert_eq!(aufs_whiteout_target(OsStr::new(".wh..wh..opq")), None);
        assert_eq!(aufs_whiteout_target(OsStr::new(".wh.")), None);
        assert_eq!(aufs_whiteout_target(OsStr::new("foo")), None);
        assert!(is_marker_name(OsStr::new(".wh..wh..opq")));
        assert!(!is_marker_name(OsStr::new(".whx")));
        assert_eq!(aufs_whiteout_name(OsStr::new("a")), ".wh.a");
    }

    #[test]
    fn private_xattrs() {
        assert!(is_private_xattr("trusted.overlay.opaque"));
        assert!(is_private_xattr("user.overlay.redirect"));
        assert!(!is_private_xattr("user.overlayx"));
        assert!(!is_private_xattr("security.capability"));
    }

    #[test]
    fn opaque_values() {
        assert_eq!(parse_opaque(b"y"), OpaqueValue::Opaque);
        assert_eq!(parse_opaque(b"x"), OpaqueValue::HasXattrWhiteouts);
        assert_eq!(parse_opaque(b"n"), OpaqueValue::No);
        assert_eq!(parse_opaque(b""), OpaqueValue::No);
    }
}
