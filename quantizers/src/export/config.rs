//! The configuration each layout's loader reads besides the tensors: compressed-tensors'
//! `quantization_config` (formats.md §2.1) and ModelOpt's `hf_quant_config.json` (§5.2).
//! ComfyUI layouts carry everything in the tensors themselves.

use serde_json::{json, Value};

use super::catalog::{Layout, Scheme};
use super::plan::QuantizePlan;

/// `config.json["quantization_config"]` for a compressed-tensors output.
///
/// Only the `QuantizationArgs` keys both current and older compressed-tensors accept are written
/// (no `scale_dtype` / `zp_dtype`: older versions forbid unknown keys, §2.1). Keys are sorted, as
/// compressed-tensors' own `json.dump(sort_keys=True)` leaves them. No `version` key: qtool is
/// not compressed-tensors and the loaders do not read it.
///
/// A `_fast` FP8 name (fp8 matmul) gets dynamic per-token FP8 activations, which need no stored
/// scale (the `FP8_DYNAMIC` preset's activations); every other name is weight-only.
pub fn compressed_tensors(plan: &QuantizePlan) -> Option<Value> {
    if plan.layout != Layout::CompressedTensors {
        return None;
    }
    let args = |num_bits: u32, strategy: &str, group_size: Option<u32>, dynamic: bool| {
        json!({
            "actorder": null,
            "dynamic": dynamic,
            "group_size": group_size,
            "num_bits": num_bits,
            "strategy": strategy,
            "symmetric": true,
            "type": "float",
        })
    };
    let (format, weights, inputs) = match plan.fmt.scheme {
        Scheme::Fp8Cast(_) | Scheme::Fp8Scaled(_) => (
            "float-quantized",
            args(8, "tensor", None, false),
            if plan.fmt.full_precision_mm { Value::Null } else { args(8, "token", None, true) },
        ),
        Scheme::Fp8Channel => (
            "float-quantized",
            args(8, "channel", None, false),
            if plan.fmt.full_precision_mm { Value::Null } else { args(8, "token", None, true) },
        ),
        Scheme::Nvfp4 | Scheme::Nvfp4Experimental => {
            ("nvfp4-pack-quantized", args(4, "tensor_group", Some(16), false), Value::Null)
        }
        Scheme::Mxfp4 | Scheme::Mxfp8 => {
            let bits = if plan.fmt.scheme == Scheme::Mxfp4 { 4 } else { 8 };
            let mut w = args(bits, "group", Some(32), false);
            // compressed-tensors 0.20 picks the MX compressor and the E8M0 scale handling by
            // `scale_dtype == torch.uint8` (MXFP8QuantizationCompressor.can_compress,
            // should_generate_mx_scales), as its MXFP4A16/MXFP8A16 presets write it. Older
            // versions, which forbid the key, know no MX format anyway.
            w["scale_dtype"] = json!("torch.uint8");
            let format = if bits == 4 { "mxfp4-pack-quantized" } else { "mxfp8-quantized" };
            (format, w, Value::Null)
        }
        Scheme::IntWeight { bits } => {
            let s = plan.int?;
            let group = s.group_size.to_i64();
            let weights = json!({
                "actorder": null,
                "dynamic": false,
                "group_size": (group > 0).then_some(group),
                "num_bits": bits,
                "strategy": if group > 0 { "group" } else { "channel" },
                "symmetric": s.symmetric,
                "type": "int",
            });
            ("pack-quantized", weights, Value::Null)
        }
        Scheme::Passthrough => return None,
    };
    Some(json!({
        "config_groups": {
            "group_0": {
                "input_activations": inputs,
                "output_activations": null,
                "targets": ["Linear"],
                "weights": weights,
            }
        },
        "format": format,
        "global_compression_ratio": null,
        "ignore": plan.unquantized_layers(),
        "kv_cache_scheme": null,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
        "sparsity_config": {},
        "transform_config": {},
    }))
}

/// `config.json["quantization_config"]` for every layout that keeps one there:
/// compressed-tensors, AWQ (AutoAWQ's `to_transformers_dict`, formats.md §3.2) and GPTQ (the
/// same object as `quantize_config.json`, as transformers-saved GPTQ checkpoints carry it).
pub fn quantization_config(plan: &QuantizePlan) -> Option<Value> {
    match plan.layout {
        Layout::CompressedTensors => compressed_tensors(plan),
        Layout::Gptq => gptq(plan),
        Layout::Awq => awq(plan),
        _ => None,
    }
}

/// `quantize_config.json` of a GPTQ output (formats.md §3.1): the four keys vLLM's GPTQ loaders
/// require (`bits`, `group_size`, `desc_act`, `sym`), `quant_method`, and `checkpoint_format`
/// (`gptq` = v1 zeros stored as `zero - 1`, `gptq_v2` = true zeros). RTN has no activation
/// order, so `desc_act` is false.
pub fn gptq(plan: &QuantizePlan) -> Option<Value> {
    if plan.layout != Layout::Gptq {
        return None;
    }
    let s = plan.int?;
    Some(json!({
        "bits": s.bits.get(),
        "group_size": s.group_size.to_i64(),
        "desc_act": false,
        "sym": s.symmetric,
        "quant_method": "gptq",
        "checkpoint_format": s.gptq_checkpoint_format(),
    }))
}

/// AutoAWQ's `quantization_config` (formats.md §3.2); `modules_to_not_convert` lists the
/// linear layers left unquantized (null when none, as AutoAWQ writes it).
pub fn awq(plan: &QuantizePlan) -> Option<Value> {
    if plan.layout != Layout::Awq {
        return None;
    }
    let s = plan.int?;
    let kept = plan.unquantized_layers();
    Some(json!({
        "quant_method": "awq",
        "zero_point": true,
        "group_size": s.group_size.to_i64(),
        "bits": s.bits.get(),
        "version": "gemm",
        "modules_to_not_convert": if kept.is_empty() { Value::Null } else { json!(kept) },
    }))
}

/// `hf_quant_config.json` for a ModelOpt output.
///
/// The only ModelOpt name qtool writes is weight-only NVFP4, so `quant_algo` is `W4A16_NVFP4`:
/// vLLM's ModelOpt loader runs it without an `input_scale` (which would need calibration), while
/// `NVFP4` (W4A4) requires one. `group_size`, `kv_cache_quant_algo` and `exclude_modules` are
/// always present, as vLLM requires (§5.2).
pub fn modelopt(plan: &QuantizePlan) -> Option<Value> {
    if plan.layout != Layout::ModelOpt || plan.fmt.scheme != Scheme::Nvfp4 {
        return None;
    }
    Some(json!({
        "producer": {"name": "qtool", "version": env!("CARGO_PKG_VERSION")},
        "quantization": {
            "quant_algo": "W4A16_NVFP4",
            "kv_cache_quant_algo": null,
            "group_size": 16,
            "exclude_modules": plan.unquantized_layers(),
        }
    }))
}
