"""After the gather, zero-shot scoring in training never raises: a failure is one warning and None on every rank."""

import logging
from pathlib import Path
from types import SimpleNamespace

import torch

from altclip.common.zero_shot_scoring import ClassFolder
from altclip.training.loop import zeroshot_monitor
from altclip.training.loop.zeroshot_monitor import ZeroShotMonitor


class FakeTrainer:
    def __init__(self, output_dir: Path):
        self.args = SimpleNamespace(output_dir=str(output_dir), device="cpu")
        self.logged: list[dict] = []

    def is_world_process_zero(self) -> bool:
        return True

    def log(self, scores: dict) -> None:
        self.logged.append(scores)


def monitor(tmp_path: Path, share: dict, labels=(0, 1)) -> ZeroShotMonitor:
    scorer = ZeroShotMonitor.__new__(ZeroShotMonitor)  # no model: the share is given below
    images = tuple(tmp_path / f"{row}.jpg" for row in range(len(labels)))
    scorer.folder = ClassFolder(tmp_path, images, tuple(labels), ("cat", "dog"), {})
    scorer.names = {"en": ["cat", "dog"]}
    scorer.options = SimpleNamespace(templates=["{c}"])
    scorer.model = torch.nn.Linear(2, 2)
    scorer.trainer = FakeTrainer(tmp_path / "run")
    scorer._local_share = lambda texts: share
    return scorer


def readable_share() -> dict:
    texts = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    return {"images": texts.clone(), "kept": [0, 1], "unreadable": [], "texts": texts}


def messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


def test_scores_are_logged_and_written(tmp_path):
    scorer = monitor(tmp_path, readable_share())
    scores = scorer.score(3)
    assert scores["zeroshot/image_folder/en/top1"] == 100.0
    assert (tmp_path / "run" / "zeroshot" / "step-3" / "results.json").is_file()


def test_no_readable_image_is_one_warning_and_none(tmp_path, caplog):
    share = {"images": torch.empty(0, 2), "kept": [], "unreadable": [0, 1], "texts": readable_share()["texts"]}
    scorer = monitor(tmp_path, share)
    assert scorer.score(3) is None
    assert messages(caplog) == [
        f"Zero-shot scoring at step 3 skipped (training goes on): none of the 2 images in {tmp_path} could be read."
    ]
    assert scorer.trainer.logged == []


def test_a_failure_after_the_gather_is_one_warning_and_none(tmp_path, caplog):
    scorer = monitor(tmp_path, readable_share(), labels=(0, 5))  # a label beyond the class names
    scorer.names = {"en": ["cat", "dog", "bird"]}  # more prompts than the share holds embeddings for
    assert scorer.score(3) is None
    (warning,) = messages(caplog)
    assert warning.startswith("Zero-shot scoring at step 3 failed (training goes on): ")


def test_rank_zero_failing_to_write_is_one_warning_and_the_scores_are_still_logged(tmp_path, caplog, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zeroshot_monitor, "write_results", full_disk)
    scorer = monitor(tmp_path, readable_share())
    scores = scorer.score(3)
    assert scores["zeroshot/image_folder/en/top1"] == 100.0
    (logged,) = scorer.trainer.logged  # the scores, logged with the pause (returned without it)
    assert logged.pop("zeroshot/seconds") >= 0 and logged == scores
    (warning,) = messages(caplog)
    assert "Zero-shot results at step 3 not written to" in warning and "No space left on device" in warning
