//! Compact, allocation-free (in the common case) forms of a node's variable parts, so a node
//! of the table fits in a few dozen bytes inline and copying one costs no heap allocation.
//!
//! - `Paths`: the union paths of an object, each followed by a NUL (a byte no path holds),
//!   in one small buffer kept inline up to `PATHS_INLINE` bytes. No path at all is the empty
//!   buffer; the root's one path "" is a single NUL. Order is kept (the first path is the one
//!   acted on).
//! - `Lowers`: the lower layers of an object, top first, as 15-bit layer indices (hence
//!   `MAX_LAYERS`), inline up to three, each carrying a flag for "this layer's copy of the
//!   directory may hold xattr whiteouts", so the flagged layers are always a subset of the
//!   lowers.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use smallvec::SmallVec;

/// Bytes of paths (NULs included) kept inside the node: a 1,000 x 1,000 tree's "d0123/f0456"
/// fits; longer paths take one heap allocation.
const PATHS_INLINE: usize = 16;

/// Layers are numbered below this (the upper, if any, is 0): a lower's index is stored in 15
/// bits. The kernel stacks at most 500 layers.
pub const MAX_LAYERS: usize = 1 << 15;
const XWHITEOUTS: u16 = 1 << 15;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct Paths(SmallVec<[u8; PATHS_INLINE]>);

impl Paths {
    pub fn one(path: &Path) -> Self {
        let mut p = Self::default();
        p.push(path);
        p
    }

    pub fn iter(&self) -> impl Iterator<Item = &Path> {
        self.0
            .split_inclusive(|&b| b == 0)
            .map(|p| Path::new(OsStr::from_bytes(&p[..p.len() - 1])))
    }

    pub fn first(&self) -> Option<&Path> {
        self.iter().next()
    }

    pub fn len(&self) -> usize {
        self.0.iter().filter(|&&b| b == 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, path: &Path) -> bool {
        self.position(path).is_some()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Appends `path` (not checked for duplicates).
    pub fn push(&mut self, path: &Path) {
        // Exact: growing by powers of two would leave up to half of a long path's buffer
        // unused in every node holding one.
        self.0.reserve_exact(path.as_os_str().len() + 1);
        self.0.extend_from_slice(path.as_os_str().as_bytes());
        self.0.push(0);
    }

    /// Removes `path` if present.
    pub fn remove(&mut self, path: &Path) {
        if let Some(range) = self.position(path) {
            self.0.drain(range);
        }
    }

    /// Makes `path` the first path, adding it if absent.
    pub fn make_first(&mut self, path: &Path) {
        self.remove(path);
        let bytes = path.as_os_str().as_bytes();
        self.0.insert_many(0, bytes.iter().copied().chain([0]));
    }

    /// Replaces every path by `f(path)` where it gives one. A directory rename calls this on
    /// every node, so an unchanged node is left as it is, without building anything.
    pub fn rewrite(&mut self, mut f: impl FnMut(&Path) -> Option<std::path::PathBuf>) {
        let mut new: Option<Paths> = None;
        for (k, p) in self.iter().enumerate() {
            match (f(p), &mut new) {
                (Some(m), None) => {
                    let mut n: Paths = self.iter().take(k).collect();
                    n.push(&m);
                    new = Some(n);
                }
                (Some(m), Some(n)) => n.push(&m),
                (None, Some(n)) => n.push(p),
                (None, None) => {}
            }
        }
        if let Some(n) = new {
            *self = n;
        }
    }

    /// The bytes of the stored path equal to `path` (compared as paths, by components, like
    /// `PathBuf`s were), its NUL included.
    fn position(&self, path: &Path) -> Option<std::ops::Range<usize>> {
        let mut start = 0;
        for p in self.iter() {
            let end = start + p.as_os_str().len() + 1;
            if p == path {
                return Some(start..end);
            }
            start = end;
        }
        None
    }
}

impl<P: AsRef<Path>> FromIterator<P> for Paths {
    fn from_iter<I: IntoIterator<Item = P>>(iter: I) -> Self {
        let mut paths = Self::default();
        for p in iter {
            paths.push(p.as_ref());
        }
        paths
    }
}

impl std::fmt::Debug for Paths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Up to `LOWERS_INLINE` layers inline (16 bytes in all: a non-directory has at most one
/// lower, a directory usually few), more in a heap vector.
#[derive(Clone, PartialEq, Eq)]
pub struct Lowers(LowersRepr);

const LOWERS_INLINE: usize = 3;

#[derive(Clone, PartialEq, Eq)]
enum LowersRepr {
    Inline(u8, [u16; LOWERS_INLINE]),
    #[expect(
        clippy::box_collection,
        reason = "a thin pointer keeps Lowers at 16 bytes; a Vec or boxed slice would make it 24"
    )]
    Heap(Box<Vec<u16>>),
}

impl Default for Lowers {
    fn default() -> Self {
        Lowers(LowersRepr::Inline(0, [0; LOWERS_INLINE]))
    }
}

impl Lowers {
    fn as_slice(&self) -> &[u16] {
        match &self.0 {
            LowersRepr::Inline(len, l) => &l[..usize::from(*len)],
            LowersRepr::Heap(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u16] {
        match &mut self.0 {
            LowersRepr::Inline(len, l) => &mut l[..usize::from(*len)],
            LowersRepr::Heap(v) => v,
        }
    }

    /// Adds lower layer `layer` below the ones already there.
    pub fn push(&mut self, layer: usize) {
        assert!(layer < MAX_LAYERS, "layer index {layer} out of range");
        let layer = layer as u16;
        match &mut self.0 {
            LowersRepr::Inline(len, l) if usize::from(*len) < LOWERS_INLINE => {
                l[usize::from(*len)] = layer;
                *len += 1;
            }
            LowersRepr::Inline(_, l) => {
                let mut v = l.to_vec();
                v.push(layer);
                self.0 = LowersRepr::Heap(Box::new(v));
            }
            LowersRepr::Heap(v) => v.push(layer),
        }
    }

    /// Flags `layer`, one of the lowers, as possibly holding xattr whiteouts.
    pub fn mark_xwhiteouts(&mut self, layer: usize) {
        let l = self.as_mut_slice();
        match l
            .iter_mut()
            .find(|l| usize::from(**l & !XWHITEOUTS) == layer)
        {
            Some(l) => *l |= XWHITEOUTS,
            None => debug_assert!(false, "xattr whiteouts in {layer}, not a lower"),
        }
    }

    /// The layers, top first.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.with_xwhiteouts().map(|(l, _)| l)
    }

    /// The layers, top first, each with whether it may hold xattr whiteouts.
    pub fn with_xwhiteouts(&self) -> impl Iterator<Item = (usize, bool)> + '_ {
        self.as_slice()
            .iter()
            .map(|&l| (usize::from(l & !XWHITEOUTS), l & XWHITEOUTS != 0))
    }

    pub fn first(&self) -> Option<usize> {
        self.iter().next()
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

impl std::fmt::Debug for Lowers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.with_xwhiteouts()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(p: &Paths) -> Vec<&str> {
        p.iter().map(|p| p.to_str().unwrap()).collect()
    }

    #[test]
    fn paths_keep_order_and_tell_no_path_from_the_root_path() {
        let mut p = Paths::default();
        assert!(p.is_empty());
        assert_eq!(p.first(), None);
        p.push(Path::new(""));
        assert_eq!((p.len(), p.first()), (1, Some(Path::new(""))));
        let long = Path::new("usr/share/doc/unionmount/changelog.gz");
        assert_eq!(Paths::one(long).0.capacity(), long.as_os_str().len() + 1);
        let mut p: Paths = ["a/b", "a/long/enough/to/leave/the/inline/buffer", "c"]
            .into_iter()
            .collect();
        assert_eq!(p.len(), 3);
        p.make_first(Path::new("c"));
        assert_eq!(strs(&p)[..2], ["c", "a/b"]);
        p.make_first(Path::new("d"));
        assert_eq!(strs(&p)[..2], ["d", "c"]);
        // Equal as paths though not byte for byte: the stored bytes go.
        p.remove(Path::new("a//b/"));
        p.remove(Path::new("a"));
        assert!(!p.contains(Path::new("a/b")));
        assert_eq!(p.len(), 3);
        p.rewrite(|p| p.strip_prefix("a").ok().map(|r| Path::new("x").join(r)));
        assert_eq!(
            strs(&p),
            ["d", "c", "x/long/enough/to/leave/the/inline/buffer"]
        );
        let before = p.clone();
        p.rewrite(|p| p.strip_prefix("y").ok().map(Path::to_path_buf));
        assert_eq!(p, before, "nothing moves");
        p.clear();
        assert!(p.is_empty());
    }

    #[test]
    fn lowers_carry_their_xwhiteout_flags() {
        let mut l = Lowers::default();
        for layer in [3, 4, 5, MAX_LAYERS - 1] {
            l.push(layer);
        }
        l.mark_xwhiteouts(4);
        l.mark_xwhiteouts(MAX_LAYERS - 1);
        assert_eq!(
            l.with_xwhiteouts().collect::<Vec<_>>(),
            [(3, false), (4, true), (5, false), (MAX_LAYERS - 1, true)]
        );
        assert_eq!((l.first(), l.len()), (Some(3), 4));
        l.clear();
        assert!(l.is_empty());
        assert_eq!(std::mem::size_of::<Lowers>(), 16);
    }
}
