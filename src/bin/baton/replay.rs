//! `baton replay`: the policy replayed over recorded traces.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use baton::provider::{Distrust, WindowSource};
use baton::replay::{ReplayEventKind, ReplayOptions, ReplayReport, replay_with_series};
use baton::trace::{self, Trace};
use baton::{Usage, UsageSource};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::chart::{Panel, draw};
use crate::output::{self, Escaped};
use crate::policy_args::PolicyArgs;
use crate::{Exit, chain_message, usage};

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
///
/// Every trace is replayed even when another fails; each failure is printed as an error and the
/// exit code is then 1. `-` reads a trace from standard input.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Trace files to replay, one report per trace (an OpenHands output.jsonl holds one per
    /// instance); `-` is standard input.
    #[arg(required = true, value_name = "TRACE")]
    traces: Vec<PathBuf>,
    /// Context window in tokens. Without it, a trace's own window is used, else baton's table
    /// for the model the trace names; required when neither applies.
    #[arg(long, value_name = "TOKENS", value_parser = clap::value_parser!(u64).range(1..=Usage::MAX_TOKENS))]
    window: Option<u64>,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Size of a compaction summary or a rotation handoff, in tokens (S); below the window.
    #[arg(long, default_value_t = ReplayOptions::DEFAULT_SUMMARY_TOKENS, value_name = "TOKENS", value_parser = clap::value_parser!(u64).range(0..=Usage::MAX_TOKENS))]
    summary_tokens: u64,
    /// Print one JSON object per trace instead of tables.
    #[arg(long)]
    json: bool,
    /// Also draw each trace's modelled context per call, with the thresholds and a marker at
    /// every compaction and rotation, into this SVG file (written whole or not at all; never
    /// one of the traces).
    #[arg(long, value_name = "FILE.svg")]
    chart: Option<PathBuf>,
    /// Largest trace read, in bytes (256 MiB by default, at least 1); a larger one is refused
    /// without being read further.
    #[arg(long, default_value_t = trace::MAX_TRACE_BYTES, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    max_trace_bytes: u64,
}

pub fn run(args: Args) -> Result<Exit> {
    let policy = args.policy.policy().map_err(|e| usage(chain_message(&e)))?;
    if let Some(window) = args.window
        && args.summary_tokens >= window
    {
        return Err(usage(format!(
            "--summary-tokens ({}) must be below --window ({window})",
            args.summary_tokens
        )));
    }
    if let Some(chart) = &args.chart {
        output::refuse_overwrite(chart, args.traces.iter().map(PathBuf::as_path))
            .map_err(|e| usage(format!("--chart: {e}")))?;
    }
    let opts = ReplayOptions {
        policy: Arc::new(policy),
        window: args.window,
        summary_tokens: args.summary_tokens,
    };
    let mut out = crate::stdout();
    let mut panels = Vec::new();
    let mut failed = 0usize;
    for path in &args.traces {
        let traces = match read(path, args.max_trace_bytes) {
            Ok(traces) => traces,
            Err(e) => {
                report_failure(&e);
                failed += 1;
                continue;
            }
        };
        for t in traces {
            let (report, series) = match replay_with_series(&t, &opts)
                .with_context(|| format!("replaying {}", path.display()))
            {
                Ok(replayed) => replayed,
                Err(e) => {
                    report_failure(&e);
                    failed += 1;
                    continue;
                }
            };
            if args.json {
                write_json(&mut out, &report)?;
            } else {
                write_table(&mut out, &report)?;
            }
            if args.chart.is_some() {
                panels.push(Panel { report, series });
            }
        }
    }
    out.flush()?;
    if let Some(chart) = &args.chart {
        if panels.is_empty() {
            tracing::warn!(path = %chart.display(), "no trace replayed; no chart written");
        } else {
            draw(
                chart,
                args.traces.iter().map(PathBuf::as_path),
                &panels,
                args.policy.compact_at,
                args.policy.rotate_at,
            )?;
            tracing::info!(path = %chart.display(), traces = panels.len(), "chart written");
        }
    }
    Ok(if failed == 0 {
        Exit::Success
    } else {
        Exit::Failure
    })
}

/// Reads every trace in `path` (`-`: standard input), refusing more than `cap` bytes.
fn read(path: &Path, cap: u64) -> Result<Vec<Trace>> {
    let bytes = output::read_capped(path, cap, "; raise it with --max-trace-bytes")?;
    let name = if output::is_stdio(path) {
        "stdin".to_owned()
    } else {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string())
    };
    Ok(trace::parse(path, &name, &bytes)?)
}

/// Writes `value` as one line of compact JSON whose strings hold no raw control character:
/// serde_json already writes C0 controls as `\u00XX`; DEL, C1 controls (`\u009b` starts a
/// terminal sequence too) and bidirectional overrides are written as `\uXXXX` here. The JSON
/// reads back to the same strings.
fn write_json(out: &mut impl Write, value: &impl serde::Serialize) -> Result<()> {
    // Serialised first, so that a closed stdout is the plain `io::Error` `main` recognises, not
    // one wrapped in serde_json's.
    let mut line = Vec::new();
    value.serialize(&mut serde_json::Serializer::with_formatter(
        &mut line,
        output::TerminalSafeJson,
    ))?;
    line.push(b'\n');
    out.write_all(&line)?;
    Ok(())
}

/// Prints one trace's failure (escaped) and goes on with the next.
fn report_failure(e: &anyhow::Error) {
    eprintln!("error: {}", output::escape(&chain_message(e)));
}

fn write_table(out: &mut impl Write, r: &ReplayReport) -> Result<()> {
    let pct = |tokens: u64| format!("{tokens} ({:.1}%)", tokens as f64 * 100.0 / r.window as f64);
    let window_from = match r.window_source {
        WindowSource::User => String::new(),
        WindowSource::KnownModel => format!(
            " (baton's table for {})",
            Escaped(r.model.as_deref().unwrap_or("the model"))
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
        Escaped(&r.trace),
        r.calls,
        r.window
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
                Distrust::OverWindow { window, reported } => {
                    format!("context {reported} over the window {window}")
                }
                Distrust::Cumulative { .. } => {
                    "running totals, not per-call figures".to_owned()
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
