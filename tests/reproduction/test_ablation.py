"""Issue 31, part 5: the ablation harness runs recipe variants x seeds on a validation split carved from the
training emoji (never the held-out ones), each variant being altclip-train flags, and tabulates mean, seed range,
paired differences and wall time."""

import json

import pytest

from altclip.reproduction.ablation import (
    VARIANTS,
    Variant,
    flags_for,
    markdown,
    run_ablation,
    summarise,
    write_skewed_captions,
)
from altclip.reproduction.emoji_data import LANGUAGES, normalised
from altclip.reproduction.run import PRESETS


def scores(non_english: float, english: float) -> dict:
    """Per-size, per-language scores whose non-English mean and English value are the given numbers."""
    per_language = {x: {"top1": english if x == "en" else non_english, "R@5": 2 * english} for x in LANGUAGES}
    quarter = {x: {"top1": v["top1"] / 2, "R@5": v["R@5"] / 2} for x, v in per_language.items()}
    return {"16": per_language, "4": quarter}


def test_paired_differences_are_per_seed_against_each_variant_s_reference():
    variants = {"stage1": VARIANTS["stage1"], "infonce": VARIANTS["infonce"], "siglip": VARIANTS["siglip"]}
    runs = {
        "stage1": {0: {"scores": scores(5.0, 9.0), "wall_s": 10.0}, 1: {"scores": scores(6.0, 9.0), "wall_s": 12.0}},
        "infonce": {0: {"scores": scores(8.0, 9.5), "wall_s": 3.0}, 1: {"scores": scores(7.0, 9.0), "wall_s": 5.0}},
        "siglip": {0: {"scores": scores(8.5, 9.0), "wall_s": 4.0}, 1: {"scores": scores(6.0, 9.0), "wall_s": 4.0}},
    }
    table = summarise(runs, [4, 16], variants)
    assert table["infonce"]["against"] == "stage1" and table["siglip"]["against"] == "infonce"
    assert table["infonce"]["paired non-en top1 @16"]["runs"] == [3.0, 1.0]  # 8-5, 7-6: stage 2's gain per seed
    assert table["siglip"]["paired non-en top1 @16"]["runs"] == [0.5, -1.0]
    assert table["infonce"]["non-en top1 @16"] == {"mean": 7.5, "min": 7.0, "max": 8.0, "runs": [8.0, 7.0]}
    assert table["infonce"]["non-en top1 @4"]["mean"] == 3.75 and table["stage1"]["wall_s"]["mean"] == 11.0
    assert "paired non-en top1 @16" not in table["stage1"]
    text = markdown(table, [4, 16], [0, 1])
    assert "| infonce | stage1 | 7.5 (7.0–8.0) |" in text and "| +3.0, +1.0 |" in text
    assert "(50%)" in text  # the quarter size keeps half of the full size's R@5 here


def test_variant_flags_and_the_skewed_mix(tmp_path):
    assert flags_for(VARIANTS["matryoshka"], 128) == ["--matryoshka_dims", "32,64"]
    assert flags_for(VARIANTS["siglip"], 128) == ["--loss", "siglip"]
    rows = [{"image": f"{i}.png", "caption": f"c{i}", "language": x} for i in range(3) for x in ("en", "de", "zh")]
    source = tmp_path / "captions.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    skewed = [
        json.loads(line) for line in write_skewed_captions(source, tmp_path / "skewed.jsonl").read_text().splitlines()
    ]
    assert sum(row["language"] == "en" for row in skewed) == 30 and sum(row["language"] == "de" for row in skewed) == 3


@pytest.mark.slow
def test_ablation_end_to_end_on_the_validation_split(tmp_path):
    """Two seeds side by side; stage 1, the recipe and a flag variant; nothing held out is read."""
    variants = {
        "stage1": VARIANTS["stage1"],
        "infonce": VARIANTS["infonce"],
        "matryoshka": VARIANTS["matryoshka"],
        "skewed": Variant(captions="skewed", about="English x10"),
    }
    out = tmp_path / "ablation"
    report = run_ablation(out, PRESETS["tiny"], variants, seeds=[0, 1], parallel=2)
    assert report["dims"] == [4, 16]
    table = report["table"]
    assert set(table) == set(variants)
    for name in ("infonce", "matryoshka", "skewed"):
        seed_runs = [report["runs"][name][seed] for seed in ("0", "1")]
        reference = [report["runs"]["stage1" if name == "infonce" else "infonce"][seed] for seed in ("0", "1")]
        en = [
            run["scores"]["16"]["en"]["top1"] - ref["scores"]["16"]["en"]["top1"]
            for run, ref in zip(seed_runs, reference)
        ]
        assert table[name]["paired en top1 @16"]["runs"] == [round(value, 2) for value in en]
        assert all(0 < run["wall_s"] for run in seed_runs)
    # the variant's flags reached altclip-train: the saved config records the Matryoshka widths
    config = json.loads((out / "seed-0" / "matryoshka" / "config.json").read_text())
    assert config["matryoshka_dims"] == [4, 8, 16]
    assert json.loads((out / "seed-0" / "infonce" / "config.json").read_text()).get("matryoshka_dims") is None
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG" and (out / "ablation.md").read_text().startswith("|")

    # the validation emoji are training emoji, not held-out ones, and no training file names them
    data = out / "data"
    validation = {p.name for p in (data / "validation").iterdir() if p.is_dir()}
    held_out = {p.name for p in (data / "test").iterdir() if p.is_dir()}
    assert validation and not validation & held_out
    names = json.loads((data / "validation" / "classnames.json").read_text())
    secret = {normalised(name) for values in names.values() for name in values}
    for file, fields in {
        "teacher_train.jsonl": ("caption",),
        "train_captions.jsonl": ("caption",),
        "train_captions_skewed.jsonl": ("caption",),
        "parallel_imagenet.jsonl": ("english", "translation"),
    }.items():
        rows = [json.loads(line) for line in (data / file).read_text().splitlines()]
        assert rows and not {row[f] for row in rows for f in fields if normalised(row[f]) in secret}, file
    with pytest.raises(ValueError, match="is not empty"):
        run_ablation(out, PRESETS["tiny"], variants, seeds=[0])
