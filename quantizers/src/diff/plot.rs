//! An SVG line chart of SQNR per layer: x is the block in model order (several block groups,
//! e.g. `double_blocks` then `single_blocks`, side by side with a labelled separator), y the SQNR in dB, one colored
//! line per tensor role (q, k, v, o, gate, up, down …) labelled directly at its right end, so
//! the chart reads without a legend. Tensors outside the blocks (embeddings, final norm, output
//! head) are grey points in an "in" slot left of block 0 and an "out" slot right of the last
//! block, each with its name. Identical tensors (infinite SQNR) sit on a dashed "∞" line above
//! the plot area; NaN rows are counted in the caption.
//!
//! # Why hand-written SVG and not `plotters`
//! `plotters`' SVG backend needs a font backend (`ab_glyph`/`ttf`) to measure and draw any text,
//! which is most of what makes this chart readable (tick labels, direct series labels); with
//! fonts it pulls a dozen crates into `qtool-quantizers`, a crate that is supposed to be pure
//! computation. The chart needed here is one axis pair, gridlines, polylines and text: SVG is
//! plain text, so it is written directly, deterministically (fixed float formatting, series in
//! a fixed order), with no dependency. Text is left to the viewer's sans-serif font; label
//! collisions are avoided by spacing labels vertically, which needs no glyph metrics.

use std::fmt::Write;

use super::position::Position;
use super::report::{DiffReport, DiffRow};

const W: f64 = 960.0;
const H: f64 = 560.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 94.0;
const BOTTOM: f64 = 70.0;
/// Colorblind-friendly palette (Okabe–Ito, then Tableau), in role order.
const PALETTE: &[&str] = &[
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#7F3C8D", "#8C564B",
    "#1F77B4", "#BCBD22", "#17BECF", "#E41A1C",
];
const DASHES: &[&str] = &["", "6 3", "2 3", "8 3 2 3"];
/// Minimum vertical distance between two direct labels (px).
const LABEL_GAP: f64 = 13.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A "nice" tick step (1, 2, 5 × 10^k) for a range spanning `span` with about `n` ticks.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

struct Series<'a> {
    role: String,
    rank: usize,
    points: Vec<(u64, f64, &'a DiffRow)>,
}

/// Renders the chart. `title` is printed at the top (e.g. "REF vs CAND").
pub fn sqnr_svg(report: &DiffReport, title: &str) -> String {
    let compared: Vec<&DiffRow> = report.rows.iter().filter(|r| r.metrics.is_some()).collect();
    let nan = compared.iter().filter(|r| r.sqnr_db().is_some_and(f64::is_nan)).count();
    let plotted: Vec<&DiffRow> =
        compared.iter().copied().filter(|r| r.sqnr_db().is_some_and(|s| !s.is_nan())).collect();

    // Series per role, in role order then first appearance.
    let mut series: Vec<Series<'_>> = Vec::new();
    let mut outside_in: Vec<&DiffRow> = Vec::new();
    let mut outside_out: Vec<&DiffRow> = Vec::new();
    // One x slot per block in model order: block groups (`double_blocks`, `single_blocks`)
    // side by side in the order they appear, each from its lowest index.
    let mut groups: Vec<(String, u64, u64)> = Vec::new(); // (name, min block, max block)
    for r in &plotted {
        if let (Some(b), Some(g)) = (r.block, Position::of(&r.name).group) {
            match groups.iter_mut().find(|x| x.0 == g) {
                Some(x) => {
                    x.1 = x.1.min(b);
                    x.2 = x.2.max(b);
                }
                None => groups.push((g, b, b)),
            }
        }
    }
    let mut group_start = Vec::with_capacity(groups.len());
    let mut slot_labels: Vec<u64> = Vec::new();
    for (_, lo, hi) in &groups {
        group_start.push(slot_labels.len() as u64);
        slot_labels.extend(*lo..=*hi);
    }
    let slot_of = |r: &DiffRow| -> Option<u64> {
        let (b, g) = (r.block?, Position::of(&r.name).group?);
        let i = groups.iter().position(|x| x.0 == g)?;
        Some(group_start[i] + b - groups[i].1)
    };
    for r in &plotted {
        let s = r.sqnr_db().unwrap_or(f64::NAN);
        match slot_of(r) {
            Some(b) => {
                let rank = Position::of(&r.name).role_rank();
                match series.iter_mut().find(|x| x.role == r.role) {
                    Some(x) => x.points.push((b, s, r)),
                    None => {
                        series.push(Series { role: r.role.clone(), rank, points: vec![(b, s, r)] })
                    }
                }
            }
            None => {
                if Position::of(&r.name).section(&r.name) == 0 {
                    outside_in.push(r)
                } else {
                    outside_out.push(r)
                }
            }
        }
    }
    series.sort_by_key(|s| s.rank);
    for s in &mut series {
        s.points.sort_by_key(|p| p.0);
    }

    // x domain: slots for blocks, plus "in"/"out" slots when needed.
    let max_block = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).max();
    let first_block = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).min().unwrap_or(0);
    let has_in = !outside_in.is_empty();
    let has_out = !outside_out.is_empty();
    let x_lo = first_block as f64 - if has_in { 1.0 } else { 0.0 };
    let last = max_block.unwrap_or(first_block) as f64;
    let x_hi = last + if has_out { 1.0 } else { 0.0 };
    let (x_lo, x_hi) = if x_hi - x_lo < 1.0 { (x_lo - 0.5, x_hi + 0.5) } else { (x_lo, x_hi) };

    // y domain from the finite values.
    let finite: Vec<f64> =
        plotted.iter().filter_map(|r| r.sqnr_db()).filter(|s| s.is_finite()).collect();
    let any_inf = plotted.iter().any(|r| r.sqnr_db() == Some(f64::INFINITY));
    let any_neg_inf = plotted.iter().any(|r| r.sqnr_db() == Some(f64::NEG_INFINITY));
    let (mut y_lo, mut y_hi) = match (
        finite.iter().copied().fold(f64::INFINITY, f64::min),
        finite.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    ) {
        (lo, hi) if lo.is_finite() => (lo, hi),
        _ => (0.0, 60.0),
    };
    if y_hi - y_lo < 1.0 {
        y_lo -= 5.0;
        y_hi += 5.0;
    }
    let step = nice_step(y_hi - y_lo, 6.0);
    y_lo = (y_lo / step).floor() * step;
    y_hi = (y_hi / step).ceil() * step;

    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let xs = |x: f64| LEFT + (x - x_lo) / (x_hi - x_lo) * pw;
    // Infinite values go on a line 22 px above the plot area, −inf 18 px below.
    let ys = |y: f64| {
        if y == f64::INFINITY {
            TOP - 22.0
        } else if y == f64::NEG_INFINITY {
            TOP + ph + 18.0
        } else {
            TOP + (y_hi - y) / (y_hi - y_lo) * ph
        }
    };

    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="24" font-size="16" font-weight="bold">SQNR per layer (dB, higher is better)</text>"#,
        LEFT
    );
    let s = &report.summary;
    let fmt = |v: Option<f64>| match v {
        Some(x) if x.is_finite() => format!("{x:.2}"),
        Some(x) if x.is_nan() => "nan".into(),
        Some(x) if x > 0.0 => "∞".into(),
        Some(_) => "−∞".into(),
        None => "–".into(),
    };
    let mut caption = format!(
        "{} · {} tensors · mean {} dB · worst {} dB · {} bits/weight",
        esc(title),
        s.compared,
        fmt(s.mean_sqnr_db),
        fmt(s.worst_sqnr_db),
        fmt(s.bits_per_weight)
    );
    if nan > 0 {
        caption.push_str(&format!(" · {nan} NaN (not drawn)"));
    }
    let _ = writeln!(o, r##"<text x="{LEFT}" y="44" fill="#444">{caption}</text>"##);

    // Grid and y ticks.
    let mut y = y_lo;
    while y <= y_hi + step * 1e-6 {
        let py = ys(y);
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#333">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            py + 4.0,
            if step >= 1.0 { format!("{y:.0}") } else { format!("{y:.1}") }
        );
        y += step;
    }
    // x ticks: every block, thinned to at most ~24 labels.
    let n_blocks = max_block.map_or(0, |m| m - first_block + 1);
    let every = (n_blocks / 24).max(1);
    if let Some(mb) = max_block {
        for b in first_block..=mb {
            let px = xs(b as f64);
            let _ = writeln!(
                o,
                r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#f0f0f0"/>"##,
                TOP + ph
            );
            if (b - first_block) % every == 0 {
                let label = slot_labels.get(b as usize).copied().unwrap_or(b);
                let _ = writeln!(
                    o,
                    r##"<text x="{px:.1}" y="{:.1}" text-anchor="middle" fill="#333">{label}</text>"##,
                    TOP + ph + 16.0
                );
            }
        }
    }
    // With several block groups, a separator and the group's name where each begins.
    if groups.len() > 1 {
        for ((name, _, _), &start) in groups.iter().zip(&group_start) {
            let px = xs(start as f64 - 0.5);
            let _ = writeln!(
                o,
                r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#bbb" stroke-dasharray="3 3"/><text x="{:.1}" y="{:.1}" fill="#777" font-size="11">{}</text>"##,
                TOP + ph,
                px + 4.0,
                TOP + 13.0,
                esc(name)
            );
        }
    }
    for (slot, label, on) in [(x_lo, "in", has_in), (x_hi, "out", has_out)] {
        if on {
            let _ = writeln!(
                o,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#777" font-style="italic">{label}</text>"##,
                xs(slot),
                TOP + ph + 16.0
            );
        }
    }
    // Axes.
    let _ = writeln!(
        o,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
    );
    let _ = writeln!(
        o,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#222">layer (block index)</text>"##,
        LEFT + pw / 2.0,
        H - 22.0
    );
    let _ = writeln!(
        o,
        r##"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle" fill="#222">SQNR (dB)</text>"##,
        TOP + ph / 2.0
    );
    if any_inf {
        let py = ys(f64::INFINITY);
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{py}" x2="{:.1}" y2="{py}" stroke="#999" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">∞</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            py + 4.0
        );
    }
    if any_neg_inf {
        let py = ys(f64::NEG_INFINITY);
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{py}" x2="{:.1}" y2="{py}" stroke="#c00" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#c00">−∞</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            py + 4.0
        );
    }

    // Series.
    let mut labels: Vec<(f64, String, &str)> = Vec::new();
    for (k, s) in series.iter().enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        let dash = DASHES[(k / PALETTE.len()) % DASHES.len()];
        let pts: Vec<String> =
            s.points.iter().map(|&(b, v, _)| format!("{:.1},{:.1}", xs(b as f64), ys(v))).collect();
        let _ = writeln!(
            o,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2"{} points="{}"/>"#,
            if dash.is_empty() { String::new() } else { format!(r#" stroke-dasharray="{dash}""#) },
            pts.join(" ")
        );
        for &(b, v, row) in &s.points {
            let _ = writeln!(
                o,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"><title>{} : {} dB</title></circle>"#,
                xs(b as f64),
                ys(v),
                esc(&row.name),
                fmt(Some(v))
            );
        }
        if let Some(&(_, v, _)) = s.points.last() {
            labels.push((ys(v), s.role.clone(), color));
        }
    }
    // Direct labels right of the plot, spread apart so none overlap.
    labels.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    let mut placed: Vec<f64> = Vec::with_capacity(labels.len());
    for (y, _, _) in &labels {
        let y = placed.last().map_or(*y, |&p| y.max(p + LABEL_GAP));
        placed.push(y);
    }
    // If the stack ran off the bottom, shift it up.
    if let Some(&last) = placed.last() {
        let overflow = last - (H - 8.0);
        if overflow > 0.0 {
            for p in &mut placed {
                *p -= overflow;
            }
        }
    }
    let lx = LEFT + pw + 10.0;
    for ((y0, role, color), y) in labels.iter().zip(&placed) {
        let _ = writeln!(
            o,
            r#"<line x1="{:.1}" y1="{y0:.1}" x2="{lx:.1}" y2="{:.1}" stroke="{color}" stroke-width="1"/><text x="{:.1}" y="{:.1}" fill="{color}" font-weight="bold">{}</text>"#,
            LEFT + pw,
            y - 4.0,
            lx + 4.0,
            y,
            esc(role)
        );
    }
    // Tensors outside blocks: grey points, named inside the plot next to their slot, labels
    // stacked downwards from their point so that none overlap.
    for (slot, rows) in [(x_lo, &outside_in), (x_hi, &outside_out)] {
        let mut pts: Vec<(f64, &DiffRow)> =
            rows.iter().map(|r| (ys(r.sqnr_db().unwrap_or(f64::NAN)), *r)).collect();
        pts.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        let mut next = f64::NEG_INFINITY;
        for (py, r) in pts {
            let v = r.sqnr_db().unwrap_or(f64::NAN);
            let px = xs(slot);
            let (anchor, dx) = if slot == x_lo { ("start", 7.0) } else { ("end", -7.0) };
            let ty = (py + 14.0).max(next);
            next = ty + 12.0;
            let _ = writeln!(
                o,
                r##"<rect x="{:.1}" y="{:.1}" width="7" height="7" fill="#666"><title>{} : {} dB</title></rect><text x="{:.1}" y="{ty:.1}" text-anchor="{anchor}" fill="#555" font-size="11">{} ({})</text>"##,
                px - 3.5,
                py - 3.5,
                esc(&r.name),
                fmt(Some(v)),
                px + dx,
                esc(&r.role),
                fmt(Some(v))
            );
        }
    }
    if plotted.is_empty() {
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#777">no compared tensors</text>"##,
            LEFT + pw / 2.0,
            TOP + ph / 2.0
        );
    }
    o.push_str("</svg>\n");
    o
}
