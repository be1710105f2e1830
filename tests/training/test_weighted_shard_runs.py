"""A weighted mix of a few large and many small shards under ``torchrun --nproc_per_node 2`` with 2 DataLoader
workers: no batch that reaches the model's forward is larger than asked, and the trained keys are the plan's."""

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

from stage_runs import torchrun

from altclip.training.data.shard_plan import ShardPlan
from altclip.training.data.shard_stream import shard_samples
from altclip.training.data.sources import parse_sources


def write_shards(folder: Path, prefix: str, samples: list[dict], per_shard: int) -> list[int]:
    """Shards of `per_shard` raw samples (png + txt) and their sizes.json; returns the sizes."""
    folder.mkdir(parents=True)
    sizes = {}
    for number, first in enumerate(range(0, len(samples), per_shard)):
        name = f"{prefix}-{number:02d}.tar"
        with tarfile.open(folder / name, "w") as archive:
            for sample in samples[first : first + per_shard]:
                for suffix in ("png", "txt"):
                    info = tarfile.TarInfo(f"{prefix}{sample['__key__']}.{suffix}")
                    info.size = len(sample[suffix])
                    archive.addfile(info, io.BytesIO(sample[suffix]))
        sizes[name] = len(samples[first : first + per_shard])
    (folder / "sizes.json").write_text(json.dumps(sizes))
    return list(sizes.values())


def planned_keys(specs: list[str], weights: list[float], readers: int, batch: int) -> Counter:
    sources = parse_sources(specs, weights)
    urls = [url for source in sources for url in source.urls]
    keys = [[sample["where"] for sample in shard_samples(url)] for url in urls]
    plan = ShardPlan([len(k) for k in keys], [len(s.urls) for s in sources], weights, readers=readers, batch_size=batch)
    counts: Counter = Counter()
    everything = plan.epoch_pieces(0)
    for reader in range(readers):
        pieces = plan.reader_pieces(0, reader, everything)
        for shard, start, stop in zip(pieces.shard, pieces.start, pieces.stop):
            counts.update(keys[shard][start:stop])
    return counts


def test_weighted_few_large_many_small_shards_two_processes_two_workers(tmp_path, toy, teacher_model_dir):
    raw = [
        sample for source in parse_sources([str(toy["shards"])]) for url in source.urls for sample in shard_samples(url)
    ]
    big = write_shards(tmp_path / "big", "big", raw[:80], 40)  # 2 shards x 40
    small = write_shards(tmp_path / "small", "small", raw[80:120], 4)  # 10 shards x 4
    assert big == [40, 40] and small == [4] * 10
    specs = [f"{tmp_path}/big/big-{{00..01}}.tar", f"{tmp_path}/small/small-{{00..09}}.tar"]
    weights, batch = [0.5, 0.5], 8
    out = tmp_path / "out"
    torchrun(
        "contrastive", out, 2, "--model_name_or_path", str(teacher_model_dir), "--train_files", *specs,
        "--train_file_weights", "0.5", "0.5", "--per_device_train_batch_size", str(batch),
        "--dataloader_num_workers", "2", "--num_train_epochs", "1", "--save_strategy", "no",
        "--record_trained_keys", "true", "--logging_steps", "1",
    )  # fmt: skip
    rows_per_forward = Counter()
    trained = Counter()
    for path in (out / "trained_keys").glob("rank-*.tsv"):
        for line in path.read_text().splitlines():
            step, key = line.split("\t", 1)
            rows_per_forward[(path.name, step)] += 1
            trained[key] += 1
    assert max(rows_per_forward.values()) <= batch  # was 982-1035 rows for 256 asked on the mix
    expected = planned_keys(specs, weights, readers=4, batch=batch)
    assert sum(expected.values()) == 120 and trained == expected
    drawn_small = sum(count for key, count in trained.items() if "/small/" in key)
    assert drawn_small == 60 and max(trained[key] for key in trained if "/small/" in key) == 2  # 40 samples, 1.5x
    plan = json.loads((out / "plan.json").read_text())
    assert plan["data"]["per_device_batch"]["max"] <= batch
    assert plan["data"]["batches_per_rank_per_epoch"] == len({step for _, step in rows_per_forward})
