#!/usr/bin/env bash
# THE test command: Python environment, release build (binaries and examples the cross-checks
# run), every Rust test, then the cross-checks against the reference Python packages.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/setup-python.sh
cargo build --release --workspace --examples
cargo test --release --workspace
QTOOL_PROFILE=release .venv/bin/python -m pytest tests/crosscheck -q
