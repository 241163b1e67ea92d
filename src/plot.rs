//! Figures of a run and of a sweep over `w`, as SVG or PNG (cargo feature `plot`).
//!
//! - [`plot_trace`] draws what the reference's `plot_nsa_trace` draws: the fidelity term
//!   (left axis, blue) and the orthogonality defect (right axis, green) of each recorded
//!   iteration, on two independent y-axes, titled with the retraction and `w`.
//! - [`plot_sweep`] draws the figure used to choose `w`: sparsity and the relative fidelity
//!   error (left axis, linear) and the orthogonality defect (right axis, logarithmic) of the
//!   solution against `w`.
//!
//! The format follows the file's extension (`.svg` or `.png`, any case). PNG text is drawn
//! with DejaVu Sans, compiled into the library (`assets/fonts/`, Bitstream Vera licence), so
//! no system font library is needed; SVG text names the `sans-serif` family and is laid out
//! with the same font's metrics. The `render_*` functions return the encoded bytes instead of
//! writing a file.
//!
//! The feature is on with the default `cli` feature; embedders that build with
//! `default-features = false` get neither this module nor its dependencies (plotters, png)
//! unless they enable `plot`.
//!
//! ```
//! use nsa_flow::{nsa_flow, Params};
//! use nsa_flow::plot::{render_trace, ImageFormat};
//! let x0 = nalgebra::DMatrix::from_fn(30, 3, |i, j| (((i + 1) * (j + 2)) % 7) as f64);
//! let res = nsa_flow(&x0, Some(&x0), &Params::default().w(0.5).max_iter(20)).unwrap();
//! let svg = render_trace(&res.traces, "soft_polar", 0.5, ImageFormat::Svg).unwrap();
//! assert!(String::from_utf8(svg).unwrap().contains("Orthogonality defect"));
//! // or straight to a file: nsa_flow::plot::plot_trace("trace.png", &res.traces, "soft_polar", 0.5)
//! ```

use crate::{NsaError, Result, TraceRow};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

/// DejaVu Sans 2.37, for text in bitmaps (see `assets/fonts/LICENSE-DejaVu.txt`).
static DEJAVU_SANS: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            // the bundled font is valid; were it not, text would fail to draw with an error
            let _ = plotters::style::register_font(FAMILY, style, DEJAVU_SANS);
        }
    });
}

/// The colours of the reference's `plot_nsa_trace` (matplotlib's Paired palette).
const BLUE: RGBColor = RGBColor(0x1f, 0x78, 0xb4);
const GREEN: RGBColor = RGBColor(0x33, 0xa0, 0x2c);
const ORANGE: RGBColor = RGBColor(0xe6, 0x61, 0x01);
const GRID: RGBColor = RGBColor(0xdd, 0xdd, 0xdd);

/// An image format, chosen by a file's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// Scalable vector graphics (text as `<text>` elements).
    Svg,
    /// An 8-bit RGB PNG (text rasterised with the bundled font).
    Png,
}

impl ImageFormat {
    /// The format of `path` by its extension (`.svg` or `.png`, any case).
    ///
    /// ```
    /// use nsa_flow::plot::ImageFormat;
    /// assert_eq!(ImageFormat::from_path("t.SVG").unwrap(), ImageFormat::Svg);
    /// assert!(ImageFormat::from_path("t.pdf").is_err());
    /// ```
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("svg") => Ok(Self::Svg),
            Some("png") => Ok(Self::Png),
            _ => Err(NsaError::InvalidParameter {
                name: "plot",
                reason: format!("{}: the extension must be .svg or .png", path.display()),
            }),
        }
    }

    /// Logical size of a figure and the factor applied to fonts and lines (PNGs are drawn
    /// 1.5× larger than SVGs, so that they stay sharp).
    fn geometry(self) -> ((u32, u32), f64) {
        match self {
            Self::Svg => ((900, 560), 1.0),
            Self::Png => ((1350, 840), 1.5),
        }
    }
}

/// One `w` of a sweep: the values [`plot_sweep`] draws.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SweepPoint {
    /// The weight.
    pub w: f64,
    /// The relative fidelity error `‖Y − X0‖_F / ‖X0‖_F` against the target actually fitted.
    pub fidelity: f64,
    /// The invariant orthogonality defect of `Y`.
    pub defect: f64,
    /// The fraction of entries of `Y` that are exactly zero.
    pub sparsity: f64,
}

/// Draws a run's trace into `path` (`.svg` or `.png`): the fidelity term and the orthogonality
/// column of `traces` against the iteration, on two y-axes, with the title
/// "NSA-Flow optimization trace: `retraction`, w = `w`".
///
/// The file is written whole or not at all (a temporary file renamed into place).
pub fn plot_trace(
    path: impl AsRef<Path>,
    traces: &[TraceRow],
    retraction: &str,
    w: f64,
) -> Result<()> {
    let path = path.as_ref();
    let bytes = render_trace(traces, retraction, w, ImageFormat::from_path(path)?)?;
    write_file(path, &bytes)
}

/// [`plot_trace`] into memory: the encoded SVG or PNG.
pub fn render_trace(
    traces: &[TraceRow],
    retraction: &str,
    w: f64,
    format: ImageFormat,
) -> Result<Vec<u8>> {
    let title = format!(
        "NSA-Flow optimization trace: {retraction}, w = {}",
        fmt_w(w)
    );
    let (size, s) = format.geometry();
    match format {
        ImageFormat::Svg => svg_bytes(size, |root| draw_trace(root, s, traces, &title)),
        ImageFormat::Png => png_bytes(size, |root| draw_trace(root, s, traces, &title)),
    }
}

/// Draws a sweep over `w` into `path` (`.svg` or `.png`): sparsity and relative fidelity error
/// (left, linear) and orthogonality defect (right, logarithmic) against `w`. `subtitle`
/// describes the problem (e.g. the retraction, the shape and the mode).
///
/// Defects of exactly zero cannot sit on a logarithmic axis; they are drawn on its floor.
pub fn plot_sweep(path: impl AsRef<Path>, points: &[SweepPoint], subtitle: &str) -> Result<()> {
    let path = path.as_ref();
    let bytes = render_sweep(points, subtitle, ImageFormat::from_path(path)?)?;
    write_file(path, &bytes)
}

/// [`plot_sweep`] into memory: the encoded SVG or PNG.
pub fn render_sweep(points: &[SweepPoint], subtitle: &str, format: ImageFormat) -> Result<Vec<u8>> {
    let (size, s) = format.geometry();
    match format {
        ImageFormat::Svg => svg_bytes(size, |root| draw_sweep(root, s, points, subtitle)),
        ImageFormat::Png => png_bytes(size, |root| draw_sweep(root, s, points, subtitle)),
    }
}

/// `w` as it is written in titles and file names: the shortest decimal that reads back as
/// the same `f64` (`0.5`, `0.25`, `1`).
pub fn fmt_w(w: f64) -> String {
    format!("{w}")
}

fn plot_err(e: impl std::fmt::Display) -> NsaError {
    NsaError::InvalidParameter {
        name: "plot",
        reason: format!("drawing failed: {e}"),
    }
}

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn svg_bytes(
    size: (u32, u32),
    draw: impl for<'a> FnOnce(DrawingArea<SVGBackend<'a>, Shift>) -> DrawResult<SVGBackend<'a>>,
) -> Result<Vec<u8>> {
    register_font();
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        draw(root.clone()).map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(out.into_bytes())
}

fn png_bytes(
    size: (u32, u32),
    draw: impl for<'a> FnOnce(DrawingArea<BitMapBackend<'a>, Shift>) -> DrawResult<BitMapBackend<'a>>,
) -> Result<Vec<u8>> {
    register_font();
    let (width, height) = size;
    let mut rgb = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        draw(root.clone()).map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(plot_err)?;
    writer.write_image_data(&rgb).map_err(plot_err)?;
    writer.finish().map_err(plot_err)?;
    Ok(out)
}

/// Through the crate's one writer: a unique temporary beside the target, renamed into place.
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::io::write_bytes(path, bytes.to_vec())
}

/// A tick label: plain for moderate magnitudes, scientific otherwise.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if (1e-3..1e4).contains(&a) {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        let s = format!("{v:.2e}");
        // 1.50e-3 → 1.5e-3
        match s.split_once('e') {
            Some((m, e)) => {
                let m = m.trim_end_matches('0').trim_end_matches('.');
                format!("{m}e{e}")
            }
            None => s,
        }
    }
}

/// A padded linear range holding the finite values of `vals`.
fn linear_range(vals: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = vals
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let span = hi - lo;
    let pad = if span > 0.0 {
        0.05 * span
    } else if lo != 0.0 {
        0.05 * lo.abs()
    } else {
        1.0
    };
    (lo - pad)..(hi + pad)
}

fn font<'a>(size: f64, s: f64) -> TextStyle<'a> {
    (FAMILY, size * s).into_font().into()
}

/// Two title lines at the top of `root`; the area below them.
fn titled<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    s: f64,
    title: &str,
    subtitle: &str,
) -> std::result::Result<DrawingArea<DB, Shift>, DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let bold = (FAMILY, 21.0 * s)
        .into_font()
        .style(FontStyle::Bold)
        .color(&BLACK);
    let area = root.titled(title, bold)?;
    area.titled(subtitle, font(15.0, s).color(&RGBColor(0x44, 0x44, 0x44)))
}

fn draw_trace<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    s: f64,
    traces: &[TraceRow],
    title: &str,
) -> DrawResult<DB> {
    let area = titled(&root, s, title, "Fidelity and orthogonality (dual scales)")?;
    let px = |v: f64| (v * s).round() as u32;
    // the reference's legend, in a row above the plot where it can hide no point
    let (strip, area) = area.split_vertically(px(30.0));
    legend_row(
        &strip,
        s,
        &[("Fidelity", BLUE, 1), ("Orthogonality", GREEN, 1)],
    )?;
    let x_max = traces.iter().map(|t| t.iter).max().unwrap_or(1).max(1) as f64;
    let x_min = traces.iter().map(|t| t.iter).min().unwrap_or(0) as f64;
    let x_pad = ((x_max - x_min) * 0.02).max(0.5);
    let xr = (x_min - x_pad)..(x_max + x_pad);
    let fr = linear_range(traces.iter().map(|t| t.fidelity));
    let or = linear_range(traces.iter().map(|t| t.orthogonality));
    let mut chart = ChartBuilder::on(&area)
        .margin(px(12.0))
        .x_label_area_size(px(48.0))
        .y_label_area_size(px(86.0))
        .right_y_label_area_size(px(86.0))
        .build_cartesian_2d(xr.clone(), fr)?
        .set_secondary_coord(xr, or);
    // as the reference: a black x axis, each y axis (labels and ticks) in its series' colour
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(GRID.stroke_width(px(1.0)))
        .disable_y_axis()
        .x_desc("Iteration")
        .axis_desc_style(font(16.0, s))
        .label_style(font(13.0, s))
        .x_label_formatter(&|v| tick(*v))
        .draw()?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_desc("Fidelity energy")
        .axis_desc_style(font(16.0, s).color(&BLUE))
        .label_style(font(13.0, s).color(&BLUE))
        .y_label_formatter(&|v| tick(*v))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("Orthogonality defect")
        .axis_desc_style(font(16.0, s).color(&GREEN))
        .label_style(font(13.0, s).color(&GREEN))
        .y_label_formatter(&|v| tick(*v))
        .draw()?;
    let marker = px(3.0);
    let finite = |v: f64| v.is_finite();
    let fid: Vec<(f64, f64)> = traces
        .iter()
        .filter(|t| finite(t.fidelity))
        .map(|t| (t.iter as f64, t.fidelity))
        .collect();
    let orth: Vec<(f64, f64)> = traces
        .iter()
        .filter(|t| finite(t.orthogonality))
        .map(|t| (t.iter as f64, t.orthogonality))
        .collect();
    let lw = px(2.0);
    chart.draw_series(LineSeries::new(fid.iter().copied(), BLUE.stroke_width(lw)))?;
    if fid.len() <= 400 {
        chart.draw_series(
            fid.iter()
                .map(|&p| Circle::new(p, marker, BLUE.mix(0.7).filled())),
        )?;
    }
    chart.draw_secondary_series(LineSeries::new(
        orth.iter().copied(),
        GREEN.stroke_width(lw),
    ))?;
    if orth.len() <= 400 {
        chart.draw_secondary_series(
            orth.iter()
                .map(|&p| Circle::new(p, marker, GREEN.mix(0.7).filled())),
        )?;
    }
    if traces.is_empty() {
        area.draw_text(
            "no recorded iterations",
            &font(16.0, s).color(&RGBColor(0x88, 0x88, 0x88)),
            (px(360.0) as i32, px(240.0) as i32),
        )?;
    }
    Ok(())
}

fn draw_sweep<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    s: f64,
    points: &[SweepPoint],
    subtitle: &str,
) -> DrawResult<DB> {
    let area = titled(&root, s, "NSA-Flow: choosing w", subtitle)?;
    let px = |v: f64| (v * s).round() as u32;
    // the legend sits in a row above the plot, where it can hide no point
    let (strip, area) = area.split_vertically(px(30.0));
    legend_row(
        &strip,
        s,
        &[
            ("Sparsity (fraction of zeros)", ORANGE, 0),
            ("Relative fidelity error ‖Y−X‖/‖X‖", BLUE, 1),
            ("Orthogonality defect (right axis)", GREEN, 2),
        ],
    )?;
    let left_hi = points
        .iter()
        .flat_map(|p| [p.fidelity, p.sparsity])
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max)
        * 1.05;
    let positive: Vec<f64> = points
        .iter()
        .map(|p| p.defect)
        .filter(|d| d.is_finite() && *d > 0.0)
        .collect();
    let (dlo, dhi) = if positive.is_empty() {
        (1e-17, 1e-15)
    } else {
        let lo = positive.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = positive.iter().copied().fold(0.0, f64::max);
        (lo / 3.0, hi * 3.0)
    };
    let mut chart = ChartBuilder::on(&area)
        .margin(px(12.0))
        .x_label_area_size(px(48.0))
        .y_label_area_size(px(70.0))
        .right_y_label_area_size(px(86.0))
        .build_cartesian_2d(-0.02f64..1.02f64, 0.0f64..left_hi)?
        .set_secondary_coord(-0.02f64..1.02f64, (dlo..dhi).log_scale());
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(GRID.stroke_width(px(1.0)))
        .x_desc("w (0 = fidelity only, 1 = orthogonality only)")
        .y_desc("Sparsity, relative fidelity error")
        .axis_desc_style(font(16.0, s))
        .label_style(font(13.0, s))
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("Orthogonality defect (log scale)")
        .axis_desc_style(font(16.0, s).color(&GREEN))
        .label_style(font(13.0, s).color(&GREEN))
        .y_label_formatter(&|v| tick(*v))
        .draw()?;
    let lw = px(2.0);
    let m = px(5.0);
    let sp: Vec<(f64, f64)> = points.iter().map(|p| (p.w, p.sparsity)).collect();
    let fi: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.fidelity.is_finite())
        .map(|p| (p.w, p.fidelity))
        .collect();
    let de: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| !p.defect.is_nan())
        .map(|p| (p.w, p.defect.clamp(dlo, dhi)))
        .collect();
    chart.draw_series(LineSeries::new(sp.iter().copied(), ORANGE.stroke_width(lw)))?;
    chart.draw_series(sp.iter().map(|&p| {
        EmptyElement::at(p)
            + Rectangle::new(
                [(-(m as i32), -(m as i32)), (m as i32, m as i32)],
                ORANGE.filled(),
            )
    }))?;
    chart.draw_series(LineSeries::new(fi.iter().copied(), BLUE.stroke_width(lw)))?;
    chart.draw_series(fi.iter().map(|&p| Circle::new(p, m, BLUE.filled())))?;
    chart.draw_secondary_series(LineSeries::new(de.iter().copied(), GREEN.stroke_width(lw)))?;
    chart.draw_secondary_series(
        de.iter()
            .map(|&p| TriangleMarker::new(p, m + 1, GREEN.filled())),
    )?;
    Ok(())
}

/// The sweep's legend, one centred row: a line with the series' marker, then its name.
/// Markers: 0 square, 1 circle, 2 triangle.
fn legend_row<DB: DrawingBackend>(
    strip: &DrawingArea<DB, Shift>,
    s: f64,
    entries: &[(&str, RGBColor, u8)],
) -> DrawResult<DB> {
    let px = |v: f64| (v * s).round() as i32;
    let style = font(14.0, s);
    let (key, gap, pad) = (px(30.0), px(28.0), px(8.0));
    let mut widths = Vec::new();
    for (text, _, _) in entries {
        let (w, _) = strip.estimate_text_size(text, &style)?;
        widths.push(w as i32);
    }
    let total: i32 =
        widths.iter().map(|w| key + pad + w).sum::<i32>() + gap * (entries.len() as i32 - 1);
    let (sw, sh) = strip.dim_in_pixel();
    let mut x = (sw as i32 - total).max(0) / 2;
    let y = sh as i32 / 2;
    let (lw, m) = (px(2.0) as u32, px(5.0));
    for ((text, color, marker), w) in entries.iter().zip(widths) {
        let line = PathElement::new(vec![(x, y), (x + key, y)], color.stroke_width(lw));
        strip.draw(&line)?;
        let c = (x + key / 2, y);
        match marker {
            0 => strip.draw(&Rectangle::new(
                [(c.0 - m, c.1 - m), (c.0 + m, c.1 + m)],
                color.filled(),
            ))?,
            1 => strip.draw(&Circle::new(c, m as u32, color.filled()))?,
            _ => strip.draw(&TriangleMarker::new(c, m as u32 + 1, color.filled()))?,
        }
        strip.draw_text(
            text,
            &style.pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Left,
                plotters::style::text_anchor::VPos::Center,
            )),
            (x + key + pad, y),
        )?;
        x += key + pad + w + gap;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<TraceRow> {
        (1..=30)
            .map(|i| TraceRow {
                iter: i,
                time: i as f64 * 1e-3,
                fidelity: 0.1 * (1.0 - (-(i as f64) / 8.0).exp()),
                orthogonality: 0.3 * (-(i as f64) / 5.0).exp(),
                total_energy: 0.0,
            })
            .collect()
    }

    #[test]
    fn svg_and_png_render() {
        let svg = render_trace(&rows(), "soft_polar", 0.5, ImageFormat::Svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("soft_polar, w = 0.5"));
        let png = render_trace(&rows(), "polar", 0.9, ImageFormat::Png).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let empty = render_trace(&[], "none", 0.0, ImageFormat::Svg).unwrap();
        assert!(String::from_utf8(empty)
            .unwrap()
            .contains("no recorded iterations"));
        let pts = [
            SweepPoint {
                w: 0.1,
                fidelity: 0.05,
                defect: 0.2,
                sparsity: 0.1,
            },
            SweepPoint {
                w: 0.9,
                fidelity: 0.4,
                defect: 0.0,
                sparsity: 0.6,
            },
        ];
        let sw = render_sweep(&pts, "x", ImageFormat::Png).unwrap();
        assert_eq!(&sw[..4], b"\x89PNG");
    }

    #[test]
    fn ticks_read_well() {
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(100.0), "100");
        assert_eq!(tick(1.5e-5), "1.5e-5");
    }
}
