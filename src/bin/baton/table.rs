//! What `baton simulate` and `baton run` both show: a progress bar over work items while they
//! run, then the results table (or the report as JSON).

use std::io::Write;

use anyhow::Result;
use baton::report::FleetReport;
use baton::run::Outcomes;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar over `work_items` on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(work_items: u64) -> ProgressBar {
    let bar = ProgressBar::new(work_items);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} work items  {msg}",
        )
        .expect("valid template"),
    );
    bar
}

/// Writes `report` as one line of JSON, or through `table` when `json` is off, on standard
/// output through [`crate::stdout`]: a reader that went away (`| head -1`) is a quiet end.
pub fn write_report<T: serde::Serialize>(
    json: bool,
    report: &T,
    table: impl FnOnce(&mut crate::Stdout, &T) -> Result<()>,
) -> Result<()> {
    let mut out = crate::stdout();
    if json {
        // Serialised first, so that a closed stdout is the plain `io::Error` `main` recognises,
        // not one wrapped in serde_json's.
        let mut line = serde_json::to_vec(report)?;
        line.push(b'\n');
        out.write_all(&line)?;
        out.flush()?;
        Ok(())
    } else {
        table(&mut out, report)?;
        out.flush()?;
        Ok(())
    }
}

/// How a simulation's work items ended (a simulated agent never fails a turn, and always says
/// it is done).
pub fn simulated_outcomes(r: &FleetReport) -> Outcomes {
    Outcomes {
        done: r.done,
        dead_lettered: r.dead_letters,
        unfinished: r.unfinished,
        ..Outcomes::default()
    }
}

/// The work items row: each way an item can end, counted separately.
fn outcomes_row(o: &Outcomes) -> String {
    let mut row = format!("{} of {} done", o.done, o.total());
    if o.turn_limit > 0 {
        row.push_str(&format!(", {} at the turn limit", o.turn_limit));
    }
    row.push_str(&format!(
        "; {} failed, {} dead-lettered, {} unfinished",
        o.failed, o.dead_lettered, o.unfinished
    ));
    row
}

/// Writes the results table under `title` (escaped: it may quote outside data).
pub fn write_fleet_table(
    out: &mut impl Write,
    title: &str,
    r: &FleetReport,
    outcomes: &Outcomes,
) -> Result<()> {
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
        ("work items", outcomes_row(outcomes)),
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
            "retries / requeues / warnings",
            format!("{} / {} / {}", r.retries, r.requeues, r.runtime_warnings),
        ),
        (
            "usage messages",
            format!(
                "{} ({}/s)",
                r.usage_messages,
                rate(r.usage_messages_per_second)
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
    writeln!(out, "{}\n{t}", crate::output::escape(title))?;
    Ok(())
}

/// A rate with as many decimals as it needs: whole numbers for fleets, two for a few agents.
fn rate(per_second: f64) -> String {
    if per_second >= 10.0 {
        format!("{per_second:.0}")
    } else {
        format!("{per_second:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_way_an_item_ends_is_counted_apart() {
        let o = Outcomes {
            done: 3,
            turn_limit: 1,
            failed: 1,
            dead_lettered: 2,
            unfinished: 4,
        };
        assert_eq!(
            outcomes_row(&o),
            "3 of 11 done, 1 at the turn limit; 1 failed, 2 dead-lettered, 4 unfinished"
        );
        let clean = Outcomes {
            done: 2,
            ..Outcomes::default()
        };
        assert_eq!(
            outcomes_row(&clean),
            "2 of 2 done; 0 failed, 0 dead-lettered, 0 unfinished"
        );
    }
}
