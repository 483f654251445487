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
    /// Live sessions at most (1 to 10,000,000).
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_SESSIONS))]
    sessions: u64,
    /// Work items to get done, 1 to 100,000,000 (default: twice --sessions).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_WORK_ITEMS))]
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
    /// Stop after this long (e.g. 30s, 2m) even if work remains. The fleet's shutdown then takes
    /// at most 1 s more: the whole run ends within DURATION + 1 s, and sessions not closed by
    /// then are left, their work items counted unfinished. SIGINT and SIGTERM stop the same way.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    duration: Option<Duration>,
    /// Turns per work item, as MIN..MAX.
    #[arg(long, default_value = "60..240", value_name = "MIN..MAX")]
    turns: String,
    /// Threads to run session actors on, 1 to 1024 (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    shards: Option<u64>,
    /// Keep a journal in FILE (SQLite, created if missing; it must hold no work items):
    /// everything the fleet does, durably, for `baton log FILE`.
    #[arg(long, value_name = "FILE")]
    journal: Option<std::path::PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// The report as `--json` prints it: the fleet's report, and whether a signal stopped the run
/// (as `baton run`'s report says).
#[derive(serde::Serialize)]
struct Json<'a> {
    /// The fleet's report.
    #[serde(flatten)]
    report: &'a baton::report::FleetReport,
    /// Whether SIGINT or SIGTERM stopped the simulation before it was done.
    interrupted: bool,
}

/// Resident bytes a simulation holds, measured (`/usr/bin/time -f %M baton simulate ...` at
/// 10k and 100k sessions, 100k and 400k work items, turns 1..1): about 3.1 KB per live session
/// (its actor, machine and simulated agent) and 0.52 KB per work item, on a base of about
/// 20 MB. The estimate rounds each up.
const SESSION_BYTES: u64 = 3_600;
/// See [`SESSION_BYTES`].
const WORK_ITEM_BYTES: u64 = 640;
/// See [`SESSION_BYTES`].
const BASE_BYTES: u64 = 40 << 20;

/// The memory a simulation needs, estimated up front.
fn memory_estimate(config: &SimulationConfig) -> u64 {
    let live = (config.sessions as u64).min(config.work_items);
    BASE_BYTES
        .saturating_add(live.saturating_mul(SESSION_BYTES))
        .saturating_add(config.work_items.saturating_mul(WORK_ITEM_BYTES))
}

/// The memory the machine can give now (`MemAvailable` in /proc/meminfo), when it says.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

/// Refuses a simulation whose estimated memory is beyond what the machine has available
/// (leaving a tenth of it to everything else), saying both figures.
fn check_memory(config: &SimulationConfig, journaled: bool) -> Result<()> {
    let need = memory_estimate(config);
    let Some(available) = available_memory() else {
        return Ok(());
    };
    let usable = available / 10 * 9;
    if need > usable {
        bail!(
            "{} sessions and {} work items need about {:.1} GB of memory; this machine has {:.1} GB \
             available: give fewer --sessions or --work-items",
            config.sessions,
            config.work_items,
            need as f64 / 1e9,
            available as f64 / 1e9
        );
    }
    if journaled {
        tracing::debug!(
            need,
            available,
            "memory estimate (the journal's writer adds its own queue)"
        );
    }
    Ok(())
}

/// Open files a shard needs (its runtime's poller and waker, and a margin); the process keeps
/// this many more for itself.
const FILES_PER_SHARD: u64 = 4;
/// See [`FILES_PER_SHARD`].
const FILES_RESERVED: u64 = 64;

/// The soft limit on open files (`RLIMIT_NOFILE`, from /proc/self/limits), when it says.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    soft.parse().ok() // "unlimited" is no limit
}

/// Refuses more shards than the process can open files for, instead of failing inside the
/// actor runtime.
fn check_shards(shards: usize) -> Result<()> {
    let Some(limit) = open_file_limit() else {
        return Ok(());
    };
    let need = (shards as u64).saturating_mul(FILES_PER_SHARD) + FILES_RESERVED;
    if need > limit {
        return Err(crate::usage(format!(
            "--shards {shards} needs about {need} open files; this process may open {limit} \
             (ulimit -n): give at most {} shards, or raise the limit",
            limit.saturating_sub(FILES_RESERVED) / FILES_PER_SHARD
        )));
    }
    Ok(())
}

/// The most sessions a simulation takes.
const MAX_SESSIONS: u64 = 10_000_000;
/// The most work items a simulation takes.
const MAX_WORK_ITEMS: u64 = 100_000_000;

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
    let number = |n: &str, which: &str| -> Result<u32> {
        n.trim()
            .parse()
            .with_context(|| format!("--turns {spec:?}: {which} {n:?} is not a whole number"))
    };
    let (a, b) = (number(a, "MIN")?, number(b, "MAX")?);
    if a == 0 || a > b {
        bail!("--turns {spec:?}: need 1 <= MIN <= MAX");
    }
    Ok((a, b))
}

pub fn run(args: Args) -> Result<crate::Exit> {
    use crate::policy_args::first_duplicate;
    let agent_types: Vec<(String, u64)> = args
        .agent_types
        .iter()
        .map(|s| agent_type(s).map_err(|e| crate::usage(format!("--agent-types: {e:#}"))))
        .collect::<Result<_>>()?;
    let names: Vec<&str> = agent_types.iter().map(|(n, _)| n.as_str()).collect();
    if let Some(dup) = first_duplicate(&names) {
        return Err(crate::usage(format!(
            "--agent-types: agent type {:?} is given twice",
            crate::output::escape(dup)
        )));
    }
    let config = SimulationConfig {
        sessions: args.sessions as usize,
        work_items: args
            .work_items
            .unwrap_or(args.sessions.saturating_mul(2).min(MAX_WORK_ITEMS)),
        agent_types,
        policy: args.policy.checked()?,
        failure_rate: args.failure_rate,
        seed: args.seed,
        duration: args.duration,
        turns: turns(&args.turns).map_err(|e| crate::usage(format!("{e:#}")))?,
        summary_ratio: 0.5,
        shards: args.shards.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |s| s as usize,
        ),
        journal: match &args.journal {
            Some(path) => Some(baton::journal::Journal::open(path).with_context(|| {
                format!(
                    "--journal {}",
                    crate::output::escape(&path.to_string_lossy())
                )
            })?),
            None => None,
        },
    };
    check_memory(&config, args.journal.is_some())?;
    check_shards(config.shards)?;
    let bar = crate::table::progress_bar(config.work_items);
    // A plain tokio runtime, not an actix system: the supervisor then runs on a thread of its
    // own, so that however flooded its mailbox, the driver's clock ends the run on time.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (report, signal) = runtime.block_on(async {
        let stop = crate::signals::Stop::install(crate::signals::SIMULATE_STOPPING)
            .context("cannot handle signals")?;
        let report = simulate::run_until(
            &config,
            |p| {
                bar.set_position(p.finished);
                bar.set_message(format!("{} usage messages", p.messages));
            },
            stop.requested(),
        )
        .await?;
        anyhow::Ok((report, stop.signal()))
    })?;
    bar.finish_and_clear();
    let outcomes = crate::table::simulated_outcomes(&report);
    let json = Json {
        report: &report,
        interrupted: signal.is_some(),
    };
    crate::table::write_report(args.json, &json, |out, j| {
        let title = format!("baton simulate, seed {}", j.report.seed);
        crate::table::write_fleet_table(out, &title, j.report, &outcomes)
    })?;
    if let Some(signal) = signal {
        return Ok(signal.exit());
    }
    if outcomes.not_finished() > 0 {
        bail!(
            "{} of {} work items did not finish ({} failed, {} dead-lettered, {} unfinished)",
            outcomes.not_finished(),
            outcomes.total(),
            outcomes.failed,
            outcomes.dead_lettered,
            outcomes.unfinished
        );
    }
    Ok(crate::Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turns_range_error_names_the_flag_and_the_bad_end() {
        for (bad, expected) in [
            ("..5", "--turns \"..5\": MIN \"\" is not a whole number"),
            ("3..x", "--turns \"3..x\": MAX \"x\" is not a whole number"),
            ("7", "--turns \"7\" is not MIN..MAX"),
            ("5..3", "--turns \"5..3\": need 1 <= MIN <= MAX"),
        ] {
            let error = format!("{:#}", turns(bad).unwrap_err());
            assert!(error.contains(expected), "{bad}: {error}");
        }
        assert_eq!(turns(" 2 .. 9 ").unwrap(), (2, 9));
    }

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
