//! `baton log`: what a journal recorded, listed and filtered.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use baton::journal::{Filter, JournalView, Timestamp};
use baton::{JournalReader, RotationReason, SessionId, WorkItemId};
use clap::ValueEnum;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

/// List what a journal recorded, as a table or as JSON Lines
///
/// Lists rotations (the default), sessions, compactions, work items or the event log.
///
/// The journal is only read (never created or changed), so this is safe while a supervisor is
/// writing it. Filters combine; --reason applies to rotations, and to events, where it keeps
/// only the events of rotations for that reason.
/// Times are RFC 3339 in UTC (2026-11-25T10:00:00Z, or just 2026-11-25) or an age before now
/// (90s, 30m, 2h, 7d).
///
/// --export writes every kind of record that matches the filters as JSON Lines, one object per
/// line with a "type" field (work_item, session, rotation, compaction, event), for other tools.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The journal file.
    #[arg(value_name = "JOURNAL")]
    journal: PathBuf,
    /// What to list.
    #[arg(value_enum, default_value_t = What::Rotations)]
    what: What,
    /// Only records about this session (a rotation matches as its old or its new session).
    #[arg(long, value_name = "ID")]
    session: Option<u64>,
    /// Only records about this work item.
    #[arg(long, value_name = "ID")]
    work_item: Option<u64>,
    /// Only records about sessions of this agent type.
    #[arg(long, value_name = "NAME")]
    agent_type: Option<String>,
    /// Only rotations for this reason (with `events`: only those rotations' events):
    /// threshold, insufficient_compaction, compaction_failed, compaction_budget or manual.
    #[arg(long, value_name = "REASON")]
    reason: Option<String>,
    /// Only records from this time on.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only records up to this time.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Only the latest N records.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// JSON Lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Every kind of record, as JSON Lines with a "type" field.
    #[arg(long, conflicts_with_all = ["json", "what"])]
    export: bool,
    /// Write to this file instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// The listings.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum What {
    /// Rotations: predecessor, successor, work item, reason, metrics.
    Rotations,
    /// Sessions: agent type, work item, state, how they ended.
    Sessions,
    /// Compactions: before, after, reduction.
    Compactions,
    /// Work items and where they are.
    Items,
    /// The event log.
    Events,
}

/// A time given on the command line: RFC 3339, or an age before now.
fn parse_time(text: &str, flag: &str) -> Result<Timestamp> {
    if let Some(t) = Timestamp::parse(text) {
        return Ok(t);
    }
    let age = text
        .find(|c: char| !c.is_ascii_digit())
        .filter(|&i| i > 0)
        .and_then(|i| {
            let n: i64 = text[..i].parse().ok()?;
            let unit_ms = match &text[i..] {
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return None,
            };
            Some(n.saturating_mul(unit_ms))
        });
    match age {
        Some(ms) => Ok(Timestamp(Timestamp::now().millis().saturating_sub(ms))),
        None => bail!(
            "{flag} {text:?}: not a time (2026-11-25T10:00:00Z, 2026-11-25) or an age (90s, 30m, 2h, 7d)"
        ),
    }
}

fn filter(args: &Args) -> Result<Filter> {
    let reason = match &args.reason {
        Some(r) => {
            let parsed: RotationReason = serde_json::from_value(serde_json::Value::String(r.clone()))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "--reason {r:?}: not a rotation reason (threshold, insufficient_compaction, compaction_failed, compaction_budget, manual, overflow)"
                    )
                })?;
            if !args.export && !matches!(args.what, What::Rotations | What::Events) {
                bail!("--reason filters rotations (and rotation events) only");
            }
            Some(parsed)
        }
        None => None,
    };
    Ok(Filter {
        session: args.session.map(SessionId),
        work_item: args.work_item.map(WorkItemId),
        agent_type: args.agent_type.clone(),
        reason,
        since: args
            .since
            .as_deref()
            .map(|t| parse_time(t, "--since"))
            .transpose()?,
        until: args
            .until
            .as_deref()
            .map(|t| parse_time(t, "--until"))
            .transpose()?,
        limit: args.limit,
    })
}

pub fn run(args: Args) -> Result<()> {
    match write(args) {
        // The reader went away (`baton log ... | head`): not an error.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .map(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            .or_else(|| {
                c.downcast_ref::<serde_json::Error>()
                    .and_then(|j| j.io_error_kind())
                    .map(|k| k == std::io::ErrorKind::BrokenPipe)
            })
            .unwrap_or(false)
    })
}

fn write(args: Args) -> Result<()> {
    let filter = filter(&args)?;
    let reader = JournalReader::open(&args.journal).context("cannot read the journal")?;
    let view = reader.view();
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    if args.export {
        export(&view, &filter, &mut out)?;
    } else if args.json {
        json_lines(&view, args.what, &filter, &mut out)?;
    } else {
        table(&view, args.what, &filter, &mut out)?;
    }
    out.flush()?;
    Ok(())
}

/// A row with its kind first, for `--export`.
#[derive(Serialize)]
struct Typed<'a, T> {
    /// `work_item`, `session`, `rotation`, `compaction` or `event`.
    #[serde(rename = "type")]
    kind: &'a str,
    /// The row's own fields, after the type.
    #[serde(flatten)]
    row: &'a T,
}

/// One JSON object per line, fields in the row's order (`"type"` first when given).
fn lines<T: Serialize>(rows: &[T], kind: Option<&str>, out: &mut dyn Write) -> Result<()> {
    for row in rows {
        match kind {
            Some(kind) => serde_json::to_writer(&mut *out, &Typed { kind, row })?,
            None => serde_json::to_writer(&mut *out, row)?,
        }
        writeln!(out)?;
    }
    Ok(())
}

fn json_lines(v: &JournalView<'_>, what: What, f: &Filter, out: &mut dyn Write) -> Result<()> {
    match what {
        What::Rotations => lines(&v.rotations(f)?, None, out),
        What::Sessions => lines(&v.sessions(f)?, None, out),
        What::Compactions => lines(&v.compactions(f)?, None, out),
        What::Items => lines(&v.work_items(f)?, None, out),
        What::Events => lines(&v.events(f)?, None, out),
    }
}

fn export(v: &JournalView<'_>, f: &Filter, out: &mut dyn Write) -> Result<()> {
    // --reason narrows rotations and events (to those rotations' events); the other kinds have
    // no reason.
    let unreasoned = Filter {
        reason: None,
        ..f.clone()
    };
    lines(&v.work_items(&unreasoned)?, Some("work_item"), out)?;
    lines(&v.sessions(&unreasoned)?, Some("session"), out)?;
    lines(&v.rotations(f)?, Some("rotation"), out)?;
    lines(&v.compactions(&unreasoned)?, Some("compaction"), out)?;
    lines(&v.events(f)?, Some("event"), out)
}

/// `2026-11-25 10:00:00` (UTC, to the second) for tables.
fn when(t: Timestamp) -> String {
    t.to_string()[..19].replace('T', " ")
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn table(v: &JournalView<'_>, what: What, f: &Filter, out: &mut dyn Write) -> Result<()> {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    let (noun, count) = match what {
        What::Rotations => {
            let rows = v.rotations(f)?;
            t.set_header([
                "rotation",
                "started",
                "item",
                "agent type",
                "old → new",
                "reason",
                "before",
                "compactions",
                "handoff",
                "duration",
                "result",
            ]);
            for r in &rows {
                let rec = r.record.as_ref();
                let result = match rec {
                    Some(rec) if rec.success => "ok".to_string(),
                    Some(rec) => format!("failed: {}", rec.error.as_deref().unwrap_or("?")),
                    None => format!("under way ({})", r.step),
                };
                t.add_row([
                    r.rotation.0.to_string(),
                    when(r.started_at),
                    r.work_item.to_string(),
                    r.agent_type.clone(),
                    format!("{} → {}", r.old_session, opt(r.new_session)),
                    r.reason.clone(),
                    rec.map_or("-".into(), |x| {
                        format!("{} ({:.1}%)", x.before_tokens, x.before_percent)
                    }),
                    opt(rec.map(|x| x.compactions)),
                    rec.map_or("-".into(), |x| {
                        format!(
                            "{}{}",
                            x.handoff_tokens,
                            if x.handoff_fallback {
                                " (fallback)"
                            } else {
                                ""
                            }
                        )
                    }),
                    opt(rec.map(|x| format!("{:.0?}", x.duration))),
                    result,
                ]);
            }
            ("rotations", rows.len())
        }
        What::Sessions => {
            let rows = v.sessions(f)?;
            t.set_header([
                "session",
                "agent type",
                "item",
                "state",
                "phase",
                "transitions",
                "compactions",
                "after",
                "started",
                "ended",
                "end",
            ]);
            for s in &rows {
                t.add_row([
                    s.session.to_string(),
                    s.agent_type.clone(),
                    s.work_item.to_string(),
                    s.state.clone(),
                    s.phase.clone(),
                    s.transitions.to_string(),
                    s.compactions.to_string(),
                    opt(s.predecessor),
                    when(s.started_at),
                    opt(s.ended_at.map(when)),
                    opt(s.end_reason.clone()),
                ]);
            }
            ("sessions", rows.len())
        }
        What::Compactions => {
            let rows = v.compactions(f)?;
            t.set_header([
                "at",
                "session",
                "item",
                "agent type",
                "before",
                "after",
                "reduction",
                "in band",
                "summary",
                "duration",
                "result",
            ]);
            for c in &rows {
                let r = &c.record;
                t.add_row([
                    when(c.at),
                    r.session.to_string(),
                    r.work_item.to_string(),
                    r.agent_type.to_string(),
                    format!("{} ({:.1}%)", r.before_tokens, r.before_percent),
                    format!("{} ({:.1}%)", r.after_tokens, r.after_percent),
                    format!("{:.1}%", r.reduction_percent),
                    if r.within_target { "yes" } else { "no" }.into(),
                    r.summary_tokens.to_string(),
                    format!("{:.0?}", r.duration),
                    match (&r.error, r.sufficient) {
                        (Some(e), _) => format!("failed: {e}"),
                        (None, true) => "ok".into(),
                        (None, false) => "insufficient".into(),
                    },
                ]);
            }
            ("compactions", rows.len())
        }
        What::Items => {
            let rows = v.work_items(f)?;
            t.set_header([
                "item",
                "agent type",
                "place",
                "session",
                "attempts",
                "spawns",
                "epoch",
                "handoff",
                "reason",
            ]);
            for i in &rows {
                t.add_row([
                    i.work_item.to_string(),
                    i.agent_type.clone(),
                    i.place.clone(),
                    opt(i.session),
                    i.attempts.to_string(),
                    i.spawns.to_string(),
                    i.epoch.to_string(),
                    opt(i.handoff.as_ref().map(|h| h.tokens)),
                    opt(i.reason.clone()),
                ]);
            }
            ("work items", rows.len())
        }
        What::Events => {
            let rows = v.events(f)?;
            t.set_header(["seq", "at", "kind", "session", "item", "record"]);
            for e in &rows {
                let mut record = e.payload.to_string();
                if record.len() > 100 {
                    let cut = (0..=97)
                        .rev()
                        .find(|i| record.is_char_boundary(*i))
                        .unwrap_or(0);
                    record.truncate(cut);
                    record.push_str("...");
                }
                t.add_row([
                    e.seq.to_string(),
                    when(e.at),
                    e.kind.clone(),
                    opt(e.session),
                    opt(e.work_item),
                    record,
                ]);
            }
            ("events", rows.len())
        }
    };
    if count == 0 {
        writeln!(out, "no {noun} match")?;
    } else {
        writeln!(out, "{t}")?;
        writeln!(out, "  {count} {noun}")?;
    }
    Ok(())
}
