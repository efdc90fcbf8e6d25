"""The committed fixtures are exactly what fixtures/scripts/make_fixtures.py writes."""

import subprocess
import sys

from conftest import FIXTURES, ROOT

GENERATED = [
    "tiny-llama/model.safetensors",
    "tiny-llama/config.json",
    "tiny-llama-sharded/model-00001-of-00002.safetensors",
    "tiny-llama-sharded/model-00002-of-00002.safetensors",
    "tiny-llama-sharded/model.safetensors.index.json",
    "tiny-llama-sharded/config.json",
    "tiny.gguf",
]


def test_fixtures_regenerate_byte_for_byte(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "fixtures/scripts/make_fixtures.py"), "--out", str(tmp_path)],
        check=True,
    )
    produced = sorted(
        str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()
    )
    assert produced == sorted(GENERATED), "the script writes files the test does not know"
    for rel in GENERATED:
        committed = (FIXTURES / rel).read_bytes()
        fresh = (tmp_path / rel).read_bytes()
        assert fresh == committed, f"{rel} differs from a fresh run of make_fixtures.py"


def test_fixtures_stay_small():
    total = sum((FIXTURES / rel).stat().st_size for rel in GENERATED)
    assert total < 2_000_000, f"fixtures are {total} bytes; keep them under 2 MB"
