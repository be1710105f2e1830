"""Querying: equal to brute force on the exact index (text, image, text+image), the CLI, an approximate index's
measured recall, and every bad input as one line."""

import json
from types import SimpleNamespace

import faiss
import numpy as np
import pyarrow
import pytest
import torch.nn.functional as F
from index_builds import build_flags
from tiny_models import random_images

from altclip.common.collection_index import Index
from altclip.search.build import gather_embeddings
from altclip.search.cli import index_main, search_main
from altclip.search.vector_index import build_faiss_index, choose_index


@pytest.fixture(scope="module")
def index(fresh_index, tiny_model_dir):
    return Index.load(fresh_index, model=str(tiny_model_dir))


def brute_force(index, query: np.ndarray, k: int):
    vectors = gather_embeddings(index.folder, index.metadata, index.manifest["dim"])
    scores = vectors @ query[0]
    order = np.argsort(-scores, kind="stable")[:k]
    return index.metadata.column("id").to_numpy()[order].tolist(), scores[order]


def test_search_equals_brute_force(index, collection):
    photo = collection["folder"] / "photo1.png"
    for texts, images in ((["ein Hund am Strand"], []), ([], [photo]), (["一只猫"], [photo])):
        result = index.search(texts=texts, images=images, k=5)
        vector, _ = index.query_vector(texts, images)
        ids, scores = brute_force(index, vector, 5)
        assert result.ids == ids and np.allclose(result.scores, scores, atol=1e-5)
        assert [row["id"] for row in result.metadata] == ids
    everything = index.search(images=[photo], k=len(index))  # the photo itself scores 1 (float16 storage)
    itself = [row["location"] for row in everything.metadata].index(str(photo))
    assert everything.scores[itself] == pytest.approx(1, abs=2e-3) == everything.scores[0]


def test_search_command_prints_and_writes_json(fresh_index, tiny_model_dir, capsys):
    search_main([str(fresh_index), "ein Hund", "--k", "3", "--json", "--model", str(tiny_model_dir)])
    found = json.loads(capsys.readouterr().out)
    assert len(found["ids"]) == 3 and sorted(found["scores"], reverse=True) == found["scores"]
    assert set(found["metadata"][0]) == {"id", "location", "caption", "key", "part", "row", "sha256"}
    search_main([str(fresh_index), "猫", "--k", "2", "--model", str(tiny_model_dir)])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and float(lines[0].split()[0]) >= float(lines[1].split()[0])


def test_a_query_past_the_models_length_is_cut_and_said(index):
    result = index.search("Hund " * 600, k=2)
    assert len(result.ids) == 2 and "the model reads the first" in result.notes[0]


def test_approximate_index_reaches_its_recall_and_is_memory_mapped(tmp_path):
    import faiss

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 32))
    vectors = centres[rng.integers(0, 50, 20_000)] + 0.3 * rng.normal(size=(20_000, 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype("float32")
    assert choose_index(20_000, 32, exact_limit=10_000) == "IVF128,Flat"
    assert choose_index(20_000, 32, memory_budget=1_000_000, exact_limit=10_000) == "IVF128,SQ8"
    assert choose_index(20_000, 32, memory_budget=400_000, exact_limit=10_000).startswith("IVF128,PQ")
    index, description = build_faiss_index(vectors, exact_limit=10_000)
    assert description["factory"] == "IVF128,Flat" and description["recall_at_10"] >= 0.95
    assert 1 <= description["parameters"]["nprobe"] < 128  # tuned, not every list
    faiss.write_index(index, str(tmp_path / "index.faiss"))
    from altclip.common.collection_index import read_faiss_index

    mapped = read_faiss_index(tmp_path / "index.faiss")
    assert mapped.ntotal == 20_000
    assert np.array_equal(mapped.search(vectors[:5], 3)[1], index.search(vectors[:5], 3)[1])


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, save_tiny_model):
    """Another model of 8 dimensions."""
    return save_tiny_model(tmp_path_factory.mktemp("other_model"), seed=1, projection_dim=8)


# Each bad input: (setup, whose argument is the test's `SimpleNamespace` of folders, returning the command, its
# argv and the texts its one-line error holds).
def another_model(given):  # an index built by another model: both named
    argv = [given.index, "x", "--model", given.other_model]
    return search_main, argv, [f"built by {given.model}", f"not by {given.other_model}"]


def a_dimension_mismatch_on_add(given):  # of an image the index does not hold yet
    (given.tmp_path / "new").mkdir()
    random_images(1, seed=8)[0].save(given.tmp_path / "new" / "new.png")
    argv = [*build_flags(given.other_model, given.index, given.tmp_path / "new"), "--add"]
    return index_main, argv, ["embeds in 8 dimensions", "holds 16"]


def an_empty_collection(given):
    (given.tmp_path / "empty").mkdir()
    return index_main, build_flags(given.model, given.tmp_path / "out", given.tmp_path / "empty"), ["no image found"]


def an_existing_index(given):  # is not overwritten
    return index_main, build_flags(given.model, given.index, given.collection["table"]), ["already holds"]


def built_elsewhere(given):
    broken = given.tmp_path / "broken"
    index_main(build_flags(given.model, broken, given.collection["table"]))
    return broken


def a_corrupt_shard(given):
    broken = built_elsewhere(given)
    shard = broken / "parts" / "part-00000.npy"
    shard.write_bytes(shard.read_bytes()[:100])
    return index_main, ["remove", broken, "--ids", "0"], [f"{shard}: corrupt embedding shard"]


def a_corrupt_manifest(given):
    broken = built_elsewhere(given)
    (broken / "manifest.json").write_text('{"format": 1, "model"')
    return search_main, [broken, "x"], [f"{broken / 'manifest.json'}: corrupt manifest"]


def an_unknown_id(given):
    return index_main, ["remove", given.index, "--ids", "99"], ["no image with id 99"]


def a_missing_query_image(given):
    return search_main, [given.index, "x", "--image", given.tmp_path / "none.png"], ["no such file"]


def a_missing_index(given):
    return search_main, [given.tmp_path / "nowhere", "x"], ["no such index folder"]


BAD_INPUT = [
    another_model,
    a_dimension_mismatch_on_add,
    an_empty_collection,
    an_existing_index,
    a_corrupt_shard,
    a_corrupt_manifest,
    an_unknown_id,
    a_missing_query_image,
    a_missing_index,
]


@pytest.mark.parametrize("case", BAD_INPUT, ids=[case.__name__ for case in BAD_INPUT])
def test_bad_input_is_one_line(case, cli, tmp_path, fresh_index, tiny_model_dir, other_model_dir, collection):
    given = SimpleNamespace(
        tmp_path=tmp_path, index=fresh_index, model=tiny_model_dir, other_model=other_model_dir, collection=collection
    )
    main, argv, expected = case(given)
    cli.refusal(main, *argv, contains=expected)


def test_query_vectors_are_normalised_sums(index):
    texts = index.embedder.texts(["ein Hund", "a dog"])
    vector, _ = index.query_vector(["ein Hund", "a dog"])
    assert np.allclose(vector[0], F.normalize(texts.sum(0), dim=0).numpy(), atol=1e-6)


def test_dims_indexes_a_prefix_and_tune_queries_are_used(tmp_path, tiny_model_dir, collection):
    queries = tmp_path / "queries.txt"
    queries.write_text("ein Hund am Strand\n\n一只猫\na rocket\n", encoding="utf-8")
    output = tmp_path / "index"
    flags = ["--dims", "8", "--tune_queries", str(queries)]
    index_main([*build_flags(tiny_model_dir, output, collection["folder"]), *flags])
    index = Index.load(output, model=str(tiny_model_dir))
    assert index.manifest["index_dim"] == 8 == index.faiss_index.d and index.manifest["dim"] == 16
    assert index.manifest["index"]["text_queries_from"] == "given"
    stored = gather_embeddings(output, index.metadata, 16)[:, :8]
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    vector, _ = index.query_vector(["一只猫"])  # full length; the index cuts it to its prefix
    prefix = vector[0, :8] / np.linalg.norm(vector[0, :8])
    expected = np.argsort(-(stored @ prefix), kind="stable")[:4]
    result = index.search("一只猫", k=4)
    assert result.ids == index.metadata.column("id").to_numpy()[expected].tolist()
    assert np.allclose(result.scores, (stored @ prefix)[expected], atol=1e-5)


def test_the_exact_index_equals_faiss_flat_search(tmp_path):
    vectors = clustered_unit_vectors(3000, 24, seed=3)
    vectors[7] = vectors[3]  # a tie: the lower row first (FAISS's heap gives either)
    flat = faiss.IndexFlatIP(24)
    flat.add(vectors)
    metadata = pyarrow.table({"id": list(range(3000)), "location": ["x"] * 3000, "caption": [None] * 3000,
                              "key": [None] * 3000, "part": ["p"] * 3000, "row": list(range(3000))})  # fmt: skip
    index = Index(tmp_path, {"dim": 24, "index": {"factory": "Flat", "exact": True}}, metadata, flat)
    queries = np.concatenate([vectors[[3]], unit_rows(np.random.default_rng(1).normal(size=(40, 24)))])
    scores, rows = index.search_vectors(queries, k=25)
    expected_scores, expected_rows = flat.search(queries, 25)
    assert np.array_equal(rows[1:], expected_rows[1:]) and np.allclose(scores, expected_scores, atol=1e-5)
    assert list(rows[0][:2]) == [3, 7] and set(expected_rows[0][:2]) == {3, 7}
    assert np.array_equal(rows[0][2:], expected_rows[0][2:])


def clustered_unit_vectors(count: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return unit_rows(rng.normal(size=(10, dim))[rng.integers(0, 10, count)] + 0.4 * rng.normal(size=(count, dim)))


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype("float32")
