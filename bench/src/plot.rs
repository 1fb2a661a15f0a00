//! A small SVG writer for result plots: a line chart (values over time) and a grouped bar
//! chart (percentiles, side-by-side figures), with axes, ticks, labels and a legend.
//! Dependency-free on purpose: the plots are simple and a plotting crate would be most of
//! the bench's build time.

use std::fmt::Write as _;

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 460.0;
/// The plot area's fixed edges; its right edge leaves room for the legend ([`Frame`]).
const LEFT: f64 = 80.0;
const TOP: f64 = 46.0;
const BOTTOM: f64 = HEIGHT - 56.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// One line: (x, y) points in x order. A non-finite y breaks the line (a gap).
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A vertical line at `x`, labelled (an event: a kill, a phase change).
pub struct Mark {
    pub x: f64,
    pub label: String,
}

/// One series of bars: one value per category.
pub struct Bars {
    pub name: String,
    pub values: Vec<f64>,
}

/// A line chart.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    lines: &[Line],
    marks: &[Mark],
) -> String {
    let xs = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let xs = xs.chain(marks.iter().map(|m| m.x));
    let ys = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
    let (x_lo, x_hi) = bounds(xs, false);
    let (_, y_hi) = bounds(ys, true);
    let xt = Ticks::new(x_lo, x_hi);
    let yt = Ticks::new(0.0, y_hi);
    let names: Vec<&str> = lines.iter().map(|l| l.name.as_str()).collect();
    let mut svg = Svg::new(title, &names);
    svg.axes(&xt, &yt, x_label, y_label, true);
    for m in marks.iter().filter(|m| m.x.is_finite()) {
        svg.mark(svg.f.x(&xt, m.x), &m.label);
    }
    let f = svg.f;
    for (i, line) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let to_px = |&(x, y): &(f64, f64)| (f.x(&xt, x), f.y(&yt, y));
        for segment in line.points.split(|p| !p.1.is_finite() || !p.0.is_finite()) {
            svg.polyline(segment.iter().map(to_px), color);
        }
        // Markers only where they stay readable; a single point would otherwise be invisible.
        if line.points.len() <= 60 {
            for p in line
                .points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
            {
                let (x, y) = to_px(p);
                svg.circle(x, y, color);
            }
        }
    }
    if lines.iter().all(|l| l.points.is_empty()) {
        svg.no_data();
    }
    svg.legend(&names);
    svg.finish()
}

/// A grouped bar chart: for each category, one bar per series, each labelled with its value.
pub fn bar_chart(title: &str, y_label: &str, categories: &[String], bars: &[Bars]) -> String {
    let (_, y_hi) = bounds(bars.iter().flat_map(|b| b.values.iter().copied()), true);
    let yt = Ticks::new(0.0, y_hi);
    let names: Vec<&str> = bars.iter().map(|b| b.name.as_str()).collect();
    let mut svg = Svg::new(title, &names);
    // No x ticks: the categories label the axis.
    let xt = Ticks::new(0.0, 1.0);
    svg.axes(&xt, &yt, "", y_label, false);
    let f = svg.f;
    #[allow(clippy::cast_precision_loss)]
    let group_w = (f.right - LEFT) / categories.len().max(1) as f64;
    #[allow(clippy::cast_precision_loss)]
    let bar_w = group_w * 0.8 / bars.len().max(1) as f64;
    for (c, category) in categories.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let x0 = LEFT + group_w * c as f64 + group_w * 0.1;
        svg.text(x0 + group_w * 0.4, BOTTOM + 20.0, "middle", category);
        for (s, series) in bars.iter().enumerate() {
            let Some(&v) = series.values.get(c).filter(|v| v.is_finite()) else {
                continue;
            };
            #[allow(clippy::cast_precision_loss)]
            let x = x0 + bar_w * s as f64;
            let y = f.y(&yt, v.max(0.0));
            svg.rect(x, y, bar_w * 0.92, BOTTOM - y, COLORS[s % COLORS.len()]);
            svg.small_text(x + bar_w * 0.46, y - 4.0, &short(v));
        }
    }
    if bars.iter().all(|b| b.values.is_empty()) {
        svg.no_data();
    }
    svg.legend(&names);
    svg.finish()
}

/// Min and max of the finite values; `(0, 1)` when there are none. `from_zero`: the range
/// starts at 0 (values plotted as heights or rates).
fn bounds(values: impl Iterator<Item = f64>, from_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if from_zero {
        lo = lo.min(0.0);
    }
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi <= lo {
        return (lo, lo + 1.0);
    }
    (lo, hi)
}

/// "Nice" axis ticks (steps of 1, 2 or 5 × 10ⁿ) covering a range.
struct Ticks {
    lo: f64,
    hi: f64,
    step: f64,
}

impl Ticks {
    fn new(lo: f64, hi: f64) -> Self {
        let raw = (hi - lo) / 5.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * mag);
        Self {
            lo: (lo / step).floor() * step,
            hi: (hi / step).ceil() * step,
            step,
        }
    }

    fn values(&self) -> Vec<f64> {
        let mut out = Vec::new();
        let mut i = 0.0;
        // Stepping by multiplication, not accumulation, so rounding errors do not pile up.
        while self.lo + i * self.step <= self.hi + self.step * 1e-9 {
            out.push(self.lo + i * self.step);
            i += 1.0;
        }
        out
    }

    fn label(&self, v: f64) -> String {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let decimals = (-self.step.log10().floor()).clamp(0.0, 6.0) as usize;
        format!("{v:.decimals$}")
    }

    /// Where `v` falls between the pixels `a` (at `lo`) and `b` (at `hi`).
    fn px(&self, v: f64, a: f64, b: f64) -> f64 {
        a + (v - self.lo) / (self.hi - self.lo) * (b - a)
    }
}

/// The plot area: fixed left, top and bottom; the right edge leaves room for the legend's
/// longest name.
#[derive(Clone, Copy)]
struct Frame {
    right: f64,
}

impl Frame {
    fn new(names: &[&str]) -> Self {
        let longest = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
        #[allow(clippy::cast_precision_loss)]
        let legend = (44.0 + 6.8 * longest as f64).clamp(120.0, WIDTH * 0.45);
        Self {
            right: WIDTH - legend,
        }
    }

    fn x(self, t: &Ticks, v: f64) -> f64 {
        t.px(v, LEFT, self.right)
    }

    fn y(self, t: &Ticks, v: f64) -> f64 {
        t.px(v, BOTTOM, TOP)
    }

    fn mid_x(self) -> f64 {
        f64::midpoint(LEFT, self.right)
    }
}

/// A value label: 3 significant digits at most, no exponent.
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// An SVG document being written. `write!` to a `String` cannot fail, hence the ignored
/// results.
struct Svg {
    s: String,
    f: Frame,
}

impl Svg {
    fn new(title: &str, legend: &[&str]) -> Self {
        let mut s = String::new();
        let _ = write!(
            s,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
             viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\" \
             font-weight=\"bold\">{}</text>\n",
            WIDTH / 2.0,
            escape(title)
        );
        Self {
            s,
            f: Frame::new(legend),
        }
    }

    fn axes(&mut self, xt: &Ticks, yt: &Ticks, x_label: &str, y_label: &str, x_ticks: bool) {
        let (f, right) = (self.f, self.f.right);
        let s = &mut self.s;
        for v in yt.values() {
            let y = f.y(yt, v);
            let _ = writeln!(
                s,
                "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{right}\" y2=\"{y:.1}\" \
                 stroke=\"#e0e0e0\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                LEFT - 6.0,
                y + 4.0,
                yt.label(v)
            );
        }
        if x_ticks {
            for v in xt.values() {
                let x = f.x(xt, v);
                let _ = writeln!(
                    s,
                    "<line x1=\"{x:.1}\" y1=\"{BOTTOM}\" x2=\"{x:.1}\" y2=\"{:.1}\" \
                     stroke=\"black\"/>\
                     <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                    BOTTOM + 5.0,
                    BOTTOM + 18.0,
                    xt.label(v)
                );
            }
        }
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{BOTTOM}\" x2=\"{right}\" y2=\"{BOTTOM}\" \
             stroke=\"black\"/>\n\
             <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{BOTTOM}\" stroke=\"black\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n\
             <text x=\"18\" y=\"{:.1}\" text-anchor=\"middle\" \
             transform=\"rotate(-90 18 {:.1})\">{}</text>",
            f.mid_x(),
            HEIGHT - 14.0,
            escape(x_label),
            f64::midpoint(TOP, BOTTOM),
            f64::midpoint(TOP, BOTTOM),
            escape(y_label)
        );
    }

    fn polyline(&mut self, points: impl Iterator<Item = (f64, f64)>, color: &str) {
        let pts: Vec<String> = points.map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        if pts.len() > 1 {
            let _ = writeln!(
                self.s,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\" points=\"{}\"/>",
                pts.join(" ")
            );
        }
    }

    fn circle(&mut self, x: f64, y: f64, color: &str) {
        let _ = writeln!(
            self.s,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2.5\" fill=\"{color}\"/>"
        );
    }

    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, color: &str) {
        let _ = writeln!(
            self.s,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{color}\"/>",
            h.max(0.0)
        );
    }

    fn text(&mut self, x: f64, y: f64, anchor: &str, text: &str) {
        let _ = writeln!(
            self.s,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"{anchor}\">{}</text>",
            escape(text)
        );
    }

    fn small_text(&mut self, x: f64, y: f64, text: &str) {
        let _ = writeln!(
            self.s,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
            escape(text)
        );
    }

    fn mark(&mut self, x: f64, label: &str) {
        let _ = writeln!(
            self.s,
            "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{BOTTOM}\" stroke=\"#555\" \
             stroke-dasharray=\"5,4\"/>"
        );
        self.text(x + 4.0, TOP + 12.0, "start", label);
    }

    fn no_data(&mut self) {
        self.text(
            self.f.mid_x(),
            f64::midpoint(TOP, BOTTOM),
            "middle",
            "no data",
        );
    }

    fn legend(&mut self, names: &[&str]) {
        for (i, name) in names.iter().enumerate() {
            #[allow(clippy::cast_precision_loss)]
            let y = TOP + 10.0 + 20.0 * i as f64;
            let color = COLORS[i % COLORS.len()];
            let _ = writeln!(
                self.s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"14\" height=\"10\" fill=\"{color}\"/>",
                self.f.right + 16.0,
                y - 9.0
            );
            self.text(self.f.right + 36.0, y, "start", name);
        }
    }

    fn finish(mut self) -> String {
        self.s.push_str("</svg>\n");
        self.s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice_and_cover_the_range() {
        let t = Ticks::new(0.0, 937.0);
        assert!((t.step - 200.0).abs() < 1e-9);
        assert_eq!(t.values(), vec![0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]);
        let t = Ticks::new(0.0, 0.37);
        assert!((t.step - 0.1).abs() < 1e-12);
        assert_eq!(t.label(0.3), "0.3");
        assert!(*t.values().last().unwrap() >= 0.37);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape("a<b & \"c\"\u{7}"), "a&lt;b &amp; &quot;c&quot; ");
    }

    #[test]
    fn charts_are_one_document() {
        let line = line_chart(
            "t<1>",
            "s",
            "jobs/s",
            &[Line {
                name: "noop".into(),
                points: vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0), (3.0, 4.0)],
            }],
            &[Mark {
                x: 1.5,
                label: "kill".into(),
            }],
        );
        let bars = bar_chart(
            "p",
            "ms",
            &["p50".into(), "max".into()],
            &[Bars {
                name: "a".into(),
                values: vec![0.5, 7.0],
            }],
        );
        for svg in [line, bars] {
            assert_eq!(svg.matches("<svg").count(), 1);
            assert!(svg.trim_end().ends_with("</svg>"));
            assert!(!svg.contains("NaN") && !svg.contains("inf"));
        }
        let empty = line_chart("e", "x", "y", &[], &[]);
        assert!(empty.contains("no data"));
    }
}
