"""Recipe variants x training seeds, scored on a validation split carved from the training emoji.

    python -m altclip.reproduction.ablation --preset small --seeds 0 1 --parallel 2 --output_dir outputs/ablation

The held-out test emoji are never read: 15% of the training emoji (``--validation_seed``) become validation emoji,
removed with their names from every training file, as the test emoji are (``stage2_validation.carve_validation``).
Per seed, the teacher CLIP and stage 1 are trained once; each variant is then stage 2 with a few extra
``altclip-train contrastive`` flags (or, for ``stage1``, no stage 2 at all), so a new variant is one line in
``VARIANTS``. Each model is scored on the validation emoji at every embedding size in ``--dims`` (full and a
quarter by default: the first N dimensions, re-normalised) by zero-shot top-1 among the validation names and
retrieval R@5 (mean of image->text and text->image), per language. Writes ``ablation.json``, ``ablation.md`` (mean,
min-max over seeds, paired difference against the variant's reference per seed, wall time) and ``ablation.png``.
Runs go ``--parallel`` at a time, each in its own process at one thread.
"""

import argparse
import json
import logging
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from itertools import product
from multiprocessing import get_context
from pathlib import Path

import torch
import torch.nn.functional as F

from altclip.common.cli_errors import SEED, int_in_range, one_line_parser_errors, run_with_one_line_errors
from altclip.common.embedding import Embedder
from altclip.common.errors import UsageError
from altclip.common.plots import plt
from altclip.common.records import write_jsonl
from altclip.evaluation.retrieval import retrieval_scores
from modeling_altclip import AltCLIPModel, AltCLIPProcessor

from .emoji_data import LANGUAGES, read_jsonl, write_emoji_dataset
from .report import finish_with_legend_below, write_json_and_markdown
from .run import PRESETS, Preset, contrastive_learning, teacher_learning
from .stage2_validation import carve_validation
from .teacher_clip import train_teacher_clip

logger = logging.getLogger("reproduction.ablation")
ENGLISH_SKEW = 10  # the skewed mix: each English caption ten times, every other language once


@dataclass(frozen=True)
class Variant:
    """A recipe variant: extra `altclip-train contrastive` flags, the stage-2 captions it trains on (``natural``: one
    caption per emoji and language; ``skewed``: English ten times), and the variant it is paired against."""

    flags: tuple[str, ...] = ()
    against: str | None = "infonce"
    captions: str = "natural"
    stage2: bool = True
    about: str = ""


VARIANTS = {
    "stage1": Variant(against=None, stage2=False, about="stage 1 only (no stage 2)"),
    "infonce": Variant(against="stage1", about="the recipe: stage 2 with InfoNCE"),
    "siglip": Variant(("--loss", "siglip"), about="stage 2 with the sigmoid loss"),
    "matryoshka": Variant(
        ("--matryoshka_dims", "{quarter},{half}"), about="stage 2 on nested prefixes (a quarter, half, all)"
    ),
    "skewed": Variant(against="infonce", captions="skewed", about=f"English captions x{ENGLISH_SKEW}, unbalanced"),
    "skewed_balanced": Variant(
        ("--language_column", "language", "--language_sampling_alpha", "0.3"),
        against="skewed",
        captions="skewed",
        about=f"English captions x{ENGLISH_SKEW}, languages sampled by n^0.3",
    ),
}
METRICS = ("top1", "R@5")


def write_skewed_captions(train_captions: Path, target: Path, english_copies: int = ENGLISH_SKEW) -> Path:
    """The training captions with every English row `english_copies` times (a deliberately skewed language mix)."""
    rows = read_jsonl(train_captions)
    return write_jsonl(target, [row for row in rows for _ in range(english_copies if row["language"] == "en" else 1)])


RECORD = "ablation_run.json"  # written into a model folder once its job is done: --resume keeps it


def finished(folder: Path) -> dict | None:
    """The record of a finished job in `folder` (its model, wall time, scores), or None."""
    path = folder / RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def record(folder: Path, result: dict) -> dict:
    (folder / RECORD).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def prepare_seed(preset: Preset, data_dir: Path, imagenet: Path, seed_dir: Path, seed: int) -> dict:
    """The teacher CLIP and stage 1 of one seed (shared by every variant of that seed)."""
    if done := finished(seed_dir / "stage1"):
        return done
    started = time.time()
    teacher = train_teacher_clip(data_dir, seed_dir / "teacher_clip", preset.teacher, seed=seed)
    stage1 = teacher_learning(preset, teacher, seed_dir / "xlmr_init", seed_dir / "stage1", imagenet, seed=seed)
    return record(stage1, {"model": str(stage1), "wall_s": round(time.time() - started, 1)})


def flags_for(variant: Variant, projection_dim: int) -> list[str]:
    """The variant's flags with {quarter}, {half} and {full} replaced by those embedding sizes."""
    sizes = {"quarter": projection_dim // 4, "half": projection_dim // 2, "full": projection_dim}
    return [flag.format(**sizes) for flag in variant.flags]


def train_variant(preset: Preset, variant: Variant, stage1: Path, captions: Path, output_dir: Path, seed: int) -> dict:
    """Stage 2 of one variant and seed: the recipe's `altclip-train contrastive` run plus the variant's flags."""
    stage2 = {"steps": preset.stage2_steps, "batch_size": preset.stage2_batch_size, "lr": preset.stage2_learning_rate}
    if done := finished(output_dir):
        if done.get("stage2") != stage2:
            raise UsageError(
                f"ablation: {output_dir} was trained with stage 2 {done.get('stage2')}, not {stage2}; resume with "
                "the same --stage2_steps or choose a new --output_dir."
            )
        return done
    started = time.time()
    contrastive_learning(
        preset, output_dir, stage1, captions, *flags_for(variant, preset.teacher.projection_dim), seed=seed
    )
    return record(output_dir, {"model": str(output_dir), "wall_s": round(time.time() - started, 1), "stage2": stage2})


def seed_job(
    preset: Preset, data_dir: Path, imagenet: Path, seed_dir: Path, seed: int, validation: Path, dims: Sequence[int]
) -> dict:
    """A seed's teacher CLIP and stage 1, then the stage-1 model's scores."""
    result = prepare_seed(preset, data_dir, imagenet, seed_dir, seed)
    score_once(Path(result["model"]), validation, dims)
    return result


def variant_job(
    preset: Preset,
    variant: Variant,
    stage1: Path,
    captions: Path,
    output_dir: Path,
    seed: int,
    validation: Path,
    dims: Sequence[int],
) -> None:
    """One variant's stage 2 for one seed, then its scores (each finished model is scored at once, so that a run
    stopped early still leaves usable rows: `--summarise_only`)."""
    train_variant(preset, variant, stage1, captions, output_dir, seed)
    score_once(output_dir, validation, dims)


def finished_runs(output_dir: Path, variants: dict[str, Variant], seeds: Sequence[int]) -> dict[str, dict[int, dict]]:
    """The scored records of every variant that has one for each seed; a variant missing any is left out, said."""
    runs = {}
    for name, variant in variants.items():
        folders = {seed: output_dir / f"seed-{seed}" / (name if variant.stage2 else "stage1") for seed in seeds}
        records = {seed: finished(folder) for seed, folder in folders.items()}
        missing = [seed for seed, found in records.items() if not (found and "scores" in found)]
        if missing:
            logger.warning("variant %s has no scored run for seeds %s: left out of the table", name, missing)
            continue
        runs[name] = records
    if not runs:
        raise UsageError(f"ablation: no variant in {output_dir} has a scored run for every seed {list(seeds)}.")
    return runs


def score_once(model_dir: Path, validation: Path, dims: Sequence[int]) -> dict:
    """`score`, kept in the model folder's record (a resumed ablation does not score a model twice)."""
    done = finished(model_dir) or {}
    wanted = [str(size) for size in dims]
    if all(size in done.get("scores", {}) for size in wanted):
        return {size: done["scores"][size] for size in wanted}
    done["scores"] = score(model_dir, validation, dims)
    record(model_dir, done)
    return done["scores"]


def score(model_dir: Path, validation: Path, dims: Sequence[int]) -> dict[str, dict[str, dict[str, float]]]:
    """{dims: {language: {top1, R@5}}} on the validation folder (one image per emoji, its name per language).
    The embeddings are computed once and cut to each size here (first N dimensions, re-normalised), so that any
    model, trained with nested prefixes or not, is scored at every size from the same forward pass."""
    embedder = Embedder(
        AltCLIPModel.from_pretrained(model_dir), AltCLIPProcessor.from_pretrained(model_dir), device="cpu"
    )
    names = json.loads((validation / "classnames.json").read_text(encoding="utf-8"))
    slugs = sorted(path.name for path in validation.iterdir() if path.is_dir())  # classnames.json's order
    images, kept, skipped = embedder.images([validation / slug / f"{slug}.png" for slug in slugs], "validation")
    if skipped:
        raise ValueError(f"{len(skipped)} validation images could not be read, e.g. {skipped[0].where}")
    texts = {language: embedder.texts(names[language], f"{language} names") for language in LANGUAGES}
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for size in dims:
        cut_images = F.normalize(images[:, :size], dim=-1)
        per_language = {}
        for language in LANGUAGES:
            recall = retrieval_scores(cut_images, F.normalize(texts[language][:, :size], dim=-1), kept)
            per_language[language] = {
                "top1": recall["image_to_text_recall@1"],  # zero-shot top-1: each image among every name
                "R@5": (recall["image_to_text_recall@5"] + recall["text_to_image_recall@5"]) / 2,
            }
        scores[str(size)] = per_language
    return scores


def headline(per_language: dict[str, dict[str, float]]) -> dict[str, float]:
    """English and the mean of the 13 other languages, per metric."""
    row = {}
    for metric in METRICS:
        row[f"en {metric}"] = per_language["en"][metric]
        row[f"non-en {metric}"] = statistics.fmean(v[metric] for k, v in per_language.items() if k != "en")
    return row


def summarise(runs: dict[str, dict[int, dict]], dims: Sequence[int], variants: dict[str, Variant]) -> dict:
    """Per variant and size: each headline column's mean, min, max and per-seed values; the paired difference
    against the variant's reference (same seed); the mean wall time of its training."""
    full = str(max(dims))
    table = {}
    for name, by_seed in runs.items():
        seeds = sorted(by_seed)
        row: dict = {"about": variants[name].about, "flags": " ".join(variants[name].flags), "against": None}  # noqa: E501
        for size in map(str, dims):
            values = {seed: headline(by_seed[seed]["scores"][size]) for seed in seeds}
            for column in values[seeds[0]]:
                series = [values[seed][column] for seed in seeds]
                row[f"{column} @{size}"] = cell(series)
        reference = variants[name].against
        if reference in runs:  # paired by seed: the same teacher, stage 1 and data order on both sides
            row["against"] = reference
            for column in ("non-en top1", "non-en R@5", "en top1", "en R@5"):
                pairs = [
                    headline(by_seed[seed]["scores"][full])[column]
                    - headline(runs[reference][seed]["scores"][full])[column]
                    for seed in seeds
                ]
                row[f"paired {column} @{full}"] = cell(pairs)
        row["wall_s"] = cell([by_seed[seed]["wall_s"] for seed in seeds])
        table[name] = row
    return table


def cell(values: list[float]) -> dict:
    return {
        "mean": round(statistics.fmean(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "runs": [round(value, 2) for value in values],
    }


def markdown(table: dict, dims: Sequence[int], seeds: Sequence[int]) -> str:
    full, quarter = max(dims), min(dims)

    def spread(item: dict) -> str:
        return f"{item['mean']:.1f} ({item['min']:.1f}–{item['max']:.1f})"

    def paired(row: dict, column: str) -> str:
        item = row.get(f"paired {column} @{full}")
        return ", ".join(f"{value:+.1f}" for value in item["runs"]) if item else ""

    header = (
        f"| variant | vs | non-en top-1 | en top-1 | non-en R@5 | en R@5 | non-en R@5 @{quarter} dims | "
        f"Δ non-en top-1 per seed | Δ non-en R@5 per seed | Δ en R@5 per seed | wall s |"
    )
    lines = [header, "|---|---|" + "---:|" * 9]
    for name, row in table.items():
        cells = [spread(row[f"{column} @{full}"]) for column in ("non-en top1", "en top1", "non-en R@5", "en R@5")]
        kept = row[f"non-en R@5 @{quarter}"]["mean"] / max(row[f"non-en R@5 @{full}"]["mean"], 1e-9)
        cells.append(f"{spread(row[f'non-en R@5 @{quarter}'])} ({100 * kept:.0f}%)")
        cells += [paired(row, "non-en top1"), paired(row, "non-en R@5"), paired(row, "en R@5")]
        cells.append(f"{row['wall_s']['mean']:.0f}")
        lines.append(f"| {name} | {row['against'] or ''} | " + " | ".join(cells) + " |")
    lines.append(
        f"\nValidation emoji, in %: mean (min–max) over seeds {', '.join(map(str, seeds))}, at {full} dimensions "
        f"unless said; Δ: the variant minus its reference ('vs'), same seed; wall s: the variant's own training "
        f"(stage1: teacher CLIP + stage 1), runs side by side."
    )
    return "\n".join(lines) + "\n"


def draw(table: dict, dims: Sequence[int], path: Path) -> None:
    """Mean non-English top-1 and R@5 (full and quarter size) per variant, with the seeds' range."""
    full, quarter = max(dims), min(dims)
    columns = [(f"non-en top1 @{full}", "top-1"), (f"non-en R@5 @{full}", "R@5"), (f"non-en R@5 @{quarter}", "")]
    columns[2] = (columns[2][0], f"R@5, first {quarter} dims")
    names = list(table)
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(names)), 4), dpi=120)
    width = 0.8 / len(columns)
    for offset, (column, label) in enumerate(columns):
        cells = [table[name][column] for name in names]
        xs = [i + (offset - 1) * width for i in range(len(names))]
        means = [c["mean"] for c in cells]
        errors = [[m - c["min"] for m, c in zip(means, cells)], [c["max"] - m for m, c in zip(means, cells)]]
        axis.bar(xs, means, width, yerr=errors, capsize=2, label=f"non-English {label}")
    axis.set_xticks(range(len(names)), names, fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    finish_with_legend_below(
        figure, axis, "Recipe variants on the validation emoji (%), mean and seed range", path, 0.1
    )


def in_worker(function, *args):
    """Runs one job in a pool process (at one thread: the pool's initializer)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return function(*args)


def parallel_map(pool: ProcessPoolExecutor, function, jobs: list[tuple]) -> list:
    return [future.result() for future in [pool.submit(in_worker, function, *job) for job in jobs]]


def run_ablation(
    output_dir: Path,
    preset: Preset,
    variants: dict[str, Variant],
    seeds: Sequence[int],
    parallel: int = 1,
    dims: Sequence[int] | None = None,
    validation_fraction: float = 0.15,
    validation_seed: int = 1,
    resume: bool = False,
    train: bool = True,
) -> dict:
    """Every step into `output_dir` (new or empty; with `resume`, an earlier ablation of the same preset and
    validation split, whose finished seeds, variants and scores are kept); returns the report (ablation.json)."""
    dims = sorted(set(dims or [preset.teacher.projection_dim // 4, preset.teacher.projection_dim]))
    if dims[-1] > preset.teacher.projection_dim or dims[0] < 1:
        raise UsageError(f"ablation: --dims must lie in 1..{preset.teacher.projection_dim}, got {dims}.")
    # what the data and each seed's teacher and stage 1 depend on; stage 2's own settings live in each variant's
    # record, so that variants may be added later at other stage-2 step counts only in a new folder (see
    # `train_variant`)
    stage2_fields = ("stage2_steps", "stage2_batch_size", "stage2_learning_rate")
    settings = {
        "preset": {key: value for key, value in asdict(preset).items() if key not in stage2_fields},
        "validation_fraction": validation_fraction,
        "validation_seed": validation_seed,
    }
    settings_file = output_dir / "ablation_settings.json"
    if (resume or not train) and settings_file.is_file():
        earlier = json.loads(settings_file.read_text(encoding="utf-8"))
        if earlier != json.loads(json.dumps(settings)):
            raise UsageError(
                f"ablation: {output_dir} holds an ablation of other settings ({settings_file}); resume it with the "
                "same preset, step counts and validation split, or choose a new --output_dir."
            )
    elif not train:
        raise UsageError(f"ablation: {output_dir} holds no ablation ({settings_file} is missing) to summarise.")
    elif output_dir.exists() and any(output_dir.iterdir()):
        raise UsageError(
            f"ablation: {output_dir} is not empty; choose a new --output_dir, remove it, or add --resume to add "
            "seeds or variants to the ablation it holds."
        )
    started = time.time()
    data_dir = output_dir / "data"
    if settings_file.is_file():  # resumed: the same data and validation split as before
        data = {"train_captions": data_dir / "train_captions.jsonl"}
        split = {
            "validation": data_dir / "validation",
            "imagenet": data_dir / "parallel_imagenet.jsonl",
            "counts": json.loads((data_dir / "split_counts.json").read_text(encoding="utf-8")),
        }
    else:
        data = write_emoji_dataset(data_dir, image_size=preset.teacher.image_size, limit=preset.emoji_limit)
        split = carve_validation(data_dir, validation_fraction, seed=validation_seed)
        (data_dir / "split_counts.json").write_text(json.dumps(split["counts"]), encoding="utf-8")
        settings_file.write_text(json.dumps(settings, indent=1), encoding="utf-8")
    captions = {"natural": data["train_captions"]}
    if (
        any(v.captions == "skewed" for v in variants.values())
        and not (data_dir / "train_captions_skewed.jsonl").exists()
    ):
        write_skewed_captions(data["train_captions"], data_dir / "train_captions_skewed.jsonl")
    captions["skewed"] = data_dir / "train_captions_skewed.jsonl"
    if train:
        # `parallel` processes, each started once (an import of torch and transformers is slow on a busy machine)
        # and given one job after another, as `altclip-reproduce` runs both stages in one process
        with ProcessPoolExecutor(
            parallel, mp_context=get_context("spawn"), initializer=torch.set_num_threads, initargs=(1,)
        ) as pool:
            prepared = parallel_map(
                pool,
                seed_job,
                [
                    (preset, data_dir, split["imagenet"], output_dir / f"seed-{s}", s, split["validation"], dims)
                    for s in seeds
                ],
            )
            jobs = [
                (
                    preset,
                    variant,
                    Path(stage1["model"]),
                    captions[variant.captions],
                    output_dir / f"seed-{seed}" / name,
                    seed,
                    split["validation"],
                    dims,
                )
                for (name, variant), (seed, stage1) in product(variants.items(), zip(seeds, prepared))
                if variant.stage2  # variant by variant, each over the seeds: pairs are complete early
            ]
            parallel_map(pool, variant_job, jobs)
    runs = finished_runs(output_dir, variants, seeds)
    table = summarise(runs, dims, variants)
    report = {
        "preset": asdict(preset),
        "seeds": list(seeds),
        "dims": dims,
        "validation_seed": validation_seed,
        "counts": split["counts"],
        "variants": {name: asdict(variant) for name, variant in variants.items()},
        "table": table,
        "runs": {name: {str(seed): run for seed, run in by_seed.items()} for name, by_seed in runs.items()},
        "wall_s": round(time.time() - started, 1),
        "parallel": parallel,
    }
    report["markdown"] = markdown(table, dims, seeds)
    write_json_and_markdown(output_dir, "ablation", report, report["markdown"])
    draw(table, dims, output_dir / "ablation.png")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/ablation"))
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", type=SEED, nargs="+", default=[0, 1])
    parser.add_argument("--parallel", type=int_in_range(1), default=2, help="runs at once, one thread each")
    parser.add_argument("--dims", type=int_in_range(1), nargs="+", help="embedding sizes scored (default: full, 1/4)")
    parser.add_argument("--teacher_steps", type=int_in_range(1), help="override the preset's teacher CLIP steps")
    parser.add_argument("--stage1_steps", type=int_in_range(1), help="override the preset's stage-1 steps")
    parser.add_argument("--stage2_steps", type=int_in_range(1), help="override the preset's stage-2 steps")
    parser.add_argument("--validation_fraction", type=float, default=0.15)
    parser.add_argument("--validation_seed", type=SEED, default=1, help="which training emoji become validation")
    parser.add_argument(
        "--resume", action="store_true", help="keep the finished seeds, variants and scores in --output_dir"
    )
    parser.add_argument(
        "--summarise_only", action="store_true", help="only tabulate the finished, scored runs in --output_dir"
    )
    one_line_parser_errors(parser, parser.prog)
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds has repeats ({args.seeds}); give each seed once")
    if not 0 < args.validation_fraction < 1:
        parser.error(f"--validation_fraction {args.validation_fraction} must be between 0 and 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    preset = PRESETS[args.preset]
    if args.teacher_steps:
        preset = replace(preset, teacher=replace(preset.teacher, steps=args.teacher_steps))
    overrides = {"stage1_steps": args.stage1_steps, "stage2_steps": args.stage2_steps}
    preset = replace(preset, **{key: value for key, value in overrides.items() if value})
    variants = {name: VARIANTS[name] for name in args.variants}
    outcome = {}

    def run() -> None:
        outcome["report"] = run_ablation(
            args.output_dir,
            preset,
            variants,
            args.seeds,
            args.parallel,
            args.dims,
            args.validation_fraction,
            args.validation_seed,
            args.resume,
            train=not args.summarise_only,
        )

    run_with_one_line_errors("ablation", run)
    print(outcome["report"]["markdown"])
    print(f"Written {args.output_dir}/ablation.json, ablation.md, ablation.png")


if __name__ == "__main__":
    main()
