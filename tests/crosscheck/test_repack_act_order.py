"""Act-order (desc_act) GPTQ checkpoints through `qtool diff` and `qtool repack`.

The checkpoint is built here with numpy from the independent formats.md reference in
test_int_packing.py (g_idx maps each input column to its group in activation order). qtool must
dequantize it exactly as the formula says, carry `g_idx` losslessly through compressed-tensors
(`weight_g_idx`) and back, and refuse the layouts that cannot store act-order (AWQ GEMM, vLLM's
legacy Marlin), naming the reason.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from test_int_packing import make_act_order, ref_gptq, ref_quantize

N, K, G = 128, 256, 32
LAYER = "model.layers.0.mlp.down_proj"


def make_gptq_act_order(root: Path, group: int = G) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(11)
    w = (rng.standard_normal((N, K)) * 0.05).astype(np.float32)
    g_idx = make_act_order(K, group, seed=5)
    codes, scales, zeros = ref_quantize(w, 4, group, True, "gptq", g_idx)
    qweight, qzeros = ref_gptq(codes, zeros, 4, v1=True)
    scales16 = scales.astype(np.float16)
    d = root / "gptq"
    d.mkdir()
    save_file(
        {
            f"{LAYER}.qweight": qweight,
            f"{LAYER}.qzeros": qzeros,
            f"{LAYER}.scales": scales16,
            f"{LAYER}.g_idx": g_idx.astype(np.int32),
            "model.norm.weight": np.ones(K, np.float16),
        },
        str(d / "model.safetensors"),
        metadata={"format": "pt"},
    )
    qc = {"bits": 4, "group_size": group, "desc_act": True, "sym": True,
          "quant_method": "gptq", "checkpoint_format": "gptq"}
    (d / "quantize_config.json").write_text(json.dumps(qc))
    (d / "config.json").write_text(json.dumps({"quantization_config": qc}))
    # The formula: w[n, k] = scale[g_idx[k], n] * (code[n, k] - zero[g_idx[k], n]).
    g = g_idx.astype(np.int64)
    deq = scales16.astype(np.float32)[g, :].T * (
        codes.astype(np.float32) - zeros.astype(np.float32)[g, :].T
    )
    return d, deq.astype(np.float32)


def diff_rows(run_qtool, a, b):
    return {r["name"]: r for r in json.loads(run_qtool("--json", "diff", a, b).stdout)["rows"]}


def test_act_order_gptq_dequantizes_as_the_formula_says(run_qtool, tmp_path):
    gptq, deq = make_gptq_act_order(tmp_path)
    ref = tmp_path / "ref.safetensors"
    save_file({f"{LAYER}.weight": deq, "model.norm.weight": np.ones(K, np.float16)}, str(ref))
    rows = diff_rows(run_qtool, ref, gptq)
    row = rows[f"{LAYER}.weight"]
    assert row["status"] == "compared", row
    assert "actorder" in row["scheme"], row
    assert row["sqnr_db"] == "inf" and row["max_abs"] == 0.0, row


def test_act_order_survives_compressed_tensors_and_back(run_qtool, tmp_path):
    gptq, _ = make_gptq_act_order(tmp_path)
    ct, back = tmp_path / "ct", tmp_path / "back"
    run_qtool("repack", gptq, "-o", ct, "--target", "compressed-tensors")
    ct_tensors = load_file(str(ct / "model.safetensors"))
    assert np.array_equal(ct_tensors[f"{LAYER}.weight_g_idx"],
                          load_file(str(gptq / "model.safetensors"))[f"{LAYER}.g_idx"])
    for name, row in diff_rows(run_qtool, gptq, ct).items():
        assert row["sqnr_db"] == "inf", (name, row)
    run_qtool("repack", ct, "-o", back, "--target", "gptq")
    a, b = load_file(str(gptq / "model.safetensors")), load_file(str(back / "model.safetensors"))
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name


@pytest.mark.parametrize("target", ["awq", "marlin"])
def test_layouts_without_act_order_refuse_it(run_qtool, tmp_path, target):
    # Group 128: the one group size legacy Marlin takes, so act-order is the rule that fails.
    gptq, _ = make_gptq_act_order(tmp_path, group=128)
    out = tmp_path / target
    proc = run_qtool("repack", gptq, "-o", out, "--target", target, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert LAYER in lines[0] and ("act-order" in lines[0] or "g_idx" in lines[0]), lines[0]
    assert not out.exists() or not any(out.iterdir())
