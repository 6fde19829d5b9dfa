//! Fuzz target `engine_plan`: bytes -> plan (layer stack + operations) -> the in-process
//! engine in a temporary directory, checked against the reference model.
//! Invariants: no panic; every answer (errno or listing) and the whole merged view agree with
//! the model; st_ino equal for hard links, unique otherwise, stable per object; lowers
//! unchanged; nothing written outside the upper and the workdir; workdir `work/` left empty.
//! The body is `unionmount_fuzz::targets::engine_plan`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| unionmount_fuzz::targets::engine_plan(data));
