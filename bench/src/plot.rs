//! The benchmarks' pictures: SVG line charts (plotters) that `make bench`
//! leaves in `results/` beside each JSON summary.

use anyhow::{ensure, Result};
use plotters::prelude::*;
use std::path::Path;

/// One line of a chart: `points` are (x, y), x ascending.
#[derive(Clone, Debug)]
pub struct Series {
    /// The legend's text.
    pub name: String,
    /// The points; non-positive values are left out on log axes.
    pub points: Vec<(f64, f64)>,
}

/// A chart's titles.
#[derive(Clone, Copy, Debug)]
pub struct Labels<'a> {
    /// Above the chart.
    pub title: &'a str,
    /// Under the x axis (with its unit).
    pub x: &'a str,
    /// Beside the y axis (with its unit).
    pub y: &'a str,
}

const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Draws `series` as lines with point marks on log-log axes into the SVG
/// file `out` (720 × 420 px): for quantities that grow by decades (flows,
/// bytes, ns).
///
/// # Errors
/// No positive point to draw, or the file cannot be written.
pub fn log_log_lines(out: &Path, labels: Labels<'_>, series: &[Series]) -> Result<()> {
    log_log_panels(out, &[(labels, series.to_vec())])
}

/// Like [`log_log_lines`], with one chart per panel side by side (720 px
/// wide each) in one SVG file.
///
/// # Errors
/// A panel with no positive point, or the file cannot be written.
pub fn log_log_panels(out: &Path, panels: &[(Labels<'_>, Vec<Series>)]) -> Result<()> {
    ensure!(!panels.is_empty(), "{}: no panel to plot", out.display());
    let width = 720 * panels.len() as u32;
    let root = SVGBackend::new(out, (width, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    for (area, (labels, series)) in root.split_evenly((1, panels.len())).iter().zip(panels) {
        chart(area, *labels, series).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    }
    root.present()?;
    Ok(())
}

fn chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    labels: Labels<'_>,
    series: &[Series],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let positive = |&&(x, y): &&(f64, f64)| x > 0.0 && y > 0.0 && x.is_finite() && y.is_finite();
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().filter(positive).copied())
        .collect();
    ensure!(!all.is_empty(), "{}: nothing to plot", labels.title);
    let range = |values: &mut dyn Iterator<Item = f64>| {
        let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        // A factor of 2 each side keeps the end points off the frame.
        (lo / 2.0, hi * 2.0)
    };
    let (x0, x1) = range(&mut all.iter().map(|p| p.0));
    let (y0, y1) = range(&mut all.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .caption(labels.title, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())?;
    chart
        .configure_mesh()
        .x_desc(labels.x)
        .y_desc(labels.y)
        .x_label_formatter(&|v| short(*v))
        .y_label_formatter(&|v| short(*v))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<(f64, f64)> = s.points.iter().filter(positive).copied().collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, colour.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    Ok(())
}

/// 1500 → "1.5k", 2000000 → "2M": axis labels that fit.
fn short(v: f64) -> String {
    let (scaled, unit) = match v.abs() {
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let text = format!("{scaled:.1}");
    format!("{}{unit}", text.trim_end_matches(".0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_are_short() {
        assert_eq!(short(1500.0), "1.5k");
        assert_eq!(short(2_000_000.0), "2M");
        assert_eq!(short(0.5), "0.5");
        assert_eq!(short(100.0), "100");
    }

    #[test]
    fn a_chart_is_written_and_an_empty_one_refused() {
        let dir = std::env::temp_dir().join(format!("handoff-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("chart.svg");
        let labels = Labels {
            title: "t",
            x: "flows",
            y: "ns",
        };
        let series = [Series {
            name: "series-a".into(),
            points: vec![(1e3, 10.0), (1e6, 100.0), (0.0, 5.0)],
        }];
        log_log_lines(&out, labels, &series).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        let empty = log_log_lines(&dir.join("empty.svg"), labels, &[]);
        let _ = std::fs::remove_dir_all(&dir);
        // The legend names the series; its line is drawn in the first colour.
        assert!(svg.starts_with("<svg") && svg.contains("series-a"), "{svg}");
        assert!(svg.contains(r##"stroke="#1F77B4" stroke-width="2""##), "{svg}");
        assert!(empty.is_err());
    }
}
