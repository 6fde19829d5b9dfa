//! The proptest driver: random byte vectors, decoded by `plan`, run by `runner`.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::plan::Plan;
use super::runner::run;

/// Number of cases: `UNIONMOUNT_MODEL_CASES`, or a default bounded for CI.
fn cases() -> u32 {
    std::env::var("UNIONMOUNT_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

#[test]
fn engine_agrees_with_model() {
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&proptest::collection::vec(any::<u8>(), 0..192), |bytes| {
        let plan = Plan::decode(&bytes);
        run(&plan).map_err(|e| TestCaseError::fail(format!("{e}\nplan:\n{plan}")))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
