"""The fine-tuning demonstration on a tiny reproduction: the held-out emoji split once into a fine-tuning half and a
test half with no test-half name in the fine-tuning captions, three methods (full, LoRA, LoRA + token embeddings)
each at the learning rate its validation split chose and at WiSE-FT 0.5, scored before and after in every language,
and a folder that is not a reproduction refused in one line."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import altclip.reproduction.finetune_demonstration as demonstration_module
from altclip.common.adapters import is_adapter_folder
from altclip.common.records import write_jsonl
from altclip.reproduction.domain_split import split_domain
from altclip.reproduction.emoji_data import LANGUAGES as ALL_LANGUAGES
from altclip.reproduction.emoji_data import normalised
from altclip.reproduction.finetune_demonstration import ANCHORED, METHODS, Method, main, validation_score

LANGUAGES = ["en", "de", "zh"]


# What a CPU suite cannot afford: the demonstration's candidate grid (20 runs) cut to one rate per method but full
# fine-tuning's two (so that the choice on validation is still exercised), and one anchored rate and weight.
FEWER_CANDIDATES = (
    Method("full", "full fine-tuning (text tower)", (2e-4, 1e-3)),
    *(Method(method.name, method.label, (1e-2,), method.flags) for method in METHODS[1:]),
)


@pytest.fixture(scope="module")
def demonstration(tmp_path_factory, tiny_reproduction):
    """The demonstration run with a few steps on the shared tiny reproduction (which it only reads)."""
    root = tmp_path_factory.mktemp("finetune_demonstration")
    reproduction, _ = tiny_reproduction
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demonstration_module, "METHODS", FEWER_CANDIDATES)
        patch.setattr(demonstration_module, "ANCHOR_RATES", (1e-2,))
        try:
            arguments = ["--reproduction_dir", str(reproduction), "--output_dir", str(root / "demo")]
            settings = ["--languages", ",".join(LANGUAGES), "--steps", "4", "--batch_size", "8", "--threads", "1"]
            main([*arguments, *settings, "--anchor_weights", "10"])
        finally:
            torch.set_num_threads(threads)
    results = json.loads((root / "demo" / "results.json").read_text(encoding="utf-8"))
    return reproduction, root / "demo", results


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_held_out_emoji_are_split_once_into_disjoint_halves(demonstration):
    reproduction, demo, results = demonstration
    held_out = {path.name for path in (reproduction / "data" / "test").iterdir() if path.is_dir()}
    finetune, test, dropped = (set(results["split"][part]) for part in ("finetune", "test_half", "finetune_dropped"))
    assert finetune and test
    assert not finetune & test and not dropped & test and not dropped & finetune
    assert finetune | dropped | test == held_out
    assert len(test) == len(held_out) // 2
    assert {path.name for path in (demo / "data" / "test_half").iterdir() if path.is_dir()} == test
    original = {path.name for path in (demo / "data" / "original_emoji").iterdir() if path.is_dir()}
    assert len(original) == len(test) and not original & held_out
    trained = {Path(row["image"]).stem for row in read_jsonl(reproduction / "data" / "train_captions.jsonl")}
    assert original <= trained
    views = demo / "data" / "finetune_new_views"
    assert {path.name for path in views.iterdir() if path.is_dir()} == finetune
    for slug in finetune:  # a new view of each fine-tuned emoji, not the image it was trained on
        assert (views / slug / f"{slug}.png").read_bytes() != (demo / "data" / "images" / f"{slug}.png").read_bytes()


@pytest.mark.slow
def test_the_anchor_texts_are_names_the_model_knew_and_none_is_scored_or_validated(demonstration):
    reproduction, demo, results = demonstration
    lines = Path(results["anchor_texts"]["path"]).read_text(encoding="utf-8").splitlines()
    anchors = set(lines)
    assert len(lines) == len(anchors) == results["anchor_texts"]["texts"]  # each once, as the trainer keeps them
    rows = read_jsonl(reproduction / "data" / "train_captions.jsonl")
    names = {}
    for row in rows:
        names.setdefault(Path(row["image"]).stem, {})[row["language"]] = row["caption"]
    validation = demo / "data" / "validation_original"
    held = set(results["original_emoji"]) | {path.name for path in validation.iterdir() if path.is_dir()}
    scored = {names[slug][x] for slug in held for x in LANGUAGES if x in names[slug]}
    expected = {names[slug][x] for slug in set(names) - held for x in LANGUAGES if x in names[slug]} - scored
    assert anchors and anchors == expected and not anchors & scored


@pytest.mark.slow
def test_no_test_half_name_is_in_the_fine_tuning_captions(demonstration):
    reproduction, demo, results = demonstration
    rows = read_jsonl(demo / "data" / "finetune_captions.jsonl")
    assert {Path(row["image"]).stem for row in rows} == set(results["split"]["finetune"])
    assert {row["language"] for row in rows} == set(LANGUAGES)
    assert all((demo / "data" / row["image"]).is_file() for row in rows)
    names = json.loads((reproduction / "data" / "test" / "classnames.json").read_text(encoding="utf-8"))
    slugs = sorted(path.name for path in (reproduction / "data" / "test").iterdir() if path.is_dir())
    positions = [slugs.index(slug) for slug in results["split"]["test_half"]]
    test_names = {normalised(values[i]) for values in names.values() for i in positions}
    assert test_names and not {normalised(row["caption"]) for row in rows} & test_names


@pytest.mark.slow
def test_every_method_is_scored_before_and_after_on_both_sets_in_every_language(demonstration):
    _, demo, results = demonstration
    expected = [name for method in FEWER_CANDIDATES for name in (method.name, f"{method.name}_wise_ft")]
    assert list(results["runs"]) == [*expected, *(f"{name}_anchored" for name in ANCHORED)]
    for scores in [results["before"], *(run["after"] for run in results["runs"].values())]:
        assert set(scores) == {"finetune_new_views", "test_half", "original_emoji"}
        for scored in scores.values():
            assert list(scored["per_language"]) == LANGUAGES
            assert all(0 <= value <= 100 for value in scored["per_language"].values())
    for method in FEWER_CANDIDATES:
        run = results["runs"][method.name]
        assert [candidate["learning_rate"] for candidate in run["candidates"]] == list(method.learning_rates)
        for candidate in run["candidates"]:  # every rate trained, each scored on the validation split only
            summary = json.loads((Path(candidate["output"]) / "training_summary.json").read_text(encoding="utf-8"))
            assert summary["global_step"] == 4 and candidate["wall_s"] > 0, method.name
            assert set(candidate["validation"]) == {"validation_views", "validation_original"}
        chosen = max(run["candidates"], key=lambda candidate: validation_score(candidate["validation"]))
        assert run["learning_rate"] == chosen["learning_rate"] and run["output"] == chosen["output"]
    full, lora, tokens = (results["runs"][name] for name in ("full", "lora", "lora_tokens"))
    assert not is_adapter_folder(full["output"]) and is_adapter_folder(lora["output"])
    assert json.loads((Path(lora["output"]) / "adapter_config.json").read_text())["trainable_token_indices"] is None
    assert json.loads((Path(tokens["output"]) / "adapter_config.json").read_text())["trainable_token_indices"]
    for adapted in (lora, tokens):
        assert 0 < adapted["trainable_parameters"] < 0.01 * full["trainable_parameters"]
    assert tokens["trainable_parameters"] > lora["trainable_parameters"]

    # WiSE-FT rows: halfway between the start model and the chosen run's (merged) weights, weight by weight
    start = load_file(Path(results["start_model"]) / "model.safetensors")
    for name, source in (("full", Path(full["output"])), ("lora_tokens", Path(tokens["output"]) / "merged")):
        wise = results["runs"][f"{name}_wise_ft"]
        assert wise["wise_ft_alpha"] == 0.5 and not is_adapter_folder(wise["output"])
        halfway, end = load_file(Path(wise["output"]) / "model.safetensors"), load_file(source / "model.safetensors")
        moved = [
            key
            for key in end
            if key in start
            and end[key].is_floating_point()
            and not torch.equal(end[key], start[key].reshape(end[key].shape))
        ]
        assert moved, name
        for key in moved:
            expected = (start[key].reshape(end[key].shape) + end[key]) / 2
            torch.testing.assert_close(halfway[key], expected, rtol=1e-5, atol=1e-6)

    # anchored rows: the base method's flags with the anchor texts, each rate and weight scored on validation only
    for name in ANCHORED:
        run, base = results["runs"][f"{name}_anchored"], results["runs"][name]
        assert run["learning_rate"] == 1e-2 and run["anchor_selection"].keys() == {"0.01 @ 10"}
        summary = json.loads((Path(run["output"]) / "training_summary.json").read_text(encoding="utf-8"))
        assert summary["anchors"] == {"texts": results["anchor_texts"]["texts"], "weight": 10.0}
        assert "--anchor_texts" in run["flags"] and set(base["flags"]) <= set(run["flags"])

    table = (demo / "results.md").read_text(encoding="utf-8")
    assert all(run["label"] in table for run in results["runs"].values())
    assert (demo / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_fine_tuning_emoji_sharing_a_test_half_name_in_any_language_are_dropped(tmp_path):
    """Held-out emoji in pairs that share a name in one language (written differently: case, spaces): a pair split
    across the halves must lose its fine-tuning member."""
    data = tmp_path / "run" / "data"
    (data / "images").mkdir(parents=True)
    held_out = {f"u{i:x}": {x: f"{x} name {i}" for x in ALL_LANGUAGES} for i in range(0x100, 0x10C)}
    for i, slug in enumerate(sorted(held_out)):
        held_out[slug]["ja"] = f"Shared  Name {i // 2}" if i % 2 else f"shared name {i // 2}"
    trained = {f"u{i:x}": {x: f"{x} trained {i}" for x in ALL_LANGUAGES} for i in range(0x200, 0x210)}
    for slug in [*held_out, *trained]:
        Image.new("RGB", (8, 8), "white").save(data / "images" / f"{slug}.png")
    for slug in held_out:
        (data / "test" / slug).mkdir(parents=True)
    classnames = {x: [held_out[slug][x] for slug in sorted(held_out)] for x in ALL_LANGUAGES}
    (data / "test" / "classnames.json").write_text(json.dumps(classnames, ensure_ascii=False), encoding="utf-8")
    rows = [
        {"image": f"images/{s}.png", "caption": names[x], "language": x} for s, names in trained.items() for x in names
    ]
    write_jsonl(data / "train_captions.jsonl", rows)

    split = split_domain(tmp_path / "run", tmp_path / "demo", ["en", "de"], seed=0)
    assert (
        split.dropped
        and len(split.test) == 6
        and set(split.finetune) | set(split.dropped) | set(split.test) == set(held_out)
    )
    test_names = {normalised(name) for slug in split.test for name in held_out[slug].values()}
    for slug in split.dropped:
        assert normalised(held_out[slug]["ja"]) in test_names
    for slug in split.finetune:
        assert not {normalised(name) for name in held_out[slug].values()} & test_names
    captions = read_jsonl(split.finetune_captions)
    assert [row["language"] for row in captions] == ["en", "de"] * len(split.finetune)
    assert len(split.original) == 6 and set(split.original) <= set(trained)


def test_a_folder_that_is_not_a_finished_reproduction_is_refused_in_one_line(tmp_path):
    (tmp_path / "run" / "data" / "images").mkdir(parents=True)
    with pytest.raises(SystemExit) as refusal:
        main(["--reproduction_dir", str(tmp_path / "run"), "--output_dir", str(tmp_path / "demo")])
    assert refusal.value.code == 2
    message = str(refusal.value)
    assert "\n" not in message and str(tmp_path / "run") in message
    assert "is not a finished altclip-reproduce output" in message and "stage2_contrastive/model.safetensors" in message
    assert "altclip-reproduce --output_dir" in message
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize(
    "weights, problem",
    [("1,x", "'x' is not a number"), ("10,0", "0 is too small"), ("nan", "NaN"), ("", "'' is not a number")],
)
def test_anchor_weights_that_are_not_positive_numbers_are_refused_in_one_line(tmp_path, cli, weights, problem):
    """Refused by the parser, before the reproduction folder is even read."""
    cli.refusal(
        main, "--reproduction_dir", tmp_path / "none", "--anchor_weights", weights,
        contains=["--anchor_weights", problem],
    )  # fmt: skip
