//! `baton`: the command line over the baton library.
//!
//! `baton run` runs a fleet of real chat agents through work items on an OpenAI-compatible
//! endpoint; `baton simulate` runs a simulated fleet on the real actors; `baton replay` replays
//! the compaction and rotation policy over recorded agent traces; `baton log` lists what a
//! journal recorded; `baton serve` serves a fleet over HTTP.
//!
//! Every subcommand ends with an [`Exit`], the process's exit code (README "Exit codes"):
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success: every item done, every trace replayed; also when the reader of standard output went away (`baton replay ... \| head -1`): a closed pipe is a normal end, not a failure (subcommands write through [`stdout`] for this) |
//! | 1 | failure: work failed, dead-lettered or unfinished, an input could not be read, or another runtime error |
//! | 2 | usage error: a flag or argument refused (by clap, or by baton's own checks through [`UsageError`]) |
//! | 3 | `baton serve --cluster`: this node lost its lease (fenced, or no heartbeat for a whole TTL); another node adopts its work |
//! | 130 | interrupted by SIGINT |
//! | 143 | terminated by SIGTERM |
//!
//! Errors are printed on standard error as `error: ...`, with control characters escaped
//! ([`output::escape`]); log lines are coloured only when standard error is a terminal (and
//! `NO_COLOR` is unset).

mod chart;
mod log;
mod output;
mod policy_args;
mod replay;
mod run;
mod serve;
mod signals;
mod simulate;
mod table;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Keep fleets of LLM agent sessions inside their context windows.
///
/// baton watches each session's usage (used / window). At 80% it compacts the session (its
/// history is replaced by a summary); at 95%, or when a compaction freed too little, it rotates
/// the session into a fresh agent of the same type that continues the work from a handoff.
#[derive(Parser)]
#[command(name = "baton", version, about, long_about)]
struct Cli {
    /// More log output on stderr (-v: info, -vv: debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(run::Args),
    Simulate(simulate::Args),
    Replay(replay::Args),
    Log(log::Args),
    Serve(serve::Args),
}

/// How a subcommand ended: the process's exit code (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: everything asked was done.
    Success,
    /// 1: some work failed, was dead-lettered or left unfinished, or an input could not be
    /// read; the subcommand has already reported what.
    Failure,
    /// 2: a usage error. Subcommands return it through [`UsageError`] rather than directly, so
    /// that the message is printed the same way as any error.
    Usage,
    /// 3: a cluster node (`baton serve --cluster`) lost its lease and stopped; another node
    /// adopts its work.
    Lost,
    /// 130: stopped by SIGINT (after its report).
    Interrupted,
    /// 143: stopped by SIGTERM (after its report).
    Terminated,
}

impl Exit {
    /// The numeric exit code.
    pub const fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Failure => 1,
            Self::Usage => 2,
            Self::Lost => 3,
            Self::Interrupted => 130,
            Self::Terminated => 143,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

/// What a subcommand's `run` may return on success: `()` (plain success) or an [`Exit`]
/// (success, failure after a report, or an interruption). Lets a subcommand move from
/// `Result<()>` to `Result<Exit>` without a change here.
pub trait IntoExit {
    /// The exit this value stands for.
    fn into_exit(self) -> Exit;
}

impl IntoExit for () {
    fn into_exit(self) -> Exit {
        Exit::Success
    }
}

impl IntoExit for Exit {
    fn into_exit(self) -> Exit {
        self
    }
}

/// A flag or argument refused by baton's own checks (one clap cannot express): exits 2, like
/// clap's own usage errors. Build it with [`usage`], or `.map_err(usage)` a validation error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A usage error (exit 2) saying `message` (which should name the flag).
pub fn usage(message: impl std::fmt::Display) -> anyhow::Error {
    UsageError(message.to_string()).into()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A simulation injects failures on purpose and reports them in its table: its warnings
    // are noise unless asked for.
    let quiet = if matches!(cli.command, Command::Simulate(_)) {
        "error"
    } else {
        "warn"
    };
    let level = match cli.verbose {
        0 => quiet,
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_ansi(colour_on_stderr())
        .fmt_fields(escaped_fields())
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Run(args) => run::run(args).map(IntoExit::into_exit),
        Command::Simulate(args) => simulate::run(args).map(IntoExit::into_exit),
        Command::Replay(args) => replay::run(args).map(IntoExit::into_exit),
        Command::Log(args) => log::run(args).map(IntoExit::into_exit),
        Command::Serve(args) => serve::run(args).map(IntoExit::into_exit),
    };
    finish(result).into()
}

/// Whether log lines on standard error may carry ANSI colour: only on a terminal, and not when
/// `NO_COLOR` is set (<https://no-color.org>).
fn colour_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Log fields formatted as the default formatter does (`name=value`, the message bare), with
/// control characters escaped in every value: log lines carry outside data (trace names, server
/// messages, journal fields), and an ESC sequence in one must not reach the terminal.
fn escaped_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        let text = output::escape(&text);
        if field.name() == "message" {
            write!(w, "{text}")
        } else {
            write!(w, "{field}={text}")
        }
    })
    .delimited(" ")
}

/// The exit for a subcommand's result, printing its error (escaped) if it failed.
fn finish(result: anyhow::Result<Exit>) -> Exit {
    match result {
        Ok(exit) => exit,
        Err(e) if is_stdout_closed(&e) => Exit::Success,
        Err(e) => {
            eprintln!("error: {}", output::escape(&chain_message(&e)));
            // Refusing to write over an input is refused usage, whichever subcommand it was.
            let refused = |c: &(dyn std::error::Error + 'static)| {
                c.is::<UsageError>()
                    || matches!(
                        c.downcast_ref::<output::OutputError>(),
                        Some(output::OutputError::WouldOverwriteInput { .. })
                    )
            };
            if e.chain().any(refused) {
                Exit::Usage
            } else {
                Exit::Failure
            }
        }
    }
}

/// Whether `e` is standard output closed by its reader (`| head -1`), as [`stdout`] reports
/// it: writing more is pointless, and nothing failed. A broken pipe elsewhere (a server that hung
/// up) is a real failure and is not taken for this.
fn is_stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<StdoutClosed>()
            || c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
}

/// Standard output closed by its reader: the error [`stdout`]'s writes fail with then.
#[derive(Debug, thiserror::Error)]
#[error("standard output closed by its reader")]
pub struct StdoutClosed;

/// Standard output for a subcommand's results (locked, buffered by std per line). A write
/// that fails because the reader went away fails with [`StdoutClosed`] inside the `io::Error`,
/// which `main` turns into a quiet exit 0; every other error is passed through unchanged.
pub fn stdout() -> Stdout {
    Stdout(std::io::stdout().lock())
}

/// See [`stdout`].
pub struct Stdout(std::io::StdoutLock<'static>);

impl Stdout {
    fn closed(e: std::io::Error) -> std::io::Error {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, StdoutClosed)
        } else {
            e
        }
    }
}

impl std::io::Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(Self::closed)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(Self::closed)
    }
}

/// The error and its causes on one line, each cause once: the library's errors already name
/// their source in their own message, so a cause that message contains is not repeated.
pub fn chain_message(e: &anyhow::Error) -> String {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(io).context("t.json: cannot read: no such file");
        assert_eq!(chain_message(&e), "t.json: cannot read: no such file");
    }

    #[test]
    fn a_cause_not_in_the_message_is_appended() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(io).context("reading the work items");
        assert_eq!(chain_message(&e), "reading the work items: no such file");
    }

    #[test]
    fn exit_codes_are_the_documented_ones() {
        let codes: Vec<u8> = [
            Exit::Success,
            Exit::Failure,
            Exit::Usage,
            Exit::Lost,
            Exit::Interrupted,
            Exit::Terminated,
        ]
        .map(Exit::code)
        .into();
        assert_eq!(codes, [0, 1, 2, 3, 130, 143]);
    }

    #[test]
    fn a_usage_error_exits_2_even_under_context() {
        let e = usage("--window must be at least 1").context("replay");
        assert_eq!(finish(Err(e)), Exit::Usage);
        assert_eq!(finish(Err(anyhow::anyhow!("boom"))), Exit::Failure);
        let over_input = output::OutputError::WouldOverwriteInput {
            output: "j.db".into(),
            input: "j.db".into(),
        };
        let e = anyhow::Error::new(over_input).context("writing the export");
        assert_eq!(
            finish(Err(e)),
            Exit::Usage,
            "an output over an input is refused usage"
        );
        assert_eq!(finish(Ok(Exit::Interrupted)), Exit::Interrupted);
    }

    #[test]
    fn a_closed_standard_output_is_a_normal_end_and_another_broken_pipe_a_failure() {
        let closed = Stdout::closed(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(
            finish(Err(anyhow::Error::new(closed).context("writing"))),
            Exit::Success
        );
        let server = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert_eq!(
            finish(Err(
                anyhow::Error::new(server).context("sending the request")
            )),
            Exit::Failure
        );
    }
}
