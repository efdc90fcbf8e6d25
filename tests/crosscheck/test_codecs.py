"""The committed codec golden tables are exactly what the installed ml_dtypes produces.

`formats/tests/codec_golden.rs` checks qtool's FP8/FP4 encoders and decoders bit for bit against
`fixtures/golden/*.bin`; this test closes the chain by regenerating every table with ml_dtypes
(through the same script that wrote them) and comparing bytes, and by spot-checking the tables
against rules stated independently of the script (format maxima, NaN codes, overflow behaviour).
"""

import importlib.util

import ml_dtypes
import numpy as np
import pytest

from conftest import FIXTURES

GOLDEN = FIXTURES / "golden"


def _load_script():
    path = FIXTURES / "scripts" / "make_golden_fp8.py"
    spec = importlib.util.spec_from_file_location("make_golden_fp8", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TABLES = _load_script().tables()


@pytest.mark.parametrize("name", sorted(TABLES))
def test_committed_table_equals_ml_dtypes(name):
    committed = (GOLDEN / name).read_bytes()
    assert len(committed) == len(TABLES[name]), name
    fresh = np.frombuffer(TABLES[name], np.uint8)
    old = np.frombuffer(committed, np.uint8)
    diff = np.flatnonzero(fresh != old)
    assert diff.size == 0, f"{name}: {diff.size} bytes differ from ml_dtypes {ml_dtypes.__version__}, first at {diff[:8]}"


def test_no_stray_files_in_golden_dir():
    on_disk = {p.name for p in GOLDEN.glob("*.bin")}
    assert on_disk == set(TABLES)


def test_golden_total_size_is_small():
    assert sum(p.stat().st_size for p in GOLDEN.iterdir()) < 600 * 1024


def test_tables_show_the_documented_overflow_rules():
    # Independent of the script: 448/57344 are the maxima, 464 ties down to 448, anything that
    # rounds above max is NaN for e4m3fn and inf for e5m2 (ml_dtypes does not saturate).
    f16_e4m3 = np.frombuffer((GOLDEN / "f16_to_e4m3fn.bin").read_bytes(), np.uint8)
    f16_e5m2 = np.frombuffer((GOLDEN / "f16_to_e5m2.bin").read_bytes(), np.uint8)

    def code(table, value):
        return table[int(np.array([value], np.float16).view(np.uint16)[0])]

    assert code(f16_e4m3, 448.0) == 0x7E
    assert code(f16_e4m3, 464.0) == 0x7E
    assert code(f16_e4m3, 480.0) == 0x7F
    assert code(f16_e4m3, -np.inf) == 0xFF
    assert code(f16_e5m2, 57344.0) == 0x7B
    assert code(f16_e5m2, 61440.0) == 0x7C
    assert code(f16_e5m2, np.inf) == 0x7C
    assert code(f16_e5m2, np.nan) == 0x7E
    assert code(f16_e4m3, -0.0) == 0x80


def test_e2m1_table_is_the_ocp_value_list():
    e2m1 = np.frombuffer((GOLDEN / "e2m1fn_to_f32.bin").read_bytes(), "<f4")
    mags = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert e2m1.tolist() == mags + [-m for m in mags]
    assert np.signbit(e2m1[8])
