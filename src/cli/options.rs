//! The `-o` option language, shared by the three command-line forms: our own options, kernel
//! overlayfs's layer options (`lowerdir=`, `upperdir=`, `workdir=`, as containers/storage passes
//! them to a `mount_program`), and the generic mount options that mount(8) and mount.fuse3 pass
//! through from an fstab line.
//!
//! Splitting: options are separated by commas, except inside double quotes (podman passes
//! SELinux labels as `context="u:r:t:s0:c1,c2"`) and after a backslash (`\,` is a comma inside
//! a path, as kernel overlayfs reads it; other backslash pairs, like `\:` in `lowerdir=`, are
//! kept for the next parser). Empty options (`,,`) are skipped. Every option is classified
//! exactly once: it sets a field, is accepted and ignored because it cannot change what we do
//! (each group says why below), or is unknown; unknown ones are collected and reported
//! together so one run names every offending option. A `uidmapping=`/`gidmapping=` list cut at
//! its commas is put back together first (see `IdOptions::rejoin`).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Passthrough;
use crate::idmap::IdOptions;

/// `-o` options as given; `None` means "not mentioned, use the default".
#[derive(Debug, Default, PartialEq)]
pub(super) struct MountOpts {
    pub userxattr: bool,
    pub timeout: Option<Duration>,
    pub allow_other: Option<bool>,
    pub default_permissions: Option<bool>,
    pub suid: Option<bool>,
    pub dev: Option<bool>,
    pub exec: Option<bool>,
    pub read_only: Option<bool>,
    pub fsname: Option<String>,
    pub passthrough: Option<Passthrough>,
    pub spin: Option<Duration>,
    /// `lowerdir=`, still `:`-separated and escaped (see `split_lowers`).
    pub lowerdir: Option<OsString>,
    pub upperdir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    pub volatile: bool,
    /// uid/gid mapping and squashing (`idmap`).
    pub ids: IdOptions,
}

/// Options that mean nothing to a FUSE union and are accepted so that an fstab line or a
/// container engine's option string works unchanged.
fn ignored(key: &str, value: Option<&[u8]>) -> bool {
    match (key, value) {
        // Access-time policy: the kernel never sends atime updates to a FUSE daemon, and the
        // layers' own atimes follow the mount options of the filesystems they live on.
        (
            "atime" | "noatime" | "relatime" | "norelatime" | "strictatime" | "nostrictatime"
            | "diratime" | "nodiratime" | "lazytime" | "nolazytime",
            None,
        ) => true,
        // The default I/O mode; `defaults` is what an fstab line says when it means nothing.
        ("async" | "defaults", None) => true,
        // Consumed by mount(8) or mount.fuse3 before a helper runs (who may mount, when,
        // whether a failure matters); harmless if they reach us.
        (
            "auto" | "noauto" | "nofail" | "_netdev" | "user" | "nouser" | "users" | "owner",
            None,
        ) => true,
        ("comment", Some(_)) => true,
        (k, _) if k.starts_with("x-") => true,
        // SELinux labels (podman passes `context=` for every container). FUSE mounts get
        // their label from policy; without SELinux they could not be applied at all.
        ("context" | "fscontext" | "defcontext" | "rootcontext", Some(_)) => true,
        // Kernel overlayfs features switched off: exactly what unionmount does (renaming a
        // lower directory gives EXDEV, no index, whole-file copy-up, its own inode numbers).
        ("redirect_dir" | "index" | "metacopy" | "xino" | "nfs_export", Some(b"off")) => true,
        _ => false,
    }
}

/// Parses every `-o` value (see the module docs).
pub(super) fn parse_mount_options(values: &[OsString]) -> Result<MountOpts, String> {
    let mut o = MountOpts::default();
    let mut unknown = Vec::new();
    let mut tokens = Vec::new();
    for v in values {
        tokens.extend(split_options(v.as_bytes())?);
    }
    {
        for opt in IdOptions::rejoin(tokens) {
            let (key, value) = match opt.iter().position(|&b| b == b'=') {
                Some(i) => (&opt[..i], Some(&opt[i + 1..])),
                None => (&opt[..], None),
            };
            let shown = || String::from_utf8_lossy(&opt).into_owned();
            let Ok(key) = std::str::from_utf8(key) else {
                unknown.push(shown());
                continue;
            };
            if ignored(key, value) {
                continue;
            }
            if !set(&mut o, key, value)? {
                unknown.push(shown());
            }
        }
    }
    if unknown.is_empty() {
        return Ok(o);
    }
    let quoted: Vec<String> = unknown.iter().map(|u| format!("'{u}'")).collect();
    Err(format!(
        "unknown mount option{} {} (see --help for the supported -o options)",
        if unknown.len() > 1 { "s" } else { "" },
        quoted.join(", ")
    ))
}

/// Applies one option to `o`; false if it is not one of ours. Errors: a known option with a
/// bad value.
fn set(o: &mut MountOpts, key: &str, value: Option<&[u8]>) -> Result<bool, String> {
    let text = |v: &[u8]| -> Result<String, String> {
        String::from_utf8(v.to_vec()).map_err(|_| format!("-o {key}= must be valid UTF-8"))
    };
    let dir = |v: &[u8]| -> Result<OsString, String> {
        if v.is_empty() {
            return Err(format!("-o {key}= needs a directory"));
        }
        Ok(OsString::from_vec(v.to_vec()))
    };
    match (key, value) {
        ("userxattr", None) => o.userxattr = true,
        ("timeout", Some(v)) => o.timeout = Some(parse_timeout(&text(v)?)?),
        ("spin", Some(v)) => o.spin = Some(parse_spin(&text(v)?)?),
        ("fsname", Some(v)) if !v.is_empty() => o.fsname = Some(text(v)?),
        ("fsname", _) => return Err("-o fsname needs a value, e.g. -o fsname=myunion".into()),
        ("allow_other", None) => o.allow_other = Some(true),
        ("noallow_other", None) => o.allow_other = Some(false),
        ("default_permissions", None) => o.default_permissions = Some(true),
        ("nodefault_permissions", None) => o.default_permissions = Some(false),
        ("suid", None) => o.suid = Some(true),
        ("nosuid", None) => o.suid = Some(false),
        ("dev", None) => o.dev = Some(true),
        ("nodev", None) => o.dev = Some(false),
        ("exec", None) => o.exec = Some(true),
        ("noexec", None) => o.exec = Some(false),
        ("passthrough", Some(v)) => o.passthrough = Some(parse_passthrough(&text(v)?)?),
        ("ro", None) => o.read_only = Some(true),
        ("rw", None) => o.read_only = Some(false),
        ("volatile", None) => o.volatile = true,
        (k, v) if IdOptions::KEYS.contains(&k) => {
            let v = v.map(text).transpose()?;
            o.ids.set(k, v.as_deref())?
        }
        // As with kernel overlayfs, a later lowerdir= replaces an earlier one.
        ("lowerdir", Some(v)) => o.lowerdir = Some(dir(v)?),
        ("upperdir", Some(v)) => o.upperdir = Some(dir(v)?.into()),
        ("workdir", Some(v)) => o.workdir = Some(dir(v)?.into()),
        ("lowerdir" | "upperdir" | "workdir", None) => {
            return Err(format!("-o {key} needs a directory: -o {key}=DIR"));
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Splits one `-o` value at commas outside double quotes and not escaped by a backslash;
/// drops empty options. `\,` becomes `,`; other backslash pairs are kept as they are.
///
/// Errors: an unterminated double quote.
pub(super) fn split_options(s: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut quoted = false;
    let mut bytes = s.iter().copied();
    while let Some(b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(b',') => cur.push(b','),
                Some(c) => cur.extend([b'\\', c]),
                None => cur.push(b'\\'),
            },
            b'"' => {
                quoted = !quoted;
                cur.push(b);
            }
            b',' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(b),
        }
    }
    if quoted {
        return Err(format!(
            "unterminated double quote in -o {}",
            OsStr::from_bytes(s).to_string_lossy()
        ));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

fn parse_passthrough(v: &str) -> Result<Passthrough, String> {
    match v {
        "on" => Ok(Passthrough::On),
        "off" => Ok(Passthrough::Off),
        "auto" => Ok(Passthrough::Auto),
        _ => Err(format!("-o passthrough={v}: expected on, off or auto")),
    }
}

fn parse_spin(v: &str) -> Result<Duration, String> {
    match v.parse::<u64>() {
        // Longer than a millisecond is not a poll any more but a busy worker.
        Ok(us) if us <= 1000 => Ok(Duration::from_micros(us)),
        _ => Err(format!(
            "-o spin={v}: expected a number of microseconds from 0 to 1000, e.g. spin=50"
        )),
    }
}

fn parse_timeout(v: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| {
            format!("-o timeout={v}: expected a number of seconds >= 0, e.g. timeout=0.5")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<String> {
        split_options(s.as_bytes())
            .unwrap()
            .into_iter()
            .map(|o| String::from_utf8(o).unwrap())
            .collect()
    }

    fn parse(opts: &[&str]) -> Result<MountOpts, String> {
        let v: Vec<OsString> = opts.iter().map(OsString::from).collect();
        parse_mount_options(&v)
    }

    #[test]
    fn splitting() {
        assert_eq!(split("a,b=1,,c,"), ["a", "b=1", "c"]);
        assert_eq!(split(",,"), Vec::<String>::new());
        assert_eq!(
            split(r#"nodev,context="system_u:object_r:container_file_t:s0:c1,c2",volatile"#),
            [
                "nodev",
                r#"context="system_u:object_r:container_file_t:s0:c1,c2""#,
                "volatile"
            ]
        );
        assert_eq!(split(r"lowerdir=a\,b:c\:d,x"), [r"lowerdir=a,b:c\:d", "x"]);
        assert_eq!(split(r"a\\,b"), [r"a\\", "b"]);
        assert!(split_options(br#"context="abc,d"#).is_err());
    }

    #[test]
    fn layer_options() {
        let o = parse(&["lowerdir=l/A:l/B,upperdir=diff", "workdir=work,,volatile"]).unwrap();
        assert_eq!(o.lowerdir.as_deref(), Some(OsStr::new("l/A:l/B")));
        assert_eq!(o.upperdir, Some(PathBuf::from("diff")));
        assert_eq!(o.workdir, Some(PathBuf::from("work")));
        assert!(o.volatile);
        let last = parse(&["lowerdir=a,lowerdir=b"]).unwrap();
        assert_eq!(last.lowerdir.as_deref(), Some(OsStr::new("b")));
        for bad in ["lowerdir=", "lowerdir", "upperdir=", "workdir"] {
            let e = parse(&[bad]).unwrap_err();
            assert!(e.contains("needs a directory"), "{bad}: {e}");
        }
    }

    #[test]
    fn generic_options_are_accepted() {
        let o = parse(&[
            "rw,nodev,nosuid,noexec,relatime,noatime,async,defaults,auto,nofail,_netdev",
            "x-systemd.automount,comment=hi,index=off,metacopy=off,redirect_dir=off,xino=off",
            r#"context="system_u:object_r:container_file_t:s0:c1,c2""#,
        ])
        .unwrap();
        assert_eq!(
            (o.read_only, o.dev, o.suid, o.exec),
            (Some(false), Some(false), Some(false), Some(false))
        );
        assert_eq!(parse(&["exec"]).unwrap().exec, Some(true));
    }

    #[test]
    fn refusals_name_every_option() {
        let e = parse(&[
            "uidmapping=0:1000:1,bogus",
            "squash_to_root,metacopy=on,sync",
        ])
        .unwrap_err();
        assert!(
            e.contains("unknown mount options 'bogus', 'metacopy=on', 'sync'"),
            "{e}"
        );
        let e = parse(&["context=\"a"]).unwrap_err();
        assert!(e.contains("unterminated"), "{e}");
    }

    /// A mapping list cut at its commas is one option again; the id options reach `idmap`.
    #[test]
    fn id_options_survive_the_comma_split() {
        let o = parse(&["nodev,uidmapping=0:1000:1,1:100000:65536,squash_to_gid=7"]).unwrap();
        assert_eq!(o.dev, Some(false));
        assert_eq!(o.ids, {
            let mut ids = IdOptions::default();
            ids.set("uidmapping", Some("0:1000:1,1:100000:65536"))
                .unwrap();
            ids.set("squash_to_gid", Some("7")).unwrap();
            ids
        });
    }
}
