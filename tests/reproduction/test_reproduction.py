"""The offline reproduction at a reduced size: every step runs (data, teacher CLIP, both stages, evaluation,
report, default model), the test emoji stay out of training, and the cached student serves the demo by default."""

import errno
import json
from pathlib import Path

import pytest

from altclip.common.errors import UsageError
from altclip.demo.engine import DemoEngine
from altclip.demo.examples import classification_examples, example_photos
from altclip.reproduction.emoji_data import LANGUAGES, collect_emoji, normalised, render_glyph
from altclip.reproduction.parallel_text import imagenet_parallel_rows
from altclip.reproduction.run import PRESETS, reproduce, write_training_data
from modeling_altclip.assets import require_default_model


def test_emoji_have_names_in_every_language_and_glyphs():
    emoji = collect_emoji()
    assert len(emoji) > 1000
    grinning = next(item for item in emoji if item.char == "😀")
    assert grinning.names["en"] == "grinning face" and set(grinning.names) == set(LANGUAGES)
    glyph = render_glyph("😀")
    assert glyph is not None and glyph.mode == "RGBA" and min(glyph.size) > 90


def test_parallel_text_pairs_babel_names_and_translated_prompts():
    rows = imagenet_parallel_rows(["de"], sentences_per_class=1)
    names, sentences = rows[::2], rows[1::2]  # each class name is followed by one prompt sentence about it
    assert names[0] == {"english": "tench", "translation": "Schleie", "language": "de"}
    assert 400 < len(names) == len(sentences) < 1000
    for name, sentence in zip(names, sentences):
        assert name["english"] in sentence["english"] and name["translation"] in sentence["translation"]
        assert "{}" not in sentence["translation"] and sentence["translation"] != sentence["english"]


@pytest.mark.slow
def test_reduced_reproduction_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("ALTCLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ALTCLIP_DEFAULT_MODEL", raising=False)
    import altclip.training.cli

    train, commands = altclip.training.cli.main, []
    monkeypatch.setattr(altclip.training.cli, "main", lambda argv: commands.append(argv) or train(argv))
    report = reproduce(tmp_path / "run", PRESETS["tiny"])
    run = tmp_path / "run"

    # the paper's regime: stage 1 reads the generic parallel text only, stage 2 the emoji image-caption pairs
    def files(argv: list[str]) -> list[str]:
        start = argv.index("--train_files") + 1
        return argv[start : next((i for i in range(start, len(argv)) if argv[i].startswith("--")), len(argv))]

    assert [argv[0] for argv in commands] == ["teacher", "contrastive"]
    assert files(commands[0]) == [str(run / "data" / "parallel_imagenet.jsonl")]
    assert files(commands[1]) == [str(run / "data" / "train_captions.jsonl")]
    coincidences = report["stage1_parallel_text"]
    assert 0 < coincidences["rows_naming_a_training_emoji"] < coincidences["parallel_rows"] / 5

    assert set(report["summary"]) == {"teacher", "stage1", "student"}
    for model, rows in report["summary"].items():
        assert list(rows) == list(LANGUAGES), model
        assert all(0 <= value <= 100 for row in rows.values() for value in row.values())
        assert set(rows["en"]) == {"top1", "R@1", "R@5"}
    assert report["test_emoji"] + report["train_emoji"] == PRESETS["tiny"].emoji_limit
    assert "| en |" in (run / "results.md").read_text() and (run / "results.png").read_bytes()[:4] == b"\x89PNG"
    for stage, steps in (("stage1_teacher_learning", 20), ("stage2_contrastive", 10)):
        assert json.loads((run / stage / "training_summary.json").read_text())["global_step"] == steps

    test_slugs = {p.name for p in (run / "data" / "test").iterdir() if p.is_dir()}
    train_images = {
        json.loads(line)["image"]
        for name in ("teacher_train.jsonl", "train_captions.jsonl")
        for line in (run / "data" / name).read_text().splitlines()
    }
    assert test_slugs and not {image.split("/")[-1].removesuffix(".png") for image in train_images} & test_slugs
    english_test_names = set(json.loads((run / "data" / "test" / "classnames.json").read_text())["en"])
    parallel = [json.loads(line) for line in (run / "data" / "parallel_imagenet.jsonl").read_text().splitlines()]
    assert not english_test_names & {row["english"] for row in parallel}  # their names are held out too

    default = require_default_model()
    assert default == tmp_path / "cache" / "default_model" and (default / "model.safetensors").is_file()
    # the demo's first examples for this model: held-out emoji, labelled in six languages
    first = classification_examples(default)[0]
    held_out_slugs = {p.name for p in (run / "data" / "test").iterdir() if p.is_dir()}
    assert Path(first[0]).stem in held_out_slugs and first[2] == "{}"
    english = json.loads((run / "data" / "test" / "classnames.json").read_text())["en"]
    assert set(first[1].split(", ")) <= set(english)
    probabilities = DemoEngine(default, device="cpu").classify(example_photos()[1], "Katze, Rakete", "{}")
    assert set(probabilities) == {"Katze", "Rakete"}
    with pytest.raises(UsageError, match="is not empty"):
        reproduce(run, PRESETS["tiny"])


def test_no_held_out_name_reaches_any_training_stage_at_the_full_preset(tmp_path):
    """Every file a stage trains on (the teacher CLIP's captions, stage 1's generic parallel text, the stage-2
    captions), at the full preset's data step: no field equals a held-out emoji's name in any language (case and
    space normalised), also where a training emoji shared that name (it is dropped) and in the ImageNet parallel
    text; the parallel rows that name a training emoji by coincidence are counted, and are few."""
    data, parallel = write_training_data(tmp_path / "data", PRESETS["full"])
    test_names = json.loads((data["test_folder"] / "classnames.json").read_text(encoding="utf-8"))
    held_out = {normalised(name) for names in test_names.values() for name in names}
    counts = json.loads(data["counts"].read_text())
    assert counts["test_emoji"] == len(test_names["en"]) > 150 and counts["train_emoji"] > 1000
    assert counts["train_emoji_dropped_for_shared_names"] > 0  # names like "lion" shared by two emoji
    coincidences = counts["stage1_parallel_text"]
    assert coincidences["parallel_rows"] > 10_000
    assert 0 < coincidences["rows_naming_a_training_emoji"] < coincidences["parallel_rows"] / 10
    english_emoji = {normalised(json.loads(line)["caption"]) for line in data["teacher_train"].read_text().splitlines()}
    english_parallel = {normalised(json.loads(line)["english"]) for line in parallel.read_text().splitlines()}
    assert coincidences["english_names_equal_to_a_training_emoji"] == len(english_emoji & english_parallel) > 0
    training_inputs = {
        data["teacher_train"]: ("caption",),
        data["train_captions"]: ("caption",),
        parallel: ("english", "translation"),
    }
    for path, fields in training_inputs.items():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert rows, path
        leaked = {row[field] for row in rows for field in fields if normalised(row[field]) in held_out}
        assert not leaked, (path.name, sorted(leaked)[:10])


def test_an_unusable_output_folder_and_a_full_disk_are_one_line(tmp_path, capsys, monkeypatch):
    from altclip.common.cli_errors import CommandLineError
    from altclip.reproduction import run

    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(CommandLineError) as refusal:
        run.main(["--preset", "tiny", "--output_dir", str(tmp_path / "a-file" / "out")])
    assert refusal.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"altclip-reproduce: cannot write to --output_dir {tmp_path / 'a-file' / 'out'}: Not a directory."
    )

    def full(*args, **kwargs):  # the disk fills while the training data is written
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "data" / "x"))

    monkeypatch.setattr(run, "reproduce", full)
    with pytest.raises(CommandLineError, match=r"^altclip-reproduce: the disk of .*out is full\. Free some space"):
        run.main(["--preset", "tiny", "--output_dir", str(tmp_path / "out")])
