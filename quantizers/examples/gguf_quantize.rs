//! GGUF → GGUF quantization with llama.cpp's recipes, writing the bytes `llama-quantize` writes.
//!
//! ```text
//! gguf_quantize IN.gguf OUT.gguf FTYPE [--threads N] [--dry-run] [--explain] [--verbose]
//!               [--allow-requantize] [--pure] [--leave-output-tensor]
//!               [--output-tensor-type TYPE] [--token-embedding-type TYPE]
//!               [--tensor-type REGEX=TYPE]...
//! ```
//! FTYPE is a llama.cpp recipe name (`Q4_K_M`, `Q8_0`, `F16`, ...). `--dry-run` prints the plan in
//! llama.cpp's `--dry-run` format (with `--explain`, the rule behind each choice) and writes
//! nothing. Exit status 2 with `error: ...` on bad input; nothing is left at OUT on failure.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use qtool_formats::gguf::GgufFile;
use qtool_quantizers::recipe::gguf::parse_target_type;
use qtool_quantizers::recipe::{self, log, FileType, RecipeOptions, TensorTypeOverride};

struct Args {
    input: PathBuf,
    output: PathBuf,
    ftype: FileType,
    threads: Option<usize>,
    dry_run: bool,
    explain: bool,
    verbose: bool,
    allow_requantize: bool,
    opts: RecipeOptions,
}

const USAGE: &str =
    "usage: gguf_quantize IN.gguf OUT.gguf FTYPE [--threads N] [--dry-run] [--explain] \
[--verbose] [--allow-requantize] [--pure] [--leave-output-tensor] [--output-tensor-type TYPE] \
[--token-embedding-type TYPE] [--tensor-type REGEX=TYPE]...";

fn parse_args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut threads = None;
    let (mut dry_run, mut explain, mut verbose, mut allow_requantize) =
        (false, false, false, false);
    let mut opts = RecipeOptions::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--threads" => {
                let v = value("--threads")?;
                let n: usize =
                    v.parse().map_err(|_| format!("--threads: {v:?} is not a number"))?;
                if n == 0 {
                    return Err("--threads must be at least 1".into());
                }
                threads = Some(n);
            }
            "--dry-run" => dry_run = true,
            "--explain" => explain = true,
            "--verbose" => verbose = true,
            "--allow-requantize" => allow_requantize = true,
            "--pure" => opts.pure = true,
            "--leave-output-tensor" => opts.leave_output_tensor = true,
            "--output-tensor-type" => {
                let v = value("--output-tensor-type")?;
                opts.output_tensor_type =
                    Some(parse_target_type(&v).map_err(|e| format!("--output-tensor-type: {e}"))?);
            }
            "--token-embedding-type" => {
                let v = value("--token-embedding-type")?;
                opts.token_embedding_type = Some(
                    parse_target_type(&v).map_err(|e| format!("--token-embedding-type: {e}"))?,
                );
            }
            "--tensor-type" => {
                let v = value("--tensor-type")?;
                opts.tensor_types.push(TensorTypeOverride::parse(&v).map_err(|e| e.to_string())?);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n{USAGE}")),
            _ => positional.push(arg),
        }
    }
    let [input, output, ftype] =
        <[String; 3]>::try_from(positional).map_err(|_| USAGE.to_string())?;
    let ftype = FileType::from_name(&ftype).map_err(|e| e.to_string())?;
    Ok(Args {
        input: input.into(),
        output: output.into(),
        ftype,
        threads,
        dry_run,
        explain,
        verbose,
        allow_requantize,
        opts,
    })
}

fn run(args: Args) -> Result<(), String> {
    let file = GgufFile::open(&args.input).map_err(|e| e.to_string())?;
    let plan = recipe::prepare(&file, args.ftype, &args.opts).map_err(|e| e.to_string())?;
    if args.dry_run {
        // A closed pipe (`| head`) ends the listing quietly.
        let mut out = std::io::stdout().lock();
        for line in log::plan_lines(&plan.recipe, args.explain) {
            if writeln!(out, "{line}").is_err() {
                break;
            }
        }
        return Ok(());
    }
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(n) = args.threads {
        builder = builder.num_threads(n);
    }
    let pool = builder.build().map_err(|e| format!("cannot start worker threads: {e}"))?;
    let n = plan.recipe.tensors.len();
    let verbose = args.verbose;
    let mut progress = |i: usize, t: &recipe::TensorPlan| {
        if verbose {
            eprintln!("{}", log::tensor_line(i, n, t));
        }
    };
    pool.install(|| {
        recipe::requantize_to_path(&file, &plan, args.allow_requantize, &args.output, &mut progress)
    })
    .map_err(|e| e.to_string())?;
    for line in log::summary_lines(&plan.recipe) {
        eprintln!("{line}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let result = parse_args().and_then(run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
