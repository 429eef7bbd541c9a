//! Charts of the report's figures over time, as inline SVG (no scripts, no network):
//! a standalone SVG file, or a self-contained HTML page with the text report.

use std::fmt::Write as _;

use super::Report;
use super::metrics::Sample;

const W: f64 = 900.0;
const H: f64 = 260.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 160.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 36.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// Escapes text for HTML and SVG.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One line of a chart.
struct Line<'a> {
    name: String,
    color: &'a str,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// A "nice" upper bound for an axis: 1, 2, 4 or 8 times a power of ten.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    // Multiples of 4 below 10, so the four grid steps fall on round numbers.
    [1.0, 2.0, 4.0, 8.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|m| *m >= v)
        .unwrap_or(10.0 * p)
}

/// A line chart at `(x, y)`; `percent` formats the axis as 0..100 %.
fn chart(out: &mut String, y0: f64, title: &str, hours: f64, lines: &[Line], percent: bool) {
    let max_v = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let y_max = if percent { 1.0 } else { nice_max(max_v) };
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x_of = |t_min: f64| LEFT + pw * (t_min / (hours * 60.0)).clamp(0.0, 1.0);
    let y_of = |v: f64| TOP + ph * (1.0 - (v / y_max).clamp(0.0, 1.0));
    let _ = writeln!(out, r#"<g transform="translate(0,{y0})">"#);
    let _ = writeln!(
        out,
        r##"<rect x="0" y="0" width="{W}" height="{H}" fill="#fff"/><text x="{LEFT}" y="20" font-size="15" font-weight="bold">{}</text>"##,
        escape(title)
    );
    // Grid and axes.
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let y = y_of(v);
        let label = if percent {
            format!("{:.0}%", v * 100.0)
        } else if y_max >= 4.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        };
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{label}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let ticks = if hours <= 24.0 {
        hours.ceil() as i64 / 4
    } else {
        6
    }
    .max(1);
    for i in 0..=ticks {
        let t = hours * 60.0 * i as f64 / ticks as f64;
        let x = x_of(t);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{:.0}h</text>"##,
            TOP + ph,
            TOP + ph + 16.0,
            t / 60.0
        );
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
    );
    for (k, l) in lines.iter().enumerate() {
        let mut d = String::new();
        for (i, (t, v)) in l.points.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if i == 0 { "M" } else { " L" },
                x_of(*t),
                y_of(*v)
            );
        }
        let dash = if l.dashed {
            r#" stroke-dasharray="6,4""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<path d="{d}" fill="none" stroke="{}" stroke-width="1.6"{dash}/>"#,
            l.color
        );
        let ly = TOP + 14.0 + 18.0 * k as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
            LEFT + pw + 10.0,
            LEFT + pw + 34.0,
            l.color,
            LEFT + pw + 40.0,
            ly + 4.0,
            escape(&l.name)
        );
    }
    out.push_str("</g>\n");
}

fn series(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> Vec<(f64, f64)> {
    samples.iter().map(|s| (s.t_min, f(s))).collect()
}

/// Every chart, stacked, as one SVG document.
pub fn svg(r: &Report) -> String {
    type Figure = (&'static str, bool, fn(&Sample) -> f64);
    let figures: [Figure; 7] = [
        ("GPUs allocated", true, |s| s.gpu_alloc),
        ("Memory allocated, nodes without GPUs", true, |s| {
            s.mem_alloc
        }),
        ("Free GPUs unusable by the waiting work", false, |s| {
            s.gpus_unusable as f64
        }),
        ("Whole free nodes", false, |s| s.free_nodes as f64),
        ("Partly placed gangs", false, |s| s.partial_gangs as f64),
        ("GPUs held by partly placed gangs", false, |s| {
            s.partial_gang_gpus as f64
        }),
        ("Pods waiting", false, |s| s.pending_pods as f64),
    ];
    let charts = figures.len() + r.runs.len();
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{}" viewBox="0 0 {W} {}" font-family="sans-serif">"#,
        H * charts as f64,
        H * charts as f64
    );
    let mut y = 0.0;
    for (title, percent, f) in figures {
        let lines: Vec<Line> = r
            .runs
            .iter()
            .enumerate()
            .map(|(i, p)| Line {
                name: p.policy.clone(),
                color: COLORS[i % COLORS.len()],
                dashed: false,
                points: series(&p.samples, f),
            })
            .collect();
        chart(&mut out, y, title, r.hours, &lines, percent);
        y += H;
    }
    for p in &r.runs {
        let mut lines = Vec::new();
        for (t, team) in r.teams.iter().enumerate() {
            let color = COLORS[(t + 2) % COLORS.len()];
            lines.push(Line {
                name: format!("{team} GPUs"),
                color,
                dashed: false,
                points: series(&p.samples, |s| s.team_gpu.get(t).copied().unwrap_or(0.0)),
            });
            let fair = r.fair_shares[t];
            lines.push(Line {
                name: format!("{team} fair share"),
                color,
                dashed: true,
                points: vec![(0.0, fair), (r.hours * 60.0, fair)],
            });
        }
        chart(
            &mut out,
            y,
            &format!(
                "{}: share of all GPUs by team vs fair share (not enforced)",
                p.policy
            ),
            r.hours,
            &lines,
            true,
        );
        y += H;
    }
    out.push_str("</svg>\n");
    out
}

/// A self-contained HTML page: the text report and every chart.
pub fn html(r: &Report, text: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>drover simulate: {title}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}pre{{font-size:12px;line-height:1.35;background:#f7f7f7;padding:1em;overflow-x:auto}}</style>
</head><body>
<h1>drover simulate</h1>
<p>{title}: drover against a kube-scheduler-like baseline on the same input. Figures are defined in docs/simulate.md.</p>
{svg}
<h2>Report</h2>
<pre>{text}</pre>
</body></html>
"#,
        title = escape(&r.scenario),
        svg = svg(r),
        text = escape(text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axis() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.0), 4.0);
        assert_eq!(nice_max(17.0), 20.0);
        assert_eq!(nice_max(100.0), 100.0);
        assert_eq!(nice_max(130.0), 200.0);
        assert_eq!(nice_max(0.3), 0.4);
    }

    #[test]
    fn escapes() {
        assert_eq!(escape("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
