"""Fine-tuning without forgetting, measured: the reproduction's model adapted to a "new domain".

The held-out emoji of a finished ``altclip-reproduce`` run are split once, by ``--seed``, into a fine-tuning half and
a test half (no test-half name, in any language, is in the fine-tuning captions). The student model is fine-tuned on
the fine-tuning half, named in ``--languages``, three ways through ``altclip-train contrastive`` (same steps, batch and
seed): full fine-tuning of the text tower, LoRA r=16 on the text tower, and LoRA r=16 with the embeddings of the
captions' tokens trainable; each also at WiSE-FT alpha 0.5 (fixed). Full fine-tuning and LoRA + token embeddings also
run with text anchors (``--anchor_texts``: the names of the other emoji the model was trained on, neither scored nor
in the validation split, in ``--languages``), at each of `ANCHOR_RATES` and ``--anchor_weights``. Each method's learning
rate (and anchor weight) is chosen among its candidates on a validation split of the fine-tuning half (other random
views of the fine-tuning emoji, and other emoji the model was trained on), never on a scored set. The start model
and each result are scored by zero-shot top-1 per language on the test half (the domain gain on unseen emoji), on as
many emoji the model was trained on (what it forgot), and on the fine-tuned emoji themselves in fresh random views
(the domain's own labels on new images). Writes results.json, results.md and results.png.

    python -m altclip.reproduction.finetune_demonstration --reproduction_dir outputs/reproduction \\
        --output_dir outputs/finetune_demonstration
"""

import argparse
import json
import logging
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from altclip.common.cli_errors import SEED, int_in_range, one_line_parser_errors, run_with_one_line_errors
from altclip.common.embedding import Embedder
from altclip.common.errors import InputDataError, UsageError
from altclip.common.number_checks import POSITIVE, number_type
from modeling_altclip import AltCLIPModel, AltCLIPProcessor

from .domain_split import DomainSplit, missing_reproduction_files, new_views, split_domain, training_names
from .emoji_data import LANGUAGES
from .finetune_report import write_report
from .run import run_stage
from .stage2_validation import image_folder, top1

logger = logging.getLogger("reproduction")
PROGRAM = "finetune_demonstration"
LORA_FLAGS = ("--lora_r", "16", "--lora_alpha", "32", "--lora_targets", "text", "--merge_adapter", "true")
WISE_FT_ALPHA = 0.5


@dataclass(frozen=True)
class Method:
    """One fine-tuning method: a name (its output folder), a label for the table, the learning rates it may use
    (chosen on the validation split) and its flags."""

    name: str
    label: str
    learning_rates: tuple[float, ...]
    flags: tuple[str, ...] = ()


# Candidates around each method's usual rate: full fine-tuning from a fifth of stage 2's 1e-3 to 3e-3; LoRA from
# the previous demonstration's 1e-3 neighbourhood up to 1e-2, where LoRA learned the new labels in controlled runs.
METHODS = (
    Method("full", "full fine-tuning (text tower)", (2e-4, 1e-3, 3e-3)),
    Method("lora", "LoRA r=16 (text tower)", (1e-3, 1e-2), (*LORA_FLAGS, "--lora_trainable_tokens", "none")),
    Method(
        "lora_tokens",
        "LoRA r=16 + token embeddings",
        (1e-3, 3e-3, 1e-2),
        (*LORA_FLAGS, "--lora_trainable_tokens", "auto"),
    ),
)
VALIDATION_SETS = ("validation_views", "validation_original")
ANCHORED = ("full", "lora_tokens")  # the methods that also run with --anchor_texts, at each rate and weight below
ANCHOR_RATES = (1e-3, 3e-3)
ANCHOR_WEIGHTS = (3.0, 10.0, 30.0)


def check_reproduction(reproduction_dir: Path) -> None:
    """Refuses, in one line, a folder that is not a finished `altclip-reproduce` output."""
    missing = missing_reproduction_files(reproduction_dir)
    if missing:
        raise InputDataError(
            f"{PROGRAM}: {reproduction_dir} is not a finished altclip-reproduce output (no {', '.join(missing)}); "
            f"run `altclip-reproduce --output_dir {reproduction_dir}` first, or pass its folder as --reproduction_dir."
        )


def score(model_dir: Path, folders: dict[str, Path], languages: Sequence[str]) -> dict[str, dict]:
    """Zero-shot top-1 per language and their mean on each image folder; `model_dir` may be an adapter folder."""
    embedder = Embedder.from_pretrained(model_dir, device="cpu", batch_size=256, num_workers=0)
    scores = {}
    for name, folder in folders.items():
        per_language = top1(embedder, folder, languages)
        scores[name] = {"per_language": per_language, "mean": round(sum(per_language.values()) / len(languages), 2)}
    return scores


def fine_tune(
    method: Method, rate: float, start: Path, split: DomainSplit, run_dir: Path, steps: int, batch_size: int
) -> dict:
    """Runs `method` at `rate` through `altclip-train contrastive` in this process; its wall time and trainable
    parameters."""
    logger.info("Fine-tuning: %s (lr %g, %d steps of %d)", method.label, rate, steps, batch_size)
    run_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    run_stage(
        "contrastive",
        run_dir,
        steps,
        batch_size,
        rate,
        "--model_name_or_path",
        str(start),
        "--train_files",
        str(split.finetune_captions),
        *method.flags,
    )
    wall = round(time.perf_counter() - began, 1)
    summary = json.loads((run_dir / "training_summary.json").read_text(encoding="utf-8"))
    logger.info(
        "%s done in %.0f s, %s trainable parameters", method.label, wall, f"{summary['trainable_parameters']:,}"
    )
    return {
        "label": method.label,
        "learning_rate": rate,
        "flags": list(method.flags),
        "wall_s": wall,
        "trainable_parameters": summary["trainable_parameters"],
        "parameters": summary["parameters"],
        "output": str(run_dir),
    }


def validation_folders(reproduction_dir: Path, split: DomainSplit, data_dir: Path, seed: int) -> dict[str, Path]:
    """The validation split of the fine-tuning half: other random views of the fine-tuning emoji, and as many other
    emoji the model was trained on as the scored sample (disjoint from it)."""
    finetune_names = json.loads((split.folders["finetune_new_views"] / "classnames.json").read_text(encoding="utf-8"))
    rows = {slug: {x: names[i] for x, names in finetune_names.items()} for i, slug in enumerate(sorted(split.finetune))}
    trained = training_names(reproduction_dir / "data" / "train_captions.jsonl")
    others = sorted(set(trained) - set(split.original))
    others = sorted(random.Random(seed + 1).sample(others, min(len(split.original), len(others))))
    for slug in others:
        shutil.copy2(reproduction_dir / "data" / "images" / f"{slug}.png", data_dir / "images" / f"{slug}.png")
    return {
        "validation_views": new_views(data_dir, "validation_views", rows, seed + 1),
        "validation_original": image_folder(data_dir, "validation_original", {slug: trained[slug] for slug in others}),
    }


def write_anchor_texts(reproduction_dir: Path, excluded: set[str], languages: Sequence[str], path: Path) -> Path:
    """The names, in `languages`, of the emoji the model was trained on except `excluded` (the scored and the
    validation originals): the texts a user would ask fine-tuning to keep — never a name that is scored."""
    trained = training_names(reproduction_dir / "data" / "train_captions.jsonl")
    held = {trained[slug][x] for slug in excluded & set(trained) for x in languages if x in trained[slug]}
    names = [trained[slug][x] for slug in sorted(set(trained) - excluded) for x in languages if x in trained[slug]]
    # distinct (the trainer keeps each text once), and never a held-out emoji's name under another emoji
    names = [name for name in dict.fromkeys(names) if name not in held]
    path.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    return path


def folder_classes(folder: Path) -> set[str]:
    """The class (emoji) folders of an image folder."""
    return {path.name for path in folder.iterdir() if path.is_dir()}


def choose(candidates: dict[str, dict], label: str) -> tuple[str, dict[str, float]]:
    """The candidate (named by its rate, or rate and anchor weight) whose run scores best on the validation split,
    and each one's score."""
    chosen = max(candidates, key=lambda key: validation_score(candidates[key]["validation"]))
    selection = {key: validation_score(run["validation"]) for key, run in candidates.items()}
    logger.info("%s: validation score per candidate %s; chosen %s", label, selection, chosen)
    return chosen, selection


def validation_score(scores: dict[str, dict]) -> float:
    """What a rate is chosen by: the domain's labels on validation views plus the validation original emoji (mean
    top-1 over the languages): learning and keeping weigh the same."""
    return round(sum(scores[name]["mean"] for name in VALIDATION_SETS), 2)


@torch.no_grad()
def wise_ft_checkpoint(start: Path, finetuned: Path, alpha: float, target: Path) -> Path:
    """start + alpha (fine-tuned - start) on every weight, saved as a model folder: WiSE-FT (``--wise_ft_alpha``'s
    formula) applied to two saved checkpoints, so that each method trains once for both rows. With LoRA the merged
    checkpoint's update is scaled, as scaling the adapter's B would; trained token rows are interpolated."""
    model = AltCLIPModel.from_pretrained(finetuned)
    start_state = AltCLIPModel.from_pretrained(start).state_dict()
    state = {
        name: torch.lerp(start_state[name].float(), tensor.float(), alpha).to(tensor.dtype)
        if tensor.is_floating_point()
        else tensor
        for name, tensor in model.state_dict().items()
    }
    model.load_state_dict(state)
    model.save_pretrained(target)
    AltCLIPProcessor.from_pretrained(finetuned).save_pretrained(target)
    return target


def full_weights(run_dir: Path) -> Path:
    """The folder of a run's full weights: the run itself, or a LoRA run's merged checkpoint."""
    return run_dir / "merged" if (run_dir / "merged" / "config.json").is_file() else run_dir


def demonstrate(
    reproduction_dir: Path,
    output_dir: Path,
    languages: list[str],
    seed: int,
    steps: int,
    batch_size: int,
    anchor_weights: Sequence[float] = ANCHOR_WEIGHTS,
) -> dict:
    """The whole demonstration; returns (and writes into `output_dir`) the report."""
    reproduction_dir, output_dir = reproduction_dir.resolve(), output_dir.resolve()
    check_reproduction(reproduction_dir)
    start = reproduction_dir / "stage2_contrastive"
    split = split_domain(reproduction_dir, output_dir / "data", languages, seed)
    validation = validation_folders(reproduction_dir, split, output_dir / "data", seed)
    excluded = set(split.original) | folder_classes(validation["validation_original"])
    anchors = write_anchor_texts(reproduction_dir, excluded, languages, output_dir / "data" / "anchor_texts.txt")
    logger.info("Split (seed %d): %s", seed, split.counts())
    logger.info("Scoring the start model")
    report = {
        "reproduction_dir": str(reproduction_dir),
        "start_model": str(start),
        "settings": {"seed": seed, "languages": languages, "steps": steps, "batch_size": batch_size},
        "split": {"finetune": split.finetune, "test_half": split.test, "finetune_dropped": split.dropped},
        "original_emoji": split.original,
        "counts": split.counts(),
        "finetune_captions": str(split.finetune_captions),
        "anchor_texts": {"path": str(anchors), "texts": len(anchors.read_text(encoding="utf-8").splitlines())},
        "before": score(start, split.folders, languages),
        "before_validation": score(start, validation, languages),
        "runs": {},
    }
    for method in METHODS:
        candidates = {}
        for rate in method.learning_rates:
            run = fine_tune(method, rate, start, split, output_dir / "runs" / method.name / f"lr-{rate:g}", steps,
                            batch_size)  # fmt: skip
            run["validation"] = score(Path(run["output"]), validation, languages)
            candidates[f"{rate:g}"] = run
        chosen, selection = choose(candidates, method.label)
        run = {**candidates[chosen], "selection": selection, "candidates": list(candidates.values())}
        run["after"] = score(Path(run["output"]), split.folders, languages)
        report["runs"][method.name] = run
        wise_dir = wise_ft_checkpoint(start, full_weights(Path(run["output"])), WISE_FT_ALPHA,
                                      output_dir / "runs" / f"{method.name}_wise_ft")  # fmt: skip
        report["runs"][f"{method.name}_wise_ft"] = {
            **{key: run[key] for key in ("learning_rate", "flags", "wall_s", "trainable_parameters", "parameters")},
            "label": f"{method.label} + WiSE-FT alpha {WISE_FT_ALPHA:g}",
            "wise_ft_alpha": WISE_FT_ALPHA,
            "output": str(wise_dir),
            "after": score(wise_dir, split.folders, languages),
        }
    for name in ANCHORED:
        method = next(method for method in METHODS if method.name == name)
        candidates = {}
        for rate in ANCHOR_RATES:
            for weight in anchor_weights:
                anchored = Method(
                    f"{name}_anchored", f"{method.label} + anchors", (rate,),
                    (*method.flags, "--anchor_texts", str(anchors), "--anchor_weight", f"{weight:g}"),
                )  # fmt: skip
                run_dir = output_dir / "runs" / anchored.name / f"lr-{rate:g}-weight-{weight:g}"
                run = fine_tune(anchored, rate, start, split, run_dir, steps, batch_size)
                run["anchor_weight"] = weight
                run["validation"] = score(Path(run["output"]), validation, languages)
                candidates[f"{rate:g} @ {weight:g}"] = run
        chosen, selection = choose(candidates, f"{method.label} + anchors (lr @ weight)")
        run = {**candidates[chosen], "anchor_selection": selection, "candidates": list(candidates.values())}
        run["label"] = f"{method.label} + anchors (weight {run['anchor_weight']:g})"
        run["after"] = score(Path(run["output"]), split.folders, languages)
        report["runs"][f"{name}_anchored"] = run
    return write_report(report, output_dir)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    parser.add_argument("--reproduction_dir", type=Path, default=Path("outputs/reproduction"))
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/finetune_demonstration"))
    parser.add_argument("--languages", default="en,de,es,zh,ja", help="comma-separated: fine-tuning and scoring")
    parser.add_argument("--seed", type=SEED, default=0, help="which held-out emoji form the fine-tuning half")
    parser.add_argument("--steps", type=int_in_range(1), default=200, help="training steps of every run")
    parser.add_argument("--batch_size", type=int_in_range(1), default=64, help="training batch of every run")
    parser.add_argument("--threads", type=int_in_range(1), default=1, help="torch threads (1: steady on a shared CPU)")
    parser.add_argument(
        "--anchor_weights",
        type=positive_numbers,
        default=list(ANCHOR_WEIGHTS),
        help="comma-separated --anchor_weight candidates of the anchored runs, each at every anchored rate (chosen on "
        "validation)",
    )
    one_line_parser_errors(parser, PROGRAM)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run_with_one_line_errors(PROGRAM, lambda: demonstration_command(args))


def demonstration_command(args: argparse.Namespace) -> None:
    """Checks the reproduction folder and the languages, runs the demonstration and prints its table."""
    check_reproduction(args.reproduction_dir)
    torch.set_num_threads(args.threads)
    languages = [language.strip() for language in args.languages.split(",") if language.strip()]
    unknown = sorted(set(languages) - set(LANGUAGES))
    if unknown or not languages:
        raise UsageError(f"{PROGRAM}: --languages {args.languages!r}: choose among {', '.join(LANGUAGES)}.")
    report = demonstrate(
        args.reproduction_dir, args.output_dir, languages, args.seed, args.steps, args.batch_size, args.anchor_weights
    )
    print(report["table"])
    print(f"Written: {args.output_dir}/results.json, results.md, results.png")


def positive_numbers(text: str) -> list[float]:
    """Comma-separated positive numbers (``--anchor_weights``), each read by `number_type` (one-line errors)."""
    return [number_type(POSITIVE)(part) for part in text.split(",")]


if __name__ == "__main__":
    main()
