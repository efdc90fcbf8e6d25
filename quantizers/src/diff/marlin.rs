//! vLLM's legacy Marlin checkpoint (`checkpoint_format: "marlin"`, what `qtool repack --target
//! marlin` writes), read back through [`crate::int::marlin::marlin_dequantize`]:
//!
//! ```text
//! L.B  I32 [K/16, 16N/pf]  tiled, permuted, packed codes (4-bit: [K/16, 2N]; 8-bit: [K/16, 4N])
//! L.s  F16 [G, N]          scales, permuted in 64- (grouped) or 32-entry (per-channel) chunks
//! ```
//! Symmetric codes (zero `2^(b−1)`), no act-order: the layout has no `g_idx`. Everything the
//! decoder needs is in the shapes: `K = 16 · rows(B)`, `N = cols(s)`, the bit width from
//! `cols(B) / N`, and the group size `K / G`. The scale permutation depends only on whether the
//! group is narrower than `K`, so `G = 1` reads the same whether the config says `group_size:
//! -1` or `group_size: K`.
//!
//! A Marlin word mixes 16 rows of K and 64 columns of N, so no range of `W[N, K]` can be read
//! without touching all of `B`: the view dequantizes the whole layer on first use and drops the
//! copy once every element has been handed out, so memory is bounded by the layers in flight,
//! not by the model.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use qtool_formats::{DType, TensorDType, TensorInfo, TensorRef};

use super::error::{DiffError, Side};
use super::registry::{ClaimContext, Dequantize, LogicalTensor, SchemeDecoder};
use crate::decode;
use crate::int::marlin::{marlin_dequantize, MarlinTensors};
use crate::int::marlin_check::MarlinKind;
use crate::int::rtn::{Bits, GroupSize};

/// The legacy Marlin decoder.
#[derive(Clone, Copy, Debug)]
pub struct Marlin;

impl SchemeDecoder for Marlin {
    fn name(&self) -> &'static str {
        "marlin"
    }

    fn claim<'a>(&self, cx: &mut ClaimContext<'a>) -> Result<Vec<LogicalTensor<'a>>, DiffError> {
        let layers: Vec<String> = cx
            .unclaimed()
            .filter(|(_, t)| t.dtype == TensorDType::St(DType::I32) && t.shape.len() == 2)
            .filter_map(|(_, t)| t.name.strip_suffix(".B").map(str::to_string))
            .collect();
        let mut out = Vec::new();
        for layer in layers {
            let (Some((bi, b)), Some((si, s))) =
                (cx.free(&format!("{layer}.B")), cx.free(&format!("{layer}.s")))
            else {
                continue;
            };
            cx.claim(bi);
            cx.claim(si);
            let view = View::new(cx, b, s);
            let (shape, scheme) = match &view {
                Ok(v) => (
                    vec![v.n, v.k],
                    format!(
                        "int{}_{}/marlin",
                        v.bits.get(),
                        match v.group_size {
                            GroupSize::PerChannel => "channel".to_string(),
                            GroupSize::Size(g) => format!("g{g}"),
                        }
                    ),
                ),
                Err(_) => (b.shape.clone(), "marlin".into()),
            };
            out.push(LogicalTensor {
                name: format!("{layer}.weight"),
                index: bi,
                shape,
                scheme,
                parts: vec![b, s],
                extras: Vec::new(),
                decoder: view.map(|v| Box::new(v) as Box<dyn Dequantize + 'a>),
            });
        }
        Ok(out)
    }
}

#[derive(Debug)]
struct View<'a> {
    b: TensorRef<'a>,
    s: TensorRef<'a>,
    bits: Bits,
    group_size: GroupSize,
    n: u64,
    k: u64,
    /// `W[N, K]` row-major while some of it is still to be handed out.
    cache: Mutex<Option<Arc<Vec<f32>>>>,
    /// Elements handed out so far; the cache is dropped when it first reaches `n · k`.
    served: AtomicU64,
    side: Side,
}

impl<'a> View<'a> {
    fn new(cx: &ClaimContext<'a>, b: &'a TensorInfo, s: &'a TensorInfo) -> Result<Self, String> {
        let shape_err = || {
            format!(
                "B {:?} and s {:?} ({}) do not fit the Marlin layout (B I32 [K/16, 2N] or \
                 [K/16, 4N], s F16 [G, N], N a multiple of 64, G dividing K)",
                b.shape,
                s.shape,
                s.dtype.name()
            )
        };
        let (&[kt, words], &[groups, n]) = (b.shape.as_slice(), s.shape.as_slice()) else {
            return Err(shape_err());
        };
        let k = kt.checked_mul(16).ok_or_else(shape_err)?;
        let bits = match n.checked_mul(2) {
            Some(w) if w == words => Bits::B4,
            Some(w) if w.checked_mul(2) == Some(words) => Bits::B8,
            _ => return Err(shape_err()),
        };
        if s.dtype != TensorDType::St(DType::F16)
            || n == 0
            || n % 64 != 0
            || k == 0
            || groups == 0
            || k % groups != 0
        {
            return Err(shape_err());
        }
        let group_size = if groups == 1 {
            GroupSize::PerChannel
        } else {
            GroupSize::Size((k / groups) as usize)
        };
        let b_ref = cx.tensor_ref(b);
        decode::validate(&b_ref).map_err(|e| e.to_string())?;
        let s_ref = cx.tensor_ref(s);
        decode::validate(&s_ref).map_err(|e| e.to_string())?;
        Ok(View {
            b: b_ref,
            s: s_ref,
            bits,
            group_size,
            n,
            k,
            cache: Mutex::new(None),
            served: AtomicU64::new(0),
            side: cx.side,
        })
    }

    fn layout_err(&self, msg: String) -> DiffError {
        DiffError::Layout { side: self.side, tensor: self.b.info.name.clone(), msg }
    }

    /// The whole layer as `W[N, K]`.
    fn dequantized(&self) -> Result<Vec<f32>, DiffError> {
        let b: Vec<i32> = self
            .b
            .data
            .chunks_exact(4)
            .map(|w| i32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let mut s = vec![0f32; self.s.info.numel() as usize];
        decode::decode_into(self.s, 0, &mut s)
            .map_err(|source| DiffError::Decode { side: self.side, source })?;
        let t = MarlinTensors {
            kind: MarlinKind::Legacy,
            bits: self.bits,
            n: self.n as usize,
            k: self.k as usize,
            group_size: self.group_size,
            b,
            s,
            zp: None,
            g_idx: None,
            sort_indices: None,
        };
        marlin_dequantize(&t).map_err(|e| self.layout_err(e.to_string()))
    }
}

impl Dequantize for View<'_> {
    fn granule(&self) -> u64 {
        1
    }

    fn decode(&self, start: u64, out: &mut [f32]) -> Result<(), DiffError> {
        let total = self.n * self.k;
        let len = out.len() as u64;
        let end = start.checked_add(len).filter(|&e| e <= total);
        let Some(end) = end else {
            return Err(self.layout_err(format!(
                "elements {start}..{} lie outside the tensor",
                start.saturating_add(len)
            )));
        };
        let w = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            match &*cache {
                Some(w) => Arc::clone(w),
                None => {
                    let w = Arc::new(self.dequantized()?);
                    *cache = Some(Arc::clone(&w));
                    w
                }
            }
        };
        out.copy_from_slice(&w[start as usize..end as usize]);
        let before = self.served.fetch_add(len, Ordering::AcqRel);
        if before < total && before + len >= total {
            *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use qtool_formats::{ContainerFormat, TensorSource};

    use super::*;
    use crate::diff::matching::Input;
    use crate::diff::registry::Registry;
    use crate::int::marlin::pack_marlin;
    use crate::int::rtn::{dequantize, QuantizedInt};

    /// Tensors held in memory, laid out back to back.
    #[derive(Debug)]
    struct Mem {
        tensors: Vec<TensorInfo>,
        bytes: Vec<u8>,
    }

    impl Mem {
        fn new(parts: Vec<(&str, DType, Vec<u64>, Vec<u8>)>) -> Self {
            let (mut tensors, mut bytes) = (Vec::new(), Vec::new());
            for (name, dtype, shape, data) in parts {
                tensors.push(TensorInfo {
                    name: name.into(),
                    dtype: TensorDType::St(dtype),
                    shape,
                    file: 0,
                    offset: bytes.len() as u64,
                    nbytes: data.len() as u64,
                });
                bytes.extend(data);
            }
            Mem { tensors, bytes }
        }
    }

    impl TensorSource for Mem {
        fn format(&self) -> ContainerFormat {
            ContainerFormat::Safetensors
        }
        fn files(&self) -> &[PathBuf] {
            &[]
        }
        fn tensors(&self) -> &[TensorInfo] {
            &self.tensors
        }
        fn data(&self, info: &TensorInfo) -> &[u8] {
            &self.bytes[info.offset as usize..(info.offset + info.nbytes) as usize]
        }
        fn find(&self, name: &str) -> Option<&TensorInfo> {
            self.tensors.iter().find(|t| t.name == name)
        }
        fn metadata(&self) -> serde_json::Map<String, serde_json::Value> {
            serde_json::Map::new()
        }
    }

    /// A symmetric 4-bit layer packed by the Marlin exporter's packer, with scales exact in F16.
    fn layer(n: usize, k: usize, group_size: GroupSize) -> (QuantizedInt, Mem) {
        let groups = group_size.num_groups(k).unwrap();
        let q = QuantizedInt {
            bits: Bits::B4,
            n,
            k,
            group_size,
            symmetric: true,
            codes: (0..n * k).map(|i| ((i * 7 + i / 13) % 16) as u8).collect(),
            scales: (0..groups * n).map(|i| (1 + i % 5) as f32 / 64.0).collect(),
            zeros: vec![8; groups * n],
            g_idx: None,
        };
        let m = pack_marlin(&q, MarlinKind::Legacy).unwrap();
        let b: Vec<u8> = m.b.iter().flat_map(|w| w.to_le_bytes()).collect();
        let s: Vec<u8> = m.s.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
        let [br, bc] = m.b_shape();
        let mem = Mem::new(vec![
            ("l.B", DType::I32, vec![br as u64, bc as u64], b),
            ("l.s", DType::F16, vec![groups as u64, n as u64], s),
        ]);
        (q, mem)
    }

    #[test]
    fn ranges_read_twice_match_the_reference_dequantization() {
        for (group_size, scheme) in [
            (GroupSize::Size(128), "int4_g128/marlin"),
            (GroupSize::PerChannel, "int4_channel/marlin"),
        ] {
            let (q, mem) = layer(128, 256, group_size);
            let want = dequantize(&q).unwrap();
            let decoded = Registry::standard().decode(&Input::new(&mem), Side::Cand).unwrap();
            assert_eq!(decoded.tensors.len(), 1);
            let t = &decoded.tensors[0];
            assert_eq!((t.name.as_str(), t.shape.as_slice()), ("l.weight", &[128u64, 256][..]));
            assert_eq!(t.scheme, scheme);
            assert_eq!(t.parts.len(), 2);
            let d = t.decoder.as_ref().unwrap();
            // Odd-sized ranges; the second pass runs after the cached copy was released.
            for _ in 0..2 {
                let mut got = vec![f32::NAN; want.len()];
                for (i, chunk) in got.chunks_mut(1000).enumerate() {
                    d.decode(i as u64 * 1000, chunk).unwrap();
                }
                assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
    }

    #[test]
    fn a_range_past_the_end_is_a_layout_error() {
        let (_, mem) = layer(64, 128, GroupSize::PerChannel);
        let decoded = Registry::standard().decode(&Input::new(&mem), Side::Ref).unwrap();
        let d = decoded.tensors[0].decoder.as_ref().unwrap();
        let mut out = vec![0f32; 2];
        let err = d.decode(64 * 128 - 1, &mut out).unwrap_err();
        assert!(matches!(err, DiffError::Layout { ref tensor, .. } if tensor == "l.B"), "{err}");
    }
}
