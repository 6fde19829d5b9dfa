//! Model-based testing: the in-process engine against an in-memory reference model of union
//! semantics, over random layer stacks and random operation plans.
//!
//! `plan` decodes any byte string into a plan (layers in every marker format + operations on a
//! three-name alphabet), `reference` is the model (the merged view, POSIX/overlayfs semantics
//! per operation), `runner` builds the layers, runs the plan on `unionmount::union::Union`
//! and checks each answer, the full merged view, st_ino identity and the on-disk invariants
//! (see its header). `prop` is the proptest driver of this test binary.
//!
//! Where the code lives: this directory of the test binary, not the library. The cargo-fuzz
//! crate (`fuzz/src/model.rs`) includes `plan.rs`, `reference.rs` and `runner.rs` with
//! `#[path = "../../tests/all/model/..."]` (and `fixture.rs` the same way), so the fuzz target
//! and this test share one decoder, model and runner without any of it becoming public API
//! of the shipped crate. Those files only use `crate::fixture` and `unionmount`'s public API
//! for that reason; `prop.rs` (proptest) is this binary's alone.
//!
//! Cases: 256 by default (10-40 s in a debug build on 2 cores, depending on the disk); set
//! `UNIONMOUNT_MODEL_CASES=N` for more. A failure prints the shrunk input bytes and the plan
//! it decodes to (layers in the fixture format, then the operations); add the bytes as a file
//! under `fuzz/regressions/engine_plan/` to keep it as a regression (`fuzz_corpus` runs them).

pub mod plan;
pub mod reference;
pub mod runner;

#[cfg(test)]
mod prop;
