"""Adding a language to a released model, measured: the reproduction's student trained without one language, which
``altclip-train add-language`` then adds, against the student trained with all 14 from the start.

Per seed: the full reproduction (data, English teacher CLIP, stages 1 and 2 on 14 languages, evaluation); the same
stages 1 and 2 again on 13 languages, in the same data regime (stage 1 on the generic ImageNet parallel text, stage
2 on the emoji captions), the held-out language (``--language``, default ko) removed from every file (no text of it
in any stage); then ``altclip-train add-language`` on that model with the held-out language's parallel text only
(English <-> the language: the training emoji's names, which the 14-language student met as stage-2 captions, and
its ImageNet names and sentences), LoRA on the text tower with the new tokens' embeddings, guarded by the
before/after scores of every language on a validation sample of training emoji. Scored on the 207 held-out emoji
(zero-shot top-1) and on as many training emoji, per language. Writes results.json and results.md.

    python -m altclip.reproduction.add_language_demonstration --output_dir outputs/add_language_demonstration \\
        --preset small --seeds 0 1
"""

import argparse
import json
import logging
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from altclip.common.cli_errors import SEED, int_in_range, one_line_parser_errors, run_with_one_line_errors
from altclip.common.embedding import Embedder
from altclip.common.errors import UsageError
from altclip.common.records import write_jsonl

from .demonstration_preset import PRESET_NAMES, preset_named
from .domain_split import missing_reproduction_files
from .emoji_data import LANGUAGES
from .report import write_json_and_markdown
from .run import Preset, contrastive_learning, reproduce, teacher_learning
from .stage2_validation import image_folder, read_jsonl, top1

logger = logging.getLogger("reproduction")
PROGRAM = "add_language_demonstration"
PARALLEL_FILES = ("parallel_emoji.jsonl", "parallel_imagenet.jsonl")
ADAPTER_FLAGS = ("--lora_r", "16", "--lora_alpha", "32", "--lora_trainable_tokens", "auto")


def without_language(data_dir: Path, language: str, target: Path) -> dict[str, Path]:
    """Copies of the training files with every row of `language` removed (stage 1's parallel text, stage 2's
    captions); images stay in `data_dir`."""
    target.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in (*PARALLEL_FILES, "train_captions.jsonl"):
        rows = [row for row in read_jsonl(data_dir / name) if row["language"] != language]
        files[name] = write_jsonl(target / name, rows)
    return files


def language_parallel(data_dir: Path, language: str, target: Path) -> Path:
    """The parallel text of `language` alone (English <-> it), from the reproduction's stage-1 files."""
    rows = [row for name in PARALLEL_FILES for row in read_jsonl(data_dir / name) if row["language"] == language]
    return write_jsonl(target, rows)


def training_emoji_folders(data_dir: Path, target: Path, count: int, seed: int) -> dict[str, Path]:
    """Two disjoint samples of `count` training emoji (at most half of those named in every language each) as image
    folders named in every language: ``validation`` (the add-language guard scores it) and ``training_emoji`` (the
    table scores it)."""
    names: dict[str, dict[str, str]] = {}
    for row in read_jsonl(data_dir / "train_captions.jsonl"):
        names.setdefault(Path(row["image"]).stem, {})[row["language"]] = row["caption"]
    slugs = sorted(slug for slug, by_language in names.items() if set(by_language) >= set(LANGUAGES))
    random.Random(seed).shuffle(slugs)
    count = min(count, len(slugs) // 2)  # a small reproduction (the tiny preset) has fewer: halves of what there is
    target.mkdir(parents=True, exist_ok=True)
    (target / "images").mkdir(exist_ok=True)
    for slug in slugs[: 2 * count]:
        (target / "images" / f"{slug}.png").write_bytes((data_dir / "images" / f"{slug}.png").read_bytes())
    return {
        name: image_folder(target, name, {slug: names[slug] for slug in part})
        for name, part in (("validation", slugs[:count]), ("training_emoji", slugs[count : 2 * count]))
    }


def train_without_language(preset: Preset, reference: Path, language: str, target: Path, seed: int) -> Path:
    """Stages 1 and 2 of the reproduction on 13 languages (the reference's teacher and data, `language` removed), in
    the reproduction's regime: stage 1 reads the generic parallel text only, never the emoji names."""
    student = target / "stage2_contrastive"
    if (student / "model.safetensors").is_file():
        logger.info("Reusing %s", student)
        return student
    data = without_language(reference / "data", language, target / "data")
    stage1 = teacher_learning(
        preset,
        reference / "teacher_clip",
        target / "xlmr_init",
        target / "stage1_teacher_learning",
        data["parallel_imagenet.jsonl"],
        seed=seed,
    )
    return contrastive_learning(
        preset, student, stage1, data["train_captions.jsonl"], "--image_root", str(reference / "data"), seed=seed
    )


def score(model_dir: Path, folders: dict[str, Path]) -> dict[str, dict[str, float]]:
    """Zero-shot top-1 per language on each image folder; `model_dir` may be an adapter folder."""
    embedder = Embedder.from_pretrained(model_dir, device="cpu", batch_size=256, num_workers=0)
    return {name: top1(embedder, folder, LANGUAGES) for name, folder in folders.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/add_language_demonstration"))
    parser.add_argument("--preset", choices=PRESET_NAMES, default="small")
    parser.add_argument("--language", default="ko", help="the language held out of the 13-language student")
    parser.add_argument("--seeds", type=SEED, nargs="+", default=[0])
    parser.add_argument("--steps", type=int_in_range(1), default=300, help="add-language training steps")
    parser.add_argument(
        "--learning_rate", type=float, default=1e-3, help="add-language learning rate (measured: docs/finetuning.md)"
    )
    parser.add_argument("--threads", type=int_in_range(1), default=1)
    one_line_parser_errors(parser, PROGRAM)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)

    def run() -> None:
        if args.language not in LANGUAGES or args.language == "en":
            raise UsageError(f"{PROGRAM}: --language {args.language}: choose one of {', '.join(LANGUAGES[1:])}.")
        report = demonstrate(args.output_dir, preset_named(args.preset), args.preset, args.language, args.seeds,
                             args.steps, args.learning_rate)  # fmt: skip
        print(report["table"])

    run_with_one_line_errors(PROGRAM, run)


def demonstrate(
    output_dir: Path, preset: Preset, preset_name: str, language: str, seeds: list[int], steps: int, rate: float
) -> dict:
    """Every seed's three models, scored; the report (results.json, results.md in `output_dir`)."""
    from altclip.training.add_language import add_language

    output_dir = output_dir.resolve()
    runs = {}
    for seed in seeds:
        folder = output_dir / f"seed-{seed}"
        reference = folder / "all_languages"
        if missing_reproduction_files(reference):
            reproduce(reference, preset, cache_default=False, seed=seed)
        began = time.perf_counter()
        without = train_without_language(preset, reference, language, folder / f"without_{language}", seed)
        without_s = round(time.perf_counter() - began, 1)
        folders = {"held_out": reference / "data" / "test"}
        folders.update(training_emoji_folders(reference / "data", folder / "scoring", 207, seed=0))
        parallel = language_parallel(reference / "data", language, folder / f"parallel_{language}.jsonl")
        added = folder / f"added_{language}"
        began = time.perf_counter()
        guard = add_language([
            "--model_name_or_path", str(without),
            "--language", language, "--train_files", str(parallel), "--output_dir", str(added),
            "--zeroshot_data_dir", str(folders["validation"]), "--known_languages", ",".join(
                x for x in LANGUAGES if x != language),
            "--max_steps", str(steps), "--per_device_train_batch_size", "64", "--learning_rate", str(rate),
            "--lr_scheduler_type", "cosine", "--warmup_steps", str(max(1, steps // 20)), "--seed", str(seed),
            "--report_to", "none", "--save_strategy", "no", "--logging_steps", "25", "--disable_tqdm", "true",
            "--precompute_teacher_features", "true", *ADAPTER_FLAGS,
        ], raise_on_drop=False)  # fmt: skip
        added_s = round(time.perf_counter() - began, 1)
        scored = {folder_name: {} for folder_name in ("held_out", "training_emoji")}
        for model_name, model in (("all_languages", reference / "stage2_contrastive"), ("without", without),
                                  ("added", added)):  # fmt: skip
            for set_name, scores in score(model, {k: folders[k] for k in scored}).items():
                scored[set_name][model_name] = scores
        runs[seed] = {"scores": scored, "guard": guard, "wall_s": {"without": without_s, "add_language": added_s}}
        logger.info("Seed %d done: %s", seed, json.dumps(scored["training_emoji"]))
    report = {
        "preset": preset_name,
        "language": language,
        "seeds": seeds,
        "add_language": {"steps": steps, "learning_rate": rate, "flags": list(ADAPTER_FLAGS)},
        "runs": {str(seed): run for seed, run in runs.items()},
    }
    from .add_language_report import markdown

    report["table"] = markdown(report)
    write_json_and_markdown(output_dir, "results", report, report["table"])
    return report


if __name__ == "__main__":
    main()
