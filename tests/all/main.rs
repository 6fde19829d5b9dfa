//! The one integration-test binary: modules per concern share the fixtures.

mod cli;
mod crash;
mod faults;
mod fixture;
mod formats;
mod memory;
mod mount;
mod mounted;
mod ops;
mod oracle;
mod posix;
mod random;
mod regression;
mod script;
mod security;
mod semantics;
mod stress;
