//! Ownership as the union shows it, for rootless containers: id mapping (`uidmapping=`,
//! `gidmapping=`), squashing (`squash_to_root`, `squash_to_uid=`, `squash_to_gid=`) and the
//! `user.containers.override_stat` xattr, all as fuse-overlayfs defines them. Plain data and
//! pure functions; the engine applies them (`union::attr_from` on the way out, `create` and
//! `setattr` on the way in), `cli` parses the options.
//!
//! Two id spaces: the *disk* ids stored in the layers, and the *shown* ids the kernel sees
//! through the mount. A mapping `DISK:SHOWN:LEN` (the order of `/proc/PID/uid_map`: container
//! id, then host id) shows disk ids `DISK..DISK+LEN` as `SHOWN..SHOWN+LEN`. Invariants:
//! - without a mapping both spaces are the same (identity);
//! - a disk id outside every range is shown as the overflow id (65534), like fuse-overlayfs and
//!   like the kernel does for ids a user namespace cannot represent;
//! - a shown id outside every range cannot be written (EOVERFLOW, as the kernel's idmapped
//!   mounts refuse it; fuse-overlayfs writes the overflow id instead, losing the owner);
//! - squashing only changes what is shown; writes still store the reverse-mapped ids, and a
//!   chown the upper refuses is ignored (fuse-overlayfs's behaviour: every object is shown
//!   with the squashed owner anyway);
//! - `override_stat` (written by containers/storage with `force_mask`) replaces the owner and
//!   permission bits read from disk before the mapping applies, on objects the mounting user
//!   owns; its value keeps any type suffix it had when rewritten.

use rustix::fs::Stat;
use rustix::io::Errno;

/// The xattr containers/storage stores the intended owner and mode in (`force_mask`).
pub const OVERRIDE_STAT_XATTR: &str = "user.containers.override_stat";

/// The id shown for a disk id outside the mapping when /proc cannot tell the kernel's.
pub const DEFAULT_OVERFLOW_ID: u32 = 65534;

/// One range of a mapping: disk ids `disk..disk+len` are shown as `shown..shown+len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub disk: u32,
    pub shown: u32,
    pub len: u32,
}

/// A uid or gid mapping; empty means identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap {
    ranges: Vec<IdRange>,
}

/// `id - from + to` when `id` is in `from..from+len`.
fn translate(id: u32, from: u32, to: u32, len: u32) -> Option<u32> {
    let off = id.checked_sub(from)?;
    (off < len).then(|| to.checked_add(off)).flatten()
}

impl IdMap {
    /// Parses fuse-overlayfs's syntax: triples `DISK:SHOWN:LEN`, fields separated by `:` or
    /// `,`. Empty fields are skipped, as fuse-overlayfs's tokenizer does: containers/storage
    /// writes a leading separator (`uidmapping=:0:1000:1:1:100000:65536`).
    ///
    /// Errors: a field that is not a decimal number, a count of fields that is not a multiple
    /// of three, no triple at all, a zero length, or a range that overflows 32 bits.
    pub fn parse(s: &str) -> Result<IdMap, String> {
        let fields: Vec<u32> = s
            .split([':', ','])
            .filter(|f| !f.is_empty())
            .map(|f| {
                f.parse::<u32>()
                    .map_err(|_| format!("'{f}' in '{s}' is not an id"))
            })
            .collect::<Result<_, _>>()?;
        if fields.is_empty() || !fields.len().is_multiple_of(3) {
            return Err(format!(
                "'{s}': expected triples ID:MAPPED-ID:LEN (e.g. 0:100000:65536)"
            ));
        }
        let ranges: Vec<IdRange> = fields
            .chunks(3)
            .map(|c| IdRange {
                disk: c[0],
                shown: c[1],
                len: c[2],
            })
            .collect();
        for r in &ranges {
            let end_ok = |start: u32| u64::from(start) + u64::from(r.len) <= 1 << 32;
            if r.len == 0 || !end_ok(r.disk) || !end_ok(r.shown) {
                return Err(format!(
                    "'{s}': range {}:{}:{} is empty or beyond 32-bit ids",
                    r.disk, r.shown, r.len
                ));
            }
        }
        Ok(IdMap { ranges })
    }

    pub fn is_identity(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The id shown for disk id `id`; `None` when no range holds it. The first range that
    /// holds it wins, as in fuse-overlayfs.
    pub fn shown(&self, id: u32) -> Option<u32> {
        if self.is_identity() {
            return Some(id);
        }
        self.ranges
            .iter()
            .find_map(|r| translate(id, r.disk, r.shown, r.len))
    }

    /// The disk id for shown id `id`; `None` when no range holds it.
    pub fn disk(&self, id: u32) -> Option<u32> {
        if self.is_identity() {
            return Some(id);
        }
        self.ranges
            .iter()
            .find_map(|r| translate(id, r.shown, r.disk, r.len))
    }
}

/// Everything that changes ownership between disk and mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdPolicy {
    pub uids: IdMap,
    pub gids: IdMap,
    /// Every object is shown owned by this uid (`squash_to_uid`, or 0 for `squash_to_root`).
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
    /// Shown for disk ids outside the mapping (/proc/sys/kernel/overflowuid).
    pub overflow_uid: u32,
    pub overflow_gid: u32,
}

impl Default for IdPolicy {
    fn default() -> Self {
        IdPolicy {
            uids: IdMap::default(),
            gids: IdMap::default(),
            squash_uid: None,
            squash_gid: None,
            overflow_uid: DEFAULT_OVERFLOW_ID,
            overflow_gid: DEFAULT_OVERFLOW_ID,
        }
    }
}

impl IdPolicy {
    /// True when ownership is shown exactly as stored.
    pub fn is_identity(&self) -> bool {
        self.uids.is_identity()
            && self.gids.is_identity()
            && self.squash_uid.is_none()
            && self.squash_gid.is_none()
    }

    /// True when some owner is squashed, so chown failures of the upper are ignored.
    pub fn squashes(&self) -> bool {
        self.squash_uid.is_some() || self.squash_gid.is_some()
    }

    /// Rewrites the owner of a disk stat into the owner shown through the mount.
    pub fn show(&self, st: &mut Stat) {
        st.st_uid = self
            .squash_uid
            .or_else(|| self.uids.shown(st.st_uid))
            .unwrap_or(self.overflow_uid);
        st.st_gid = self
            .squash_gid
            .or_else(|| self.gids.shown(st.st_gid))
            .unwrap_or(self.overflow_gid);
    }

    /// The disk uid to store for shown uid `uid`.
    ///
    /// Errors: EOVERFLOW when no range of the mapping holds it.
    pub fn disk_uid(&self, uid: u32) -> Result<u32, Errno> {
        self.uids.disk(uid).ok_or(Errno::OVERFLOW)
    }

    /// The disk gid to store for shown gid `gid`. Errors as `disk_uid`.
    pub fn disk_gid(&self, gid: u32) -> Result<u32, Errno> {
        self.gids.disk(gid).ok_or(Errno::OVERFLOW)
    }
}

/// The xattrs holding POSIX ACLs, whose named entries carry ids.
const ACL_XATTRS: [&str; 2] = ["system.posix_acl_access", "system.posix_acl_default"];
/// `posix_acl_xattr_header` version and the tags of entries that carry an id.
const ACL_VERSION: u32 = 2;
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;

/// Rewrites the ids of the named-user and named-group entries of a POSIX ACL xattr value
/// (a 4-byte version, then 8-byte entries: tag, permissions, id; little endian).
/// `None` when the value is malformed or an id has no counterpart.
fn map_acl(
    value: &[u8],
    uid: impl Fn(u32) -> Option<u32>,
    gid: impl Fn(u32) -> Option<u32>,
) -> Option<Vec<u8>> {
    let (version, entries) = value.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*version) != ACL_VERSION || entries.len() % 8 != 0 {
        return None;
    }
    let mut out = value.to_vec();
    for (i, e) in entries.chunks_exact(8).enumerate() {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let mapped = match tag {
            ACL_USER => uid(id)?,
            ACL_GROUP => gid(id)?,
            _ => continue,
        };
        let at = 4 + i * 8 + 4;
        out[at..at + 4].copy_from_slice(&mapped.to_le_bytes());
    }
    Some(out)
}

impl IdPolicy {
    /// The value of xattr `key` as shown: the ids in a POSIX ACL go through the mapping
    /// (unmapped ones show as the overflow id), since the kernel enforces ACLs from what we
    /// return; squashing leaves ACLs alone, as the kernel's idmapped mounts have no squash.
    pub fn show_xattr(&self, key: &str, value: Vec<u8>) -> Vec<u8> {
        if self.uids.is_identity() && self.gids.is_identity() || !ACL_XATTRS.contains(&key) {
            return value;
        }
        let uid = |id| Some(self.uids.shown(id).unwrap_or(self.overflow_uid));
        let gid = |id| Some(self.gids.shown(id).unwrap_or(self.overflow_gid));
        map_acl(&value, uid, gid).unwrap_or(value)
    }

    /// The value of xattr `key` to store for a shown `value`.
    ///
    /// Errors: EINVAL for a POSIX ACL naming an id outside the mapping (as the kernel refuses
    /// an ACL with an id it cannot represent) or a malformed ACL.
    pub fn disk_xattr(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, Errno> {
        if self.uids.is_identity() && self.gids.is_identity() || !ACL_XATTRS.contains(&key) {
            return Ok(value.to_vec());
        }
        map_acl(value, |id| self.uids.disk(id), |id| self.gids.disk(id)).ok_or(Errno::INVAL)
    }
}

/// The parsed value of `user.containers.override_stat`: `UID:GID:MODE[:TYPE...]`, ids in
/// decimal and MODE in octal (containers/storage writes `1000:1000:0755:dir`; older versions
/// and fuse-overlayfs wrote only the first three fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverrideStat {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits, set-id and sticky bits included (0o7777).
    pub mode: u32,
    /// Whatever followed MODE (`:file`, `:char-1-3`), kept verbatim so a rewrite loses nothing.
    pub rest: String,
}

impl OverrideStat {
    /// Parses a value; `None` when it is malformed (then the disk stat is shown as it is).
    pub fn parse(value: &[u8]) -> Option<OverrideStat> {
        let s = std::str::from_utf8(value).ok()?;
        let s = s.trim_end_matches(['\0', '\n']);
        let mut it = s.splitn(4, ':');
        let uid = it.next()?.parse().ok()?;
        let gid = it.next()?.parse().ok()?;
        let mode = u32::from_str_radix(it.next()?, 8).ok()?;
        let rest = it.next().map(|r| format!(":{r}")).unwrap_or_default();
        Some(OverrideStat {
            uid,
            gid,
            mode: mode & 0o7777,
            rest,
        })
    }

    /// The xattr value, in containers/storage's format.
    pub fn to_value(&self) -> String {
        format!("{}:{}:{:04o}{}", self.uid, self.gid, self.mode, self.rest)
    }

    /// Shows the overridden owner and permission bits in `st` (the file type stays).
    pub fn apply(&self, st: &mut Stat) {
        st.st_uid = self.uid;
        st.st_gid = self.gid;
        st.st_mode = (st.st_mode & !0o7777) | self.mode;
    }
}

/// The `-o` options that make an [`IdPolicy`], as given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdOptions {
    uids: IdMap,
    gids: IdMap,
    squash_to_root: bool,
    squash_uid: Option<u32>,
    squash_gid: Option<u32>,
}

impl IdOptions {
    /// The option names this type parses.
    pub const KEYS: [&'static str; 5] = [
        "uidmapping",
        "gidmapping",
        "squash_to_root",
        "squash_to_uid",
        "squash_to_gid",
    ];

    /// Rejoins mapping values that the `-o` comma split cut apart: in
    /// `uidmapping=0:1000:1,1:100000:65536` the second triple is a separate token, made only
    /// of digits and colons, which no other option can be.
    pub fn rejoin(tokens: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        for t in tokens {
            let continues = !t.is_empty() && t.iter().all(|&b| b.is_ascii_digit() || b == b':');
            match out.last_mut() {
                Some(prev)
                    if continues
                        && (prev.starts_with(b"uidmapping=")
                            || prev.starts_with(b"gidmapping=")) =>
                {
                    prev.push(b',');
                    prev.extend(t);
                }
                _ => out.push(t),
            }
        }
        out
    }

    /// Takes one option `key[=value]` (`key` is one of `KEYS`); a repeated option replaces
    /// the earlier one.
    ///
    /// Errors: a missing or malformed value, or a value given to `squash_to_root`.
    pub fn set(&mut self, key: &str, value: Option<&str>) -> Result<(), String> {
        let id = |v: Option<&str>| {
            v.and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| format!("-o {key} needs a numeric id, e.g. -o {key}=1000"))
        };
        let map = |v: Option<&str>| {
            let v =
                v.ok_or_else(|| format!("-o {key} needs a value, e.g. {key}=0:100000:65536"))?;
            IdMap::parse(v).map_err(|e| format!("-o {key}={e}"))
        };
        match key {
            "uidmapping" => self.uids = map(value)?,
            "gidmapping" => self.gids = map(value)?,
            "squash_to_root" if value.is_none() => self.squash_to_root = true,
            "squash_to_root" => return Err("-o squash_to_root takes no value".into()),
            "squash_to_uid" => self.squash_uid = Some(id(value)?),
            "squash_to_gid" => self.squash_gid = Some(id(value)?),
            _ => return Err(format!("-o {key}: not an id option")),
        }
        Ok(())
    }

    /// The policy, with the kernel's overflow ids for unmapped disk ids. `squash_to_uid` and
    /// `squash_to_gid` take precedence over `squash_to_root`.
    pub fn policy(&self, (overflow_uid, overflow_gid): (u32, u32)) -> IdPolicy {
        let root = self.squash_to_root.then_some(0);
        IdPolicy {
            uids: self.uids.clone(),
            gids: self.gids.clone(),
            squash_uid: self.squash_uid.or(root),
            squash_gid: self.squash_gid.or(root),
            overflow_uid,
            overflow_gid,
        }
    }
}

/// The kernel's overflow uid and gid, read from /proc; 65534 where it cannot be read.
pub fn kernel_overflow_ids() -> (u32, u32) {
    let read = |f: &str| {
        std::fs::read_to_string(f)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(DEFAULT_OVERFLOW_ID)
    };
    (
        read("/proc/sys/kernel/overflowuid"),
        read("/proc/sys/kernel/overflowgid"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real stat (Stat has private padding, so it cannot be built field by field) with
    /// the owner and mode under test.
    fn stat(uid: u32, gid: u32, mode: u32) -> Stat {
        let mut st = rustix::fs::stat(".").expect("stat of the cwd");
        st.st_uid = uid;
        st.st_gid = gid;
        st.st_mode = mode;
        st
    }

    #[test]
    fn parse_forms() {
        let want = IdMap {
            ranges: vec![
                IdRange {
                    disk: 0,
                    shown: 1000,
                    len: 1,
                },
                IdRange {
                    disk: 1,
                    shown: 100000,
                    len: 65536,
                },
            ],
        };
        for s in [
            "0:1000:1:1:100000:65536",
            "0:1000:1,1:100000:65536",
            ":0:1000:1:1:100000:65536",
            "0:1000:1::1:100000:65536:",
        ] {
            assert_eq!(IdMap::parse(s).as_ref(), Ok(&want), "{s}");
        }
        for bad in [
            "",
            ":",
            "0:1000",
            "0:1000:1:1",
            "a:1:1",
            "-1:0:1",
            "0:0:0",
            "4294967295:0:2",
            "0:4294967295:2",
        ] {
            assert!(IdMap::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(IdMap::parse("4294967295:0:1").is_ok());
    }

    #[test]
    fn both_directions() {
        let m = IdMap::parse("0:1000:1:1:100000:65536").unwrap();
        assert_eq!(m.shown(0), Some(1000));
        assert_eq!(m.shown(1), Some(100000));
        assert_eq!(m.shown(65536), Some(165535));
        assert_eq!(m.shown(65537), None);
        assert_eq!(m.disk(1000), Some(0));
        assert_eq!(m.disk(100999), Some(1000));
        assert_eq!(m.disk(0), None);
        assert_eq!(m.disk(165536), None);
        for id in [0, 1, 500, 65536] {
            assert_eq!(m.disk(m.shown(id).unwrap()), Some(id));
        }
        let id = IdMap::default();
        assert_eq!((id.shown(7), id.disk(7)), (Some(7), Some(7)));
    }

    #[test]
    fn policy_shows_and_refuses() {
        let p = IdPolicy {
            uids: IdMap::parse("0:1000:10").unwrap(),
            gids: IdMap::parse("0:2000:10").unwrap(),
            ..IdPolicy::default()
        };
        let mut st = stat(3, 4, 0o100644);
        p.show(&mut st);
        assert_eq!((st.st_uid, st.st_gid), (1003, 2004));
        let mut st = stat(10, 99, 0o100644);
        p.show(&mut st);
        assert_eq!((st.st_uid, st.st_gid), (65534, 65534));
        assert_eq!(p.disk_uid(1005), Ok(5));
        assert_eq!(p.disk_uid(5), Err(Errno::OVERFLOW));
        assert_eq!(p.disk_gid(2009), Ok(9));

        let squash = IdPolicy {
            squash_uid: Some(42),
            ..p.clone()
        };
        let mut st = stat(3, 4, 0o100644);
        squash.show(&mut st);
        assert_eq!((st.st_uid, st.st_gid), (42, 2004));
        assert!(squash.squashes() && !squash.is_identity());
        assert!(IdPolicy::default().is_identity());
    }

    #[test]
    fn rejoined_tokens() {
        let split = |t: &str| t.split(',').map(|s| s.as_bytes().to_vec()).collect();
        let joined = |v: Vec<Vec<u8>>| -> Vec<String> {
            v.into_iter()
                .map(|b| String::from_utf8(b).unwrap())
                .collect()
        };
        let t = "uidmapping=0:1000:1,1:100000:65536,nosuid,gidmapping=:0:1:1,2:2:2,3,ro";
        assert_eq!(
            joined(IdOptions::rejoin(split(t))),
            [
                "uidmapping=0:1000:1,1:100000:65536",
                "nosuid",
                "gidmapping=:0:1:1,2:2:2,3",
                "ro"
            ]
        );
        assert_eq!(
            joined(IdOptions::rejoin(split("ro,1:2:3"))),
            ["ro", "1:2:3"]
        );
    }

    #[test]
    fn options() {
        let mut o = IdOptions::default();
        o.set("uidmapping", Some(":0:1000:1:1:100000:65536"))
            .unwrap();
        o.set("squash_to_root", None).unwrap();
        o.set("squash_to_gid", Some("7")).unwrap();
        let p = o.policy((65534, 65533));
        assert_eq!(p.uids.shown(1), Some(100000));
        assert!(p.gids.is_identity());
        // squash_to_gid wins over squash_to_root; the uid falls back to root.
        assert_eq!((p.squash_uid, p.squash_gid), (Some(0), Some(7)));
        assert_eq!((p.overflow_uid, p.overflow_gid), (65534, 65533));
        for (k, v) in [
            ("uidmapping", None),
            ("uidmapping", Some("0:1")),
            ("squash_to_uid", None),
            ("squash_to_uid", Some("-1")),
            ("squash_to_root", Some("1")),
        ] {
            assert!(o.set(k, v).is_err(), "{k}={v:?}");
        }
    }

    #[test]
    fn acl_ids_are_mapped() {
        let p = IdPolicy {
            uids: IdMap::parse("0:1000:10").unwrap(),
            gids: IdMap::parse("0:2000:10").unwrap(),
            ..IdPolicy::default()
        };
        let acl = |entries: &[(u16, u32)]| {
            let mut v = ACL_VERSION.to_le_bytes().to_vec();
            for &(tag, id) in entries {
                v.extend(tag.to_le_bytes());
                v.extend(6u16.to_le_bytes());
                v.extend(id.to_le_bytes());
            }
            v
        };
        let key = "system.posix_acl_access";
        let disk = acl(&[(1, u32::MAX), (ACL_USER, 3), (ACL_GROUP, 4), (ACL_USER, 50)]);
        let shown = p.show_xattr(key, disk.clone());
        let want = acl(&[
            (1, u32::MAX),
            (ACL_USER, 1003),
            (ACL_GROUP, 2004),
            (ACL_USER, 65534),
        ]);
        assert_eq!(shown, want);
        let set = acl(&[(ACL_USER, 1003), (ACL_GROUP, 2004)]);
        assert_eq!(
            p.disk_xattr(key, &set),
            Ok(acl(&[(ACL_USER, 3), (ACL_GROUP, 4)]))
        );
        assert_eq!(p.disk_xattr(key, &acl(&[(ACL_USER, 3)])), Err(Errno::INVAL));
        assert_eq!(p.disk_xattr(key, b"\x02\0\0\0\x02"), Err(Errno::INVAL));
        // Other xattrs, and every xattr without a mapping, pass unchanged.
        assert_eq!(p.show_xattr("user.x", disk.clone()), disk);
        assert_eq!(IdPolicy::default().show_xattr(key, disk.clone()), disk);
    }

    #[test]
    fn override_stat_values() {
        let o = OverrideStat::parse(b"1000:1001:0644:file").unwrap();
        assert_eq!(
            (o.uid, o.gid, o.mode, o.rest.as_str()),
            (1000, 1001, 0o644, ":file")
        );
        assert_eq!(o.to_value(), "1000:1001:0644:file");
        let o = OverrideStat::parse(b"0:0:4755").unwrap();
        assert_eq!((o.mode, o.to_value().as_str()), (0o4755, "0:0:4755"));
        let o = OverrideStat::parse(b"1:2:0600:char-1-3").unwrap();
        assert_eq!(o.to_value(), "1:2:0600:char-1-3");
        // The type bits of a mode written with them are dropped: the disk's type stays.
        assert_eq!(OverrideStat::parse(b"0:0:40755").unwrap().mode, 0o755);
        for bad in [&b""[..], b"1:2", b"x:1:755", b"1:2:9", b"1:-2:755"] {
            assert_eq!(OverrideStat::parse(bad), None, "{bad:?}");
        }
        let mut st = stat(5, 6, 0o040700);
        OverrideStat::parse(b"0:0:1777:dir").unwrap().apply(&mut st);
        assert_eq!((st.st_uid, st.st_gid, st.st_mode), (0, 0, 0o041777));
    }
}
