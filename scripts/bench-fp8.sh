#!/usr/bin/env bash
# FP8/FP4 quantize benchmark (docs/PERFORMANCE.md, FP8/FP4 section), in one run:
#   1. a seeded synthetic bf16 checkpoint shaped like a video DiT (scripts/make_synthetic_dit.py,
#      6 blocks of Wan2.1-14B size = 4.2 GB, largest tensor 13824x5120), written streaming;
#   2. `cp` of that file (the I/O limit), `qtool quantize --fmt fp8_e4m3fn_scaled` and
#      `--fmt fp4_scaled`, and the straightforward numpy + safetensors script
#      scripts/quantize_reference.py doing the same quantization, each under `/usr/bin/time -v`
#      (wall time, peak RSS), warm page cache, outputs on the same disk;
#   3. checks that the Python script's output has the same tensors and bytes as qtool's, and
#      prints a Markdown table with GB/s of input, the ratios and the three targets
#      (RSS < 2 x largest tensor in f32 + 256 MB; >= 5x the Python script; >= 0.5x cp's speed).
# The 4 GB files are deleted at the end (KEEP=1 keeps the input in $BENCH_DIR).
# Env: BENCH_DIR (default: a temporary directory), BLOCKS (default 6), THREADS (qtool --threads).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BLOCKS="${BLOCKS:-6}"
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || scripts/setup-python.sh
[[ -x target/release/qtool ]] || cargo build --release -p qtool
QTOOL="$ROOT/target/release/qtool"
if [[ ! -x /usr/bin/time ]]; then
  echo "installing GNU time (apt-get install -y time)" >&2
  apt-get install -y time >/dev/null
fi
DIR="${BENCH_DIR:-$(mktemp -d)}"
mkdir -p "$DIR"
cleanup() {
  rm -f "$DIR"/out-* "$DIR"/*.time
  [[ "${KEEP:-0}" == 1 ]] || rm -f "$DIR/dit.safetensors"
}
trap cleanup EXIT
IN="$DIR/dit.safetensors"
[[ -f "$IN" ]] || "$PY" scripts/make_synthetic_dit.py "$IN" --blocks "$BLOCKS" >&2
THREADS_ARG=()
[[ -n "${THREADS:-}" ]] && THREADS_ARG=(--threads "$THREADS")

# run NAME CMD...: /usr/bin/time -v into $DIR/NAME.time
run() {
  local name="$1"; shift
  sync
  /usr/bin/time -v -o "$DIR/$name.time" "$@" >/dev/null
}

cat "$IN" >/dev/null  # warm the page cache for every contender alike
run cp cp "$IN" "$DIR/out-cp.safetensors"
rm -f "$DIR/out-cp.safetensors"
for fmt in fp8_e4m3fn_scaled fp4_scaled; do
  run "qtool-$fmt" "$QTOOL" quantize "$IN" -o "$DIR/out-qtool-$fmt.safetensors" --fmt "$fmt" -q "${THREADS_ARG[@]}"
  run "python-$fmt" "$PY" scripts/quantize_reference.py "$IN" "$DIR/out-python-$fmt.safetensors" --fmt "$fmt"
  "$PY" - "$DIR/out-qtool-$fmt.safetensors" "$DIR/out-python-$fmt.safetensors" <<'PYEOF'
# Same tensor names, dtypes, shapes and bytes (parsed directly: safetensors' numpy reader has no F8).
import json, mmap, struct, sys

def tensors(path):
    f = open(path, "rb")
    (n,) = struct.unpack("<Q", f.read(8))
    h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return {k: (v["dtype"], v["shape"], m, 8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1]) for k, v in h.items()}

a, b = (tensors(p) for p in sys.argv[1:3])
assert sorted(a) == sorted(b), "tensor names differ"
for k, (dt, shape, m, s, e) in a.items():
    dt2, shape2, m2, s2, e2 = b[k]
    assert (dt, shape) == (dt2, shape2), f"{k}: {dt}{shape} vs {dt2}{shape2}"
    assert m[s:e] == m2[s2:e2], f"{k}: bytes differ"
print(f"{sys.argv[1]}: same {len(a)} tensors, byte for byte, as {sys.argv[2]}", file=sys.stderr)
PYEOF
  rm -f "$DIR/out-qtool-$fmt.safetensors" "$DIR/out-python-$fmt.safetensors"
done

"$PY" - "$DIR" "$IN" "$(nproc)" <<'PYEOF'
import json, re, struct, sys
from pathlib import Path
d, inp, cores = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

def parse(name):
    text = (d / f"{name}.time").read_text()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
    secs = 0.0
    for part in wall.split(":"):
        secs = secs * 60 + float(part)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) * 1024
    cpu = sum(float(re.search(rf"{k} time \(seconds\): (\S+)", text).group(1)) for k in ("User", "System"))
    return secs, rss, cpu

raw = inp.read_bytes()[:8]
(n,) = struct.unpack("<Q", raw)
with open(inp, "rb") as f:
    f.seek(8)
    header = json.loads(f.read(n))
header.pop("__metadata__", None)
largest = max(header.items(), key=lambda kv: kv[1]["data_offsets"][1] - kv[1]["data_offsets"][0])
numel = 1
for s in largest[1]["shape"]:
    numel *= s
size = inp.stat().st_size
bound = 2 * numel * 4 + 256 * 2**20
cp_s, _, cp_cpu = parse("cp")
load = open("/proc/loadavg").read().split()[:3]
print(f"input: {size / 1e9:.2f} GB bf16, {len(header)} tensors, largest {largest[0]} "
      f"{largest[1]['shape']} = {numel * 4 / 1e6:.0f} MB as f32; RSS bound {bound / 1e6:.0f} MB; {cores} cores; "
      f"load average at the end {' '.join(load)}\n")
print("| command | wall | GB/s of input | CPU (user+sys) | peak RSS | vs `cp` speed | vs Python (wall / CPU) |")
print("|---|---|---|---|---|---|---|")
print(f"| `cp` | {cp_s:.2f} s | {size / cp_s / 1e9:.2f} | {cp_cpu:.1f} s | — | 1.00x | — |")
ok = True
for fmt in ("fp8_e4m3fn_scaled", "fp4_scaled"):
    q_s, q_rss, q_cpu = parse(f"qtool-{fmt}")
    p_s, p_rss, p_cpu = parse(f"python-{fmt}")
    print(f"| `qtool quantize --fmt {fmt}` | {q_s:.2f} s | {size / q_s / 1e9:.2f} | {q_cpu:.1f} s | {q_rss / 1e6:.0f} MB | "
          f"{cp_s / q_s:.2f}x | {p_s / q_s:.1f}x / {p_cpu / max(q_cpu, 1e-9):.1f}x faster |")
    print(f"| Python numpy + safetensors, {fmt} | {p_s:.2f} s | {size / p_s / 1e9:.2f} | {p_cpu:.1f} s | {p_rss / 1e6:.0f} MB | "
          f"{cp_s / p_s:.2f}x | 1.0x |")
    checks = [("RSS < bound", q_rss < bound), (">= 5x Python", p_s / q_s >= 5), (">= 0.5x cp", cp_s / q_s >= 0.5)]
    ok &= all(c for _, c in checks)
    print(f"|  targets {fmt}: " + ", ".join(f"{n} {'OK' if c else 'MISSED'}" for n, c in checks) + " | | | | | | |")
print("\nRESULT:", "all targets met" if ok else "some target missed")
PYEOF
