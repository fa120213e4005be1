//! Instruction counts for the in-memory benchmarks, from Valgrind's
//! callgrind: the count the shared host's noise does not move, printed
//! beside every wall-clock figure it belongs to.
//!
//! A benchmark re-runs itself under callgrind (`valgrind --tool=callgrind`)
//! with collection off except inside the functions matching a toggle
//! pattern (`--toggle-collect`, the measured loop), and dumps the counters
//! after each call of a marker function (`--dump-after`) that it calls at
//! the end of every case: the N-th dump holds the N-th case's instructions
//! alone. See the callgrind manual, "Controlling the collection".
//!
//! This VM exposes no hardware counters to `perf_event_open` (ENOENT), so
//! `perf stat -e instructions` is not an option here; callgrind counts the
//! same retired instructions by simulation (data-cache misses are not in the
//! count: that is what the wall clock shows).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Why no instruction counts were taken.
#[derive(Debug, thiserror::Error)]
pub enum CallgrindError {
    /// `valgrind` is not installed (scripts/bootstrap installs it).
    #[error("valgrind is not installed (scripts/bootstrap installs it)")]
    Missing,
    /// The child under callgrind failed.
    #[error("{program} under callgrind exited with {status}: {stderr}")]
    Failed {
        /// The program run.
        program: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its standard error.
        stderr: String,
    },
    /// A dump file could not be read or has no `totals:` line.
    #[error("{path}: {detail}")]
    Dump {
        /// The dump file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Starting valgrind or reading its output directory failed.
    #[error("running valgrind: {0}")]
    Io(#[from] std::io::Error),
}

/// One run of `program` under callgrind.
#[derive(Clone, Debug)]
pub struct Counted<'a> {
    /// The executable (usually `std::env::current_exe()`).
    pub program: &'a Path,
    /// Its arguments.
    pub args: &'a [String],
    /// Extra environment (tells the child which part to run).
    pub env: &'a [(String, String)],
    /// Instructions are collected only inside functions matching this
    /// callgrind pattern (`*` wildcards, demangled names), e.g.
    /// `*pipeline::drive*`; `None` collects everywhere (then each case's
    /// count is everything between two marker calls).
    pub collect_in: Option<&'a str>,
    /// A dump is written after every call of functions matching this
    /// pattern: the child calls it once at the end of each case.
    pub dump_after: &'a str,
    /// Where the dump files go (created; files `callgrind.out.*`).
    pub out_dir: &'a Path,
}

/// Whether `valgrind` can be run.
pub fn available() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `run` under callgrind and returns the instructions (Ir) of each
/// case, in the order of the child's marker calls.
///
/// # Errors
/// [`CallgrindError::Missing`] without valgrind; [`CallgrindError::Failed`]
/// when the child fails; [`CallgrindError::Dump`] for an unreadable dump.
pub fn count(run: &Counted<'_>) -> Result<Vec<u64>, CallgrindError> {
    if !available() {
        return Err(CallgrindError::Missing);
    }
    std::fs::create_dir_all(run.out_dir)?;
    for entry in std::fs::read_dir(run.out_dir)? {
        let path = entry?.path();
        if is_dump(&path) {
            std::fs::remove_file(path)?;
        }
    }
    let mut valgrind = Command::new("valgrind");
    valgrind.arg("--tool=callgrind");
    if let Some(pattern) = run.collect_in {
        valgrind
            .arg("--collect-atstart=no")
            .arg(format!("--toggle-collect={pattern}"));
    }
    let output = valgrind
        .arg(format!("--dump-after={}", run.dump_after))
        .arg(format!("--callgrind-out-file={}/callgrind.out", run.out_dir.display()))
        .arg(run.program)
        .args(run.args)
        .envs(run.env.iter().map(|(k, v)| (k, v)))
        .output()?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        return Err(CallgrindError::Failed {
            program: run.program.into(),
            status: output.status,
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    let mut dumps = Vec::new();
    for entry in std::fs::read_dir(run.out_dir)? {
        let path = entry?.path();
        if is_dump(&path) {
            let text = std::fs::read_to_string(&path)?;
            let part = parse_part(&text).ok_or_else(|| CallgrindError::Dump {
                path: path.clone(),
                detail: "no `part:` line".into(),
            })?;
            let totals = parse_totals(&text).ok_or_else(|| CallgrindError::Dump {
                path: path.clone(),
                detail: "no `totals:` line".into(),
            })?;
            dumps.push((part, is_marker_dump(&text), totals));
        }
    }
    // Part numbers order the dumps; the last one, at exit, has no marker.
    dumps.sort_unstable_by_key(|&(part, _, _)| part);
    Ok(dumps
        .into_iter()
        .filter(|&(_, marker, _)| marker)
        .map(|(_, _, totals)| totals)
        .collect())
}

fn is_dump(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("callgrind.out"))
}

/// The dump's sequence number (`part: N`).
fn parse_part(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("part:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether a `--dump-after` trigger wrote the dump (not program exit).
fn is_marker_dump(text: &str) -> bool {
    text.lines()
        .any(|l| l.starts_with("desc: Trigger:") && l.contains("--dump-after"))
}

/// The first event count on the `totals:` (or, in older files, `summary:`) line.
fn parse_totals(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "# callgrind format\nversion: 1\ncreator: callgrind-3.19.0\npid: 4242\ncmd:  ./pipeline\npart: 2\n\n\
        desc: I1 cache: \ndesc: Timerange: Basic block 100 - 200\ndesc: Trigger: --dump-after=*pipeline::end_of_case*\n\n\
        positions: line\nevents: Ir\nsummary: 123456\n\n\nfl=(1) ???\nfn=(1) x\n0 10\n\ntotals: 123456\n";

    #[test]
    fn a_marker_dump_gives_its_part_and_instructions() {
        assert_eq!(parse_part(DUMP), Some(2));
        assert_eq!(parse_totals(DUMP), Some(123_456));
        assert!(is_marker_dump(DUMP));
    }

    #[test]
    fn the_exit_dump_is_not_a_case() {
        let exit = DUMP.replace("--dump-after=*pipeline::end_of_case*", "Program termination");
        assert!(!is_marker_dump(&exit));
        assert_eq!(parse_totals("events: Ir\n"), None);
    }
}
