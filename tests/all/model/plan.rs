//! Plans: a layer stack and a list of operations, decoded from raw bytes.
//!
//! The one decoder serves the proptest strategy (random byte vectors, shrunk towards shorter
//! and smaller ones) and the `engine_plan` fuzz target (libFuzzer's bytes), so a failing input
//! of either is a reproducer for both. Every byte string decodes to some valid plan: a missing
//! byte reads as 0 and entries that would contradict the layer built so far are dropped.
//! Names come from a three-letter alphabet and paths are at most three deep, so names collide
//! across layers and operations all the time.

use std::collections::BTreeMap;
use std::fmt;

/// Names of the tiny alphabet: layers use the first three, operations all four (so that some
/// names are new to the merged view).
const NAMES: [&str; 4] = ["a", "b", "c", "d"];
/// File contents (the fixture format trims lines, so no leading or trailing blanks).
pub const CONTENTS: [&str; 4] = ["", "x", "hello", "0123456789abcdef"];
/// Symlink targets: relative, nested, escaping and absolute.
const TARGETS: [&str; 4] = ["a", "b/c", "../x", "/nowhere"];
/// Modes for new and chmod'ed objects.
const MODES: [u32; 4] = [0o644, 0o600, 0o755, 0o777];
/// Modes of directories in layers (root bypasses permission checks, so 0o555 is fine).
const DIR_MODES: [u32; 4] = [0o755, 0o700, 0o555, 0o777];
/// The user xattrs objects may carry.
pub const XATTR_KEYS: [&str; 2] = ["user.k0", "user.k1"];
const XATTR_VALUES: [&str; 3] = ["", "v", "longer-value"];
/// Most operations a plan holds.
const MAX_OPS: usize = 40;

/// How a directory in a layer is opaque.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opaque {
    No,
    /// `overlay.opaque=y` (fixture `o`).
    Xattr,
    /// a `.wh..wh..opq` file inside (fixture `O`).
    File,
}

/// One path of one layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    File {
        data: String,
        mode: u32,
        xattr: Option<(usize, usize)>,
    },
    Dir {
        mode: u32,
        opaque: Opaque,
        xattr: Option<(usize, usize)>,
    },
    Symlink(String),
    /// A hard link to the file at this path of the same layer.
    Link(String),
    /// Kernel whiteout, char 0/0.
    Whiteout,
    /// AUFS/OCI `.wh.NAME` (lowers only).
    AufsWhiteout,
    /// Zero-size file with `overlay.whiteout` in a directory marked `opaque=x` (lowers only).
    XWhiteout,
}

/// A layer: every path it holds, ancestors included as directories.
#[derive(Clone, Debug, Default)]
pub struct LayerSpec {
    pub entries: BTreeMap<String, Entry>,
}

/// renameat2 flags of a rename operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    Plain,
    NoReplace,
    Exchange,
}

/// One operation on the merged view, by path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Create {
        path: String,
        mode: u32,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    Unlink {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Rename {
        from: String,
        to: String,
        mode: RenameMode,
    },
    Link {
        from: String,
        to: String,
    },
    Write {
        path: String,
        offset: u64,
        data: String,
    },
    Truncate {
        path: String,
        size: u64,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    SetXattr {
        path: String,
        key: usize,
        value: usize,
        flags: u32,
    },
    RemoveXattr {
        path: String,
        key: usize,
    },
    Readdir {
        path: String,
    },
    /// Opens a file for reading and keeps the handle.
    Open {
        path: String,
    },
    /// Reads the whole file through kept handle number `slot` (modulo the number kept).
    Read {
        slot: usize,
    },
}

/// Lowers (top first), the upper, and the operations.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub lowers: Vec<LayerSpec>,
    pub upper: LayerSpec,
    pub ops: Vec<Op>,
}

/// Reads bytes; past the end every byte is 0.
struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bytes<'_> {
    fn next(&mut self) -> usize {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        usize::from(b)
    }

    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// A path of one to three components from the first `names` names.
    fn path_in(&mut self, names: usize) -> String {
        let b = self.next();
        // Shallow paths are likelier, so that more operations find what they name.
        let depth = [1, 1, 1, 2, 2, 3][b % 6];
        let mut digits = b / 6;
        let mut comps = Vec::new();
        for _ in 0..depth {
            comps.push(NAMES[digits % names]);
            digits /= names;
        }
        comps.join("/")
    }

    fn layer_path(&mut self) -> String {
        self.path_in(3)
    }

    fn path(&mut self) -> String {
        self.path_in(4)
    }
}

/// The parent of `path` ("" for a top-level name).
pub fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

impl LayerSpec {
    fn decode(b: &mut Bytes<'_>, upper: bool) -> LayerSpec {
        let mut l = LayerSpec::default();
        for _ in 0..b.next() % 8 {
            let (kind, path, extra) = (b.next() % 10, b.layer_path(), b.next());
            let xattr = (extra & 0x30 != 0).then_some(((extra >> 4) & 1, (extra >> 6) % 3));
            let entry = match kind {
                0..=2 => Entry::File {
                    data: CONTENTS[extra % 4].to_string(),
                    mode: MODES[(extra >> 2) % 4],
                    xattr,
                },
                3 => Entry::Dir {
                    mode: DIR_MODES[extra % 4],
                    opaque: Opaque::No,
                    xattr,
                },
                4 => Entry::Symlink(TARGETS[extra % 4].to_string()),
                5 => {
                    let files: Vec<&String> = l
                        .entries
                        .iter()
                        .filter(|(_, e)| matches!(e, Entry::File { .. }))
                        .map(|(p, _)| p)
                        .collect();
                    let Some(to) = files.get(extra % files.len().max(1)) else {
                        continue;
                    };
                    Entry::Link(to.to_string())
                }
                6 => Entry::Whiteout,
                7 if !upper => Entry::AufsWhiteout,
                8 if !upper => Entry::XWhiteout,
                7 | 8 => Entry::Whiteout,
                _ => {
                    l.make_opaque(
                        &path,
                        if extra % 2 == 0 || upper {
                            Opaque::Xattr
                        } else {
                            Opaque::File
                        },
                    );
                    continue;
                }
            };
            l.insert(path, entry);
        }
        l
    }

    /// Adds `entry` at `path` with its ancestors as directories, unless that contradicts what
    /// the layer holds.
    fn insert(&mut self, path: String, entry: Entry) {
        if !self.ancestors_are_dirs(&path) || self.entries.contains_key(&path) {
            return;
        }
        let dir = parent(&path);
        // `X` marks its directory `opaque=x`, which an `opaque=y` on it would overwrite.
        if entry == Entry::XWhiteout && self.opaque_of(dir) == Opaque::Xattr {
            return;
        }
        self.add_ancestors(&path);
        self.entries.insert(path, entry);
    }

    fn make_opaque(&mut self, path: &str, how: Opaque) {
        if !self.ancestors_are_dirs(path) {
            return;
        }
        if how == Opaque::Xattr && self.has_xwhiteouts(path) {
            return;
        }
        self.add_ancestors(path);
        let e = self.entries.entry(path.to_string()).or_insert(Entry::Dir {
            mode: 0o755,
            opaque: Opaque::No,
            xattr: None,
        });
        if let Entry::Dir { opaque, .. } = e {
            *opaque = how;
        }
    }

    fn ancestors_are_dirs(&self, path: &str) -> bool {
        let mut p = parent(path);
        while !p.is_empty() {
            if self
                .entries
                .get(p)
                .is_some_and(|e| !matches!(e, Entry::Dir { .. }))
            {
                return false;
            }
            p = parent(p);
        }
        true
    }

    fn add_ancestors(&mut self, path: &str) {
        let mut p = parent(path);
        while !p.is_empty() {
            self.entries.entry(p.to_string()).or_insert(Entry::Dir {
                mode: 0o755,
                opaque: Opaque::No,
                xattr: None,
            });
            p = parent(p);
        }
    }

    /// How directory `path` of this layer is opaque (the layer root is never).
    pub fn opaque_of(&self, path: &str) -> Opaque {
        match self.entries.get(path) {
            Some(Entry::Dir { opaque, .. }) => *opaque,
            _ => Opaque::No,
        }
    }

    /// True when directory `path` holds xattr whiteouts (so the fixture marks it `opaque=x`).
    pub fn has_xwhiteouts(&self, path: &str) -> bool {
        self.entries
            .iter()
            .any(|(p, e)| *e == Entry::XWhiteout && parent(p) == path)
    }

    /// The layer in the fixture's text format (see `fixture.rs`).
    pub fn fixture_text(&self) -> String {
        let mut out = Vec::new();
        let mut later = Vec::new();
        let xattr = |p: &str, x: &Option<(usize, usize)>| {
            x.map(|(k, v)| format!("x {p} {} {}", XATTR_KEYS[k], XATTR_VALUES[v]))
        };
        for (p, e) in &self.entries {
            match e {
                Entry::File {
                    data,
                    mode,
                    xattr: x,
                } => {
                    out.push(format!("f {p} {data}"));
                    later.push(format!("m {p} {mode:o}"));
                    later.extend(xattr(p, x));
                }
                Entry::Dir {
                    mode,
                    opaque,
                    xattr: x,
                } => {
                    out.push(format!("d {p}"));
                    match opaque {
                        Opaque::No => {}
                        Opaque::Xattr => out.push(format!("o {p}")),
                        Opaque::File => out.push(format!("O {p}")),
                    }
                    later.push(format!("m {p} {mode:o}"));
                    later.extend(xattr(p, x));
                }
                Entry::Symlink(t) => out.push(format!("l {p} {t}")),
                Entry::Link(to) => later.insert(0, format!("h {p} {to}")),
                Entry::Whiteout => out.push(format!("w {p}")),
                Entry::AufsWhiteout => out.push(format!("W {p}")),
                Entry::XWhiteout => out.push(format!("X {p}")),
            }
        }
        out.extend(later);
        out.join("\n")
    }
}

impl Plan {
    /// Decodes any bytes into a plan: one to three lowers, the upper, then operations until
    /// the bytes run out.
    pub fn decode(data: &[u8]) -> Plan {
        let mut b = Bytes { data, pos: 0 };
        let n = 1 + b.next() % 3;
        let lowers = (0..n).map(|_| LayerSpec::decode(&mut b, false)).collect();
        let upper = LayerSpec::decode(&mut b, true);
        let mut ops = Vec::new();
        while !b.done() && ops.len() < MAX_OPS {
            ops.push(Op::decode(&mut b));
        }
        Plan { lowers, upper, ops }
    }
}

impl Op {
    fn decode(b: &mut Bytes<'_>) -> Op {
        let (path, extra) = (b.path(), b.next());
        // Sources are drawn from the layers' names, which exist more often.
        let source = path.replace('d', "a");
        match b.next() % 16 {
            0 => Op::Create {
                path,
                mode: MODES[extra % 4],
            },
            1 => Op::Mkdir {
                path,
                mode: MODES[extra % 4],
            },
            2 => Op::Symlink {
                path,
                target: TARGETS[extra % 4].to_string(),
            },
            3 => Op::Unlink { path },
            4 => Op::Rmdir { path },
            5 | 6 => Op::Rename {
                from: source,
                to: b.path(),
                mode: [
                    RenameMode::Plain,
                    RenameMode::Plain,
                    RenameMode::NoReplace,
                    RenameMode::Exchange,
                ][extra % 4],
            },
            7 => Op::Link {
                from: source,
                to: b.path(),
            },
            8 => Op::Write {
                path,
                offset: (extra % 8) as u64,
                data: CONTENTS[1 + (extra >> 3) % 3].to_string(),
            },
            9 => Op::Truncate {
                path,
                size: (extra % 12) as u64,
            },
            10 => Op::Chmod {
                path,
                mode: MODES[extra % 4],
            },
            11 => Op::SetXattr {
                path,
                key: extra % 2,
                value: (extra >> 1) % 3,
                flags: ((extra >> 3) % 3) as u32,
            },
            12 => Op::RemoveXattr {
                path,
                key: extra % 2,
            },
            14 => Op::Open { path: source },
            15 => Op::Read { slot: extra },
            _ => Op::Readdir {
                path: if extra % 3 == 0 {
                    String::new()
                } else {
                    parent(&path).to_string()
                },
            },
        }
    }
}

impl Op {
    /// The object an operation acts on through its path rather than its name (the VFS
    /// follows a symlink there first, so it never reaches the union as such).
    pub fn object_path(&self) -> Option<&str> {
        match self {
            Op::Write { path, .. }
            | Op::Truncate { path, .. }
            | Op::Chmod { path, .. }
            | Op::SetXattr { path, .. }
            | Op::RemoveXattr { path, .. }
            | Op::Readdir { path }
            | Op::Open { path } => Some(path),
            _ => None,
        }
    }
}

/// The xattr value with index `i`.
pub fn xattr_value(i: usize) -> &'static str {
    XATTR_VALUES[i]
}

impl fmt::Display for Plan {
    /// The reproducer form: each layer in the fixture format, then one operation a line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.lowers.iter().enumerate() {
            writeln!(f, "lower{i}:\n{}", indent(&l.fixture_text()))?;
        }
        writeln!(f, "upper:\n{}", indent(&self.upper.fixture_text()))?;
        writeln!(f, "ops:")?;
        for (i, op) in self.ops.iter().enumerate() {
            writeln!(f, "  {i}: {op:?}")?;
        }
        Ok(())
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}
