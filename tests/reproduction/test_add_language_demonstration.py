"""The add-language demonstration on the tiny reproduction: the 13-language student never reads the held-out
language nor (in stage 1) the emoji names; add-language then reads only that language's parallel text; every model
is scored in every language, and the report carries the guard."""

import json
import shutil

import pytest

from altclip.reproduction.add_language_demonstration import demonstrate
from altclip.reproduction.emoji_data import LANGUAGES
from altclip.reproduction.run import PRESETS


@pytest.mark.slow
def test_add_language_demonstration_on_the_tiny_reproduction(tmp_path, tiny_reproduction, monkeypatch):
    import altclip.training.cli

    reference = tmp_path / "demo" / "seed-0" / "all_languages"
    shutil.copytree(tiny_reproduction[0], reference)  # the 14-language run (seed 0), reused, not rebuilt
    train, commands = altclip.training.cli.main, []
    monkeypatch.setattr(altclip.training.cli, "main", lambda argv: commands.append(argv) or train(argv))
    report = demonstrate(tmp_path / "demo", PRESETS["tiny"], "tiny", "ko", [0], steps=4, rate=1e-2)

    def files(argv: list[str]) -> list[str]:
        start = argv.index("--train_files") + 1
        return argv[start : next((i for i in range(start, len(argv)) if argv[i].startswith("--")), len(argv))]

    seed = tmp_path / "demo" / "seed-0"
    assert [argv[0] for argv in commands] == ["teacher", "contrastive"]  # the 13-language student's two stages
    assert files(commands[0]) == [str(seed / "without_ko" / "data" / "parallel_imagenet.jsonl")]
    assert files(commands[1]) == [str(seed / "without_ko" / "data" / "train_captions.jsonl")]
    for path in (files(commands[0])[0], files(commands[1])[0]):
        rows = [json.loads(line) for line in open(path, encoding="utf-8")]
        assert rows and not [row for row in rows if row["language"] == "ko"], path
    added = [json.loads(line) for line in (seed / "parallel_ko.jsonl").read_text(encoding="utf-8").splitlines()]
    assert added and {row["language"] for row in added} == {"ko"}

    run = report["runs"]["0"]
    for set_name in ("held_out", "training_emoji"):
        assert set(run["scores"][set_name]) == {"all_languages", "without", "added"}
        for scores in run["scores"][set_name].values():
            assert set(scores) == set(LANGUAGES)
    assert "dropped" in run["guard"] and (tmp_path / "demo" / "results.md").read_text().startswith(report["table"][:20])
