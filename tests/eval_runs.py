"""``altclip-eval`` as the evaluation tests run it: no DataLoader workers, small batches, results read back."""

import json
from pathlib import Path

from altclip.evaluation.cli import main


def eval_flags(task, model_dir, dataset, data_dir, output_dir, *flags, batch_size=4, device=None) -> list[str]:
    """The command line of one ``altclip-eval`` run; `flags` come last (they override the defaults before them)."""
    return [
        task,
        "--model",
        str(model_dir),
        "--dataset",
        dataset,
        "--data_dir",
        str(data_dir),
        "--output_dir",
        str(output_dir),
        "--num_workers",
        "0",
        "--batch_size",
        str(batch_size),
        *(["--device", device] if device else []),
        *map(str, flags),
    ]


def run_eval(task, model_dir, dataset, data_dir, output_dir, *flags, **options) -> list[dict]:
    """Runs ``altclip-eval`` in this process; returns the results of its results.json."""
    main(eval_flags(task, model_dir, dataset, data_dir, output_dir, *flags, **options))
    return json.loads((Path(output_dir) / "results.json").read_text())["results"]
