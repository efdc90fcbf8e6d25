use qtool_quantizers::int::rtn::{Bits, Convention, GroupSize, RtnConfig, ScaleDtype};
use qtool_quantizers::ptq::gptq::quantize as cpu_gptq;
use qtool_quantizers::ptq::{GptqConfig, Hessian};
include!("/tmp/helpers.rs");
fn main() {
    let (n, k, t) = (64, 256, 512);
    let x = activations(t, k, 4);
    let w = values(4 + 9, n * k);
    let mut hc = Hessian::new(k);
    hc.add(&x).unwrap();
    let h = hc.hessian().unwrap();
    for conv in [Convention::Gptq, Convention::Awq, Convention::CompressedTensors] {
        for (sd, sym) in [(ScaleDtype::F32, false), (ScaleDtype::BF16, true), (ScaleDtype::F16, false)] {
            for group in [32, -1] {
                let mut c = config(group, sym, true);
                c.rtn.convention = conv;
                c.scale_dtype = sd;
                println!("{conv:?} {sd:?} sym={sym} g={group}: {:?}", cpu_gptq(&w, n, k, &h, &c).err());
            }
        }
    }
}
