//! `OUT/loss.svg`: a loss-vs-step plot written by hand (a plotting crate
//! would dwarf the trainer for one chart). Self-contained SVG 1.1: no
//! scripts, fonts or external styles, so it opens anywhere.
//!
//! Ticks are "nice" numbers (1, 2 or 5 × 10^k) chosen for about five per axis.
//! The optional smoothed line is an exponential moving average with
//! TensorBoard's debiasing (divided by 1 − αⁿ) so it does not start at zero.
//! Runs longer than `MAX_POINTS` steps are drawn from bucket means to keep
//! the file small.

use std::fmt::Write;
use std::path::Path;

use crate::Result;
use crate::checkpoint::write_atomic;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 52.0;
/// Most points drawn per line.
pub const MAX_POINTS: usize = 4000;

/// Writes the plot of `points` ((step, loss) pairs) to `path` atomically.
pub fn write_loss_svg(
    path: &Path,
    points: &[(u64, f64)],
    title: &str,
    smooth: Option<f64>,
) -> Result<()> {
    write_atomic(path, loss_svg(points, title, smooth).as_bytes())
}

/// About `n` round tick values covering [lo, hi], and the step between them.
fn ticks(lo: f64, hi: f64, n: usize) -> (Vec<f64>, f64) {
    let raw = (hi - lo) / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    ((first..=last).map(|i| i as f64 * step).collect(), step)
}

fn label(v: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Bucket means, so a long run is drawn with at most [`MAX_POINTS`] points.
fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return points.to_vec();
    }
    let per = points.len().div_ceil(MAX_POINTS);
    points
        .chunks(per)
        .map(|c| {
            let n = c.len() as f64;
            let (x, y) = c.iter().fold((0.0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
            (x / n, y / n)
        })
        .collect()
}

fn ema(points: &[(f64, f64)], alpha: f64) -> Vec<(f64, f64)> {
    let mut acc = 0.0;
    let mut weight = 1.0;
    points
        .iter()
        .map(|&(x, y)| {
            acc = alpha * acc + (1.0 - alpha) * y;
            weight *= alpha;
            (x, acc / (1.0 - weight))
        })
        .collect()
}

/// The SVG document plotting `points` ((step, loss) pairs; non-finite losses skipped), with an
/// EMA-smoothed line of factor `smooth` in [0, 1) when given.
pub fn loss_svg(points: &[(u64, f64)], title: &str, smooth: Option<f64>) -> String {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.1.is_finite())
        .map(|&(s, l)| (s as f64, l))
        .collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    let (x0, y0, x1, y1) = (LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM);
    if pts.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">no steps yet</text>"#,
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
        s.push_str("</svg>\n");
        return s;
    }
    let (mut xmin, mut xmax) = (pts[0].0, pts[pts.len() - 1].0);
    if xmax <= xmin {
        (xmin, xmax) = (xmin - 1.0, xmax + 1.0);
    }
    let (lo, hi) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| {
        (a.0.min(p.1), a.1.max(p.1))
    });
    let pad = if hi > lo {
        0.05 * (hi - lo)
    } else {
        0.5 * lo.abs().max(1.0)
    };
    let (ymin, ymax) = (lo - pad, hi + pad);
    let px = |x: f64| x0 + (x - xmin) / (xmax - xmin) * (x1 - x0);
    let py = |y: f64| y1 - (y - ymin) / (ymax - ymin) * (y1 - y0);

    // Grid, ticks and labels.
    let (xt, xstep) = ticks(xmin, xmax, 6);
    for v in xt {
        let x = px(v);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{y1}" stroke="#eee"/><line x1="{x:.1}" y1="{y1}" x2="{x:.1}" y2="{:.1}" stroke="black"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            y1 + 5.0,
            y1 + 18.0,
            label(v, xstep.max(1.0))
        );
    }
    let (yt, ystep) = ticks(ymin, ymax, 5);
    for v in yt {
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#eee"/><line x1="{:.1}" y1="{y:.1}" x2="{x0}" y2="{y:.1}" stroke="black"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 - 5.0,
            x0 - 8.0,
            y + 4.0,
            label(v, ystep)
        );
    }
    let _ = writeln!(
        s,
        r#"<path d="M{x0},{y0} V{y1} H{x1}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">step</text>"#,
        (x0 + x1) / 2.0,
        HEIGHT - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">loss</text>"#,
        (y0 + y1) / 2.0
    );

    let polyline = |s: &mut String, line: &[(f64, f64)], class: &str, style: &str| {
        let _ = write!(
            s,
            r#"<polyline class="{class}" fill="none" {style} points=""#
        );
        for (i, &(x, y)) in line.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            let _ = write!(s, "{sep}{:.1},{:.1}", px(x), py(y));
        }
        s.push_str("\"/>\n");
    };
    let raw = thin(&pts);
    match smooth {
        Some(a) if (0.0..1.0).contains(&a) => {
            polyline(
                &mut s,
                &raw,
                "loss",
                r##"stroke="#9ec5ea" stroke-width="1""##,
            );
            polyline(
                &mut s,
                &ema(&raw, a),
                "smoothed",
                r##"stroke="#1f5fa8" stroke-width="2""##,
            );
        }
        _ => polyline(
            &mut s,
            &raw,
            "loss",
            r##"stroke="#1f5fa8" stroke-width="1.5""##,
        ),
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points_of(svg: &str, class: &str) -> Vec<(f64, f64)> {
        let tag = format!(r#"<polyline class="{class}""#);
        let start = svg.find(&tag).unwrap_or_else(|| panic!("no {class} line"));
        let rest = &svg[start..];
        let p = rest.find("points=\"").unwrap() + 8;
        let end = rest[p..].find('"').unwrap();
        rest[p..p + end]
            .split(' ')
            .map(|xy| {
                let (x, y) = xy.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn plots_every_point_inside_the_axes() {
        let pts: Vec<(u64, f64)> = (1..=37).map(|s| (s, 3.0 / s as f64)).collect();
        let svg = loss_svg(&pts, "loss <run & co>", Some(0.6));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("loss &lt;run &amp; co&gt;"));
        let raw = points_of(&svg, "loss");
        assert_eq!(raw.len(), 37);
        assert_eq!(points_of(&svg, "smoothed").len(), 37);
        for &(x, y) in &raw {
            assert!((LEFT..=WIDTH - RIGHT).contains(&x) && (TOP..=HEIGHT - BOTTOM).contains(&y));
        }
        // First point at the left edge, decreasing loss moves down the page.
        assert!((raw[0].0 - LEFT).abs() < 0.1 && raw[36].1 > raw[0].1);
        // Tags balance: every opened element is closed or self-closing.
        let (all, closing) = (svg.matches('<').count(), svg.matches("</").count());
        assert_eq!(all - closing, closing + svg.matches("/>").count());
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let (t, step) = ticks(0.13, 0.97, 5);
        assert!((step - 0.2).abs() < 1e-12, "{step}");
        assert_eq!(t.len(), 4);
        assert!((t[0] - 0.2).abs() < 1e-12 && (t[3] - 0.8).abs() < 1e-12);
        assert_eq!(label(0.4, 0.2), "0.4");
        assert_eq!(label(1500.0, 500.0), "1500");
    }

    #[test]
    fn long_runs_are_thinned_and_empty_runs_say_so() {
        let pts: Vec<(u64, f64)> = (1..=10_001).map(|s| (s, 1.0)).collect();
        let svg = loss_svg(&pts, "t", None);
        let n = points_of(&svg, "loss").len();
        assert!(n <= MAX_POINTS && n > MAX_POINTS / 2, "{n}");
        let svg = loss_svg(&[(1, f64::NAN)], "t", None);
        assert!(svg.contains("no steps yet") && !svg.contains("polyline"));
    }
}
