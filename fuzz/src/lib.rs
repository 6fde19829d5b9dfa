//! The fuzz targets of unionmount, as plain functions (`targets`) that the libFuzzer binaries
//! in `fuzz_targets/` call, and that the main test binary's `fuzz_corpus` module replays over
//! the committed corpus and regressions without libFuzzer.
//!
//! The plan decoder, reference model and runner are the model test's own files, included by
//! path rather than exported by the library: they are test code, not unionmount's API.

#[path = "../../tests/all/fixture.rs"]
mod fixture;
#[allow(dead_code)]
mod model;
pub mod targets;
