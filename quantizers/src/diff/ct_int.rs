//! compressed-tensors `pack-quantized` INT4/INT8 layers (W4A16, W8A16), read back as
//! `scale · (code − zero)` (formats.md §2.3; the arithmetic of [`crate::int::rtn::dequantize`],
//! the layout of [`crate::int::compressed`]), a range at a time:
//!
//! ```text
//! L.weight_packed      I32 [N, cdiv(K, 32/b)]   code of (n, k): bits b·(k % pf) of word k / pf
//! L.weight_scale       float [N, G]
//! L.weight_zero_point  I32 [cdiv(N, pf), G]     optional (asymmetric), packed along N
//! L.weight_shape       I64 [2] = [N, K]
//! L.weight_g_idx       I32 [K]                  optional (act-order): column → group
//! ```
//! with `pf = 32 / b` codes per word, codes stored as `q + 2^(b−1)`, and the symmetric zero
//! `2^(b−1)` when there is no zero point. The bit width is not stored; it is the `b ∈ {4, 8}`
//! whose word count matches (`cdiv(K, 8)` or `cdiv(K, 4)` words per row). Without `g_idx` the
//! group of column `k` is `k / (K / G)`. The layer is named `L.weight` in the diff; the scale,
//! zero points and `g_idx` count towards bits per weight, `weight_shape` does not.

use qtool_formats::{DType, TensorDType, TensorInfo, TensorRef};

use super::error::{DiffError, Side};
use super::registry::{ClaimContext, Dequantize, LogicalTensor, SchemeDecoder};
use crate::decode;

/// The compressed-tensors pack-quantized decoder.
#[derive(Clone, Copy, Debug)]
pub struct CtPackQuantized;

fn i32_at(bytes: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]])
}

impl SchemeDecoder for CtPackQuantized {
    fn name(&self) -> &'static str {
        "compressed-tensors pack-quantized"
    }

    fn claim<'a>(&self, cx: &mut ClaimContext<'a>) -> Result<Vec<LogicalTensor<'a>>, DiffError> {
        let layers: Vec<String> = cx
            .unclaimed()
            .filter(|(_, t)| t.dtype == TensorDType::St(DType::I32))
            .filter_map(|(_, t)| t.name.strip_suffix(".weight_packed").map(str::to_string))
            .collect();
        let mut out = Vec::new();
        for layer in layers {
            let part = |s: &str| cx.free(&format!("{layer}.{s}"));
            let (Some((wi, w)), Some((si, s)), Some((hi, h))) =
                (part("weight_packed"), part("weight_scale"), part("weight_shape"))
            else {
                continue;
            };
            let zp = part("weight_zero_point");
            let g_idx = part("weight_g_idx");
            for i in [Some(wi), Some(si), Some(hi), zp.map(|z| z.0), g_idx.map(|g| g.0)]
                .into_iter()
                .flatten()
            {
                cx.claim(i);
            }
            let mut parts = vec![w, s];
            parts.extend(zp.map(|z| z.1));
            parts.extend(g_idx.map(|g| g.1));
            let view = View::new(cx, w, s, h, zp.map(|z| z.1), g_idx.map(|g| g.1));
            let (shape, scheme) = match &view {
                Ok(v) => (
                    vec![v.n, v.k],
                    format!(
                        "int{}_{}/compressed-tensors",
                        v.bits,
                        match (&v.g_idx, v.group_cols) {
                            (Some(_), _) => "actorder".to_string(),
                            (None, c) if c == v.k => "channel".to_string(),
                            (None, c) => format!("g{c}"),
                        }
                    ),
                ),
                Err(_) => (w.shape.clone(), "pack-quantized/compressed-tensors".into()),
            };
            out.push(LogicalTensor {
                name: format!("{layer}.weight"),
                index: wi,
                shape,
                scheme,
                parts,
                extras: vec![h],
                decoder: view.map(|v| Box::new(v) as Box<dyn Dequantize + 'a>),
            });
        }
        Ok(out)
    }
}

#[derive(Debug)]
struct View<'a> {
    packed: TensorRef<'a>,
    zero_point: Option<&'a [u8]>,
    /// `[N, G]`, read a chunk's rows at a time.
    scales: TensorRef<'a>,
    /// `[K]` I32 bytes.
    g_idx: Option<&'a [u8]>,
    bits: u32,
    n: u64,
    k: u64,
    groups: u64,
    group_cols: u64,
    words_per_row: u64,
    side: Side,
}

impl<'a> View<'a> {
    fn new(
        cx: &ClaimContext<'a>,
        w: &'a TensorInfo,
        s: &'a TensorInfo,
        h: &'a TensorInfo,
        zp: Option<&'a TensorInfo>,
        g_idx: Option<&'a TensorInfo>,
    ) -> Result<Self, String> {
        let packed = cx.tensor_ref(w);
        decode::validate(&packed).map_err(|e| e.to_string())?;
        let shape = decode::decode_all(cx.tensor_ref(h)).map_err(|e| e.to_string())?;
        let (n, k) = match (h.dtype, shape.as_slice()) {
            (TensorDType::St(DType::I64 | DType::I32), [n, k]) if *n >= 1.0 && *k >= 1.0 => {
                (*n as u64, *k as u64)
            }
            _ => return Err(format!("'{}' is not a [N, K] integer shape: {shape:?}", h.name)),
        };
        let &[rows, words] = w.shape.as_slice() else {
            return Err(format!("'{}' has shape {:?}, expected 2 dimensions", w.name, w.shape));
        };
        let bits = match (k.div_ceil(8) == words, k.div_ceil(4) == words) {
            (true, false) => 4,
            (false, true) => 8,
            _ => {
                return Err(format!(
                    "'{}': {words} words per row fit neither 4-bit nor 8-bit codes for K = {k}",
                    w.name
                ))
            }
        };
        if rows != n {
            return Err(format!("'{}' has {rows} rows, weight_shape says N = {n}", w.name));
        }
        let &[sn, groups] = s.shape.as_slice() else {
            return Err(format!("'{}' has shape {:?}, expected [N, G]", s.name, s.shape));
        };
        if sn != n || groups == 0 || groups > k {
            return Err(format!("'{}' has shape {:?} for a [{n}, {k}] weight", s.name, s.shape));
        }
        let scales = cx.tensor_ref(s);
        decode::validate(&scales).map_err(|e| e.to_string())?;
        let group_cols = k.div_ceil(groups);
        let g_idx = match g_idx {
            None => {
                if k.div_ceil(group_cols) != groups {
                    return Err(format!("{groups} groups do not split K = {k} evenly"));
                }
                None
            }
            Some(g) => {
                let t = cx.tensor_ref(g);
                if g.dtype != TensorDType::St(DType::I32) || g.numel() != k {
                    return Err(format!("'{}' must be I32 [{k}]", g.name));
                }
                decode::validate(&t).map_err(|e| e.to_string())?;
                // One pass over K words to refuse out-of-range groups before any decode.
                if let Some(bad) =
                    (0..k as usize).map(|i| i32_at(t.data, i)).find(|&x| u64::from(x) >= groups)
                {
                    return Err(format!("'{}' names group {bad}, there are {groups}", g.name));
                }
                Some(t.data)
            }
        };
        let zero_point = match zp {
            None => None,
            Some(z) => {
                let pf = u64::from(32 / bits);
                if z.dtype != TensorDType::St(DType::I32) || z.shape != [n.div_ceil(pf), groups] {
                    return Err(format!(
                        "'{}' must be I32 [{}, {groups}], is {} {:?}",
                        z.name,
                        n.div_ceil(pf),
                        z.dtype,
                        z.shape
                    ));
                }
                let t = cx.tensor_ref(z);
                decode::validate(&t).map_err(|e| e.to_string())?;
                Some(t.data)
            }
        };
        Ok(View {
            packed,
            zero_point,
            scales,
            g_idx,
            bits,
            n,
            k,
            groups,
            group_cols,
            words_per_row: words,
            side: cx.side,
        })
    }
}

impl Dequantize for View<'_> {
    fn granule(&self) -> u64 {
        1
    }

    fn decode(&self, start: u64, out: &mut [f32]) -> Result<(), DiffError> {
        let end = start + out.len() as u64;
        if end > self.n * self.k {
            return Err(DiffError::Layout {
                side: self.side,
                tensor: self.packed.info.name.clone(),
                msg: format!("elements {start}..{end} lie outside the tensor"),
            });
        }
        let pf = u64::from(32 / self.bits);
        let mask = (1u32 << self.bits) - 1;
        let mid = 1u32 << (self.bits - 1);
        // The scale rows this range touches, `[r1 − r0, G]`.
        let (r0, r1) = (start / self.k, end.div_ceil(self.k));
        let mut scales = vec![0f32; ((r1 - r0) * self.groups) as usize];
        decode::decode_into(self.scales, r0 * self.groups, &mut scales)
            .map_err(|source| DiffError::Decode { side: self.side, source })?;
        for (i, o) in out.iter_mut().enumerate() {
            let idx = start + i as u64;
            let (r, c) = (idx / self.k, idx % self.k);
            let word = i32_at(self.packed.data, (r * self.words_per_row + c / pf) as usize);
            let code = (word >> (self.bits as u64 * (c % pf))) & mask;
            let g = match self.g_idx {
                Some(g) => u64::from(i32_at(g, c as usize)),
                None => c / self.group_cols,
            };
            let zero = match self.zero_point {
                None => mid,
                Some(zp) => {
                    let w = i32_at(zp, ((r / pf) * self.groups + g) as usize);
                    (w >> (self.bits as u64 * (r % pf))) & mask
                }
            };
            let s = scales[((r - r0) * self.groups + g) as usize];
            *o = (code as f32 - zero as f32) * s;
        }
        Ok(())
    }
}
