#!/usr/bin/env bash
# Device checks for issue #3 (FP8/FP4/MX outputs read by the real consumers), one command:
#   (a) comfy-kitchen dequantizes qtool's ComfyUI outputs (fp8 scaled, cast, NVFP4, MXFP8);
#   (b) compressed-tensors 0.20 decompressors decode qtool's compressed-tensors outputs
#       (float-quantized FP8, nvfp4-pack-quantized, mxfp4-pack-quantized, mxfp8-quantized);
#   (c) transformers loads qtool's compressed-tensors FP8 tiny llama and its logits match.
# Each compares with qtool's own dequantization, written here by tests/device/prepare_fp8_checks.sh.
#
# Here:   bash tests/device/prepare_fp8_checks.sh
# Device: bash tests/device/run_fp8_checks.sh            carry: [".dev/fp8", ".whl"]
# Needs on the device: torch, transformers, safetensors, numpy (present); the .whl/ wheels
# (compressed-tensors 0.20 + pydantic/loguru/typing deps, pure Python or cp312) are installed
# into a private directory, comfy-kitchen's .py sources are put on PYTHONPATH.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
LIB=$(mktemp -d)
python3 -m pip install --quiet --no-index --no-deps --target "$LIB" .whl/*.whl >/dev/null 2>&1 \
  || echo "warning: pip install of .whl/*.whl into $LIB failed"
python3 -c "import psutil" 2>/dev/null || echo "note: psutil missing (compressed_tensors.offload needs it)"
export PYTHONPATH="$LIB:$PWD/.whl/comfy_kitchen_src${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch, transformers, compressed_tensors; print('torch', torch.__version__, 'transformers', transformers.__version__, 'compressed-tensors', compressed_tensors.__version__, 'cuda', torch.cuda.is_available())"
rc=0
for s in check_comfy_kitchen.py check_ct_float.py check_transformers_ct_fp8.py; do
  python3 "tests/device/$s" .dev/fp8/cases.json 2>&1 | grep -v -E "Warning|warn\(|^\s*$" | tail -40
  st=${PIPESTATUS[0]}
  [[ $st == 0 ]] || rc=1
  echo "== $s exit $st"
done
echo "FP8 DEVICE CHECKS: $([[ $rc == 0 ]] && echo PASS || echo FAIL)"
exit $rc
