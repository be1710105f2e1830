"""A model name that is neither a local folder nor a Hub repository to be had is named before anything loads, with
the reason (no such repository, Hub unreachable, offline), instead of transformers' "couldn't connect"."""

from pathlib import Path

import pytest
from fake_hub import FakeHub
from huggingface_hub import constants
from ports import free_port

from altclip.common.model_paths import missing_processor_files, unavailable_model


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_a_name_the_hub_does_not_have(empty_cache, monkeypatch, tmp_path):
    with FakeHub("token") as hub:
        hub.record.repos["someone/tiny-altclip"] = {}
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        assert unavailable_model("altclipp") == (
            "altclipp: no such local folder, and the Hub has no model repository altclipp (or it is private). "
            "Check the name."
        )
        assert unavailable_model("someone/tiny-altclp").startswith("someone/tiny-altclp: no such local folder, and the")
        assert unavailable_model("someone/tiny-altclip") is None  # exists on the Hub: left to transformers
    (tmp_path / "altclipp").mkdir()
    monkeypatch.chdir(tmp_path)
    assert unavailable_model("altclipp") is None  # a local folder of that name


def test_an_unreachable_hub_or_offline_mode_is_named(empty_cache, monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    assert unavailable_model("altclipp") == (
        f"altclipp: no such local folder, not in the Hub cache, and the Hub ({endpoint}) cannot be reached "
        "(ConnectError). Check the name, or the network."
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert unavailable_model("altclipp") == (
        "altclipp: no such local folder, and not in the Hub cache (HF_HUB_OFFLINE is set). Check the name."
    )
    assert (
        unavailable_model("a b/c")
        == "a b/c: no such local folder, and not a valid Hub id (owner/name). Check the name."
    )
    assert unavailable_model("./outputs/run") == "./outputs/run: no such folder (and not a Hub id like owner/name)."


def test_a_cached_hub_model_needs_no_request(empty_cache, monkeypatch):
    repository = Path(constants.HF_HUB_CACHE) / "models--someone--cached"
    (repository / "snapshots" / ("a" * 40)).mkdir(parents=True)
    (repository / "snapshots" / ("a" * 40) / "config.json").write_text("{}")
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")  # no Hub: the cache answers
    assert unavailable_model("someone/cached") is None


def test_missing_processor_files(tmp_path, tiny_model_dir):
    assert missing_processor_files(tiny_model_dir) == []
    (tmp_path / "sentencepiece.bpe.model").write_bytes(b"x")
    assert missing_processor_files(tmp_path) == ["tokenizer_config.json", "processor_config.json"]
