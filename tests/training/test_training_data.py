"""The training data layer under real runs: every sample once per epoch across processes x DataLoader workers,
shard specs and URLs (a local HTTP server), shuffling, SIGKILL and resumption, and bad data counted, never fatal.

Every caption/sentence has a unique location key (``file:line`` or ``shard-url:key``); ``--record_trained_keys``
writes the keys that reach the model's forward, per rank and step.
"""

import io
import json
import os
import shutil
import tarfile
from collections import Counter
from functools import partial
from pathlib import Path

import datasets
import pytest
from stage_runs import (
    kill_after_checkpoint,
    run_stage,
    stage_refusal,
    torchrun,
    torchrun_command,
    toy_teacher_inputs,
    trained_keys,
    trained_steps,
)

from altclip.training.data.image_text_data import PairDecoder, decode_shard_sample
from altclip.training.data.shard_stream import ShardStream, shard_samples
from altclip.training.data.sources import parse_sources
from altclip.training.data.text_data import ParallelText
from modeling_altclip import AltCLIPProcessor

KEYS = ["--record_trained_keys", "true", "--logging_steps", "1"]


def shard_keys(spec: str) -> Counter:
    return Counter(
        sample["where"] for source in parse_sources([spec]) for url in source.urls for sample in shard_samples(url)
    )


def shard_sizes(toy) -> dict[str, int]:
    return json.loads((Path(toy["shards"]).parent / "sizes.json").read_text())


def table_keys(path: Path) -> list[str]:
    return [f"{path}:{number}" for number, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]


def parallel_keys(path: Path) -> Counter:
    """One key per pair, plus one English row per distinct English sentence (at its first pair, ``#en``)."""
    keys, first = Counter(table_keys(path)), {}
    for key, line in zip(table_keys(path), path.read_text().splitlines()):
        first.setdefault(json.loads(line)["english"], key)
    keys.update(f"{key}#en" for key in first.values())
    return keys


@pytest.mark.parametrize("data", ["shards", "captions"])
def test_contrastive_two_processes_two_workers_train_every_sample_once(tmp_path, toy, teacher_model_dir, data):
    spec = str(toy[data])
    torchrun(
        "contrastive", tmp_path, 2, "--model_name_or_path", str(teacher_model_dir), "--train_files", spec,
        "--per_device_train_batch_size", "8", "--dataloader_num_workers", "2", "--num_train_epochs", "1",
        "--save_strategy", "no", *KEYS,
    )  # fmt: skip
    expected = shard_keys(spec) if data == "shards" else Counter(table_keys(toy["captions"]))
    assert len(expected) == 180 and set(expected.values()) == {1}
    assert trained_keys(tmp_path) == expected


def test_teacher_two_processes_two_workers_train_every_sentence_once(tmp_path, toy):
    torchrun(
        "teacher", tmp_path, 2, *toy_teacher_inputs(toy), "--per_device_train_batch_size", "8",
        "--dataloader_num_workers", "2", "--num_train_epochs", "1", "--save_strategy", "no", *KEYS,
    )  # fmt: skip
    expected = parallel_keys(toy["parallel"])
    assert len(expected) == 72 + 18
    assert trained_keys(tmp_path) == expected


def stream(spec: str, processor, **kwargs) -> ShardStream:
    decode = PairDecoder(processor.image_processor)
    return ShardStream(parse_sources([spec]), partial(decode_shard_sample, decode=decode), **kwargs)


def test_shards_and_tables_over_http_and_globs(served_folder, toy, teacher_model_dir):
    folder, base = served_folder
    shutil.copytree(Path(toy["shards"]).parent, folder / "shards")
    shutil.copy(toy["parallel"], folder / "parallel.jsonl")
    processor = AltCLIPProcessor.from_pretrained(teacher_model_dir)
    remote = stream(f"{base}/shards/shard-{{0000..0007}}.tar", processor, batch_size=16)
    keys = Counter(row["key"] for batch in remote for row in batch)
    local = shard_keys(str(toy["shards"]))
    assert Counter(key.replace(base + "/shards", str(Path(toy["shards"]).parent)) for key in keys) == local
    globbed = stream(f"{folder}/shards/shard-000[0-3].tar", processor, batch_size=16)
    assert sum(len(batch) for batch in globbed) == sum(shard_sizes(toy)[f"shard-000{n}.tar"] for n in range(4))
    table = ParallelText(parse_sources([f"{base}/parallel.jsonl"]))
    assert len(table) == 72 + 18 and table[0]["key"] == f"{base}/parallel.jsonl:1"


def test_remote_shards_without_sizes_json_are_refused_with_a_message(served_folder, toy):
    folder, base = served_folder
    shutil.copy(Path(toy["shards"]).parent / "shard-0000.tar", folder / "shard-0000.tar")
    with pytest.raises(Exception, match="no sizes.json beside the remote shards"):
        ShardStream(parse_sources([f"{base}/shard-0000.tar"]), dict, batch_size=4)


def test_samples_are_shuffled_across_shards_and_shards_reshuffled_every_epoch(toy, teacher_model_dir):
    processor = AltCLIPProcessor.from_pretrained(teacher_model_dir)

    def distinct_shards_per_batch(buffer: int) -> float:
        batches = list(stream(str(toy["shards"]), processor, batch_size=16, shuffle_buffer=buffer))
        return sum(len({row["key"].rsplit(":", 1)[0] for row in batch}) for batch in batches) / len(batches)

    # 8 shards of 22-23 samples, batch 16: a full buffer draws ~6.6 shards per batch; without a buffer ~1.7.
    assert distinct_shards_per_batch(5000) > 5.5
    assert distinct_shards_per_batch(1) < 2.0
    first = stream(str(toy["shards"]), processor, batch_size=16)
    orders = []
    for epoch in (0, 1):
        first.set_epoch(epoch)
        orders.append(first.epoch_shards())
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(8)) and orders[0] != orders[1]


def logged(output_dir: Path) -> dict[int, float]:
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def test_sigkill_in_epoch_two_then_resume_trains_exactly_what_the_uninterrupted_run_trains(
    tmp_path, toy, start_without_dropout
):
    """2 processes x 2 workers, 2 epochs of 12 steps over the shards; killed after checkpoint-20 (after the
    wrap), the newest checkpoint left as an interrupted write leaves it (no trainer_state.json), resumed."""
    flags = [
        "--model_name_or_path", str(start_without_dropout), "--train_files", str(toy["shards"]),
        "--shuffle_buffer", "16", "--per_device_train_batch_size", "8", "--dataloader_num_workers", "2",
        "--num_train_epochs", "2", "--save_steps", "5", *KEYS,
    ]  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    torchrun("contrastive", whole, 2, *flags)
    kill_after_checkpoint(torchrun_command("contrastive", killed, 2, *flags), killed, 20)
    newest = max(killed.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    (newest / "trainer_state.json").unlink()  # as a kill inside the checkpoint write leaves it
    resumed_from = int(newest.name.split("-")[1]) - 5
    before = Counter(pair for pair in trained_steps(killed).elements() if int(pair[0]) <= resumed_from)
    shutil.rmtree(killed / "trained_keys")
    result = torchrun("contrastive", killed, 2, *flags, "--resume_from_checkpoint", "true")
    assert f"Resuming from checkpoint-{resumed_from}" in result.stdout + result.stderr
    assert before + trained_steps(killed) == trained_steps(whole)
    assert set(trained_keys(whole).values()) == {2} and len(trained_keys(whole)) == 180
    whole_losses, resumed_losses = logged(whole), logged(killed)
    steps = max(whole_losses)
    assert resumed_from > steps // 2 and whole_losses.keys() == resumed_losses.keys() == set(range(1, steps + 1))
    for step in range(resumed_from + 1, steps + 1):
        assert resumed_losses[step] == pytest.approx(whole_losses[step], rel=1e-5), step


def test_resuming_with_another_data_plan_is_refused(tmp_path, toy):
    run_stage("teacher", tmp_path, *toy_teacher_inputs(toy), "--max_steps", "2", "--save_steps", "2")
    with pytest.raises(SystemExit, match=r"another data plan \(per_device_train_batch_size 8 -> 4\)"):
        run_stage(
            "teacher", tmp_path, *toy_teacher_inputs(toy), "--max_steps", "4", "--per_device_train_batch_size", "4",
            "--resume_from_checkpoint", "true",
        )  # fmt: skip


def test_resuming_with_another_gradient_accumulation_is_refused(tmp_path, toy):
    """A checkpoint's step counts optimizer steps; with another accumulation the same step means other batches."""
    run_stage("teacher", tmp_path, *toy_teacher_inputs(toy), "--max_steps", "2", "--save_steps", "2")
    plan = json.loads((tmp_path / "checkpoint-2" / "data_plan.json").read_text())
    assert plan["gradient_accumulation_steps"] == 1
    with pytest.raises(SystemExit, match=r"another data plan \(gradient_accumulation_steps 1 -> 2\);"):
        run_stage(
            "teacher", tmp_path, *toy_teacher_inputs(toy), "--max_steps", "4", "--gradient_accumulation_steps", "2",
            "--resume_from_checkpoint", "true",
        )  # fmt: skip


def cut_inside_header(path: Path, member: int) -> int:
    """Truncates a tar 100 bytes into the header of its `member`-th file; returns the complete samples kept."""
    with tarfile.open(path) as archive:
        members = archive.getmembers()
    with open(path, "r+b") as handle:
        handle.truncate(members[member].offset + 100)
    return member // 2  # two files (png, txt) per sample


def test_bad_shards_samples_and_whole_bad_batches_are_counted_not_fatal(tmp_path, toy, teacher_model_dir):
    shards, sizes = tmp_path / "shards", shard_sizes(toy)
    shutil.copytree(Path(toy["shards"]).parent, shards)
    (shards / "shard-0001.tar").write_bytes(os.urandom(5000))  # corrupt: every sample lost
    kept = cut_inside_header(shards / "shard-0002.tar", 12)  # truncated inside a member header
    with tarfile.open(shards / "shard-0003.tar") as archive:  # one unreadable image, one bad caption
        files = {member.name: archive.extractfile(member).read() for member in archive.getmembers()}
    names = sorted(files)
    files[names[0]] = b"not a png"
    files[names[3].replace(".txt", ".json")] = b"{broken"
    del files[names[3]]
    with tarfile.open(shards / "shard-0003.tar", "w") as archive:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            archive.addfile(info, io.BytesIO(files[name]))
    summary = run_stage(
        "contrastive", tmp_path / "out", "--model_name_or_path", str(teacher_model_dir),
        "--train_files", f"{shards}/shard-{{0000..0007}}.tar", "--per_device_train_batch_size", "5",
        "--num_train_epochs", "1", "--train_sampling_strategy", "sequential", "--save_strategy", "no", *KEYS,
    )  # fmt: skip
    cut_short = sizes["shard-0002.tar"] - kept
    lost = sizes["shard-0001.tar"] + cut_short + 2
    assert summary["skipped_records"] == lost
    assert sum(trained_keys(tmp_path / "out").values()) == sum(sizes.values()) - lost
    reasons = summary["skipped_by_reason_on_rank0"]
    assert reasons["unreadable shard"] == sizes["shard-0001.tar"]
    assert reasons["cut shard"] == cut_short  # cut inside a header: no tar end-of-archive marker
    assert reasons["unreadable image"] == 1 and reasons["caption .json is not an object with 'caption'"] == 1


def test_an_invalid_utf8_line_is_skipped_and_counted_every_epoch(tmp_path, toy):
    table = tmp_path / "parallel.jsonl"
    table.write_bytes(Path(toy["parallel"]).read_bytes() + b'{"english": "a cat", "translation": "\xff\xfe"}\n')
    summary = run_stage(
        "teacher", tmp_path / "out", *toy_teacher_inputs(toy)[:4], "--train_files", str(table),
        "--num_train_epochs", "2", "--per_device_train_batch_size", "16", "--save_strategy", "no",
    )  # fmt: skip
    assert summary["skipped_records"] == 2 and summary["skipped_by_reason_on_rank0"] == {"not UTF-8 text": 2}


def test_shards_as_validation_data_are_refused_before_models_load(tmp_path, toy):
    with pytest.raises(SystemExit, match="--validation_files must be tables"):
        run_stage(
            "contrastive", tmp_path, "--model_name_or_path", "does-not-matter", "--train_files", str(toy["captions"]),
            "--validation_files", str(toy["shards"]),
        )  # fmt: skip


# Tables altclip-train refuses in one line before any model loads: each case writes the table and returns the flags
# and what the line holds.
def table_without_the_columns(suffix):
    def case(tmp_path, toy):
        """The model path does not exist: had the models loaded first, the error would be about it instead."""
        table = tmp_path / f"pairs.{suffix}"
        rows = [{"en": "a cat", "de": "eine Katze"}]
        if suffix == "jsonl":
            table.write_text(json.dumps(rows[0]) + "\n")
        else:
            datasets.Dataset.from_list(rows).to_parquet(table)
        flags = [
            "--clip_model_name_or_path", str(tmp_path / "no-such-clip"),
            "--text_encoder_name_or_path", str(tmp_path / "no-such-xlmr"), "--train_files", str(table),
        ]  # fmt: skip
        expected = dict(match=rf"^altclip-train: {table}(:1)?: .*lacks column|missing column")
        return flags, {**expected, "contains": ["english, translation"]}

    case.__name__ = f"a_{suffix}_table_without_the_columns"
    return case


def a_table_without_one_usable_pair(tmp_path, toy):
    table = tmp_path / "empty.jsonl"
    table.write_text('{"english": "a cat", "translation": " "}\n')
    flags = [*toy_teacher_inputs(toy)[:4], "--train_files", str(table)]
    return flags, dict(match=r"^altclip-train: .*empty\.jsonl holds no usable \(english, translation\)")


UNUSABLE_TABLES = [
    table_without_the_columns("jsonl"),
    table_without_the_columns("parquet"),
    a_table_without_one_usable_pair,
]


@pytest.mark.parametrize("case", UNUSABLE_TABLES, ids=[case.__name__ for case in UNUSABLE_TABLES])
def test_an_unusable_table_is_one_line_before_any_model_loads(case, tmp_path, toy, cli):
    flags, expected = case(tmp_path, toy)
    stage_refusal(cli, "teacher", tmp_path / "out", *flags, **expected)
