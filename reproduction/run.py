"""``altclip-reproduce``: the AltCLIP recipe end to end on real offline data, on a CPU, in the paper's data regime.

1. data: emoji rendered from Noto Color Emoji, named in 14 languages; 15% of the emoji held out for testing;
   generic parallel text from clip-benchmark's Babel-ImageNet names and NLLB-translated prompts (no emoji names,
   except the few ImageNet names that are also emoji names by coincidence, counted in ``results.json``);
2. an English CLIP teacher trained from scratch on the training emoji (no pretrained CLIP is available offline);
3. stage 1, teacher learning (``altclip-train teacher``): a fresh XLM-R text tower with the real XLM-R tokenizer
   learns the teacher's text features from the generic parallel text only;
4. stage 2, contrastive learning (``altclip-train contrastive``): the training emoji's image-caption pairs in the
   14 languages (the domain and each language's own captions), image tower frozen;
5. evaluation (the package's ``evaluation`` code) on the held-out emoji: zero-shot top-1 and retrieval per language
   for the student, the stage-1 student, and the teacher (English: the reference; other languages: the baseline).

The student is then cached as the package's default model (``modeling_altclip.assets.default_model_dir``).
"""

import argparse
import errno
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import CLIPImageProcessorPil, CLIPModel, CLIPProcessor, PreTrainedTokenizerFast

import altclip.training.cli
from altclip.common.cli_errors import SEED, int_in_range, one_line_parser_errors, run_with_one_line_errors
from altclip.common.constants import MODEL_EXAMPLES_FILE, MODEL_EXAMPLES_FOLDER
from altclip.common.embedding import Embedder
from altclip.common.errors import PathError, UsageError
from altclip.common.files import probe_writable
from altclip.common.results_format import write_results
from altclip.evaluation.loaders import load_caption_table, load_image_folder
from altclip.evaluation.prompts import custom_prompts
from altclip.evaluation.retrieval import evaluate_retrieval
from altclip.evaluation.zeroshot import evaluate_zero_shot
from altclip.training.toy_setup import write_tiny_xlmr
from modeling_altclip import AltCLIPModel, AltCLIPProcessor
from modeling_altclip.assets import default_model_dir

from .emoji_data import LANGUAGES, normalised, read_jsonl, write_emoji_dataset
from .parallel_text import emoji_name_coincidences, write_imagenet_parallel
from .report import write_report
from .stage2_selection import load_selection
from .teacher_clip import TeacherSize, train_teacher_clip

logger = logging.getLogger("reproduction")
MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "configuration_altclip.py",
    "modeling_altclip.py",
    "processing_altclip.py",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "training_summary.json",
    "loss_curve.png",
)


@dataclass
class Preset:
    emoji_limit: int | None = None
    teacher: TeacherSize = field(default_factory=TeacherSize)
    student_width: int = 128
    student_layers: int = 3
    sentences_per_class: int = 1
    stage1_steps: int = 3000
    stage1_batch_size: int = 128
    stage1_learning_rate: float = 1e-3
    stage2_steps: int = 600
    stage2_batch_size: int = 128
    # chosen on validation splits carved from the training emoji (stage2_selection.json, written by
    # `stage2_selection` from `stage2_validation` reports; a test keeps the two equal)
    stage2_learning_rate: float = 1e-3


PRESETS = {
    "full": Preset(),
    # every emoji and the full model sizes, with shorter teacher and stage-1 training (stage 2 as in "full"): for
    # iterating on stage 2 (`stage2_validation`) in a few minutes
    "small": Preset(teacher=TeacherSize(steps=500), stage1_steps=1000),
    # every emoji at a quarter of the full preset's compute per stage (half-width towers, fewer steps): the size the
    # four-seed spread and the ablation were run at on a 2-core machine shared by eight jobs (README, Reproduction)
    "mini": Preset(
        teacher=TeacherSize(width=64, layers=2, image_size=32, projection_dim=64, steps=300),
        student_width=64,
        student_layers=2,
        stage1_steps=400,
        stage2_steps=300,
    ),
    # the reduced size of the end-to-end test: every step runs, on 80 emoji, in about a minute
    "tiny": Preset(
        emoji_limit=80,
        teacher=TeacherSize(width=32, layers=1, image_size=32, projection_dim=16, steps=30, batch_size=32),
        student_width=32,
        student_layers=1,
        sentences_per_class=0,
        stage1_steps=20,
        stage1_batch_size=32,
        stage2_steps=10,
        stage2_batch_size=32,
    ),
}


def run_stage(
    stage: str, output_dir: Path, steps: int, batch_size: int, learning_rate: float, *flags: str, seed: int = 0
) -> Path:
    """One `altclip-train` stage, in this process, without intermediate checkpoints; `seed` sets the weights'
    initialisation where the stage creates any and the data order."""
    altclip.training.cli.main(
        [
            stage,
            "--output_dir",
            str(output_dir),
            "--max_steps",
            str(steps),
            "--per_device_train_batch_size",
            str(batch_size),
            "--learning_rate",
            str(learning_rate),
            "--lr_scheduler_type",
            "cosine",
            "--warmup_steps",
            str(max(1, steps // 20)),
            "--logging_steps",
            str(max(1, min(50, steps // 10))),
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--seed",
            str(seed),
            "--disable_tqdm",
            "false",
            *flags,
        ]
    )
    return output_dir


def teacher_learning(
    preset: Preset, teacher_dir: Path, init_dir: Path, output_dir: Path, *train_files: Path, seed: int = 0
) -> Path:
    """Stage 1 of the recipe: a fresh tiny XLM-R (written to `init_dir`) learns the teacher's text features from
    `train_files` (English pairs included, teacher features precomputed); returns the stage-1 model folder."""
    xlmr_dir = write_tiny_xlmr(init_dir, seed=seed + 1, width=preset.student_width, layers=preset.student_layers)
    return run_stage(
        "teacher",
        output_dir,
        preset.stage1_steps,
        preset.stage1_batch_size,
        preset.stage1_learning_rate,
        "--clip_model_name_or_path",
        str(teacher_dir),
        "--text_encoder_name_or_path",
        str(xlmr_dir),
        "--train_files",
        *map(str, train_files),
        "--precompute_teacher_features",
        "true",
        "--include_english_pairs",
        "true",
        seed=seed,
    )


def contrastive_learning(
    preset: Preset,
    output_dir: Path,
    stage1: Path,
    captions: Path,
    *flags: str,
    seed: int = 0,
    learning_rate: float | None = None,
) -> Path:
    """Stage 2 of the recipe: the stage-1 model trained contrastively on `captions` (image tower frozen), at the
    preset's steps, batch and learning rate (or `learning_rate`); returns the model folder."""
    return run_stage(
        "contrastive",
        output_dir,
        preset.stage2_steps,
        preset.stage2_batch_size,
        preset.stage2_learning_rate if learning_rate is None else learning_rate,
        "--model_name_or_path",
        str(stage1),
        "--train_files",
        str(captions),
        *flags,
        seed=seed,
    )


def teacher_embedder(folder: Path) -> Embedder:
    """The teacher CLIP behind the same embedding interface as an AltCLIP model."""
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil.from_pretrained(folder),
        tokenizer=PreTrainedTokenizerFast.from_pretrained(folder),
    )
    return Embedder(CLIPModel.from_pretrained(folder), processor, device="cpu", batch_size=256, num_workers=0)


def altclip_embedder(folder: Path) -> Embedder:
    return Embedder(
        AltCLIPModel.from_pretrained(folder),
        AltCLIPProcessor.from_pretrained(folder),
        device="cpu",
        batch_size=256,
        num_workers=0,
    )


def evaluate_on_held_out(embedder: Embedder, data_dir: Path, output_dir: Path, name: str) -> list[dict]:
    """Zero-shot classification and retrieval on the test emoji, per language."""
    test = load_image_folder(data_dir / "test")
    prompts = {
        language: custom_prompts(language, test.classnames_by_language[language], None) for language in LANGUAGES
    }
    results = evaluate_zero_shot(embedder, test, prompts)
    memo: dict = {}
    for language in LANGUAGES:
        captions = load_caption_table(data_dir / "test_captions.jsonl", language)
        results.append(evaluate_retrieval(embedder, captions, language, memo))
    write_results(results, output_dir, name)
    return results


DEMO_LANGUAGES = {"English": "en", "Deutsch": "de", "Français": "fr", "Español": "es", "中文": "zh", "日本語": "ja"}


def write_demo_examples(test_folder: Path, target: Path) -> None:
    """The demo's first examples for this model: six held-out emoji, each with the six names in one language (the
    model has only seen emoji, so photos would show it guessing)."""
    names = json.loads((test_folder / "classnames.json").read_text(encoding="utf-8"))
    order = sorted(path.name for path in test_folder.iterdir() if path.is_dir())  # classnames.json's order

    def usable(slug: str) -> bool:  # the demo splits labels on commas and new lines
        return not any(set(",\n") & set(names[code][order.index(slug)]) for code in DEMO_LANGUAGES.values())

    slugs = [slug for slug in order if usable(slug)][: len(DEMO_LANGUAGES)]
    folder = target / MODEL_EXAMPLES_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for slug in slugs:
        shutil.copy2(test_folder / slug / f"{slug}.png", folder / f"{slug}.png")
    labels = {
        language: ", ".join(names[code][order.index(slug)] for slug in slugs)
        for language, code in DEMO_LANGUAGES.items()
    }
    examples = {"images": [f"{slug}.png" for slug in slugs], "labels": labels, "template": "{}"}
    (folder / MODEL_EXAMPLES_FILE).write_text(json.dumps(examples, ensure_ascii=False, indent=2), encoding="utf-8")


def cache_default_model(student_dir: Path, target: Path | None = None, test_folder: Path | None = None) -> Path:
    """Copies the student's model files (and, with `test_folder`, demo examples of held-out emoji) to the
    default-model folder, replacing it only once the copy is whole."""
    target = target or default_model_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".default_model.", dir=target.parent))
    for name in MODEL_FILES:
        if (student_dir / name).is_file():
            shutil.copy2(student_dir / name, staging / name)
    if test_folder is not None:
        write_demo_examples(test_folder, staging)
    if target.exists():
        old = target.with_name(f".{target.name}.old.{os.getpid()}")
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        staging.rename(target)
    return target


def write_training_data(data_dir: Path, preset: Preset) -> tuple[dict[str, Path], Path]:
    """The data step: the emoji splits and the generic (ImageNet) parallel text, without any held-out name; the
    count of parallel rows that name a training emoji by coincidence goes into ``counts.json``."""
    data = write_emoji_dataset(data_dir, image_size=preset.teacher.image_size, limit=preset.emoji_limit)
    test_names = json.loads((data["test_folder"] / "classnames.json").read_text(encoding="utf-8"))
    held_out = {normalised(name) for names in test_names.values() for name in names}
    parallel = write_imagenet_parallel(
        data_dir / "parallel_imagenet.jsonl",
        [x for x in LANGUAGES if x != "en"],
        preset.sentences_per_class,
        held_out=held_out,
    )
    emoji_names: dict[str, set[str]] = {}
    for row in read_jsonl(data["train_captions"]):
        emoji_names.setdefault(row["language"], set()).add(normalised(row["caption"]))
    counts = json.loads(data["counts"].read_text(encoding="utf-8"))
    counts["stage1_parallel_text"] = emoji_name_coincidences(read_jsonl(parallel), emoji_names)
    data["counts"].write_text(json.dumps(counts), encoding="utf-8")
    return data, parallel


def reproduce(output_dir: str | Path, preset: Preset, cache_default: bool = True, seed: int = 0) -> dict:
    """Runs every step into `output_dir` (which must be new or empty) and returns the report. `seed` sets every
    random choice of the training (the teacher's and the student's initialisation, augmentation, data order); the
    held-out emoji are the same whatever it is."""
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise UsageError(f"altclip-reproduce: {output_dir} is not empty; choose a new --output_dir or remove it.")
    started, timings = time.time(), {}

    def timed(name: str, since: float) -> float:
        timings[name] = round(time.time() - since, 1)
        logger.info("%s done in %.0f s", name, timings[name])
        return time.time()

    clock = time.time()
    data_dir = output_dir / "data"
    data, parallel = write_training_data(data_dir, preset)
    clock = timed("data", clock)
    teacher_dir = train_teacher_clip(data_dir, output_dir / "teacher_clip", preset.teacher, seed=seed)
    clock = timed("teacher CLIP", clock)
    stage1 = teacher_learning(
        preset,
        teacher_dir,
        output_dir / "xlmr_init",
        output_dir / "stage1_teacher_learning",
        parallel,  # generic parallel text only: the emoji domain comes with stage 2
        seed=seed,
    )
    clock = timed("stage 1 (teacher learning)", clock)
    stage2 = contrastive_learning(preset, output_dir / "stage2_contrastive", stage1, data["train_captions"], seed=seed)
    clock = timed("stage 2 (contrastive)", clock)
    evaluations = {
        "teacher": evaluate_on_held_out(
            teacher_embedder(teacher_dir), data_dir, output_dir / "eval" / "teacher", "English CLIP teacher"
        ),
        "stage1": evaluate_on_held_out(
            altclip_embedder(stage1), data_dir, output_dir / "eval" / "stage1", "AltCLIP after stage 1"
        ),
        "student": evaluate_on_held_out(
            altclip_embedder(stage2), data_dir, output_dir / "eval" / "student", "AltCLIP student"
        ),
    }
    clock = timed("evaluation", clock)
    counts = json.loads(data["counts"].read_text(encoding="utf-8"))
    timings["total"] = round(time.time() - started, 1)
    settings = {
        "preset": asdict(preset),
        "seed": seed,
        "torch_threads": torch.get_num_threads(),
        "stage2_selection": load_selection(),
        "timings_s": timings,
    }
    report = write_report(evaluations, output_dir, {**settings, **counts})
    if cache_default:
        report["default_model"] = str(cache_default_model(stage2, test_folder=data["test_folder"]))
        logger.info("Cached the student as the default model in %s", report["default_model"])
    return report


def check_writable(output_dir: str) -> None:
    """The output folder is created and written once before any work, so that a wrong path fails in one line."""
    try:
        probe_writable(Path(output_dir))
    except OSError as error:
        raise PathError(f"cannot write to --output_dir {output_dir}: {error.strerror or error}.") from None


def environment_problem(error: BaseException, output_dir: str) -> str | None:
    """A full disk or another file-system error during the run, in one line; anything else keeps its traceback."""
    if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "os error 28" in str(error):
        return (
            f"altclip-reproduce: the disk of {output_dir} is full. Free some space (the full preset writes a few "
            "GB) and run again."
        )
    if isinstance(error, OSError) and error.filename:
        return f"altclip-reproduce: {error.strerror or error}: {error.filename}"
    return None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="altclip-reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", "--output-dir", default="outputs/reproduction")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument(
        "--seed", type=SEED, default=0, help="the training's seed (the held-out emoji do not depend on it)"
    )
    parser.add_argument(
        "--threads",
        type=int_in_range(1),
        default=1,
        help="torch threads: fixed so that a run's floating-point sums are the same on every machine with as "
        "many cores or more (1 was also ~12x faster than 2 on a busy 2-core machine)",
    )
    parser.add_argument(
        "--no_cache_default",
        "--no-cache-default",
        action="store_true",
        help="do not install the student as the package's default model",
    )
    one_line_parser_errors(parser, parser.prog)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    logging.getLogger("reproduction").setLevel(logging.INFO)
    outcome = {}

    torch.set_num_threads(args.threads)

    def run() -> None:
        check_writable(args.output_dir)
        outcome["report"] = reproduce(
            args.output_dir, PRESETS[args.preset], cache_default=not args.no_cache_default, seed=args.seed
        )

    run_with_one_line_errors(
        "altclip-reproduce", run, translate=lambda error: environment_problem(error, args.output_dir)
    )
    report = outcome["report"]
    print(report["table"])
    print(
        f"Report: {args.output_dir}/results.md, results.png, results.json; default model: "
        f"{report.get('default_model', 'not cached')}"
    )


if __name__ == "__main__":
    main()
