"""transformers loads qtool's compressed-tensors FP8 checkpoint of the tiny llama fixture and
runs a forward pass.

Three models on the same seeded input ids: the bf16 original (fixtures/tiny-llama), qtool's
compressed-tensors output loaded through transformers' compressed-tensors quantizer, and the
original with every quantized layer's weight replaced by qtool's own dequantization (from
dequant_layers). Pass: the loaded model's logits equal the dequantized-weights model's (the
loader decoded exactly qtool's values; max |Δ| ≤ 1e-2 allows for kernel order), and are close to
the original's (relative max |Δ| ≤ 0.1 for FP8, ≤ 0.25 for NVFP4: quantization error only;
NVFP4's 4-bit elements carry ~3x FP8's error — the first device run measured 0.111 for it).

Usage: python tests/device/check_transformers_ct_fp8.py [.dev/fp8/cases.json]
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM

NAMES = ("tiny-fp8_e4m3fn_scaled-compressed-tensors", "tiny-fp8_channel-compressed-tensors",
         "tiny-fp4_scaled-compressed-tensors")


def main():
    cases = {c["name"]: c for c in json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else ".dev/fp8/cases.json").read_text())}
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    ids = torch.randint(3, 256, (2, 24), device=dev)
    base = AutoModelForCausalLM.from_pretrained("fixtures/tiny-llama", torch_dtype=torch.bfloat16).to(dev).eval()
    with torch.no_grad():
        ref = base(ids).logits.float()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {dev}; "
          f"bf16 original max |logit| {ref.abs().max():.3f}")
    failed = False
    for name in NAMES:
        case = cases[name]
        try:
            model = AutoModelForCausalLM.from_pretrained(case["ckpt"], torch_dtype=torch.bfloat16).to(dev).eval()
            with torch.no_grad():
                got = model(ids).logits.float()
        except Exception as e:  # report, do not hide: a load failure is a FAIL
            print(f"transformers {name:<44} load/forward failed: {type(e).__name__}: {str(e)[:300]}")
            failed = True
            continue
        deq = AutoModelForCausalLM.from_pretrained("fixtures/tiny-llama", torch_dtype=torch.bfloat16).eval()
        sd = deq.state_dict()
        index = json.loads((Path(case["dequant"]) / "index.json").read_text())
        for item in index:
            w = np.fromfile(Path(case["dequant"]) / item["file"], dtype="<f4").reshape(item["rows"], item["cols"])
            sd[item["layer"] + ".weight"].copy_(torch.from_numpy(w).to(torch.bfloat16))
        deq = deq.to(dev)
        with torch.no_grad():
            want = deq(ids).logits.float()
        d_deq = (got - want).abs().max().item()
        d_ref = (got - ref).abs().max().item() / ref.abs().max().item()
        agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
        bound = 0.25 if "fp4" in name else 0.1
        ok = d_deq <= 1e-2 and d_ref <= bound
        failed |= not ok
        q_proj = model.model.layers[0].self_attn.q_proj
        kind = f"{type(q_proj).__name__}, weight {getattr(getattr(q_proj, 'weight', None), 'dtype', None)}"
        print(f"transformers {name:<44} vs qtool-dequant max|Δ| {d_deq:.2e}  vs bf16 rel max|Δ| {d_ref:.3f}  "
              f"argmax agree {agree:.0%}  ({len(index)} layers, q_proj: {kind}) {'OK' if ok else 'FAIL'}")
    print("RESULT transformers:", "FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
