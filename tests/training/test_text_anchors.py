"""Text anchors (``--anchor_texts``): fine-tuning keeps the starting model's embeddings of texts it should not forget.

What is protected: the anchor files are read as given (one text per line, or a table's column; bad rows skipped and
counted; unusable files refused in one line before any model loads, as are flags that would do nothing); the
starting embeddings are the model's own; anchors ride in the captions' forward without changing the captions'
embeddings; every rank holds a disjoint share and draws by (seed, rank, step, micro-batch); the term is in effect in
a real run (logged, recorded, and the anchors move less than without it), also with full-batch negatives; a resumed
run equals the uninterrupted one; a resumption with other anchors is refused.
"""

import contextlib
import hashlib
import json
import logging
import random
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from stage_runs import run_stage, stage_refusal, torchrun

from altclip.common.errors import InputDataError, UsageError
from altclip.training.loop.accumulated_negatives import accumulated_contrastive_step
from altclip.training.loop.objective_record import (
    ANCHORS_START,
    OBJECTIVE_FILE,
    check_resumed_anchor_start,
    check_resumed_objective,
    objective_settings,
)
from altclip.training.loop.text_anchors import (
    AnchorTexts,
    TextAnchors,
    read_anchor_texts,
    start_digest,
    starting_embeddings,
)
from modeling_altclip import AltCLIPModel, AltCLIPProcessor

ANCHORS = ["a green square", "ein blauer Kreis", "un triangle rouge", "a yellow star", "ein roter Kreis", "blue"]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---- reading the files -------------------------------------------------------------------------------------------


def test_text_files_and_tables_give_their_distinct_texts_in_order(tmp_path, caplog):
    text = write_lines(tmp_path / "a.txt", ["\ufeffred circle", "", "  blue square  ", "red circle", "   "])
    table = tmp_path / "b.jsonl"
    rows = [{"caption": "green star"}, "not json", {"other": 1}, {"caption": ""}, {"caption": "blue square"}]
    table.write_text("\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows), encoding="utf-8")
    csv_table = write_lines(tmp_path / "c.csv", ["name,text", "x,yellow moon", "y,green star"])
    with caplog.at_level(logging.WARNING):
        texts = read_anchor_texts([str(text), str(table)], "caption")
    assert texts.share == ["red circle", "blue square", "green star"] and texts.count == 3
    assert "3 record(s) skipped" in caplog.text and f"{table}:2" in caplog.text  # counted, the first located
    assert read_anchor_texts([str(csv_table)], "text").share == ["yellow moon", "green star"]


@pytest.mark.parametrize(
    "content, name, message",
    [
        (None, "missing.txt", "missing.txt: no such file"),
        (b"\n  \n", "blank.txt", "blank.txt: no text in it"),
        (b"caf\xe9\n", "latin1.txt", "latin1.txt: not UTF-8 text"),
        (b'{"caption": ""}\n', "empty.jsonl", "empty.jsonl: no text in it"),
        (b'{"text": "x"}\n', "column.jsonl", "missing column(s) caption"),
        (b"x", "shapes.parquet", "unknown data format"),
    ],
)
def test_an_unusable_anchor_file_is_one_error_naming_it(tmp_path, content, name, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputDataError, match=re.escape(message)) as raised:
        read_anchor_texts([str(path)], "caption")
    assert str(raised.value).startswith("--anchor_texts") and "\n" not in str(raised.value)


def cli_flags(toy, *extra: str) -> list[str]:
    return ["--model_name_or_path", "x/y", "--train_files", str(toy["captions"]), "--max_steps", "1", *extra]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--anchor_weight", "5"], "--anchor_weight, --anchor_batch_size and --anchor_text_column need --anchor_texts"),
        (["--anchor_texts", "{anchors}", "--anchor_weight", "0"], "--anchor_texts at --anchor_weight 0 does nothing"),
        (["--anchor_texts", "{missing}"], "missing.txt: no such file"),
        (["--anchor_texts", "{anchors}", "--anchor_batch_size", "0"], "--anchor_batch_size"),
        (["--anchor_texts", "{anchors}", "--anchor_weight", "nan"], "--anchor_weight"),
        (["--anchor_texts", "{anchors}", "--model_name_or_path="], "keeps a trained model's embeddings"),
    ],
    ids=["weight alone", "weight 0", "missing file", "batch 0", "nan weight", "no trained model"],
)
def test_anchor_flags_that_cannot_work_are_refused_before_a_model_loads(tmp_path, toy, cli, extra, message):
    anchors = write_lines(tmp_path / "anchors.txt", ANCHORS)
    extra = [item.format(anchors=anchors, missing=tmp_path / "missing.txt") for item in extra]
    stage_refusal(cli, "contrastive", tmp_path / "out", *cli_flags(toy, *extra), match=message)
    assert not (tmp_path / "out").exists()


# ---- the starting embeddings, the shares and the draws -------------------------------------------------------------


def test_starting_embeddings_are_the_models_own_and_anchors_leave_the_captions_unchanged(start_without_dropout):
    model = AltCLIPModel.from_pretrained(start_without_dropout).eval()
    tokenizer = AltCLIPProcessor.from_pretrained(start_without_dropout).tokenizer
    ids, targets = starting_embeddings(model, tokenizer, ANCHORS, 16, "cpu", batch_size=4)
    start = start_digest(model)
    assert start == start_digest(AltCLIPModel.from_pretrained(start_without_dropout))
    with torch.no_grad():
        model.text_projection.weight[0, 0] += 1
        assert start != start_digest(model)
        model.text_projection.weight[0, 0] -= 1
    assert all(parameter.device.type == "cpu" for parameter in model.parameters())
    with torch.no_grad():
        for text, target in zip(ANCHORS, targets):  # one text at a time: no padding involved
            alone = tokenizer([text], return_tensors="pt")
            expected = F.normalize(model.get_text_features(**alone).pooler_output, dim=-1)[0]
            torch.testing.assert_close(target, expected, rtol=1e-5, atol=1e-6)

        anchors = TextAnchors(ids, targets, weight=2.0, batch_size=3, pad_token_id=tokenizer.pad_token_id, seed=0)
        captions = tokenizer(["a red circle", "ein gelber Stern"], padding=True, return_tensors="pt")
        inputs = dict(captions)
        rows = anchors.draw(step=5, micro_batch=0)
        assert anchors.join(inputs, rows) == 2 and len(inputs["input_ids"]) == 5
        joined = F.normalize(
            model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output, dim=-1
        )
        alone = F.normalize(model.get_text_features(**captions).pooler_output, dim=-1)
        torch.testing.assert_close(joined[:2], alone, rtol=1e-5, atol=1e-6)
        assert float(anchors.loss(joined[2:], inputs["anchor_rows"])) == pytest.approx(0.0, abs=1e-5)
        moved = torch.roll(joined[2:], 1, dims=0)  # other anchors' embeddings: weight * mean(1 - cos) > 0
        expected = 2.0 * (1 - (moved * targets[torch.as_tensor(rows)]).sum(-1)).mean()
        torch.testing.assert_close(anchors.loss(moved, inputs["anchor_rows"]), expected)


def test_every_rank_reads_a_disjoint_share_of_the_distinct_texts_with_the_same_count_and_digest(tmp_path):
    generator = random.Random(0)
    for case in range(300):
        lines = [f"t{generator.randint(0, 80)}" for _ in range(generator.randint(1, 60))]
        path = write_lines(tmp_path / f"{case}.txt", lines)
        distinct, world = list(dict.fromkeys(lines)), generator.randint(1, 9)
        shares = [read_anchor_texts([str(path)], "caption", rank, world) for rank in range(world)]
        assert {(share.count, share.digest) for share in shares} == {(len(distinct), shares[0].digest)}
        if len(distinct) >= world:  # disjoint, covering, in first-seen order
            assert all(share.share == distinct[rank::world] for rank, share in enumerate(shares))
        else:
            assert all(share.share == distinct for share in shares)
    forward, backward = write_lines(tmp_path / "ab.txt", ["a", "b", "a"]), write_lines(tmp_path / "ba.txt", ["b", "a"])
    digest = read_anchor_texts([str(forward)], "caption").digest
    assert digest == hashlib.sha256(b"a\0b\0").hexdigest()  # the distinct texts in first-seen order
    assert read_anchor_texts([str(backward)], "caption").digest == hashlib.sha256(b"b\0a\0").hexdigest() != digest
    separators = write_lines(tmp_path / "separators.txt", ["a\u2028b", "c\x0cd"])  # str.splitlines' line ends
    assert read_anchor_texts([str(separators)], "caption").share == ["a", "b", "c", "d"]


def test_files_that_change_between_the_two_passes_are_refused(tmp_path, monkeypatch):
    import altclip.training.loop.text_anchors as text_anchors

    path = write_lines(tmp_path / "anchors.txt", ["a", "b"])
    reads = iter([["a", "b"], ["a", "b", "c"]])
    monkeypatch.setattr(text_anchors, "iter_anchor_texts", lambda *args: iter(next(reads)))
    with pytest.raises(InputDataError, match="changed while being read"):
        read_anchor_texts([str(path)], "caption")


def test_draws_are_keyed_by_rank_step_and_micro_batch():
    generator = random.Random(0)
    for _ in range(2000):
        share, batch = generator.randint(1, 60), generator.randint(1, 70)
        anchors = TextAnchors([[0]] * share, torch.zeros(share, 2), 1.0, batch, 1, 7, rank=1)
        drawn = anchors.draw(generator.randint(0, 10**6), generator.randint(0, 8))
        assert len(drawn) == min(batch, share) == len(set(drawn.tolist()))
        assert 0 <= drawn.min() and drawn.max() < share
    anchors = TextAnchors([[0]] * 1000, torch.zeros(1000, 2), 1.0, 8, 1, seed=3, rank=0)
    other_rank = TextAnchors([[0]] * 1000, torch.zeros(1000, 2), 1.0, 8, 1, seed=3, rank=1)
    assert np.array_equal(anchors.draw(4, 1), anchors.draw(4, 1))
    draws = [anchors.draw(4, 0), anchors.draw(4, 1), anchors.draw(5, 0), other_rank.draw(4, 0)]
    assert len({tuple(draw.tolist()) for draw in draws}) == 4


def test_full_batch_negatives_back_propagate_the_anchor_term_of_every_micro_batch():
    """`accumulated_contrastive_step` with a penalty per micro-batch: the gradient of the contrastive loss over the
    whole batch plus the micro-batches' mean penalty, computed directly."""
    torch.manual_seed(0)
    encoder = torch.nn.Linear(6, 4)
    batches = [{"x": torch.randn(3, 6), "anchor": torch.randn(2, 6)} for _ in range(2)]
    images = F.normalize(torch.randn(6, 4), dim=-1)
    log_scale = torch.nn.Parameter(torch.tensor(2.0))

    def penalty_of(batch):
        return 1 - F.normalize(encoder(batch["anchor"]), dim=-1)[:, 0].mean()

    def embed(model, batch):
        number = next(i for i, b in enumerate(batches) if b is batch)
        return images[3 * number : 3 * number + 3], F.normalize(model(batch["x"]), dim=-1), penalty_of(batch)

    def loss_of(image, text, log_scale):
        logits = log_scale.exp() * text @ image.t()
        labels = torch.arange(len(text))
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2

    accelerator = SimpleNamespace(no_sync=lambda model: contextlib.nullcontext(), backward=lambda x: x.backward())
    trainer = SimpleNamespace(
        args=SimpleNamespace(device=torch.device("cpu")),
        compute_loss_context_manager=contextlib.nullcontext,
        accelerator=accelerator,
    )
    returned = accumulated_contrastive_step(trainer, encoder, batches, [None, None], embed, loss_of, [log_scale])
    got = [parameter.grad.clone() for parameter in encoder.parameters()]
    encoder.zero_grad()
    texts = torch.cat([F.normalize(encoder(batch["x"]), dim=-1) for batch in batches])
    penalties = sum(penalty_of(batch) for batch in batches) / len(batches)
    direct = loss_of(images, texts, log_scale.detach()) + penalties
    direct.backward()
    for mine, expected in zip(got, (parameter.grad for parameter in encoder.parameters())):
        torch.testing.assert_close(mine, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(returned, direct.detach(), rtol=1e-5, atol=1e-6)


# ---- real runs -----------------------------------------------------------------------------------------------------


def run_flags(toy, start: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(start), "--train_files", str(toy["captions"]), "--per_device_train_batch_size",
        "8", "--learning_rate", "5e-3", "--logging_steps", "1", *extra,
    ]  # fmt: skip


def anchor_drift(model_dir: Path, start: Path, texts: list[str]) -> float:
    """Mean 1 - cos between the anchors' embeddings by `model_dir` and by the start model."""
    tokenizer = AltCLIPProcessor.from_pretrained(start).tokenizer
    _, before = starting_embeddings(AltCLIPModel.from_pretrained(start), tokenizer, texts, 32, "cpu")
    _, after = starting_embeddings(AltCLIPModel.from_pretrained(model_dir), tokenizer, texts, 32, "cpu")
    return float((1 - (before * after).sum(-1)).mean())


@pytest.mark.slow
def test_the_anchor_term_is_in_effect_in_a_real_run_with_full_batch_negatives(tmp_path, toy, start_without_dropout):
    anchors = write_lines(tmp_path / "anchors.txt", ANCHORS)
    common = ["--max_steps", "6", "--save_steps", "6", "--gradient_accumulation_steps", "2"]
    anchored = tmp_path / "anchored"
    with_anchors = ["--anchor_texts", str(anchors), "--anchor_weight", "100", "--anchor_batch_size", "4"]
    summary = run_stage("contrastive", anchored, *run_flags(toy, start_without_dropout, *common, *with_anchors))
    plain = tmp_path / "plain"
    run_stage("contrastive", plain, *run_flags(toy, start_without_dropout, *common))
    assert summary["anchors"] == {"texts": len(ANCHORS), "weight": 100.0}
    history = json.loads((anchored / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    distances = [entry["anchor_distance"] for entry in history if "anchor_distance" in entry]
    assert len(distances) == 6 and distances[0] == pytest.approx(0.0, abs=1e-4)  # the start model's own at step 1
    record = json.loads((anchored / "checkpoint-6" / OBJECTIVE_FILE).read_text())["anchors"]
    assert record == {
        "texts_sha256": read_anchor_texts([str(anchors)], "caption").digest, "texts": 6, "weight": 100.0,
        "batch_size": 4,
    }  # fmt: skip
    one_batch = tmp_path / "one_batch"  # no accumulation: the term rides in the Trainer's own training step
    run_stage("contrastive", one_batch, *run_flags(toy, start_without_dropout, "--max_steps", "6", *with_anchors))
    drift_plain = anchor_drift(plain, start_without_dropout, ANCHORS)
    drifts = [anchor_drift(run, start_without_dropout, ANCHORS) for run in (anchored, one_batch)]
    assert drift_plain > 1e-3 and max(drifts) < drift_plain / 5, (drifts, drift_plain)


@pytest.mark.slow
def test_a_resumed_anchored_run_equals_the_uninterrupted_one_and_other_anchors_are_refused(
    tmp_path, toy, start_without_dropout, cli
):
    anchors = write_lines(tmp_path / "anchors.txt", ANCHORS)
    flags = run_flags(toy, start_without_dropout, "--max_steps", "4", "--save_steps", "2", "--anchor_texts",
                      str(anchors), "--anchor_weight", "10", "--anchor_batch_size", "3")  # fmt: skip
    whole = tmp_path / "whole"
    run_stage("contrastive", whole, *flags)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(whole / "checkpoint-2", resumed / "checkpoint-2")
    run_stage("contrastive", resumed, *flags, "--resume_from_checkpoint", "true")
    expected, got = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    moved = [key for key in expected if not torch.equal(expected[key], load_file(resumed / "checkpoint-2" /
             "model.safetensors")[key])]  # fmt: skip
    assert moved
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)

    other = write_lines(tmp_path / "other.txt", [*ANCHORS, "a purple moon"])
    refused = tmp_path / "refused"
    refused.mkdir()
    shutil.copytree(whole / "checkpoint-2", refused / "checkpoint-2")
    changed = [flag if flag != str(anchors) else str(other) for flag in flags]
    line = stage_refusal(cli, "contrastive", refused, *changed, "--resume_from_checkpoint", "true")
    assert "was trained with another objective (anchors" in line

    # the same anchors from a start model that changed since (retrained, overwritten): refused once it has loaded
    record = json.loads((whole / "checkpoint-2" / OBJECTIVE_FILE).read_text())
    assert record[ANCHORS_START] == start_digest(AltCLIPModel.from_pretrained(start_without_dropout))
    changed_start = tmp_path / "changed_start"
    shutil.copytree(start_without_dropout, changed_start)
    model = AltCLIPModel.from_pretrained(changed_start)
    with torch.no_grad():
        model.text_projection.weight[0, 0] += 1
    model.save_pretrained(changed_start)
    moved_start = [flag if flag != str(start_without_dropout) else str(changed_start) for flag in flags]
    line = stage_refusal(cli, "contrastive", refused, *moved_start, "--resume_from_checkpoint", "true")
    assert "was trained toward the anchors' embeddings by another start model" in line


@pytest.mark.slow
def test_two_processes_with_their_shares_of_the_anchors_train_like_one_process_with_all(
    tmp_path, toy, start_without_dropout
):
    """Each rank embeds and draws only its share (rank r: anchors r, r + 2, ...): with every share drawn whole, the
    two ranks' averaged loss and gradient equal one process holding the global batch and all anchors (plain SGD and
    a fixed data order, as test_distributed.py compares; float32 summation order only)."""
    anchors = write_lines(tmp_path / "anchors.txt", ANCHORS)
    common = [
        "--model_name_or_path", str(start_without_dropout), "--train_files", str(toy["captions"]), "--max_steps",
        "2", "--logging_steps", "1", "--save_steps", "2", "--train_sampling_strategy", "sequential", "--optim", "sgd",
        "--learning_rate", "0.1", "--anchor_texts", str(anchors), "--anchor_weight", "50", "--anchor_batch_size", "8",
    ]  # fmt: skip
    two = torchrun("contrastive", tmp_path / "two", 2, *common, "--per_device_train_batch_size", "4")
    one = torchrun("contrastive", tmp_path / "one", 1, *common, "--per_device_train_batch_size", "8")
    assert "Anchor texts: 3 on this rank (of 6), 3 per micro-batch" in two.stdout + two.stderr  # rank 0 logs
    assert "Anchor texts: 6 on this rank (of 6), 6 per micro-batch" in one.stdout + one.stderr
    steps = {}
    for run in ("two", "one"):
        state = json.loads((tmp_path / run / "checkpoint-2" / "trainer_state.json").read_text())
        steps[run] = [entry for entry in state["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in steps["two"]] == [entry["step"] for entry in steps["one"]] == [1, 2]
    for two, one in zip(steps["two"], steps["one"]):
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-5) and two["anchor_distance"] >= 0, (two, one)
        assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5), (two, one)
    assert steps["one"][1]["anchor_distance"] > 0  # the anchors moved after step 1: the term had something to do


def test_the_record_compares_anchor_texts_by_content_not_path():
    args = SimpleNamespace(
        loss="infonce", matryoshka_dims=None, matryoshka_weights=None, gather_with_grad=True, anchor_weight=10.0,
        anchor_batch_size=None,
    )  # fmt: skip
    same = objective_settings(args, "contrastive", AnchorTexts(["a"], 6, "digest"))
    assert same == objective_settings(args, "contrastive", AnchorTexts(["b"], 6, "digest"))  # another rank's share
    assert same != objective_settings(args, "contrastive", AnchorTexts(["a"], 6, "other"))
    assert objective_settings(args, "contrastive")["anchors"] is None


def test_a_checkpoint_without_anchors_resumes_only_without_them(tmp_path):
    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    (folder / OBJECTIVE_FILE).write_text(json.dumps({"loss": "infonce", "matryoshka_dims": []}))
    args = SimpleNamespace(
        loss="infonce", matryoshka_dims=None, matryoshka_weights=None, gather_with_grad=True, anchor_weight=1.0,
        anchor_batch_size=None,
    )  # fmt: skip
    check_resumed_objective(str(folder), args, "contrastive")  # it had no anchors: it resumes without
    check_resumed_anchor_start(str(folder), "any start")  # no start recorded: nothing to compare
    for record in ({"loss": "infonce", "matryoshka_dims": []}, {"loss": "infonce", "anchors": None}):
        (folder / OBJECTIVE_FILE).write_text(json.dumps(record))
        with pytest.raises(UsageError, match="anchors None -> "):  # anchors added to a run that had none
            check_resumed_objective(str(folder), args, "contrastive", AnchorTexts(ANCHORS, 6, "digest"))
    (folder / OBJECTIVE_FILE).write_text(json.dumps({"loss": "infonce", ANCHORS_START: "start A"}))
    check_resumed_anchor_start(str(folder), "start A")
    with pytest.raises(UsageError, match="by another start model"):
        check_resumed_anchor_start(str(folder), "start B")
