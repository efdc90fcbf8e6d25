//! NVFP4 layers in the three layouts that carry them (formats.md §1.3.2, §2.4, §5.2; the
//! arithmetic is [`crate::float::nvfp4`]'s, read here a range at a time so memory stays
//! O(chunk)):
//!
//! | layout | parts | tensor scale |
//! |---|---|---|
//! | ComfyUI (`comfy_quant` `{"format": "nvfp4"}`) | `L.weight` U8 `[Np, Kp/2]` even→high nibble, `L.weight_scale` E4M3 swizzled `[roundup(Np,128), roundup(Kp/16,4)]` | `L.weight_scale_2`, multiplier |
//! | ModelOpt | `L.weight` U8 `[N, K/2]` even→low, `L.weight_scale` E4M3 `[N, K/16]` | `L.weight_scale_2`, multiplier |
//! | compressed-tensors | `L.weight_packed` U8 `[N, K/2]` even→low, `L.weight_scale` E4M3 `[N, K/16]` | `L.weight_global_scale`, divisor |
//!
//! Value of element `(r, k)`: `e2m1(code) · (ts · e4m3(bs))`, or `e2m1(code) · (e4m3(bs) / gs)`
//! for compressed-tensors, each product rounded to f32 in that order (as
//! [`crate::float::nvfp4::Nvfp4Tensor::dequantize`] does).
//!
//! ComfyUI pads N and K to multiples of 16 and does not store the original shape (it comes from
//! the model definition), so a ComfyUI layer's logical shape is the padded `[Np, Kp]`; for the
//! usual layer sizes (multiples of 16) that is the real shape. Every compressed-tensors layer is
//! named `L.weight` in the diff, so it meets the reference's `L.weight`.

use qtool_formats::codec::Fp8Format;
use qtool_formats::{DType, TensorDType, TensorInfo, TensorRef};

use super::error::{DiffError, Side};
use super::registry::{comfy_format, ClaimContext, Dequantize, LogicalTensor, SchemeDecoder};
use crate::decode;
use crate::float::{e2m1, swizzle};

/// Elements per block scale.
const BLOCK: u64 = 16;

/// The NVFP4 decoder (all three layouts).
#[derive(Clone, Copy, Debug)]
pub struct Nvfp4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Comfy,
    ModelOpt,
    CompressedTensors,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Comfy => "nvfp4/comfy",
            Layout::ModelOpt => "nvfp4/modelopt",
            Layout::CompressedTensors => "nvfp4/compressed-tensors",
        }
    }
}

fn is_u8(t: &TensorInfo) -> bool {
    t.dtype == TensorDType::St(DType::U8)
}

fn is_scale_bytes(t: &TensorInfo) -> bool {
    matches!(t.dtype, TensorDType::St(DType::F8E4M3 | DType::U8))
}

fn is_f32_scalar(t: &TensorInfo) -> bool {
    t.dtype == TensorDType::St(DType::F32) && t.numel() == 1
}

/// `[rows, packed_cols]` of a 2-D packed weight.
fn dims2(t: &TensorInfo) -> Option<(u64, u64)> {
    match t.shape.as_slice() {
        [r, c] => Some((*r, *c)),
        _ => None,
    }
}

impl SchemeDecoder for Nvfp4 {
    fn name(&self) -> &'static str {
        "nvfp4"
    }

    fn claim<'a>(&self, cx: &mut ClaimContext<'a>) -> Result<Vec<LogicalTensor<'a>>, DiffError> {
        let stems: Vec<(String, Layout)> = cx
            .unclaimed()
            .filter_map(|(_, t)| {
                if let Some(l) = t.name.strip_suffix(".weight_packed") {
                    return Some((l.to_string(), Layout::CompressedTensors));
                }
                let l = t.name.strip_suffix(".weight")?;
                let layout = match cx.free(&format!("{l}.comfy_quant")) {
                    Some((_, q)) if comfy_format(cx, q).as_deref() == Some("nvfp4") => {
                        Layout::Comfy
                    }
                    Some(_) => return None,
                    None => Layout::ModelOpt,
                };
                Some((l.to_string(), layout))
            })
            .collect();
        let mut out = Vec::new();
        for (layer, layout) in stems {
            let (data_name, global_name) = match layout {
                Layout::CompressedTensors => ("weight_packed", "weight_global_scale"),
                _ => ("weight", "weight_scale_2"),
            };
            let (Some((wi, w)), Some((si, s)), Some((gi, g))) = (
                cx.free(&format!("{layer}.{data_name}")),
                cx.free(&format!("{layer}.weight_scale")),
                cx.free(&format!("{layer}.{global_name}")),
            ) else {
                continue;
            };
            if !is_u8(w) || !is_scale_bytes(s) || !is_f32_scalar(g) {
                continue;
            }
            let Some((rows, half)) = dims2(w) else { continue };
            let cols = half * 2;
            // The block-scale shape must be the layout's, or this is something else.
            let expect_scales = match layout {
                Layout::Comfy => {
                    let [a, b] = swizzle::blocked_shape(rows as usize, (cols / BLOCK) as usize);
                    (a as u64) * (b as u64)
                }
                _ => rows * cols.div_ceil(BLOCK),
            };
            if s.numel() != expect_scales || (layout != Layout::Comfy && cols % BLOCK != 0) {
                continue;
            }
            for i in [wi, si, gi] {
                cx.claim(i);
            }
            let mut extras = Vec::new();
            for x in ["comfy_quant", "input_scale", "input_global_scale"] {
                if let Some((i, t)) = cx.free(&format!("{layer}.{x}")) {
                    cx.claim(i);
                    extras.push(t);
                }
            }
            let view = View::new(cx, layout, w, s, g, cols);
            out.push(LogicalTensor {
                name: format!("{layer}.weight"),
                index: wi,
                shape: vec![rows, cols],
                scheme: layout.name().to_string(),
                parts: vec![w, s, g],
                extras,
                decoder: view.map(|v| Box::new(v) as Box<dyn Dequantize + 'a>),
            });
        }
        Ok(out)
    }
}

#[derive(Debug)]
struct View<'a> {
    layout: Layout,
    packed: TensorRef<'a>,
    scales: &'a [u8],
    global: f32,
    cols: u64,
    /// Padded width of the swizzled scale matrix (ComfyUI).
    scale_cols_padded: usize,
    side: Side,
}

impl<'a> View<'a> {
    fn new(
        cx: &ClaimContext<'a>,
        layout: Layout,
        w: &'a TensorInfo,
        s: &'a TensorInfo,
        g: &'a TensorInfo,
        cols: u64,
    ) -> Result<Self, String> {
        let packed = cx.tensor_ref(w);
        let scales = cx.tensor_ref(s);
        decode::validate(&packed).map_err(|e| e.to_string())?;
        decode::validate(&scales).map_err(|e| e.to_string())?;
        let global = decode::decode_all(cx.tensor_ref(g)).map_err(|e| e.to_string())?[0];
        Ok(View {
            layout,
            packed,
            scales: scales.data,
            global,
            cols,
            scale_cols_padded: swizzle::blocked_shape(0, (cols / BLOCK) as usize)[1],
            side: cx.side,
        })
    }
}

impl Dequantize for View<'_> {
    fn granule(&self) -> u64 {
        1
    }

    fn decode(&self, start: u64, out: &mut [f32]) -> Result<(), DiffError> {
        let e4m3 = Fp8Format::E4M3Fn;
        let end = start + out.len() as u64;
        if end > self.packed.data.len() as u64 * 2 {
            return Err(DiffError::Layout {
                side: self.side,
                tensor: self.packed.info.name.clone(),
                msg: format!("elements {start}..{end} lie outside the tensor"),
            });
        }
        let nb = (self.cols / BLOCK) as usize;
        for (i, o) in out.iter_mut().enumerate() {
            let idx = start + i as u64;
            let (r, k) = ((idx / self.cols) as usize, (idx % self.cols) as usize);
            let byte = self.packed.data[r * (self.cols as usize / 2) + k / 2];
            let even = k % 2 == 0;
            let code = match (self.layout, even) {
                (Layout::Comfy, true) | (Layout::ModelOpt | Layout::CompressedTensors, false) => {
                    byte >> 4
                }
                _ => byte & 0x0F,
            };
            let si = match self.layout {
                Layout::Comfy => {
                    swizzle::blocked_index(r, k / BLOCK as usize, self.scale_cols_padded)
                }
                _ => r * nb + k / BLOCK as usize,
            };
            let bs = e4m3.decode(self.scales[si]);
            let scale = match self.layout {
                Layout::CompressedTensors => bs / self.global,
                _ => self.global * bs,
            };
            *o = e2m1::decode(code) * scale;
        }
        Ok(())
    }
}
