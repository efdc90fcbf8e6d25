//! The SQNR chart: one series per role, direct labels, infinite and NaN rows handled, output
//! deterministic.

mod diff_support;

use diff_support::{values, Builder};
use qtool_quantizers::diff::{diff, plot::sqnr_svg, DiffOptions, DiffReport, Input, Registry};

fn report(blocks: usize, identical_norms: bool, nan: bool) -> DiffReport {
    let mut r = Builder::safetensors();
    let mut c = Builder::safetensors();
    let w = values(64, 1);
    r = r.f32("model.embed_tokens.weight", &[64], &w);
    c = c.f32("model.embed_tokens.weight", &[64], &w);
    for b in 0..blocks {
        for (k, role) in
            ["self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj"].iter().enumerate()
        {
            let name = format!("model.layers.{b}.{role}.weight");
            let amp = 1e-3 * (1 + k + b % 3) as f32;
            let mut q: Vec<f32> =
                w.iter().enumerate().map(|(i, x)| x + amp * ((i % 7) as f32 - 3.0)).collect();
            if nan && b == 1 && k == 0 {
                q[0] = f32::NAN;
            }
            r = r.f32(&name, &[64], &w);
            c = c.f32(&name, &[64], &q);
        }
        let norm = format!("model.layers.{b}.input_layernorm.weight");
        r = r.f32(&norm, &[64], &w);
        let q: Vec<f32> =
            if identical_norms { w.clone() } else { w.iter().map(|x| x * 1.01).collect() };
        c = c.f32(&norm, &[64], &q);
    }
    let (r, c) = (r.build(), c.build());
    diff(&Input::new(&r), &Input::new(&c), &Registry::standard(), &DiffOptions::default(), None)
        .unwrap()
}

#[test]
fn one_polyline_and_one_direct_label_per_role() {
    let svg = sqnr_svg(&report(4, false, false), "a vs b");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 4, "q, k, down, attn_norm");
    for role in ["q", "k", "down", "attn_norm"] {
        assert!(svg.contains(&format!(r#"font-weight="bold">{role}</text>"#)), "label {role}");
    }
    // 4 blocks → 4 points per series.
    assert_eq!(svg.matches("<circle").count(), 16);
    assert!(svg.contains("model.embed_tokens"), "outside-block tensors are named");
    assert!(svg.contains("a vs b"));
}

#[test]
fn identical_tensors_sit_on_the_infinity_line() {
    let svg = sqnr_svg(&report(3, true, false), "t");
    assert!(svg.contains(">∞</text>"));
    assert!(svg.contains("attn_norm"));
}

#[test]
fn nan_rows_are_counted_not_drawn() {
    let svg = sqnr_svg(&report(3, false, true), "t");
    assert!(svg.contains("1 NaN (not drawn)"));
    assert_eq!(svg.matches("<circle").count(), 3 * 4 - 1);
}

#[test]
fn names_are_escaped() {
    let mut rep = report(1, false, false);
    rep.rows[0].name = "a<b&c".into();
    let svg = sqnr_svg(&rep, "x & <y>");
    assert!(svg.contains("a&lt;b&amp;c") && svg.contains("x &amp; &lt;y&gt;"));
    assert!(!svg.contains("a<b"));
}

#[test]
fn output_is_deterministic_and_empty_reports_render() {
    let rep = report(5, false, false);
    assert_eq!(sqnr_svg(&rep, "t"), sqnr_svg(&rep, "t"));
    let mut empty = rep.clone();
    empty.rows.clear();
    let svg = sqnr_svg(&empty, "t");
    assert!(svg.contains("no compared tensors") && svg.ends_with("</svg>\n"));
}

#[test]
fn block_groups_sit_side_by_side_with_their_names() {
    let w = values(32, 2);
    let q: Vec<f32> = w.iter().map(|x| x * 1.001 + 1e-4).collect();
    let mut r = Builder::safetensors();
    let mut c = Builder::safetensors();
    for (g, n) in [("double_blocks", 3), ("single_blocks", 4)] {
        for b in 0..n {
            let name = format!("{g}.{b}.linear1.weight");
            r = r.f32(&name, &[32], &w);
            c = c.f32(&name, &[32], &q);
        }
    }
    let (r, c) = (r.build(), c.build());
    let rep = diff(
        &Input::new(&r),
        &Input::new(&c),
        &Registry::standard(),
        &DiffOptions::default(),
        None,
    )
    .unwrap();
    let svg = sqnr_svg(&rep, "flux");
    assert!(svg.contains(">double_blocks</text>") && svg.contains(">single_blocks</text>"));
    // 7 distinct x positions: no two points of the one series share a column.
    let xs: std::collections::BTreeSet<&str> = svg
        .match_indices("<circle cx=\"")
        .map(|(i, m)| {
            let rest = &svg[i + m.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect();
    assert_eq!(xs.len(), 7);
}
