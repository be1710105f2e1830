"""What a query costs at collection scale (100M-400M images), in the Python API: a deduplicated page is capped and
deduplicated in blocks with the old results; metadata rows are found by id with a binary search and taken from the
record batches that hold them, equal to pyarrow's filter and take; the metadata table is memory-mapped from the
version's ``metadata.arrow``, not decoded into each process's memory. And for the build: recall's ground truth is
searched without copying every vector into a FAISS index."""

import numpy as np
import pyarrow
import pyarrow.compute
import pyarrow.parquet
import pytest

from altclip.common.collection_index import (
    DEDUPLICATE_THRESHOLD,
    MAX_DEDUPLICATED,
    IdColumn,
    Index,
    read_manifest,
    take_rows,
)
from altclip.common.errors import UsageError
from altclip.common.index_folder import METADATA_ARROW, files_folder, read_metadata
from altclip.search.build import IndexSettings, index_from_vectors, remove_ids
from altclip.search.vector_index import exact_neighbours


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def duplicated(tmp_path_factory):
    """An index of 3,000 vectors (in 6 parts) where about a third are near-copies (cosine ~0.97) of another, so
    that deduplication leaves rows out and fetches more candidates; exact search."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, 24))
    vectors = centres[rng.integers(0, 30, 3000)] + 0.6 * rng.normal(size=(3000, 24))
    copies = rng.choice(3000, 1000, replace=False)
    vectors[copies] = vectors[rng.integers(0, 3000, 1000)] + 0.08 * rng.normal(size=(1000, 24))
    folder = tmp_path_factory.mktemp("duplicated") / "index"
    index_from_vectors(folder, unit(vectors), [f"v{i}.jpg" for i in range(3000)], part_size=500)
    return folder


def old_page(index: Index, query: np.ndarray, k: int, offset: int, threshold: float) -> list[int]:
    """The page `Index.results` gave before: each candidate compared with every kept one in turn, over 4x + 16 the
    page's end in candidates, 4x more until the page is full (up to 64x)."""
    wanted = offset + k
    fetch = min(len(index), wanted * 4 + 16)
    while True:
        _, rows = index.search_vectors(query[None], fetch)
        rows = rows[0][rows[0] >= 0]
        vectors = index.row_embeddings(rows)
        kept: list[int] = []
        for number in range(len(rows)):
            if not kept or float(np.max(vectors[kept] @ vectors[number])) < threshold:
                kept.append(number)
        limit = min(len(index), max(64 * wanted, 1024))
        if fetch >= limit or len(kept) >= wanted:
            break
        fetch = min(limit, fetch * 4)
    page = rows[kept][offset:wanted]
    return index.metadata_rows(page).column("id").to_pylist()


def test_a_deduplicated_page_past_the_cap_is_a_usage_error_naming_the_field(duplicated):
    index = Index.load(duplicated)
    query = index.row_embeddings([0])[0]
    for k, offset, field in ((MAX_DEDUPLICATED + 1, 0, "k"), (10, MAX_DEDUPLICATED - 9, "offset")):
        with pytest.raises(UsageError, match=rf"^{field}: offset \+ k = {k + offset} is above {MAX_DEDUPLICATED}"):
            index.search(embedding=query, k=k, offset=offset, deduplicate=True)
    assert len(index.search(embedding=query, k=MAX_DEDUPLICATED + 1).ids) == MAX_DEDUPLICATED + 1  # not deduplicated
    page = index.search(embedding=query, k=10, offset=MAX_DEDUPLICATED - 10, deduplicate=True)  # the last page
    assert len(page.ids) == 10


@pytest.mark.parametrize("threshold", [DEDUPLICATE_THRESHOLD, 0.9, 0.6])
def test_deduplicated_pages_equal_the_old_loops(duplicated, threshold):
    index = Index.load(duplicated)
    queries = unit(np.random.default_rng(1).normal(size=(6, 24)))
    for number, query in enumerate([*queries, *index.row_embeddings([7, 1500, 2999])]):
        for k, offset in ((10, 0), (25, 40), (5, 300)):
            expected = old_page(index, query, k, offset, threshold)
            result = index.search(embedding=query, k=k, offset=offset, deduplicate=threshold)
            assert result.ids == expected, (number, k, offset)
            if len(expected) == k:
                assert not any("fewer than" in note for note in result.notes)
    left_out = index.search(embedding=queries[0], k=50, deduplicate=0.6).notes
    assert any("near-duplicates (cosine ≥ 0.6) left out" in note for note in left_out), left_out


def chunked(table, rows_per_batch: int):
    return pyarrow.Table.from_batches(table.to_batches(max_chunksize=rows_per_batch))


@pytest.mark.parametrize("seed", range(8))
def test_rows_by_id_and_taken_rows_equal_pyarrows_filter_and_take(seed):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 5000))
    ids = np.sort(rng.choice(10 * count, count, replace=False))  # increasing, with gaps (removed ids)
    if seed % 3 == 1:
        ids = rng.permutation(ids)  # in no order: a sorted copy is kept
    if seed % 3 == 2:
        ids[rng.integers(0, count, count // 10)] = ids[0]  # repeated ids (never written by the build)
    table = chunked(pyarrow.table({"id": ids, "text": [f"row {i}" for i in range(count)]}), int(rng.integers(1, 700)))
    column = IdColumn(table.column("id"))
    assert (column.order is None) == (seed % 3 == 0)
    for _ in range(5):
        asked = [*rng.integers(-5, 10 * count + 5, int(rng.integers(0, 300))).tolist(), 2**63, -(2**70)]
        rows = column.rows(asked)
        in_range = pyarrow.array([i for i in asked if -(2**63) <= i < 2**63], pyarrow.int64())
        expected = table.filter(pyarrow.compute.is_in(table["id"], in_range))
        assert take_rows(table, rows).to_pylist() == expected.to_pylist()
        page = rng.integers(0, count, int(rng.integers(0, 200)))
        assert take_rows(table, page).to_pylist() == table.take(page).to_pylist()
    with pytest.raises(IndexError):
        take_rows(table, [count])


def test_the_metadata_is_memory_mapped_and_every_version_writes_it(duplicated, tmp_path):
    manifest = read_manifest(duplicated)
    files = files_folder(duplicated, manifest)
    assert (files / METADATA_ARROW).is_file()
    before = pyarrow.total_allocated_bytes()
    metadata = read_metadata(files)
    assert pyarrow.total_allocated_bytes() - before < 1000  # nothing decoded into memory: the file's pages
    assert metadata.equals(pyarrow.parquet.read_table(files / "metadata.parquet"))
    index = Index.load(duplicated)
    assert index.metadata_rows(index.rows_of_ids([4, 2999, 3000])).column("id").to_pylist() == [4, 2999]
    copy = tmp_path / "copy"
    index_from_vectors(copy, unit(np.eye(4, 24) + 0.1), ["a", "b", "c", "d"], settings=IndexSettings())
    remove_ids(copy, [1])  # a new version: its own metadata.arrow, without id 1
    removed = read_metadata(files_folder(copy, read_manifest(copy)))
    assert removed.column("id").to_pylist() == [0, 2, 3] and removed.num_rows == Index.load(copy).metadata.num_rows


def test_recalls_ground_truth_is_faiss_exact_search_without_a_copy_of_the_vectors(monkeypatch):
    import faiss

    rng = np.random.default_rng(4)
    vectors = unit(rng.normal(size=(20_000, 32)))
    vectors[7], vectors[100:140] = vectors[3], vectors[50]  # ties: FAISS's order, whichever it is
    queries = np.concatenate([vectors[[3, 50]], unit(rng.normal(size=(200, 32)))])
    flat = faiss.IndexFlatIP(32)
    flat.add(vectors)
    expected = flat.search(queries, 11)[1]

    def no_copy(*args, **kwargs):
        raise AssertionError("every vector copied into a FAISS index (307 GB more at 100M x 768)")

    monkeypatch.setattr(faiss.IndexFlatIP, "add", no_copy)
    assert np.array_equal(exact_neighbours(vectors, queries, 11), expected)
