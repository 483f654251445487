//! `baton log`: what a journal recorded, listed and filtered.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use baton::journal::{
    CompactionRow, EventRow, Filter, JournalError, JournalTarget, JournalView, RotationRow,
    SessionRow, Timestamp, WorkItemRow,
};
use baton::{JournalReader, RotationReason, SessionId, WorkItemId};
use clap::ValueEnum;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

use crate::{output, usage};

/// List what a journal recorded, as a table or as JSON Lines
///
/// Lists rotations (the default), sessions, compactions, work items or the event log.
///
/// The journal is only read (never created or changed, and no file is made beside it), so this
/// is safe while a supervisor is writing it, and works in a read-only directory. Filters combine; --reason applies to rotations, and to events, where it keeps
/// only the events of rotations for that reason.
/// Times are RFC 3339 in UTC (2026-11-25T10:00:00Z, or just 2026-11-25) or an age before now
/// (90s, 30m, 2h, 7d, 1h 30m).
///
/// --export writes every kind of record that matches the filters as JSON Lines, one object per
/// line with a "type" field (work_item, session, rotation, compaction, event), for other tools.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The journal: a file, or a PostgreSQL URL (postgres://USER:PASSWORD@HOST:PORT/DB).
    #[arg(value_name = "JOURNAL")]
    journal: JournalTarget,
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
    /// Only rotations for this reason (with `events`: only those rotations' events): threshold,
    /// insufficient_compaction, compaction_failed, compaction_budget, manual or overflow.
    #[arg(long, value_name = "REASON", value_parser = parse_reason)]
    reason: Option<RotationReason>,
    /// Only records from this time on.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    since: Option<Timestamp>,
    /// Only records up to this time.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    until: Option<Timestamp>,
    /// Only the latest N records (at most 9223372036854775807, SQLite's largest integer).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=i64::MAX as u64))]
    limit: Option<u64>,
    /// JSON Lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Every kind of record, as JSON Lines with a "type" field.
    #[arg(long, conflicts_with_all = ["json", "what"])]
    export: bool,
    /// Write to this file instead of standard output (`-`: standard output). It is written
    /// whole or not at all (a temporary file renamed over it), and never when it is the journal
    /// or one of the files beside it.
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

/// A time given on the command line: RFC 3339 in UTC, or an age before now (parsed by
/// humantime: `90s`, `30m`, `2h`, `7d`, `1h 30m`).
/// A flag's bad value is a usage error (exit 2), reported by clap with the flag's name.
fn parse_time(text: &str) -> Result<Timestamp, String> {
    Timestamp::parse_or_age(text, Timestamp::now())
}

/// A rotation reason by its journal name; a bad one is a usage error (exit 2).
fn parse_reason(text: &str) -> Result<RotationReason, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|_| {
        "not a rotation reason (threshold, insufficient_compaction, compaction_failed, \
         compaction_budget, manual, overflow)"
            .to_owned()
    })
}

/// The filter the flags ask for; a flag that does not apply to the listing is a usage error.
fn filter(args: &Args) -> Result<Filter> {
    if args.reason.is_some() && !args.export && !matches!(args.what, What::Rotations | What::Events)
    {
        return Err(usage(
            "--reason filters rotations (and rotation events) only",
        ));
    }
    Ok(Filter {
        session: args.session.map(SessionId),
        work_item: args.work_item.map(WorkItemId),
        agent_type: args.agent_type.clone(),
        reason: args.reason,
        since: args.since,
        until: args.until,
        // Within usize: clap caps it at i64::MAX, and baton builds for 64-bit targets.
        limit: args.limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        after: None,
    })
}

/// Every row one `baton log` prints, read before anything is written: a reader that has to
/// start again (a writer started under it) has printed nothing twice.
#[derive(Default)]
struct Rows {
    work_items: Vec<WorkItemRow>,
    sessions: Vec<SessionRow>,
    rotations: Vec<RotationRow>,
    compactions: Vec<CompactionRow>,
    events: Vec<EventRow>,
}

/// The rows the flags ask for (`what`, or every kind for `--export`).
fn fetch(v: &JournalView<'_>, args: &Args, f: &Filter) -> Result<Rows, JournalError> {
    let mut rows = Rows::default();
    if args.export {
        // --reason narrows rotations and events (to those rotations' events); the other kinds
        // have no reason.
        let unreasoned = Filter {
            reason: None,
            ..f.clone()
        };
        rows.work_items = v.work_items(&unreasoned)?;
        rows.sessions = v.sessions(&unreasoned)?;
        rows.rotations = v.rotations(f)?;
        rows.compactions = v.compactions(&unreasoned)?;
        rows.events = v.events(f)?;
        return Ok(rows);
    }
    match args.what {
        What::Rotations => rows.rotations = v.rotations(f)?,
        What::Sessions => rows.sessions = v.sessions(f)?,
        What::Compactions => rows.compactions = v.compactions(f)?,
        What::Items => rows.work_items = v.work_items(f)?,
        What::Events => rows.events = v.events(f)?,
    }
    Ok(rows)
}

/// Reads the rows, opening the journal again when a writer started under a reader without
/// locks (the next reader reads through the writer's locks).
fn read(args: &Args, f: &Filter) -> Result<Rows> {
    let mut attempts = 0;
    loop {
        let result = JournalReader::open_target(&args.journal)
            .and_then(|reader| fetch(&reader.view(), args, f));
        match result {
            Err(JournalError::Changed(_)) if attempts < 3 => attempts += 1,
            other => return other.context("cannot read the journal"),
        }
    }
}

/// Every file beside a journal that an output must not replace: the journal, its write-ahead
/// log and index, its rollback journal and its lock.
fn journal_files(journal: &Path) -> Vec<PathBuf> {
    std::iter::once(journal.to_owned())
        .chain(["-wal", "-shm", "-journal", "-lock"].iter().map(|suffix| {
            let mut name = journal.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        }))
        .collect()
}

/// Whether `a` and `b` name the same directory entry: the same file name in the same directory
/// (compared by inode), whether or not the file exists.
fn same_place(a: &Path, b: &Path) -> bool {
    let dir = |p: &Path| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    a.file_name().is_some() && a.file_name() == b.file_name() && output::same_file(&dir(a), &dir(b))
}

/// Lists what the journal recorded. Errors (escaped by `main`, since they may quote a damaged
/// row's value) exit 1; a flag that does not apply, or an output over the journal, exits 2; a
/// closed standard output is a normal end.
pub fn run(args: Args) -> Result<()> {
    let filter = filter(&args)?;
    let output = args.output.as_deref().filter(|p| !output::is_stdio(p));
    let inputs = args.journal.file().map(journal_files).unwrap_or_default();
    if let Some(path) = output {
        // Refused before reading, and again (by write_atomic) just before the rename.
        output::refuse_overwrite(path, inputs.iter().map(PathBuf::as_path))?;
        // A side file that does not exist yet is refused by its name: an export written as
        // `J.db-wal` would be taken for the journal's write-ahead log.
        if let Some(side) = inputs.iter().find(|side| same_place(path, side)) {
            return Err(crate::usage(format_args!(
                "{}: refusing to write over the journal's own file {}",
                path.display(),
                side.display()
            )));
        }
    }
    let rows = read(&args, &filter)?;
    let render = |out: &mut dyn Write| -> Result<()> {
        if args.export {
            lines(&rows.work_items, Some("work_item"), out)?;
            lines(&rows.sessions, Some("session"), out)?;
            lines(&rows.rotations, Some("rotation"), out)?;
            lines(&rows.compactions, Some("compaction"), out)?;
            lines(&rows.events, Some("event"), out)?;
        } else if args.json {
            match args.what {
                What::Rotations => lines(&rows.rotations, None, out)?,
                What::Sessions => lines(&rows.sessions, None, out)?,
                What::Compactions => lines(&rows.compactions, None, out)?,
                What::Items => lines(&rows.work_items, None, out)?,
                What::Events => lines(&rows.events, None, out)?,
            }
        } else {
            table(&rows, args.what, out)?;
        }
        Ok(())
    };
    match output {
        Some(path) => output::write_atomic(path, inputs.iter().map(PathBuf::as_path), |out| {
            render(out).map_err(std::io::Error::other)
        })?,
        None => {
            // Through main's stdout: a reader that went away (`| head`) is a quiet end.
            let mut out = std::io::BufWriter::new(crate::stdout());
            render(&mut out)?;
            out.flush()?;
        }
    }
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
        let mut json = serde_json::Serializer::with_formatter(&mut *out, output::TerminalSafeJson);
        match kind {
            Some(kind) => Typed { kind, row }.serialize(&mut json),
            None => row.serialize(&mut json),
        }
        // As an io::Error, so that a closed pipe is recognised as one.
        .map_err(std::io::Error::from)?;
        writeln!(out)?;
    }
    Ok(())
}

/// `2026-11-25 10:00:00` (UTC, to the second) for tables; years beyond four digits (a damaged
/// row) are shown whole.
fn when(t: Timestamp) -> String {
    let text = t.to_string();
    let seconds = text.rsplit_once('.').map_or(text.as_str(), |(s, _)| s);
    seconds.replace('T', " ")
}

/// Adds a row of cells, each escaped: journal fields are outside data (an agent type or an
/// error may hold terminal escape sequences).
fn add_row<const N: usize>(t: &mut Table, cells: [String; N]) {
    t.add_row(cells.map(|c| output::escape(&c).into_owned()));
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn table(rows: &Rows, what: What, out: &mut dyn Write) -> Result<()> {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    let (noun, count) = match what {
        What::Rotations => {
            let rows = &rows.rotations;
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
            for r in rows {
                let rec = r.record.as_ref();
                let result = match rec {
                    Some(rec) if rec.success => "ok".to_string(),
                    Some(rec) => format!("failed: {}", rec.error.as_deref().unwrap_or("?")),
                    None => format!("under way ({})", r.step),
                };
                add_row(
                    &mut t,
                    [
                        r.rotation.0.to_string(),
                        when(r.started_at),
                        r.work_item.to_string(),
                        r.agent_type.clone(),
                        format!("{} → {}", r.old_session, opt(r.new_session)),
                        r.reason.to_string(),
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
                    ],
                );
            }
            ("rotations", rows.len())
        }
        What::Sessions => {
            let rows = &rows.sessions;
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
            for s in rows {
                add_row(
                    &mut t,
                    [
                        s.session.to_string(),
                        s.agent_type.clone(),
                        s.work_item.to_string(),
                        s.state.to_string(),
                        format!("{:?}", s.phase),
                        s.transitions.to_string(),
                        s.compactions.to_string(),
                        opt(s.predecessor),
                        when(s.started_at),
                        opt(s.ended_at.map(when)),
                        opt(s.end_reason),
                    ],
                );
            }
            ("sessions", rows.len())
        }
        What::Compactions => {
            let rows = &rows.compactions;
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
            for c in rows {
                let r = &c.record;
                add_row(
                    &mut t,
                    [
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
                    ],
                );
            }
            ("compactions", rows.len())
        }
        What::Items => {
            let rows = &rows.work_items;
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
            for i in rows {
                add_row(
                    &mut t,
                    [
                        i.work_item.to_string(),
                        i.agent_type.clone(),
                        i.place.to_string(),
                        opt(i.session),
                        i.attempts.to_string(),
                        i.spawns.to_string(),
                        i.epoch.to_string(),
                        opt(i.handoff.as_ref().map(|h| h.tokens)),
                        opt(i.reason.clone()),
                    ],
                );
            }
            ("work items", rows.len())
        }
        What::Events => {
            let rows = &rows.events;
            t.set_header(["seq", "at", "kind", "session", "item", "record"]);
            for e in rows {
                let mut record = e.payload.to_string();
                if record.len() > 100 {
                    let cut = (0..=97)
                        .rev()
                        .find(|i| record.is_char_boundary(*i))
                        .unwrap_or(0);
                    record.truncate(cut);
                    record.push_str("...");
                }
                add_row(
                    &mut t,
                    [
                        e.seq.to_string(),
                        when(e.at),
                        e.kind.clone(),
                        opt(e.session),
                        opt(e.work_item),
                        record,
                    ],
                );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc_3339_or_ages_humantime_reads() {
        assert_eq!(
            parse_time("2026-11-25").unwrap(),
            Timestamp::parse("2026-11-25T00:00:00Z").unwrap()
        );
        let before = Timestamp::now().millis();
        let t = parse_time("1h 30m").unwrap().millis();
        let after = Timestamp::now().millis();
        assert!((before - 5_400_000..=after - 5_400_000).contains(&t), "{t}");
        // An age beyond the epoch's range is clamped, not wrapped.
        assert!(parse_time("500000000years").unwrap().millis() < 0);
        for bad in ["yesterday", "-5m", "5 parsecs", ""] {
            let e = parse_time(bad).unwrap_err();
            assert!(e.starts_with("not a time"), "{bad}: {e}");
        }
    }

    #[test]
    fn table_times_are_shown_to_the_second_whatever_the_year() {
        assert_eq!(when(Timestamp(0)), "1970-01-01 00:00:00");
        assert_eq!(when(Timestamp(-1)), "1969-12-31 23:59:59");
        assert!(when(Timestamp(i64::MAX)).starts_with("292278994-08-17 07:12:55"));
        assert!(when(Timestamp(i64::MIN)).starts_with("-292275055-05-16 16:47:04"));
    }

    #[test]
    fn json_lines_escape_what_a_terminal_acts_on_and_mean_the_same() {
        let hostile = "a\u{1b}[2J\u{7f}\u{9b}31m\u{202e}b\tc\"é✓";
        let mut out = Vec::new();
        lines(
            &[serde_json::json!({ "agent_type": hostile })],
            None,
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "{\"agent_type\":\"a\\u001b[2J\\u007f\\u009b31m\\u202eb\\tc\\\"é✓\"}\n"
        );
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["agent_type"], hostile);
    }
}
