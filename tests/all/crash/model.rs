//! The model of one worker's subtree in the crash tests: the lowers it starts from, seeded
//! scripts of primitive operations that are valid in the state they run in, and the state
//! after each, so a remounted tree can be compared with the states before and after the
//! operation the kill interrupted.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::Seen;
use crate::fixture::Stack;
use crate::random::Rng;

pub(super) const WORKERS: usize = 3;
/// Size of each worker's large lower file: big enough that a copy-up takes a while.
pub(super) const BIG: usize = 24 << 20;
/// Files in each worker's wide lower directory: emptying it leaves that many whiteouts.
pub(super) const WIDE: usize = 200;
/// Primitive operations per worker script (a directory replacement counts each unlink).
pub(super) const SCRIPT_LEN: usize = 40;

/// A seeded choice from `v`, `None` when it is empty.
fn choose<'a, T>(rng: &mut Rng, v: &'a [T]) -> Option<&'a T> {
    (!v.is_empty()).then(|| &v[rng.below(v.len())])
}

/// One object of a worker's subtree. `pure` directories were made by the script (nothing
/// below merges into them), so renaming them is allowed; lower directories give EXDEV.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Obj {
    Dir { pure: bool },
    File { content: usize, mode: u32 },
}

/// A worker's subtree: path relative to the worker's directory -> object.
pub(super) type State = BTreeMap<String, Obj>;

/// Primitive operations, each one syscall through the mount.
#[derive(Clone, Debug)]
pub(super) enum Op {
    /// chmod: a copy-up with data.
    Chmod(String, u32),
    /// open for writing, then close: a copy-up with data and nothing changed.
    OpenWrite(String),
    Rename(String, String),
    Unlink(String),
    Rmdir(String),
    Mkdir(String),
}

fn parent_of(p: &str) -> Option<&str> {
    p.rsplit_once('/').map(|(d, _)| d)
}

pub(super) fn apply(st: &State, op: &Op) -> State {
    let mut st = st.clone();
    match op {
        Op::Chmod(p, m) => {
            if let Some(Obj::File { mode, .. }) = st.get_mut(p) {
                *mode = *m;
            }
        }
        Op::OpenWrite(_) => {}
        Op::Rename(from, to) => {
            let moved: Vec<(String, Obj)> = st
                .iter()
                .filter(|(k, _)| *k == from || k.starts_with(&format!("{from}/")))
                .map(|(k, v)| (format!("{to}{}", &k[from.len()..]), v.clone()))
                .collect();
            st.retain(|k, _| !(k == from || k.starts_with(&format!("{from}/")) || k == to));
            st.extend(moved);
        }
        Op::Unlink(p) | Op::Rmdir(p) => {
            st.remove(p);
        }
        Op::Mkdir(p) => {
            st.insert(p.clone(), Obj::Dir { pure: true });
        }
    }
    st
}

fn children<'a>(st: &'a State, dir: &str) -> Vec<&'a String> {
    st.keys().filter(|k| parent_of(k) == Some(dir)).collect()
}

/// Names at the top of a worker's directory that scripts may create.
const TOP_NAMES: [&str; 10] = [
    "big", "f0", "f1", "f2", "f3", "n0", "n1", "n2", "d0", "wide",
];

/// A random script from `st`: every operation valid in the state it runs in (so any error
/// before the kill is a bug), the first one a copy-up of the large file.
pub(super) fn script(rng: &mut Rng, start: &State) -> Vec<Op> {
    let mut st = start.clone();
    let mut ops = vec![if rng.below(2) == 0 {
        Op::Chmod("big".into(), 0o640)
    } else {
        Op::OpenWrite("big".into())
    }];
    st = apply(&st, &ops[0]);
    while ops.len() < SCRIPT_LEN {
        let files: Vec<String> = st
            .iter()
            .filter(|(_, o)| matches!(o, Obj::File { .. }))
            .map(|(k, _)| k.clone())
            .collect();
        let dirs: Vec<String> = st
            .iter()
            .filter(|(_, o)| matches!(o, Obj::Dir { .. }))
            .map(|(k, _)| k.clone())
            .collect();
        let absent: Vec<String> = TOP_NAMES
            .iter()
            .filter(|n| !st.contains_key(**n))
            .map(|n| n.to_string())
            .collect();
        let mut new = Vec::new();
        match rng.below(8) {
            0 => {
                if let Some(f) = choose(rng, &files) {
                    let mode = rng.pick(&[0o600, 0o640, 0o604, 0o700]);
                    new.push(Op::Chmod(f.clone(), mode));
                }
            }
            1 => {
                if let Some(f) = choose(rng, &files) {
                    new.push(Op::OpenWrite(f.clone()));
                }
            }
            2 => {
                // A file moves onto a new name or over another file, maybe into a directory.
                let (Some(f), Some(dir)) = (choose(rng, &files), choose(rng, &dirs)) else {
                    continue;
                };
                let name = ["x0", "x1", "y0"][rng.below(3)];
                let to = if rng.below(2) == 0 {
                    format!("{dir}/{name}")
                } else {
                    TOP_NAMES[rng.below(TOP_NAMES.len())].to_string()
                };
                if to != *f && !matches!(st.get(&to), Some(Obj::Dir { .. })) {
                    new.push(Op::Rename(f.clone(), to));
                }
            }
            3 => {
                if let Some(f) = choose(rng, &files) {
                    new.push(Op::Unlink(f.clone()));
                }
            }
            4 | 5 => {
                // rm -rf of a directory, usually made again: the new one is opaque.
                if let Some(d) = choose(rng, &dirs) {
                    for c in children(&st, d) {
                        new.push(Op::Unlink(c.clone()));
                    }
                    if rng.below(3) > 0 {
                        new.push(Op::Rmdir(d.clone()));
                        if rng.below(4) > 0 {
                            new.push(Op::Mkdir(d.clone()));
                        }
                    }
                }
            }
            6 => {
                if let Some(n) = choose(rng, &absent) {
                    new.push(Op::Mkdir(n.clone()));
                }
            }
            _ => {
                // A directory the script made moves to a free name or over an empty
                // directory (maybe a merged one whose entries are all whited out).
                let pure: Vec<&String> = dirs
                    .iter()
                    .filter(|d| st.get(*d) == Some(&Obj::Dir { pure: true }))
                    .collect();
                let Some(src) = choose(rng, &pure) else {
                    continue;
                };
                let targets: Vec<String> = TOP_NAMES
                    .iter()
                    .map(|n| n.to_string())
                    .filter(|n| n != *src)
                    .filter(|n| match st.get(n) {
                        None => true,
                        Some(Obj::Dir { .. }) => children(&st, n).is_empty(),
                        Some(Obj::File { .. }) => false,
                    })
                    .collect();
                if let Some(to) = choose(rng, &targets) {
                    new.push(Op::Rename((*src).clone(), to.clone()));
                }
            }
        }
        for op in new {
            st = apply(&st, &op);
            ops.push(op);
        }
    }
    ops
}

/// The lower contents every model state refers to by index.
pub(super) struct Lower {
    pub(super) contents: Vec<Vec<u8>>,
    /// Each worker's subtree as the lowers show it.
    pub(super) start: Vec<State>,
}

/// Writes the lowers: per worker (directory `wN`) a large file, small files, a directory
/// merged across both lowers, and a wide directory in the bottom lower.
pub(super) fn build_lowers(s: &Stack, rng: &mut Rng) -> Lower {
    let mut contents = Vec::new();
    let mut starts = Vec::new();
    let (top, bottom) = (&s.lowers[0], &s.lowers[1]);
    for w in 0..WORKERS {
        let mut st = State::new();
        let mut file = |layer: &Path, rel: &str, data: Vec<u8>| {
            let p = layer.join(format!("w{w}/{rel}"));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, &data).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
            let content = contents.len();
            contents.push(data);
            st.insert(
                rel.to_string(),
                Obj::File {
                    content,
                    mode: 0o644,
                },
            );
        };
        let mut big = vec![0u8; BIG];
        for chunk in big.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next().to_le_bytes());
        }
        file(top, "big", big);
        for i in 0..4 {
            file(top, &format!("f{i}"), format!("w{w} f{i}").into_bytes());
        }
        file(top, "d0/x0", format!("w{w} d0/x0 top").into_bytes());
        file(bottom, "d0/x1", format!("w{w} d0/x1 bottom").into_bytes());
        for i in 0..WIDE {
            file(
                bottom,
                &format!("wide/y{i}"),
                format!("w{w} {i}").into_bytes(),
            );
        }
        st.insert("d0".into(), Obj::Dir { pure: false });
        st.insert("wide".into(), Obj::Dir { pure: false });
        starts.push(st);
    }
    Lower {
        contents,
        start: starts,
    }
}

/// Why `seen` (one worker's subtree) is not `model`, or `None` if it is.
pub(super) fn mismatch(
    model: &State,
    seen: &BTreeMap<String, Seen>,
    lower: &Lower,
) -> Option<String> {
    let mut why = Vec::new();
    for (path, obj) in model {
        match (obj, seen.get(path)) {
            (Obj::Dir { .. }, Some(Seen::Dir)) => {}
            (Obj::File { content, mode }, Some(Seen::File { mode: m, data })) => {
                let want = &lower.contents[*content];
                if data != want {
                    why.push(format!(
                        "{path}: {} bytes, want {} bytes{}",
                        data.len(),
                        want.len(),
                        if want.starts_with(data) {
                            " (truncated)"
                        } else {
                            ""
                        }
                    ));
                } else if mode != m {
                    why.push(format!("{path}: mode {m:o}, want {mode:o}"));
                }
            }
            (_, got) => why.push(format!("{path}: {got:?}, want {obj:?}")),
        }
    }
    for path in seen.keys().filter(|p| !model.contains_key(*p)) {
        why.push(format!("{path}: present, want absent"));
    }
    (!why.is_empty()).then(|| why.join("; "))
}
