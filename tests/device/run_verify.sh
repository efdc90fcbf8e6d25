#!/usr/bin/env bash
# `qtool verify` on the GPU device: good checkpoints must exit 0, corrupted copies must exit 1
# naming the corrupted layer.
#
# Build here (no Rust on the device), then run there from the repository root:
#   cargo build --release -p qtool && cargo build --release -p qtool-verify --example corrupt
#   (one command with both would build only the example: --example narrows every package)
#   mkdir -p .dev/verify && cp target/release/qtool target/release/examples/corrupt .dev/verify/
#   strip .dev/verify/*                              (11 MB instead of 105 MB with line tables)
#   run: bash tests/device/run_verify.sh            carry: [".dev/verify"]
# Environment: BATCH (default 1,16,128), REPS (20), LIMIT (seconds per verify run, 60).
# Optional: SMOL_GGUF=path/to/SmolLM2-135M-Instruct.Q4_1.gguf adds the real model (verified as
# is, and requantized to Q4_K_M and checked against its own F16 conversion).
#
# Checkpoints come from the seeded fixture of `corrupt fixture` (hidden 256, intermediate 512:
# shapes Marlin, the k-quants and the NVFP4 swizzle take unpadded) and from fixtures/tiny-llama
# (hidden 64: kernels may refuse some shapes, which verify reports as skipped, not passed).
# Prints one line per run; the last line says PASS or FAIL. Exit 0 only if every expectation held.

set -u
BIN=${BIN:-.dev/verify}
Q=$BIN/qtool
C=$BIN/corrupt
W=$(mktemp -d)
BATCH=${BATCH:-1,16,128}
REPS=${REPS:-20}
bad=0
export QTOOL_REQUIRE_GPU=1

nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'

# One line per verify run from its JSON: exit code, counts, kernels, worst kernel error, speed-ups.
summarize() { # label rc json expected_failing(optional, comma list)
  python3 - "$@" <<'EOF'
import json, sys
label, rc, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
want = [w for w in (sys.argv[4] if len(sys.argv) > 4 else "").split(",") if w]
try:
    r = json.load(open(path))
except Exception as e:
    print(f"{label:<26} rc={rc} no JSON ({e})"); sys.exit(0)
s = r["summary"]
kern = sorted({l["kernel"] or "-" for l in r["layers"]})
rel = [b["max_rel"] for l in r["layers"] for b in l["batches"] if b.get("max_rel") is not None]
sp = {}
for l in r["layers"]:
    for b in l["batches"]:
        if b.get("speedup"):
            sp.setdefault(b["m"], []).append(b["speedup"])
ref = [b["reference"]["cpu_rel"] / b["reference"]["expected_rel"] for l in r["layers"] for b in l["batches"]
       if b.get("reference") and b["reference"].get("expected_rel")]
spd = " ".join(f"m{m}:{min(v):.2f}-{max(v):.2f}x" for m, v in sorted(sp.items()))
print(f"{label:<26} rc={rc} pass={s['passed']} fail={s['failed']} skip={s['skipped']} "
      f"kernels={','.join(kern)} max_rel={max(rel) if rel else float('nan'):.2e} "
      f"refratio<={max(ref) if ref else float('nan'):.2f} speedup {spd}")
bad = [l for l in r["layers"] if l["status"] != "pass"]
for l in bad[:3]:
    print(f"    {l['status']}: {l['name']}: {l.get('reason','')}")
if len(bad) > 3:
    print(f"    ... and {len(bad) - 3} more")
if want:
    missing = [w for w in want if w not in s["failing"]]
    if missing:
        print(f"    EXPECTED failing layers not named: {missing}")
        sys.exit(1)
EOF
}

verify() { # label expected_rc path [expected failing layers] [extra args...]
  local label=$1 want=$2 path=$3 failing=${4:-}
  shift 4
  local t0=$SECONDS
  timeout "${LIMIT:-60}" "$Q" --json verify "$path" --batch "$BATCH" --reps "$REPS" "$@" >"$W/$label.json" 2>"$W/$label.err"
  local rc=$?
  printf '[%3ds] ' $((SECONDS - t0))
  summarize "$label" "$rc" "$W/$label.json" "$failing" || bad=1
  if [ "$rc" != "$want" ]; then
    echo "    EXPECTED rc=$want; stderr: $(head -c 400 "$W/$label.err")"
    bad=1
  fi
}

mk() { "$@" -q >/dev/null 2>"$W/mk.err" || { echo "build failed: $* : $(head -c 300 "$W/mk.err")"; bad=1; }; }

R=$W/ref
"$C" fixture "$R" || { echo "fixture failed"; exit 1; }
mk "$Q" quantize "$R" -o "$W/fp8_comfy.safetensors" --fmt fp8_e4m3fn_scaled
mk "$Q" quantize "$R" -o "$W/fp8_legacy.safetensors" --fmt fp8_e4m3fn_scaled --layout comfy-legacy
mk "$Q" quantize "$R" -o "$W/fp8_e5m2.safetensors" --fmt fp8_e5m2_scaled
mk "$Q" quantize "$R" -o "$W/fp8_ct" --fmt fp8_e4m3fn_scaled --layout compressed-tensors
mk "$Q" quantize "$R" -o "$W/fp8_channel" --fmt fp8_channel
mk "$Q" quantize "$R" -o "$W/nvfp4_comfy.safetensors" --fmt fp4_scaled
mk "$Q" quantize "$R" -o "$W/nvfp4_modelopt" --fmt nvfp4 --layout modelopt
mk "$Q" quantize "$R" -o "$W/nvfp4_ct" --fmt nvfp4
mk "$Q" quantize "$R" -o "$W/gptq" --fmt w4a16 --layout gptq
mk "$Q" quantize "$R" -o "$W/gptq_asym" --fmt w4a16 --layout gptq --asym
mk "$Q" quantize "$R" -o "$W/awq" --fmt w4a16 --layout awq
mk "$Q" quantize "$R" -o "$W/ct_int4" --fmt w4a16
mk "$Q" repack "$W/gptq" -o "$W/marlin" --target marlin
mk "$Q" convert "$R" -o "$W/q4_k_m.gguf" --fmt q4_k_m

echo "== good checkpoints (expect rc=0)"
for c in fp8_comfy.safetensors fp8_legacy.safetensors fp8_e5m2.safetensors fp8_ct fp8_channel \
         nvfp4_comfy.safetensors nvfp4_modelopt nvfp4_ct gptq gptq_asym awq ct_int4 marlin q4_k_m.gguf; do
  verify "${c%.*}" 0 "$W/$c" "" --ref "$R"
done

T=fixtures/tiny-llama
mk "$Q" quantize "$T" -o "$W/tiny_fp8.safetensors" --fmt fp8_e4m3fn_scaled
mk "$Q" quantize "$T" -o "$W/tiny_nvfp4" --fmt nvfp4
mk "$Q" quantize "$T" -o "$W/tiny_gptq" --fmt w4a16 --layout gptq --group-size 64
for c in tiny_fp8.safetensors tiny_nvfp4 tiny_gptq; do
  verify "${c%.*}" 0 "$W/$c" "" --ref "$T"
done

echo "== corrupted copies (expect rc=1 naming the layer)"
corrupted() { # label kind source [layer-substring]
  local label=$1 kind=$2 src=$3 filter=${4:-}
  local out=$W/bad_$label
  case "$src" in *.safetensors) out=$out.safetensors;; esac
  local layers
  layers=$("$C" "$kind" "$W/$src" "$out" $filter) || { echo "$label: corrupt failed"; bad=1; return; }
  verify "bad_$label" 1 "$out" "$(echo "$layers" | paste -sd, -)" --ref "$R"
}
corrupted gptq_flip flip-nibbles gptq
corrupted awq_flip flip-nibbles awq
corrupted ct_flip flip-nibbles ct_int4
corrupted marlin_flip flip-nibbles marlin mlp.down_proj
corrupted nvfp4c_flip flip-nibbles nvfp4_comfy.safetensors
corrupted nvfp4m_flip flip-nibbles nvfp4_modelopt
corrupted marlin_sperm scale-perm marlin layers.1.
corrupted gptq_sperm scale-perm gptq
corrupted gptq_v1v2 zero-points gptq
corrupted gptq_asym_v1v2 zero-points gptq_asym
corrupted nvfp4c_unswz unswizzled-scales nvfp4_comfy.safetensors gate_proj

if [ -n "${SMOL_GGUF:-}" ] && [ -f "$SMOL_GGUF" ]; then
  echo "== SmolLM2-135M"
  verify smol_q4_1 0 "$SMOL_GGUF" ""
  mk "$Q" convert "$SMOL_GGUF" -o "$W/smol_hf" --dtype f16
  mk "$Q" convert "$W/smol_hf" -o "$W/smol_q4_k_m.gguf" --fmt q4_k_m
  verify smol_q4_k_m 0 "$W/smol_q4_k_m.gguf" "" --ref "$W/smol_hf"
  # Calibrated and float layouts of the real model (576-wide rows: no Marlin, k % 128 != 0).
  mk "$Q" quantize "$W/smol_hf" -o "$W/smol_gptq" --fmt w4a16 --method gptq --act-order --group-size 64 --layout gptq --calib-samples 16 --calib-seqlen 256
  verify smol_gptq_actorder 0 "$W/smol_gptq" "" --ref "$W/smol_hf"
  mk "$Q" quantize "$W/smol_hf" -o "$W/smol_awq" --fmt w4a16 --method awq --group-size 64 --layout awq --calib-samples 16 --calib-seqlen 256
  verify smol_awq 0 "$W/smol_awq" "" --ref "$W/smol_hf"
  mk "$Q" quantize "$W/smol_hf" -o "$W/smol_nvfp4" --fmt nvfp4
  verify smol_nvfp4_ct 0 "$W/smol_nvfp4" "" --ref "$W/smol_hf"
  mk "$Q" quantize "$W/smol_hf" -o "$W/smol_fp8" --fmt fp8_e4m3fn_scaled --layout compressed-tensors
  verify smol_fp8_ct 0 "$W/smol_fp8" "" --ref "$W/smol_hf"
fi

echo "== table of one run (marlin)"
"$Q" verify "$W/marlin" --batch "$BATCH" --reps "$REPS" --filter 'layers\.0\.' 2>&1 | tail -n 30
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT/verify_json" && cp "$W"/*.json "$OUT/verify_json/" 2>/dev/null; fi
rm -rf "$W"
if [ "$bad" = 0 ]; then echo "run_verify: PASS"; else echo "run_verify: FAIL"; fi
exit "$bad"
