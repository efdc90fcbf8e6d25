//! Test helper for the cross-checks (tests/crosscheck/test_engine_llama.py): runs the forward
//! engine on token ids and writes the logits, or tokenizes a text file.
//!
//! `engine_logits MODEL --ids 1,2,3 --out LOGITS.f32` writes `[t, vocab]` little-endian f32 and
//! prints `{"rows": t, "cols": vocab}`;
//! `engine_logits MODEL --tokenize TEXT_FILE` prints the token ids as a JSON array.

use std::process::ExitCode;

use qtool_calib::engine::Model;
use qtool_calib::tokenizer::Tokenizer;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: engine_logits MODEL (--ids 1,2,3 --out FILE | --tokenize TEXT_FILE)";
    let model_path = args.first().ok_or(usage)?;
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let model = Model::open(model_path)?;
    if let Some(text_file) = flag("--tokenize") {
        let text = std::fs::read_to_string(text_file)?;
        let ids = Tokenizer::for_model(&model)?.encode(&text)?;
        println!("{}", serde_json::to_string(&ids)?);
        return Ok(());
    }
    let ids: Vec<u32> = flag("--ids")
        .ok_or(usage)?
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let out = flag("--out").ok_or(usage)?;
    let logits = model.forward_logits(&ids)?;
    let bytes: Vec<u8> = logits.data.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(out, bytes)?;
    println!("{}", serde_json::json!({"rows": logits.rows, "cols": logits.cols}));
    Ok(())
}
