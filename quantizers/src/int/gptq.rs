//! GPTQ checkpoint tensors (AutoGPTQ `qlinear_cuda_old.py` / GPTQModel; formats.md §3.1).
//!
//! ```text
//!  qweight [K/pf, N] int32 — packed along K:      qzeros [G, N/pf] int32 — packed along N:
//!    word (j, n) = Σ_t q[n][pf·j + t] << b·t         word (g, c) = Σ_t z'[g][pf·c + t] << b·t
//!                                                   v1: z' = zero − 1     v2: z' = zero
//!  scales [G, N] (fp16 in files; f32 here)         g_idx [K] int32, default k // G
//!
//!  dequant: w[n][k] = scales[g][n] · (q[n][k] − zero[g][n]),  g = g_idx[k]
//! ```
//!
//! v1 is what AutoGPTQ writes (`zeros -= 1` before packing); v2 (GPTQModel `gptq_v2`) stores the
//! true zero. Converting packed words adds/subtracts `0x11111111` (4-bit) or `0x01010101`
//! (8-bit) per word (GPTQModel `convert_gptq_v1_to_v2_format_module`); that word arithmetic is
//! per-field exact only when no field carries or borrows, which [`qzeros_v1_to_v2`] and
//! [`qzeros_v2_to_v1`] check first. A zero point of 0 has no v1 encoding at all.

use super::error::{IntError, IntResult};
use super::pack::{identity, pack_cols, pack_rows, unpack_cols, unpack_rows, words_for};
use super::rtn::{check_len, g_idx_from_i32, g_idx_or_default, Bits, GroupSize, QuantizedInt};

/// Which zero-point convention `qzeros` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GptqZeros {
    /// AutoGPTQ: stores `zero − 1`.
    V1,
    /// GPTQModel `gptq_v2`: stores `zero`.
    V2,
}

/// The four tensors of one GPTQ linear layer (names belong to the exporter).
#[derive(Debug, Clone, PartialEq)]
pub struct GptqTensors {
    pub bits: Bits,
    pub n: usize,
    pub k: usize,
    pub zeros_format: GptqZeros,
    /// `[K/pf, N]`.
    pub qweight: Vec<i32>,
    /// `[G, N/pf]`.
    pub qzeros: Vec<i32>,
    /// `[G, N]`.
    pub scales: Vec<f32>,
    /// `[K]`.
    pub g_idx: Vec<i32>,
}

impl GptqTensors {
    pub fn qweight_shape(&self) -> [usize; 2] {
        [self.k / self.bits.per_word(), self.n]
    }

    pub fn qzeros_shape(&self) -> [usize; 2] {
        [self.scales.len() / self.n.max(1), self.n / self.bits.per_word()]
    }

    pub fn scales_shape(&self) -> [usize; 2] {
        [self.scales.len() / self.n.max(1), self.n]
    }
}

fn check_pf(n: usize, k: usize, bits: Bits) -> IntResult<()> {
    let pf = bits.per_word();
    if k % pf != 0 {
        return Err(IntError::NotMultiple {
            format: "GPTQ qweight",
            dim: "K",
            value: k,
            multiple: pf,
        });
    }
    if n % pf != 0 {
        return Err(IntError::NotMultiple {
            format: "GPTQ qzeros",
            dim: "N",
            value: n,
            multiple: pf,
        });
    }
    Ok(())
}

/// Packs `q` into GPTQ tensors with the given zero convention.
pub fn pack_gptq(q: &QuantizedInt, zeros_format: GptqZeros) -> IntResult<GptqTensors> {
    q.validate()?;
    let (n, k, bits) = (q.n, q.k, q.bits);
    check_pf(n, k, bits)?;
    let groups = q.num_groups();

    // qweight wants q[k][n]: pack the transposed codes along their rows (K).
    let q_kn = super::pack::transpose(&q.codes, n, k);
    let qweight = pack_rows(&q_kn, k, n, bits);

    let stored: Vec<u8> = match zeros_format {
        GptqZeros::V2 => q.zeros.clone(),
        GptqZeros::V1 => {
            if let Some(i) = q.zeros.iter().position(|&z| z == 0) {
                return Err(IntError::GptqV1ZeroUnrepresentable { group: i / n, col: i % n });
            }
            q.zeros.iter().map(|&z| z - 1).collect()
        }
    };
    let qzeros = pack_cols(&stored, groups, n, bits, identity(bits));
    let g_idx = g_idx_or_default(q.g_idx.as_deref(), k, q.group_size)
        .into_iter()
        .map(|g| g as i32)
        .collect();
    Ok(GptqTensors { bits, n, k, zeros_format, qweight, qzeros, scales: q.scales.clone(), g_idx })
}

/// Reads GPTQ tensors back. `group_size` and `symmetric` come from `quantize_config.json`;
/// `symmetric` is checked against the stored zeros.
pub fn unpack_gptq(
    t: &GptqTensors,
    group_size: GroupSize,
    symmetric: bool,
) -> IntResult<QuantizedInt> {
    let (n, k, bits) = (t.n, t.k, t.bits);
    if n == 0 || k == 0 {
        return Err(IntError::EmptyShape { n, k });
    }
    check_pf(n, k, bits)?;
    let groups = group_size.num_groups(k)?;
    check_len("qweight", k / bits.per_word(), n, t.qweight.len())?;
    check_len("qzeros", groups, words_for(n, bits), t.qzeros.len())?;
    check_len("scales", groups, n, t.scales.len())?;
    let g_idx = g_idx_from_i32(&t.g_idx, k, group_size)?;

    let q_kn = unpack_rows(&t.qweight, k, n, bits);
    let codes = super::pack::transpose(&q_kn, k, n);
    let stored = unpack_cols(&t.qzeros, groups, n, bits, identity(bits));
    let zeros = match t.zeros_format {
        GptqZeros::V2 => stored,
        // A stored field of all ones would mean zero = 2^b, which no code range holds.
        GptqZeros::V1 => stored
            .iter()
            .enumerate()
            .map(|(i, &z)| {
                if u32::from(z) == bits.max_code() {
                    Err(IntError::CodeOutOfRange {
                        what: "qzeros (v1, zero−1)",
                        index: i,
                        value: u32::from(z) + 1,
                        bits: bits.get(),
                        max: bits.max_code(),
                    })
                } else {
                    Ok(z + 1)
                }
            })
            .collect::<IntResult<Vec<u8>>>()?,
    };
    let q = QuantizedInt {
        bits,
        n,
        k,
        group_size,
        symmetric,
        codes,
        scales: t.scales.clone(),
        zeros,
        g_idx,
    };
    q.validate()?;
    Ok(q)
}

/// `0x11111111` (4-bit) / `0x01010101` (8-bit): one unit in every field of a word.
pub const fn zero_unit(bits: Bits) -> u32 {
    match bits {
        Bits::B4 => 0x1111_1111,
        Bits::B8 => 0x0101_0101,
    }
}

fn check_fields(words: &[i32], bits: Bits, bad: u32, direction: &'static str) -> IntResult<()> {
    let pf = bits.per_word();
    for (w, &word) in words.iter().enumerate() {
        for f in 0..pf {
            let v = (word as u32 >> (bits.get() * f as u32)) & bits.mask();
            if v == bad {
                return Err(IntError::ZeroConversionCarry {
                    word: w,
                    field: f,
                    value: v,
                    direction,
                });
            }
        }
    }
    Ok(())
}

/// Converts packed v1 `qzeros` to v2 in place (`+0x11111111` per 4-bit word).
pub fn qzeros_v1_to_v2(qzeros: &mut [i32], bits: Bits) -> IntResult<()> {
    check_fields(qzeros, bits, bits.max_code(), "v1 -> v2")?;
    for w in qzeros.iter_mut() {
        *w = (*w as u32).wrapping_add(zero_unit(bits)) as i32;
    }
    Ok(())
}

/// Converts packed v2 `qzeros` to v1 in place (`−0x11111111` per 4-bit word).
pub fn qzeros_v2_to_v1(qzeros: &mut [i32], bits: Bits) -> IntResult<()> {
    check_fields(qzeros, bits, 0, "v2 -> v1")?;
    for w in qzeros.iter_mut() {
        *w = (*w as u32).wrapping_sub(zero_unit(bits)) as i32;
    }
    Ok(())
}

impl GptqTensors {
    /// The same layer with the other zero convention.
    pub fn with_zeros(&self, target: GptqZeros) -> IntResult<GptqTensors> {
        let mut out = self.clone();
        match (self.zeros_format, target) {
            (GptqZeros::V1, GptqZeros::V2) => qzeros_v1_to_v2(&mut out.qzeros, self.bits)?,
            (GptqZeros::V2, GptqZeros::V1) => qzeros_v2_to_v1(&mut out.qzeros, self.bits)?,
            _ => {}
        }
        out.zeros_format = target;
        Ok(out)
    }
}
