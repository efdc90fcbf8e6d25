//! GPTQ of one layer from raw files, for comparisons against other implementations
//! (`tests/device/check_gptq_reference.py`).
//!
//! `ptq_layer DIR` reads `DIR/meta.json` (`n`, `k`, `t`, `bits`, `group_size`, `sym`,
//! `act_order`, `static_groups`, `damp`, `block_size`), `DIR/w.f32` (`[n, k]`) and `DIR/x.f32`
//! (`[t, k]`), little-endian f32, and writes `DIR/qtool_deq.f32` (`[n, k]`), `qtool_codes.u8`,
//! `qtool_scales.f32` (`[G, n]`), `qtool_zeros.u8` and `qtool_time.json`.

use std::path::Path;
use std::time::Instant;

use qtool_quantizers::int::{dequantize, Bits, Convention, GroupSize, RtnConfig, ScaleDtype};
use qtool_quantizers::ptq::{gptq, GptqConfig, Hessian};

fn read_f32(p: &Path) -> Vec<f32> {
    let b = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn write_f32(p: &Path, v: &[f32]) {
    std::fs::write(p, v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: ptq_layer DIR");
    let dir = Path::new(&dir);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).expect("meta.json"))
            .expect("json");
    let get = |k: &str| meta[k].as_f64().unwrap_or_else(|| panic!("meta.{k}"));
    let (n, k) = (get("n") as usize, get("k") as usize);
    let w = read_f32(&dir.join("w.f32"));
    let x = read_f32(&dir.join("x.f32"));
    let group = GroupSize::from_i64(get("group_size") as i64).expect("group");
    let rtn = RtnConfig {
        bits: Bits::from_u32(get("bits") as u32).expect("bits"),
        group_size: group,
        symmetric: meta["sym"].as_bool().unwrap_or(true),
        convention: Convention::Gptq,
    };
    let mut cfg = GptqConfig::new(rtn, ScaleDtype::F32);
    cfg.act_order = meta["act_order"].as_bool().unwrap_or(false);
    cfg.static_groups = meta["static_groups"].as_bool().unwrap_or(false);
    cfg.damp = get("damp");
    cfg.block_size = get("block_size") as usize;
    let t0 = Instant::now();
    let mut h = Hessian::new(k);
    h.add(&x).expect("activations");
    let hess = h.hessian().expect("hessian");
    let t1 = Instant::now();
    let out = gptq::quantize(&w, n, k, &hess, &cfg).expect("gptq");
    let t2 = Instant::now();
    write_f32(&dir.join("qtool_deq.f32"), &dequantize(&out.q).expect("dequantize"));
    std::fs::write(dir.join("qtool_codes.u8"), &out.q.codes).unwrap();
    write_f32(&dir.join("qtool_scales.f32"), &out.q.scales);
    std::fs::write(dir.join("qtool_zeros.u8"), &out.q.zeros).unwrap();
    let timing = serde_json::json!({
        "hessian_s": (t1 - t0).as_secs_f64(),
        "gptq_s": (t2 - t1).as_secs_f64(),
        "loss": out.loss,
        "fallback": out.fallback,
        "threads": rayon::current_num_threads(),
    });
    std::fs::write(dir.join("qtool_time.json"), timing.to_string()).unwrap();
}
