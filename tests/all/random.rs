//! Seeded random differential plans: random lower stacks (and sometimes an upper) and random
//! operation plans over a tiny name alphabet, each run on kernel overlayfs and on unionmount by
//! oracle.rs's `compare` (every step's result, then the merged views, inode relations, uppers
//! and lowers). Each operation is chosen from the merged view kernel overlayfs shows after the
//! ones before, so most act on something that exists.
//!
//! `UNIONMOUNT_RANDOM_PLANS=N` runs N plans (default `DEFAULT_PLANS`) and
//! `UNIONMOUNT_RANDOM_SEED=S` starts at seed S (default `DEFAULT_SEED`); plan i has seed S + i,
//! so a failing plan reruns alone with its seed and N = 1. A failure is shrunk (operations,
//! then lowers, then layer entries, dropped greedily while it still fails) and printed as a
//! test to paste into oracle.rs.
//!
//! Where unionmount deliberately differs from the kernel, or the kernel's behaviour is not
//! worth matching, the plans stay out of the way by construction; nothing else is tolerated
//! beyond what `compare` names:
//! - hard links inside a lower are named `h1`/`h2` (`LINK_NAMES`), and no operation that
//!   could copy them up (write, chmod, xattr change, link or rename of them) ever names a path
//!   through an `h` component; symlink targets never contain one either (README: unionmount
//!   links every looked-up name to the copy, the kernel with `index=off` breaks the link);
//! - only `user.*` xattrs and no `.wh.` names in operations; lowers hold markers in every
//!   format unionmount reads (the kernel gets them translated to its own, see `compare`), the
//!   upper only the kernel's (the format unionmount writes);
//! - whiteouts only where the kernel hides them: it lists a directory that one layer alone
//!   provides straight from that layer, whiteouts included (`Plan::drop_listed_whiteouts`);
//! - no `..` in symlink targets, so nothing resolves outside the mount;
//! - no `rm -rf` as nobody: where it fails part way, what went first depends on the listing
//!   order, and the kernel lists the lowest layer's names first, unionmount the upper's;
//! - renaming a directory with lower copies gives EXDEV on both (kernel `redirect_dir=off`),
//!   mknod of a char 0/0 EPERM on both: both are generated and compared.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::fixture::Stack;
use crate::mounted::{KernelMount, overlay_available};
use crate::oracle::{Op, Script, compare, run};

/// Plans run by default: 10 to 15 s on two CPUs, alongside the other tests.
const DEFAULT_PLANS: u64 = 250;
/// The first seed by default (CI runs the same plans every time).
const DEFAULT_SEED: u64 = 1;
/// Most comparisons one shrink may run.
const SHRINK_BUDGET: usize = 400;

/// Names of files, directories and everything else.
const NAMES: [&str; 4] = ["a", "b", "c", "d"];
/// Names of the two names of a hard link inside a lower (never copied up, see above).
const LINK_NAMES: [&str; 2] = ["h1", "h2"];
const CONTENTS: [&str; 5] = ["A", "bb", "low", "0123456789", "zz"];
const DATA: [&str; 5] = ["", "x", "yy", "new", "0123456789abcdef"];
const XATTR_KEYS: [&str; 2] = ["user.k", "user.m"];
const XATTR_VALUES: [&str; 2] = ["1", "vv"];
const FILE_MODES: [u32; 6] = [0o644, 0o600, 0o755, 0o444, 0o4755, 0o000];
const OWNERS: [&str; 3] = ["65534:65534", "1:2", "0:65534"];
/// Sizes of sparse (`s`) and dense (`F`) layer files: across page and extent boundaries.
const BIG_SIZES: [u64; 4] = [4097, 70_000, 300_000, 1 << 20];
/// Offsets and lengths of partial writes (`Op::WriteAt`, `Op::MmapWrite`).
const OFFSETS: [u64; 7] = [0, 1, 3, 4095, 4096, 65_536, 300_000];
const LENGTHS: [usize; 4] = [1, 10, 5000, 70_000];
const DIR_MODES: [u32; 6] = [0o755, 0o700, 0o555, 0o1777, 0o2775, 0o777];
const CHMOD_MODES: [u32; 9] = [
    0o644, 0o600, 0o755, 0o444, 0o4755, 0o000, 0o777, 0o666, 0o1777,
];
/// Percent of operations made as uid/gid 65534 (`Op::Nobody`).
const NOBODY_PCT: usize = 12;

/// splitmix64: tiny, deterministic, and good enough for plans (and the crash tests' scripts).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `pct` percent.
    pub(crate) fn pct(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }

    pub(crate) fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
}

/// A layer entry: the line creating an object and the lines setting its attributes, removed
/// together when shrinking (a hard link's group holds both names).
type Group = Vec<String>;

/// A plan: layers as entry groups, and the operations.
#[derive(Clone)]
struct Plan {
    lowers: Vec<Vec<Group>>,
    upper: Vec<Group>,
    ops: Vec<Op>,
}

fn leak(s: String) -> &'static str {
    String::leak(s)
}

/// Whether `path` goes through a name of a lower hard link.
fn through_link(path: &str) -> bool {
    path.split('/').any(|c| c.starts_with('h'))
}

fn random_path(rng: &mut Rng) -> String {
    let depth = match rng.below(10) {
        0..4 => 1,
        4..8 => 2,
        _ => 3,
    };
    let parts: Vec<&str> = (0..depth).map(|_| rng.pick(&NAMES)).collect();
    parts.join("/")
}

/// A symlink target: one or two names, or a dangling one; never `..` nor an `h` name.
fn random_target(rng: &mut Rng) -> String {
    match rng.below(5) {
        0 => "zz".into(),
        1 => format!("{}/{}", rng.pick(&NAMES), rng.pick(&NAMES)),
        _ => rng.pick(&NAMES).into(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    Other,
}

/// One layer being generated: what each path is, so that entries never conflict.
#[derive(Default)]
struct LayerGen {
    kinds: BTreeMap<String, Kind>,
    groups: Vec<Group>,
}

impl LayerGen {
    /// Claims `path` for an object of `kind` if it is free and its ancestors are (or can be)
    /// directories.
    fn claim(&mut self, path: &str, kind: Kind) -> bool {
        if self.kinds.contains_key(path) {
            return false;
        }
        let comps: Vec<&str> = path.split('/').collect();
        for i in 1..comps.len() {
            let anc = comps[..i].join("/");
            if self.kinds.get(&anc).is_some_and(|k| *k != Kind::Dir) {
                return false;
            }
        }
        for i in 1..comps.len() {
            self.kinds.insert(comps[..i].join("/"), Kind::Dir);
        }
        self.kinds.insert(path.to_string(), kind);
        true
    }

    /// A directory path of depth 0..=2 for a hard link name ("" is the root).
    fn link_parent(&mut self, rng: &mut Rng) -> String {
        match rng.below(3) {
            0 => String::new(),
            1 => rng.pick(&NAMES).to_string(),
            _ => format!("{}/{}", rng.pick(&NAMES), rng.pick(&NAMES)),
        }
    }

    fn add(&mut self, rng: &mut Rng, is_lower: bool) {
        let path = random_path(rng);
        let attrs = |rng: &mut Rng, path: &str, modes: &[u32], g: &mut Group| {
            if rng.pct(25) {
                let (k, v) = (rng.pick(&XATTR_KEYS), rng.pick(&XATTR_VALUES));
                g.push(format!("x {path} {k} {v}"));
            }
            if rng.pct(10) {
                g.push(format!("u {path} {}", rng.pick(&OWNERS)));
            }
            if rng.pct(20) {
                g.push(format!("m {path} {:o}", rng.pick(modes)));
            }
        };
        let mut g = Group::new();
        match rng.below(100) {
            0..31 => {
                if self.claim(&path, Kind::Other) {
                    g.push(format!("f {path} {}", rng.pick(&CONTENTS)));
                    attrs(rng, &path, &FILE_MODES, &mut g);
                }
            }
            31..35 => {
                if self.claim(&path, Kind::Other) {
                    let op = if rng.pct(50) { 's' } else { 'F' };
                    g.push(format!("{op} {path} {}", rng.pick(&BIG_SIZES)));
                    attrs(rng, &path, &FILE_MODES, &mut g);
                }
            }
            35..58 => {
                if self.claim(&path, Kind::Dir) {
                    g.push(format!("d {path}"));
                    attrs(rng, &path, &DIR_MODES, &mut g);
                }
            }
            58..66 => {
                if self.claim(&path, Kind::Dir) {
                    // Opaque in each format (the upper: only the kernel's).
                    let op = if is_lower {
                        rng.pick(&['o', 'O', 'U', 'Y'])
                    } else {
                        'o'
                    };
                    g.push(format!("{op} {path}"));
                }
            }
            66..74 => {
                if self.claim(&path, Kind::Other) {
                    g.push(format!("l {path} {}", random_target(rng)));
                }
            }
            74..79 => {
                if self.claim(&path, Kind::Other) {
                    g.push(format!("p {path}"));
                }
            }
            79..93 => {
                if self.claim(&path, Kind::Other) {
                    // A whiteout in each format (the upper: only the kernel's).
                    let op = if is_lower {
                        rng.pick(&['w', 'w', 'W', 'X'])
                    } else {
                        'w'
                    };
                    g.push(format!("{op} {path}"));
                }
            }
            _ if is_lower => {
                let join = |p: String, n: &str| {
                    if p.is_empty() {
                        n.to_string()
                    } else {
                        format!("{p}/{n}")
                    }
                };
                let first = join(self.link_parent(rng), LINK_NAMES[0]);
                let second = join(self.link_parent(rng), LINK_NAMES[1]);
                if self.claim(&first, Kind::Other) {
                    g.push(format!("f {first} {}", rng.pick(&CONTENTS)));
                    if self.claim(&second, Kind::Other) {
                        g.push(format!("h {second} {first}"));
                    }
                }
            }
            _ => {
                // In the upper, hard links are ordinary files: any names.
                let second = random_path(rng);
                if self.claim(&path, Kind::Other) {
                    g.push(format!("f {path} {}", rng.pick(&CONTENTS)));
                    if self.claim(&second, Kind::Other) {
                        g.push(format!("h {second} {path}"));
                    }
                }
            }
        }
        if !g.is_empty() {
            self.groups.push(g);
        }
    }
}

fn random_layer(rng: &mut Rng, is_lower: bool) -> Vec<Group> {
    let mut l = LayerGen::default();
    for _ in 0..3 + rng.below(8) {
        l.add(rng, is_lower);
    }
    l.groups
}

/// The merged view the kernel shows at one step: every path (depth ≤ 4) by type.
struct View {
    files: Vec<String>,
    dirs: Vec<String>,
    others: Vec<String>,
}

impl View {
    fn read(root: &Path) -> View {
        let mut v = View {
            files: Vec::new(),
            dirs: Vec::new(),
            others: Vec::new(),
        };
        v.walk(root, "", 0);
        v
    }

    fn walk(&mut self, root: &Path, rel: &str, depth: usize) {
        let Ok(rd) = std::fs::read_dir(root.join(rel)) else {
            return;
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            let p = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let Ok(md) = std::fs::symlink_metadata(root.join(&p)) else {
                continue;
            };
            if md.is_dir() {
                self.dirs.push(p.clone());
                if depth < 3 {
                    self.walk(root, &p, depth + 1);
                }
            } else if md.is_file() {
                self.files.push(p);
            } else {
                self.others.push(p);
            }
        }
    }
}

/// What an operation wants to name.
#[derive(Clone, Copy)]
enum Want {
    File,
    Dir,
    /// Not a directory.
    NonDir,
    /// Neither a directory nor a regular file (symlinks, FIFOs).
    Other,
    Any,
    /// Mostly a name not in use yet.
    New,
}

/// Chooses the paths of one operation from the current view: mostly existing objects of the
/// wanted type, else new names in existing directories, else anything over the alphabet.
struct Chooser<'a> {
    view: &'a View,
}

impl Chooser<'_> {
    /// A path; with `plain`, one through no hard-link name (for anything that may copy up).
    fn path(&self, rng: &mut Rng, want: Want, plain: bool) -> &'static str {
        for _ in 0..20 {
            let p = self.try_path(rng, want);
            if !plain || !through_link(&p) {
                return leak(p);
            }
        }
        leak(random_path(rng))
    }

    /// A directory and the name of something in it (mostly a non-directory, not through a
    /// hard-link name), for `Op::ListUnlinking`.
    fn child(&self, rng: &mut Rng) -> (&'static str, &'static str) {
        let p = self.path(rng, Want::NonDir, true);
        match p.rsplit_once('/') {
            Some((dir, name)) => (dir, name),
            None => ("", p),
        }
    }

    fn try_path(&self, rng: &mut Rng, want: Want) -> String {
        let v = self.view;
        let existing: Vec<&String> = match want {
            Want::File => v.files.iter().collect(),
            Want::Dir => v.dirs.iter().collect(),
            Want::NonDir => v.files.iter().chain(&v.others).collect(),
            Want::Other => v.others.iter().collect(),
            Want::Any | Want::New => v.files.iter().chain(&v.dirs).chain(&v.others).collect(),
        };
        let new_pct = if matches!(want, Want::New) { 60 } else { 15 };
        let r = rng.below(100);
        if r < 90 - new_pct && !existing.is_empty() {
            return existing[rng.below(existing.len())].clone();
        }
        if r < 90 {
            let name = rng.pick(&NAMES);
            if v.dirs.is_empty() || rng.pct(25) {
                return name.to_string();
            }
            let d = &v.dirs[rng.below(v.dirs.len())];
            if d.split('/').count() < 3 {
                return format!("{d}/{name}");
            }
        }
        random_path(rng)
    }
}

fn random_op(rng: &mut Rng, c: &Chooser) -> Op {
    use Want::*;
    let data = rng.pick(&DATA);
    let op = match rng.below(114) {
        0..8 => Op::Read(c.path(rng, File, false)),
        8..16 => Op::Stat(c.path(rng, Any, false)),
        16..22 => Op::List(if rng.pct(15) {
            ""
        } else {
            c.path(rng, Dir, false)
        }),
        22..27 => Op::Write(c.path(rng, File, true), data),
        27..32 => Op::Append(c.path(rng, File, true), data),
        32..35 => Op::Truncate(
            c.path(rng, File, true),
            rng.pick(&[0, 1, 3, 8, 4097, 1 << 20]),
        ),
        35..38 => Op::Rewrite(c.path(rng, File, true), data),
        38..43 => Op::Create(c.path(rng, New, false), data),
        43..49 => Op::Unlink(c.path(rng, NonDir, false)),
        49..53 => Op::Rmdir(c.path(rng, Dir, false)),
        53..54 => Op::RmRf(c.path(rng, Dir, false)),
        54..59 => Op::Mkdir(
            c.path(rng, New, false),
            rng.pick(&[0o755, 0o700, 0o555, 0o777]),
        ),
        59..60 => Op::MkdirP(c.path(rng, New, true)),
        60..66 => Op::Rename(c.path(rng, Any, true), c.path(rng, New, false)),
        66..69 => Op::RenameNoreplace(c.path(rng, Any, true), c.path(rng, New, false)),
        69..72 => Op::RenameExchange(c.path(rng, Any, true), c.path(rng, Any, true)),
        72..76 => Op::Link(c.path(rng, NonDir, true), c.path(rng, New, false)),
        76..79 => Op::Symlink(leak(random_target(rng)), c.path(rng, New, false)),
        79..82 => Op::Chmod(c.path(rng, Any, true), rng.pick(&CHMOD_MODES)),
        82..83 => {
            let (u, g) = rng.pick(&[(0, 0), (65534, 65534), (1, 2)]);
            Op::Chown(c.path(rng, Any, true), u, g)
        }
        83..87 => Op::SetXattr(
            c.path(rng, Any, true),
            rng.pick(&XATTR_KEYS),
            rng.pick(&XATTR_VALUES),
        ),
        87..90 => Op::RemoveXattr(c.path(rng, Any, true), rng.pick(&XATTR_KEYS)),
        90..92 => Op::GetXattr(c.path(rng, Any, false), rng.pick(&XATTR_KEYS)),
        92..94 => Op::ListXattr(c.path(rng, Any, false)),
        94..97 => Op::Mkfifo(c.path(rng, New, false)),
        97..98 => Op::MknodChar(c.path(rng, New, false), 0, 0),
        98..100 => Op::Readlink(c.path(rng, Other, false)),
        100..101 => Op::Utimes(c.path(rng, Any, true), 5),
        101..105 => Op::WriteAt(
            c.path(rng, File, true),
            rng.pick(&OFFSETS),
            rng.pick(&LENGTHS),
        ),
        105..108 => Op::MmapWrite(c.path(rng, File, true), rng.pick(&OFFSETS), data),
        108..111 => {
            let (dir, name) = c.child(rng);
            Op::ListUnlinking(dir, name)
        }
        _ => Op::Seekdir(
            if rng.pct(25) {
                ""
            } else {
                c.path(rng, Dir, false)
            },
            rng.below(5),
        ),
    };
    // No `rm -rf` as nobody (see the module documentation).
    if rng.pct(NOBODY_PCT) && !matches!(op, Op::RmRf(_)) {
        Op::Nobody(Box::leak(Box::new(op)))
    } else {
        op
    }
}

/// The operations of a plan, each chosen from what the kernel's merged view shows after the
/// ones before, so that most act on something: the layers are mounted by kernel overlayfs to
/// generate them.
fn random_ops(rng: &mut Rng, lowers: &[Vec<Group>], upper: &[Group]) -> Vec<Op> {
    let descs: Vec<String> = lowers
        .iter()
        .map(|l| crate::fixture::kernel_format(&layer_desc(l)))
        .collect();
    let descs: Vec<&str> = descs.iter().map(String::as_str).collect();
    let stack = Stack::with_upper(&descs, &layer_desc(upper));
    std::fs::set_permissions(stack.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let kernel = KernelMount::mount(stack);
    let mut ops = Vec::new();
    for _ in 0..20 + rng.below(21) {
        let view = View::read(kernel.mnt());
        let op = random_op(rng, &Chooser { view: &view });
        run(kernel.mnt(), op);
        ops.push(op);
    }
    ops
}

fn random_plan(seed: u64) -> Plan {
    let mut rng = Rng(seed);
    let lowers = (0..3 + rng.below(2))
        .map(|_| random_layer(&mut rng, true))
        .collect();
    let upper = if rng.pct(30) {
        random_layer(&mut rng, false)
    } else {
        Vec::new()
    };
    let mut plan = Plan {
        lowers,
        upper,
        ops: Vec::new(),
    };
    plan.drop_listed_whiteouts();
    plan.ops = random_ops(&mut rng, &plan.lowers, &plan.upper);
    plan.drop_removed_xwhiteouts();
    // Without those, a directory may no longer be merged and list its whiteouts.
    plan.drop_listed_whiteouts();
    plan
}

/// What each path of a layer is (ancestors of entries are directories).
fn kinds(groups: &[Group]) -> BTreeMap<String, char> {
    let mut kinds = BTreeMap::new();
    for line in groups.iter().flatten() {
        let mut it = line.split(' ');
        let (op, path) = (it.next().unwrap(), it.next().unwrap());
        if matches!(op, "x" | "m" | "u") {
            continue;
        }
        let comps: Vec<&str> = path.split('/').collect();
        for i in 1..comps.len() {
            kinds.entry(comps[..i].join("/")).or_insert('d');
        }
        let kind = match op {
            "O" | "U" | "Y" => 'o',
            "W" | "X" => 'w',
            "s" | "F" => 'f',
            _ => op.chars().next().unwrap(),
        };
        kinds.insert(path.to_string(), kind);
    }
    kinds
}

/// The layers (indexes into `layers`, top first) that the kernel merges for directory `dir`.
fn merged_layers(layers: &[BTreeMap<String, char>], dir: &str) -> Vec<usize> {
    let mut active: Vec<usize> = (0..layers.len()).collect();
    let mut prefix = String::new();
    for comp in dir.split('/') {
        prefix = if prefix.is_empty() {
            comp.to_string()
        } else {
            format!("{prefix}/{comp}")
        };
        let mut next = Vec::new();
        for &i in &active {
            match layers[i].get(&prefix) {
                None => {}
                Some('d') => next.push(i),
                Some('o') => {
                    next.push(i);
                    break;
                }
                Some(_) => break,
            }
        }
        active = next;
    }
    active
}

fn layer_desc(groups: &[Group]) -> String {
    groups
        .iter()
        .flatten()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
}

impl Plan {
    fn script(&self) -> Script {
        let lowers: Vec<&'static str> = self.lowers.iter().map(|l| leak(layer_desc(l))).collect();
        Script {
            lowers: Vec::leak(lowers),
            upper: leak(layer_desc(&self.upper)),
            ops: Vec::leak(self.ops.clone()),
        }
    }

    /// Runs the plan on both implementations; a panic (an unexpected error while comparing)
    /// counts as a failure too.
    fn compare(&self) -> Result<(), String> {
        let script = self.script();
        let r = catch_unwind(AssertUnwindSafe(|| compare(&script, |_| {})));
        r.unwrap_or_else(|p| {
            Err(p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into()))
        })
    }

    /// The plan's failure, if any.
    fn failure(&self) -> Option<String> {
        self.compare().err()
    }

    /// Drops operations, then whole lowers, then layer entries, one at a time while the plan
    /// still fails.
    fn shrink(mut self) -> (Plan, String, usize) {
        let mut err = self.failure().unwrap_or_default();
        let mut runs = 1;
        let mut progress = true;
        while progress && runs < SHRINK_BUDGET {
            progress = false;
            for i in (0..self.ops.len()).rev() {
                if runs >= SHRINK_BUDGET {
                    break;
                }
                let mut c = self.clone();
                c.ops.remove(i);
                runs += 1;
                if let Some(e) = c.failure() {
                    (self, err, progress) = (c, e, true);
                }
            }
            for l in (0..self.lowers.len()).rev() {
                if self.lowers.len() > 1 && runs < SHRINK_BUDGET {
                    let mut c = self.clone();
                    c.lowers.remove(l);
                    c.drop_listed_whiteouts();
                    runs += 1;
                    if let Some(e) = c.failure() {
                        (self, err, progress) = (c, e, true);
                    }
                }
            }
            for l in 0..=self.lowers.len() {
                let len = self.lowers.get(l).unwrap_or(&self.upper).len();
                for i in (0..len).rev() {
                    if runs >= SHRINK_BUDGET {
                        break;
                    }
                    let mut c = self.clone();
                    match c.lowers.get_mut(l) {
                        Some(groups) => groups.remove(i),
                        None => c.upper.remove(i),
                    };
                    c.drop_listed_whiteouts();
                    runs += 1;
                    if let Some(e) = c.failure() {
                        (self, err, progress) = (c, e, true);
                    }
                }
            }
        }
        (self, err, runs)
    }

    /// Removes the whiteouts that kernel overlayfs would list: it reads a directory that only
    /// one layer provides (no merge) straight from that layer, whiteouts included, although
    /// lookups of them fail; unionmount hides them. A whiteout is kept only at the root (always
    /// merged) or in a directory that its layer and at least one other provide. The kernel
    /// also lists an xattr whiteout (`X`) in the lowest layer of a merge: one is kept only
    /// where a layer below its own takes part in the merge.
    fn drop_listed_whiteouts(&mut self) {
        loop {
            let layers: Vec<BTreeMap<String, char>> = std::iter::once(&self.upper)
                .chain(&self.lowers)
                .map(|l| kinds(l))
                .collect();
            let listed = |layer: usize, g: &Group| {
                let Some(path) = ["w ", "W ", "X "].iter().find_map(|p| g[0].strip_prefix(p))
                else {
                    return false;
                };
                let merged = match path.rsplit_once('/') {
                    Some((dir, _)) => merged_layers(&layers, dir),
                    None => (0..layers.len()).collect(),
                };
                let lowest = merged.iter().all(|&i| i <= layer);
                (merged.len() < 2 && path.contains('/'))
                    || !merged.contains(&layer)
                    || (g[0].starts_with('X') && lowest)
            };
            let found = std::iter::once(&mut self.upper)
                .chain(&mut self.lowers)
                .enumerate()
                .find_map(|(i, l)| l.iter().position(|g| listed(i, g)).map(|j| (l, j)));
            match found {
                Some((l, j)) => {
                    l.remove(j);
                }
                None => return,
            }
        }
    }

    /// Removes the xattr whiteouts in directories that an operation may remove or replace
    /// (rmdir, `rm -rf`, a rename onto it or an ancestor): kernel overlayfs cannot remove a
    /// directory that only xattr whiteouts make empty
    /// (`intentional_difference_rmdir_of_dir_emptied_by_xattr_whiteouts`).
    fn drop_removed_xwhiteouts(&mut self) {
        let removed: Vec<&str> = self
            .ops
            .iter()
            .flat_map(|op| {
                let op = match op {
                    Op::Nobody(inner) => *inner,
                    op => op,
                };
                match *op {
                    Op::Rmdir(p) | Op::RmRf(p) => vec![p],
                    Op::Rename(_, p) | Op::RenameNoreplace(_, p) => vec![p],
                    Op::RenameExchange(a, b) => vec![a, b],
                    _ => vec![],
                }
            })
            .collect();
        let doomed = |g: &Group| {
            let Some(path) = g[0].strip_prefix("X ") else {
                return false;
            };
            let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
            removed
                .iter()
                .any(|p| p.is_empty() || dir == *p || dir.starts_with(&format!("{p}/")))
        };
        for l in &mut self.lowers {
            l.retain(|g| !doomed(g));
        }
    }

    /// The plan as an oracle.rs test.
    fn to_test(&self, name: &str) -> String {
        let mut s = format!("#[test]\nfn {name}() {{\n    check(&Script {{\n        lowers: &[\n");
        for l in &self.lowers {
            s.push_str(&format!("            {:?},\n", layer_desc(l)));
        }
        s.push_str(&format!(
            "        ],\n        upper: {:?},\n        ops: &[\n",
            layer_desc(&self.upper)
        ));
        for op in &self.ops {
            s.push_str(&format!("            {},\n", op_code(op)));
        }
        s.push_str("        ],\n    });\n}\n");
        s
    }
}

/// `op` as Rust source for oracle.rs, modes in octal.
fn op_code(op: &Op) -> String {
    match *op {
        Op::Chmod(p, m) => format!("Op::Chmod({p:?}, 0o{m:o})"),
        Op::Mkdir(p, m) => format!("Op::Mkdir({p:?}, 0o{m:o})"),
        Op::Nobody(inner) => format!("n(&{})", op_code(inner)),
        _ => format!("Op::{op:?}"),
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        }
        Err(_) => default,
    }
}

#[test]
fn random_plans_match_kernel_overlayfs() {
    if !overlay_available() {
        return;
    }
    let plans = env_u64("UNIONMOUNT_RANDOM_PLANS", DEFAULT_PLANS);
    let first = env_u64("UNIONMOUNT_RANDOM_SEED", DEFAULT_SEED);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let failures: Mutex<Vec<(u64, Plan, String)>> = Mutex::default();
    let ops_run = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed) as u64;
                    if i >= plans {
                        break;
                    }
                    let seed = first.wrapping_add(i);
                    let plan = random_plan(seed);
                    ops_run.fetch_add(plan.ops.len(), Ordering::Relaxed);
                    if let Some(e) = plan.failure() {
                        stop.store(true, Ordering::Relaxed);
                        failures.lock().unwrap().push((seed, plan, e));
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|f| f.0);
    let Some((seed, plan, first_err)) = failures.into_iter().next() else {
        eprintln!(
            "{plans} random plans ({} operations) from seed {first}: same as the kernel ({:.1?})",
            ops_run.into_inner(),
            started.elapsed(),
        );
        return;
    };
    let original = plan.to_test(&format!("random_seed_{seed}_original"));
    let (shrunk, err, runs) = plan.shrink();
    panic!(
        "random plan with seed {seed} differs from kernel overlayfs (rerun it alone: \
         UNIONMOUNT_RANDOM_SEED={seed} UNIONMOUNT_RANDOM_PLANS=1 cargo test --test all random)\n\n\
         shrunk in {runs} runs to a test for oracle.rs:\n\n{}\nits failure:\n{err}\n\n\
         the original plan:\n\n{original}\nits failure:\n{first_err}",
        shrunk.to_test(&format!("random_seed_{seed}"))
    );
}
