//! pjdfstest 0.2.2's standard output, parsed. It has no machine-readable format: one line per
//! test, `NAME  STATUS` (ok, FAILED, skipped), detail lines (indented, or free-form for
//! multi-line panic messages) and a `Summary:` line. Only lines that are exactly a `::`-separated
//! test name and a status count, and their counts must then equal the summary's, so a missed or
//! invented line is an error rather than a wrong comparison.

use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

/// The outcome of one run of the suite.
#[derive(Debug)]
pub struct Run {
    pub results: BTreeMap<String, Status>,
    /// The first detail line printed under a failed or skipped test (its panic message or
    /// the reason for the skip).
    pub details: BTreeMap<String, String>,
    pub elapsed: Duration,
}

impl Run {
    pub fn count(&self, status: Status) -> usize {
        self.results.values().filter(|s| **s == status).count()
    }

    pub fn detail(&self, name: &str) -> &str {
        self.details.get(name).map_or("", String::as_str)
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} pass, {} fail, {} skip ({} tests, {:.1} s)",
            self.count(Status::Pass),
            self.count(Status::Fail),
            self.count(Status::Skip),
            self.results.len(),
            self.elapsed.as_secs_f64()
        )
    }
}

/// Parses pjdfstest's standard output (see the module header for its shape).
pub fn parse(out: &str) -> Result<Run, String> {
    let out = strip_ansi(out);
    let mut results = BTreeMap::new();
    let mut details = BTreeMap::new();
    let mut last: Option<&str> = None;
    let mut summary = None;
    for line in out.lines() {
        if let Some((name, status)) = result_line(line)? {
            if results.insert(name.to_string(), status).is_some() {
                return Err(format!("{name} reported twice"));
            }
            last = Some(name);
        } else if let Some(s) = line.strip_prefix("Summary: ") {
            summary = Some(s.to_string());
        } else if let Some(name) = last.filter(|n| !details.contains_key(*n)) {
            let d = line.trim();
            if !d.is_empty() {
                details.insert(name.to_string(), d.to_string());
            }
        }
    }
    let summary = summary.ok_or("no `Summary:` line")?;
    let count = |status| results.values().filter(|s| **s == status).count();
    let expected = format!(
        "{} failed, {} skipped, {} passed, 0 expected failures, {} total",
        count(Status::Fail),
        count(Status::Skip),
        count(Status::Pass),
        results.len()
    );
    if summary != expected {
        return Err(format!(
            "summary {summary:?} does not match the parsed lines ({expected})"
        ));
    }
    Ok(Run {
        results,
        details,
        elapsed: Duration::ZERO,
    })
}

/// `NAME<spaces>STATUS` with a `::`-separated test name, or None for any other line. The
/// statuses pjdfstest prints for its own expected failures are an error: `posix` keeps
/// those in its own list, so the configuration must not set any.
fn result_line(line: &str) -> Result<Option<(&str, Status)>, String> {
    let Some((name, rest)) = line.split_once(' ') else {
        return Ok(None);
    };
    let is_name = name.contains("::")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if !is_name {
        return Ok(None);
    }
    let status = match rest.trim_start() {
        "ok" => Status::Pass,
        "FAILED" => Status::Fail,
        "skipped" => Status::Skip,
        s @ ("PASSED UNEXPECTEDLY" | "failed as expected") => {
            return Err(format!(
                "{name}: {s:?}: the config must not list expected failures"
            ));
        }
        _ => return Ok(None),
    };
    Ok(Some((name, status)))
}

/// Removes terminal colour sequences (`ESC [ ... letter`), in case colouring is forced.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn pjdfstest_output_parsing() {
    let out = "\u{1b}[34mchmod::a::char\u{1b}[0m      FAILED\n\
               \tcalled `Result::unwrap()` on an `Err` value: EPERM\n\
               assertion `left == right` failed\n  left: 1\n right: 2\n\
               chmod::b    ok\nunlink::erofs_named     skipped\n\
               \tRemounts (allow_remount) are not allowed\n\n\
               Summary: 1 failed, 1 skipped, 1 passed, 0 expected failures, 3 total\n";
    let run = parse(out).unwrap();
    let got: Vec<_> = run.results.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    assert_eq!(
        got,
        [
            ("chmod::a::char", Status::Fail),
            ("chmod::b", Status::Pass),
            ("unlink::erofs_named", Status::Skip)
        ]
    );
    assert_eq!(
        run.detail("chmod::a::char"),
        "called `Result::unwrap()` on an `Err` value: EPERM"
    );
    // A result line lost (or a detail line taken for one) shows in the summary check.
    let lost = out.replace("chmod::b    ok\n", "");
    assert!(parse(&lost).unwrap_err().contains("does not match"));
    assert!(parse("chmod::b  ok\n").unwrap_err().contains("Summary"));
    assert!(parse(&out.replace("ok", "PASSED UNEXPECTEDLY")).is_err());
}
