"""Published numbers next to a model's own: `references.json` (each row citing where it was read) and
``--compare reference``, which adds a comparison table to results.md and draws results_reference.png."""

import json
from pathlib import Path

from altclip.common.files import replace_atomically

REFERENCES_FILE = Path(__file__).parent / "references.json"
# The protocol a dataset is scored with by default: the one its reference numbers used (open_clip's multilingual
# table, from CLIP_benchmark, scores XM3600 with each image's first caption; Flickr30k/-CN/COCO-CN are scored with
# all five captions in the AltCLIP and Chinese-CLIP tables; one-caption sets score the same either way).
DEFAULT_PROTOCOL = {"xm3600": "first_caption"}
CHART_FILE = "results_reference.png"
COMPARED = (
    "text_to_image_recall@1",
    "text_to_image_recall@5",
    "text_to_image_recall@10",
    "image_to_text_recall@1",
    "image_to_text_recall@5",
    "image_to_text_recall@10",
    "mean_recall",
)


def load_references(path: str | Path = REFERENCES_FILE) -> list[dict]:
    return json.loads(Path(path).read_text(encoding="utf-8"))["rows"]


def headline_results(results: list[dict]) -> dict[str, dict]:
    """Per dataset, the row to compare: its mean over languages, else its first row."""
    rows: dict[str, dict] = {}
    for result in results:
        if result.get("task") != "retrieval":
            continue
        if result["language"] == "avg":
            rows[result["dataset"]] = result
        else:
            rows.setdefault(_benchmark(result), result)
    return rows


def _benchmark(result: dict) -> str:
    """The --dataset name of a per-language row (xm3600_de -> xm3600; flickr30k_cn stays itself)."""
    name, language = result["dataset"], result["language"]
    return name[: -len(language) - 1] if name.endswith(f"_{language}") else name


def comparison_rows(results: list[dict], model: str, references: list[dict]) -> list[dict]:
    """[{model, dataset, protocol, languages, metrics, source}]: per dataset, the references then this model."""
    rows = []
    for dataset, result in headline_results(results).items():
        published = [reference for reference in references if reference["dataset"] == dataset]
        if not published:
            continue
        languages = ", ".join(result.get("averaged_over", [result["language"]]))
        rows += published
        rows.append(
            {
                "model": f"**{Path(str(model)).name}** (this run)",
                "dataset": dataset,
                "protocol": result["protocol"],
                "languages": f"mean of {languages}" if "averaged_over" in result else languages,
                "metrics": result["metrics"],
                "source": "altclip-eval",
            }
        )
    return rows


def comparison_markdown(rows: list[dict]) -> str:
    if not rows:
        return "\n## Compared with published numbers\n\nNo published number in references.json for these datasets.\n"
    header = "| dataset | model | protocol | " + " | ".join(COMPARED) + " | languages | source |"
    lines = ["", "## Compared with published numbers", "", header, "|---" * (len(COMPARED) + 5) + "|"]
    for row in rows:
        values = " | ".join(f"{row['metrics'][name]:.2f}" if name in row["metrics"] else "" for name in COMPARED)
        cells = [row["dataset"], row["model"], row["protocol"], values, row["languages"], row["source"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + protocol_notes(rows)) + "\n"


def protocol_notes(rows: list[dict]) -> list[str]:
    """A line per published row scored with another protocol than this run: those numbers are not like for like."""
    ours = {row["dataset"]: row["protocol"] for row in rows if row["source"] == "altclip-eval"}
    notes = [
        f"- {row['model']} on {row['dataset']} used `{row['protocol']}`; this run used `{ours[row['dataset']]}` "
        f"(rerun with `--protocol {row['protocol']}` to compare like with like)."
        for row in rows
        if row["source"] != "altclip-eval" and row["protocol"] != ours.get(row["dataset"], row["protocol"])
    ]
    return ["", *notes] if notes else []


def draw_comparison(rows: list[dict], path: Path) -> None:
    """One panel per dataset: a group of bars per recall, one bar per model."""
    from altclip.common.plots import plt, save_png

    datasets = list(dict.fromkeys(row["dataset"] for row in rows)) or ["(none)"]
    figure, axes = plt.subplots(len(datasets), 1, figsize=(11, 3.8 * len(datasets)), dpi=110, squeeze=False)
    for axis, dataset in zip(axes[:, 0], datasets):
        models = [row for row in rows if row["dataset"] == dataset]
        width = 0.8 / max(1, len(models))
        for offset, row in enumerate(models):
            xs = [index + offset * width - 0.4 + width / 2 for index in range(len(COMPARED))]
            label = row["model"].replace("**", "") + ("" if row["protocol"] == models[-1]["protocol"] else " *")
            axis.bar(xs, [row["metrics"].get(name, 0) for name in COMPARED], width, label=label)
        axis.set_xticks(range(len(COMPARED)), [name.replace("_recall", "") for name in COMPARED], fontsize=7)
        axis.set_ylim(0, 100)
        axis.set_ylabel("%")
        axis.set_title(f"{dataset} ({models[-1]['protocol'] if models else ''})")
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=6, loc="lower right")
    figure.tight_layout()
    save_png(figure, path)


def write_comparison(results: list[dict], model: str, table_path: Path, table: str) -> tuple[str, Path]:
    """Rewrites results.md as the results table plus the comparison, draws the chart; returns (markdown, chart)."""
    rows = comparison_rows(results, model, load_references())
    markdown = table + comparison_markdown(rows)
    replace_atomically(table_path, lambda partial: partial.write_text(markdown, encoding="utf-8"))
    chart = table_path.parent / CHART_FILE
    draw_comparison(rows, chart)
    return markdown, chart
