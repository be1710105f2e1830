"""The fine-tuning demonstration's table and chart: each method's cost and its top-1 before and after, on the new
domain's test half and on the emoji the model was trained on."""

from pathlib import Path

from altclip.common.plots import plt

from .report import finish_with_legend_below, write_json_and_markdown

SETS = {
    "finetune_new_views": "fine-tuned emoji, new views (domain)",
    "test_half": "test half (unseen emoji of the domain)",
    "original_emoji": "original emoji (forgetting)",
}


def markdown(report: dict) -> str:
    """method | trainable params | wall s | top-1 before -> after on each scored set."""
    before, counts, settings = report["before"], report["counts"], report["settings"]
    lines = [
        "| method | lr (chosen on validation) | trainable params | wall s | fine-tuned emoji, new views: top-1 "
        "before → after | test-half (unseen) top-1 before → after | original-emoji top-1 before → after |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in report["runs"].values():
        cells = [f"{before[name]['mean']:.1f} → {run['after'][name]['mean']:.1f}" for name in SETS]
        rate = f"{run['learning_rate']:g}" + (f" (of {', '.join(run['selection'])})" if "selection" in run else "")
        if "anchor_selection" in run:
            rate += f" (of lr @ weight {', '.join(run['anchor_selection'])})"
        lines.append(
            f"| {run['label']} | {rate} | {run['trainable_parameters']:,} | {run['wall_s']:.0f} | {' | '.join(cells)} |"
        )
    lines.append(
        f"\nTop-1 in %, mean over {', '.join(settings['languages'])}; the fine-tuned emoji in a fresh random view "
        f"(scaled, moved), among their {counts['finetune_emoji']} names; {counts['test_half_emoji']} test-half emoji "
        f"(chance {100 / counts['test_half_emoji']:.1f}%), {counts['original_emoji_sample']} original emoji; "
        f"fine-tuned on {counts['finetune_emoji']} emoji ({counts['finetune_emoji_dropped_for_shared_names']} dropped "
        f"for sharing a test-half name), {settings['steps']} steps of {settings['batch_size']}, split seed "
        f"{settings['seed']}."
    )
    lines += ["", "Per language, after (before: the start model):", ""]
    languages = settings["languages"]
    lines += [
        "| method | set | " + " | ".join(languages) + " |",
        "|---|---|" + "---:|" * len(languages),
    ]
    rows = {"start model": before, **{run["label"]: run["after"] for run in report["runs"].values()}}
    for label, scores in rows.items():
        for name in SETS:
            values = " | ".join(f"{scores[name]['per_language'][language]:.1f}" for language in languages)
            lines.append(f"| {label} | {name} | {values} |")
    return "\n".join(lines) + "\n"


SHORT_NAMES = {"full": "full FT", "lora": "LoRA", "lora_tokens": "LoRA + tokens"}
SUFFIXES = {"_wise_ft": " + WiSE-FT", "_anchored": " + anchors"}


def short_label(run_name: str) -> str:
    """A chart's tick label for a run (``lora_tokens_anchored`` -> "LoRA + tokens + anchors")."""
    for suffix, label in SUFFIXES.items():
        if run_name.endswith(suffix):
            return SHORT_NAMES.get(run_name.removesuffix(suffix), run_name) + label
    return SHORT_NAMES.get(run_name, run_name)


def draw(report: dict, path: Path) -> None:
    """Before and after bars (mean top-1 over the languages) per method, one panel per scored set."""
    runs = list(report["runs"].values())
    figure, axes = plt.subplots(1, len(SETS), figsize=(16, 5.2), dpi=120)
    classes = {"finetune_new_views": "finetune", "test_half": "test_half"}
    width = 0.38
    for axis, (name, title) in zip(axes, SETS.items()):
        xs = range(len(runs))
        axis.bar([x - width / 2 for x in xs], [report["before"][name]["mean"]] * len(runs), width, label="before")
        axis.bar([x + width / 2 for x in xs], [run["after"][name]["mean"] for run in runs], width, label="after")
        chance = 100 / len(report["split"][classes[name]] if name in classes else report["original_emoji"])
        axis.axhline(chance, color="grey", linestyle=":", linewidth=1, label="chance")
        axis.set_xticks(list(xs), [short_label(name) for name in report["runs"]], rotation=45, ha="right")
        axis.tick_params(axis="x", labelsize=8)
        axis.set_title(f"{title}\nzero-shot top-1 (%)", fontsize=9)
        axis.grid(axis="y", alpha=0.3)
    title = f"Fine-tuning on half of the held-out emoji ({', '.join(report['settings']['languages'])})"
    finish_with_legend_below(figure, axes[0], title, path, 0.05)


def write_report(report: dict, output_dir: Path) -> dict:
    """results.json (everything), results.md (the table) and results.png (the chart) in `output_dir`."""
    report = {**report, "table": markdown(report)}
    write_json_and_markdown(output_dir, "results", report, report["table"])
    draw(report, output_dir / "results.png")
    return report
