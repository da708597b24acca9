//! Hand-written SVG plots of bench results: energy per request against load per policy, and a
//! clock/batch timeline of one run. Plain strings, no plotting dependency.

use std::fmt::Write as _;

use super::metrics::Timeline;

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
/// Dash patterns per series, so coinciding lines stay visible.
const DASHES: [&str; 6] = ["none", "8,4", "2,3", "10,3,2,3", "4,4", "1,2"];
const COLORS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// One line of a line chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// "Nice" tick step for a range.
fn tick_step(span: f64, target: usize) -> f64 {
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm < 1.5 {
        1.0
    } else if norm < 3.0 {
        2.0
    } else if norm < 7.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

struct Axes {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    /// Plot area: left, top, width, height.
    area: (f64, f64, f64, f64),
}

impl Axes {
    fn px(&self, x: f64) -> f64 {
        self.area.0 + (x - self.x0) / (self.x1 - self.x0).max(1e-12) * self.area.2
    }
    fn py(&self, y: f64) -> f64 {
        self.area.1 + self.area.3 - (y - self.y0) / (self.y1 - self.y0).max(1e-12) * self.area.3
    }

    fn draw(&self, out: &mut String, x_label: &str, y_label: &str) {
        let (l, t, w, h) = self.area;
        let _ = writeln!(
            out,
            r##"<rect x="{l}" y="{t}" width="{w}" height="{h}" fill="none" stroke="#333"/>"##
        );
        let step = tick_step(self.x1 - self.x0, 6);
        let mut x = (self.x0 / step).ceil() * step;
        while x <= self.x1 + 1e-9 {
            let px = self.px(x);
            let _ = writeln!(
                out,
                r##"<line x1="{px:.1}" y1="{}" x2="{px:.1}" y2="{}" stroke="#ccc"/><text x="{px:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"##,
                t,
                t + h,
                t + h + 15.0,
                fmt_tick(x, step)
            );
            x += step;
        }
        let step = tick_step(self.y1 - self.y0, 6);
        let mut y = (self.y0 / step).ceil() * step;
        while y <= self.y1 + 1e-9 {
            let py = self.py(y);
            let _ = writeln!(
                out,
                r##"<line x1="{l}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#ccc"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                l + w,
                l - 5.0,
                py + 4.0,
                fmt_tick(y, step)
            );
            y += step;
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            l + w / 2.0,
            t + h + 35.0,
            esc(x_label)
        );
        let _ = writeln!(
            out,
            r#"<text x="15" y="{:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 15 {:.1})">{}</text>"#,
            t + h / 2.0,
            t + h / 2.0,
            esc(y_label)
        );
    }
}

fn fmt_tick(v: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.*}", (-step.log10().floor()) as usize)
    }
}

fn header(out: &mut String, title: &str, height: f64) {
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="22" font-size="14" text-anchor="middle">{}</text>"#,
        W / 2.0,
        esc(title)
    );
}

/// A line chart with markers and a legend on the right.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1, y1) = (0.0, 1.0, 1.0);
    }
    let pad = ((x1 - x0) * 0.05).max(1e-9);
    let axes = Axes {
        x0: x0 - pad,
        x1: x1 + pad,
        y0: 0.0,
        y1: y1 * 1.1,
        area: (LEFT, TOP, W - LEFT - RIGHT, H - TOP - BOTTOM),
    };
    let mut out = String::new();
    header(&mut out, title, H);
    axes.draw(&mut out, x_label, y_label);
    for (i, s) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", axes.px(x), axes.py(y)))
            .collect();
        let dash = DASHES[i % DASHES.len()];
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
            path.join(" ")
        );
        for p in &path {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(out, r#"<circle cx="{x}" cy="{y}" r="3.5" fill="{c}"/>"#);
        }
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = W - RIGHT + 15.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{}" font-size="12">{}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            esc(&s.name)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Clock per unit (top) and batch size (bottom) of the batches of `tl` within `[from, to)` s.
pub fn timeline_chart(title: &str, tl: &Timeline, from: f64, to: f64) -> String {
    let height = 580.0;
    let batches: Vec<usize> = (0..tl.batches.len())
        .filter(|&i| tl.batches[i].start_s >= from && tl.batches[i].start_s < to)
        .collect();
    let f_max = tl.unit_clocks.iter().copied().max().unwrap_or(1) as f64;
    let b_max = batches
        .iter()
        .map(|&i| tl.batches[i].batch)
        .max()
        .unwrap_or(1) as f64;
    let top = Axes {
        x0: from,
        x1: to,
        y0: 0.0,
        y1: f_max * 1.1,
        area: (LEFT, TOP, W - LEFT - 40.0, 260.0),
    };
    let bottom = Axes {
        x0: from,
        x1: to,
        y0: 0.0,
        y1: b_max * 1.15,
        area: (LEFT, TOP + 320.0, W - LEFT - 40.0, 150.0),
    };
    let mut out = String::new();
    header(&mut out, title, height);
    top.draw(&mut out, "", "graphics clock in force at unit start (MHz)");
    bottom.draw(&mut out, "time (s)", "batch size");
    for &i in &batches {
        let b = tl.batches[i];
        let first = b.first_unit;
        for u in 0..tl.units {
            let s = tl.unit_starts[first + u];
            let e = if u + 1 < tl.units {
                tl.unit_starts[first + u + 1]
            } else {
                b.end_s
            };
            let y = top.py(f64::from(tl.unit_clocks[first + u]));
            let c = COLORS[u % COLORS.len()];
            let _ = writeln!(
                out,
                r#"<line x1="{:.2}" y1="{y:.1}" x2="{:.2}" y2="{y:.1}" stroke="{c}" stroke-width="3"/>"#,
                top.px(s),
                top.px(e).max(top.px(s) + 0.5)
            );
        }
        let (x0, x1) = (
            bottom.px(b.start_s),
            bottom.px(b.end_s).max(bottom.px(b.start_s) + 1.0),
        );
        let y = bottom.py(f64::from(b.batch));
        let _ = writeln!(
            out,
            r##"<rect x="{x0:.2}" y="{y:.1}" width="{:.2}" height="{:.1}" fill="#1f77b4" fill-opacity="0.7"/>"##,
            x1 - x0,
            bottom.py(0.0) - y
        );
    }
    for sc in tl
        .set_calls
        .iter()
        .filter(|s| s.issued_s >= from && s.issued_s < to)
    {
        let x = top.px(sc.effective_s.min(to));
        let _ = writeln!(
            out,
            r##"<line x1="{x:.2}" y1="{}" x2="{x:.2}" y2="{}" stroke="#d62728" stroke-dasharray="2,3"/>"##,
            TOP,
            TOP + 260.0
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="{}" font-size="11" fill="#555">colour = unit of the chain; dashed red = a set-call taking effect</text>"##,
        height - 8.0
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice() {
        assert_eq!(tick_step(10.0, 5), 2.0);
        assert_eq!(tick_step(0.7, 6), 0.1);
        assert_eq!(tick_step(1500.0, 6), 200.0);
    }

    #[test]
    fn chart_has_one_polyline_per_series_and_escapes_names() {
        let s = vec![
            Series {
                name: "a<b".into(),
                points: vec![(0.2, 1.0), (0.4, 2.0)],
            },
            Series {
                name: "c".into(),
                points: vec![(0.2, 3.0), (0.4, f64::NAN)],
            },
        ];
        let svg = line_chart("t", "x", "y", &s);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("a&lt;b") && !svg.contains("a<b"));
    }
}
