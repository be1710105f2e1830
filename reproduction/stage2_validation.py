"""Why stage 2 adds little here: stage 2's learning curves on a validation split carved from the TRAINING emoji.

The 207 held-out test emoji are never read. 15% of the training emoji become validation emoji: their images and
names (any language) are removed from every training file (teacher CLIP, stage 1, stage 2, ImageNet parallel text),
exactly as the test emoji are. Then the teacher CLIP and stage 1 are trained once, and stage 2 is run once per
learning rate with a checkpoint every `--eval_every` steps. Each checkpoint (and the stage-1 model, step 0) is
scored by zero-shot top-1 among the validation emoji's names, per language, and on as many *training* emoji (the
text tower memorising the names stage 2 trains on shows as a rising train top-1 beside a flat validation top-1);
its temperature exp(logit_scale) is read from the checkpoint. Writes ``stage2_validation.json`` and prints a table.

    python -m altclip.reproduction.stage2_validation --output_dir outputs/stage2_validation --preset small
"""

import argparse
import json
import logging
import random
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open

from altclip.common.cli_errors import SEED, int_in_range, one_line_parser_errors
from altclip.common.embedding import Embedder
from altclip.common.number_checks import POSITIVE, NumberRange, number_type
from altclip.common.records import write_jsonl
from altclip.evaluation.loaders import load_image_folder
from altclip.evaluation.prompts import custom_prompts
from altclip.evaluation.zeroshot import evaluate_zero_shot
from modeling_altclip import AltCLIPModel, AltCLIPProcessor

from .emoji_data import LANGUAGES, normalised, read_jsonl, write_emoji_dataset
from .parallel_text import write_imagenet_parallel
from .run import PRESETS, contrastive_learning, teacher_embedder, teacher_learning
from .teacher_clip import train_teacher_clip

logger = logging.getLogger("reproduction")


def image_folder(data_dir: Path, name: str, rows_by_slug: dict[str, dict[str, str]]) -> Path:
    """`data_dir/name/<slug>/<slug>.png` + classnames.json, the layout of the test folder."""
    root = data_dir / name
    for slug in sorted(rows_by_slug):
        (root / slug).mkdir(parents=True, exist_ok=True)
        shutil.copy2(data_dir / "images" / f"{slug}.png", root / slug / f"{slug}.png")
    names = {language: [rows_by_slug[slug][language] for slug in sorted(rows_by_slug)] for language in LANGUAGES}
    (root / "classnames.json").write_text(json.dumps(names, ensure_ascii=False), encoding="utf-8")
    return root


def carve_validation(data_dir: Path, fraction: float, seed: int) -> dict[str, Path]:
    """Moves `fraction` of the training emoji to a validation folder and removes them (and any training emoji
    sharing one of their names) from every training file; also writes a train-probe folder of as many kept
    training emoji."""
    captions = read_jsonl(data_dir / "train_captions.jsonl")
    names: dict[str, dict[str, str]] = {}
    for row in captions:
        names.setdefault(Path(row["image"]).stem, {})[row["language"]] = row["caption"]
    slugs = sorted(names)
    random.Random(seed).shuffle(slugs)
    count = max(2, round(len(slugs) * fraction))
    validation = set(slugs[:count])
    held = {normalised(name) for slug in validation for name in names[slug].values()}
    kept = [s for s in slugs[count:] if not {normalised(n) for n in names[s].values()} & held]
    kept_set = set(kept)
    english_kept = {names[s]["en"] for s in kept}
    write_jsonl(data_dir / "train_captions.jsonl", [r for r in captions if Path(r["image"]).stem in kept_set])
    teacher = read_jsonl(data_dir / "teacher_train.jsonl")
    write_jsonl(data_dir / "teacher_train.jsonl", [r for r in teacher if Path(r["image"]).stem in kept_set])
    parallel = read_jsonl(data_dir / "parallel_emoji.jsonl")
    write_jsonl(data_dir / "parallel_emoji.jsonl", [r for r in parallel if r["english"] in english_kept])
    test_names = json.loads((data_dir / "test" / "classnames.json").read_text(encoding="utf-8"))
    held |= {normalised(name) for values in test_names.values() for name in values}
    imagenet = write_imagenet_parallel(
        data_dir / "parallel_imagenet.jsonl", [x for x in LANGUAGES if x != "en"], 1, held_out=held
    )
    probe = sorted(kept)[:: max(1, len(kept) // count)][:count]
    return {
        "validation": image_folder(data_dir, "validation", {s: names[s] for s in validation}),
        "train_probe": image_folder(data_dir, "train_probe", {s: names[s] for s in probe}),
        "imagenet": imagenet,
        "counts": {"validation_emoji": len(validation), "train_emoji": len(kept), "train_probe_emoji": len(probe)},
    }


def top1(embedder: Embedder, folder: Path, languages: Sequence[str] = LANGUAGES) -> dict[str, float]:
    """Zero-shot top-1 (%) among the image folder's class names (bare, no template), per language."""
    data = load_image_folder(folder)
    prompts = {x: custom_prompts(x, data.classnames_by_language[x], None) for x in languages}
    results = evaluate_zero_shot(embedder, data, prompts)
    return {row["language"]: round(row["metrics"]["top1"], 1) for row in results}


def mean_non_english(scores: dict[str, float]) -> float:
    return round(sum(v for k, v in scores.items() if k != "en") / (len(scores) - 1), 2)


def score_model(model_dir: Path, processor_dir: Path, folders: dict[str, Path]) -> dict:
    embedder = Embedder(
        AltCLIPModel.from_pretrained(model_dir),
        AltCLIPProcessor.from_pretrained(processor_dir),
        device="cpu",
        batch_size=256,
        num_workers=0,
    )
    with safe_open(str(model_dir / "model.safetensors"), "pt") as tensors:
        scale = float(tensors.get_tensor("logit_scale").exp())
    row = {"temperature_exp_logit_scale": round(scale, 2)}
    for name, folder in folders.items():
        scores = top1(embedder, folder)
        row[name] = {"en": scores["en"], "mean_non_english": mean_non_english(scores), "per_language": scores}
    return row


OPEN_FRACTION = NumberRange(low=0, high=1, low_open=True, high_open=True)  # a share of the emoji: some, not all


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="outputs/stage2_validation")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--learning_rates", type=number_type(POSITIVE), nargs="+", default=[2e-4, 1e-3, 5e-5])
    parser.add_argument("--eval_every", type=int_in_range(1), default=100)
    parser.add_argument("--validation_fraction", type=number_type(OPEN_FRACTION), default=0.15)
    parser.add_argument("--validation_seed", type=SEED, default=1, help="which training emoji become validation")
    parser.add_argument("--threads", type=int_in_range(1), default=1, help="torch threads (1: steady on a shared CPU)")
    one_line_parser_errors(parser, "stage2_validation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    preset, out = PRESETS[args.preset], Path(args.output_dir)
    data_dir = out / "data"
    data = write_emoji_dataset(data_dir, image_size=preset.teacher.image_size, limit=preset.emoji_limit)
    split = carve_validation(data_dir, args.validation_fraction, seed=args.validation_seed)
    folders = {"validation": split["validation"], "train_probe": split["train_probe"]}
    report = {"preset": args.preset, "validation_seed": args.validation_seed, "counts": split["counts"], "runs": {}}
    teacher_dir = train_teacher_clip(data_dir, out / "teacher_clip", preset.teacher)
    teacher_scores = {name: top1(teacher_embedder(teacher_dir), folder) for name, folder in folders.items()}
    report["teacher_en_top1"] = {name: scores["en"] for name, scores in teacher_scores.items()}
    stage1 = teacher_learning(preset, teacher_dir, out / "xlmr_init", out / "stage1", split["imagenet"])
    report["stage1"] = score_model(stage1, stage1, folders)
    path = out / "stage2_validation.json"
    for rate in args.learning_rates:
        run_dir = out / f"stage2_lr{rate:g}"
        contrastive_learning(
            preset,
            run_dir,
            stage1,
            data["train_captions"],
            "--save_strategy",
            "steps",
            "--save_steps",
            str(args.eval_every),
            "--save_only_model",
            "true",
            learning_rate=rate,
        )
        curve = {"0": report["stage1"]}
        for checkpoint in sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
            curve[checkpoint.name.split("-")[1]] = score_model(checkpoint, stage1, folders)
        report["runs"][f"{rate:g}"] = curve
        path.write_text(json.dumps(report, indent=1), encoding="utf-8")
        for step, row in curve.items():
            print(
                f"lr {rate:g} step {step:>4}: T={row['temperature_exp_logit_scale']:6.2f} "
                f"val en {row['validation']['en']:5.1f} non-en {row['validation']['mean_non_english']:5.2f} | "
                f"train-probe en {row['train_probe']['en']:5.1f} non-en {row['train_probe']['mean_non_english']:5.2f}",
                flush=True,
            )
    print(f"teacher en top-1: {report['teacher_en_top1']}; written {path}")


if __name__ == "__main__":
    main()
