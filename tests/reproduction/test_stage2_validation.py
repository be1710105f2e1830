"""The validation split of `stage2_validation` is carved from the training emoji and leaks into no training file."""

import json

from altclip.reproduction.emoji_data import normalised, write_emoji_dataset
from altclip.reproduction.stage2_validation import carve_validation


def test_validation_emoji_are_training_emoji_whose_names_no_training_file_holds(tmp_path):
    data = write_emoji_dataset(tmp_path, image_size=32, limit=120)
    test_slugs = {path.name for path in data["test_folder"].iterdir() if path.is_dir()}
    split = carve_validation(tmp_path, fraction=0.2, seed=1)
    validation = json.loads((split["validation"] / "classnames.json").read_text(encoding="utf-8"))
    slugs = {path.name for path in split["validation"].iterdir() if path.is_dir()}
    assert len(slugs) == len(validation["en"]) == split["counts"]["validation_emoji"] > 10
    assert not slugs & test_slugs  # carved from the training emoji, never the held-out ones
    held = {normalised(name) for names in validation.values() for name in names}
    training_inputs = {
        data["teacher_train"]: ("caption",),
        data["parallel_emoji"]: ("english", "translation"),
        data["train_captions"]: ("caption",),
        split["imagenet"]: ("english", "translation"),
    }
    for path, fields in training_inputs.items():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert rows, path
        leaked = {row[field] for row in rows for field in fields if normalised(row[field]) in held}
        assert not leaked, (path.name, sorted(leaked)[:10])
    captioned = {row["image"] for row in map(json.loads, data["train_captions"].read_text().splitlines())}
    assert not {f"images/{slug}.png" for slug in slugs} & captioned
    probe = {path.name for path in split["train_probe"].iterdir() if path.is_dir()}
    assert probe and all(f"images/{slug}.png" in captioned for slug in probe)  # the probe is trained on
