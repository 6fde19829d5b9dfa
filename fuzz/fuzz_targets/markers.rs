//! Fuzz target `markers`: the pure marker functions of `unionmount::format` (and the name
//! check) on arbitrary bytes.
//! Invariants: no panic; `.wh.NAME` <-> NAME round-trips (the opaque marker whites out
//! nothing); marker names are exactly the `.wh.` ones; only `y`/`x` are opaque values; the
//! overlay's keys are private in both namespaces; only char 0/0 is a whiteout device.
//! The body is `unionmount_fuzz::targets::markers`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| unionmount_fuzz::targets::markers(data));
