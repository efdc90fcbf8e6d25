//! llama.cpp's per-tensor quantization rules (`llama_tensor_get_type` and its helpers in LC
//! `src/llama-quant.cpp`@007dbbf3), re-derived as data in, decisions out: a tensor list and a
//! few hyperparameters give every tensor's target type together with the rule that chose it.
//!
//! Facts the rules depend on, and why the code is shaped the way it is:
//! * **Order.** llama.cpp walks the model's weights in `weights_map` order — sorted by the layer
//!   number `sscanf("blk.%d.")` finds (−1 when none, so global tensors come first), then by
//!   name bytewise (`weight_name_comparer`, LC `src/llama-model-loader.h`) — and writes the
//!   output in that same order. The `attn_v` and `ffn_down` counters count in that order, so the
//!   plan sorts first and decides second.
//! * **Rules are name-based and the same for every architecture**, apart from Falcon's own
//!   branches and one model-size class (a 70B model bumps `attn_v` from Q3_K/Q4_K to Q5_K) that
//!   llama.cpp derives per architecture while loading hyperparameters. qtool knows that class for
//!   `llama`, `qwen2`, `deci`, `jais2` and `falcon`; for any other architecture a recipe that
//!   would consult it is refused with an error naming the tensor, and every other decision
//!   follows llama.cpp's generic rules as it does.
//! * **Tied embeddings**: with no `output.weight` tensor, `token_embd.weight` is quantized as the
//!   output tensor would be (Q6_K, or Q8_0 when `ne[0]` is not a multiple of the default type's
//!   block).
//! * **Fallbacks** when `ne[0]` is not a whole number of blocks (`tensor_type_fallback`):
//!   Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0, Q2_K/Q3_K→Q4_0, then F16 when even that does not divide.
//!   Types with no smaller block to fall back to (Q8_0, Q4_0, ..., MXFP4) go straight to F16.
//!   (Source at 007dbbf3 throws for those instead; the llama.cpp that llama-cpp-python 0.3.36
//!   builds, which the cross-check runs, falls back to F16, and qtool follows the build.) Explicit
//!   `--token-embedding-type`/`--output-tensor-type` choices get no fallback (llama.cpp asserts
//!   there); qtool reports the incompatible shape as an error instead.
//! * **Dimensions**: ggml counts dimensions up to the last one larger than 1 (`ggml_n_dims`), so
//!   a `[576, 1]` tensor is 1-D, is never quantized, and is written back with one dimension.

use std::cmp::Ordering;
use std::fmt;

use qtool_formats::gguf::Value;
use qtool_formats::GgmlType;
use regex::Regex;

use super::ftype::FileType;
use crate::gguf::can_quantize;

/// One tensor as the rules see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorDesc {
    pub name: String,
    /// GGUF order, `ne[0]` first.
    pub ne: Vec<u64>,
    pub ty: GgmlType,
}

/// The hyperparameters the rules read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelParams {
    /// `general.architecture`.
    pub arch: String,
    /// `{arch}.block_count` (llama.cpp's `n_layer_all`): the `ffn_down` layer count.
    pub n_layer: u32,
    /// `{arch}.expert_count`, 0 when absent.
    pub n_expert: u32,
    /// `{arch}.attention.head_count` (first layer's when per-layer), 0 when absent.
    pub n_head: u32,
    /// `{arch}.attention.head_count_kv`, `n_head` when absent.
    pub n_head_kv: u32,
}

/// A `--tensor-type REGEX=TYPE` override: the first pattern that matches anywhere in a tensor's
/// name (`std::regex_search`) sets its type and skips the recipe's rules for it. Patterns use
/// Rust `regex` syntax, which agrees with ECMAScript for the usual name patterns.
#[derive(Clone, Debug)]
pub struct TensorTypeOverride {
    pub pattern: Regex,
    pub ty: GgmlType,
}

impl TensorTypeOverride {
    /// Parses `REGEX=TYPE` (split at the last `=`; type names are case-insensitive).
    pub fn parse(spec: &str) -> Result<Self, RecipeError> {
        let bad = |why: String| RecipeError::BadOverride { spec: spec.to_owned(), why };
        let (pat, ty) = spec.rsplit_once('=').ok_or_else(|| bad("expected REGEX=TYPE".into()))?;
        if pat.is_empty() {
            return Err(bad("the pattern is empty".into()));
        }
        let ty = parse_target_type(ty).map_err(bad)?;
        let pattern = Regex::new(pat).map_err(|e| bad(e.to_string()))?;
        Ok(TensorTypeOverride { pattern, ty })
    }
}

/// Parses a GGML type name that qtool can quantize to (for overrides).
pub fn parse_target_type(name: &str) -> Result<GgmlType, String> {
    let ty = GgmlType::from_name(name).ok_or_else(|| format!("unknown GGML type {name:?}"))?;
    if !can_quantize(ty) {
        return Err(format!("qtool cannot quantize to {ty}"));
    }
    Ok(ty)
}

/// The knobs of `llama-quantize` that change the plan.
#[derive(Clone, Debug, Default)]
pub struct RecipeOptions {
    /// `--tensor-type`, first match wins.
    pub tensor_types: Vec<TensorTypeOverride>,
    /// `--output-tensor-type` (also the tied token embedding's type, as in llama.cpp).
    pub output_tensor_type: Option<GgmlType>,
    /// `--token-embedding-type`.
    pub token_embedding_type: Option<GgmlType>,
    /// `--pure`: every quantizable tensor gets the default type (fallbacks still apply).
    pub pure: bool,
    /// `--leave-output-tensor`: `output.weight` keeps its type.
    pub leave_output_tensor: bool,
}

/// Why a plan could not be made. Each names the tensor or key concerned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecipeError {
    #[error("metadata key '{key}' is missing or not {expected}; the recipe rules need it")]
    MissingKey { key: String, expected: &'static str },
    #[error("bad --tensor-type {spec:?}: {why}")]
    BadOverride { spec: String, why: String },
    #[error("tensor '{tensor}': the requested type {ty} needs ne[0] to be a multiple of {block}, but it is {ne0}")]
    IncompatibleShape { tensor: String, ty: GgmlType, ne0: u64, block: u64 },
    #[error("tensor '{tensor}': qtool cannot quantize to {ty}")]
    CannotEncode { tensor: String, ty: GgmlType },
    #[error("tensor '{tensor}': cannot determine its layer from the name (expected 'blk.N.'; needed because the model has {n_expert} experts)")]
    NoLayer { tensor: String, n_expert: u32 },
    #[error("tensor '{tensor}': layer {layer} is outside [0, {n_layer})")]
    BadLayer { tensor: String, layer: i32, n_layer: u32 },
    #[error("recipe {ftype} on architecture '{arch}': tensor '{tensor}' depends on llama.cpp's model-size class (70B models get Q5_K for attn_v), which qtool knows only for llama, qwen2, deci, jais2 and falcon; use --pure or a --tensor-type override for attn_v")]
    UnknownSizeClass { ftype: FileType, arch: String, tensor: String },
}

impl ModelParams {
    /// Reads the hyperparameters from GGUF metadata.
    pub fn from_kvs(kvs: &[(String, Value)]) -> Result<Self, RecipeError> {
        let get = |key: &str| kvs.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        let arch = get("general.architecture").and_then(Value::as_str).ok_or_else(|| {
            RecipeError::MissingKey { key: "general.architecture".into(), expected: "a string" }
        })?;
        let uint = |suffix: &str| -> Result<Option<u32>, RecipeError> {
            let key = format!("{arch}.{suffix}");
            let value = match get(&key) {
                None => return Ok(None),
                // Per-layer arrays: the rules use the first layer's value (llama.cpp's
                // `n_gqa()` and `n_head()` default to layer 0).
                Some(Value::Array(a)) => a.get(0),
                Some(v) => Some(v.clone()),
            };
            value
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok())
                .map(Some)
                .ok_or(RecipeError::MissingKey { key, expected: "an unsigned 32-bit integer" })
        };
        let n_layer = uint("block_count")?.ok_or_else(|| RecipeError::MissingKey {
            key: format!("{arch}.block_count"),
            expected: "an unsigned 32-bit integer",
        })?;
        let n_head = uint("attention.head_count")?.unwrap_or(0);
        Ok(ModelParams {
            arch: arch.to_owned(),
            n_layer,
            n_expert: uint("expert_count")?.unwrap_or(0),
            n_head,
            n_head_kv: uint("attention.head_count_kv")?.unwrap_or(n_head),
        })
    }

    fn is_falcon(&self) -> bool {
        self.arch == "falcon"
    }

    /// `hparams.n_gqa()` of layer 0.
    fn n_gqa(&self) -> u32 {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }

    /// Whether llama.cpp classifies the model as `LLM_TYPE_70B`; `None` for architectures whose
    /// classification qtool does not know.
    fn is_70b(&self) -> Option<bool> {
        match self.arch.as_str() {
            "llama" => {
                Some(self.n_expert != 8 && self.n_layer == 80 && self.n_head != self.n_head_kv)
            }
            "qwen2" | "deci" => Some(self.n_layer == 80),
            "jais2" => Some(self.n_layer == 68),
            "falcon" => Some(false),
            _ => None,
        }
    }
}

/// llama.cpp's broad tensor categories (`tensor_get_category`): substring tests in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    Output,
    TokenEmbd,
    AttnQkv,
    AttnKvB,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

impl Category {
    pub fn of(name: &str) -> Category {
        if name == "output.weight" {
            return Category::Output;
        }
        if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
            return Category::TokenEmbd;
        }
        const BY_SUBSTRING: [(&str, Category); 9] = [
            ("attn_qkv.weight", Category::AttnQkv),
            ("attn_kv_b.weight", Category::AttnKvB),
            ("attn_v.weight", Category::AttnV),
            ("attn_k.weight", Category::AttnK),
            ("attn_q.weight", Category::AttnQ),
            ("attn_output.weight", Category::AttnOutput),
            ("ffn_up", Category::FfnUp),
            ("ffn_gate", Category::FfnGate),
            ("ffn_down", Category::FfnDown),
        ];
        BY_SUBSTRING.iter().find(|(s, _)| name.contains(s)).map_or(Category::Other, |(_, c)| *c)
    }

    /// The value-projection-like tensors that are most sensitive to quantization.
    fn is_attn_v(self) -> bool {
        matches!(self, Category::AttnV | Category::AttnQkv | Category::AttnKvB)
    }
}

/// `use_more_bits(i, n)`: the first and last eighth of the layers and every third one between.
pub fn use_more_bits(i: i32, n: i32) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The layer `sscanf(name, "blk.%d.")` reads, or `None` when it reads none.
///
/// Like `%d` it skips leading white space and takes an optional sign; an out-of-range number is
/// wrapped to 32 bits as glibc's conversion through `long` does.
pub fn layer_of(name: &str) -> Option<i32> {
    let rest = name.strip_prefix("blk.")?;
    let rest = rest.trim_start_matches([' ', '\t', '\n', '\u{b}', '\u{c}', '\r']);
    let (neg, digits) = match rest.as_bytes().first() {
        Some(b'-') => (true, &rest[1..]),
        Some(b'+') => (false, &rest[1..]),
        _ => (false, rest),
    };
    let len = digits.bytes().take_while(u8::is_ascii_digit).count();
    if len == 0 {
        return None;
    }
    let mut v: i64 = 0;
    for b in digits[..len].bytes() {
        v = v.saturating_mul(10).saturating_add(i64::from(b - b'0'));
    }
    Some((if neg { v.saturating_neg() } else { v }) as i32)
}

/// `weight_name_comparer`: by layer (−1 for non-block tensors), then by name bytewise.
pub fn weight_order(a: &str, b: &str) -> Ordering {
    let la = layer_of(a).unwrap_or(-1);
    let lb = layer_of(b).unwrap_or(-1);
    la.cmp(&lb).then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// `ggml_n_dims`: dimensions up to the last one larger than 1 (at least 1).
pub fn ggml_n_dims(ne: &[u64]) -> usize {
    ne.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1)
}

/// Why a tensor is never quantized (`tensor_allows_quantization`), or `None` when it may be.
pub fn quantization_exclusion(
    name: &str,
    ne: &[u64],
    leave_output_tensor: bool,
) -> Option<&'static str> {
    if ggml_n_dims(ne) < 2 {
        return Some("1-D");
    }
    if !name.ends_with("weight") {
        return Some("not a weight");
    }
    if name.contains("_norm.weight") {
        return Some("norm");
    }
    if leave_output_tensor && name == "output.weight" {
        return Some("output tensor left as is");
    }
    if name == "position_embd.weight" || name == "token_types.weight" {
        return Some("position/token-type embedding");
    }
    const EXCLUDED: &[(&str, &str)] = &[
        ("ffn_gate_inp.weight", "expert router"),
        ("ffn_gate_tid2eid.weight", "expert routing table"),
        ("altup", "small altup tensor"),
        ("laurel", "small laurel tensor"),
        ("per_layer_model_proj", "per-layer projection"),
        ("ssm_conv1d", "conv1d"),
        ("shortconv.conv.weight", "conv1d"),
        ("indexer.k_proj.weight", "indexer projection"),
        ("indexer.q_proj.weight", "indexer projection"),
        ("time_mix_first.weight", "small RWKV tensor"),
        ("time_mix_w0.weight", "small RWKV tensor"),
        ("time_mix_w1.weight", "small RWKV tensor"),
        ("time_mix_w2.weight", "small RWKV tensor"),
        ("time_mix_v0.weight", "small RWKV tensor"),
        ("time_mix_v1.weight", "small RWKV tensor"),
        ("time_mix_v2.weight", "small RWKV tensor"),
        ("time_mix_a0.weight", "small RWKV tensor"),
        ("time_mix_a1.weight", "small RWKV tensor"),
        ("time_mix_a2.weight", "small RWKV tensor"),
        ("time_mix_g1.weight", "small RWKV tensor"),
        ("time_mix_g2.weight", "small RWKV tensor"),
        ("time_mix_decay_w1.weight", "small RWKV tensor"),
        ("time_mix_decay_w2.weight", "small RWKV tensor"),
        ("time_mix_lerp_fused.weight", "small RWKV tensor"),
        ("attn_rel_b.weight", "relative position bias"),
        (".position_embd", "multimodal position embedding"),
        ("sam.pos_embd", "multimodal tensor"),
        ("sam.neck.", "multimodal tensor"),
        ("sam.net_", "multimodal tensor"),
        (".rel_pos", "multimodal tensor"),
        (".patch_embd", "multimodal tensor"),
        (".patch_merger", "multimodal tensor"),
        ("a.rvq.codebook", "audio codebook"),
        ("mm.a.code_embd", "audio codebook"),
    ];
    EXCLUDED.iter().find(|(s, _)| name.contains(s)).map(|(_, why)| *why)
}

/// How a tensor's type was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Never quantized; the reason.
    Kept(&'static str),
    TokenEmbeddingOverride,
    OutputOverride,
    /// A `--tensor-type` pattern matched.
    Manual(String),
    /// `--pure`.
    Pure,
    /// The recipe's default type for an unquantized file type (F16/BF16/F32): rules not consulted.
    Plain,
    /// The recipe's rules; the text says which.
    Rule(String),
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Choice::Kept(why) => write!(f, "kept ({why})"),
            Choice::TokenEmbeddingOverride => f.write_str("--token-embedding-type"),
            Choice::OutputOverride => f.write_str("--output-tensor-type"),
            Choice::Manual(p) => write!(f, "--tensor-type {p}"),
            Choice::Pure => f.write_str("--pure"),
            Choice::Plain => f.write_str("file type default"),
            Choice::Rule(r) => f.write_str(r),
        }
    }
}

/// One tensor's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorPlan {
    /// Position in the input's tensor list.
    pub input_index: usize,
    pub name: String,
    /// Shape as it will be written (`ggml_n_dims` dimensions).
    pub ne: Vec<u64>,
    pub from: GgmlType,
    pub to: GgmlType,
    pub choice: Choice,
    /// The type the rules wanted when a shape fallback replaced it.
    pub fallback_from: Option<GgmlType>,
}

impl TensorPlan {
    pub fn numel(&self) -> u64 {
        self.ne.iter().product()
    }

    pub fn bytes_in(&self) -> u64 {
        self.from.byte_len(self.ne[0], self.numel()).unwrap_or(0)
    }

    pub fn bytes_out(&self) -> u64 {
        self.to.byte_len(self.ne[0], self.numel()).unwrap_or(0)
    }
}

/// Every tensor's decision, in the order llama.cpp writes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipePlan {
    pub ftype: FileType,
    pub tensors: Vec<TensorPlan>,
    /// Tensors whose type came from a shape fallback.
    pub n_fallback: usize,
}

/// Counters llama.cpp keeps while walking the tensors (`quantize_state_impl`).
struct State<'a> {
    ftype: FileType,
    model: &'a ModelParams,
    opts: &'a RecipeOptions,
    tied_embeddings: bool,
    n_attention_wv: i32,
    i_attention_wv: i32,
    n_layer: i32,
    i_ffn_down: i32,
    i_ffn_gate: i32,
    i_ffn_up: i32,
}

impl State<'_> {
    /// `layer_info`: the counter, or with experts the layer parsed from the name.
    fn layer(&self, counter: i32, name: &str) -> Result<(i32, i32), RecipeError> {
        if self.model.n_expert > 1 {
            let layer = layer_of(name).ok_or_else(|| RecipeError::NoLayer {
                tensor: name.to_owned(),
                n_expert: self.model.n_expert,
            })?;
            if layer < 0 || layer >= self.n_layer {
                return Err(RecipeError::BadLayer {
                    tensor: name.to_owned(),
                    layer,
                    n_layer: self.model.n_layer,
                });
            }
            return Ok((layer, self.n_layer));
        }
        Ok((counter, self.n_layer))
    }

    /// The recipe's rules (`llama_tensor_get_type_impl`) for the file types qtool supports.
    fn rules(
        &mut self,
        default: GgmlType,
        t: &TensorDesc,
        cat: Category,
    ) -> Result<(GgmlType, String), RecipeError> {
        use FileType as F;
        use GgmlType as G;
        let ft = self.ftype;
        let falcon = self.model.is_falcon();
        let n_expert = self.model.n_expert;
        let mut ty = default;
        let mut why = String::from("default");

        if cat == Category::Output || (self.tied_embeddings && cat == Category::TokenEmbd) {
            let what = if cat == Category::Output { "output" } else { "tied token_embd" };
            if let Some(o) = self.opts.output_tensor_type {
                return Ok((o, format!("{what}: --output-tensor-type")));
            }
            if falcon {
                ty = G::Q8_0;
                why = format!("{what}: Q8_0 (Falcon)");
            } else if t.ne[0] % default.block_size() != 0 {
                ty = G::Q8_0;
                why = format!(
                    "{what}: Q8_0 (ne[0] {} not a multiple of {})",
                    t.ne[0],
                    default.block_size()
                );
            } else if ty != G::Q8_0 {
                ty = G::Q6_K;
                why = format!("{what}: Q6_K");
            } else {
                why = format!("{what}: stays Q8_0");
            }
        } else if cat == Category::TokenEmbd {
            why = "token_embd (untied): default".into();
        } else if cat.is_attn_v() {
            let i = self.i_attention_wv;
            let n = self.n_attention_wv;
            match ft {
                F::Q2_K => {
                    ty = if self.model.n_gqa() >= 4 { G::Q4_K } else { G::Q3_K };
                    why = format!("attn_v: Q2_K recipe, n_gqa {}", self.model.n_gqa());
                }
                F::Q3_K_M => {
                    ty = if i < 2 { G::Q5_K } else { G::Q4_K };
                    why = format!("attn_v #{i}: Q3_K_M (first two Q5_K)");
                }
                F::Q3_K_L => {
                    ty = G::Q5_K;
                    why = "attn_v: Q3_K_L".into();
                }
                F::Q4_K_M | F::Q5_K_M if use_more_bits(i, n) => {
                    ty = G::Q6_K;
                    why = format!("attn_v #{i} of {n}: use_more_bits");
                }
                F::Q4_K_M | F::Q5_K_M => why = format!("attn_v #{i} of {n}: default"),
                F::Q4_K_S if i < 4 => {
                    ty = G::Q5_K;
                    why = format!("attn_v #{i}: Q4_K_S first four");
                }
                _ => why = format!("attn_v #{i}: default"),
            }
            if n_expert != 8 && matches!(ty, G::Q3_K | G::Q4_K) {
                match self.model.is_70b() {
                    Some(true) => {
                        ty = G::Q5_K;
                        why.push_str(", 70B: Q5_K");
                    }
                    Some(false) => {}
                    None => {
                        return Err(RecipeError::UnknownSizeClass {
                            ftype: ft,
                            arch: self.model.arch.clone(),
                            tensor: t.name.clone(),
                        })
                    }
                }
            }
            if n_expert == 8 {
                ty = G::Q8_0;
                why.push_str(", 8 experts: Q8_0");
            }
            self.i_attention_wv += 1;
        } else if cat == Category::AttnK {
            if n_expert == 8 {
                ty = G::Q8_0;
                why = "attn_k, 8 experts: Q8_0".into();
            }
        } else if cat == Category::FfnDown {
            let (i, n) = self.layer(self.i_ffn_down, &t.name)?;
            let umb = use_more_bits(i, n);
            why = format!("ffn_down layer {i} of {n}: default");
            match ft {
                F::Q2_K => {
                    ty = G::Q3_K;
                    why = "ffn_down: Q2_K recipe: Q3_K".into();
                }
                F::Q3_K_M => {
                    ty = if i < n / 16 {
                        G::Q5_K
                    } else if !falcon || umb {
                        G::Q4_K
                    } else {
                        G::Q3_K
                    };
                    why = format!("ffn_down layer {i} of {n}: Q3_K_M");
                }
                F::Q3_K_L => {
                    ty = if falcon { G::Q4_K } else { G::Q5_K };
                    why = "ffn_down: Q3_K_L".into();
                }
                F::Q4_K_M if falcon => {
                    ty = if i < n / 16 {
                        G::Q6_K
                    } else if umb {
                        G::Q5_K
                    } else {
                        G::Q4_K
                    };
                    why = format!("ffn_down layer {i} of {n}: Q4_K_M Falcon");
                }
                F::Q4_K_M | F::Q5_K_M if umb => {
                    ty = G::Q6_K;
                    why = format!("ffn_down layer {i} of {n}: use_more_bits");
                }
                F::Q4_K_S if !falcon && i < n / 8 => {
                    ty = G::Q5_K;
                    why = format!("ffn_down layer {i} of {n}: Q4_K_S first eighth");
                }
                _ => {}
            }
            self.i_ffn_down += 1;
        } else if cat == Category::AttnOutput {
            if !falcon {
                if n_expert == 8 {
                    if matches!(ft, F::Q2_K | F::Q3_K_S | F::Q3_K_M | F::Q4_K_S | F::Q4_K_M) {
                        ty = G::Q5_K;
                        why = "attn_output, 8 experts: Q5_K".into();
                    }
                } else {
                    match ft {
                        F::Q2_K => ty = G::Q3_K,
                        F::Q3_K_M => ty = G::Q4_K,
                        F::Q3_K_L => ty = G::Q5_K,
                        _ => {}
                    }
                    if ty != default {
                        why = format!("attn_output: {ft} recipe");
                    }
                }
            } else if ft == F::Q3_K_L {
                ty = G::Q4_K;
                why = "attn_output: Q3_K_L Falcon".into();
            }
        } else if cat == Category::FfnGate {
            // No rule for the supported recipes, but llama.cpp still validates the layer and
            // advances its counter.
            self.layer(self.i_ffn_gate, &t.name)?;
            self.i_ffn_gate += 1;
        } else if cat == Category::FfnUp {
            self.layer(self.i_ffn_up, &t.name)?;
            self.i_ffn_up += 1;
        }
        // (attn_qkv's own branch in llama.cpp is unreachable: attn_qkv is attn_v-like.)
        Ok((ty, why))
    }
}

/// `tensor_type_fallback`: a type whose block divides `ne0`, F16 as the last resort.
fn fallback(ty: GgmlType, ne0: u64) -> GgmlType {
    use GgmlType as G;
    if ne0 % ty.block_size() == 0 {
        return ty;
    }
    let next = match ty {
        G::IQ1_S
        | G::IQ1_M
        | G::IQ2_XXS
        | G::IQ2_XS
        | G::IQ2_S
        | G::IQ3_XXS
        | G::IQ3_S
        | G::IQ4_XS => G::IQ4_NL,
        G::Q2_0 | G::Q2_K | G::Q3_K | G::TQ1_0 | G::TQ2_0 => G::Q4_0,
        G::Q4_K => G::Q5_0,
        G::Q5_K => G::Q5_1,
        G::Q6_K => G::Q8_0,
        _ => G::F16,
    };
    if ne0 % next.block_size() == 0 {
        next
    } else {
        G::F16
    }
}

/// Decides every tensor's type as `llama_model_quantize` does, in its output order.
pub fn plan(
    ftype: FileType,
    model: &ModelParams,
    tensors: &[TensorDesc],
    opts: &RecipeOptions,
) -> Result<RecipePlan, RecipeError> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| weight_order(&tensors[a].name, &tensors[b].name));

    let cats: Vec<Category> = tensors.iter().map(|t| Category::of(&t.name)).collect();
    let mut st = State {
        ftype,
        model,
        opts,
        tied_embeddings: !cats.contains(&Category::Output),
        n_attention_wv: cats.iter().filter(|c| c.is_attn_v()).count() as i32,
        i_attention_wv: 0,
        // llama.cpp keeps the layer count in an `int`.
        n_layer: model.n_layer.min(i32::MAX as u32) as i32,
        i_ffn_down: 0,
        i_ffn_gate: 0,
        i_ffn_up: 0,
    };
    let default = ftype.default_type();

    let mut out = Vec::with_capacity(tensors.len());
    let mut n_fallback = 0;
    for idx in order {
        let t = &tensors[idx];
        let cat = cats[idx];
        let n_dims = ggml_n_dims(&t.ne);
        let mut ne: Vec<u64> = t.ne.iter().copied().take(n_dims).collect();
        ne.resize(n_dims, 1);
        let ne0 = ne[0];

        let (to, choice, fallback_from) =
            if let Some(why) = quantization_exclusion(&t.name, &t.ne, opts.leave_output_tensor) {
                (t.ty, Choice::Kept(why), None)
            } else if let (Some(ty), Category::TokenEmbd) = (opts.token_embedding_type, cat) {
                (ty, Choice::TokenEmbeddingOverride, None)
            } else if let (Some(ty), Category::Output) = (opts.output_tensor_type, cat) {
                (ty, Choice::OutputOverride, None)
            } else if !default.is_quantized() {
                (default, Choice::Plain, None)
            } else {
                let manual = opts.tensor_types.iter().find(|o| o.pattern.is_match(&t.name));
                let (wanted, choice) = match manual {
                    Some(o) => (o.ty, Choice::Manual(o.pattern.as_str().to_owned())),
                    None if opts.pure => (default, Choice::Pure),
                    None => {
                        let (ty, why) = st.rules(default, t, cat)?;
                        (ty, Choice::Rule(why))
                    }
                };
                let ty = fallback(wanted, ne0);
                if ty != wanted {
                    n_fallback += 1;
                }
                (ty, choice, (ty != wanted).then_some(wanted))
            };

        if to != t.ty {
            if ne0 % to.block_size() != 0 {
                return Err(RecipeError::IncompatibleShape {
                    tensor: t.name.clone(),
                    ty: to,
                    ne0,
                    block: to.block_size(),
                });
            }
            if !can_quantize(to) {
                return Err(RecipeError::CannotEncode { tensor: t.name.clone(), ty: to });
            }
        }
        out.push(TensorPlan {
            input_index: idx,
            name: t.name.clone(),
            ne,
            from: t.ty,
            to,
            choice,
            fallback_from,
        });
    }
    Ok(RecipePlan { ftype, tensors: out, n_fallback })
}
