"""Loads the Hugging Face directory `qtool convert` wrote from SmolLM2's GGUF in transformers
(LlamaForCausalLM + AutoTokenizer) and compares it with llama.cpp on the original model.

References come from the development machine, where llama.cpp runs (llama-cpp-python): REF/ref.json
holds llama.cpp's token ids for a prompt and test strings (tokenize(add_bos=False,
special=True) on the original GGUF) and REF/logits.npy its logits for the prompt, from an F16
GGUF that llama.cpp itself made from the original (`llama_model_quantize`, MOSTLY_F16).

Usage: python tests/device/check_convert_transformers.py HF_DIR REF_DIR
"""

import json
import sys

import numpy as np
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

hf, ref_dir = sys.argv[1], sys.argv[2]
ref = json.load(open(f"{ref_dir}/ref.json"))
want = np.load(f"{ref_dir}/logits.npy")
failed = False

tok = AutoTokenizer.from_pretrained(hf)
for s, ids in {ref["prompt"]: ref["ids"], **ref["tokens"]}.items():
    got = tok(s, add_special_tokens=False).input_ids
    ok = got == ids
    failed |= not ok
    print(f"tokens {'OK  ' if ok else 'DIFF'} {s!r}: {len(got)} ids" + ("" if ok else f" got {got} want {ids}"))

dev = "cuda" if torch.cuda.is_available() else "cpu"
model = LlamaForCausalLM.from_pretrained(hf, torch_dtype=torch.float32).to(dev).eval()
with torch.no_grad():
    logits = model(torch.tensor([ref["ids"]], device=dev)).logits[0].float().cpu().numpy()
d = np.abs(logits - want)
scale = np.abs(want).max()
same_argmax = (logits.argmax(-1) == want.argmax(-1)).mean()
print(f"logits {logits.shape} vs llama.cpp F16 {want.shape}: max |diff| {d.max():.4f} "
      f"(max |logit| {scale:.2f}, relative {d.max() / scale:.2e}), mean |diff| {d.mean():.5f}, "
      f"argmax agreement {same_argmax:.3f}")
# fp16 tolerance: llama.cpp stores the weights as F16 (a 2^-11 relative rounding per weight) and
# multiplies in F16/F32; transformers runs the F32 weights qtool wrote.
tol_ok = d.max() <= 1e-2 * scale and same_argmax == 1.0
failed |= not tol_ok
print("transformers:", torch.__version__, __import__("transformers").__version__, "device", dev)
print("RESULT:", "FAIL" if failed else "PASS")
sys.exit(1 if failed else 0)
