"""The teacher-feature and image-embedding caches: damaged shards and manifests named and recomputed, a wait that
ends naming the missing shards and their ranks, rows checked finite, room checked before the first row."""

import json
import logging
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from altclip.common.errors import InputDataError, PathError
from altclip.training.loop import feature_caches
from altclip.training.loop.feature_caches import MANIFEST, ImageEmbeddingCache, compute_sharded_features


def shard_values(start: int, stop: int) -> np.ndarray:
    return np.arange(start, stop, dtype=np.float32)[:, None].repeat(2, axis=1)


def cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def wrong_shape(path: Path) -> None:
    np.save(path, np.zeros((3, 5), dtype=np.float16))


def non_finite(path: Path) -> None:
    array = np.load(path)
    array[-1, 0] = np.nan
    np.save(path, array)


def bytes_appended(path: Path) -> None:
    with open(path, "ab") as handle:
        handle.write(b"\0" * 16)


DAMAGE = {"cut short": cut_in_half, "wrong shape": wrong_shape, "bytes appended": bytes_appended}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_teacher_shard_is_named_and_recomputed(tmp_path, caplog, damage):
    compute_sharded_features(tmp_path, 5, 2, shard_values, shard_rows=2)
    DAMAGE[damage](tmp_path / "features-00001.npy")
    calls = []
    with caplog.at_level(logging.WARNING):
        features = compute_sharded_features(
            tmp_path, 5, 2, lambda a, b: calls.append(a) or shard_values(a, b), shard_rows=2
        )
    assert calls == [2]  # that shard only
    (warning,) = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert "features-00001.npy is damaged" in warning and "\n" not in warning
    assert features[[0, 1, 2, 3, 4]][:, 0].tolist() == [0, 1, 2, 3, 4]


def test_a_cut_teacher_manifest_is_named_and_written_again(tmp_path, caplog):
    compute_sharded_features(tmp_path, 5, 2, shard_values, shard_rows=2)
    cut_in_half(tmp_path / MANIFEST)
    calls = []
    with caplog.at_level(logging.WARNING):
        features = compute_sharded_features(tmp_path, 5, 2, lambda a, b: calls.append(a), shard_rows=2)
    assert calls == [] and features[[4]][0, 0] == 4
    assert any(f"{MANIFEST} is damaged" in record.getMessage() for record in caplog.records)
    assert json.loads((tmp_path / MANIFEST).read_text())["rows"] == 5


def test_the_teacher_cache_wait_ends_naming_the_missing_shards_and_their_rank(tmp_path):
    """Rank 0 of 2 writes shards 0 and 2; rank 1 (owner of shard 1) never does."""
    with pytest.raises(PathError, match=r"rank 0 waited 0.5 s .*features-00001\.npy \(rank 1\); check those ranks"):
        compute_sharded_features(
            tmp_path, 5, 2, shard_values, rank=0, world_size=2, shard_rows=2, poll_seconds=0.05, wait_seconds=0.5
        )
    assert sorted(path.name for path in tmp_path.glob("features-*")) == ["features-00000.npy", "features-00002.npy"]


def test_the_teacher_cache_wait_skips_a_damaged_shard_of_another_rank_until_it_is_replaced(tmp_path):
    compute_sharded_features(tmp_path, 5, 2, shard_values, shard_rows=2)
    cut_in_half(tmp_path / "features-00001.npy")  # rank 1's, left damaged by an earlier run
    with pytest.raises(PathError, match=r"features-00001\.npy \(rank 1\)"):
        compute_sharded_features(
            tmp_path, 5, 2, shard_values, rank=0, world_size=2, shard_rows=2, poll_seconds=0.05, wait_seconds=0.5
        )


def test_non_finite_teacher_features_are_refused_before_writing(tmp_path):
    def encode(start, stop):
        values = shard_values(start, stop)
        values[-1] = np.inf
        return values

    with pytest.raises(InputDataError, match=r"non-finite features for row 1 "):
        compute_sharded_features(tmp_path, 5, 2, encode, shard_rows=2)
    assert not list(tmp_path.glob("features-*"))


def embeddings(rows, width=4):
    return torch.tensor([[float(row)] * width for row in rows])


def stored_cache(folder: Path) -> ImageEmbeddingCache:
    cache = ImageEmbeddingCache.create(folder, 10, 4, {"tower": "x"})
    cache.put([0, 1, 2], embeddings([0, 1, 2]))
    cache.flush()
    cache.put([5, 6], embeddings([5, 6]))
    cache.flush()
    cache.build_index()  # as rank 0 does after each epoch's end
    return cache


def test_image_cache_shards_round_trip_and_pickled_readers_see_them(tmp_path):
    import pickle

    cache = stored_cache(tmp_path)
    assert len(list(tmp_path.glob("rank-0-*.rows.npy"))) == 2 and not list(tmp_path.glob("*.partial"))
    reader = pickle.loads(pickle.dumps(cache))  # as a DataLoader worker gets it
    assert reader.get(6).tolist() == [6.0] * 4 and reader.get(3) is None
    assert cache.filled_rows() == 5


def first_shard(folder: Path, suffix: str) -> Path:
    return sorted(folder.glob(f"rank-0-*.{suffix}.npy"))[0]


@pytest.mark.parametrize(
    "damage",
    ["embeds cut short", "embeds wrong shape", "rows cut short", "embeds non-finite"],
)
def test_a_damaged_image_shard_is_named_and_its_rows_computed_again(tmp_path, caplog, damage):
    stored_cache(tmp_path)
    kind, what = damage.split(" ", 1)
    path = first_shard(tmp_path, kind)
    {"cut short": cut_in_half, "wrong shape": wrong_shape, "non-finite": non_finite}[what](path)
    reader = ImageEmbeddingCache(tmp_path, 10, 4)
    with caplog.at_level(logging.WARNING):
        reader.build_index()  # rank 0 at the next epoch's end
        assert [reader.get(row) is None for row in (0, 1, 2)] == (
            [False, False, True] if what == "non-finite" else [True, True, True]
        )
        assert reader.get(5).tolist() == [5.0] * 4  # the intact shard is still used
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and path.name.replace(f".{kind}.", ".embeds.") in warnings[0], warnings


def test_non_finite_image_embeddings_are_not_stored(tmp_path, caplog):
    cache = ImageEmbeddingCache.create(tmp_path, 10, 4, {"tower": "x"})
    values = embeddings([3, 4])
    values[1, 2] = float("nan")
    with caplog.at_level(logging.WARNING):
        cache.put([3, 4], values)
        cache.flush()
    assert "(table rows [4]); not cached" in caplog.text
    cache.build_index()
    assert cache.get(3).tolist() == [3.0] * 4 and cache.get(4) is None


def test_a_cut_image_cache_manifest_is_named_and_written_again(tmp_path, caplog):
    stored_cache(tmp_path)
    cut_in_half(tmp_path / MANIFEST)
    with caplog.at_level(logging.WARNING):
        cache = ImageEmbeddingCache.create(tmp_path, 10, 4, {"tower": "x"})
    assert f"{MANIFEST} is damaged" in caplog.text
    assert json.loads((tmp_path / MANIFEST).read_text())["key"] == {"tower": "x"}
    assert cache.get(1).tolist() == [1.0] * 4  # the shards themselves are kept


def test_the_image_cache_refuses_to_start_without_room(tmp_path, monkeypatch):
    stored_cache(tmp_path)
    usage = feature_caches.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(feature_caches.shutil, "disk_usage", lambda path: usage._replace(free=10))
    # 5 rows are stored; the 5 others need 5 x (4 x 2 + 8) bytes
    with pytest.raises(PathError, match=r"needs 0\.00 GB in .* for 10 image embeddings, and the disk has 0\.00 GB"):
        ImageEmbeddingCache.create(tmp_path, 10, 4, {"tower": "x"})


class FakeDataset:
    def __init__(self, rows: int):
        self.rows = SimpleNamespace(tables=[SimpleNamespace(_fingerprint="table-digest")])
        self._length = rows

    def __len__(self) -> int:
        return self._length


def test_the_image_cache_key_covers_the_image_root_and_column(tmp_path):
    """The same table read with another --image_root (or image column) names other images: another cache."""
    from altclip.training.stages import image_feature_cache

    model = SimpleNamespace(
        vision_model=torch.nn.Linear(2, 2),
        visual_projection=torch.nn.Linear(2, 2),
        config=SimpleNamespace(projection_dim=4),
        parameters=lambda: torch.nn.Linear(2, 2).parameters(),
    )
    processor = SimpleNamespace(to_dict=lambda: {"size": 224})
    training = SimpleNamespace(
        output_dir=str(tmp_path),
        process_index=0,
        save_total_limit=2,
        main_process_first=lambda desc, local: nullcontext(),
    )
    stage = SimpleNamespace(image_feature_cache_dir=None)

    def folder(image_root, image_column="image"):
        data = SimpleNamespace(reduced_jpeg_decoding=False, image_column=image_column, image_root=image_root)
        return image_feature_cache(model, processor, FakeDataset(10), stage, data, training).folder.name

    assert folder(None) == folder(None)
    assert len({folder(None), folder(str(tmp_path / "a")), folder(str(tmp_path / "b")), folder(None, "photo")}) == 4


FEW_DESCRIPTORS = """
import os, resource, sys
from pathlib import Path
import numpy as np, torch
from altclip.training.loop import feature_caches
from altclip.training.loop.feature_caches import ImageEmbeddingCache, ShardedFeatures, compute_sharded_features

folder, shards = Path(sys.argv[1]), 200
writer = ImageEmbeddingCache.create(folder / "images", shards * 2, 4, {"tower": "x"})
writer.shard_rows = 2
for row in range(0, shards * 2, 2):
    writer.put([row, row + 1], torch.full((2, 4), float(row)))
writer.build_index()
values = lambda a, b: np.arange(a, b)[:, None] * np.ones(4)
compute_sharded_features(folder / "teacher", shards * 2, 4, values, shard_rows=2)
limit = len(os.listdir("/proc/self/fd")) + 40  # room for 40 more descriptors, far fewer than the 200 shards
feature_caches.OPEN_MAPS = 16  # the bound scaled down with the limit (128 against the usual 1024)
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
reader = ImageEmbeddingCache(folder / "images", shards * 2, 4, rank=1)
stored = [reader.get(row) for row in range(shards * 2)]
assert all(value is not None for value in stored), sum(value is None for value in stored)
teacher = ShardedFeatures(folder / "teacher")
assert teacher[list(range(shards * 2))][:, 0].tolist() == list(range(shards * 2))
assert not list(folder.rglob("*.damaged")), list(folder.rglob("*.damaged"))
print("all rows read with", limit, "descriptors")
"""


def test_every_stored_row_is_read_with_few_file_descriptors_and_nothing_is_set_aside(tmp_path):
    """200 shards per cache read by a process allowed 40 more open files (with the maps unbounded, 322 of the 400
    rows were misses): the maps are bounded (`OpenMaps`)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", FEW_DESCRIPTORS, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "all rows read with" in done.stdout


def test_a_transient_error_is_never_damage_and_readers_do_not_set_shards_aside(tmp_path, monkeypatch, caplog):
    stored_cache(tmp_path)
    real_load = np.load

    def too_many_open_files(path, *args, **kwargs):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(np, "load", too_many_open_files)
    with caplog.at_level(logging.WARNING):
        assert ImageEmbeddingCache(tmp_path, 10, 4).get(0) is None  # a miss
        ImageEmbeddingCache(tmp_path, 10, 4).build_index()  # rank 0 skips what it cannot read now
    monkeypatch.setattr(np, "load", real_load)
    assert not list(tmp_path.glob("*.damaged"))
    ImageEmbeddingCache(tmp_path, 10, 4).build_index()
    assert ImageEmbeddingCache(tmp_path, 10, 4).get(0).tolist() == [0.0] * 4
    cut_in_half(first_shard(tmp_path, "embeds"))  # real damage: a reader only skips it, rank 0 sets it aside
    assert ImageEmbeddingCache(tmp_path, 10, 4, rank=1).get(0) is None and not list(tmp_path.glob("*.damaged"))
    ImageEmbeddingCache(tmp_path, 10, 4, rank=0).build_index()
    assert ImageEmbeddingCache(tmp_path, 10, 4, rank=1).get(0) is None and len(list(tmp_path.glob("*.damaged"))) == 2


def test_only_global_rank_zero_writes_the_image_cache_manifest(tmp_path):
    with pytest.raises(PathError, match=r"rank 3 waited 0.2 s for .*manifest.json, which global rank 0 writes"):
        ImageEmbeddingCache.create(tmp_path, 10, 4, {"tower": "x"}, rank=3, wait_seconds=0.2)
    assert not (tmp_path / MANIFEST).exists()
    ImageEmbeddingCache.create(tmp_path, 10, 4, {"tower": "x"}, rank=0)
    written = (tmp_path / MANIFEST).stat().st_mtime_ns
    ImageEmbeddingCache.create(tmp_path, 10, 4, {"tower": "x"}, rank=3, wait_seconds=0.2)  # reads, never writes
    assert (tmp_path / MANIFEST).stat().st_mtime_ns == written


def test_temporary_names_differ_across_hosts_and_processes(tmp_path):
    import os
    import socket

    from altclip.common.files import partial_path

    first, second = partial_path(tmp_path / MANIFEST), partial_path(tmp_path / MANIFEST)
    assert first != second and first.parent == tmp_path
    assert f".{socket.gethostname()}.{os.getpid()}." in first.name and first.name.endswith(".partial")


def test_a_manifest_read_is_tried_again_after_an_os_error(tmp_path, monkeypatch):
    ImageEmbeddingCache.create(tmp_path, 10, 4, {"tower": "x"})
    real_read, failures = Path.read_text, []

    def flaky(self, *args, **kwargs):
        if self.name == MANIFEST and len(failures) < 2:
            failures.append(self)
            raise OSError(116, "Stale file handle")
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", flaky)
    assert feature_caches.read_manifest(tmp_path / MANIFEST)["rows"] == 10 and len(failures) == 2


def test_a_failed_shard_write_is_one_warning_and_the_rank_stops_caching(tmp_path, monkeypatch, caplog):
    cache = ImageEmbeddingCache.create(tmp_path, 10, 4, {"tower": "x"})
    cache.shard_rows = 2

    def disk_full(handle, array):
        handle.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(feature_caches.np, "save", disk_full)
    with caplog.at_level(logging.WARNING):
        cache.put([0, 1], embeddings([0, 1]))  # the shard is full: flushed inside compute_loss
        cache.put([2, 3], embeddings([2, 3]))
        cache.flush()
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"rank 0 could not write to {tmp_path} ([Errno 28]" in warnings[0]
    assert cache.stopped and not cache._pending_rows
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(("rank-", "."))]  # no partial, no orphan


def test_rank_zero_removes_stale_temporary_files_at_open(tmp_path):
    ImageEmbeddingCache.create(tmp_path, 10, 4, {"tower": "x"})
    stale = tmp_path / ".rank-0-1-2.embeds.npy.host.123.abc.partial"
    stale.write_bytes(b"cut")
    ImageEmbeddingCache.create(tmp_path, 10, 4, {"tower": "x"}, rank=1)
    assert stale.exists()  # only rank 0 cleans, before any rank writes
    ImageEmbeddingCache.create(tmp_path, 10, 4, {"tower": "x"}, rank=0)
    assert not stale.exists()


def test_the_room_check_counts_the_checkpoints_on_the_same_disk(tmp_path):
    from altclip.training.stages import checkpoint_bytes_on_disk_of

    free = feature_caches.shutil.disk_usage(tmp_path).free
    with pytest.raises(PathError, match=r"for 10 image embeddings besides .* GB of checkpoints, and the disk has"):
        ImageEmbeddingCache.create(tmp_path, 10, 4, {"tower": "x"}, reserved_bytes=free)
    model = torch.nn.Linear(10, 10)  # 110 parameters, trained
    training = SimpleNamespace(output_dir=str(tmp_path / "run" / "not-yet"), save_total_limit=3)
    assert checkpoint_bytes_on_disk_of(tmp_path / "cache", model, training) == 3 * 110 * 12
    model.requires_grad_(False)
    assert checkpoint_bytes_on_disk_of(tmp_path / "cache", model, training) == 3 * 110 * 4


def test_a_start_reads_no_stored_teacher_values_only_headers_and_sizes(tmp_path, monkeypatch):
    """Values are checked by the rank that computes a shard, before writing; a start does not read the cache."""
    checked = []
    real_check = feature_caches.first_non_finite_row
    monkeypatch.setattr(
        feature_caches, "first_non_finite_row", lambda array: checked.append(len(array)) or real_check(array)
    )
    compute_sharded_features(tmp_path, 5, 2, shard_values, shard_rows=2)
    assert checked == [2, 2, 1]  # each shard once, when computed
    checked.clear()
    features = compute_sharded_features(tmp_path, 5, 2, lambda a, b: pytest.fail("recomputed"), shard_rows=2)
    assert checked == [] and features[[4]][0, 0] == 4


def test_readers_map_rank_zeros_index_and_a_flush_does_not_rescan(tmp_path, monkeypatch):
    import pickle

    cache = stored_cache(tmp_path)
    monkeypatch.setattr(feature_caches.np, "full", lambda *args, **kwargs: pytest.fail("a per-process index"))
    reader = pickle.loads(pickle.dumps(cache))  # a DataLoader worker
    assert reader.get(5).tolist() == [5.0] * 4
    index = reader._index()
    assert isinstance(index, np.memmap) and index.mode == "r"
    assert Path(index.filename) == tmp_path / json.loads((tmp_path / "index.json").read_text())["index"]
    monkeypatch.setattr(
        ImageEmbeddingCache, "_shard_problem", lambda *args: pytest.fail("shards scanned outside build_index")
    )
    reader.put([8], embeddings([8]))
    reader.flush()  # with num_workers=0 the training process reads too: its index is kept, nothing rescanned
    assert reader._index() is index and reader.get(8) is None and reader.get(6).tolist() == [6.0] * 4
    monkeypatch.undo()
    cache.build_index()  # rank 0, after the epoch-end barrier
    reader.refresh()  # every process, at the next epoch's start
    assert reader.get(8).tolist() == [8.0] * 4 and reader.filled_rows() == 6
    assert len(list(tmp_path.glob("index-*.npy"))) == 2  # the new index and the one readers may still map


@pytest.mark.slow
def test_a_run_names_a_damaged_per_process_shard_of_its_image_cache_and_computes_its_rows_again(
    tmp_path, toy, start_without_dropout, caplog
):
    """End to end through ``altclip-train``: a run's per-process shard (``rank-0-*.embeds.npy``) is cut; the next run
    on the same cache folder names it at the start, sets it aside (``.damaged``), runs the image tower on exactly its
    rows again and leaves the cache whole."""
    from stage_runs import run_stage

    cache_root = tmp_path / "shared-cache"
    flags = ["--model_name_or_path", str(start_without_dropout), "--train_files", str(toy["captions"])]
    flags += ["--per_device_train_batch_size", "24", "--num_train_epochs", "1", "--logging_steps", "1"]
    flags += ["--save_strategy", "epoch", "--cache_image_features", "true"]
    flags += ["--image_feature_cache_dir", str(cache_root)]
    run_stage("contrastive", tmp_path / "first", *flags)
    (cache,) = cache_root.glob("images-*")
    (damaged,) = cache.glob("rank-0-*.embeds.npy")
    stored_rows = len(np.load(damaged.with_name(damaged.name.replace(".embeds.", ".rows."))))
    cut_in_half(damaged)
    with caplog.at_level(logging.WARNING):
        run_stage("contrastive", tmp_path / "second", *flags)
    warnings = [record.getMessage() for record in caplog.records if "is damaged" in record.getMessage()]
    assert len(warnings) == 1 and str(damaged) in warnings[0] and "computed again" in warnings[0], warnings
    assert damaged.with_name(damaged.name + ".damaged").is_file() and not damaged.exists()
    (checkpoint,) = (tmp_path / "second").glob("checkpoint-*")
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    tower_rows = [entry["image_tower_rows"] for entry in history if "image_tower_rows" in entry]
    assert tower_rows[-1] == stored_rows == 180  # every row of the damaged shard ran through the tower again
    width = json.loads((cache / MANIFEST).read_text())["width"]
    assert ImageEmbeddingCache(cache, 180, width).filled_rows() == 180
