//! `baton replay --chart FILE.svg`: each trace's modelled context per call, as an SVG.
//!
//! One panel per trace, stacked: the modelled context (tokens) against the call number, the
//! window and the two thresholds as horizontal lines, and a marker at every compaction (circle)
//! and rotation (triangle), placed at the context that triggered it. A compaction or rotation
//! drops the line to what it left (base + S) at the same call.
//!
//! The picture is drawn in memory and written with [`output::write_atomic`]: whole or not at
//! all, and never over one of the traces it was drawn from.

use std::path::Path;

use anyhow::Result;
use baton::replay::{ModelledCall, ReplayEventKind, ReplayReport};
use plotters::prelude::*;

use crate::output::{self, Escaped};

/// Width of the picture, in pixels.
const WIDTH: u32 = 1100;
/// Width of the legend column at the right of each panel, in pixels (outside the plot, so that
/// it never hides a point).
const LEGEND_WIDTH: u32 = 190;
/// Height of one trace's panel, in pixels.
const PANEL_HEIGHT: u32 = 440;

/// Colour of the modelled context.
const CONTEXT: RGBColor = RGBColor(31, 119, 180);
/// Colour of the compaction threshold and of compaction markers.
const COMPACT: RGBColor = RGBColor(230, 140, 20);
/// Colour of the rotation threshold and of rotation markers.
const ROTATE: RGBColor = RGBColor(200, 30, 40);
/// Colour of the window line.
const WINDOW: RGBColor = RGBColor(110, 110, 110);

/// One trace to draw.
pub struct Panel {
    /// The replay's report (name, window, events).
    pub report: ReplayReport,
    /// The modelled context of every call.
    pub series: Vec<ModelledCall>,
}

/// Draws `panels` into the SVG file at `path`, with the thresholds `compact_at` and
/// `rotate_at` (ratios of each trace's window). Refuses a `path` that is one of `inputs`.
pub fn draw<'a>(
    path: &Path,
    inputs: impl IntoIterator<Item = &'a Path>,
    panels: &[Panel],
    compact_at: f64,
    rotate_at: f64,
) -> Result<()> {
    let height = PANEL_HEIGHT * panels.len().max(1) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let areas = root.split_evenly((panels.len().max(1), 1));
        for (area, panel) in areas.iter().zip(panels) {
            draw_panel(area, panel, compact_at, rotate_at)?;
        }
        root.present().map_err(plot_error)?;
    }
    output::write_atomic(path, inputs, |w| w.write_all(svg.as_bytes()))?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    panel: &Panel,
    compact_at: f64,
    rotate_at: f64,
) -> Result<()> {
    let r = &panel.report;
    let window = r.window as f64;
    let calls = panel.series.len().max(1) as f64;
    let peak = panel.series.iter().map(|c| c.used).max().unwrap_or(0) as f64;
    let top = window.max(peak) * 1.08;
    let (compactions, rotations) = (r.totals.compactions, r.totals.rotations);
    let caption = format!(
        "{}: {} calls, window {}, {} compaction{}, {} rotation{}",
        Escaped(&r.trace),
        r.calls,
        thousands(r.window),
        compactions,
        if compactions == 1 { "" } else { "s" },
        rotations,
        if rotations == 1 { "" } else { "s" },
    );
    let (plot, side) = area.split_horizontally(WIDTH - LEGEND_WIDTH);
    let mut chart = ChartBuilder::on(&plot)
        .caption(caption, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.5..calls + 0.5, 0.0..top)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .light_line_style(RGBColor(235, 235, 235))
        .x_desc("call")
        .y_desc("modelled context (tokens)")
        .y_label_formatter(&|v| thousands(*v as u64))
        .x_labels(panel.series.len().clamp(2, 12))
        .x_label_formatter(&|v| {
            // Calls are whole numbers; plotters may pick half steps on short traces.
            if (v - v.round()).abs() < 1e-9 {
                format!("{v:.0}")
            } else {
                String::new()
            }
        })
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(plot_error)?;

    for (ratio, color) in [(1.0, WINDOW), (rotate_at, ROTATE), (compact_at, COMPACT)] {
        let y = ratio * window;
        let points = vec![(0.5, y), (calls + 0.5, y)];
        chart
            .draw_series(DashedLineSeries::new(points, 8, 5, color.stroke_width(2)))
            .map_err(plot_error)?;
    }

    // The context line, dropping at the call where a compaction or rotation happened.
    let line = panel.series.iter().flat_map(|c| {
        let x = c.call as f64;
        std::iter::once((x, c.used as f64)).chain(c.after.map(|a| (x, a as f64)))
    });
    chart
        .draw_series(LineSeries::new(line, CONTEXT.stroke_width(2)))
        .map_err(plot_error)?;

    let at = |kind: ReplayEventKind| {
        r.events
            .iter()
            .filter(move |e| e.kind == kind)
            .map(|e| (e.call as f64, e.before as f64))
    };
    chart
        .draw_series(at(ReplayEventKind::Compaction).map(|p| Circle::new(p, 6, COMPACT.filled())))
        .map_err(plot_error)?;
    chart
        .draw_series(
            at(ReplayEventKind::Rotation).map(|p| TriangleMarker::new(p, 9, ROTATE.filled())),
        )
        .map_err(plot_error)?;

    draw_legend(&side, r.window, compact_at, rotate_at)
}

/// The legend, in its own column: a sample of each line and marker, and what it means.
fn draw_legend(
    side: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    window: u64,
    compact_at: f64,
    rotate_at: f64,
) -> Result<()> {
    let font = ("sans-serif", 14).into_font().color(&BLACK);
    let entries: [(&str, String, RGBColor); 6] = [
        ("line", "modelled context".into(), CONTEXT),
        ("dash", format!("window ({})", thousands(window)), WINDOW),
        (
            "dash",
            format!("rotate at {:.0}%", rotate_at * 100.0),
            ROTATE,
        ),
        (
            "dash",
            format!("compact at {:.0}%", compact_at * 100.0),
            COMPACT,
        ),
        ("circle", "compaction".into(), COMPACT),
        ("triangle", "rotation".into(), ROTATE),
    ];
    for (i, (kind, label, color)) in entries.iter().enumerate() {
        let y = 70 + 26 * i as i32;
        let (x0, x1) = (6, 34);
        match *kind {
            "line" => side.draw(&PathElement::new(
                vec![(x0, y), (x1, y)],
                color.stroke_width(2),
            )),
            "dash" => side
                .draw(&PathElement::new(
                    vec![(x0, y), (x0 + 10, y)],
                    color.stroke_width(2),
                ))
                .and_then(|_| {
                    side.draw(&PathElement::new(
                        vec![(x0 + 16, y), (x1, y)],
                        color.stroke_width(2),
                    ))
                }),
            "circle" => side.draw(&Circle::new((20, y), 6, color.filled())),
            _ => side.draw(&TriangleMarker::new((20, y), 9, color.filled())),
        }
        .map_err(plot_error)?;
        side.draw(&Text::new(label.clone(), (x1 + 8, y - 8), font.clone()))
            .map_err(plot_error)?;
    }
    Ok(())
}

/// plotters' errors borrow the backend's error type; keep only the message.
fn plot_error<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e}")
}

/// `12345` as `12,345`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
