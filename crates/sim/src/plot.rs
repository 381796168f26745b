//! Deterministic, dependency-free SVG charts (line charts, panel grids and grouped bar
//! charts) for the simulator's experiment outputs: identical input gives identical bytes.

use std::fmt::Write as _;

/// Width of one chart (or one panel) in SVG user units.
const WIDTH: f64 = 640.0;
/// Height of one chart (or one panel) in SVG user units.
const HEIGHT: f64 = 400.0;
const MARGIN_LEFT: f64 = 70.0;
/// Room on the right for the legend.
const MARGIN_RIGHT: f64 = 150.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 55.0;
/// Roughly how many ticks an axis aims for.
const TARGET_TICKS: usize = 5;
/// Above this many categories the bar chart's category labels are slanted.
const SLANT_CATEGORIES: usize = 8;

/// Series colours (cycled when there are more series than colours).
const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Appends formatted text to a `String`; writing to a `String` cannot fail.
macro_rules! w {
    ($($arg:tt)*) => {{
        let _ = write!($($arg)*);
    }};
}

/// One line (or band) on a chart.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// How the y axis maps values to positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    Linear,
    /// Ticks at powers of ten; non-positive values are not drawn.
    Log10,
}

/// A line chart: one polyline with circle markers per series, plus a legend.
#[derive(Clone, Debug)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub y_scale: Scale,
    pub series: Vec<Series>,
}

impl LineChart {
    /// Renders the chart as a complete standalone SVG document (starting with `<svg`,
    /// ending with `</svg>`, no trailing newline).
    pub fn render(&self) -> String {
        let mut out = String::new();
        open_svg(&mut out, WIDTH, HEIGHT);
        draw_line_chart(&mut out, self, None);
        out.push_str("</svg>");
        out
    }
}

/// A grid of small charts (e.g. one panel per scheduler) sharing a y range, rendered side
/// by side into one SVG.
///
/// Panels are laid out row by row, `columns` per row (at least one). The y range of each
/// panel is computed over the data of *all* panels (using the panel's own scale), so panels
/// are directly comparable; the x range and title stay per panel.
pub fn render_panels(panels: &[LineChart], columns: usize) -> String {
    let mut out = String::new();
    if panels.is_empty() {
        open_svg(&mut out, WIDTH, HEIGHT);
        no_data_note(&mut out, &Plot::standard());
        out.push_str("</svg>");
        return out;
    }
    let cols = columns.clamp(1, panels.len());
    let rows = panels.len().div_ceil(cols);
    open_svg(&mut out, WIDTH * cols as f64, HEIGHT * rows as f64);
    let all = || panels.iter().flat_map(|p| p.series.iter());
    let shared_linear = data_bounds(all(), Scale::Linear).map(|b| (b.y_min, b.y_max));
    let shared_log = data_bounds(all(), Scale::Log10).map(|b| (b.y_min, b.y_max));
    for (i, panel) in panels.iter().enumerate() {
        let x = WIDTH * (i % cols) as f64;
        let y = HEIGHT * (i / cols) as f64;
        let shared = match panel.y_scale {
            Scale::Linear => shared_linear,
            Scale::Log10 => shared_log,
        };
        w!(out, "<g transform=\"translate({},{})\">\n", num(x), num(y));
        draw_line_chart(&mut out, panel, shared);
        out.push_str("</g>\n");
    }
    out.push_str("</svg>");
    out
}

/// A bar chart: one bar per (category, group) pair, side by side within a category, or
/// stacked into one bar per category (for many categories, such as one per machine).
#[derive(Clone, Debug)]
pub struct BarChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub categories: Vec<String>,
    /// One series per bar group; `points[i].1` is the value for `categories[i]` (the x
    /// coordinate is ignored). Missing or non-finite values leave a gap.
    pub groups: Vec<Series>,
    /// Stack the groups' (non-negative) values into one bar per category.
    pub stacked: bool,
}

/// With more categories than this, only every n-th category is labelled.
const LABELLED_CATEGORIES_MAX: usize = 25;

impl BarChart {
    /// Renders the chart as a complete standalone SVG document (starting with `<svg`,
    /// ending with `</svg>`, no trailing newline).
    pub fn render(&self) -> String {
        let mut out = String::new();
        open_svg(&mut out, WIDTH, HEIGHT);
        let plot = Plot::standard();
        chart_frame(&mut out, &self.title, &self.x_label, &self.y_label, &plot);

        let value = |g: &Series, c: usize| g.points.get(c).map(|p| p.1).filter(|v| v.is_finite());
        let n_cat = self.categories.len();
        let mut range: Option<(f64, f64)> = None;
        let mut widen_to = |v: f64| {
            range = Some(match range {
                None => (v, v),
                Some((lo, hi)) => (lo.min(v), hi.max(v)),
            });
        };
        if self.stacked {
            for c in 0..n_cat {
                let vals: Vec<f64> = self.groups.iter().filter_map(|g| value(g, c)).collect();
                if !vals.is_empty() {
                    widen_to(vals.iter().map(|v| v.max(0.0)).sum());
                }
            }
        } else {
            for g in &self.groups {
                (0..n_cat)
                    .filter_map(|c| value(g, c))
                    .for_each(&mut widen_to);
            }
        }
        let Some((lo, hi)) = range else {
            no_data_note(&mut out, &plot);
            legend(&mut out, &plot, &self.groups, LegendMark::Swatch);
            out.push_str("</svg>");
            return out;
        };

        let y_axis = Axis::linear(lo, hi, true);
        y_grid(&mut out, &y_axis, &plot);

        // Zero baseline (bars grow up or down from it).
        let zero_y = plot.py(y_axis.frac(0.0).unwrap_or(0.0));
        if zero_y > plot.y && zero_y < plot.y + plot.h {
            w!(
                out,
                "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#333\"/>\n",
                num(plot.x),
                num(zero_y),
                num(plot.x + plot.w),
                num(zero_y)
            );
        }

        let slot = plot.w / n_cat as f64;
        let n_groups = if self.stacked {
            1.0
        } else {
            self.groups.len().max(1) as f64
        };
        let bar_w = slot * 0.8 / n_groups;
        let gap = if bar_w > 4.0 { 1.0 } else { 0.0 };
        let mut stacked_base = vec![0.0f64; n_cat];
        for (gi, g) in self.groups.iter().enumerate() {
            w!(out, "<g fill=\"{}\">\n", colour(gi));
            for (c, base) in stacked_base.iter_mut().enumerate() {
                let Some(v) = value(g, c) else { continue };
                let (from, to, x) = if self.stacked {
                    let from = *base;
                    *base += v.max(0.0);
                    (from, *base, plot.x + slot * c as f64 + slot * 0.1)
                } else {
                    (
                        0.0,
                        v,
                        plot.x + slot * c as f64 + slot * 0.1 + bar_w * gi as f64,
                    )
                };
                let (Some(f0), Some(f1)) = (y_axis.frac(from), y_axis.frac(to)) else {
                    continue;
                };
                let (y0, y1) = (plot.py(f0), plot.py(f1));
                w!(
                    out,
                    "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/>\n",
                    num(x + gap / 2.0),
                    num(y0.min(y1)),
                    num(bar_w - gap),
                    num((y1 - y0).abs())
                );
            }
            out.push_str("</g>\n");
        }

        let slant = n_cat > SLANT_CATEGORIES;
        let label_every = n_cat.div_ceil(LABELLED_CATEGORIES_MAX).max(1);
        for (c, name) in self.categories.iter().enumerate().step_by(label_every) {
            let cx = plot.x + slot * (c as f64 + 0.5);
            let ty = plot.y + plot.h + 16.0;
            if slant {
                w!(
                    out,
                    "<text transform=\"translate({},{}) rotate(-35)\" text-anchor=\"end\">{}</text>\n",
                    num(cx),
                    num(ty - 4.0),
                    escape(name)
                );
            } else {
                w!(
                    out,
                    "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                    num(cx),
                    num(ty),
                    escape(name)
                );
            }
        }
        legend(&mut out, &plot, &self.groups, LegendMark::Swatch);
        out.push_str("</svg>");
        out
    }
}

// ---------------------------------------------------------------------------------------
// Layout and drawing helpers
// ---------------------------------------------------------------------------------------

/// The plot area (inside the axes) of one chart, in the chart's local coordinates.
#[derive(Clone, Copy, Debug)]
struct Plot {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

impl Plot {
    fn standard() -> Plot {
        Plot {
            x: MARGIN_LEFT,
            y: MARGIN_TOP,
            w: WIDTH - MARGIN_LEFT - MARGIN_RIGHT,
            h: HEIGHT - MARGIN_TOP - MARGIN_BOTTOM,
        }
    }

    /// Horizontal pixel position of an axis fraction in `[0, 1]`.
    fn px(&self, f: f64) -> f64 {
        self.x + f * self.w
    }

    /// Vertical pixel position of an axis fraction in `[0, 1]` (0 at the bottom).
    fn py(&self, f: f64) -> f64 {
        self.y + self.h - f * self.h
    }
}

fn open_svg(out: &mut String, width: f64, height: f64) {
    w!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n",
        w = num(width),
        h = num(height)
    );
}

/// Background, title, axis labels and the plot-area border.
fn chart_frame(out: &mut String, title: &str, x_label: &str, y_label: &str, plot: &Plot) {
    w!(
        out,
        "<rect width=\"{}\" height=\"{}\" fill=\"white\"/>\n",
        num(WIDTH),
        num(HEIGHT)
    );
    w!(
        out,
        "<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
        num(plot.x + plot.w / 2.0),
        escape(title)
    );
    w!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
        num(plot.x + plot.w / 2.0),
        num(HEIGHT - 12.0),
        escape(x_label)
    );
    w!(
        out,
        "<text transform=\"translate(16,{}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
        num(plot.y + plot.h / 2.0),
        escape(y_label)
    );
    w!(
        out,
        "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#333\"/>\n",
        num(plot.x),
        num(plot.y),
        num(plot.w),
        num(plot.h)
    );
}

fn no_data_note(out: &mut String, plot: &Plot) {
    w!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#888\" font-size=\"14\">no data</text>\n",
        num(plot.x + plot.w / 2.0),
        num(plot.y + plot.h / 2.0)
    );
}

/// Horizontal grid lines and labels for the y ticks.
fn y_grid(out: &mut String, axis: &Axis, plot: &Plot) {
    for (pos, label) in &axis.ticks {
        let y = plot.py(axis.frac_of_pos(*pos));
        w!(
            out,
            "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#e5e5e5\"/>\n",
            num(plot.x),
            num(plot.x + plot.w),
            y = num(y)
        );
        w!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n",
            num(plot.x - 6.0),
            num(y + 4.0),
            escape(label)
        );
    }
}

/// Vertical grid lines and labels for the x ticks.
fn x_grid(out: &mut String, axis: &Axis, plot: &Plot) {
    for (pos, label) in &axis.ticks {
        let x = plot.px(axis.frac_of_pos(*pos));
        w!(
            out,
            "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"#e5e5e5\"/>\n",
            num(plot.y),
            num(plot.y + plot.h),
            x = num(x)
        );
        w!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            num(x),
            num(plot.y + plot.h + 16.0),
            escape(label)
        );
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LegendMark {
    /// A short line with a circle marker (line charts).
    Line,
    /// A filled square (bar charts).
    Swatch,
}

fn legend(out: &mut String, plot: &Plot, series: &[Series], mark: LegendMark) {
    let x0 = plot.x + plot.w + 14.0;
    for (i, s) in series.iter().enumerate() {
        let y = plot.y + 8.0 + 18.0 * i as f64;
        let c = colour(i);
        match mark {
            LegendMark::Line => {
                w!(
                    out,
                    "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{c}\" stroke-width=\"1.5\"/>\n",
                    num(x0),
                    num(x0 + 18.0),
                    y = num(y)
                );
                w!(
                    out,
                    "<circle cx=\"{}\" cy=\"{}\" r=\"2.5\" fill=\"{c}\"/>\n",
                    num(x0 + 9.0),
                    num(y)
                );
            }
            LegendMark::Swatch => {
                w!(
                    out,
                    "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{c}\"/>\n",
                    num(x0 + 3.0),
                    num(y - 6.0)
                );
            }
        }
        w!(
            out,
            "<text x=\"{}\" y=\"{}\">{}</text>\n",
            num(x0 + 24.0),
            num(y + 4.0),
            escape(&s.name)
        );
    }
}

/// Draws one line chart in local coordinates `(0,0)-(WIDTH,HEIGHT)`. `shared_y`, when
/// given, is the raw y data range (valid for the chart's scale) to use instead of the
/// chart's own.
fn draw_line_chart(out: &mut String, chart: &LineChart, shared_y: Option<(f64, f64)>) {
    let plot = Plot::standard();
    chart_frame(out, &chart.title, &chart.x_label, &chart.y_label, &plot);
    let Some(bounds) = data_bounds(chart.series.iter(), chart.y_scale) else {
        no_data_note(out, &plot);
        legend(out, &plot, &chart.series, LegendMark::Line);
        return;
    };
    let (y_min, y_max) = match shared_y {
        Some((lo, hi)) => (lo.min(bounds.y_min), hi.max(bounds.y_max)),
        None => (bounds.y_min, bounds.y_max),
    };
    let x_axis = Axis::linear(bounds.x_min, bounds.x_max, false);
    let y_axis = match chart.y_scale {
        Scale::Linear => Axis::linear(y_min, y_max, false),
        Scale::Log10 => Axis::log10(y_min, y_max),
    };
    x_grid(out, &x_axis, &plot);
    y_grid(out, &y_axis, &plot);

    for (i, s) in chart.series.iter().enumerate() {
        let c = colour(i);
        let mut segments: Vec<Vec<(f64, f64)>> = Vec::new();
        let mut current: Vec<(f64, f64)> = Vec::new();
        for &(x, y) in &s.points {
            match (x_axis.frac(x), y_axis.frac(y)) {
                (Some(fx), Some(fy)) => current.push((plot.px(fx), plot.py(fy))),
                _ => {
                    if !current.is_empty() {
                        segments.push(std::mem::take(&mut current));
                    }
                }
            }
        }
        if !current.is_empty() {
            segments.push(current);
        }
        if segments.is_empty() {
            continue;
        }
        w!(out, "<g stroke=\"{c}\" fill=\"{c}\">\n");
        for seg in segments.iter().filter(|seg| seg.len() >= 2) {
            out.push_str("<polyline fill=\"none\" stroke-width=\"1.5\" points=\"");
            for (k, (x, y)) in seg.iter().enumerate() {
                if k > 0 {
                    out.push(' ');
                }
                w!(out, "{},{}", num(*x), num(*y));
            }
            out.push_str("\"/>\n");
        }
        for (x, y) in segments.iter().flatten() {
            w!(
                out,
                "<circle cx=\"{}\" cy=\"{}\" r=\"2.5\" stroke=\"none\"/>\n",
                num(*x),
                num(*y)
            );
        }
        out.push_str("</g>\n");
    }
    legend(out, &plot, &chart.series, LegendMark::Line);
}

fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

// ---------------------------------------------------------------------------------------
// Data ranges and axes
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
struct Bounds {
    x_min: f64,
    x_max: f64,
    y_min: f64,
    y_max: f64,
}

/// Whether a point can be drawn on a chart with the given y scale.
fn drawable(x: f64, y: f64, scale: Scale) -> bool {
    x.is_finite() && y.is_finite() && (scale == Scale::Linear || y > 0.0)
}

/// Bounds of all drawable points, or `None` when there are none.
fn data_bounds<'a>(series: impl Iterator<Item = &'a Series>, scale: Scale) -> Option<Bounds> {
    let mut b: Option<Bounds> = None;
    for &(x, y) in series.flat_map(|s| s.points.iter()) {
        if !drawable(x, y, scale) {
            continue;
        }
        b = Some(match b {
            None => Bounds {
                x_min: x,
                x_max: x,
                y_min: y,
                y_max: y,
            },
            Some(b) => Bounds {
                x_min: b.x_min.min(x),
                x_max: b.x_max.max(x),
                y_min: b.y_min.min(y),
                y_max: b.y_max.max(y),
            },
        });
    }
    b
}

/// An axis: a range `[lo, hi]` in axis units (values for linear axes, decimal exponents for
/// log axes) and its labelled tick positions (in the same units).
#[derive(Clone, Debug)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<(f64, String)>,
}

impl Axis {
    /// A linear axis covering `[lo, hi]` (and 0 if `include_zero`), widened to nice ticks.
    fn linear(lo: f64, hi: f64, include_zero: bool) -> Axis {
        let (mut lo, mut hi) = (lo, hi);
        if include_zero {
            lo = lo.min(0.0);
            hi = hi.max(0.0);
        }
        let (lo, hi) = widen(lo, hi);
        let values = nice_ticks(lo, hi, TARGET_TICKS);
        let (a_lo, a_hi) = match (values.first(), values.last()) {
            (Some(&a), Some(&b)) if b > a => (a.min(lo), b.max(hi)),
            _ => (lo, hi),
        };
        let step = match values.as_slice() {
            [a, b, ..] => b - a,
            _ => a_hi - a_lo,
        };
        let largest = a_lo.abs().max(a_hi.abs());
        let digits = if step > 0.0 && largest > 0.0 {
            largest.log10().floor() - step.log10().floor() + 1.0
        } else {
            0.0
        };
        let sig = digits.clamp(3.0, 15.0) as usize;
        Axis {
            lo: a_lo,
            hi: a_hi,
            log: false,
            ticks: values.into_iter().map(|v| (v, fmt_sig(v, sig))).collect(),
        }
    }

    /// A log10 axis covering `[min, max]` (both must be positive and finite), with ticks
    /// at powers of ten (every k-th decade when the range spans many decades).
    fn log10(min: f64, max: f64) -> Axis {
        let lo = min.log10().floor();
        let mut hi = max.log10().ceil();
        if hi <= lo {
            hi = lo + 1.0;
        }
        let span = hi - lo;
        let stride = (span / 6.0).ceil().max(1.0);
        let n = (span / stride).ceil();
        let hi = lo + n * stride;
        let ticks = (0..=(n as i64))
            .map(|k| {
                let e = lo + k as f64 * stride;
                (e, pow10_label(e as i32))
            })
            .collect();
        Axis {
            lo,
            hi,
            log: true,
            ticks,
        }
    }

    /// Fraction along the axis (0 at `lo`, 1 at `hi`) of a data value; `None` if the value
    /// cannot be drawn (non-finite, or non-positive on a log axis).
    fn frac(&self, v: f64) -> Option<f64> {
        let u = if self.log {
            if v > 0.0 {
                v.log10()
            } else {
                return None;
            }
        } else {
            v
        };
        if u.is_finite() {
            Some(self.frac_of_pos(u))
        } else {
            None
        }
    }

    /// Fraction along the axis of a position in axis units.
    fn frac_of_pos(&self, u: f64) -> f64 {
        let span = self.hi - self.lo;
        if span > 0.0 && span.is_finite() {
            (u - self.lo) / span
        } else {
            0.5
        }
    }
}

/// Makes a degenerate range (`lo == hi`) non-empty; swaps a reversed one.
fn widen(lo: f64, hi: f64) -> (f64, f64) {
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    if hi > lo {
        return (lo, hi);
    }
    let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
    (lo - d, hi + d)
}

/// Exactly parsed `10^e` (deterministic, unlike repeated multiplication for large `e`).
fn pow10(e: i32) -> f64 {
    format!("1e{e}").parse::<f64>().unwrap_or(f64::NAN)
}

/// Nice tick values (steps of 1, 2 or 5 times a power of ten) covering `[lo, hi]`, aiming
/// for about `target` ticks. The first tick is `<= lo` and the last `>= hi`. Returns an
/// empty vector for non-finite input.
fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !lo.is_finite() || !hi.is_finite() {
        return Vec::new();
    }
    let (lo, hi) = widen(lo, hi);
    let span = hi - lo;
    if !span.is_finite() || span <= 0.0 {
        return vec![lo, hi];
    }
    let raw = span / (target.max(2) - 1) as f64;
    let e = raw.log10().floor() as i32;
    let norm = raw / pow10(e);
    let (m, e) = if norm < 1.5 {
        (1.0, e)
    } else if norm < 3.0 {
        (2.0, e)
    } else if norm < 7.0 {
        (5.0, e)
    } else {
        (1.0, e + 1)
    };
    // Tick k is k * m * 10^e; for negative e divide by 10^-e, which is exact for small k*m,
    // so that e.g. 3 * 0.1 comes out as 0.3 rather than 0.30000000000000004.
    let tick = |k: f64| {
        if e >= 0 {
            k * m * pow10(e)
        } else {
            k * m / pow10(-e)
        }
    };
    let step = tick(1.0);
    if !(step > 0.0 && step.is_finite()) {
        return vec![lo, hi];
    }
    let k_lo = (lo / step + 1e-9).floor();
    let k_hi = (hi / step - 1e-9).ceil();
    if !(k_hi - k_lo).is_finite() || k_hi - k_lo > 1000.0 {
        return vec![lo, hi];
    }
    let mut ticks: Vec<f64> = Vec::new();
    let mut k = k_lo;
    while k <= k_hi {
        // `+ 0.0` turns -0.0 into 0.0.
        let v = tick(k) + 0.0;
        if v.is_finite() && ticks.last().is_none_or(|&last| v > last) {
            ticks.push(v);
        }
        k += 1.0;
    }
    ticks
}

/// Label for the tick at `10^e`.
fn pow10_label(e: i32) -> String {
    if (-3..9).contains(&e) {
        fmt_num(pow10(e))
    } else {
        format!("1e{e}")
    }
}

/// Compact, deterministic number formatting with up to 4 significant digits:
/// `0`, `0.5`, `10`, `2.5k`, `1.5M`, `1e-4`, `3e9`.
fn fmt_num(v: f64) -> String {
    fmt_sig(v, 4)
}

/// Like [`fmt_num`] with up to `sig` significant digits (trailing zeros trimmed).
fn fmt_sig(v: f64, sig: usize) -> String {
    if v.is_nan() {
        return "NaN".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    if v == 0.0 {
        return "0".to_string();
    }
    let sig = sig.clamp(1, 17);
    let a = v.abs();
    if !(1e-3..1e9).contains(&a) {
        let s = format!("{:.*e}", sig - 1, v);
        return match s.split_once('e') {
            Some((mantissa, exp)) => format!("{}e{}", trim_zeros(mantissa), exp),
            None => s,
        };
    }
    let (scaled, suffix) = if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let mag = scaled.abs().log10().floor() as i64;
    let decimals = (sig as i64 - 1 - mag).clamp(0, 15) as usize;
    let s = trim_zeros(&format!("{scaled:.decimals$}"));
    if s == "-0" || s == "0" {
        return "0".to_string();
    }
    format!("{s}{suffix}")
}

/// Removes trailing zeros after a decimal point (and the point itself if nothing is left).
fn trim_zeros(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s.to_string()
    }
}

/// Formats an SVG coordinate: at most two decimals, trailing zeros trimmed.
fn num(v: f64) -> String {
    let s = trim_zeros(&format!("{v:.2}"));
    if s == "-0" {
        "0".to_string()
    } else {
        s
    }
}

/// Escapes text for use in XML character data and attribute values; drops control
/// characters that XML 1.0 does not allow.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(ch),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, points: &[(f64, f64)]) -> Series {
        Series {
            name: name.to_string(),
            points: points.to_vec(),
        }
    }

    fn chart(title: &str, scale: Scale, series: Vec<Series>) -> LineChart {
        LineChart {
            title: title.to_string(),
            x_label: "load".to_string(),
            y_label: "latency (ms)".to_string(),
            y_scale: scale,
            series,
        }
    }

    fn sample() -> LineChart {
        chart(
            "p99 latency",
            Scale::Linear,
            vec![
                series("fifo", &[(0.1, 5.0), (0.5, 9.0), (0.9, 40.0)]),
                series("turnpike", &[(0.1, 4.0), (0.5, 6.0), (0.9, 12.5)]),
            ],
        )
    }

    fn assert_doc(svg: &str) {
        assert!(svg.starts_with("<svg"), "bad start: {svg}");
        assert!(svg.ends_with("</svg>"), "bad end: {svg}");
        assert_eq!(svg.matches("<svg").count(), 1);
    }

    fn count(svg: &str, pat: &str) -> usize {
        svg.matches(pat).count()
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
    }

    #[test]
    fn line_chart_is_a_document_with_names_and_lines() {
        let svg = sample().render();
        assert_doc(&svg);
        assert!(svg.contains(">fifo</text>"));
        assert!(svg.contains(">turnpike</text>"));
        assert!(svg.contains(">p99 latency</text>"));
        assert_eq!(count(&svg, "<polyline"), 2);
        // 6 data markers + 2 legend markers.
        assert_eq!(count(&svg, "<circle"), 8);
        assert!(svg.contains(PALETTE[0]) && svg.contains(PALETTE[1]));
        assert!(!svg.contains("no data"));
    }

    #[test]
    fn rendering_is_deterministic() {
        let a = sample().render();
        let b = sample().clone().render();
        assert_eq!(a, b);
        let bars = sample_bars();
        assert_eq!(bars.render(), bars.render());
        let panels = [sample(), sample()];
        assert_eq!(render_panels(&panels, 2), render_panels(&panels, 2));
    }

    #[test]
    fn text_is_escaped() {
        let mut c = sample();
        c.title = "a<b & \"c\" > d".to_string();
        c.series[0].name = "<fifo>".to_string();
        let svg = c.render();
        assert!(svg.contains("a&lt;b &amp; &quot;c&quot; &gt; d"));
        assert!(svg.contains("&lt;fifo&gt;"));
        assert!(!svg.contains("a<b"));
        assert!(!svg.contains("<fifo>"));
        assert_eq!(escape("x\u{1}y'"), "xy&apos;");
    }

    #[test]
    fn log_scale_skips_non_positive_values() {
        let pts = [(1.0, 0.0), (2.0, 10.0), (3.0, 100.0), (4.0, -5.0)];
        let lin = chart("t", Scale::Linear, vec![series("s", &pts)]).render();
        let log = chart("t", Scale::Log10, vec![series("s", &pts)]).render();
        assert_doc(&log);
        // Linear: 4 markers + legend; log: only the 2 positive points + legend.
        assert_eq!(count(&lin, "<circle"), 5);
        assert_eq!(count(&log, "<circle"), 3);
        assert!(log.contains(">10</text>") && log.contains(">100</text>"));
        assert!(!log.contains("NaN") && !log.contains("inf"));
    }

    #[test]
    fn log_scale_ticks_at_powers_of_ten() {
        let c = chart(
            "t",
            Scale::Log10,
            vec![series("s", &[(0.0, 0.5), (1.0, 2000.0)])],
        );
        let svg = c.render();
        for label in [">0.1<", ">1<", ">10<", ">100<", ">1k<", ">10k<"] {
            assert!(svg.contains(label), "missing {label}");
        }
        let axis = Axis::log10(0.5, 2000.0);
        assert_eq!(axis.lo, -1.0);
        assert_eq!(axis.hi, 4.0);
        let wide = Axis::log10(1e-12, 1e12);
        assert!(wide.ticks.len() <= 8, "{:?}", wide.ticks);
    }

    #[test]
    fn log_scale_with_only_zeros_is_no_data() {
        let c = chart(
            "t",
            Scale::Log10,
            vec![series("zeros", &[(1.0, 0.0), (2.0, 0.0)])],
        );
        let svg = c.render();
        assert_doc(&svg);
        assert!(svg.contains("no data"));
        assert!(svg.contains(">zeros</text>"));
    }

    #[test]
    fn non_finite_points_are_skipped() {
        let pts = [
            (0.0, 1.0),
            (1.0, f64::NAN),
            (2.0, 3.0),
            (f64::INFINITY, 4.0),
            (4.0, f64::NEG_INFINITY),
            (5.0, 2.0),
        ];
        let svg = chart("t", Scale::Linear, vec![series("s", &pts)]).render();
        assert_doc(&svg);
        assert_eq!(count(&svg, "<circle"), 4); // 3 finite points + legend
        assert_eq!(count(&svg, "<polyline"), 0); // every run has a single point
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn empty_charts_say_no_data() {
        let none = chart("empty", Scale::Linear, vec![]).render();
        assert_doc(&none);
        assert!(none.contains("no data"));
        let empty_series = chart("empty", Scale::Linear, vec![series("a", &[])]).render();
        assert!(empty_series.contains("no data") && empty_series.contains(">a</text>"));
        let panels = render_panels(&[], 3);
        assert_doc(&panels);
        assert!(panels.contains("no data"));
        let bars = BarChart {
            title: "b".into(),
            x_label: String::new(),
            y_label: String::new(),
            categories: vec![],
            stacked: false,
            groups: vec![series("g", &[(0.0, 1.0)])],
        }
        .render();
        assert_doc(&bars);
        assert!(bars.contains("no data"));
    }

    #[test]
    fn single_point_chart_renders() {
        let svg = chart("one", Scale::Linear, vec![series("s", &[(3.0, 3.0)])]).render();
        assert_doc(&svg);
        assert!(!svg.contains("no data"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn panels_share_y_range_and_keep_titles() {
        let a = chart(
            "A",
            Scale::Linear,
            vec![series("x", &[(0.0, 0.0), (3.0, 10.0)])],
        );
        let b = chart(
            "B",
            Scale::Linear,
            vec![series("y", &[(0.0, 0.0), (3.0, 1000.0)])],
        );
        let c = chart(
            "C",
            Scale::Linear,
            vec![series("z", &[(0.0, 5.0), (3.0, 6.0)])],
        );
        let svg = render_panels(&[a.clone(), b, c], 2);
        assert_doc(&svg);
        assert!(svg.contains("width=\"1280\" height=\"800\""));
        assert!(
            svg.contains(">A</text>") && svg.contains(">B</text>") && svg.contains(">C</text>")
        );
        // All three panels get the 1k tick from panel B's data.
        assert_eq!(count(&svg, ">1k</text>"), 3);
        assert_eq!(count(&svg, "<g transform="), 3);
        // Alone, panel A would not reach 1k.
        assert!(!a.render().contains(">1k</text>"));
        // columns = 0 is treated as 1.
        assert!(render_panels(&[a], 0).contains("width=\"640\" height=\"400\""));
    }

    fn sample_bars() -> BarChart {
        BarChart {
            title: "throughput".into(),
            x_label: "scheduler".into(),
            y_label: "req/s".into(),
            categories: vec!["fifo".into(), "srpt".into(), "turnpike".into()],
            stacked: false,
            groups: vec![
                series("cold", &[(0.0, 120.0), (1.0, 150.0), (2.0, 210.0)]),
                series("warm", &[(0.0, 300.0), (1.0, f64::NAN)]),
            ],
        }
    }

    #[test]
    fn stacked_bars_reach_the_sum_and_thin_out_labels() {
        let mut bars = sample_bars();
        bars.stacked = true;
        bars.groups[1].points[1].1 = 60.0;
        let svg = bars.render();
        assert_doc(&svg);
        // Sums are 420, 210, 210: the axis must reach past 400 (ticks 0..500 by 100).
        assert!(svg.contains(">400</text>"), "{svg}");
        let grouped = sample_bars().render();
        assert!(!grouped.contains(">400</text>"));
        let many = BarChart {
            categories: (0..100).map(|i| i.to_string()).collect(),
            groups: vec![series(
                "g",
                &(0..100).map(|i| (i as f64, 1.0)).collect::<Vec<_>>(),
            )],
            ..sample_bars()
        }
        .render();
        assert!(many.contains(">96</text>") && !many.contains(">97</text>"));
    }

    #[test]
    fn bar_chart_draws_one_bar_per_finite_value() {
        let svg = sample_bars().render();
        assert_doc(&svg);
        for name in ["fifo", "srpt", "turnpike", "cold", "warm", "throughput"] {
            assert!(svg.contains(&format!(">{name}</text>")), "missing {name}");
        }
        // 4 finite values -> 4 bars, inside the two coloured groups.
        let bars: usize = svg
            .split("<g fill=")
            .skip(1)
            .map(|g| g.split("</g>").next().map_or(0, |g| count(g, "<rect")))
            .sum();
        assert_eq!(bars, 4);
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn bar_chart_handles_negative_values() {
        let mut b = sample_bars();
        b.groups[0].points[1].1 = -50.0;
        let svg = b.render();
        assert_doc(&svg);
        assert!(svg.contains(">-50</text>") || svg.contains(">-100</text>"));
        assert!(!svg.contains("height=\"-"));
    }

    #[test]
    fn nice_ticks_use_1_2_5_steps() {
        assert!(close(
            &nice_ticks(0.0, 10.0, 5),
            &[0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        ));
        assert!(close(
            &nice_ticks(0.0, 1.0, 5),
            &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
        ));
        assert!(close(&nice_ticks(0.0, 7.3, 5), &[0.0, 2.0, 4.0, 6.0, 8.0]));
        assert!(close(
            &nice_ticks(-1.0, 1.0, 5),
            &[-1.0, -0.5, 0.0, 0.5, 1.0]
        ));
        assert!(close(
            &nice_ticks(0.0, 100.0, 5),
            &[0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        ));
        assert!(close(&nice_ticks(0.0, 0.3, 5), &[0.0, 0.1, 0.2, 0.3]));
        assert!(close(
            &nice_ticks(120.0, 980.0, 5),
            &[0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]
        ));
        // Reversed and degenerate ranges still give increasing ticks around the value.
        assert_eq!(nice_ticks(10.0, 0.0, 5), nice_ticks(0.0, 10.0, 5));
        let t = nice_ticks(3.0, 3.0, 5);
        assert!(t.len() >= 2 && t[0] <= 3.0 && t[t.len() - 1] >= 3.0);
        assert!(t.windows(2).all(|w| w[0] < w[1]));
        assert!(nice_ticks(f64::NAN, 1.0, 5).is_empty());
        assert!(nice_ticks(0.0, f64::INFINITY, 5).is_empty());
        // Huge ranges do not overflow or loop forever.
        assert!(nice_ticks(-1e308, 1e308, 5).len() >= 2);
        // No negative zero.
        assert!(nice_ticks(-1.0, 1.0, 5)
            .iter()
            .all(|v| !(*v == 0.0 && v.is_sign_negative())));
    }

    #[test]
    fn numbers_are_compact() {
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(-0.0), "0");
        assert_eq!(fmt_num(0.5), "0.5");
        assert_eq!(fmt_num(10.0), "10");
        assert_eq!(fmt_num(12.5), "12.5");
        assert_eq!(fmt_num(2500.0), "2.5k");
        assert_eq!(fmt_num(-2500.0), "-2.5k");
        assert_eq!(fmt_num(1.5e6), "1.5M");
        assert_eq!(fmt_num(3e9), "3e9");
        assert_eq!(fmt_num(0.001), "0.001");
        assert_eq!(fmt_num(1e-4), "1e-4");
        assert_eq!(fmt_num(2.5e-7), "2.5e-7");
        assert_eq!(fmt_num(1.0 / 3.0), "0.3333");
        assert_eq!(fmt_num(0.1 + 0.2), "0.3");
        assert_eq!(pow10_label(-4), "1e-4");
        assert_eq!(pow10_label(3), "1k");
        assert_eq!(pow10_label(12), "1e12");
        // Fine-grained ticks keep distinct labels.
        let axis = Axis::linear(1000.1, 1000.4, false);
        let labels: Vec<&str> = axis.ticks.iter().map(|(_, l)| l.as_str()).collect();
        let mut dedup = labels.clone();
        dedup.dedup();
        assert_eq!(labels, dedup, "{labels:?}");
        assert_eq!(num(-0.001), "0");
        assert_eq!(num(70.0), "70");
        assert_eq!(num(12.346), "12.35");
    }

    #[test]
    fn palette_cycles() {
        let mut first: Vec<&str> = (0..PALETTE.len()).map(colour).collect();
        first.sort_unstable();
        first.dedup();
        assert_eq!(first.len(), PALETTE.len());
        assert_eq!(colour(PALETTE.len()), colour(0));
        let many: Vec<Series> = (0..9)
            .map(|i| series(&format!("s{i}"), &[(0.0, i as f64), (1.0, i as f64 + 1.0)]))
            .collect();
        let svg = chart("nine", Scale::Linear, many).render();
        assert_doc(&svg);
        assert_eq!(count(&svg, &format!("stroke=\"{}\" fill", PALETTE[0])), 2);
    }
}
