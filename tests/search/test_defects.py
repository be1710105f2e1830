"""The search defects of issue 32, each as the test that failed before its fix: fewer than k results from an IVF
index, a NaN query, tuning on the wrong queries, a model path that only worked from one folder, duplicates indexed
twice, readers seeing a half-updated index, a read-only index ending in a traceback, tables read once per part."""

import json
import shutil
import subprocess
import sys
import threading

import faiss
import numpy as np
import pyarrow
import pyarrow.parquet
import pytest
from index_builds import build_flags
from stage_runs import REPO, torchrun_env
from tiny_models import random_images

from altclip.common.collection_index import CollectionIndexError, Index
from altclip.search.cli import index_main, search_main
from altclip.search.vector_index import build_faiss_index, recall_at


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype("float32")


def clustered(count: int, dim: int, centres: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    middles = rng.normal(size=(centres, dim))
    return unit(middles[rng.integers(0, centres, count)] + spread * rng.normal(size=(count, dim))), middles


def ivf_index(tmp_path, vectors: np.ndarray, factory: str, nprobe: int) -> Index:
    """An `Index` over `vectors` with the given FAISS index (as the build writes one; metadata by row)."""
    index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    faiss.extract_index_ivf(index).nprobe = nprobe
    count = len(vectors)
    metadata = pyarrow.table(
        {"id": list(range(count)), "location": [f"v{i}" for i in range(count)], "caption": [None] * count,
         "key": [None] * count, "part": ["part-00000"] * count, "row": list(range(count))}
    )  # fmt: skip
    manifest = {"dim": vectors.shape[1], "index": {"factory": factory, "exact": False, "parameters": {}}}
    return Index(tmp_path, manifest, metadata, index)


def test_an_ivf_index_returns_k_results_when_its_lists_hold_fewer(tmp_path):
    vectors, _ = clustered(960, 16, 16, 0.05)  # 16 tight clusters of about 60: one list holds about 60
    index = ivf_index(tmp_path, vectors, "IVF16,Flat", nprobe=1)
    scores, rows = index.search_vectors(vectors[:5], k=100)
    assert rows.shape == (5, 100) and (rows >= 0).all()
    exact = np.argsort(-(vectors @ vectors[:5].T).T, axis=1, kind="stable")[:, :100]
    assert recall_at(rows, exact) > 0.95
    k_beyond = index.search_vectors(vectors[:1], k=5000)[1]  # more than the index holds: all of it
    assert k_beyond.shape == (1, 960) and sorted(k_beyond[0]) == list(range(960))


def test_a_nan_query_vector_is_refused(tmp_path):
    vectors, _ = clustered(200, 16, 4, 0.3)
    index = ivf_index(tmp_path, vectors, "IVF4,Flat", nprobe=1)
    for bad in (np.full((1, 16), np.nan), np.full((1, 16), np.inf)):
        with pytest.raises(CollectionIndexError, match="NaN or infinite"):
            index.search_vectors(bad, k=3)


def test_tuning_reaches_the_target_for_text_queries_and_records_both_recalls():
    vectors, middles = clustered(20_000, 32, 50, 0.35)
    rng = np.random.default_rng(5)
    gap = 0.9 * unit(rng.normal(size=(1, 32)))[0] * np.linalg.norm(middles, axis=1).mean()  # CLIP's modality gap
    texts = unit(middles[rng.integers(0, 50, 1500)] + gap + 0.5 * rng.normal(size=(1500, 32)))
    tuning, held_out = texts[:1000], texts[1000:]
    index, description = build_faiss_index(vectors, exact_limit=10_000, text_queries=tuning)
    assert description["factory"] == "IVF128,Flat" and not description["exact"]
    assert description["recall_at_10_text"] >= 0.95 and description["recall_at_10_image"] >= 0.95
    assert description["recall_queries"] == {"text": 1000, "image": 1000}
    truth = np.argsort(-(held_out @ vectors.T), axis=1)[:, :10]  # text queries the tuning never saw
    assert recall_at(index.search(held_out, 10)[1], truth) >= 0.93


def test_ivf_that_cannot_beat_exact_search_becomes_exact_and_says_so():
    vectors = unit(np.random.default_rng(0).normal(size=(20_000, 32)))  # no clusters: every list is needed
    index, description = build_faiss_index(vectors, exact_limit=10_000)
    assert description["exact"] and description["factory"] == "Flat" and index.ntotal == 20_000
    assert "no faster than exact search" in description["note"]


@pytest.fixture
def relative_model_index(tmp_path, tiny_model_dir, collection, monkeypatch):
    """An index built with ``--model modelA`` typed relative to the working folder ``work``."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(tiny_model_dir, work / "modelA")
    monkeypatch.chdir(work)
    index_main(build_flags("modelA", "index", collection["table"]))
    monkeypatch.chdir(tmp_path)
    return work / "index"


def test_an_index_built_with_a_relative_model_path_is_searched_from_another_folder(
    relative_model_index, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a Hub lookup would be the defect: fail fast instead of retrying
    capsys.readouterr()
    search_main([str(relative_model_index), "ein Hund", "--k", "2", "--json"])
    assert len(json.loads(capsys.readouterr().out)["ids"]) == 2
    # index and model moved together (another machine, another folder): found relative to the index
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "work", moved)
    search_main([str(moved / "index"), "ein Hund", "--k", "2", "--json"])
    assert len(json.loads(capsys.readouterr().out)["ids"]) == 2
    # the model folder gone: one line naming it and the fix
    shutil.rmtree(moved / "modelA")
    with pytest.raises(SystemExit) as raised:
        search_main([str(moved / "index"), "ein Hund"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert raised.value.code == 2 and "modelA, which is not here" in line and "--model" in line


def test_duplicates_are_skipped_by_path_and_by_content(tmp_path, tiny_model_dir, collection, capsys):
    photos = tmp_path / "photos"
    shutil.copytree(collection["folder"], photos)
    output = tmp_path / "index"
    index_main(build_flags(tiny_model_dir, output, photos, photos / "holiday"))  # overlapping sources
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["counts"]["images"] == 7 and manifest["counts"]["repeated_locations"] == 3
    capsys.readouterr()
    index_main([*build_flags(tiny_model_dir, output, photos), "--add"])  # the same images again
    assert "nothing new to add" in capsys.readouterr().out
    assert json.loads((output / "manifest.json").read_text())["version"] == 1
    copies = tmp_path / "copies"
    copies.mkdir()
    shutil.copy(photos / "photo1.png", copies / "same_bytes.png")
    random_images(1, seed=9)[0].save(copies / "new.png")
    index_main([*build_flags(tiny_model_dir, output, copies), "--add"])
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["counts"]["images"] == 8 and manifest["counts"]["duplicates"] == 1
    locations = pyarrow.parquet.read_table(output / manifest["files"] / "metadata.parquet")["location"].to_pylist()
    assert str(copies / "new.png") in locations and str(copies / "same_bytes.png") not in locations


def test_readers_never_see_a_half_updated_index(tmp_path, tiny_model_dir, collection):
    output = tmp_path / "index"
    index_main(build_flags(tiny_model_dir, output, collection["folder"]))
    first = Index.load(output, model=str(tiny_model_dir))
    opened, failures, done = [0], [], threading.Event()

    def read_while_writing():
        while not done.is_set():
            try:
                index = Index.load(output)
                assert len(index) == index.metadata.num_rows == index.manifest["counts"]["images"]
                opened[0] += 1
            except Exception as error:  # noqa: BLE001 (any failure to open is what this test counts)
                failures.append(f"{type(error).__name__}: {error}")

    reader = threading.Thread(target=read_while_writing)
    reader.start()
    try:
        index_main([*build_flags(tiny_model_dir, output, collection["table"], collection["shard"]), "--add"])
        index_main(["remove", str(output), "--ids", "1", "2"])
    finally:
        done.set()
        reader.join()
    assert opened[0] > 0 and failures == [], failures[:3]
    assert first.reload() is not first and len(first.reload()) == 7 + 6 - 2  # the loaded index finds the new version
    assert len(first) == 7  # ... and the old object still answers from its own version
    assert Index.load(output, version=2).manifest["counts"]["images"] == 13


def test_remove_on_a_read_only_index_is_one_line(fresh_index, tmp_path):
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -rm (a user and mount namespace for a read-only bind mount) is not permitted here")
    view = tmp_path / "read_only"
    view.mkdir()
    script = (
        f"mount --bind {fresh_index} {view} && mount -o remount,bind,ro {view} && "
        f"exec {sys.executable} -m altclip.search.cli remove {view} --ids 0"
    )
    command = ["unshare", "-rm", "sh", "-c", script]
    result = subprocess.run(command, cwd=REPO, env=torchrun_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr and f"{view}: cannot write there" in last and "copy the index" in last


def test_a_table_is_read_once_not_once_per_part(tmp_path, tiny_model_dir, monkeypatch):
    import io

    from altclip.search import collection

    cells = []
    for image in random_images(8, seed=4):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        cells.append(buffer.getvalue())
    table = tmp_path / "images.parquet"
    pyarrow.parquet.write_table(pyarrow.table({"image": cells, "caption": list("abcdefgh")}), table, row_group_size=2)
    whole_reads = []
    original = collection.read_table
    monkeypatch.setattr(collection, "read_table", lambda *a, **kw: whole_reads.append(a) or original(*a, **kw))
    index_main(build_flags(tiny_model_dir, tmp_path / "index", table, part_size=2))
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["counts"]["parts"] == 4 and manifest["counts"]["images"] == 8
    assert len(whole_reads) == 1  # the plan; each part reads its own row group
