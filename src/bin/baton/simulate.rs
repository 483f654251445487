//! `baton simulate`: a fleet on the real supervisor and actors, agents simulated in memory.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use baton::Usage;
use baton::simulate::{self, SimulationConfig};

use crate::policy_args::PolicyArgs;

/// Simulate a fleet of agent sessions and report what baton did.
///
/// Runs the real supervisor and session actors over an in-memory runtime whose agents grow
/// their context the way recorded real agents did (a mini-swe-agent DeepSeek run and an
/// OpenHands Claude run), scaled to each agent type's window. Each work item is worked on for
/// a number of turns, then its session is closed. Compactions and rotations happen live.
/// Seeded: the same flags give the same totals.
#[derive(clap::Args)]
pub struct Args {
    /// Live sessions at most.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    sessions: usize,
    /// Work items to get done (default: twice --sessions).
    #[arg(long, value_name = "N")]
    work_items: Option<u64>,
    /// Agent types as NAME:WINDOW, comma-separated; work items are spread over them.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sonnet:200000,haiku:32000,local-qwen:8192",
        value_name = "NAME:WINDOW,..."
    )]
    agent_types: Vec<String>,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Share of runtime calls that fail at random (transiently).
    #[arg(long, default_value_t = 0.01, value_name = "RATIO")]
    failure_rate: f64,
    /// Seed for the workload and the failures.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Stop after this long (e.g. 30s, 2m) even if work remains.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    duration: Option<Duration>,
    /// Turns per work item, as MIN..MAX.
    #[arg(long, default_value = "60..240", value_name = "MIN..MAX")]
    turns: String,
    /// Threads to run session actors on (default: one per core).
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

fn agent_type(spec: &str) -> Result<(String, u64)> {
    let (name, window) = spec
        .split_once(':')
        .with_context(|| format!("agent type {spec:?} is not NAME:WINDOW"))?;
    let window: u64 = window
        .parse()
        .with_context(|| format!("agent type {spec:?}: window {window:?} is not a number"))?;
    if name.is_empty() || window == 0 || window > Usage::MAX_TOKENS {
        bail!(
            "agent type {spec:?}: needs a name and a window of 1 to {} tokens",
            Usage::MAX_TOKENS
        );
    }
    Ok((name.to_string(), window))
}

fn turns(spec: &str) -> Result<(u32, u32)> {
    let (a, b) = spec
        .split_once("..")
        .with_context(|| format!("--turns {spec:?} is not MIN..MAX"))?;
    let (a, b): (u32, u32) = (a.trim().parse()?, b.trim().parse()?);
    if a == 0 || a > b {
        bail!("--turns {spec:?}: need 1 <= MIN <= MAX");
    }
    Ok((a, b))
}

pub fn run(args: Args) -> Result<()> {
    let config = SimulationConfig {
        sessions: args.sessions,
        work_items: args.work_items.unwrap_or(args.sessions as u64 * 2),
        agent_types: args
            .agent_types
            .iter()
            .map(|s| agent_type(s))
            .collect::<Result<_>>()?,
        policy: args.policy.policy()?,
        failure_rate: args.failure_rate,
        seed: args.seed,
        duration: args.duration,
        turns: turns(&args.turns)?,
        summary_ratio: 0.5,
        shards: args
            .shards
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    };
    let bar = crate::table::progress_bar(config.work_items);
    let report = actix::System::new().block_on(simulate::run(&config, |p| {
        bar.set_position(p.finished);
        bar.set_message(format!("{} usage messages", p.messages));
    }))?;
    bar.finish_and_clear();
    crate::table::write_report(args.json, &report, |out, r| {
        let title = format!("baton simulate, seed {}", r.seed);
        crate::table::write_fleet_table(out, &title, r)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_type_windows_outside_what_usage_holds_are_refused() {
        assert_eq!(agent_type("qwen:8192").unwrap(), ("qwen".to_string(), 8192));
        let max = format!("big:{}", Usage::MAX_TOKENS);
        assert_eq!(agent_type(&max).unwrap().1, Usage::MAX_TOKENS);
        for bad in [
            format!("big:{}", Usage::MAX_TOKENS + 1),
            "zero:0".into(),
            ":10".into(),
        ] {
            let error = agent_type(&bad).unwrap_err().to_string();
            assert!(
                error.contains("window of 1 to 4294967295 tokens"),
                "{bad}: {error}"
            );
        }
    }
}
