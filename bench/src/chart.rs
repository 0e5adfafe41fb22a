//! PNG charts for the demo and the benchmark report (plotters, DejaVu).

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

/// Registers DejaVu Sans (fonts-dejavu-core, installed by setup) as
/// "sans-serif" for plotters; call before drawing text.
pub fn register_font() -> Result<()> {
    let font = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
        .context("font for the charts (fonts-dejavu-core, installed by cargo xtask setup)")?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("bad font"))
}

/// A horizontal bar chart of `(label, value)`, the first bar in grey (the
/// baseline), the others in blue.
pub fn bars(path: &Path, title: &str, unit: &str, items: &[(String, f64)]) -> Result<()> {
    register_font()?;
    let max = items.iter().map(|(_, v)| *v).fold(0.0, f64::max) * 1.15;
    let h = 80 + 44 * items.len() as u32;
    let root = BitMapBackend::new(path, (1000, h)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(10)
        .build_cartesian_2d(0f64..max.max(1e-9), 0f64..items.len() as f64)?;
    c.configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_desc(unit)
        .draw()?;
    for (i, (label, v)) in items.iter().enumerate() {
        let y = (items.len() - 1 - i) as f64;
        let color = if i == 0 {
            RGBColor(150, 150, 150)
        } else {
            RGBColor(40, 100, 200)
        };
        c.draw_series(std::iter::once(Rectangle::new(
            [(0.0, y + 0.15), (*v, y + 0.85)],
            color.filled(),
        )))?;
        c.draw_series(std::iter::once(Text::new(
            format!("{label}: {v:.2}"),
            (max * 0.01, y + 0.62),
            ("sans-serif", 14).into_font().color(&BLACK),
        )))?;
    }
    root.present()?;
    Ok(())
}

/// A named, coloured line of (seconds, percent) points.
pub type Line = (String, RGBColor, Vec<(f64, f64)>);

/// One line per series over time (percent, 0..100), a grey marker and a
/// label where each phase begins: the demos' charts.
pub fn timeline(
    path: &Path,
    title: &str,
    y_desc: &str,
    end: f64,
    series: Vec<Line>,
    marks: &[(String, f64)],
) -> Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (1200, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..end.max(1e-3), 0f64..100f64)?;
    c.configure_mesh().x_desc("seconds").y_desc(y_desc).draw()?;
    for (name, color, points) in series {
        c.draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
            });
    }
    for (label, t) in marks {
        c.draw_series(std::iter::once(PathElement::new(
            vec![(*t, 0.0), (*t, 100.0)],
            BLACK.mix(0.3),
        )))?;
        c.draw_series(std::iter::once(Text::new(
            label.clone(),
            (*t + 0.1, 97.0),
            ("sans-serif", 14),
        )))?;
    }
    c.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .position(SeriesLabelPosition::MiddleRight)
        .draw()?;
    root.present()?;
    Ok(())
}
