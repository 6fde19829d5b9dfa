//! The bodies of the fuzz targets: each takes raw bytes and panics when an invariant breaks.
//! libFuzzer calls them from `fuzz/fuzz_targets/`; the main test binary's `fuzz_corpus`
//! includes this file by path and replays every committed corpus and regression input, so
//! plain `cargo test` checks them too. They use only `crate::model` (the model test's files)
//! and unionmount's public API, which both crates have.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::fs::FileType;
use unionmount::cli::{self, Options};
use unionmount::config::XattrNamespace;
use unionmount::format::{self, MarkerKeys, OpaqueValue};
use unionmount::setup;

use crate::model::plan::Plan;
use crate::model::runner::run;

/// `engine_plan`: the bytes decode to a plan (layers + operations, `model::plan`) run on the
/// in-process engine in a temporary directory. Invariants: no panic; every answer and the
/// whole merged view agree with the reference model; st_ino follows identity; the lowers are
/// byte-for-byte unchanged; nothing is written outside the upper and the workdir, whose
/// `work/` is left empty (see `model::runner`).
pub fn engine_plan(data: &[u8]) {
    let plan = Plan::decode(data);
    if let Err(e) = run(&plan) {
        panic!("{e}\nplan:\n{plan}");
    }
}

/// `markers`: the pure marker functions of `unionmount::format` on arbitrary names, values and
/// stat fields. Invariants: no panic; `.wh.NAME` and its target round-trip (except the opaque
/// marker, which whites out nothing); every marker name is hidden (`is_marker_name`); only
/// `y` and `x` mean something as an opaque value; the overlay's own keys are private in both
/// namespaces and a key is private exactly under a private prefix; only a char device 0/0 is a
/// whiteout device; a valid single name is exactly a non-empty one without `/` or NUL that is
/// not `.`/`..`, at most 255 bytes.
pub fn markers(data: &[u8]) {
    let name = OsStr::from_bytes(data);
    let wh = format::aufs_whiteout_name(name);
    assert!(format::is_marker_name(&wh));
    let whites_out_something =
        !data.is_empty() && wh.as_bytes() != format::OPAQUE_MARKER.as_bytes();
    assert_eq!(
        format::aufs_whiteout_target(&wh),
        whites_out_something.then_some(name)
    );
    if let Some(t) = format::aufs_whiteout_target(name) {
        assert!(format::is_marker_name(name) && !t.is_empty());
        assert_eq!(format::aufs_whiteout_name(t), name);
    }
    assert_eq!(
        format::is_marker_name(name),
        data.starts_with(format::WH_PREFIX)
    );

    let want = match data {
        b"y" => OpaqueValue::Opaque,
        b"x" => OpaqueValue::HasXattrWhiteouts,
        _ => OpaqueValue::No,
    };
    assert_eq!(format::parse_opaque(data), want);

    if let Ok(key) = std::str::from_utf8(data) {
        for ns in [XattrNamespace::Trusted, XattrNamespace::User] {
            let keys = MarkerKeys::new(ns.overlay_prefix());
            assert!(
                format::is_private_xattr(&keys.opaque) && format::is_private_xattr(&keys.whiteout)
            );
            let own = MarkerKeys::new(&format!("{}{key}", ns.overlay_prefix()));
            assert!(format::is_private_xattr(&own.opaque));
        }
        let private = format::PRIVATE_PREFIXES.iter().any(|p| key.starts_with(p));
        assert_eq!(format::is_private_xattr(key), private, "{key:?}");
    }

    let mut st = rustix::fs::stat(".").expect("stat of the working directory");
    let word = |i: usize| {
        data.get(i..i + 4)
            .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    st.st_mode = word(0) as _;
    st.st_rdev = u64::from(word(4)) as _;
    let is_dev00 =
        FileType::from_raw_mode(st.st_mode as _) == FileType::CharacterDevice && st.st_rdev == 0;
    assert_eq!(format::is_whiteout_dev(&st), is_dev00);

    let valid = !data.is_empty()
        && data != b"."
        && data != b".."
        && !data.contains(&b'/')
        && !data.contains(&0)
        && data.len() <= 255;
    assert_eq!(unionmount::sys::path::check_name(name).is_ok(), valid);
}

/// `options`: the command-line parsers on arbitrary text. Invariants: no panic; a `LOWERS`
/// list splits into non-empty paths and, escaped and joined again, splits back to the same
/// paths, and a refused one is refused for an empty component; `unescape_octal` never grows
/// its input and undoes `\ooo` escapes of every byte; `-o` strings either parse to options
/// that render to a canonical `-o` string parsing to the same options, or fail with a usage
/// error that names the offending option.
pub fn options(data: &[u8]) {
    match cli::split_lowers(OsStr::from_bytes(data)) {
        Ok(v) => {
            assert!(!v.is_empty() && v.iter().all(|p| !p.as_os_str().is_empty()));
            let joined: Vec<u8> = v
                .iter()
                .map(|p| escape_lower(p.as_os_str().as_bytes()))
                .collect::<Vec<_>>()
                .join(&b':');
            assert_eq!(
                cli::split_lowers(OsStr::from_bytes(&joined)).as_ref(),
                Ok(&v)
            );
        }
        Err(msg) => assert!(msg.contains("empty lower directory"), "{msg}"),
    }

    let text = String::from_utf8_lossy(data);
    assert!(setup::unescape_octal(&text).len() <= text.len());
    let escaped: String = data.iter().map(|b| format!("\\{b:03o}")).collect();
    assert_eq!(setup::unescape_octal(&escaped), data);

    // An argv string ends at its first NUL; a leading empty option keeps clap from reading
    // the value as a flag.
    let text = text.split('\0').next().unwrap_or_default();
    match parse_options(&format!(",{text}")) {
        Ok(o) => {
            let canonical = render(&o);
            let again = parse_options(&canonical)
                .unwrap_or_else(|e| panic!("canonical options {canonical:?} refused: {e}"));
            assert_eq!(render(&again), canonical);
            assert_eq!(layers(&again), layers(&o));
            let (a, b) = (
                o.config.timeout.as_secs_f64(),
                again.config.timeout.as_secs_f64(),
            );
            assert!(
                (a - b).abs() <= a.max(b) * 1e-12 + 1e-9,
                "timeout {a} became {b}"
            );
        }
        Err(e) if e.kind() == clap::error::ErrorKind::InvalidValue => {
            // clap's rendering drops control characters and what terminal escapes they start,
            // so the option is looked for up to its first control character.
            let msg = e.to_string();
            let visible = |s: &str| {
                s.split(char::is_control)
                    .next()
                    .unwrap_or_default()
                    .to_string()
            };
            let named = text.split(',').filter(|o| !o.is_empty()).any(|o| {
                msg.contains(&visible(o))
                    || msg.contains(&visible(o.split('=').next().unwrap_or(o)))
            });
            assert!(
                named,
                "the error does not name a bad option of {text:?}: {msg:?}"
            );
        }
        Err(e) => panic!("-o {text:?}: unexpected kind of error: {e}"),
    }
}

/// Escapes one lower path for a `LOWERS` list (kernel overlayfs's `\:` and `\\`).
fn escape_lower(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len());
    for &b in p {
        if b == b':' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

fn parse_options(opts: &str) -> Result<Options, clap::Error> {
    cli::parse_from(["unionmount", "-o", opts, "/lower", "/upper", "/mnt"])
}

/// The options `o` as one canonical `-o` string (the timeout by value, compared apart).
fn render(o: &Options) -> String {
    let m = &o.mount;
    let pick = |on: bool, yes: &str, no: &str| if on { yes } else { no }.to_string();
    let mut v = vec![
        pick(m.allow_other, "allow_other", "noallow_other"),
        pick(
            m.default_permissions,
            "default_permissions",
            "nodefault_permissions",
        ),
        pick(m.suid, "suid", "nosuid"),
        pick(m.dev, "dev", "nodev"),
        pick(m.read_only, "ro", "rw"),
        format!("fsname={}", m.fsname),
        format!("timeout={}", o.config.timeout.as_secs_f64()),
    ];
    if o.config.xattr_ns == XattrNamespace::User {
        v.push("userxattr".into());
    }
    v.join(",")
}

type Layers = (Vec<PathBuf>, Option<PathBuf>, Option<PathBuf>);

fn layers(o: &Options) -> Layers {
    let c = &o.config;
    (c.lowers.clone(), c.upper.clone(), c.workdir.clone())
}
