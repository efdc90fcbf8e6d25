"""Compares qtool's GPTQ with the GPTQ authors' reference implementation (IST-DASLab/gptq,
`gptq.py::GPTQ.fasterquant` + `quant.py::Quantizer`), run unmodified on the same W and X.

The reference source is NOT part of qtool: pass the directory holding its gptq.py and quant.py
(a checkout of https://github.com/IST-DASLab/gptq). `transformers` is only imported there for
`Conv1D`; a stub is injected when it is missing. Runs on CPU torch, or CUDA torch on the device
(`--device cuda`; also records the reference's per-layer time).

For each case (shape, group size, act-order with and without static groups) both sides get the
same W [N, K] and X [T, K]; reported per case: the fraction of identical dequantized weights
(identical weight = identical code, since with static groups or act-order off both sides use the
same scales), the max |difference|, and the relative output error ‖XWᵀ − XQᵀ‖²/‖XWᵀ‖² of each.
The reference runs in float32 as published ("f32") and again with the Hessian accumulated in
float64 before it is rounded to float32 for `fasterquant` ("f64": qtool accumulates in f64), to
separate algorithmic differences from rounding.

Usage: python tests/device/check_gptq_reference.py QTOOL_PTQ_LAYER_BIN GPTQ_SRC_DIR WORKDIR
       [--device cpu|cuda] [--big]
Exit 1 when a case matches less than 90% (f32 reference) / 95% (f64-Hessian reference) of weights.
"""

import argparse
import json
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ap = argparse.ArgumentParser()
ap.add_argument("binary", type=Path, help="qtool's ptq_layer example")
ap.add_argument("gptq_src", type=Path, help="directory with the reference gptq.py and quant.py")
ap.add_argument("work", type=Path)
ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
ap.add_argument("--big", action="store_true", help="also 4096x4096 and 11008x4096 layers")
cli = ap.parse_args()
binary, gptq_src, work, device, big = cli.binary, cli.gptq_src, cli.work, cli.device, cli.big
work.mkdir(parents=True, exist_ok=True)

try:
    import transformers  # noqa: F401
except ImportError:
    stub = types.ModuleType("transformers")

    class Conv1D(nn.Module):  # only used in isinstance checks
        pass

    stub.Conv1D = Conv1D
    sys.modules["transformers"] = stub
if not torch.cuda.is_available():
    torch.cuda.synchronize = lambda *a, **k: None
sys.path.insert(0, str(gptq_src))
from gptq import GPTQ  # noqa: E402  (the reference, unmodified)
from quant import Quantizer  # noqa: E402


def reference(w, x, bits, group, sym, act_order, static_groups, damp, dtype):
    layer = nn.Linear(w.shape[1], w.shape[0], bias=False).to(device=device)
    layer.weight.data = torch.from_numpy(w).to(device=device)
    g = GPTQ(layer)
    g.H = g.H.to(dtype)
    g.quantizer = Quantizer()
    g.quantizer.configure(bits, perchannel=True, sym=sym, mse=False)
    inp = torch.from_numpy(x).to(device=device, dtype=dtype)[None]
    t0 = time.time()
    g.add_batch(inp, None)
    # fasterquant works on W.float(); a float64 Hessian is rounded to float32 for it.
    g.H = g.H.float()
    if device == "cuda":
        torch.cuda.synchronize()
    t1 = time.time()
    g.fasterquant(blocksize=128, percdamp=damp, groupsize=group, actorder=act_order,
                  static_groups=static_groups)
    if device == "cuda":
        torch.cuda.synchronize()
    t2 = time.time()
    return layer.weight.data.double().cpu().numpy(), t1 - t0, t2 - t1


def out_err(w, q, x):
    y = x.astype(np.float64) @ w.astype(np.float64).T
    yq = x.astype(np.float64) @ q.astype(np.float64).T
    return float(((y - yq) ** 2).sum() / (y ** 2).sum())


def correlated(rng, t, k):
    a = rng.standard_normal((k, k)) / np.sqrt(k)
    x = rng.standard_normal((t, k)) @ a
    x[:, ::17] *= 8.0  # a few loud channels, as in real activations
    return x.astype(np.float32)


shapes = [(256, 512, 2048)]
if big:
    shapes += [(4096, 4096, 128 * 2048 // 16), (11008, 4096, 128 * 2048 // 16)]
cases = [(g, ao, sg) for g in (128, 64, -1) for (ao, sg) in ((False, False), (True, True), (True, False))
         if not (g == -1 and sg)]
rng = np.random.default_rng(0)
rows, failed = [], False
for (n, k, t) in shapes:
    w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
    x = correlated(rng, t, k)
    for (group, act_order, static_groups) in cases:
        d = work / f"{n}x{k}_g{group}_ao{int(act_order)}_sg{int(static_groups)}"
        d.mkdir(exist_ok=True)
        w.tofile(d / "w.f32")
        x.tofile(d / "x.f32")
        meta = dict(n=n, k=k, t=t, bits=4, group_size=group, sym=True, act_order=act_order,
                    static_groups=static_groups, damp=0.01, block_size=128)
        (d / "meta.json").write_text(json.dumps(meta))
        subprocess.run([str(binary), str(d)], check=True)
        q = np.fromfile(d / "qtool_deq.f32", dtype=np.float32).reshape(n, k).astype(np.float64)
        timing = json.loads((d / "qtool_time.json").read_text())
        row = dict(shape=f"{n}x{k}", t=t, group=group, act_order=act_order, static_groups=static_groups,
                   qtool_s=round(timing["hessian_s"] + timing["gptq_s"], 3),
                   err_qtool=out_err(w, q, x))
        for name, dtype in (("f32", torch.float32), ("f64", torch.float64)):
            r, th, tq = reference(w, x, 4, group, True, act_order, static_groups, 0.01, dtype)
            same = float(np.mean(np.abs(r - q) <= 1e-6 * np.abs(r).max()))
            row[f"same_{name}"] = round(same, 5)
            row[f"maxdiff_{name}"] = float(np.abs(r - q).max())
            row[f"err_ref_{name}"] = out_err(w, r, x)
            row[f"ref_{name}_s"] = round(th + tq, 3)
            if (name == "f32" and same < 0.90) or (name == "f64" and same < 0.95):
                failed = True
        rows.append(row)
        print(json.dumps(row), flush=True)
print("FAIL" if failed else "OK: qtool GPTQ matches the reference")
sys.exit(1 if failed else 0)
