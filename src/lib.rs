//! unionmount: a union filesystem in userspace with kernel-overlayfs semantics.
//!
//! N read-only lower directories are stacked under one read-write upper directory and served
//! as one merged tree. Architecture, from the kernel up:
//! - `sys`: the only code that makes layer syscalls; paths are resolved beneath layer roots
//!   (openat2 RESOLVE_BENEATH), fds are owned, errors are `Errno`.
//! - `format`: whiteout and opaque markers as pure functions (every format read, the kernel's
//!   written).
//! - `layer`: the layer stack; lowers are read-only, `layer::upper` owns every mutation and the
//!   workdir where copy-ups are staged.
//! - `node`: the node table (kernel references, where each object lives) and open handles.
//! - `union`: the engine, every operation of the merged view, FUSE-free and testable in-process.
//! - `fuse`: the only module that imports fuser: the adapter and the mount session.
//! - `cli`, `config`, `setup`: command line, plain configuration, mount-time validation.
//! - `tools`: the layer tools `diff`, `export`, `apply`, `check` (subcommands of the binary).
//! - [`layout`]: layer stacks for tests of layer semantics, built from a compact text
//!   description, opened in-process or mounted through FUSE, and dumped as text (see its
//!   example).
//! - `idmap`: ownership as shown (uid/gid mapping, squashing, `override_stat`) for rootless use.
//!
//! Invariants held across modules: lowers are never written; every object that appears in the
//! upper appears complete (built in the workdir, renamed into place); private overlay xattrs
//! and `.wh.*` names are never visible through the union; st_ino is unique in the mount and
//! stable across copy-up.

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod format;
pub mod fuse;
pub mod idmap;
pub mod layer;
pub mod layout;
pub mod node;
pub mod setup;
pub mod sys;
pub mod tools;
pub mod union;
