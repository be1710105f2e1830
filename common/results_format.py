"""The evaluation results format: JSON, a markdown table, a PNG chart (one group of bars per language) and
model-index entries. altclip-eval writes it; the Hub job (model cards) and training's zero-shot monitor read it."""

import dataclasses
import json
from pathlib import Path

from huggingface_hub import EvalResult

from altclip.common.constants import MODEL_INDEX_FILE, RESULTS_FILE
from altclip.common.constants import RESULTS_CHART_FILE as CHART_FILE
from altclip.common.constants import RESULTS_TABLE_FILE as TABLE_FILE
from altclip.common.files import replace_atomically

TASK_TYPES = {"zero-shot classification": "zero-shot-image-classification", "retrieval": "image-text-retrieval"}
HEADLINE = {"zero-shot classification": ("top1", "top-1 accuracy"), "retrieval": ("mean_recall", "mean recall")}


def markdown_table(results: list[dict]) -> str:
    metric_names = list(dict.fromkeys(name for result in results for name in result["metrics"]))
    lines = ["| dataset | language | " + " | ".join(metric_names) + " |", "|---|---|" + "---|" * len(metric_names)]
    for result in results:
        values = [f"{result['metrics'][name]:.2f}" if name in result["metrics"] else "" for name in metric_names]
        lines.append(f"| {result['dataset']} | {result['language']} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def draw_chart(results: list[dict], path: Path, title: str) -> None:
    from altclip.common.plots import (  # matplotlib only where a chart is drawn: the Hub job reads results without it
        plt,
        save_png,
    )

    metric_names = list(dict.fromkeys(name for result in results for name in result["metrics"]))
    labels = [
        f"{r['dataset']}\n{r['language']}" if len({x["dataset"] for x in results}) > 1 else r["language"]
        for r in results
    ]
    width = 0.8 / len(metric_names)
    figure, axis = plt.subplots(figsize=(max(6, 0.9 * len(results) * max(1, len(metric_names) / 3)), 4.5), dpi=120)
    for offset, name in enumerate(metric_names):
        xs = [index + offset * width - 0.4 + width / 2 for index in range(len(results))]
        axis.bar(xs, [result["metrics"].get(name, 0) for result in results], width, label=name)
    axis.set_xticks(range(len(results)), labels)
    axis.set_ylabel("%")
    axis.set_ylim(0, 100)
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=7, ncols=min(4, len(metric_names)))
    figure.tight_layout()
    save_png(figure, path)


def model_index(results: list[dict]) -> list[dict]:
    """The results as `huggingface_hub.EvalResult` fields, ready for a model card's model-index."""
    entries = []
    for result in results:
        for name, value in result["metrics"].items():
            entry = EvalResult(
                task_type=TASK_TYPES[result["task"]],
                dataset_type=result["dataset"],
                dataset_name=f"{result['dataset']} ({result['language']})",
                metric_type=name,
                metric_name=f"{name} ({result['language']})",
                metric_value=value,
            )
            entries.append({k: v for k, v in dataclasses.asdict(entry).items() if v is not None})
    return entries


def write_results(results: list[dict], output_dir: str | Path, model: str) -> dict[str, Path]:
    """Writes the four files atomically into `output_dir` and returns their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        key: output_dir / name
        for key, name in (
            ("json", RESULTS_FILE),
            ("table", TABLE_FILE),
            ("chart", CHART_FILE),
            ("model_index", MODEL_INDEX_FILE),
        )
    }
    payload = {"model": model, "results": results}
    replace_atomically(paths["json"], lambda p: p.write_text(json.dumps(payload, indent=2, ensure_ascii=False)))
    replace_atomically(paths["table"], lambda p: p.write_text(markdown_table(results), encoding="utf-8"))
    replace_atomically(
        paths["model_index"], lambda p: p.write_text(json.dumps(model_index(results), indent=2, ensure_ascii=False))
    )
    draw_chart(results, paths["chart"], f"{Path(str(model)).name}: {results[0]['task']}")
    return paths
