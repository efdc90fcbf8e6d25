//! The integer weight-only family (`w4a16`, `w8a16`) in the export pipeline: the options a run
//! takes, the shape rules each layout imposes (checked at plan time, so nothing is written for a
//! shape the layout cannot hold), the output tensors of one layer and their bytes.
//!
//! Each layout gets the scale/zero formula of the tool that produces it (GPTQ's `find_params`,
//! AutoAWQ's zero-point quantizer, compressed-tensors' `calculate_qparams`; formats.md §2.1,
//! §3.1, §3.2), with the scales rounded to the dtype the file stores before the codes are
//! computed ([`quantize_for_storage`]), so a runtime's dequantization of the written tensors is
//! exactly the dequantization qtool reports.

use half::{bf16, f16};
use qtool_formats::{DType, PlannedTensor, TensorDType};

use crate::int::{
    pack_awq, pack_ct, pack_gptq, quantize_for_storage, Bits, Convention, GptqZeros, GroupSize,
    IntResult, QuantizedInt, RtnConfig, ScaleDtype,
};

use super::catalog::{Layout, Scheme};
use super::error::ExportError;
use super::plan::LayerPlan;

/// What the user asked for on the command line; `None` means "the layout's default".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IntOptions {
    /// `--group-size`: `-1` or a positive column count.
    pub group_size: Option<i64>,
    /// `--sym` (true) / `--asym` (false).
    pub symmetric: Option<bool>,
    /// `--gptq-format v2`: store true zero points instead of AutoGPTQ's `zero - 1`.
    pub gptq_v2: bool,
}

/// The resolved settings every layer of one run is written with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntSettings {
    pub bits: Bits,
    pub group_size: GroupSize,
    pub symmetric: bool,
    /// GPTQ zero-point convention (ignored by the other layouts).
    pub zeros: GptqZeros,
}

/// The group size when `--group-size` is not given: 128, what GPTQ, AWQ and the W4A16 presets
/// default to.
pub const DEFAULT_GROUP_SIZE: i64 = 128;

impl IntSettings {
    /// Checks the options against the scheme and layout. AWQ GEMM is asymmetric only (its
    /// quantizer always has a zero point, `zero_point: true`), so it defaults to `--asym` and
    /// refuses `--sym`; the others default to symmetric, the form Marlin kernels run.
    pub fn resolve(
        scheme: Scheme,
        layout: Layout,
        opts: &IntOptions,
    ) -> Result<Option<IntSettings>, ExportError> {
        let Scheme::IntWeight { bits } = scheme else {
            if opts.group_size.is_some() || opts.symmetric.is_some() || opts.gptq_v2 {
                return Err(ExportError::Usage(
                    "--group-size, --sym/--asym and --gptq-format apply to w4a16 and w8a16 only"
                        .into(),
                ));
            }
            return Ok(None);
        };
        let bits = Bits::from_u32(bits)
            .map_err(|e| ExportError::Usage(format!("integer weights: {e}")))?;
        let g = opts.group_size.unwrap_or(DEFAULT_GROUP_SIZE);
        let group_size = match g {
            -1 => GroupSize::PerChannel,
            g if g > 0 => GroupSize::Size(g as usize),
            g => {
                return Err(ExportError::Usage(format!(
                    "--group-size {g} is invalid (a positive column count, or -1 for one group per output channel)"
                )))
            }
        };
        let symmetric = match (layout, opts.symmetric) {
            (Layout::Awq, Some(true)) => {
                return Err(ExportError::Usage(
                    "--layout awq is asymmetric only (AutoAWQ GEMM always stores zero points); drop --sym or use --asym".into(),
                ))
            }
            (Layout::Awq, _) => false,
            (_, s) => s.unwrap_or(true),
        };
        if opts.gptq_v2 && layout != Layout::Gptq {
            return Err(ExportError::Usage(format!(
                "--gptq-format applies to --layout gptq, not {layout}"
            )));
        }
        let zeros = if opts.gptq_v2 { GptqZeros::V2 } else { GptqZeros::V1 };
        Ok(Some(IntSettings { bits, group_size, symmetric, zeros }))
    }

    /// Values per packed int32 word.
    pub fn per_word(&self) -> usize {
        self.bits.per_word()
    }

    fn num_groups(&self, k: usize) -> usize {
        match self.group_size {
            GroupSize::PerChannel => 1,
            GroupSize::Size(g) => k / g.max(1),
        }
    }

    /// The GPTQ `checkpoint_format` these settings write.
    pub fn gptq_checkpoint_format(&self) -> &'static str {
        match self.zeros {
            GptqZeros::V1 => "gptq",
            GptqZeros::V2 => "gptq_v2",
        }
    }
}

/// Why a `[rows, cols]` weight cannot be written in `layout`, naming the rule; `None` when it
/// can. The rules are the packers' (formats.md §3.1: GPTQ packs K and N by whole words; §3.2:
/// AWQ asserts `N % 8 == 0`, `K % G == 0`; every layout needs the group to divide K).
pub fn shape_rule(layout: Layout, s: &IntSettings, rows: usize, cols: usize) -> Option<String> {
    if let GroupSize::Size(g) = s.group_size {
        if cols % g != 0 {
            return Some(format!(
                "in_features {cols} is not a multiple of the group size {g} (pick --group-size dividing it, or -1)"
            ));
        }
    }
    let pf = s.per_word();
    match layout {
        Layout::Gptq if cols % pf != 0 => Some(format!(
            "GPTQ packs {pf} values per int32 along in_features, and {cols} is not a multiple of {pf}"
        )),
        Layout::Gptq if rows % pf != 0 => Some(format!(
            "GPTQ qzeros pack {pf} values per int32 along out_features, and {rows} is not a multiple of {pf}"
        )),
        Layout::Awq if rows % 8 != 0 => Some(format!(
            "AWQ packs 8 values per int32 along out_features, and {rows} is not a multiple of 8"
        )),
        _ => None,
    }
}

/// The dtype the layout stores scales in: GPTQ and AWQ F16 (AutoGPTQ/AutoAWQ modules are fp16,
/// and Marlin repacking needs fp16), compressed-tensors the weight's own dtype (§2.1).
pub fn scale_dtype(layout: Layout, weight: DType) -> DType {
    match (layout, weight) {
        (Layout::CompressedTensors, DType::BF16 | DType::F32) => weight,
        _ => DType::F16,
    }
}

fn part(name: String, dtype: DType, shape: Vec<usize>) -> PlannedTensor {
    let numel: u64 = shape.iter().map(|&d| d as u64).product();
    PlannedTensor {
        name,
        dtype: TensorDType::St(dtype),
        shape: shape.into_iter().map(|d| d as u64).collect(),
        nbytes: numel * dtype.bits() / 8,
    }
}

/// The output tensors of one layer, in the order [`encode`] returns their bytes.
pub fn outputs(layout: Layout, s: &IntSettings, l: &LayerPlan) -> Vec<PlannedTensor> {
    let p = &l.prefix;
    let name = |suffix: &str| format!("{p}.{suffix}");
    let (n, k) = (l.rows, l.cols);
    let pf = s.per_word();
    let groups = s.num_groups(k);
    let sd = scale_dtype(layout, l.dtype);
    match layout {
        Layout::Gptq => vec![
            part(name("qweight"), DType::I32, vec![k.div_ceil(pf), n]),
            part(name("qzeros"), DType::I32, vec![groups, n.div_ceil(pf)]),
            part(name("scales"), sd, vec![groups, n]),
            part(name("g_idx"), DType::I32, vec![k]),
        ],
        Layout::Awq => vec![
            part(name("qweight"), DType::I32, vec![k, n.div_ceil(pf)]),
            part(name("qzeros"), DType::I32, vec![groups, n.div_ceil(pf)]),
            part(name("scales"), sd, vec![groups, n]),
        ],
        _ => {
            let mut v = vec![
                part(name("weight_packed"), DType::I32, vec![n, k.div_ceil(pf)]),
                part(name("weight_scale"), sd, vec![n, groups]),
                part(name("weight_shape"), DType::I64, vec![2]),
            ];
            if !s.symmetric {
                v.push(part(name("weight_zero_point"), DType::I32, vec![n.div_ceil(pf), groups]));
            }
            v
        }
    }
}

/// Quantizes `w` (`[rows, cols]` f32) and returns the bytes of [`outputs`], in order.
pub fn encode(
    layout: Layout,
    s: &IntSettings,
    l: &LayerPlan,
    w: &[f32],
) -> IntResult<Vec<Vec<u8>>> {
    let (cfg, storage) = rtn_config(layout, s, l.dtype);
    let q = quantize_for_storage(w, l.rows, l.cols, &cfg, None, storage)?;
    pack(layout, s, l, &q)
}

/// The scale/zero formula and the stored scale precision of `layout` for a `dtype` weight:
/// what a quantizer that computes its own codes (calibrated GPTQ/AWQ) must use so that
/// [`pack`] writes its result exactly.
pub fn rtn_config(layout: Layout, s: &IntSettings, dtype: DType) -> (RtnConfig, ScaleDtype) {
    let convention = match layout {
        Layout::Gptq => Convention::Gptq,
        Layout::Awq => Convention::Awq,
        _ => Convention::CompressedTensors,
    };
    let storage = match scale_dtype(layout, dtype) {
        DType::BF16 => ScaleDtype::BF16,
        DType::F32 => ScaleDtype::F32,
        _ => ScaleDtype::F16,
    };
    (
        RtnConfig { bits: s.bits, group_size: s.group_size, symmetric: s.symmetric, convention },
        storage,
    )
}

/// The bytes of [`outputs`] for an already quantized layer (scales exactly representable in
/// the layout's scale dtype, as [`rtn_config`] makes them).
pub fn pack(
    layout: Layout,
    s: &IntSettings,
    l: &LayerPlan,
    q: &QuantizedInt,
) -> IntResult<Vec<Vec<u8>>> {
    let sd = scale_dtype(layout, l.dtype);
    let scales = |v: &[f32]| scale_bytes(sd, v);
    Ok(match layout {
        Layout::Gptq => {
            let t = pack_gptq(q, s.zeros)?;
            vec![words(&t.qweight), words(&t.qzeros), scales(&t.scales), words(&t.g_idx)]
        }
        Layout::Awq => {
            let t = pack_awq(q)?;
            vec![words(&t.qweight), words(&t.qzeros), scales(&t.scales)]
        }
        _ => {
            let t = pack_ct(q)?;
            let mut v = vec![
                words(&t.weight_packed),
                scales(&t.weight_scale),
                t.weight_shape.iter().flat_map(|d| d.to_le_bytes()).collect(),
            ];
            if let Some(zp) = &t.weight_zero_point {
                v.push(words(zp));
            }
            v
        }
    })
}

fn words(w: &[i32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Scales are already exactly representable in `dtype` ([`quantize_for_storage`]), so this
/// conversion is exact.
fn scale_bytes(dtype: DType, v: &[f32]) -> Vec<u8> {
    match dtype {
        DType::BF16 => v.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect(),
        DType::F32 => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
        _ => v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
    }
}
