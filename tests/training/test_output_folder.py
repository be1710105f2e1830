"""The final save's staging: a killed save's leftover is removed at the next start (by rank 0 only), and moving a
staged save into place replaces an earlier sub-folder whole and writes config.json last."""

import os

import pytest

from altclip.common.files import partial_path
from altclip.training.loop import output_folder
from altclip.training.loop.output_folder import check_output_folder, move_into, staging_folder


def abandoned_save(folder):
    staging = staging_folder(folder)
    (staging / "merged").mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(b"w" * 4096)
    (staging / "merged" / "model.safetensors").write_bytes(b"m")
    return staging


@pytest.mark.parametrize("rank, removed", [(None, True), ("0", True), ("1", False)])
def test_a_killed_save_s_staging_folder_is_removed_at_the_next_start_by_rank_0(tmp_path, monkeypatch, rank, removed):
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    out = tmp_path / "out"
    staging = abandoned_save(out)
    (out / "checkpoint-10").mkdir()  # a checkpoint and a user's file stay
    (out / "notes.txt").write_text("mine")
    partial_file = partial_path(out / "saving")  # a file of that name is not a staging folder
    partial_file.write_text("x")
    check_output_folder(str(out), [], overwrite=False)
    assert staging.exists() is not removed
    assert (out / "checkpoint-10").is_dir() and (out / "notes.txt").read_text() == "mine" and partial_file.exists()
    assert not list(out.glob(".write-test.*"))


def test_move_into_replaces_an_earlier_sub_folder_whole_and_moves_the_config_last(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    (folder / "merged").mkdir(parents=True)
    (folder / "merged" / "stale.bin").write_bytes(b"old")
    (folder / "config.json").write_text("old")
    staging = abandoned_save(folder)
    (staging / "config.json").write_text("new")
    (staging / "adapter_config.json").write_text("new")
    order = []
    replace = os.replace
    monkeypatch.setattr(output_folder.os, "replace", lambda a, b: (order.append(os.path.basename(b)), replace(a, b)))
    move_into(staging, folder)
    assert order[-2:] == ["adapter_config.json", "config.json"]
    assert sorted(p.name for p in (folder / "merged").iterdir()) == ["model.safetensors"]  # the stale file went
    assert (folder / "config.json").read_text() == "new" and not staging.exists()
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "config.json",
        "merged",
        "model.safetensors",
    ]
