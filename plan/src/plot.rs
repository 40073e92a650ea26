//! PNG plots of a run: active hosts and their mean CPU utilization over
//! time, before (one VM per host, as traced) and after consolidation.
//! Drawn with `plotters`' bitmap backend; labels use a TrueType font read
//! at run time (DejaVu Sans where the system has it, or `PLAN_FONT`), and
//! the plot is drawn without text when there is none.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;

/// One curve: a name and (hours, value) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Errors drawing a plot.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {msg}")]
pub struct PlotError {
    path: PathBuf,
    msg: String,
}

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a font once; false when none is found.
fn font() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let env = std::env::var("PLAN_FONT").ok();
        for p in env
            .iter()
            .map(String::as_str)
            .chain(FONT_PATHS.iter().copied())
        {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

fn mesh_and_lines<'a, Y>(
    chart: &mut ChartContext<
        'a,
        BitMapBackend<'a>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, Y>,
    >,
    data: &[Series],
    text: bool,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("hours");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|e| e.to_string())?;
    for (i, s) in data.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let drawn = chart
            .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        if text {
            drawn.label(s.name.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
            });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

const COLORS: [RGBColor; 4] = [
    RGBColor(200, 60, 50),
    RGBColor(40, 90, 180),
    RGBColor(40, 150, 70),
    RGBColor(150, 90, 170),
];

/// Draws two stacked panels (active hosts, mean utilization in %) to `path`.
pub fn draw(path: &Path, title: &str, hosts: &[Series], util: &[Series]) -> Result<(), PlotError> {
    let err = |e: String| PlotError {
        path: path.to_path_buf(),
        msg: e,
    };
    let text = font();
    let root = BitMapBackend::new(path, (1000, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let root = if text {
        root.titled(title, ("sans-serif", 24))
            .map_err(|e| err(e.to_string()))?
    } else {
        root
    };
    let panels = root.split_evenly((2, 1));
    let xmax = hosts
        .iter()
        .chain(util)
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    // Hosts on a log scale: one VM per host is ten times the consolidated count.
    let hmax = hosts
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(2.0, f64::max)
        * 1.5;
    {
        let mut b = ChartBuilder::on(&panels[0]);
        b.margin(15);
        if text {
            b.caption("active hosts (log scale)", ("sans-serif", 18))
                .x_label_area_size(35)
                .y_label_area_size(55);
        }
        let mut chart = b
            .build_cartesian_2d(0.0..xmax, (1.0..hmax).log_scale())
            .map_err(|e| err(e.to_string()))?;
        mesh_and_lines(&mut chart, hosts, text).map_err(err)?;
    }
    {
        let umax = util
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(1.0, f64::max)
            * 1.1;
        let mut b = ChartBuilder::on(&panels[1]);
        b.margin(15);
        if text {
            b.caption(
                "mean CPU utilization of active hosts (%)",
                ("sans-serif", 18),
            )
            .x_label_area_size(35)
            .y_label_area_size(55);
        }
        let mut chart = b
            .build_cartesian_2d(0.0..xmax, 0.0..umax)
            .map_err(|e| err(e.to_string()))?;
        mesh_and_lines(&mut chart, util, text).map_err(err)?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}
