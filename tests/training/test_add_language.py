"""``altclip-train add-language`` on the toy setup: an adapter folder that the other jobs take as a model, with the
new language's token embeddings, and the before/after table and guard of every language the model knew."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from stage_runs import QUIET, shapes_image_folder, torchrun

from altclip.common.adapters import is_adapter_folder
from altclip.evaluation.cli import main as eval_main
from altclip.training.add_language import language_table
from altclip.training.cli import main as train_main
from altclip.training.finetune.new_tokens import WORD_EMBEDDINGS
from modeling_altclip.assets import load_xlmr_tokenizer

ZH_NAMES = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}


def three_language_folder(toy, root: Path) -> Path:
    """The shapes image folder named in en, de and zh."""
    folder = shapes_image_folder(toy, root)
    names = json.loads((folder / "classnames.json").read_text())
    names["zh"] = [ZH_NAMES[shape] for shape in ("circle", "square", "triangle")]
    (folder / "classnames.json").write_text(json.dumps(names, ensure_ascii=False))
    return folder


def zh_rows(toy) -> list[dict]:
    rows = [json.loads(line) for line in Path(toy["parallel"]).read_text().splitlines() if line.strip()]
    return [row for row in rows if row["language"] == "zh"]


def add_zh_flags(toy, start: Path, root: Path, batch_size: int) -> list[str]:
    """add-language flags: Chinese added to the toy stage-1 model (en, de known), 2 steps, scored on shapes."""
    parallel = root / "parallel_zh.jsonl"
    parallel.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in zh_rows(toy)))
    folder = three_language_folder(toy, root / "shapes")
    return [
        "--model_name_or_path", str(start), "--language", "zh",  # the teacher is the model itself: no CLIP needed
        "--known_languages", "en,de", "--zeroshot_data_dir", str(folder), "--max_drop", "100",
        "--train_files", str(parallel), "--per_device_train_batch_size", str(batch_size), "--learning_rate", "1e-2",
        "--max_steps", "2", "--save_strategy", "no", "--zeroshot_eval_flags", "--num_workers 0 --templates '{c}'",
    ]  # fmt: skip


def test_add_language_writes_a_guarded_adapter_that_altclip_eval_takes(tmp_path, toy, start_without_dropout):
    rows = zh_rows(toy)
    folder = tmp_path / "shapes"
    output = tmp_path / "added"
    train_main(
        ["add-language", *add_zh_flags(toy, start_without_dropout, tmp_path, 16), "--output_dir", str(output), *QUIET]
    )
    assert is_adapter_folder(output)
    config = json.loads((output / "adapter_config.json").read_text())
    tokenizer = load_xlmr_tokenizer()
    zh_tokens = {token for row in rows for token in tokenizer(row["translation"])["input_ids"]}
    trained = set(config["trainable_token_indices"][WORD_EMBEDDINGS])
    assert zh_tokens - set(tokenizer.all_special_ids) <= trained  # the new language's words have embeddings to train
    assert config["r"] == 16 and load_file(output / "adapter_model.safetensors")
    trained_summary = json.loads((output / "training_summary.json").read_text())["lora"]
    assert trained_summary["trainable_tokens"] == len(trained)  # stage 1's summary counts them (it said 0)
    assert json.loads((output / "training_summary.json").read_text())["teacher"] == "self"

    table = json.loads((output / "add_language.json").read_text())
    assert [row["language"] for row in table["rows"]] == ["zh", "en", "de"]
    summary = json.loads((output / "training_summary.json").read_text())
    before = summary["before_after"]["before"]
    assert table["rows"][1]["before"] == before["zeroshot/image_folder/en/top1"]
    assert table["dropped"] == [] and "(added)" in (output / "add_language.md").read_text()

    eval_main([
        "zeroshot", "--model", str(output), "--dataset", "image_folder", "--data_dir", str(folder),
        "--languages", "zh", "--templates", "{c}", "--num_workers", "0", "--cache_dir", "",
        "--output_dir", str(tmp_path / "eval"),
    ])  # fmt: skip
    scored = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]
    assert scored[0]["metrics"]["top1"] == table["rows"][0]["after"]  # the same model the guard scored


def test_add_language_in_two_processes_writes_one_report(tmp_path, toy, start_without_dropout):
    """Under torchrun every rank reads the summary the main process writes after saving; once a rank other than 0
    read it before it existed and the job died (FileNotFoundError on rank 1)."""
    output = tmp_path / "added"
    torchrun("add-language", output, 2, *add_zh_flags(toy, start_without_dropout, tmp_path, 8))
    table = json.loads((output / "add_language.json").read_text())
    assert [row["language"] for row in table["rows"]] == ["zh", "en", "de"]
    assert is_adapter_folder(output) and "(added)" in (output / "add_language.md").read_text()


def test_the_guard_names_each_known_language_that_dropped_beyond_the_threshold():
    def scores(values):
        return {f"zeroshot/image_folder/{code}/top1": value for code, value in values.items()}

    summary = {
        "before_after": {
            "before": scores({"ko": 1, "en": 50, "de": 40}),
            "after": scores({"ko": 30, "en": 47, "de": 39.5}),
        }
    }
    table = language_table(summary, ["en", "de"], "ko", max_drop=2.0)
    assert table["dropped"] == ["en"]  # -3 beyond 2; de's -0.5 within; ko's gain is the new language, not guarded
    assert [row["change"] for row in table["rows"]] == [29, -3, -0.5]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--language", "de", "--known_languages", "en,de"], "--language de is in --known_languages"),
        (["--language", "zh", "--known_languages", "en", "--zeroshot_languages", "en"], "--zeroshot_languages is set"),
        (["--language", "zh", "--known_languages", "en", "--max_drop", "-1"], "--max_drop must be 0 or more"),
    ],
)
def test_add_language_flags_that_cannot_work_are_refused(tmp_path, toy, cli, extra, message):
    argv = ["add-language", "--model_name_or_path", "x/y", "--zeroshot_data_dir", str(tmp_path), *extra]
    cli.refusal(train_main, *argv, "--output_dir", tmp_path / "out", match=message)


def test_the_self_teacher_is_the_starting_text_tower_frozen(start_without_dropout):
    """`--teacher self`: the teacher's features are the starting model's own ``transformation`` output, and they
    stay so while the student trains (a copy, no gradient)."""
    import torch

    from altclip.training.loop.teacher import self_teacher
    from modeling_altclip import AltCLIPModel

    model = AltCLIPModel.from_pretrained(start_without_dropout).eval()
    teacher = self_teacher(model.text_model)
    batch = load_xlmr_tokenizer()(["a red circle", "ein blaues Quadrat"], padding=True, return_tensors="pt")
    with torch.no_grad():
        start = model.text_model(**batch).pooler_output
    assert teacher.width == model.config.text_config.project_dim
    torch.testing.assert_close(teacher(**batch), start, rtol=0, atol=0)
    with torch.no_grad():
        for parameter in model.text_model.parameters():
            parameter.add_(0.1)
    assert not torch.allclose(model.text_model(**batch).pooler_output, start)
    torch.testing.assert_close(teacher(**batch), start, rtol=0, atol=0)  # the student moved, the teacher did not
    assert not any(parameter.requires_grad for parameter in teacher.parameters())


def test_a_self_teacher_needs_a_trained_model(tmp_path, toy, cli, start_without_dropout):
    argv = ["teacher", "--teacher", "self", "--clip_model_name_or_path", str(toy["clip"])]
    argv += ["--text_encoder_name_or_path", str(toy["xlmr"]), "--train_files", str(toy["parallel"])]
    cli.refusal(train_main, *argv, "--output_dir", tmp_path / "out", match="--teacher self distils a trained AltCLIP")

    trained = ["teacher", "--teacher", "self", "--model_name_or_path", str(start_without_dropout)]
    trained += ["--train_files", str(toy["parallel"]), "--max_text_length", "16"]
    for flag in ("--clip_model_name_or_path", "--teacher_tokenizer_name_or_path"):  # ignored, so refused
        line = cli.refusal(train_main, *trained, flag, str(toy["clip"]), "--output_dir", tmp_path / "out2")
        assert f"{flag} is not used with --teacher self" in line
