"""comfy-kitchen (the library ComfyUI loads quantized layers with) decodes qtool's ComfyUI
outputs to qtool's own dequantization.

For every `comfy`-layout case of .dev/fp8/cases.json (tests/device/prepare_fp8_checks.sh):
the layer is rebuilt exactly as ComfyUI's `_load_quantized_module` does (formats.md §1.3:
`weight` as the storage dtype, `weight_scale` a float32 scalar for FP8, `weight_scale` viewed
as float8_e4m3fn / float8_e8m0fnu block scales and `weight_scale_2` for NVFP4 / MXFP8,
`orig_shape` the logical shape), wrapped in comfy-kitchen's `QuantizedTensor` with the layout
class its `comfy_quant` format names, and dequantized on CPU (the eager backend) and, when
present, on CUDA. Pass: every value equals qtool's dequantization rounded to the weight dtype,
or differs by at most one unit in its last place (comfy-kitchen rounds the NVFP4 product
`tensor_scale · block_scale` to the weight dtype before the element multiply; qtool multiplies
in f32).

Usage: python tests/device/check_comfy_kitchen.py [.dev/fp8/cases.json]
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from comfy_kitchen.tensor import (  # noqa: F401  (importing registers the layouts)
    TensorCoreFP8Layout,
    TensorCoreMXFP8Layout,
    TensorCoreNVFP4Layout,
)
from comfy_kitchen.tensor.base import QuantizedTensor

DTYPE = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
LAYOUT = {
    "float8_e4m3fn": ("TensorCoreFP8Layout", torch.float8_e4m3fn),
    "float8_e5m2": ("TensorCoreFP8Layout", torch.float8_e5m2),
    "nvfp4": ("TensorCoreNVFP4Layout", torch.uint8),
    "mxfp8": ("TensorCoreMXFP8Layout", torch.float8_e4m3fn),
}


def load_layer(f, layer, rows, cols, dtype):
    conf = json.loads(f.get_tensor(f"{layer}.comfy_quant").numpy().tobytes())
    name, storage = LAYOUT[conf["format"]]
    w = f.get_tensor(f"{layer}.weight").to(storage)
    shape = (rows, cols)
    if name == "TensorCoreFP8Layout":
        params = TensorCoreFP8Layout.Params(scale=f.get_tensor(f"{layer}.weight_scale"), orig_dtype=dtype, orig_shape=shape)
    elif name == "TensorCoreNVFP4Layout":
        params = TensorCoreNVFP4Layout.Params(
            scale=f.get_tensor(f"{layer}.weight_scale_2"), orig_dtype=dtype, orig_shape=shape,
            block_scale=f.get_tensor(f"{layer}.weight_scale").view(torch.float8_e4m3fn))
    else:
        params = TensorCoreMXFP8Layout.Params(
            scale=f.get_tensor(f"{layer}.weight_scale").view(torch.float8_e8m0fnu), orig_dtype=dtype, orig_shape=shape)
    return conf["format"], w, name, params


def ulps(a, b):
    """|a − b| in units in the last place of `a`'s dtype, elementwise (both same dtype)."""
    ia = a.contiguous().view(torch.int16 if a.element_size() == 2 else torch.int32).to(torch.int64)
    ib = b.contiguous().view(torch.int16 if b.element_size() == 2 else torch.int32).to(torch.int64)
    same_sign = (a >= 0) == (b >= 0)
    d = torch.where(same_sign, (ia - ib).abs(), torch.full_like(ia, 1 << 40))
    return torch.where(a == b, torch.zeros_like(d), d)


def main():
    cases = json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else ".dev/fp8/cases.json").read_text())
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    failed = False
    for case in cases:
        if case["layout"] != "comfy":
            continue
        index = json.loads((Path(case["dequant"]) / "index.json").read_text())
        ckpt = Path(case["ckpt"])
        files = sorted(ckpt.glob("*.safetensors")) if ckpt.is_dir() else [ckpt]
        handles = [safe_open(str(p), framework="pt") for p in files]
        for dev in devices:
            worst, exact, total, fmts = 0, 0, 0, set()
            for item in index:
                layer = item["layer"]
                f = next(h for h in handles if f"{layer}.weight" in h.keys())
                dtype = DTYPE[item["dtype"]]
                fmt, w, name, params = load_layer(f, layer, item["rows"], item["cols"], dtype)
                fmts.add(fmt)
                params = params.to_device(torch.device(dev)) if dev != "cpu" else params
                got = QuantizedTensor(w.to(dev), name, params).dequantize().cpu()
                ours = np.fromfile(Path(case["dequant"]) / item["file"], dtype="<f4").reshape(item["rows"], item["cols"])
                want = torch.from_numpy(ours).to(dtype)
                assert got.shape == want.shape and got.dtype == want.dtype, (layer, got.shape, got.dtype)
                u = ulps(got, want)
                worst = max(worst, int(u.max()))
                exact += int((u == 0).sum())
                total += u.numel()
            ok = worst <= 1
            failed |= not ok
            print(f"comfy-kitchen {dev:4} {case['name']:<42} {','.join(sorted(fmts)):<14} "
                  f"{len(index):2} layers  exact {exact}/{total}  max {worst} ulp  {'OK' if ok else 'FAIL'}")
    print("RESULT comfy-kitchen:", "FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
