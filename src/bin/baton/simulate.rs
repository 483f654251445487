//! `baton simulate`: a fleet on the real supervisor and actors, agents simulated in memory.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use baton::simulate::{self, SimulationConfig, SimulationReport};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressStyle};

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
    if name.is_empty() || window == 0 {
        bail!("agent type {spec:?}: needs a name and a window of at least 1 token");
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
    let bar = ProgressBar::new(config.work_items);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} work items  {msg}",
        )
        .expect("valid template"),
    );
    let report = actix::System::new().block_on(simulate::run(&config, |p| {
        bar.set_position(p.finished);
        bar.set_message(format!("{} usage messages", p.messages));
    }))?;
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_table(&mut out, &report)?;
    }
    Ok(())
}

fn write_table(out: &mut impl Write, r: &SimulationReport) -> Result<()> {
    let c = &r.compactions;
    let rotations: u64 = r.rotations.values().sum();
    let by_reason = r
        .rotations
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    t.set_header(["", "value"]);
    let rows: Vec<(&str, String)> = vec![
        (
            "work items done",
            format!(
                "{} of {} ({} unfinished)",
                r.done, r.work_items, r.unfinished
            ),
        ),
        ("dead letters", r.dead_letters.to_string()),
        ("sessions started", r.sessions_started.to_string()),
        ("compactions", format!("{} ({} failed)", c.count, c.failed)),
        (
            "reduction mean / p50 / p95",
            format!(
                "{:.1}% / {:.1}% / {:.1}%",
                c.mean_reduction, c.p50_reduction, c.p95_reduction
            ),
        ),
        (
            "within the 40-50% band",
            format!("{:.1}%", c.within_target * 100.0),
        ),
        ("rotations", format!("{rotations} ({by_reason})")),
        ("failed rotations", r.failed_rotations.to_string()),
        ("fallback handoffs", r.fallback_handoffs.to_string()),
        (
            "retries / runtime warnings",
            format!("{} / {}", r.retries, r.runtime_warnings),
        ),
        (
            "usage messages",
            format!(
                "{} ({:.0}/s)",
                r.usage_messages, r.usage_messages_per_second
            ),
        ),
        ("wall time", format!("{:.2} s", r.seconds)),
        (
            "peak memory",
            format!("{:.1} MB", r.peak_memory_bytes as f64 / 1e6),
        ),
    ];
    for (k, v) in rows {
        t.add_row([k.to_string(), v]);
    }
    writeln!(out, "baton simulate, seed {}\n{t}", r.seed)?;
    Ok(())
}
