//! FP8 GEMM vs cuBLAS BF16 at 8192³ (target ≥ 2.0×), then the other stored-format GEMMs vs
//! cuBLAS BF16 at a few shapes, as one compact table with TFLOP/s and weight bandwidth.
//!
//! `cargo run --release -p qtool-kernels --example bench_fp8 [-- --reps N] [-- --skip-big]`
//! Weights are random bytes of each format (speed does not depend on the values; correctness is
//! what `tests/gpu_ops.rs` checks). Times are CUDA-event medians of one call, including the
//! activation quantization / dequant passes each operation runs, excluding host copies. FP8
//! rows at 8192³ come in pairs: `gemm` = the GEMM alone on FP8 activations quantized before
//! (as runtimes run it when the previous op emits FP8), `+quant` = including the activation
//! quantization. The BF16 baseline is the faster of cuBLAS GemmEx and cuBLASLt autotuned over
//! the same candidate search the FP8 plans get (`QTOOL_LT_EXHAUSTIVE=0`: heuristic top-32 only).

use half::{bf16, f16};
use qtool_kernels::fp8::Fp8Out;
use qtool_kernels::seeded::words as noise;
use qtool_kernels::{
    timing::tflops, Fp8Kind, Fp8Options, Fp8Path, Fp8Scale, GemmRun, GgmlType, Gpu, Int4Weights,
    KResult, NibbleOrder, ScaleLayout,
};

fn bf16s(seed: u64, len: usize) -> Vec<bf16> {
    noise(seed, len).into_iter().map(|v| bf16::from_f32(v as f32 / u32::MAX as f32 - 0.5)).collect()
}

/// Random E4M3 bytes without NaN codes.
fn fp8_bytes(seed: u64, len: usize) -> Vec<u8> {
    noise(seed, len).into_iter().map(|v| (v as u8) & 0xF7 | 0x10).collect()
}

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    noise(seed, len.div_ceil(4)).into_iter().flat_map(|v| v.to_le_bytes()).take(len).collect()
}

fn words(seed: u64, len: usize) -> Vec<i32> {
    noise(seed, len).into_iter().map(|v| v as i32).collect()
}

struct Row {
    op: String,
    m: usize,
    n: usize,
    k: usize,
    micros: f64,
    base: f64,
    weight_bytes: usize,
    backend: String,
}

fn print_table(rows: &[Row]) {
    println!(
        "| {:<22} | {:>5} | {:>5} | {:>5} | {:>9} | {:>8} | {:>8} | {:>7} | backend |",
        "op", "m", "n", "k", "µs", "TFLOP/s", "W GB/s", "vs bf16"
    );
    println!("|{}|", ["-"; 9].iter().map(|_| "---").collect::<Vec<_>>().join("|"));
    for r in rows {
        println!(
            "| {:<22} | {:>5} | {:>5} | {:>5} | {:>9.1} | {:>8.1} | {:>8.0} | {:>6.2}× | {} |",
            r.op,
            r.m,
            r.n,
            r.k,
            r.micros,
            tflops(r.m, r.n, r.k, r.micros),
            r.weight_bytes as f64 / (r.micros * 1e-6) / 1e9,
            r.base / r.micros,
            r.backend
        );
    }
}

fn main() -> KResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let reps = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let skip_big = args.iter().any(|a| a == "--skip-big");
    let gpu = match Gpu::open(0) {
        Ok(g) => g,
        Err(e) => {
            println!("skipped: {e}");
            return Ok(());
        }
    };
    let d = gpu.device();
    let clock = gpu
        .attribute(cudarc_clock())
        .map(|khz| format!("{} MHz", khz / 1000))
        .unwrap_or_else(|_| "n/a".into());
    println!(
        "device: {} (cc {}.{}, {} SMs, {:.0} GiB, max SM clock {clock}), driver {}, arch {}, NVRTC {:?}",
        d.name,
        d.compute_capability.0,
        d.compute_capability.1,
        gpu.sm_count()?,
        d.total_memory_bytes as f64 / (1u64 << 30) as f64,
        gpu.driver_version(),
        gpu.arch(),
        qtool_kernels::nvrtc::nvrtc_version()?
    );
    let mut rows = Vec::new();
    let mut push =
        |op: &str, (m, n, k): (usize, usize, usize), run: &GemmRun, base: f64, wbytes: usize| {
            rows.push(Row {
                op: op.into(),
                m,
                n,
                k,
                micros: run.micros,
                base,
                weight_bytes: wbytes,
                backend: run.backend.clone(),
            });
        };

    if !skip_big {
        let (m, n, k) = (8192, 8192, 8192);
        let dims = (m, n, k);
        let x = bf16s(1, m * k);
        let w16 = bf16s(2, n * k);
        let base = gpu.gemm_bf16(&x, &w16, m, n, k, reps)?;
        drop(w16);
        push("bf16 baseline (best)", dims, &base, base.micros, n * k * 2);
        let b = base.micros;
        let w8 = fp8_bytes(3, n * k);
        let fast = Fp8Options::default();
        let precise = Fp8Options { fast_accum: false, ..Default::default() };
        let post = Fp8Options { path: Fp8Path::PostScale, ..Default::default() };
        let tensor = Fp8Scale::PerTensor(0.01);
        let channel = Fp8Scale::PerChannel((0..n).map(|i| 0.01 + 1e-6 * i as f32).collect());
        let e4 = Fp8Kind::E4M3;
        let mut fp8 = |label: &str, scale: &Fp8Scale, input: Option<f32>, o: Fp8Options, out| {
            let r = gpu.fp8_gemm_run(&x, m, n, k, &w8, e4, scale, input, o, out, reps)?;
            let gemm_only = GemmRun { micros: r.gemm_micros, ..r.run.clone() };
            push(&format!("{label} gemm"), dims, &gemm_only, b, n * k);
            push(&format!("{label} +quant"), dims, &r.run, b, n * k);
            KResult::Ok(r.run.out)
        };
        let t_bf16 = fp8("fp8 tensor static", &tensor, Some(0.05), fast, Fp8Out::Bf16)?;
        let t_f32 = fp8("fp8 tensor static f32out", &tensor, Some(0.05), fast, Fp8Out::F32)?;
        fp8("fp8 tensor fp32acc", &tensor, Some(0.05), precise, Fp8Out::Bf16)?;
        fp8("fp8 tensor dynamic", &tensor, None, fast, Fp8Out::Bf16)?;
        let c_auto = fp8("fp8 channel static", &channel, Some(0.05), fast, Fp8Out::Bf16)?;
        let c_post = fp8("fp8 channel postscale", &channel, Some(0.05), post, Fp8Out::Bf16)?;
        let c_f32 = fp8("fp8 channel f32out", &channel, Some(0.05), fast, Fp8Out::F32)?;
        // The BF16 outputs are the FP32 ones rounded once (≤ 2^-8 relative): checks the BF16 D
        // path and the fused per-channel scale at full size.
        println!(
            "8192³ consistency (max |a-b| / max |b|): tensor bf16 vs f32 out {:.2e}; channel \
             auto bf16 vs f32 out {:.2e}; channel post-scale bf16 vs f32 out {:.2e}; channel \
             auto vs post-scale (both bf16) {:.2e}",
            rel(&t_bf16, &t_f32),
            rel(&c_auto, &c_f32),
            rel(&c_post, &c_f32),
            rel(&c_auto, &c_post),
        );
    }

    let (n, k) = (8192, 8192);
    let w16 = bf16s(5, n * k);
    for m in [1usize, 8, 64] {
        let x = bf16s(6 + m as u64, m * k);
        let xh: Vec<f16> = x.iter().map(|v| f16::from_f32(v.to_f32())).collect();
        let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        let base = gpu.gemm_bf16(&x, &w16, m, n, k, reps)?;
        push("bf16 cublas", (m, n, k), &base, base.micros, n * k * 2);
        let b = base.micros;
        let w8 = fp8_bytes(7, n * k);
        let r = gpu.fp8_gemm(
            &x,
            m,
            n,
            k,
            &w8,
            Fp8Kind::E4M3,
            &Fp8Scale::PerTensor(0.01),
            Some(0.05),
            reps,
        )?;
        push("fp8 e4m3 tensor static", (m, n, k), &r, b, n * k);
        let r = gpu.fp8_gemm(
            &x,
            m,
            n,
            k,
            &w8,
            Fp8Kind::E4M3,
            &Fp8Scale::Block128(vec![0.01; 64 * 64]),
            None,
            reps,
        )?;
        push("fp8 e4m3 block128", (m, n, k), &r, b, n * k);
        let packed = bytes(8, n * k / 2);
        let scales = fp8_bytes(9, n * k / 16);
        let r = gpu.nvfp4_gemm(
            &x,
            m,
            n,
            k,
            &packed,
            NibbleOrder::EvenHigh,
            &scales,
            ScaleLayout::Swizzled,
            0.01,
            reps,
        )?;
        push("nvfp4 swizzled (emul.)", (m, n, k), &r, b, n * k / 2 + n * k / 16);
        let group = 128;
        let g = k / group;
        let sc: Vec<f32> = vec![0.01; g * n];
        let qw = words(10, k / 8 * n);
        let qz = words(11, g * n / 8);
        let r = gpu.int4_gemm(
            &xh,
            m,
            n,
            k,
            Int4Weights::Gptq {
                qweight: &qw,
                qzeros: &qz,
                scales: &sc,
                g_idx: None,
                v2: false,
                group,
            },
            reps,
        )?;
        push("int4 gptq g128", (m, n, k), &r, b, n * k / 2);
        let r = gpu.int4_gemm(
            &xh,
            m,
            n,
            k,
            Int4Weights::Awq { qweight: &qw, qzeros: &qz, scales: &sc, group },
            reps,
        )?;
        push("int4 awq g128", (m, n, k), &r, b, n * k / 2);
        let r = gpu.int4_gemm(
            &xh,
            m,
            n,
            k,
            Int4Weights::Compressed {
                packed: &qw,
                scales: &sc,
                zero_points: None,
                g_idx: None,
                group,
            },
            reps,
        )?;
        push("int4 compressed g128", (m, n, k), &r, b, n * k / 2);
        for ty in [GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
            let len = n * ty.row_size(k as u64).unwrap() as usize;
            // Random blocks with sane f16 scales: bytes, then the scale fields are rewritten.
            let mut blocks = bytes(12, len);
            let (bs, off): (usize, &[usize]) = match ty {
                GgmlType::Q8_0 => (34, &[0]),
                GgmlType::Q4_K => (144, &[0, 2]),
                _ => (210, &[208]),
            };
            for b in blocks.chunks_exact_mut(bs) {
                for &o in off {
                    b[o..o + 2].copy_from_slice(&f16::from_f32(0.01).to_le_bytes());
                }
            }
            let r = gpu.gguf_gemm(&xf, m, n, k, ty, &blocks, reps)?;
            push(&format!("gguf {}", ty.name()), (m, n, k), &r, b, len);
        }
    }
    print_table(&rows);
    Ok(())
}

/// max |a − b| / max |b|.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64)).max(1e-30);
    a.iter().zip(b).fold(0.0f64, |m, (&p, &q)| m.max((p as f64 - q as f64).abs())) / scale
}

fn cudarc_clock() -> cudarc::driver::sys::CUdevice_attribute {
    cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CLOCK_RATE
}
