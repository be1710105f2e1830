#!/usr/bin/env bash
# Every benchmark of benchmarks/README.md, on this machine: prints the tables and writes benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/embedding_throughput.py --shape vit-b-32_xlm-r-base --images 64 --texts 256 --repeats 3 --compile
python benchmarks/embedding_throughput.py --shape vit-l-14_xlm-r-large --images 16 --texts 64 --batch_size 16 --repeats 2
python benchmarks/training_throughput.py --steps 60
python benchmarks/training_throughput.py --scale
python benchmarks/training_throughput.py --lora --steps 4 --batch_size 32
python benchmarks/data_throughput.py
python benchmarks/language_balance_memory.py --rows 2000000 --languages 100 --output benchmarks/results/language_balance_memory.json
python benchmarks/search.py
python benchmarks/search_service.py
python benchmarks/search_scale.py
python benchmarks/gloo_exit_abort.py --runs 40
python benchmarks/text_anchors.py --lines 2000000 --world_size 64
# last, so that everything above is written first: exit status 1 if the default path lost to the reference here
python benchmarks/default_path_check.py --remeasure_kernel
