"""compressed-tensors 0.20's own decompressors decode qtool's compressed-tensors FP8 / NVFP4 /
MXFP4 / MXFP8 outputs to qtool's dequantization.

For every `compressed-tensors` case of .dev/fp8/cases.json: `config.json`'s
`quantization_config` is validated by `QuantizationConfig` (pydantic, `extra="forbid"` on the
schemes), each config group's scheme picks its compressor the way `decompress_module` does
when loading (`infer_module_format(Linear, scheme)`; the config's global `format` is *not*
what 0.20 uses per module, so the inferred one must equal it — `naive-quantized` for a
weight-only FP8 config saying `float-quantized` counts as equal, both decompress alike), and that compressor's
`decompress()` runs on the layer's stored tensors. Pass: the decompressed weight equals
qtool's dequantization, rounded to the weight dtype, in every element (up to one unit in the
last place for NVFP4, where compressed-tensors divides by the global scale in the weight dtype).

Usage: python tests/device/check_ct_float.py [.dev/fp8/cases.json]
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from compressed_tensors.compressors import BaseCompressor
from compressed_tensors.compressors.format import infer_module_format
from compressed_tensors.quantization import QuantizationConfig
from safetensors import safe_open

DTYPE = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
PARTS = ("weight", "weight_packed", "weight_scale", "weight_global_scale", "weight_zero_point")


def ulps(a, b):
    ia = a.contiguous().view(torch.int16 if a.element_size() == 2 else torch.int32).to(torch.int64)
    ib = b.contiguous().view(torch.int16 if b.element_size() == 2 else torch.int32).to(torch.int64)
    d = torch.where((a >= 0) == (b >= 0), (ia - ib).abs(), torch.full_like(ia, 1 << 40))
    return torch.where(a == b, torch.zeros_like(d), d)


def main():
    cases = json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else ".dev/fp8/cases.json").read_text())
    failed = False
    for case in cases:
        if case["layout"] != "compressed-tensors":
            continue
        ckpt = Path(case["ckpt"])
        qc = json.loads((ckpt / "config.json").read_text())["quantization_config"]
        config = QuantizationConfig.model_validate(qc)
        scheme = next(iter(config.config_groups.values()))
        fmt = infer_module_format(torch.nn.Linear, scheme)
        compressor = BaseCompressor.get_value_from_registry(fmt.value)
        index = json.loads((Path(case["dequant"]) / "index.json").read_text())
        handles = [safe_open(str(p), framework="pt") for p in sorted(ckpt.glob("*.safetensors"))]
        worst, exact, total = 0, 0, 0
        for item in index:
            layer = item["layer"]
            f = next(h for h in handles if any(f"{layer}.{p}" in h.keys() for p in PARTS))
            sd = {p: f.get_tensor(f"{layer}.{p}") for p in PARTS if f"{layer}.{p}" in f.keys()}
            out = compressor.decompress(sd, scheme)["weight"]
            dtype = DTYPE[item["dtype"]]
            ours = np.fromfile(Path(case["dequant"]) / item["file"], dtype="<f4").reshape(item["rows"], item["cols"])
            want = torch.from_numpy(ours).to(dtype)
            got = out.to(dtype)
            assert got.shape == want.shape, (layer, got.shape, want.shape)
            u = ulps(got, want)
            worst = max(worst, int(u.max()))
            exact += int((u == 0).sum())
            total += u.numel()
        allowed = 1 if qc["format"] == "nvfp4-pack-quantized" else 0
        # float-quantized only differs from naive-quantized in when it is inferred (with input
        # activations); their decompress() is the same code.
        same = {fmt.value, qc["format"]} <= {"float-quantized", "naive-quantized"} or fmt.value == qc["format"]
        ok = same and worst <= allowed
        failed |= not ok
        print(f"compressed-tensors {case['name']:<44} config {qc['format']:<22} inferred {fmt.value:<22} "
              f"{len(index):2} layers  exact {exact}/{total}  max {worst} ulp  {'OK' if ok else 'FAIL'}")
    print("RESULT compressed-tensors:", "FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
