"""Published numbers next to a model's own: `references.json` (each row with its model, size, protocol, languages,
source and the date it was read) and ``--compare reference``, which adds a comparison to results.md and draws
results_reference.png.

Only like is put beside like: a published row sits in a run's table when it scored the same dataset with the same
protocol over the same languages. Every other published row for that dataset is listed under it with the reason it
is not comparable (another protocol, another language set, or a protocol or language set its source does not
state), never silently mixed in."""

import json
from dataclasses import dataclass, field
from pathlib import Path

from altclip.common.files import replace_atomically

REFERENCES_FILE = Path(__file__).parent / "references.json"
# The protocol a dataset is scored with by default: the one its reference numbers used (open_clip's multilingual
# table, from CLIP_benchmark, scores XM3600 with each image's first caption; Flickr30k/-CN/COCO-CN are scored with
# all five captions in the AltCLIP and Chinese-CLIP tables; one-caption sets score the same either way).
DEFAULT_PROTOCOL = {"xm3600": "first_caption"}
# Sets with one caption per image: first_caption and all_captions score them identically.
ONE_CAPTION_SETS = frozenset({"xtd10", "xtd200", "flickr30k_200", "multi30k"})
NOT_STATED = "not_stated"
# The prompts altclip-eval's zero-shot uses for ImageNet: clip-benchmark's class names and templates per language.
ZERO_SHOT_PROTOCOL = "clip_benchmark_prompts"
PROTOCOLS = {"retrieval": ("first_caption", "all_captions", NOT_STATED), "zeroshot": (ZERO_SHOT_PROTOCOL, NOT_STATED)}
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
COMPARED_ZERO_SHOT = ("top1", "top5")
REQUIRED_FIELDS = (
    "model",
    "size",
    "task",
    "dataset",
    "protocol",
    "protocol_stated",
    "protocol_basis",
    "languages",
    "languages_averaged",
    "metrics",
    "source",
    "source_detail",
    "read_on",
    "self_reported",
    "found_via",
)


def load_references(path: str | Path = REFERENCES_FILE) -> list[dict]:
    return json.loads(Path(path).read_text(encoding="utf-8"))["rows"]


@dataclass
class Comparison:
    """One benchmark this run scored: the published rows measured like it, and the others with the reason why not."""

    task: str
    dataset: str
    protocol: str
    languages: list[str]
    this_run: dict
    like: list[dict] = field(default_factory=list)
    unlike: list[tuple[dict, str]] = field(default_factory=list)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return COMPARED if self.task == "retrieval" else COMPARED_ZERO_SHOT

    @property
    def title(self) -> str:
        return f"{self.dataset} ({self.protocol}, {describe_languages(self.languages)})"


def describe_languages(languages: list[str]) -> str:
    if len(languages) == 1:
        return languages[0]
    shown = ", ".join(languages) if len(languages) <= 6 else f"{', '.join(languages[:4])}, ... {languages[-1]}"
    return f"mean of {len(languages)}: {shown}"


def _task(result: dict) -> str:
    return "retrieval" if result.get("task") == "retrieval" else "zeroshot"


def headline_results(results: list[dict]) -> list[dict]:
    """The rows to compare: per retrieval dataset its mean over languages (else its first row); every zero-shot row
    (each language is its own benchmark there: ImageNet in Chinese is ImageNet-CN)."""
    retrieval: dict[str, dict] = {}
    zero_shot = []
    for result in results:
        if _task(result) == "zeroshot":
            zero_shot.append(result)
        elif result["language"] == "avg":
            retrieval[result["dataset"]] = result
        else:
            retrieval.setdefault(_benchmark(result), result)
    return [*retrieval.values(), *zero_shot]


def _benchmark(result: dict) -> str:
    """The --dataset name of a per-language row (xm3600_de -> xm3600; flickr30k_cn stays itself)."""
    name, language = result["dataset"], result["language"]
    return name[: -len(language) - 1] if name.endswith(f"_{language}") else name


def not_comparable_because(reference: dict, dataset: str, protocol: str, languages: list[str]) -> str | None:
    """Why a published row cannot stand beside this run (None: it can), every reason that applies. Same dataset
    and task assumed."""
    reasons = []
    theirs = reference["protocol"]
    if theirs == NOT_STATED:
        reasons.append(f"its source does not state the protocol ({reference['protocol_basis']})")
    elif theirs != protocol and not (dataset in ONE_CAPTION_SETS and protocol != NOT_STATED):
        rerun = f" (rerun with `--protocol {theirs}`)" if theirs in PROTOCOLS["retrieval"][:2] else ""
        reasons.append(f"scored with `{theirs}`, this run with `{protocol}`{rerun}")
    if reference["languages"] is None:
        reasons.append(f"its source does not state the languages averaged ({reference['languages_averaged']})")
    elif sorted(reference["languages"]) != sorted(languages):
        reasons.append(
            f"it averages {describe_languages(reference['languages'])}, this run {describe_languages(languages)}"
            " (rerun with those languages)"
        )
    return "; ".join(reasons) or None


def compare(results: list[dict], model: str, references: list[dict]) -> list[Comparison]:
    """Per benchmark of this run that has published rows: those measured like it, and the others with the reason."""
    comparisons = []
    for result in headline_results(results):
        task = _task(result)
        dataset = _benchmark(result) if task == "retrieval" else result["dataset"]
        protocol = result.get("protocol", ZERO_SHOT_PROTOCOL)
        languages = list(result.get("averaged_over", [result["language"]]))
        published = [row for row in references if row["task"] == task and row["dataset"] == dataset]
        if not published:
            continue
        this_run = {
            "model": f"**{Path(str(model)).name}** (this run)",
            "size": "",
            "protocol": protocol,
            "languages": languages,
            "metrics": result["metrics"],
            "source": "altclip-eval",
        }
        comparison = Comparison(task, dataset, protocol, languages, this_run)
        for row in published:
            reason = not_comparable_because(row, dataset, protocol, languages)
            if reason is None:
                comparison.like.append(row)
            else:
                comparison.unlike.append((row, reason))
        comparisons.append(comparison)
    return comparisons


def _model_cell(row: dict) -> str:
    return row["model"] + (" (self-reported)" if row.get("self_reported") else "")


def _protocol_cell(row: dict) -> str:
    return row["protocol"] + ("" if row.get("protocol_stated", True) else " †")


def _values(row: dict, names: tuple[str, ...]) -> str:
    return " | ".join(f"{row['metrics'][name]:.2f}" if name in row["metrics"] else "–" for name in names)


def comparison_markdown(comparisons: list[Comparison]) -> str:
    lines = ["", "## Compared with published numbers", ""]
    if not comparisons:
        return "\n".join([*lines, "No published number in references.json for these datasets.", ""])
    for comparison in comparisons:
        names = comparison.metric_names
        header = "| model | size | protocol | " + " | ".join(names) + " | languages | source |"
        rule = "|---" * (len(names) + 5) + "|"
        lines += [f"### {comparison.title}", ""]
        if comparison.like:
            lines.append("Published numbers measured like this run (same protocol, same languages):")
        else:
            lines.append(
                "No published number was measured like this run (same protocol, same languages): this run stands "
                "alone here."
            )
        lines += ["", header, rule]
        for row in [*comparison.like, comparison.this_run]:
            cells = [_model_cell(row), row.get("size", ""), _protocol_cell(row), _values(row, names)]
            cells += [describe_languages(row["languages"]), row["source"]]
            lines.append("| " + " | ".join(cells) + " |")
        if comparison.unlike:
            lines += [
                "",
                "Not comparable as they stand (listed for orientation, not ranked against this run):",
                "",
                "| model | size | protocol | " + " | ".join(names) + " | why not like for like | source |",
                rule,
            ]
            for row, reason in comparison.unlike:
                cells = [_model_cell(row), row["size"], _protocol_cell(row), _values(row, names), reason, row["source"]]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(
        "† the source does not state the protocol; it is inferred (each row's `protocol_basis` in "
        "evaluation/references.json says from what). Every published row names its source and the date it was read."
    )
    return "\n".join(lines) + "\n"


def draw_comparison(comparisons: list[Comparison], path: Path) -> None:
    """One panel per benchmark: a group of bars per metric, one bar per like-for-like model and this run."""
    from altclip.common.plots import plt, save_png

    panels = comparisons or [None]
    figure, axes = plt.subplots(len(panels), 1, figsize=(11, 3.8 * len(panels)), dpi=110, squeeze=False)
    for axis, comparison in zip(axes[:, 0], panels):
        if comparison is None:
            axis.set_title("no published number for these datasets")
            axis.axis("off")
            continue
        names, models = comparison.metric_names, [*comparison.like, comparison.this_run]
        width = 0.8 / len(models)
        for offset, row in enumerate(models):
            xs = [index + offset * width - 0.4 + width / 2 for index in range(len(names))]
            axis.bar(xs, [row["metrics"].get(name, 0) for name in names], width, label=row["model"].replace("**", ""))
        axis.set_xticks(range(len(names)), [name.replace("_recall", "") for name in names], fontsize=7)
        axis.set_ylim(0, 100)
        axis.set_ylabel("%")
        axis.set_title(comparison.title + ("" if comparison.like else ": no like-for-like published number"))
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=6, loc="lower right")
    figure.tight_layout()
    save_png(figure, path)


def write_comparison(results: list[dict], model: str, table_path: Path, table: str) -> tuple[str, Path]:
    """Rewrites results.md as the results table plus the comparison, draws the chart; returns (markdown, chart)."""
    comparisons = compare(results, model, load_references())
    markdown = table + comparison_markdown(comparisons)
    replace_atomically(table_path, lambda partial: partial.write_text(markdown, encoding="utf-8"))
    chart = table_path.parent / CHART_FILE
    draw_comparison(comparisons, chart)
    return markdown, chart
