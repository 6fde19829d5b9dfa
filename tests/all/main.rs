//! The one integration-test binary: modules per concern share the fixtures.

mod cli;
mod fixture;
mod formats;
mod fuzz_corpus;
mod model;
mod mount;
mod mounted;
mod ops;
mod oracle;
mod random;
mod regression;
mod semantics;
