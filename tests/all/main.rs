//! The one integration-test binary: modules per concern share the fixtures.

mod cli;
mod crash;
mod faults;
mod fixture;
mod formats;
mod fuzz_corpus;
mod layer_tools;
mod memory;
mod model;
mod mount;
mod mount_program;
mod mounted;
mod ops;
mod oracle;
mod passthrough;
mod podman;
mod posix;
mod random;
mod reflink;
mod regression;
mod rootless;
mod script;
mod security;
mod semantics;
mod stress;
