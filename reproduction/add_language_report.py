"""The add-language demonstration's table: per language, the student trained with all 14 languages, the one
trained without the held-out language, and that one with the language added, on two scored sets; mean (min-max)
over the seeds."""

MODELS = {
    "all_languages": "all 14 from the start",
    "without": "13 (held-out language never seen)",
    "added": "13 + added",
}
SETS = {"training_emoji": "training emoji (names known to the model)", "held_out": "207 held-out emoji"}


def spread(values: list[float]) -> str:
    mean = sum(values) / len(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ({min(values):.1f}–{max(values):.1f})"


def markdown(report: dict) -> str:
    """One table per scored set: language | each model's top-1."""
    runs = list(report["runs"].values())
    language = report["language"]
    lines = []
    for set_name, set_label in SETS.items():
        lines.append(f"Zero-shot top-1 (%) on the {set_label}, {len(runs)} seed(s): mean (min–max)")
        lines.append("")
        lines.append("| language | " + " | ".join(MODELS.values()) + " |")
        lines.append("|---|" + "---:|" * len(MODELS))
        codes = list(runs[0]["scores"][set_name]["all_languages"])
        codes = [language] + [code for code in codes if code != language]
        for code in codes:
            cells = [spread([run["scores"][set_name][model][code] for run in runs]) for model in MODELS]
            name = f"**{code}** (added)" if code == language else code
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        others = [code for code in codes if code != language]
        means = [
            spread([sum(run["scores"][set_name][model][code] for code in others) / len(others) for run in runs])
            for model in MODELS
        ]
        lines.append("| mean of the other 13 | " + " | ".join(means) + " |")
        lines.append("")
    guards = [run["guard"] for run in runs]
    dropped = sorted({code for guard in guards for code in guard["dropped"]})
    lines.append(
        f"Guard (validation emoji, max drop {guards[0]['max_drop']:g} points): "
        + (f"tripped for {', '.join(dropped)}." if dropped else "no known language dropped beyond it.")
    )
    return "\n".join(lines) + "\n"
