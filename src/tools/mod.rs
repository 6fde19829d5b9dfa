//! Layer tools, subcommands of the `unionmount` binary: `diff`, `export`, `apply`, `check`.
//!
//! They work on layers at rest (never on a live mount): read an upper in every marker format
//! the engine reads (`scan`, built on `format` and `layer`), look below it through the engine
//! itself (`below`), and write only the kernel's format. The binary dispatches here when its
//! first argument is a tool name, before the mount parser runs; a lower directory literally
//! named like a tool is then written `./diff`. Exit codes: 0 success, 1 failure, 2 usage
//! error; `check` is like diff(1): 0 no problem remains, 1 problems remain, 2 it could not
//! check (usage, unreadable layers, a layer in use).

pub mod apply;
pub mod below;
pub mod check;
pub mod diff;
pub mod entry;
pub mod export;
pub mod scan;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::XattrNamespace;

/// The names the binary dispatches to the tools.
pub const NAMES: [&str; 4] = ["diff", "export", "apply", "check"];

#[derive(Parser, Debug)]
#[command(
    name = "unionmount",
    about = "Layer tools (a lower directory named like a tool is written ./diff etc. when mounting)"
)]
struct Tools {
    #[command(subcommand)]
    tool: Tool,
}

#[derive(Subcommand, Debug)]
enum Tool {
    /// Print the changes of an upper layer like `docker diff`: A (added), C (changed), D
    /// (deleted) /path, sorted
    Diff {
        /// The upper layer
        upper: PathBuf,
        /// Lower layers, top first, ':'-separated ('\:' is a colon in a path): decide A or C
        /// by what is below, instead of by the upper's markers alone
        #[arg(long, value_name = "L1[:L2...]")]
        lowers: Option<OsString>,
    },
    /// Write an upper layer as an OCI layer tar (whiteouts as .wh.NAME, opaque directories as
    /// .wh..wh..opq), byte-for-byte reproducible
    Export {
        /// The upper layer
        upper: PathBuf,
        /// Where to write the tar; '-' for standard output
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
    },
    /// Unpack an OCI layer (tar, tar.gz or tar.zst) into DIR in kernel overlay format (char 0/0
    /// whiteouts, overlay.opaque xattrs); refuses entries that would escape DIR
    Apply {
        /// The layer file
        layer: PathBuf,
        /// The directory to unpack into (created if missing)
        dir: PathBuf,
        /// Write user.overlay.* markers instead of trusted.overlay.* (rootless stacks)
        #[arg(long)]
        userxattr: bool,
    },
    /// Report stale workdir temporaries, foreign marker formats and (with --lowers) whiteouts
    /// that hide nothing; exit 1 while problems remain
    Check {
        /// The upper layer
        upper: PathBuf,
        /// Its workdir
        workdir: PathBuf,
        /// Lower layers, top first, ':'-separated: also find whiteouts that hide nothing
        #[arg(long, value_name = "L1[:L2...]")]
        lowers: Option<OsString>,
        /// The markers' namespace is user.overlay.* (kernel userxattr mounts)
        #[arg(long)]
        userxattr: bool,
        /// Fix what is safe: empty the workdir's temporaries, convert foreign markers to the
        /// kernel's format, remove markers that hide nothing
        #[arg(long)]
        repair: bool,
    },
}

/// Runs a tool when `args[1]` names one; `None` lets the mount parser take the command line.
pub fn dispatch(args: &[OsString]) -> Option<ExitCode> {
    let first = args.get(1)?.to_str()?;
    if !NAMES.contains(&first) {
        return None;
    }
    let tools = match Tools::try_parse_from(args) {
        Ok(t) => t,
        Err(e) => {
            let _ = e.print();
            return Some(ExitCode::from(if e.use_stderr() { 2 } else { 0 }));
        }
    };
    Some(match run(tools.tool) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("unionmount {first}: {msg}");
            ExitCode::FAILURE
        }
    })
}

fn lowers(arg: Option<OsString>) -> Result<Option<Vec<PathBuf>>, String> {
    arg.map(|l| crate::cli::split_lowers(&l)).transpose()
}

fn namespace(userxattr: bool) -> XattrNamespace {
    if userxattr {
        XattrNamespace::User
    } else {
        XattrNamespace::Trusted
    }
}

fn run(tool: Tool) -> Result<ExitCode, String> {
    match tool {
        Tool::Diff { upper, lowers: l } => {
            let l = lowers(l)?;
            let mut out = std::io::stdout().lock();
            for c in diff::changes(&upper, l.as_deref())? {
                writeln!(out, "{c}").map_err(|e| e.to_string())?;
            }
            out.flush().map_err(|e| e.to_string())?;
        }
        Tool::Export { upper, output } => {
            if output.as_os_str() == "-" {
                export::export(&upper, std::io::stdout().lock())?;
            } else {
                let f = std::fs::File::create(&output)
                    .map_err(|e| format!("cannot create {}: {e}", output.display()))?;
                export::export(&upper, std::io::BufWriter::new(f))?;
            }
        }
        Tool::Apply {
            layer,
            dir,
            userxattr,
        } => {
            let made = !dir.exists();
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            if let Err(e) = apply::apply(&layer, &dir, namespace(userxattr)) {
                if made {
                    // Refused before anything was written: leave no trace (fails if not empty).
                    let _ = std::fs::remove_dir(&dir);
                }
                return Err(e);
            }
        }
        Tool::Check {
            upper,
            workdir,
            lowers: l,
            userxattr,
            repair,
        } => {
            let l = lowers(l)?;
            let o = check::CheckOptions {
                lowers: l.as_deref(),
                ns: namespace(userxattr),
            };
            let trouble = |msg: String| {
                eprintln!("unionmount check: {msg}");
                ExitCode::from(2)
            };
            let mut problems = match check::check(&upper, &workdir, &o) {
                Ok(p) => p,
                Err(msg) => return Ok(trouble(msg)),
            };
            if repair {
                let failed = match check::repair(&upper, &workdir, o.ns, problems) {
                    Ok(f) => f,
                    Err(msg) => return Ok(trouble(msg)),
                };
                for (p, e) in failed {
                    eprintln!("cannot fix {} {}: {e}", p.what, p.place);
                }
                problems = match check::check(&upper, &workdir, &o) {
                    Ok(p) => p,
                    Err(msg) => return Ok(trouble(msg)),
                };
            }
            for p in &problems {
                println!("PROBLEM: {} {}", p.what, p.place);
            }
            if !problems.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
