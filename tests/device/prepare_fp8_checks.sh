#!/usr/bin/env bash
# Prepares tests/device/run_fp8_checks.sh here (the device has no Rust): builds qtool and the
# dequant_layers example, writes qtool's FP8/NVFP4/MX outputs of two small inputs in every
# layout the consumers read, with qtool's own dequantization of each quantized layer beside
# them, and copies comfy-kitchen's Python sources out of its wheel.
#
#   bash tests/device/prepare_fp8_checks.sh
#   then on the device: bash tests/device/run_fp8_checks.sh     carry: [".dev/fp8", ".whl"]
#
# Inputs: fixtures/tiny-llama (bf16, hidden 64) and a seeded "odd" bf16 checkpoint whose
# [300, 200] layer exercises ComfyUI's padding and swizzle tails (K = 200 is not a multiple of
# 16 or 32, so the compressed-tensors layouts leave it unquantized, as documented).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT=.dev/fp8
PY=.venv/bin/python
cargo build --release -p qtool -p qtool-quantizers --example dequant_layers >&2
cargo build --release -p qtool >&2
Q=target/release/qtool
D=target/release/examples/dequant_layers
rm -rf "$OUT" && mkdir -p "$OUT/in"

"$PY" - "$OUT/in/odd" <<'PYEOF'
import json, sys
from pathlib import Path
import ml_dtypes as md
import numpy as np
from safetensors.numpy import save_file
d = Path(sys.argv[1]); d.mkdir(parents=True)
rng = np.random.default_rng(5)
def w(n, k, s=0.03):
    x = (rng.standard_normal((n, k)) * s).astype(np.float32)
    x.flat[rng.integers(0, x.size, 20)] *= 40
    return x.astype(md.bfloat16)
save_file({"blocks.0.attn.qkv.weight": w(300, 200), "blocks.0.ffn.up.weight": w(192, 256),
           "blocks.0.ffn.up.bias": np.zeros(192, dtype=md.bfloat16), "blocks.0.norm.weight": np.ones(256, dtype=md.bfloat16)},
          str(d / "model.safetensors"))
(d / "config.json").write_text(json.dumps({"model_type": "toy"}))
PYEOF

cases=()
add() { # input-name input-path fmt layout
  local name="$1-$3-$4" dir="$OUT/$1-$3-$4"
  "$Q" quantize "$2" -o "$dir/ckpt" --fmt "$3" --layout "$4" -q >/dev/null
  "$D" "$2" "$dir/ckpt" "$3" "$4" "$dir/dequant" >/dev/null
  cases+=("{\"name\": \"$name\", \"input\": \"$2\", \"fmt\": \"$3\", \"layout\": \"$4\", \"ckpt\": \"$dir/ckpt\", \"dequant\": \"$dir/dequant\"}")
}
for inp in tiny:fixtures/tiny-llama odd:$OUT/in/odd; do
  n=${inp%%:*}; p=${inp#*:}
  for f in fp8_e4m3fn_scaled fp8_e4m3fn_scaled_fast fp8_e5m2_scaled fp8_e4m3fn fp4_scaled fp4_experimental mxfp8; do
    add "$n" "$p" "$f" comfy
  done
  for f in fp8_e4m3fn_scaled fp8_e4m3fn fp8_channel fp4_scaled mxfp4 mxfp8; do
    add "$n" "$p" "$f" compressed-tensors
  done
done
(IFS=,; echo "[${cases[*]}]") | "$PY" -m json.tool > "$OUT/cases.json"

# comfy-kitchen: its eager backend is plain PyTorch; the wheel (68 MB, cp311, CUDA/HIP .so)
# is larger than a device call carries and of the wrong Python, so only its .py files travel.
CK=.whl/comfy_kitchen_src
if [[ ! -d "$CK/comfy_kitchen" ]]; then
  tmp=$(mktemp -d)
  "$PY" -m pip download comfy-kitchen==0.2.40 --no-deps -d "$tmp" >&2
  mkdir -p "$CK"
  (cd "$tmp" && "$ROOT/$PY" -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); [z.extract(n, sys.argv[2]) for n in z.namelist() if n.endswith('.py') and n.startswith('comfy_kitchen/')]" comfy_kitchen-*.whl "$ROOT/$CK")
  rm -rf "$tmp"
fi
du -sh "$OUT" .whl >&2
echo "prepared $(grep -c '"name"' "$OUT/cases.json") cases in $OUT" >&2
