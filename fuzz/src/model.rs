//! The model test's shared files (`tests/all/model/`), included one by one: its `mod.rs` also
//! declares the proptest driver, which belongs to the main test binary only.

#[path = "../../tests/all/model/plan.rs"]
pub mod plan;
#[path = "../../tests/all/model/reference.rs"]
pub mod reference;
#[path = "../../tests/all/model/runner.rs"]
pub mod runner;
