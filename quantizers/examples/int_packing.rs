//! Quantizes a raw weight and writes every int packing as raw little-endian bytes, for the
//! independent numpy cross-check in `tests/crosscheck/test_int_packing.py`.
//!
//! ```text
//! int_packing --weight W.f32 --n N --k K --bits 4|8 --group G|-1 --sym 0|1
//!             --convention gptq|awq|ct [--g-idx G_IDX.i32] --out DIR
//! ```
//! `W.f32` is `[N, K]` f32 row-major; `G_IDX.i32` is `[K]` int32. DIR receives one `.bin` per
//! tensor and `manifest.txt` (one `written NAME` or `skipped NAME: reason` line per tensor).

use std::collections::HashMap;
use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

use qtool_quantizers::int::pack::{f32_le_bytes, i32_le_bytes};
use qtool_quantizers::int::{
    dequantize, marlin_dequantize, pack_awq, pack_ct, pack_gptq, pack_marlin, quantize, Bits,
    Convention, GptqZeros, GroupSize, MarlinKind, RtnConfig,
};

type Res<T> = Result<T, Box<dyn Error>>;

struct Out {
    dir: PathBuf,
    manifest: Vec<String>,
}

impl Out {
    fn write(&mut self, name: &str, bytes: &[u8]) -> Res<()> {
        fs::write(self.dir.join(format!("{name}.bin")), bytes)?;
        self.manifest.push(format!("written {name}"));
        Ok(())
    }

    fn skip(&mut self, name: &str, why: impl std::fmt::Display) {
        self.manifest.push(format!("skipped {name}: {why}"));
    }
}

fn parse_args() -> Res<HashMap<String, String>> {
    let mut args = std::env::args().skip(1);
    let mut map = HashMap::new();
    while let Some(key) = args.next() {
        let name =
            key.strip_prefix("--").ok_or_else(|| format!("expected --option, got {key:?}"))?;
        let value = args.next().ok_or_else(|| format!("--{name} needs a value"))?;
        map.insert(name.to_string(), value);
    }
    Ok(map)
}

fn get<'a>(args: &'a HashMap<String, String>, key: &str) -> Res<&'a str> {
    Ok(args.get(key).ok_or_else(|| format!("missing --{key}"))?.as_str())
}

fn read_words<const W: usize>(path: &Path, count: usize) -> Res<Vec<[u8; W]>> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() != count * W {
        return Err(format!(
            "{}: expected {} bytes, got {}",
            path.display(),
            count * W,
            bytes.len()
        )
        .into());
    }
    Ok(bytes.chunks_exact(W).map(|c| c.try_into().expect("chunk of W bytes")).collect())
}

fn run() -> Res<()> {
    let args = parse_args()?;
    let n: usize = get(&args, "n")?.parse()?;
    let k: usize = get(&args, "k")?.parse()?;
    let bits = Bits::from_u32(get(&args, "bits")?.parse()?)?;
    let group_size = GroupSize::from_i64(get(&args, "group")?.parse()?)?;
    let symmetric = get(&args, "sym")? == "1";
    let convention = match get(&args, "convention")? {
        "gptq" => Convention::Gptq,
        "awq" => Convention::Awq,
        "ct" => Convention::CompressedTensors,
        other => return Err(format!("unknown convention {other:?}").into()),
    };
    let w: Vec<f32> = read_words::<4>(Path::new(get(&args, "weight")?), n * k)?
        .into_iter()
        .map(f32::from_le_bytes)
        .collect();
    let g_idx: Option<Vec<u32>> = match args.get("g-idx") {
        Some(p) => Some(
            read_words::<4>(Path::new(p), k)?
                .into_iter()
                .map(|b| u32::try_from(i32::from_le_bytes(b)).map_err(|_| "negative g_idx"))
                .collect::<Result<_, _>>()?,
        ),
        None => None,
    };
    let dir = PathBuf::from(get(&args, "out")?);
    fs::create_dir_all(&dir)?;
    let mut out = Out { dir, manifest: Vec::new() };

    let cfg = RtnConfig { bits, group_size, symmetric, convention };
    let q = quantize(&w, n, k, &cfg, g_idx.as_deref())?;
    out.write("codes", &q.codes)?;
    out.write("scales", &f32_le_bytes(&q.scales))?;
    out.write("zeros", &q.zeros)?;
    out.write("dequant", &f32_le_bytes(&dequantize(&q)?))?;

    let v2 = pack_gptq(&q, GptqZeros::V2)?;
    out.write("gptq_qweight", &i32_le_bytes(&v2.qweight))?;
    out.write("gptq_qzeros_v2", &i32_le_bytes(&v2.qzeros))?;
    out.write("gptq_scales", &f32_le_bytes(&v2.scales))?;
    out.write("gptq_g_idx", &i32_le_bytes(&v2.g_idx))?;
    match pack_gptq(&q, GptqZeros::V1) {
        Ok(v1) => out.write("gptq_qzeros_v1", &i32_le_bytes(&v1.qzeros))?,
        Err(e) => out.skip("gptq_qzeros_v1", e),
    }

    match pack_awq(&q) {
        Ok(a) => {
            out.write("awq_qweight", &i32_le_bytes(&a.qweight))?;
            out.write("awq_qzeros", &i32_le_bytes(&a.qzeros))?;
            out.write("awq_scales", &f32_le_bytes(&a.scales))?;
        }
        Err(e) => out.skip("awq_qweight", e),
    }

    let ct = pack_ct(&q)?;
    out.write("ct_weight_packed", &i32_le_bytes(&ct.weight_packed))?;
    out.write("ct_weight_scale", &f32_le_bytes(&ct.weight_scale))?;
    let shape: Vec<u8> = ct.weight_shape.iter().flat_map(|v| v.to_le_bytes()).collect();
    out.write("ct_weight_shape", &shape)?;
    match &ct.weight_zero_point {
        Some(zp) => out.write("ct_weight_zero_point", &i32_le_bytes(zp))?,
        None => out.skip("ct_weight_zero_point", "symmetric"),
    }
    if let Some(g) = &ct.weight_g_idx {
        out.write("ct_weight_g_idx", &i32_le_bytes(g))?;
    }

    let kind = if symmetric { MarlinKind::Gptq } else { MarlinKind::Awq };
    match pack_marlin(&q, kind) {
        Ok(m) => {
            out.write("marlin_b", &i32_le_bytes(&m.b))?;
            out.write("marlin_s", &f32_le_bytes(&m.s))?;
            if let Some(zp) = &m.zp {
                out.write("marlin_zp", &i32_le_bytes(zp))?;
            }
            if let Some(s) = &m.sort_indices {
                let s: Vec<i32> = s.iter().map(|&v| v as i32).collect();
                out.write("marlin_sort_indices", &i32_le_bytes(&s))?;
            }
            out.write("marlin_dequant", &f32_le_bytes(&marlin_dequantize(&m)?))?;
        }
        Err(e) => out.skip("marlin_b", e),
    }

    let manifest = out.manifest.join("\n") + "\n";
    fs::write(out.dir.join("manifest.txt"), manifest)?;
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
