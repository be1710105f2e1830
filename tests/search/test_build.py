"""Building an index: 2 processes equal 1, a killed build resumes, --add equals a fresh build, remove drops ids."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet
from index_builds import build_flags
from ports import free_port
from stage_runs import REPO, torchrun_env

from altclip.common.collection_index import Index
from altclip.search.build import gather_embeddings
from altclip.search.cli import index_main


def contents(folder):
    """(metadata rows without the part layout, float32 embeddings in id order, manifest)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    metadata = pyarrow.parquet.read_table(folder / manifest["files"] / "metadata.parquet")
    vectors = gather_embeddings(folder, metadata, manifest["dim"])
    rows = [(r["id"], r["location"], r["caption"], r["key"]) for r in metadata.to_pylist()]
    return rows, vectors, manifest


def test_fresh_build_reads_folders_tables_and_shards(fresh_index, collection):
    rows, vectors, manifest = contents(fresh_index)
    assert manifest["counts"] == {
        "images": 13, "skipped": 1, "removed": 0, "parts": 5, "duplicates": 0, "repeated_locations": 0
    }  # fmt: skip
    assert manifest["index"]["factory"] == "Flat" and manifest["dim"] == 16 == vectors.shape[1]
    assert [row[0] for row in rows] == list(range(13))
    locations = [row[1] for row in rows]
    assert str(collection["folder"] / "holiday" / "photo0.png") in locations  # found in the subfolder
    assert ("ein Hund", None) in [(row[2], row[3]) for row in rows]  # the table's caption
    assert (f"{collection['shard']}#sample1", "caption 1", "sample1") in [row[1:] for row in rows]
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=2e-3)
    skipped = pyarrow.parquet.read_table(fresh_index / manifest["files"] / "skipped.parquet").to_pylist()
    assert skipped[0]["location"].endswith("broken.jpg") and "UnidentifiedImageError" in skipped[0]["reason"]
    assert np.load(fresh_index / "parts" / "part-00000.npy").dtype == np.float16


def test_two_processes_build_what_one_builds(tmp_path, tiny_model_dir, collection, fresh_index):
    output = tmp_path / "index"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "altclip.search.cli"]
    flags = build_flags(tiny_model_dir, output, collection["folder"], collection["table"], collection["shard"])
    result = subprocess.run(
        [*launcher, *flags], cwd=REPO, env=torchrun_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # both processes embedded their own share (parts 0, 2, 4 and 1, 3) in this run
    embedded = {
        line.split("Process ")[1].split(" embedded")[0] for line in result.stderr.splitlines() if "embedded" in line
    }
    assert embedded == {"1/2", "2/2"}, result.stderr[-3000:]
    rows, vectors, manifest = contents(output)
    fresh_rows, fresh_vectors, fresh_manifest = contents(fresh_index)
    assert rows == fresh_rows and np.array_equal(vectors, fresh_vectors)
    assert manifest["counts"] == fresh_manifest["counts"] and manifest["fingerprint"] == fresh_manifest["fingerprint"]


def test_a_killed_build_resumes_with_its_finished_parts(tmp_path, tiny_model_dir, collection, fresh_index):
    output = tmp_path / "index"
    flags = build_flags(tiny_model_dir, output, collection["folder"], collection["table"], collection["shard"])
    process = subprocess.Popen(
        [sys.executable, "-m", "altclip.search.cli", *flags], cwd=REPO, env=torchrun_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 300
    while not (output / "parts" / "part-00000.parquet").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.002)  # the first part takes seconds (start-up, model load), the next ones milliseconds
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = sorted(path.name for path in (output / "parts").glob("*.parquet"))
    assert 1 <= len(finished) < 5 and not (output / "manifest.json").exists(), finished
    stamps = {name: os.stat(output / "parts" / name).st_mtime_ns for name in finished}
    index_main(flags)
    assert {name: os.stat(output / "parts" / name).st_mtime_ns for name in finished} == stamps  # not embedded again
    rows, vectors, _ = contents(output)
    fresh_rows, fresh_vectors, _ = contents(fresh_index)
    assert rows == fresh_rows and np.array_equal(vectors, fresh_vectors)


def test_add_then_search_equals_a_fresh_build_and_remove_drops_ids(tmp_path, tiny_model_dir, collection, fresh_index):
    output = tmp_path / "index"
    index_main(build_flags(tiny_model_dir, output, collection["folder"]))
    first_parts = {path.name: path.stat().st_mtime_ns for path in (output / "parts").glob("*.npy")}
    index_main([*build_flags(tiny_model_dir, output, collection["table"], collection["shard"]), "--add"])
    assert {name: (output / "parts" / name).stat().st_mtime_ns for name in first_parts} == first_parts
    rows, vectors, manifest = contents(output)
    fresh_rows, fresh_vectors, fresh_manifest = contents(fresh_index)
    assert (
        rows == fresh_rows and np.array_equal(vectors, fresh_vectors) and manifest["counts"] == fresh_manifest["counts"]
    )
    added, fresh = Index.load(output, model=str(tiny_model_dir)), Index.load(fresh_index, model=str(tiny_model_dir))
    for query in ("ein Hund am Strand", "一只猫"):
        assert added.search(query, k=5).ids == fresh.search(query, k=5).ids

    index_main(["remove", str(output), "--ids", "0", "5"])
    rows, _, manifest = contents(output)
    assert [row[0] for row in rows] == [i for i in range(13) if i not in (0, 5)]
    assert manifest["counts"]["images"] == 11 and manifest["counts"]["removed"] == 2
    result = Index.load(output, model=str(tiny_model_dir)).search("ein Hund", k=20)
    assert len(result.ids) == 11 and not {0, 5} & set(result.ids)
