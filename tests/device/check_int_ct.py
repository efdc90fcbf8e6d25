"""Compares qtool's compressed-tensors pack-quantized output with compressed-tensors itself.

Runs where torch and compressed-tensors are (the GPU device; the wheel travels in .whl/):
for seeded random weights and several configurations, compressed-tensors computes the
quantization parameters (`calculate_qparams`), the int codes (`quantize`) and the packing
(`pack_to_int32`); qtool's `int_packing` example does the same from the same f32 weights. Codes,
packed words, scales and zero points must be identical.

Usage: python tests/device/check_int_ct.py PATH/TO/int_packing WORKDIR
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.lifecycle.forward import quantize
from compressed_tensors.quantization.utils import calculate_qparams

example, work = Path(sys.argv[1]), Path(sys.argv[2])
work.mkdir(parents=True, exist_ok=True)
failed = False
rng = np.random.default_rng(7)
N, K = 256, 1024
for bits in (4, 8):
    for sym in (True, False):
        for group in (128, 32, -1):
            w = (rng.standard_normal((N, K)) * rng.uniform(0.01, 2.0, (N, 1))).astype(np.float32)
            w[3, :] = 0.0  # an all-zero row
            wf = work / "w.f32"
            w.tofile(wf)
            out = work / f"q{bits}_{int(sym)}_{group}"
            out.mkdir(exist_ok=True)
            subprocess.run([str(example), "--weight", str(wf), "--n", str(N), "--k", str(K),
                            "--bits", str(bits), "--group", str(group), "--sym", str(int(sym)),
                            "--convention", "ct", "--out", str(out)], check=True)
            gs = K if group == -1 else group
            strategy = "channel" if group == -1 else "group"
            args = QuantizationArgs(num_bits=bits, type="int", symmetric=sym, strategy=strategy,
                                    **({} if group == -1 else {"group_size": group}))
            wt = torch.from_numpy(w)
            g = wt.reshape(N, K // gs, gs)
            scale, zp = calculate_qparams(g.amin(-1), g.amax(-1), args)
            q = quantize(wt, scale, zp, args, dtype=torch.int8)
            packed = pack_to_int32(q, bits).numpy().view("<u4")
            ours_packed = np.fromfile(out / "ct_weight_packed.bin", dtype="<u4")
            ours_scale = np.fromfile(out / "ct_weight_scale.bin", dtype="<f4")
            ok_packed = np.array_equal(packed.ravel(), ours_packed)
            ok_scale = np.array_equal(scale.float().numpy().ravel().view("<u4"), ours_scale.view("<u4"))
            line = f"bits={bits} sym={sym!s:5} group={group:4}: packed {'OK' if ok_packed else 'DIFF'}, scale {'OK' if ok_scale else 'DIFF'}"
            if not sym:
                zpp = pack_to_int32(zp.to(torch.int8), bits, packed_dim=0).numpy().view("<u4")
                ours_zp = np.fromfile(out / "ct_weight_zero_point.bin", dtype="<u4")
                ok_zp = np.array_equal(zpp.ravel(), ours_zp)
                line += f", zero_point {'OK' if ok_zp else 'DIFF'}"
                failed |= not ok_zp
            failed |= not (ok_packed and ok_scale)
            if not ok_packed:
                codes = (q.numpy().astype(np.int16) + (1 << (bits - 1))).astype(np.uint8)
                ours_codes = np.fromfile(out / "codes.bin", dtype=np.uint8).reshape(N, K)
                d = np.argwhere(codes != ours_codes)
                line += f" ({len(d)} codes differ, first {d[:3].tolist()})"
            print(line)
print("RESULT:", "FAIL" if failed else "PASS")
sys.exit(1 if failed else 0)
