"""Compares torch's float8 casts with qtool's golden tables (which are ml_dtypes' casts and which
qtool's codecs reproduce bit for bit, see formats/tests/codec_golden.rs).

Runs where torch is (the GPU device): every float16 and every bfloat16 bit pattern is cast with
`.to(torch.float8_e4m3fn)` / `.to(torch.float8_e5m2)` on the CPU and on CUDA, and every 8-bit
code is decoded back to float32. Prints one line per table; exits 1 on any difference that is
not a NaN-vs-NaN payload difference (those are counted and printed separately).

Usage: python tests/device/check_fp8_torch.py [GOLDEN_DIR]
"""

import sys
from pathlib import Path

import numpy as np
import torch

GOLDEN = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "fixtures" / "golden"
SOURCES = {"f16": torch.float16, "bf16": torch.bfloat16}
TARGETS = {"e4m3fn": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
NAN = {"e4m3fn": lambda b: (b & 0x7F) == 0x7F, "e5m2": lambda b: ((b & 0x7C) == 0x7C) & ((b & 0x03) != 0)}

devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
print(f"torch {torch.__version__}; devices: {devices}")
failed = False
patterns = torch.arange(1 << 16, dtype=torch.int32).to(torch.uint16 if hasattr(torch, "uint16") else torch.int32)
bits16 = torch.arange(1 << 16, dtype=torch.int64).numpy().astype("<u2")
for dev in devices:
    for sname, sdt in SOURCES.items():
        src = torch.from_numpy(bits16.view(np.int16).copy()).view(sdt).to(dev)
        for tname, tdt in TARGETS.items():
            got = src.to(tdt).view(torch.uint8).cpu().numpy()
            want = np.fromfile(GOLDEN / f"{sname}_to_{tname}.bin", dtype=np.uint8)
            diff = got != want
            both_nan = diff & NAN[tname](got) & NAN[tname](want)
            real = diff & ~both_nan
            status = "OK" if not real.any() else "MISMATCH"
            failed |= bool(real.any())
            print(f"{dev:4s} {sname:4s}->{tname:6s}: {real.sum():5d} value mismatches, "
                  f"{both_nan.sum():5d} NaN-payload-only differences  [{status}]")
            if real.any():
                idx = np.flatnonzero(real)[:8]
                for i in idx:
                    x = torch.tensor([int(bits16[i])], dtype=torch.int32).to(torch.int16).view(sdt).item()
                    print(f"      input {int(bits16[i]):#06x} ({x!r}): torch {got[i]:#04x} golden {want[i]:#04x}")
    for tname, tdt in TARGETS.items():
        codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).to(dev).view(tdt)
        got = codes.to(torch.float32).cpu().numpy()
        want = np.fromfile(GOLDEN / f"{tname}_to_f32.bin", dtype="<u4").view(np.float32)
        same = (got.view("<u4") == want.view("<u4")) | (np.isnan(got) & np.isnan(want))
        failed |= not same.all()
        print(f"{dev:4s} decode {tname:6s}: {int((~same).sum())} mismatches of 256")
print("RESULT:", "FAIL" if failed else "PASS")
sys.exit(1 if failed else 0)
