"""Shard sizes that would silently lose samples or mislead: a negative count, a --shard_sizes file naming none of the
shards, a sizes.json holding an HTML error page; each refused in one line naming the file (and the shard)."""

import json
import shutil
from pathlib import Path

import pytest

from altclip.common.errors import InputDataError
from altclip.training.data.sizing import resolve_shard_sizes
from altclip.training.data.sources import parse_sources


def two_shards(tmp_path: Path, toy) -> Path:
    folder = tmp_path / "shards"
    folder.mkdir()
    for number in range(2):
        shutil.copy(Path(toy["shards"]).parent / f"shard-000{number}.tar", folder / f"shard-000{number}.tar")
    return folder


@pytest.mark.parametrize("count", [-5, "eleven", 2.5, None, float("nan")])
def test_a_count_in_a_shard_sizes_file_that_is_not_a_whole_number_of_at_least_0_is_refused(tmp_path, toy, count):
    folder = two_shards(tmp_path, toy)
    given = tmp_path / "sizes-elsewhere.json"
    given.write_text(json.dumps({"shard-0000.tar": 11, "shard-0001.tar": count}))
    with pytest.raises(InputDataError) as refusal:
        resolve_shard_sizes(parse_sources([f"pipe:cat {folder}/shard-000{{0..1}}.tar"]), [str(given)])
    assert str(refusal.value).startswith(f"--shard_sizes {given}: 'shard-0001.tar':")
    assert "give a whole number of at least 0" in str(refusal.value)


def test_a_negative_count_in_sizes_json_is_refused(tmp_path, toy):
    folder = two_shards(tmp_path, toy)
    (folder / "sizes.json").write_text(json.dumps({"shard-0000.tar": 11, "shard-0001.tar": -5}))
    with pytest.raises(InputDataError, match=r"sizes.json: shard 'shard-0001.tar': -5 is too small"):
        resolve_shard_sizes(parse_sources([f"pipe:cat {folder}/shard-000{{0..1}}.tar"]))


def test_a_shard_sizes_file_naming_none_of_the_shards_says_so_instead_of_asking_for_one(tmp_path, toy):
    folder = two_shards(tmp_path, toy)
    given = tmp_path / "other.json"
    given.write_text(json.dumps({"laion-00000.tar": 5}))
    with pytest.raises(ValueError) as refusal:
        resolve_shard_sizes(parse_sources([f"pipe:cat {folder}/shard-000{{0..1}}.tar"]), [str(given)])
    message = str(refusal.value)
    assert f"--shard_sizes {given} names no size for it" in message and "'laion-00000.tar'" in message
    assert "'shard-0000.tar'" in message and "no sizes.json" not in message


@pytest.mark.parametrize("via_pipe", [False, True])
def test_a_sizes_json_holding_an_html_page_is_named_unreadable(tmp_path, toy, via_pipe):
    folder = two_shards(tmp_path, toy)
    (folder / "sizes.json").write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    spec = f"pipe:cat {folder}/shard-000{{0..1}}.tar" if via_pipe else f"{folder}/shard-000{{0..1}}.tar"
    with pytest.raises(InputDataError) as refusal:
        resolve_shard_sizes(parse_sources([spec]), cache_dir=str(tmp_path / "cache"))
    message = str(refusal.value)
    assert message.startswith(f"{folder}/sizes.json: unreadable sizes.json, not JSON") and "<!DOCTYPE html>" in message


def test_a_sizes_json_with_a_byte_order_mark_is_read(tmp_path, toy):
    folder = two_shards(tmp_path, toy)
    (folder / "sizes.json").write_bytes(
        b"\xef\xbb\xbf" + json.dumps({"shard-0000.tar": 3, "shard-0001.tar": 4}).encode()
    )
    assert resolve_shard_sizes(parse_sources([f"pipe:cat {folder}/shard-000{{0..1}}.tar"])).sizes == [3, 4]
