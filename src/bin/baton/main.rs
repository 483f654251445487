//! `baton`: the command line over the baton library.
//!
//! `baton run` runs a fleet of real chat agents through work items on an OpenAI-compatible
//! endpoint; `baton simulate` runs a simulated fleet on the real actors; `baton replay` replays
//! the compaction and rotation policy over recorded agent traces; `baton log` lists what a
//! journal recorded.

mod chart;
mod log;
// Used by every subcommand as they are hardened; until then some of it is used by tests only.
#[allow(dead_code)]
mod output;
mod policy_args;
mod replay;
mod run;
mod signals;
mod simulate;
mod table;

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
}

fn main() -> std::process::ExitCode {
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
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Log(args) => log::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain_message(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: the library's errors already name
/// their source in their own message, so a cause that message contains is not repeated.
fn chain_message(e: &anyhow::Error) -> String {
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
    use super::chain_message;

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
}
