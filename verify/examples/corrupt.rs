//! Test tooling for `qtool verify`:
//!
//! ```text
//! corrupt fixture DIR [SEED]                  seeded BF16 LLaMA (hidden 256, intermediate 512,
//!                                             2 layers) + config.json + tokenizer.json
//! corrupt KIND IN OUT [LAYER_SUBSTRING]       a corrupted copy; KIND: flip-nibbles, scale-perm,
//!                                             zero-points, unswizzled-scales; prints the layers
//!                                             whose numbers are now wrong, one per line
//! corrupt refcheck CAND REF [M]               the REF check on the CPU only (no GPU): per layer
//!                                             the error vs REF, the expected error, the ratio;
//!                                             exit 1 when a layer fails
//! ```
//! Exit 2 with `error: ...` on bad input.

use std::path::Path;
use std::process::ExitCode;

use qtool_quantizers::diff::Input;
use qtool_verify::corrupt::{corrupt, Corruption};
use qtool_verify::discover::{discover, input};
use qtool_verify::fixture::{write_llama, LlamaDims};
use qtool_verify::reference::Reference;
use qtool_verify::report::Status;
use qtool_verify::runner::{verify_layer, RefContext};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["fixture", dir, rest @ ..] => {
            let seed = rest.first().map_or(Ok(20251121), |s| s.parse().map_err(|e| format!("seed: {e}")))?;
            write_llama(Path::new(dir), &LlamaDims::default(), seed).map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        ["refcheck", cand, reference, rest @ ..] => {
            let m = rest.first().map_or(Ok(16), |s| s.parse().map_err(|e| format!("M: {e}")))?;
            refcheck(cand, reference, m)
        }
        [kind, input_path, output, rest @ ..] => {
            let kind = Corruption::from_name(kind).ok_or_else(|| {
                let names: Vec<&str> = Corruption::ALL.iter().map(|c| c.name()).collect();
                format!("unknown corruption '{kind}' (expected one of {})", names.join(", "))
            })?;
            let done = corrupt(Path::new(input_path), Path::new(output), kind, rest.first().copied())
                .map_err(|e| e.to_string())?;
            for l in done.layers {
                println!("{l}");
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => Err("usage: corrupt fixture DIR [SEED] | corrupt KIND IN OUT [LAYER] | corrupt refcheck CAND REF [M]".into()),
    }
}

fn refcheck(cand_path: &str, ref_path: &str, m: usize) -> Result<ExitCode, String> {
    let cand_ckpt = qtool_formats::open(cand_path).map_err(|e| e.to_string())?;
    let ref_ckpt = qtool_formats::open(ref_path).map_err(|e| e.to_string())?;
    let cand = input(&cand_ckpt);
    let reference = Reference::new(ref_path, Input::from_checkpoint(&ref_ckpt), &cand)
        .map_err(|e| e.to_string())?;
    let found = discover(&cand, &|_| true).map_err(|e| e.to_string())?;
    let mut failed = 0;
    for layer in &found.layers {
        let cx = RefContext { reference: &reference, candidate: &cand };
        let r = verify_layer(layer, &[m], None, Some(cx)).map_err(|e| e.to_string())?;
        let Some(b) = r.batches.first() else {
            println!("{:<48} {:<28} skipped: {}", r.name, r.layout, r.reason.unwrap_or_default());
            continue;
        };
        let Some(rr) = &b.reference else { continue };
        let ratio = rr.expected_rel.map_or(f64::NAN, |e| rr.cpu_rel / e);
        println!(
            "{:<48} {:<28} vs_ref {:.5} expected {} ratio {:.2} {}",
            r.name,
            r.layout,
            rr.cpu_rel,
            rr.expected_rel.map_or("n/a".into(), |e| format!("{e:.5}")),
            ratio,
            if r.status == Status::Fail { "FAIL" } else { "pass" }
        );
        failed += usize::from(r.status == Status::Fail);
    }
    for u in &found.unrunnable {
        println!("{:<48} {:<28} not verifiable: {}", u.name, u.scheme, u.reason);
    }
    println!("{} layers, {failed} failed", found.layers.len());
    Ok(if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
