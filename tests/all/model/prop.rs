//! The proptest driver: random byte vectors, decoded by `plan`, run by `runner`.
//!
//! Deterministic by default (the same cases on every run, so CI cannot turn red by chance);
//! `UNIONMOUNT_MODEL_SEED=S` draws other cases, `UNIONMOUNT_MODEL_CASES=N` more of them.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use super::plan::Plan;
use super::runner::run;

/// Number of cases: `UNIONMOUNT_MODEL_CASES`, or a default bounded for CI.
fn cases() -> u32 {
    std::env::var("UNIONMOUNT_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// The seed of the case generator: `UNIONMOUNT_MODEL_SEED`, or a fixed one.
fn seed() -> u64 {
    std::env::var("UNIONMOUNT_MODEL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

#[test]
fn engine_agrees_with_model() {
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    };
    let seed = seed();
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &key);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let result = runner.run(&proptest::collection::vec(any::<u8>(), 0..192), |bytes| {
        let plan = Plan::decode(&bytes);
        run(&plan).map_err(|e| TestCaseError::fail(format!("{e}\nplan:\n{plan}")))
    });
    if let Err(e) = result {
        panic!("UNIONMOUNT_MODEL_SEED={seed}: {e}");
    }
}
