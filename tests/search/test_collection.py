"""Cutting sources into parts: braces, globs, folders, tables and shards, each checked before any model loads."""

import pytest

from altclip.common.records import DataFormatError
from altclip.search.collection import plan_digest, plan_parts


def test_braces_globs_folders_tables_and_shards(collection):
    folder, root = collection["folder"], collection["root"]
    parts = plan_parts([str(folder / "photo{1,2,4}.png"), str(root / "more" / "*.jpg")], part_size=2)
    assert [part.name for part in parts] == ["part-00000", "part-00001", "part-00002", "part-00003"]
    assert [len(part.items) for part in parts] == [2, 1, 2, 1]  # each source cut on its own
    everything = plan_parts([str(folder), str(collection["table"]), str(collection["shard"])], 3, first_part=7)
    assert [(part.name, part.kind, part.size) for part in everything] == [
        ("part-00007", "files", 3), ("part-00008", "files", 3), ("part-00009", "files", 2),
        ("part-00010", "files", 3), ("part-00011", "shard", None),
    ]  # fmt: skip
    assert everything[3].items[1] == (str(root / "more" / "extra1.jpg"), "一只猫")  # relative to the table
    assert plan_digest(everything) == plan_digest(plan_parts([str(folder), str(collection["table"]),
                                                               str(collection["shard"])], 3, first_part=7))  # fmt: skip


def test_bad_sources_are_named(collection, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.doc").write_text("x")
    cases = [
        ([str(tmp_path / "empty")], "no image found there"),
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(tmp_path / "notes.doc")], "unknown data format '.doc'"),
        ([], "give --images"),
    ]
    for specs, message in cases:
        with pytest.raises(DataFormatError, match=message):
            plan_parts(specs)
    with pytest.raises(DataFormatError, match="no column 'picture'.*--image_column"):
        plan_parts([str(collection["table"])], image_column="picture")
