"""Stage 2's learning rate for the reproduction, chosen on validation splits carved from the training emoji.

`stage2_validation` writes one report per validation split (stage 2 at several learning rates, scored every few
hundred steps on emoji removed from every training file; the 207 test emoji are never read). This module turns
those reports into one choice by a fixed rule and keeps the choice, with the sweep behind it, in the package
(`stage2_selection.json`) so that `altclip-reproduce` can write both into its `results.json`:

    python -m altclip.reproduction.stage2_selection docs/stage2_validation_small*.json

Rule: the learning rate with the highest validation top-1 at the run's last step, as the mean over the 13
non-English languages and then over the splits it was measured on.
"""

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from altclip.common.cli_errors import one_line_parser_errors, run_with_one_line_errors
from altclip.common.errors import InputDataError

SELECTION_FILE = Path(__file__).with_name("stage2_selection.json")
RULE = (
    "highest mean non-English validation top-1 at stage 2's last step, averaged over the validation splits "
    "(stage2_validation reports; the test emoji are never read)"
)


def final_scores(report: dict) -> dict[str, float]:
    """learning rate -> validation mean non-English top-1 at the last scored step of that run."""
    scores = {}
    for rate, curve in report["runs"].items():
        last = max(curve, key=int)
        scores[rate] = curve[last]["validation"]["mean_non_english"]
    return scores


def select_learning_rate(reports: dict[str, dict]) -> dict:
    """`reports`: split name -> stage2_validation report. Returns the sweep (per rate and split) and the choice."""
    if not reports:
        raise ValueError("no stage2_validation report given")
    sweep: dict[str, dict[str, float]] = {}
    for split, report in reports.items():
        for rate, score in final_scores(report).items():
            sweep.setdefault(rate, {})[split] = score
    means = {rate: round(sum(by_split.values()) / len(by_split), 3) for rate, by_split in sweep.items()}
    chosen = max(means, key=lambda rate: (means[rate], -float(rate)))  # a tie goes to the smaller rate
    presets = {report["preset"] for report in reports.values()}
    return {
        "rule": RULE,
        "presets": sorted(presets),
        "splits": {split: report.get("validation_seed", 1) for split, report in reports.items()},
        "stage1_validation_mean_non_english": {
            split: report["stage1"]["validation"]["mean_non_english"] for split, report in reports.items()
        },
        "sweep": {rate: {"per_split": sweep[rate], "mean": means[rate]} for rate in sorted(sweep, key=float)},
        "chosen": {"stage2_learning_rate": float(chosen)},
    }


def load_selection(path: Path = SELECTION_FILE) -> dict:
    """The packaged choice (what `altclip-reproduce` reports); an empty dict where it was never written."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="stage2_validation.json files, one per split")
    parser.add_argument("--output", type=Path, default=SELECTION_FILE)
    one_line_parser_errors(parser, "stage2_selection")
    args = parser.parse_args(argv)
    run_with_one_line_errors("stage2_selection", lambda: select_command(args.reports, args.output))


def select_command(paths: Sequence[Path], output: Path) -> None:
    """Reads the reports, writes the selection to `output` and prints the sweep; bad reports are `InputDataError`."""
    reports = {}
    for path in paths:
        if not path.is_file():
            raise InputDataError(f"{path} does not exist; give stage2_validation.json reports.")
        try:
            reports[path.name] = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise InputDataError(f"{path} is not JSON ({error}); give stage2_validation.json reports.") from None
    try:
        selection = select_learning_rate(reports)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise InputDataError(
            f"the reports lack what stage2_validation writes ({type(error).__name__}: {error}); "
            "give stage2_validation.json reports."
        ) from None
    output.write_text(json.dumps(selection, indent=1) + "\n", encoding="utf-8")
    for rate, row in selection["sweep"].items():
        print(f"lr {rate}: {row['per_split']} mean {row['mean']}")
    print(f"chosen: {selection['chosen']}; written {output}")


if __name__ == "__main__":
    main()
