//! `baton replay`: the policy replayed over recorded traces.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use baton::UsageSource;
use baton::provider::{Distrust, WindowSource};
use baton::replay::{ReplayEventKind, ReplayOptions, ReplayReport, replay_with_series};
use baton::trace;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::chart::{Panel, draw};
use crate::policy_args::PolicyArgs;

/// Replay the policy over recorded agent traces: when would baton have compacted and rotated?
///
/// Each call's context is prompt_tokens + completion_tokens. A compaction or rotation at call k
/// leaves base + S tokens (base: the first call's prompt_tokens; S: --summary-tokens); later
/// calls grow from there by what the trace recorded. See the README for the exact model.
///
/// Formats (detected from the content): mini-swe-agent trajectories (*.traj.json), SWE-agent
/// trajectories (*.traj; calls rebuilt from the history with cl100k_base), OpenHands event
/// streams and evaluation output.jsonl, Codex rollouts (rollout-*.jsonl), Claude Code session
/// logs, and plain series as JSON Lines or CSV with prompt_tokens and completion_tokens per call.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Trace files to replay, one report per trace (an OpenHands output.jsonl holds one per
    /// instance).
    #[arg(required = true, value_name = "TRACE")]
    traces: Vec<PathBuf>,
    /// Context window in tokens. Without it, a trace's own window is used, else baton's table
    /// for the model the trace names; required when neither applies.
    #[arg(long, value_name = "TOKENS")]
    window: Option<u64>,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Size of a compaction summary or a rotation handoff, in tokens (S).
    #[arg(long, default_value_t = ReplayOptions::DEFAULT_SUMMARY_TOKENS, value_name = "TOKENS")]
    summary_tokens: u64,
    /// Print one JSON object per trace instead of tables.
    #[arg(long)]
    json: bool,
    /// Also draw each trace's modelled context per call, with the thresholds and a marker at
    /// every compaction and rotation, into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    chart: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let policy = args.policy.policy()?;
    if args.window == Some(0) {
        anyhow::bail!("--window must be at least 1 token");
    }
    let opts = ReplayOptions {
        policy: Arc::new(policy),
        window: args.window,
        summary_tokens: args.summary_tokens,
    };
    let mut out = std::io::stdout().lock();
    let mut panels = Vec::new();
    for path in &args.traces {
        for t in trace::read_path(path)? {
            let (report, series) = replay_with_series(&t, &opts)
                .with_context(|| format!("replaying {}", path.display()))?;
            if args.json {
                serde_json::to_writer(&mut out, &report)?;
                writeln!(out)?;
            } else {
                write_table(&mut out, &report)?;
            }
            if args.chart.is_some() {
                panels.push(Panel { report, series });
            }
        }
    }
    if let Some(chart) = &args.chart {
        draw(
            chart,
            &panels,
            args.policy.compact_at,
            args.policy.rotate_at,
        )?;
        tracing::info!(path = %chart.display(), traces = panels.len(), "chart written");
    }
    Ok(())
}

fn write_table(out: &mut impl Write, r: &ReplayReport) -> Result<()> {
    let pct = |tokens: u64| format!("{tokens} ({:.1}%)", tokens as f64 * 100.0 / r.window as f64);
    let window_from = match r.window_source {
        WindowSource::User => String::new(),
        WindowSource::KnownModel => format!(
            " (baton's table for {})",
            r.model.as_deref().unwrap_or("the model")
        ),
        _ => " (recorded in the trace)".to_owned(),
    };
    let source = match r.source {
        UsageSource::Reported => "reported by the provider",
        UsageSource::Estimated => "counted by baton",
        UsageSource::Modelled => "modelled",
    };
    writeln!(
        out,
        "{}: {} calls, window {} tokens{window_from}; figures {source}",
        r.trace, r.calls, r.window
    )?;
    if let Some(first) = r.untrusted.first() {
        writeln!(
            out,
            "  warning: {} untrustworthy figure(s), first at call {} ({})",
            r.untrusted.len(),
            first.call,
            match first.why {
                Distrust::NoReport => "no usage".to_owned(),
                Distrust::ZeroPrompt => "prompt_tokens 0".to_owned(),
                Distrust::Fell { previous, reported } => {
                    format!("prompt fell from {previous} to {reported} while the conversation grew")
                }
            }
        )?;
    }
    if r.events.is_empty() {
        writeln!(
            out,
            "  no compaction or rotation: peak {}",
            pct(r.totals.peak_used)
        )?;
    } else {
        let mut table = Table::new();
        table.load_style(UTF8_FULL_CONDENSED);
        table.set_header([
            "call",
            "event",
            "session",
            "before",
            "after",
            "reduction / reason",
        ]);
        for e in &r.events {
            let (kind, detail) = match e.kind {
                ReplayEventKind::Compaction => (
                    "compaction",
                    format!("{:.1}%", e.reduction.unwrap_or_default() * 100.0),
                ),
                ReplayEventKind::Rotation => (
                    "rotation",
                    format!(
                        "{} -> session {}",
                        e.reason.map(|r| r.as_str()).unwrap_or("?"),
                        e.successor.unwrap_or_default()
                    ),
                ),
            };
            table.add_row([
                e.call.to_string(),
                kind.to_string(),
                e.session.to_string(),
                pct(e.before),
                pct(e.after),
                detail,
            ]);
        }
        writeln!(out, "{table}")?;
    }
    let t = &r.totals;
    let mean = t
        .mean_reduction
        .map(|m| format!(", mean reduction {:.1}%", m * 100.0))
        .unwrap_or_default();
    let reasons = t
        .rotations_by_reason
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    writeln!(
        out,
        "  sessions {}, compactions {} ({} in target band{mean}), rotations {}{}; peak {}\n",
        t.sessions,
        t.compactions,
        t.compactions_in_target,
        t.rotations,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({reasons})")
        },
        pct(t.peak_used),
    )?;
    Ok(())
}
