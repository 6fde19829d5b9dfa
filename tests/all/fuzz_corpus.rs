//! Replays every committed fuzz input through the fuzz targets' own functions, so that plain
//! `cargo test` (no libFuzzer, no nightly) checks the corpus and the regressions.
//!
//! Inputs live in `fuzz/corpus/<target>/` (seeds, minimised with `cargo fuzz cmin`) and
//! `fuzz/regressions/<target>/` (inputs that once crashed, kept after the fix). The target
//! bodies are `fuzz/src/targets.rs`, included here by path: the same code libFuzzer runs.

use std::path::{Path, PathBuf};

#[path = "../../fuzz/src/targets.rs"]
mod targets;

/// The committed inputs of `target`, corpus and regressions, sorted.
fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(rd) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        files.extend(rd.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
    }
    files.sort();
    files
}

/// Runs `body` on every input of `target`, naming the input that fails.
fn replay(target: &str, body: fn(&[u8])) {
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no committed inputs for fuzz target {target}"
    );
    for f in files {
        let data = std::fs::read(&f).unwrap();
        if let Err(e) = std::panic::catch_unwind(|| body(&data)) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("fuzz input {} fails: {msg}", f.display());
        }
    }
}

#[test]
fn engine_plan_corpus() {
    replay("engine_plan", targets::engine_plan);
}

#[test]
fn markers_corpus() {
    replay("markers", targets::markers);
}

#[test]
fn options_corpus() {
    replay("options", targets::options);
}
