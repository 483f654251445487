//! Plain usage series: one model call per JSON line or CSV row.
//!
//! The simplest format a user can write by hand or export from anything:
//!
//! ```text
//! {"prompt_tokens": 1560, "completion_tokens": 94}
//! {"prompt_tokens": 1691, "completion_tokens": 58}
//! ```
//!
//! or CSV with a header naming `prompt_tokens` and `completion_tokens` (other columns are
//! ignored). A JSON line may also carry `"window": N` (at least 1), which then applies to the
//! whole series.
//! Blank lines are skipped.

use serde::Deserialize;

use super::{Call, Ctx, Format, Location, Trace, TraceError, count};
use crate::usage::UsageError;

#[derive(Deserialize)]
struct Line {
    prompt_tokens: Option<f64>,
    completion_tokens: Option<f64>,
    window: Option<f64>,
}

pub(super) fn read_jsonl(ctx: &Ctx, text: &str) -> Result<Vec<Trace>, TraceError> {
    const F: Format = Format::SeriesJsonl;
    let mut calls = Vec::new();
    let mut window = None;
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let line_no = i + 1;
        let line: Line = serde_json::from_str(raw)
            .map_err(|e| ctx.broken(F, Location::Line(line_no, Some(e.column())), e.to_string()))?;
        let at = Location::Line(line_no, None);
        let (Some(p), Some(c)) = (line.prompt_tokens, line.completion_tokens) else {
            return Err(ctx.broken(F, at, "expected both prompt_tokens and completion_tokens"));
        };
        if let Some(w) = line.window {
            // Refused here, with its line, rather than later as a replay without a location.
            match count(ctx, F, at, "window", w)? {
                0 => return Err(ctx.bad_figure(F, at, UsageError::ZeroWindow)),
                w => window = Some(w),
            }
        }
        calls.push(Call {
            prompt_tokens: count(ctx, F, at, "prompt_tokens", p)?,
            completion_tokens: count(ctx, F, at, "completion_tokens", c)?,
        });
    }
    Ok(vec![ctx.trace(F, calls, window)?])
}

pub(super) fn read_csv(ctx: &Ctx, text: &str) -> Result<Vec<Trace>, TraceError> {
    const F: Format = Format::SeriesCsv;
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| ctx.broken(F, Location::Line(1, None), e.to_string()))?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let (Some(pi), Some(ci)) = (col("prompt_tokens"), col("completion_tokens")) else {
        let first = text
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(60)
            .collect::<String>();
        return Err(ctx.unknown(format!("text whose first line is {first:?}")));
    };
    let mut calls = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
            ctx.broken(F, Location::Line(line, None), e.to_string())
        })?;
        let line_no = record.position().map(|p| p.line() as usize).unwrap_or(0);
        let at = Location::Line(line_no, None);
        let field = |idx: usize, name: &'static str| -> Result<u64, TraceError> {
            let cell = record.get(idx).unwrap_or("");
            let value: f64 = cell
                .parse()
                .map_err(|_| ctx.broken(F, at, format!("{name} is {cell:?}, not a number")))?;
            count(ctx, F, at, name, value)
        };
        calls.push(Call {
            prompt_tokens: field(pi, "prompt_tokens")?,
            completion_tokens: field(ci, "completion_tokens")?,
        });
    }
    Ok(vec![ctx.trace(F, calls, None)?])
}
