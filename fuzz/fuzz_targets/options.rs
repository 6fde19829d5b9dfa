//! Fuzz target `options`: `LOWERS` splitting, mountinfo octal unescaping and `-o` parsing on
//! arbitrary text.
//! Invariants: no panic; split/escape/join round-trips; `unescape_octal` undoes `\ooo` of any
//! byte and never grows its input; parsed options render to a canonical `-o` string that
//! parses to the same options; a refused `-o` names the bad option.
//! The body is `unionmount_fuzz::targets::options`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| unionmount_fuzz::targets::options(data));
