//! The fuzz targets of unionmount, as plain functions (`targets`) that the libFuzzer binaries
//! in `fuzz_targets/` call, and that the main test binary's `fuzz_corpus` module replays over
//! the committed corpus and regressions without libFuzzer.
//!
//! The plan decoder, reference model and runner are the model test's own files, included by
//! path rather than exported by the library: they are test code, not unionmount's API.
//!
//! Running, from the repository root (stable Rust is enough with the sanitizer off; `-a`
//! turns on debug assertions, hence overflow checks):
//!   cargo install cargo-fuzz
//!   cargo fuzz run -s none -a engine_plan -- -max_total_time=600
//!   cargo fuzz cmin -s none -a markers
//! A crash input goes to `fuzz/regressions/<target>/` once fixed; `cargo test fuzz_corpus`
//! replays those and `fuzz/corpus/<target>/`.

#[path = "../../tests/all/fixture.rs"]
mod fixture;
#[allow(dead_code)]
mod model;
pub mod targets;
