//! The quantize plan: for every input tensor, whether it is copied or quantized, and the exact
//! output tensors (names, dtypes, shapes, byte counts) it becomes — all fixed before any data is
//! touched, so the writer can emit headers first and `--dry-run` can show the result.
//!
//! Which tensors are quantized (DESIGN.md §3): 2-D floating-point `*.weight` tensors of linear
//! layers. Embeddings and `lm_head` stay by convention (they are gathers, or the layer most
//! sensitive to error); norms and biases are 1-D and stay. `--include` brings a conventionally
//! kept 2-D weight back in; `--ignore` excludes a tensor whatever else matches (it wins).

use qtool_formats::codec::Fp8Format;
use qtool_formats::{DType, PlannedTensor, TensorDType, TensorInfo, TensorSource};
use regex::Regex;

use crate::float::{mx, nvfp4, swizzle, ComputeDType};

use super::catalog::{comfy_quant_json, FmtSpec, Layout, Scheme};
use super::error::ExportError;
use super::int_layer::{self, IntOptions, IntSettings};

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct Request {
    pub fmt: &'static FmtSpec,
    pub layout: Layout,
    pub ignore: Vec<Regex>,
    pub include: Vec<Regex>,
    pub allow_nonfinite: bool,
    /// Settings of the integer weight-only names (`None` for the float names).
    pub int: Option<IntSettings>,
}

impl Request {
    /// Checks the layout against the name and compiles the patterns.
    pub fn new(
        fmt: &'static FmtSpec,
        layout: Option<Layout>,
        ignore: &[String],
        include: &[String],
        allow_nonfinite: bool,
    ) -> Result<Request, ExportError> {
        let layout = layout.unwrap_or(fmt.default_layout);
        if !fmt.supports(layout) {
            return Err(ExportError::LayoutMismatch {
                fmt: fmt.name,
                layout,
                reason: fmt.mismatch_reason(layout),
                supported: fmt.layout_list(),
            });
        }
        let compile = |option: &'static str, pats: &[String]| {
            pats.iter()
                .map(|p| {
                    Regex::new(p).map_err(|e| ExportError::Regex {
                        option,
                        pattern: p.clone(),
                        msg: regex_reason(&e),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Request {
            fmt,
            layout,
            ignore: compile("--ignore", ignore)?,
            include: compile("--include", include)?,
            allow_nonfinite,
            int: IntSettings::resolve(fmt.scheme, layout, &IntOptions::default())?,
        })
    }

    /// Applies `--group-size`, `--sym/--asym` and `--gptq-format`, refusing them where they do
    /// not apply.
    pub fn with_int_options(mut self, opts: &IntOptions) -> Result<Request, ExportError> {
        self.int = IntSettings::resolve(self.fmt.scheme, self.layout, opts)?;
        Ok(self)
    }
}

/// The last line of a regex error ("error: unclosed group"), without its `error:` prefix.
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().last().unwrap_or("").trim();
    last.strip_prefix("error:").unwrap_or(last).trim().to_string()
}

/// A weight to quantize: its geometry and the dtype its arithmetic runs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerPlan {
    /// The layer name: the tensor name without `.weight`.
    pub prefix: String,
    pub rows: usize,
    pub cols: usize,
    pub dtype: DType,
    pub compute: ComputeDType,
}

/// What happens to one entry of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Copied byte for byte.
    Copy,
    Quantize(LayerPlan),
    /// A tensor the layout adds (ComfyUI's legacy `scaled_fp8` marker), with its bytes.
    Marker(Vec<u8>),
}

/// One input tensor (or added marker) and the output tensors it becomes.
#[derive(Clone, Debug)]
pub struct PlanEntry {
    /// The input tensor's name (the marker's own name for a marker).
    pub name: String,
    /// Index into the source's tensor list; `None` for a marker.
    pub input: Option<usize>,
    /// Which input file the tensor came from (the output shard it goes to).
    pub file: usize,
    pub action: Action,
    /// Why a 2-D float weight stays unquantized (`None` for tensors that were never candidates).
    pub note: Option<String>,
    pub bytes_in: u64,
    pub outputs: Vec<PlannedTensor>,
}

impl PlanEntry {
    pub fn bytes_out(&self) -> u64 {
        self.outputs.iter().map(|t| t.nbytes).sum()
    }
}

/// The whole plan, in output order.
#[derive(Clone, Debug)]
pub struct QuantizePlan {
    pub fmt: &'static FmtSpec,
    pub layout: Layout,
    pub allow_nonfinite: bool,
    /// Settings of the integer weight-only names (`None` for the float names).
    pub int: Option<IntSettings>,
    pub entries: Vec<PlanEntry>,
}

impl QuantizePlan {
    /// Every output tensor in order.
    pub fn planned_tensors(&self) -> Vec<PlannedTensor> {
        self.entries.iter().flat_map(|e| e.outputs.iter().cloned()).collect()
    }

    /// The layer names that were quantized, in order.
    pub fn quantized_layers(&self) -> Vec<&str> {
        self.entries
            .iter()
            .filter_map(|e| match &e.action {
                Action::Quantize(l) => Some(l.prefix.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Layers with a 2-D `.weight` that stay unquantized: the `ignore` / `exclude_modules` list
    /// the loaders need so they do not expect quantized parts there.
    pub fn unquantized_layers(&self) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|e| e.action == Action::Copy && e.note.is_some())
            .filter_map(|e| e.name.strip_suffix(".weight"))
            .collect()
    }
}

/// Embedding layers by the names the common architectures give them.
const EMBEDDING: &str = r"(^|\.)(embed_tokens|embed_positions|tok_embeddings|token_embd|wte|wpe|word_embeddings|position_embeddings|token_type_embeddings|embeddings|embedding|shared)\.weight$";
const LM_HEAD: &str = r"(^|\.)lm_head\.weight$";
const NORM: &str = r"(^|\.)[^.]*(norm|ln_)[^.]*\.weight$";

fn compute_of(d: DType) -> Option<ComputeDType> {
    match d {
        DType::F32 => Some(ComputeDType::F32),
        DType::F16 => Some(ComputeDType::F16),
        DType::BF16 => Some(ComputeDType::BF16),
        _ => None,
    }
}

/// Decides, for every tensor of `source`, what happens to it.
pub fn plan(source: &dyn TensorSource, req: &Request) -> Result<QuantizePlan, ExportError> {
    let conventional = [("embedding", EMBEDDING), ("lm_head", LM_HEAD), ("norm", NORM)]
        .map(|(what, re)| (what, Regex::new(re).expect("built-in pattern")));
    let mut entries = Vec::with_capacity(source.tensors().len());
    let mut any_quantized = false;
    let mut diffusion_prefix = true;
    for (i, t) in source.tensors().iter().enumerate() {
        let (action, note) = decide(t, req, &conventional);
        let outputs = match &action {
            Action::Quantize(l) => {
                any_quantized = true;
                diffusion_prefix &= l.prefix.starts_with("model.diffusion_model.");
                match &req.int {
                    Some(s) => {
                        if let Some(rule) = int_layer::shape_rule(req.layout, s, l.rows, l.cols) {
                            return Err(ExportError::Shape {
                                tensor: t.name.clone(),
                                shape: [l.rows, l.cols],
                                layout: req.layout,
                                rule,
                            });
                        }
                        int_layer::outputs(req.layout, s, l)
                    }
                    None => layer_outputs(req.fmt, req.layout, l),
                }
            }
            _ => vec![copy_of(t)?],
        };
        entries.push(PlanEntry {
            name: t.name.clone(),
            input: Some(i),
            file: t.file,
            action,
            note,
            bytes_in: t.nbytes,
            outputs,
        });
    }
    if req.layout == Layout::ComfyLegacy && any_quantized {
        if let Scheme::Fp8Scaled(format) = req.fmt.scheme {
            entries.push(legacy_marker(
                format,
                req.fmt.full_precision_mm,
                diffusion_prefix,
                entries.last().map_or(0, |e| e.file),
            ));
        }
    }
    Ok(QuantizePlan {
        fmt: req.fmt,
        layout: req.layout,
        allow_nonfinite: req.allow_nonfinite,
        int: req.int,
        entries,
    })
}

fn copy_of(t: &TensorInfo) -> Result<PlannedTensor, ExportError> {
    match t.dtype {
        TensorDType::St(_) => Ok(PlannedTensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            nbytes: t.nbytes,
        }),
        TensorDType::Ggml(g) => Err(ExportError::Format(qtool_formats::Error::invalid(
            "<input>",
            format!("tensor '{}' is GGML {g}, which safetensors cannot hold", t.name),
        ))),
    }
}

fn decide(
    t: &TensorInfo,
    req: &Request,
    conventional: &[(&'static str, Regex); 3],
) -> (Action, Option<String>) {
    let keep = |why: String| (Action::Copy, Some(why));
    if req.fmt.scheme == Scheme::Passthrough {
        return (Action::Copy, None);
    }
    let Some(prefix) = t.name.strip_suffix(".weight") else { return (Action::Copy, None) };
    if t.shape.len() != 2 {
        return (Action::Copy, None);
    }
    let TensorDType::St(dtype) = t.dtype else { return (Action::Copy, None) };
    let Some(compute) = compute_of(dtype) else {
        return match dtype {
            DType::F64 => keep("F64 weights are not quantized (F16/BF16/F32 only)".into()),
            _ => (Action::Copy, None),
        };
    };
    if let Some(re) = req.ignore.iter().find(|re| re.is_match(&t.name)) {
        return keep(format!("matches --ignore {:?}", re.as_str()));
    }
    let included = req.include.iter().any(|re| re.is_match(&t.name));
    if !included {
        if let Some((what, _)) = conventional.iter().find(|(_, re)| re.is_match(&t.name)) {
            return keep(format!("{what} (kept by convention; --include to quantize)"));
        }
    }
    let (rows, cols) = (t.shape[0] as usize, t.shape[1] as usize);
    if rows == 0 || cols == 0 {
        return keep("empty tensor".into());
    }
    if let Some(why) = shape_refusal(req.fmt.scheme, req.layout, cols) {
        return keep(why);
    }
    (Action::Quantize(LayerPlan { prefix: prefix.to_string(), rows, cols, dtype, compute }), None)
}

/// Shapes the scheme cannot take in this layout (reported, and the tensor left as it is).
fn shape_refusal(scheme: Scheme, layout: Layout, cols: usize) -> Option<String> {
    let (block, what) = match scheme {
        Scheme::Nvfp4 | Scheme::Nvfp4Experimental => (nvfp4::BLOCK, "NVFP4"),
        Scheme::Mxfp4 => (mx::BLOCK, "MXFP4"),
        Scheme::Mxfp8 => (mx::BLOCK, "MXFP8"),
        _ => return None,
    };
    (layout != Layout::Comfy && cols % block != 0).then(|| {
        format!("in_features {cols} is not a multiple of {block} ({layout} {what} does not pad)")
    })
}

fn st(name: String, dtype: DType, shape: Vec<usize>) -> PlannedTensor {
    let numel: u64 = shape.iter().map(|&d| d as u64).product();
    let nbytes = match dtype {
        DType::F32 => numel * 4,
        DType::F16 | DType::BF16 => numel * 2,
        _ => numel,
    };
    PlannedTensor {
        name,
        dtype: TensorDType::St(dtype),
        shape: shape.into_iter().map(|d| d as u64).collect(),
        nbytes,
    }
}

fn comfy_format_name(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::Fp8Cast(Fp8Format::E4M3Fn) | Scheme::Fp8Scaled(Fp8Format::E4M3Fn) => {
            "float8_e4m3fn"
        }
        Scheme::Fp8Cast(Fp8Format::E5M2) | Scheme::Fp8Scaled(Fp8Format::E5M2) => "float8_e5m2",
        Scheme::Fp8Channel => "float8_e4m3fn",
        Scheme::Nvfp4 | Scheme::Nvfp4Experimental | Scheme::Passthrough => "nvfp4",
        Scheme::Mxfp4 => "mxfp4",
        Scheme::Mxfp8 => "mxfp8",
        Scheme::IntWeight { .. } => "int",
    }
}

/// The `comfy_quant` bytes of a layer quantized under `fmt`.
pub fn comfy_quant_bytes(fmt: &FmtSpec) -> Vec<u8> {
    comfy_quant_json(comfy_format_name(fmt.scheme), fmt.full_precision_mm).into_bytes()
}

/// The output tensors of one quantized layer, in the order [`super::layer::encode`] returns
/// their bytes.
pub fn layer_outputs(fmt: &FmtSpec, layout: Layout, l: &LayerPlan) -> Vec<PlannedTensor> {
    let p = &l.prefix;
    let (n, k) = (l.rows, l.cols);
    let name = |suffix: &str| format!("{p}.{suffix}");
    let comfy_quant = || st(name("comfy_quant"), DType::U8, vec![comfy_quant_bytes(fmt).len()]);
    if let Some(s) = IntSettings::resolve(fmt.scheme, layout, &IntOptions::default()).ok().flatten()
    {
        return int_layer::outputs(layout, &s, l);
    }
    match (fmt.scheme, layout) {
        (Scheme::Fp8Cast(f), Layout::ComfyLegacy) => {
            vec![st(name("weight"), f.dtype(), vec![n, k])]
        }
        (Scheme::Fp8Scaled(f), Layout::ComfyLegacy) => vec![
            st(name("weight"), f.dtype(), vec![n, k]),
            st(name("scale_weight"), DType::F32, vec![]),
        ],
        (Scheme::Fp8Cast(f) | Scheme::Fp8Scaled(f), Layout::CompressedTensors) => vec![
            st(name("weight"), f.dtype(), vec![n, k]),
            st(name("weight_scale"), l.dtype, vec![1]),
        ],
        (Scheme::Fp8Channel, _) => vec![
            st(name("weight"), DType::F8E4M3, vec![n, k]),
            st(name("weight_scale"), l.dtype, vec![n, 1]),
        ],
        (Scheme::Fp8Cast(f) | Scheme::Fp8Scaled(f), _) => vec![
            st(name("weight"), f.dtype(), vec![n, k]),
            st(name("weight_scale"), DType::F32, vec![]),
            comfy_quant(),
        ],
        (Scheme::Nvfp4 | Scheme::Nvfp4Experimental, Layout::Comfy) => {
            let (np, kp) = (n.div_ceil(16) * 16, k.div_ceil(16) * 16);
            let [sr, sc] = swizzle::blocked_shape(np, kp / nvfp4::BLOCK);
            vec![
                st(name("weight"), DType::U8, vec![np, kp / 2]),
                st(name("weight_scale"), DType::F8E4M3, vec![sr, sc]),
                st(name("weight_scale_2"), DType::F32, vec![]),
                comfy_quant(),
            ]
        }
        (Scheme::Mxfp4, _) => vec![
            st(name("weight_packed"), DType::U8, vec![n, k / 2]),
            st(name("weight_scale"), DType::U8, vec![n, k / mx::BLOCK]),
        ],
        (Scheme::Mxfp8, Layout::Comfy) => {
            let (np, kp) = (n.div_ceil(mx::BLOCK) * mx::BLOCK, k.div_ceil(mx::BLOCK) * mx::BLOCK);
            let [sr, sc] = swizzle::blocked_shape(np, kp / mx::BLOCK);
            vec![
                st(name("weight"), DType::F8E4M3, vec![np, kp]),
                st(name("weight_scale"), DType::U8, vec![sr, sc]),
                comfy_quant(),
            ]
        }
        (Scheme::Mxfp8, _) => vec![
            st(name("weight"), DType::F8E4M3, vec![n, k]),
            st(name("weight_scale"), DType::U8, vec![n, k / mx::BLOCK]),
        ],
        (_, Layout::CompressedTensors) => vec![
            st(name("weight_packed"), DType::U8, vec![n, k / 2]),
            st(name("weight_scale"), DType::F8E4M3, vec![n, k / nvfp4::BLOCK]),
            st(name("weight_global_scale"), DType::F32, vec![1]),
        ],
        _ => vec![
            st(name("weight"), DType::U8, vec![n, k / 2]),
            st(name("weight_scale"), DType::F8E4M3, vec![n, k / nvfp4::BLOCK]),
            st(name("weight_scale_2"), DType::F32, vec![]),
        ],
    }
}

/// ComfyUI's legacy marker: an FP8 tensor whose dtype names the weight format; two elements ask
/// for a full-precision matmul, none for fp8 matmul (formats.md §1.1). It takes the model prefix
/// of a full diffusion checkpoint, where ComfyUI looks for it.
fn legacy_marker(format: Fp8Format, fpmm: bool, diffusion: bool, file: usize) -> PlanEntry {
    let name = if diffusion { "model.diffusion_model.scaled_fp8" } else { "scaled_fp8" };
    let n = if fpmm { 2 } else { 0 };
    PlanEntry {
        name: name.to_string(),
        input: None,
        file,
        action: Action::Marker(vec![0u8; n]),
        note: None,
        bytes_in: 0,
        outputs: vec![st(name.to_string(), format.dtype(), vec![n])],
    }
}
