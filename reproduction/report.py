"""The reproduction's table and chart: per language, the student next to the English teacher and the baseline."""

import json
from pathlib import Path

from altclip.common.files import replace_atomically
from altclip.common.plots import plt, save_png

MODELS = {"teacher": "teacher (English CLIP)", "stage1": "stage 1 only", "student": "AltCLIP student"}


def headline(results: list[dict]) -> dict[str, dict[str, float]]:
    """language -> {top1, R@1, R@5}; R@k is the mean of the image->text and text->image recall@k."""
    rows: dict[str, dict[str, float]] = {}
    for result in results:
        metrics, row = result["metrics"], rows.setdefault(result["language"], {})
        if result["task"] == "zero-shot classification":
            row["top1"] = metrics["top1"]
        else:
            for k in (1, 5):
                row[f"R@{k}"] = round(
                    (metrics[f"image_to_text_recall@{k}"] + metrics[f"text_to_image_recall@{k}"]) / 2, 2
                )
    return rows


def markdown(summary: dict[str, dict[str, dict[str, float]]], languages: list[str], test_emoji: int) -> str:
    columns = [
        ("teacher", "top1"),
        ("student", "top1"),
        ("stage1", "top1"),
        ("teacher", "R@1"),
        ("student", "R@1"),
        ("teacher", "R@5"),
        ("student", "R@5"),
    ]
    names = {"teacher": "teacher", "student": "student", "stage1": "stage-1 student"}
    lines = [
        "| language | " + " | ".join(f"{names[m]} {metric}" for m, metric in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for language in languages:
        cells = [f"{summary[model][language][metric]:.1f}" for model, metric in columns]
        lines.append(f"| {language} | " + " | ".join(cells) + " |")
    lines.append(
        f"\nHeld-out emoji: {test_emoji} (chance top-1 {100 / test_emoji:.1f}%). The teacher's English row is "
        "the reference; its other rows are the baseline (the English CLIP given non-English text)."
    )
    return "\n".join(lines) + "\n"


def draw(summary: dict, languages: list[str], path: Path, test_emoji: int) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.2), dpi=120, sharey=False)
    for axis, metric in zip(axes, ("top1", "R@5")):
        width = 0.27
        for offset, model in enumerate(("teacher", "stage1", "student")):
            xs = [i + (offset - 1) * width for i in range(len(languages))]
            axis.bar(xs, [summary[model][lang][metric] for lang in languages], width, label=MODELS[model])
        axis.axhline(
            summary["teacher"]["en"][metric], color="black", linestyle="--", linewidth=1, label="teacher, English"
        )
        if metric == "top1":
            axis.axhline(100 / test_emoji, color="grey", linestyle=":", linewidth=1, label="chance")
        axis.set_xticks(range(len(languages)), languages)
        axis.set_title({"top1": "zero-shot top-1 (%)", "R@5": "retrieval R@5, mean of both directions (%)"}[metric])
        axis.grid(axis="y", alpha=0.3)
    finish_with_legend_below(figure, axes[0], f"AltCLIP on {test_emoji} held-out emoji, per language", path, 0.06)


def finish_with_legend_below(figure, axis, title: str, path: Path, bottom: float) -> None:
    """The reproduction charts' ending: `axis`'s legend in one row under the panels, the title, the PNG."""
    handles, labels = axis.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncols=len(labels), fontsize=8, frameon=False)
    figure.suptitle(title)
    figure.tight_layout(rect=(0, bottom, 1, 1))
    save_png(figure, path)


def write_json_and_markdown(output_dir: Path, stem: str, report: dict, table: str) -> None:
    """`stem`.json (the whole report) and `stem`.md (its table) in `output_dir`, each written whole."""
    replace_atomically(
        output_dir / f"{stem}.json",
        lambda p: p.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8"),
    )
    replace_atomically(output_dir / f"{stem}.md", lambda p: p.write_text(table, encoding="utf-8"))


def write_report(evaluations: dict[str, list[dict]], output_dir: Path, extra: dict) -> dict:
    """results.json (every metric), results.md (the table) and results.png (the chart) in `output_dir`."""
    summary = {model: headline(results) for model, results in evaluations.items()}
    languages = list(summary["student"])
    table = markdown(summary, languages, extra["test_emoji"])
    report = {"summary": summary, "table": table, **extra, "results": evaluations}
    write_json_and_markdown(output_dir, "results", report, table)
    draw(summary, languages, output_dir / "results.png", extra["test_emoji"])
    return report
