//! `repack`: moves an integer weight-only checkpoint (GPTQ, AWQ GEMM, compressed-tensors
//! `pack-quantized`) to another of those layouts, or to vLLM's legacy `marlin` checkpoint
//! (`B`, `s`, formats.md §4.1–4.3), without touching the numbers: every layer is unpacked to
//! its codes, scales and zero points ([`crate::int::QuantizedInt`]) and packed again, so the
//! dequantized weights are identical. Where the target cannot hold a layer exactly (AWQ has no
//! act-order and no 8-bit; Marlin is symmetric 4-bit with fp16 scales and tile-aligned shapes),
//! it refuses, naming the tensor and the rule, before any file is created.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use qtool_formats::checkpoint::{Checkpoint, INDEX_FILE};
use qtool_formats::safetensors::{string_metadata, SafetensorsWriter};
use qtool_formats::{DType, Error, PlannedTensor, TensorDType, TensorInfo, TensorRef, TensorSink};
use serde_json::{json, Value};

use crate::decode;
use crate::int::rtn::g_idx_or_default;
use crate::int::{
    check_marlin_shape, pack_awq, pack_ct, pack_gptq, pack_marlin, unpack_awq, unpack_ct,
    unpack_gptq, AwqTensors, Bits, CtPackedTensors, GptqTensors, GptqZeros, GroupSize, IntError,
    MarlinKind, MarlinShape, Parallel, QuantizedInt,
};

use super::error::ExportError;
use super::output::{copy_file, is_file_output, write_json, SIDE_FILES};

/// Where `repack` writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// vLLM's legacy `"marlin"` checkpoint: `B` + `s`, `checkpoint_format: "marlin"`.
    Marlin,
    Gptq(GptqZeros),
    Awq,
    CompressedTensors,
}

impl Target {
    pub const NAMES: [&'static str; 4] = ["marlin", "gptq", "awq", "compressed-tensors"];

    pub fn name(self) -> &'static str {
        match self {
            Target::Marlin => "marlin",
            Target::Gptq(_) => "gptq",
            Target::Awq => "awq",
            Target::CompressedTensors => "compressed-tensors",
        }
    }
}

/// The layout of an integer checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceLayout {
    Gptq(GptqZeros),
    Awq,
    CompressedTensors,
}

impl SourceLayout {
    pub fn name(self) -> &'static str {
        match self {
            SourceLayout::Gptq(GptqZeros::V1) => "gptq",
            SourceLayout::Gptq(GptqZeros::V2) => "gptq_v2",
            SourceLayout::Awq => "awq",
            SourceLayout::CompressedTensors => "compressed-tensors",
        }
    }
}

/// What the source config says about every quantized layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceInfo {
    pub layout: SourceLayout,
    pub bits: Bits,
    pub group_size: GroupSize,
    pub symmetric: bool,
}

/// One quantized layer of the source: its parts (indices into the source's tensors).
#[derive(Clone, Debug)]
pub struct RepackLayer {
    pub prefix: String,
    pub n: usize,
    pub k: usize,
    pub parts: BTreeMap<&'static str, usize>,
    /// The dtype the source stores scales in (kept by every target but Marlin, which needs F16).
    pub scale_dtype: DType,
    pub act_order: bool,
}

#[derive(Clone, Debug)]
pub enum RepackAction {
    Copy(usize),
    Layer(RepackLayer),
}

#[derive(Clone, Debug)]
pub struct RepackEntry {
    pub name: String,
    pub file: usize,
    pub action: RepackAction,
    pub outputs: Vec<PlannedTensor>,
}

/// The whole repack, checked: every layer passed the target's rules on every `tp`.
#[derive(Clone, Debug)]
pub struct RepackPlan {
    pub source: SourceInfo,
    pub target: Target,
    pub tp: Vec<usize>,
    pub entries: Vec<RepackEntry>,
}

impl RepackPlan {
    pub fn layers(&self) -> usize {
        self.entries.iter().filter(|e| matches!(e.action, RepackAction::Layer(_))).count()
    }
}

fn refuse(tensor: &str, rule: impl Into<String>) -> ExportError {
    ExportError::Repack { tensor: tensor.to_string(), rule: rule.into() }
}

/// Reads the source layout from `quantize_config.json` (GPTQ) or `config.json`'s
/// `quantization_config` (formats.md §2.1, §3.1, §3.2).
pub fn source_info(ckpt: &Checkpoint) -> Result<SourceInfo, ExportError> {
    let path = ckpt.path();
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let side = dir.join("quantize_config.json");
    let qc: Value = if side.is_file() {
        let text = fs::read_to_string(&side).map_err(|e| Error::io(&side, e))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::invalid(&side, format!("not valid JSON: {e}")))?
    } else if let Some(qc) = ckpt.quantization_config() {
        qc.clone()
    } else {
        return Err(Error::invalid(
            path,
            "no quantize_config.json or config.json quantization_config: not a GPTQ, AWQ or compressed-tensors integer checkpoint",
        )
        .into());
    };
    let cfg_name =
        if side.is_file() { "quantize_config.json" } else { "config.json quantization_config" };
    let bad = |what: String| -> ExportError {
        Error::invalid(path, format!("{cfg_name}: {what}")).into()
    };
    let int_of = |v: &Value, key: &str| -> Result<i64, ExportError> {
        v.get(key)
            .and_then(Value::as_i64)
            .ok_or_else(|| bad(format!("missing integer key {key:?}")))
    };
    let group = |g: i64| GroupSize::from_i64(g).map_err(|e| bad(format!("group_size {g}: {e}")));
    let bits = |b: i64| Bits::from_u32(b as u32).map_err(|e| bad(format!("bits {b}: {e}")));
    let method = qc.get("quant_method").and_then(Value::as_str).unwrap_or("gptq");
    match method {
        "gptq" => {
            let fmt = qc.get("checkpoint_format").and_then(Value::as_str).unwrap_or("gptq");
            let zeros = match fmt {
                "gptq" => GptqZeros::V1,
                "gptq_v2" => GptqZeros::V2,
                other => return Err(bad(format!("checkpoint_format {other:?} cannot be repacked (gptq, gptq_v2)"))),
            };
            if qc.get("is_marlin_format").and_then(Value::as_bool) == Some(true) {
                return Err(bad("the checkpoint is already in the marlin format".into()));
            }
            Ok(SourceInfo {
                layout: SourceLayout::Gptq(zeros),
                bits: bits(int_of(&qc, "bits")?)?,
                group_size: group(int_of(&qc, "group_size")?)?,
                symmetric: qc.get("sym").and_then(Value::as_bool).unwrap_or(true),
            })
        }
        "awq" => {
            let version = qc.get("version").and_then(Value::as_str).unwrap_or("gemm");
            if !version.eq_ignore_ascii_case("gemm") {
                return Err(bad(format!("AWQ version {version:?} is not the GEMM layout")));
            }
            let b = int_of(&qc, "bits").or_else(|_| int_of(&qc, "w_bit"))?;
            let g = int_of(&qc, "group_size").or_else(|_| int_of(&qc, "q_group_size"))?;
            Ok(SourceInfo { layout: SourceLayout::Awq, bits: bits(b)?, group_size: group(g)?, symmetric: false })
        }
        "compressed-tensors" => {
            let format = qc.get("format").and_then(Value::as_str).unwrap_or("");
            if format != "pack-quantized" {
                return Err(bad(format!("format {format:?} is not pack-quantized (integer weight-only)")));
            }
            let groups = qc.get("config_groups").and_then(Value::as_object).ok_or_else(|| bad("missing config_groups".into()))?;
            if groups.len() != 1 {
                return Err(bad(format!("{} config groups; repack handles one", groups.len())));
            }
            let w = groups.values().next().and_then(|g| g.get("weights")).ok_or_else(|| bad("config group without weights".into()))?;
            if w.get("type").and_then(Value::as_str) != Some("int") {
                return Err(bad("weights.type is not int".into()));
            }
            let strategy = w.get("strategy").and_then(Value::as_str).unwrap_or("");
            let g = match strategy {
                "channel" => -1,
                "group" => int_of(w, "group_size")?,
                s => return Err(bad(format!("weights.strategy {s:?} (repack handles group and channel)"))),
            };
            Ok(SourceInfo {
                layout: SourceLayout::CompressedTensors,
                bits: bits(int_of(w, "num_bits")?)?,
                group_size: group(g)?,
                symmetric: w.get("symmetric").and_then(Value::as_bool).unwrap_or(true),
            })
        }
        other => Err(bad(format!("quant_method {other:?} is not an integer layout repack reads (gptq, awq, compressed-tensors)"))),
    }
}

fn st(name: String, dtype: DType, shape: Vec<usize>) -> PlannedTensor {
    let numel: u64 = shape.iter().map(|&d| d as u64).product();
    PlannedTensor {
        name,
        dtype: TensorDType::St(dtype),
        shape: shape.into_iter().map(|d| d as u64).collect(),
        nbytes: numel * dtype.bits() / 8,
    }
}

/// Which way a layer is split under tensor parallelism (vLLM's Llama-family convention: the
/// output projections are row-parallel, everything else column-parallel).
pub fn parallel_of(prefix: &str) -> Parallel {
    let last = prefix.rsplit('.').next().unwrap_or(prefix);
    match last {
        "o_proj" | "down_proj" | "out_proj" | "dense" | "fc2" | "w2" | "dense_4h_to_h" => {
            Parallel::Row
        }
        _ => Parallel::Column,
    }
}

/// The parts of a layer, per source layout.
fn part_names(layout: SourceLayout) -> (&'static str, &'static [&'static str]) {
    match layout {
        SourceLayout::Gptq(_) => ("qweight", &["qweight", "qzeros", "scales", "g_idx"]),
        SourceLayout::Awq => ("qweight", &["qweight", "qzeros", "scales"]),
        SourceLayout::CompressedTensors => (
            "weight_packed",
            &["weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "weight_g_idx"],
        ),
    }
}

fn dim(t: &TensorInfo, i: usize) -> usize {
    t.shape.get(i).copied().unwrap_or(0) as usize
}

/// Plans the repack and runs every pre-flight check.
pub fn plan(
    ckpt: &Checkpoint,
    source: SourceInfo,
    target: Target,
    tp: &[usize],
) -> Result<RepackPlan, ExportError> {
    let src = ckpt.source();
    let tensors = src.tensors();
    let by_name: BTreeMap<&str, usize> =
        tensors.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
    let (anchor, names) = part_names(source.layout);
    let mut member = vec![false; tensors.len()];
    let mut layers: BTreeMap<usize, RepackLayer> = BTreeMap::new();
    let pf = source.bits.per_word();
    for (i, t) in tensors.iter().enumerate() {
        let Some(prefix) = t.name.strip_suffix(&format!(".{anchor}")) else { continue };
        let mut parts = BTreeMap::new();
        for &p in names {
            if let Some(&j) = by_name.get(format!("{prefix}.{p}").as_str()) {
                parts.insert(p, j);
                member[j] = true;
            }
        }
        let need: &[&str] = match source.layout {
            SourceLayout::CompressedTensors => &["weight_packed", "weight_scale"],
            _ => &["qweight", "qzeros", "scales"],
        };
        for p in need {
            if !parts.contains_key(p) {
                return Err(refuse(&t.name, format!("layer {prefix} has no {prefix}.{p}")));
            }
        }
        let scales = &tensors[parts[need[need.len() - 1]]];
        let (n, k) = match source.layout {
            SourceLayout::Gptq(_) => (dim(scales, 1), dim(t, 0) * pf),
            SourceLayout::Awq => (dim(scales, 1), dim(t, 0)),
            SourceLayout::CompressedTensors => (dim(t, 0), dim(t, 1) * pf),
        };
        if t.shape.len() != 2 || n == 0 || k == 0 {
            return Err(refuse(&t.name, format!("shape {:?} is not a packed 2-D weight", t.shape)));
        }
        let groups = match source.group_size {
            GroupSize::PerChannel => Some(1),
            GroupSize::Size(g) => (k % g == 0).then(|| k / g),
        };
        let scale_shape = match source.layout {
            SourceLayout::CompressedTensors => groups.map(|g| [n, g]),
            _ => groups.map(|g| [g, n]),
        };
        let got: Vec<usize> = scales.shape.iter().map(|&d| d as usize).collect();
        if scale_shape.map(|s| s.to_vec()) != Some(got.clone()) {
            return Err(refuse(
                &scales.name,
                format!(
                    "shape {got:?} does not match the config's group size {} for K = {k}, N = {n}",
                    source.group_size.to_i64()
                ),
            ));
        }
        let scale_dtype = match scales.dtype {
            TensorDType::St(d @ (DType::F16 | DType::BF16 | DType::F32)) => d,
            d => {
                return Err(refuse(
                    &scales.name,
                    format!("scales are {d}, expected F16, BF16 or F32"),
                ))
            }
        };
        let act_order = match (source.layout, parts.get("g_idx").or(parts.get("weight_g_idx"))) {
            (_, Some(&j)) => {
                let g = read_i32(src, &tensors[j])?;
                g.len() != k
                    || g.iter()
                        .zip(g_idx_or_default(None, k, source.group_size))
                        .any(|(&a, b)| a as i64 != b as i64)
            }
            _ => false,
        };
        let layer = RepackLayer { prefix: prefix.to_string(), n, k, parts, scale_dtype, act_order };
        preflight(&layer, &source, target, tp, &t.name)?;
        layers.insert(i, layer);
    }
    let mut source = source;
    if !source.symmetric && !layers.is_empty() {
        // An asymmetric layout (AWQ always) may hold symmetric codes (every zero at the
        // midpoint, as a symmetric checkpoint repacked to AWQ does): recognise it from the
        // packed zero words, so the round trip back to a symmetric layout keeps `sym`.
        let mut all = true;
        for l in layers.values() {
            all &= zeros_are_mid(src, l, &source)?;
        }
        source.symmetric = all;
    }
    if layers.is_empty() {
        return Err(Error::invalid(
            ckpt.path(),
            format!("no {} layers ({anchor} tensors) found", source.layout.name()),
        )
        .into());
    }
    let mut entries = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        if let Some(layer) = layers.remove(&i) {
            entries.push(RepackEntry {
                name: layer.prefix.clone(),
                file: t.file,
                outputs: layer_outputs(&layer, &source, target),
                action: RepackAction::Layer(layer),
            });
        } else if !member[i] {
            let TensorDType::St(d) = t.dtype else {
                return Err(refuse(&t.name, "is not a safetensors tensor"));
            };
            entries.push(RepackEntry {
                name: t.name.clone(),
                file: t.file,
                action: RepackAction::Copy(i),
                outputs: vec![PlannedTensor {
                    name: t.name.clone(),
                    dtype: TensorDType::St(d),
                    shape: t.shape.clone(),
                    nbytes: t.nbytes,
                }],
            });
        }
    }
    Ok(RepackPlan { source, target, tp: tp.to_vec(), entries })
}

/// Whether every stored zero point of `l` is the code midpoint `2^(b-1)` (whole words only).
fn zeros_are_mid(
    src: &dyn qtool_formats::TensorSource,
    l: &RepackLayer,
    s: &SourceInfo,
) -> Result<bool, ExportError> {
    let pf = s.bits.per_word();
    let mid = s.bits.mid();
    let field = match s.layout {
        SourceLayout::Gptq(GptqZeros::V1) => mid - 1,
        _ => mid,
    };
    let part = match s.layout {
        SourceLayout::CompressedTensors => "weight_zero_point",
        _ => "qzeros",
    };
    let Some(&j) = l.parts.get(part) else { return Ok(false) };
    if l.n % pf != 0 {
        return Ok(false);
    }
    let word = (0..pf).fold(0u32, |w, i| w | (field << (s.bits.get() * i as u32)));
    let words = read_i32(src, &src.tensors()[j])?;
    Ok(!words.is_empty() && words.iter().all(|&w| w as u32 == word))
}

/// The target's rules, checked from shapes and config alone.
fn preflight(
    l: &RepackLayer,
    s: &SourceInfo,
    target: Target,
    tp: &[usize],
    tensor: &str,
) -> Result<(), ExportError> {
    let (n, k) = (l.n, l.k);
    let pf = s.bits.per_word();
    match target {
        Target::Marlin => {
            let shape = MarlinShape {
                n,
                k,
                bits: s.bits.get(),
                group_size: s.group_size.to_i64(),
                symmetric: s.symmetric,
                act_order: l.act_order,
            };
            for &t in tp {
                check_marlin_shape(&shape, MarlinKind::Legacy, t, parallel_of(&l.prefix)).map_err(
                    |e| refuse(tensor, format!("[{n}x{k}] cannot be legacy Marlin on tp={t}: {e}")),
                )?;
            }
        }
        Target::Awq => {
            if s.bits != Bits::B4 {
                return Err(refuse(
                    tensor,
                    format!(
                        "AWQ GEMM stores 4-bit weights only; this checkpoint is {}-bit",
                        s.bits.get()
                    ),
                ));
            }
            if l.act_order {
                return Err(refuse(
                    tensor,
                    "AWQ GEMM has no g_idx; an act-order layer cannot be stored losslessly",
                ));
            }
            if n % 8 != 0 {
                return Err(refuse(tensor, format!("AWQ packs 8 values per int32 along out_features, and N = {n} is not a multiple of 8")));
            }
        }
        Target::Gptq(_) => {
            if k % pf != 0 || n % pf != 0 {
                return Err(refuse(
                    tensor,
                    format!("GPTQ needs K = {k} and N = {n} to be multiples of {pf}"),
                ));
            }
        }
        Target::CompressedTensors => {}
    }
    if let GroupSize::Size(g) = s.group_size {
        if k % g != 0 {
            return Err(refuse(tensor, format!("group size {g} does not divide K = {k}")));
        }
    }
    Ok(())
}

fn layer_outputs(l: &RepackLayer, s: &SourceInfo, target: Target) -> Vec<PlannedTensor> {
    let p = &l.prefix;
    let name = |suffix: &str| format!("{p}.{suffix}");
    let (n, k) = (l.n, l.k);
    let pf = s.bits.per_word();
    let groups = match s.group_size {
        GroupSize::PerChannel => 1,
        GroupSize::Size(g) => k / g,
    };
    let sd = l.scale_dtype;
    match target {
        Target::Marlin => vec![
            st(name("B"), DType::I32, vec![k / 16, n * 16 / pf]),
            st(name("s"), DType::F16, vec![groups, n]),
        ],
        Target::Gptq(_) => vec![
            st(name("qweight"), DType::I32, vec![k / pf, n]),
            st(name("qzeros"), DType::I32, vec![groups, n / pf]),
            st(name("scales"), sd, vec![groups, n]),
            st(name("g_idx"), DType::I32, vec![k]),
        ],
        Target::Awq => vec![
            st(name("qweight"), DType::I32, vec![k, n / 8]),
            st(name("qzeros"), DType::I32, vec![groups, n / 8]),
            st(name("scales"), sd, vec![groups, n]),
        ],
        Target::CompressedTensors => {
            let mut v = vec![
                st(name("weight_packed"), DType::I32, vec![n, k.div_ceil(pf)]),
                st(name("weight_scale"), sd, vec![n, groups]),
                st(name("weight_shape"), DType::I64, vec![2]),
            ];
            if !s.symmetric {
                v.push(st(name("weight_zero_point"), DType::I32, vec![n.div_ceil(pf), groups]));
            }
            if l.act_order {
                v.push(st(name("weight_g_idx"), DType::I32, vec![k]));
            }
            v
        }
    }
}

fn read_i32(
    src: &dyn qtool_formats::TensorSource,
    t: &TensorInfo,
) -> Result<Vec<i32>, ExportError> {
    if t.dtype != TensorDType::St(DType::I32) {
        return Err(refuse(&t.name, format!("is {}, expected I32", t.dtype)));
    }
    Ok(src.data(t).chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn read_f32(
    src: &dyn qtool_formats::TensorSource,
    t: &TensorInfo,
) -> Result<Vec<f32>, ExportError> {
    let path = src.files()[t.file].clone();
    decode::decode_all(TensorRef { info: t, data: src.data(t) })
        .map_err(|source| ExportError::Decode { path, source })
}

/// Reads one layer back into codes, scales and zeros.
pub fn read_layer(
    src: &dyn qtool_formats::TensorSource,
    l: &RepackLayer,
    s: &SourceInfo,
) -> Result<QuantizedInt, ExportError> {
    let t = |p: &str| &src.tensors()[l.parts[p]];
    let wrap = |e: IntError| ExportError::Repack { tensor: l.prefix.clone(), rule: e.to_string() };
    let (n, k) = (l.n, l.k);
    let q = match s.layout {
        SourceLayout::Gptq(zeros_format) => {
            let g_idx = match l.parts.get("g_idx") {
                Some(_) => read_i32(src, t("g_idx"))?,
                None => {
                    g_idx_or_default(None, k, s.group_size).into_iter().map(|g| g as i32).collect()
                }
            };
            let gt = GptqTensors {
                bits: s.bits,
                n,
                k,
                zeros_format,
                qweight: read_i32(src, t("qweight"))?,
                qzeros: read_i32(src, t("qzeros"))?,
                scales: read_f32(src, t("scales"))?,
                g_idx,
            };
            unpack_gptq(&gt, s.group_size, s.symmetric).map_err(wrap)?
        }
        SourceLayout::Awq => {
            let at = AwqTensors {
                n,
                k,
                qweight: read_i32(src, t("qweight"))?,
                qzeros: read_i32(src, t("qzeros"))?,
                scales: read_f32(src, t("scales"))?,
            };
            unpack_awq(&at, s.group_size).map_err(wrap)?
        }
        SourceLayout::CompressedTensors => {
            if let Some(&j) = l.parts.get("weight_shape") {
                let ws = &src.tensors()[j];
                let d = src.data(ws);
                let ok = ws.dtype == TensorDType::St(DType::I64)
                    && d.len() == 16
                    && i64::from_le_bytes(d[..8].try_into().unwrap_or_default()) == n as i64
                    && i64::from_le_bytes(d[8..].try_into().unwrap_or_default()) <= k as i64;
                if !ok {
                    return Err(refuse(&ws.name, format!("does not hold [{n}, K] with K <= {k}")));
                }
            }
            let ct = CtPackedTensors {
                bits: s.bits,
                n,
                k,
                weight_packed: read_i32(src, t("weight_packed"))?,
                weight_scale: read_f32(src, t("weight_scale"))?,
                weight_zero_point: match l.parts.get("weight_zero_point") {
                    Some(_) => Some(read_i32(src, t("weight_zero_point"))?),
                    None => None,
                },
                weight_shape: [n as i64, k as i64],
                weight_g_idx: match l.parts.get("weight_g_idx") {
                    Some(_) => Some(read_i32(src, t("weight_g_idx"))?),
                    None => None,
                },
            };
            unpack_ct(&ct, s.group_size).map_err(wrap)?
        }
    };
    let mut q = q;
    if s.symmetric && !q.symmetric {
        q.symmetric = true;
        q.validate().map_err(wrap)?;
    }
    Ok(q)
}

fn words(w: &[i32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Scales in `dtype`, refusing any value that dtype does not hold exactly (repack is lossless
/// or nothing).
fn scale_bytes(prefix: &str, dtype: DType, v: &[f32]) -> Result<Vec<u8>, ExportError> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for (i, &x) in v.iter().enumerate() {
        let exact = match dtype {
            DType::F16 => {
                let h = f16::from_f32(x);
                out.extend(h.to_le_bytes());
                h.to_f32() == x
            }
            DType::BF16 => {
                let h = bf16::from_f32(x);
                out.extend(h.to_le_bytes());
                h.to_f32() == x
            }
            _ => {
                out.extend(x.to_le_bytes());
                true
            }
        };
        if !exact {
            return Err(refuse(prefix, format!("scale #{i} = {x:e} is not exactly representable in {dtype}, which the target stores")));
        }
    }
    Ok(out)
}

/// The bytes of one layer in the target layout, in [`layer_outputs`] order.
pub fn encode_layer(
    q: &QuantizedInt,
    l: &RepackLayer,
    target: Target,
) -> Result<Vec<Vec<u8>>, ExportError> {
    let wrap = |e: IntError| ExportError::Repack { tensor: l.prefix.clone(), rule: e.to_string() };
    let sd = l.scale_dtype;
    Ok(match target {
        Target::Marlin => {
            let m = pack_marlin(q, MarlinKind::Legacy).map_err(wrap)?;
            vec![words(&m.b), scale_bytes(&l.prefix, DType::F16, &m.s)?]
        }
        Target::Gptq(z) => {
            let t = pack_gptq(q, z).map_err(wrap)?;
            vec![
                words(&t.qweight),
                words(&t.qzeros),
                scale_bytes(&l.prefix, sd, &t.scales)?,
                words(&t.g_idx),
            ]
        }
        Target::Awq => {
            let t = pack_awq(q).map_err(wrap)?;
            vec![words(&t.qweight), words(&t.qzeros), scale_bytes(&l.prefix, sd, &t.scales)?]
        }
        Target::CompressedTensors => {
            let t = pack_ct(q).map_err(wrap)?;
            let mut v = vec![
                words(&t.weight_packed),
                scale_bytes(&l.prefix, sd, &t.weight_scale)?,
                t.weight_shape.iter().flat_map(|d| d.to_le_bytes()).collect(),
            ];
            if let Some(zp) = &t.weight_zero_point {
                v.push(words(zp));
            }
            if l.act_order {
                let g = t.weight_g_idx.clone().unwrap_or_default();
                v.push(words(&g));
            }
            v
        }
    })
}

/// Layers with a 2-D `.weight` that stay unquantized (the loaders' ignore lists).
fn unquantized(plan: &RepackPlan, ckpt: &Checkpoint) -> Vec<String> {
    let tensors = ckpt.source().tensors();
    plan.entries
        .iter()
        .filter_map(|e| match e.action {
            RepackAction::Copy(i) if tensors[i].shape.len() == 2 => {
                tensors[i].name.strip_suffix(".weight").map(str::to_string)
            }
            _ => None,
        })
        .collect()
}

/// `(quantization_config for config.json, quantize_config.json)` of the target.
fn configs(plan: &RepackPlan, ckpt: &Checkpoint) -> (Value, Option<Value>) {
    let s = &plan.source;
    let act =
        plan.entries.iter().any(|e| matches!(&e.action, RepackAction::Layer(l) if l.act_order));
    let g = s.group_size.to_i64();
    match plan.target {
        Target::Marlin => {
            let qc = json!({
                "bits": 4, "group_size": g, "desc_act": false, "sym": true,
                "quant_method": "gptq", "checkpoint_format": "marlin", "is_marlin_format": true,
            });
            (qc.clone(), Some(qc))
        }
        Target::Gptq(z) => {
            let qc = json!({
                "bits": s.bits.get(), "group_size": g, "desc_act": act, "sym": s.symmetric,
                "quant_method": "gptq",
                "checkpoint_format": if z == GptqZeros::V2 { "gptq_v2" } else { "gptq" },
            });
            (qc.clone(), Some(qc))
        }
        Target::Awq => {
            let kept = unquantized(plan, ckpt);
            (
                json!({
                    "quant_method": "awq", "zero_point": true, "group_size": g, "bits": 4,
                    "version": "gemm",
                    "modules_to_not_convert": if kept.is_empty() { Value::Null } else { json!(kept) },
                }),
                None,
            )
        }
        Target::CompressedTensors => (
            json!({
                "config_groups": {"group_0": {
                    "input_activations": null, "output_activations": null, "targets": ["Linear"],
                    "weights": {
                        "actorder": if act { json!("group") } else { Value::Null },
                        "dynamic": false,
                        "group_size": (g > 0).then_some(g),
                        "num_bits": s.bits.get(),
                        "strategy": if g > 0 { "group" } else { "channel" },
                        "symmetric": s.symmetric,
                        "type": "int",
                    }}},
                "format": "pack-quantized",
                "global_compression_ratio": null,
                "ignore": unquantized(plan, ckpt),
                "kv_cache_scheme": null,
                "quant_method": "compressed-tensors",
                "quantization_status": "compressed",
                "sparsity_config": {},
                "transform_config": {},
            }),
            None,
        ),
    }
}

/// Writes the repacked checkpoint into the directory `out` (created; must not exist or be
/// empty). Nothing is left at `out` on failure.
pub fn write(
    ckpt: &Checkpoint,
    plan: &RepackPlan,
    out: &Path,
) -> Result<Vec<PathBuf>, ExportError> {
    if is_file_output(out) {
        return Err(Error::invalid(out, "repack writes a directory (its config goes in config.json / quantize_config.json); give a directory as -o").into());
    }
    if out.exists() {
        let empty =
            out.is_dir() && fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_none();
        if !empty {
            return Err(Error::invalid(out, "output directory exists and is not empty").into());
        }
    }
    let created = !out.exists();
    if created {
        fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    let mut written = Vec::new();
    let result = write_dir(ckpt, plan, out, &mut written);
    if result.is_err() {
        for p in &written {
            let _ = fs::remove_file(p);
        }
        if created {
            let _ = fs::remove_dir_all(out);
        }
    }
    result.map(|()| written)
}

fn write_dir(
    ckpt: &Checkpoint,
    plan: &RepackPlan,
    out: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), ExportError> {
    let src = ckpt.source();
    let files = src.files();
    let metadata = string_metadata(src);
    let mut weight_map = BTreeMap::new();
    let mut total = 0u64;
    for (i, f) in files.iter().enumerate() {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let entries: Vec<&RepackEntry> = plan.entries.iter().filter(|e| e.file == i).collect();
        let planned: Vec<PlannedTensor> =
            entries.iter().flat_map(|e| e.outputs.iter().cloned()).collect();
        for t in &planned {
            weight_map.insert(t.name.clone(), name.clone());
            total += t.nbytes;
        }
        let mut writer =
            SafetensorsWriter::create(&out.join(&name), planned, metadata.clone(), None)?;
        for e in entries {
            let parts: Vec<Vec<u8>> = match &e.action {
                RepackAction::Copy(j) => vec![src.data(&src.tensors()[*j]).to_vec()],
                RepackAction::Layer(l) => {
                    let q = read_layer(src, l, &plan.source)?;
                    encode_layer(&q, l, plan.target)?
                }
            };
            for (o, b) in e.outputs.iter().zip(&parts) {
                if b.len() as u64 != o.nbytes {
                    return Err(ExportError::PartSize {
                        tensor: e.name.clone(),
                        part: o.name.clone(),
                        got: b.len(),
                        expected: o.nbytes,
                    });
                }
                writer.write(&o.name, b)?;
            }
        }
        written.extend(writer.finish()?);
    }
    if files.len() > 1 {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        written.push(write_json(&out.join(INDEX_FILE), &index)?);
    }
    let (qc, side) = configs(plan, ckpt);
    let mut cfg = ckpt.config().cloned().unwrap_or_else(|| Value::Object(Default::default()));
    if let Value::Object(map) = &mut cfg {
        map.insert("quantization_config".into(), qc);
    }
    written.push(write_json(&out.join("config.json"), &cfg)?);
    if let Some(side) = side {
        written.push(write_json(&out.join("quantize_config.json"), &side)?);
    }
    let input_dir = if ckpt.path().is_dir() {
        ckpt.path().to_path_buf()
    } else {
        files[0].parent().map(Path::to_path_buf).unwrap_or_default()
    };
    for name in SIDE_FILES {
        let src = input_dir.join(name);
        if src.is_file() {
            written.push(copy_file(&src, &out.join(name))?);
        }
    }
    Ok(())
}
