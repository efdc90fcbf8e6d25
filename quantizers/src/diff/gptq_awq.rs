//! GPTQ and AWQ (GEMM) INT4/INT8 layers, read back as `scale · (code − zero)` (formats.md §3.1,
//! §3.2; layouts of [`crate::int::gptq`] and [`crate::int::awq`]) a range at a time:
//!
//! ```text
//! GPTQ  L.qweight I32 [K/pf, N]  code (n, k): word (k/pf, n), bits b·(k % pf)
//!       L.qzeros  I32 [G, N/pf]  zero (g, n): word (g, n/pf), bits b·(n % pf), stored zero − 1 (v1)
//!       L.scales  [G, N], L.g_idx I32 [K] (optional; default k / (K/G))
//! AWQ   L.qweight I32 [K, N/8]   code (n, k): word (k, n/8), field AWQ_REVERSE_ORDER[n % 8]
//!       L.qzeros  I32 [G, N/8]   same interleave, true zero
//!       L.scales  [G, N]         groups k / (K/G)
//! ```
//! The two are told apart by `qweight`'s second dimension: `N` (GPTQ) or `N/8` (AWQ), with `N`
//! from `scales`. GPTQ's bit width is `32 / (N / qzeros columns)`.
//!
//! GPTQ zero points are read in AutoGPTQ's v1 convention (`zero − 1` stored, what AutoGPTQ and
//! GPTQModel write by default, `checkpoint_format: "gptq"`) unless the checkpoint says
//! `"gptq_v2"` (true zeros; see `matching::Input::gptq_v2`). The scheme name says which.

use qtool_formats::{DType, TensorDType, TensorInfo, TensorRef};

use super::error::{DiffError, Side};
use super::registry::{ClaimContext, Dequantize, LogicalTensor, SchemeDecoder};
use crate::decode;
use crate::int::pack::AWQ_REVERSE_ORDER;

/// The GPTQ / AWQ decoder.
#[derive(Clone, Copy, Debug)]
pub struct GptqAwq;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Gptq,
    Awq,
}

fn word(bytes: &[u8], i: u64) -> u32 {
    let i = i as usize * 4;
    u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]])
}

fn dims2(t: &TensorInfo) -> Option<(u64, u64)> {
    match t.shape.as_slice() {
        &[a, b] => Some((a, b)),
        _ => None,
    }
}

impl SchemeDecoder for GptqAwq {
    fn name(&self) -> &'static str {
        "gptq/awq"
    }

    fn claim<'a>(&self, cx: &mut ClaimContext<'a>) -> Result<Vec<LogicalTensor<'a>>, DiffError> {
        let layers: Vec<String> = cx
            .unclaimed()
            .filter(|(_, t)| t.dtype == TensorDType::St(DType::I32))
            .filter_map(|(_, t)| t.name.strip_suffix(".qweight").map(str::to_string))
            .collect();
        let mut out = Vec::new();
        for layer in layers {
            let part = |s: &str| cx.free(&format!("{layer}.{s}"));
            let (Some((wi, w)), Some((zi, z)), Some((si, s))) =
                (part("qweight"), part("qzeros"), part("scales"))
            else {
                continue;
            };
            let g_idx = part("g_idx");
            for i in [Some(wi), Some(zi), Some(si), g_idx.map(|g| g.0)].into_iter().flatten() {
                cx.claim(i);
            }
            let mut parts = vec![w, z, s];
            parts.extend(g_idx.map(|g| g.1));
            let view = View::new(cx, w, z, s, g_idx.map(|g| g.1));
            let (shape, scheme) = match &view {
                Ok(v) => (
                    vec![v.n, v.k],
                    format!(
                        "int{}_{}/{}",
                        v.bits,
                        match (&v.g_idx, v.group_cols) {
                            (Some(_), _) => "actorder".to_string(),
                            (None, c) if c == v.k => "channel".to_string(),
                            (None, c) => format!("g{c}"),
                        },
                        match (v.kind, v.zero_offset) {
                            (Kind::Awq, _) => "awq",
                            (Kind::Gptq, 1) => "gptq(v1)",
                            (Kind::Gptq, _) => "gptq(v2)",
                        }
                    ),
                ),
                Err(_) => (w.shape.clone(), "gptq/awq".into()),
            };
            out.push(LogicalTensor {
                name: format!("{layer}.weight"),
                index: wi,
                shape,
                scheme,
                parts,
                extras: Vec::new(),
                decoder: view.map(|v| Box::new(v) as Box<dyn Dequantize + 'a>),
            });
        }
        Ok(out)
    }
}

#[derive(Debug)]
struct View<'a> {
    kind: Kind,
    qweight: TensorRef<'a>,
    qzeros: &'a [u8],
    /// `[G, N]`, read a chunk's rows at a time.
    scales: TensorRef<'a>,
    /// `[K]` I32 bytes, when not the default order.
    g_idx: Option<&'a [u8]>,
    groups: u64,
    bits: u32,
    n: u64,
    k: u64,
    group_cols: u64,
    /// Added to a stored GPTQ zero: 1 for v1 (`zero − 1` on disk), 0 for v2.
    zero_offset: u32,
    side: Side,
}

impl<'a> View<'a> {
    fn new(
        cx: &ClaimContext<'a>,
        w: &'a TensorInfo,
        z: &'a TensorInfo,
        s: &'a TensorInfo,
        g_idx: Option<&'a TensorInfo>,
    ) -> Result<Self, String> {
        let shape_err = || {
            format!(
                "qweight {:?}, qzeros {:?}, scales {:?} fit neither GPTQ nor AWQ",
                w.shape, z.shape, s.shape
            )
        };
        let ((wr, wc), (zr, zc), (groups, n)) = match (dims2(w), dims2(z), dims2(s)) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => return Err(shape_err()),
        };
        if z.dtype != TensorDType::St(DType::I32) || zr != groups || zc == 0 || groups == 0 {
            return Err(shape_err());
        }
        let (kind, bits, k) = if wc == n && n % zc == 0 && matches!(n / zc, 4 | 8) {
            let pf = n / zc;
            (Kind::Gptq, (32 / pf) as u32, wr * pf)
        } else if wc * 8 == n && zc * 8 == n {
            (Kind::Awq, 4, wr)
        } else {
            return Err(shape_err());
        };
        let qweight = cx.tensor_ref(w);
        decode::validate(&qweight).map_err(|e| e.to_string())?;
        let zeros = cx.tensor_ref(z);
        decode::validate(&zeros).map_err(|e| e.to_string())?;
        let scales = cx.tensor_ref(s);
        decode::validate(&scales).map_err(|e| e.to_string())?;
        let group_cols = k.div_ceil(groups);
        let g_idx = match g_idx {
            Some(g) if kind == Kind::Gptq => {
                if g.dtype != TensorDType::St(DType::I32) || g.numel() != k {
                    return Err(format!("'{}' must be I32 [{k}]", g.name));
                }
                let t = cx.tensor_ref(g);
                decode::validate(&t).map_err(|e| e.to_string())?;
                if let Some(bad) = (0..k).map(|i| word(t.data, i)).find(|&x| u64::from(x) >= groups)
                {
                    return Err(format!("'{}' names group {bad}, there are {groups}", g.name));
                }
                // The default order carries no information; name the scheme by its groups.
                let default = (0..k).all(|c| u64::from(word(t.data, c)) == c / group_cols);
                (!default).then_some(t.data)
            }
            _ => {
                if k.div_ceil(group_cols) != groups {
                    return Err(format!("{groups} groups do not split K = {k} evenly"));
                }
                None
            }
        };
        Ok(View {
            kind,
            qweight,
            qzeros: zeros.data,
            scales,
            g_idx,
            groups,
            bits,
            n,
            k,
            group_cols,
            zero_offset: u32::from(kind == Kind::Gptq && !cx.gptq_v2),
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
                tensor: self.qweight.info.name.clone(),
                msg: format!("elements {start}..{end} lie outside the tensor"),
            });
        }
        let b = u64::from(self.bits);
        let pf = 32 / b;
        let mask = (1u32 << self.bits) - 1;
        let data = self.qweight.data;
        // The scales of the rows this range touches: for each group, rows r0..r1 (contiguous
        // in `[G, N]`), laid out `[G, r1 − r0]`.
        let (r0, r1) = (start / self.k, end.div_ceil(self.k));
        let span = (r1 - r0) as usize;
        let mut scales = vec![0f32; self.groups as usize * span];
        for (g, run) in scales.chunks_mut(span.max(1)).enumerate() {
            decode::decode_into(self.scales, g as u64 * self.n + r0, run)
                .map_err(|source| DiffError::Decode { side: self.side, source })?;
        }
        for (i, o) in out.iter_mut().enumerate() {
            let idx = start + i as u64;
            let (r, c) = (idx / self.k, idx % self.k);
            let g = match self.g_idx {
                Some(g) => u64::from(word(g, c)),
                None => c / self.group_cols,
            };
            let (code, zero) = match self.kind {
                Kind::Gptq => {
                    let q = (word(data, (c / pf) * self.n + r) >> (b * (c % pf))) & mask;
                    let zw = word(self.qzeros, g * (self.n / pf) + r / pf);
                    (q, ((zw >> (b * (r % pf))) & mask) + self.zero_offset)
                }
                Kind::Awq => {
                    let field = AWQ_REVERSE_ORDER[(r % 8) as usize] as u64;
                    let q = (word(data, c * (self.n / 8) + r / 8) >> (4 * field)) & mask;
                    let zw = word(self.qzeros, g * (self.n / 8) + r / 8);
                    (q, (zw >> (4 * field)) & mask)
                }
            };
            let s = scales[g as usize * span + (r - r0) as usize];
            *o = (code as f32 - zero as f32) * s;
        }
        Ok(())
    }
}
