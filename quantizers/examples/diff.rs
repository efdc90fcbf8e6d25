//! `diff REF CAND [--json] [--plot out.svg] [--worst N] [--filter REGEX] [--threads N]`
//!
//! The library's diff on two checkpoints, printed as a plain table (worst rows marked `!`) or
//! as the JSON report. The `qtool diff` subcommand wraps the same calls with the CLI's table
//! and progress conventions; this example is what the Python cross-checks run.
//!
//! Exit codes: 0 success, 2 bad input (one `error:` line on stderr).

use std::process::ExitCode;

use qtool_quantizers::diff::{self, plot, DiffOptions, DiffReport, DiffRow, Input, Registry};

struct Args {
    reference: String,
    candidate: String,
    json: bool,
    plot: Option<String>,
    worst: Option<usize>,
    filter: Option<String>,
    threads: Option<usize>,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut pos = Vec::new();
    let mut a = Args {
        reference: String::new(),
        candidate: String::new(),
        json: false,
        plot: None,
        worst: None,
        filter: None,
        threads: None,
    };
    while let Some(x) = it.next() {
        let mut value = |flag: &str| it.next().ok_or(format!("{flag} needs a value"));
        match x.as_str() {
            "--json" => a.json = true,
            "--plot" => a.plot = Some(value("--plot")?),
            "--filter" => a.filter = Some(value("--filter")?),
            "--worst" => {
                a.worst = Some(value("--worst")?.parse().map_err(|e| format!("--worst: {e}"))?)
            }
            "--threads" => {
                a.threads =
                    Some(value("--threads")?.parse().map_err(|e| format!("--threads: {e}"))?)
            }
            f if f.starts_with("--") => return Err(format!("unknown option {f}")),
            _ => pos.push(x),
        }
    }
    let [r, c]: [String; 2] = pos
        .try_into()
        .map_err(|_| "usage: diff REF CAND [--json] [--plot out.svg] [--worst N] [--filter REGEX] [--threads N]".to_string())?;
    a.reference = r;
    a.candidate = c;
    Ok(a)
}

fn fmt(x: f64) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.into()
    } else if x == 0.0 {
        "0".into()
    } else if x.abs() >= 1e-3 && x.abs() < 1e5 {
        format!("{x:.4}")
    } else {
        format!("{x:.3e}")
    }
}

fn table(report: &DiffReport, rows: &[&DiffRow], marked: &[usize]) -> String {
    let head =
        ["", "tensor", "shape", "scheme", "bpw", "sqnr_db", "cosine", "rel_fro", "rmse", "max_abs"];
    let mut cells: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let idx = report.rows.iter().position(|x| std::ptr::eq(x, *r)).unwrap_or(usize::MAX);
        let mut line = vec![
            if marked.contains(&idx) { "!".into() } else { String::new() },
            match &r.cand_name {
                Some(c) if *c != r.name => format!("{} -> {c}", r.name),
                _ => r.name.clone(),
            },
            format!("{:?}", r.shape),
            r.scheme.clone().unwrap_or_else(|| "-".into()),
            r.bits_per_weight.map_or("-".into(), |b| format!("{b:.3}")),
        ];
        match (&r.metrics, &r.reason) {
            (Some(m), _) => {
                line.extend([m.sqnr_db, m.cosine, m.rel_fro, m.rmse, m.max_abs].map(fmt))
            }
            (None, Some(why)) => line.push(format!("not compared: {why}")),
            (None, None) => line.push(format!("{:?}", r.status).to_lowercase()),
        }
        cells.push(line);
    }
    let cols = head.len();
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            cells
                .iter()
                .filter(|l| l.len() > c && l.len() == cols)
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &cells {
        let parts: Vec<String> = l
            .iter()
            .enumerate()
            .map(|(c, s)| format!("{s:<w$}", w = width.get(c).copied().unwrap_or(0)))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.replace('\n', " "));
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let args = parse()?;
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().map_err(|e| e.to_string())?;
    }
    let reference = qtool_formats::open(&args.reference).map_err(|e| e.to_string())?;
    let candidate = qtool_formats::open(&args.candidate).map_err(|e| e.to_string())?;
    let filter = match &args.filter {
        Some(f) => Some(regex::Regex::new(f).map_err(|e| format!("--filter: {e}"))?),
        None => None,
    };
    let report = diff::diff(
        &Input::from_checkpoint(&reference),
        &Input::from_checkpoint(&candidate),
        &Registry::standard(),
        &DiffOptions { filter },
        None,
    )
    .map_err(|e| e.to_string())?;
    if let Some(path) = &args.plot {
        let base = |p: &str| {
            std::path::Path::new(p)
                .file_name()
                .map_or(p.to_string(), |n| n.to_string_lossy().into_owned())
        };
        let title = format!("{} vs {}", base(&args.reference), base(&args.candidate));
        std::fs::write(path, plot::sqnr_svg(&report, &title))
            .map_err(|e| format!("{path}: {e}"))?;
    }
    let rows: Vec<&DiffRow> = match args.worst {
        Some(n) => report.worst(n),
        None => report.rows.iter().collect(),
    };
    if args.json {
        let mut out = report.clone();
        if args.worst.is_some() {
            out.rows = rows.iter().map(|r| (*r).clone()).collect();
        }
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
        return Ok(());
    }
    let marked = report.worst_indices(3);
    print!("{}", table(&report, &rows, &marked));
    let s = &report.summary;
    let o = |v: Option<f64>| v.map_or("-".to_string(), fmt);
    println!(
        "{} compared ({} identical, {} nan), {} only in REF, {} only in CAND, {} not compared",
        s.compared, s.identical, s.nan, s.only_ref, s.only_cand, s.not_compared
    );
    println!(
        "SQNR mean {} dB, worst {} dB ({}); {} bits/weight (REF {}), size ratio {}",
        o(s.mean_sqnr_db),
        o(s.worst_sqnr_db),
        s.worst_tensor.as_deref().unwrap_or("-"),
        o(s.bits_per_weight),
        o(s.ref_bits_per_weight),
        o(s.size_ratio)
    );
    Ok(())
}
