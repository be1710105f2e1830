"""Querying an image collection index (what ``altclip-index build`` writes; layout in `index_folder`), for the search
job, its server and the demo alike.

It lives in common, not in the search job, because the demo answers queries over an index too and no job imports
another; building, adding and removing stay in ``altclip.search``. One `Index` is one published version of a folder:
`Index.reload` gives the newer version when ``--add`` or ``remove`` published one.
"""

import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .index_folder import (  # noqa: F401  (re-exported: the names readers and writers use)
    EXACT_VECTORS,
    FORMAT_VERSION,
    INDEX_FILE,
    MANIFEST,
    METADATA,
    METADATA_ARROW,
    METADATA_COLUMNS,
    PARTS,
    SKIPPED,
    VERSIONS,
    CollectionIndexError,
    files_folder,
    index_model,
    manifest_stamp,
    read_faiss_index,
    read_manifest,
    read_metadata,
)

logger = logging.getLogger(__name__)

DEDUPLICATE_THRESHOLD = 0.96  # cosine above which two results count as the same picture (resized, re-encoded)
# offset + k of a deduplicated search: its candidates (4x that, up to 64x when duplicates abound) are read from the
# parts and compared with the results kept before them, in the one thread that answers every query of a server;
# benchmarks/search_scale.py measures the cost at this cap (1.3 s on one thread in the worst case)
MAX_DEDUPLICATED = 1_000
DEDUPLICATE_BLOCK = 256  # candidates compared per matrix product


def greedy_deduplicate(
    read, count: int, threshold: float, wanted: int | None = None, block: int = DEDUPLICATE_BLOCK
) -> tuple[np.ndarray, int]:
    """(positions kept, candidates examined) of `count` candidates, best first, each kept unless its cosine with one
    kept before it is `threshold` or more: the greedy order, stopping once `wanted` are kept.

    `read(start, stop)` gives the unit float32 vectors of candidates `start` to `stop`; they are read and compared a
    block at a time: one matrix product of the block with the kept vectors (a preallocated matrix, filled as results
    are kept), one within the block, then the greedy pass over the block's scores. Equal to comparing each candidate
    with every kept one in turn (``tests/common/test_deduplication.py``), without that loop's copy of the kept vectors
    per candidate (quadratic: 5.4 s at 4,000 candidates of 768 dimensions, against 0.22 s; search_scale.py)."""
    wanted = count if wanted is None else min(wanted, count)
    kept_positions = np.empty(wanted, np.int64)
    kept_vectors: np.ndarray | None = None
    kept = 0
    for start in range(0, count, block):
        if kept == wanted:
            return kept_positions[:kept], start
        vectors = np.ascontiguousarray(read(start, min(count, start + block)), dtype=np.float32)
        if kept_vectors is None:
            kept_vectors = np.empty((wanted, vectors.shape[1]), np.float32)
        alive = np.ones(len(vectors), bool)
        for first in range(0, kept, 4096):  # the block against the results kept so far, 4096 at a time
            scores = vectors @ kept_vectors[first : min(kept, first + 4096)].T
            alive &= scores.max(axis=1) < threshold
        within = vectors @ vectors.T
        for number in np.flatnonzero(alive):
            if not alive[number]:  # a near-duplicate of one kept earlier in this block
                continue
            kept_positions[kept], kept_vectors[kept] = start + number, vectors[number]
            kept += 1
            if kept == wanted:
                return kept_positions[:kept], start + number + 1
            alive[number + 1 :] &= within[number, number + 1 :] < threshold
    return kept_positions[:kept], count


def weights_fingerprint(model: Any, tokenizer: Any) -> str:
    """A checksum of every weight (as loaded, before any cast) and the tokenizer's size: the same model gives the same
    fingerprint on any device or precision, another model (or a fine-tuned one) a different one."""
    import torch

    digest = hashlib.sha256()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            flat = parameter.detach().flatten()
            total = sum(chunk.sum(dtype=torch.float64).item() for chunk in flat.split(1 << 20))
            digest.update(f"{name}{tuple(parameter.shape)}{total:.8e}".encode())
            digest.update(flat[:: max(1, flat.numel() // 64)].float().cpu().numpy().tobytes())
    digest.update(str(len(tokenizer)).encode())
    return digest.hexdigest()[:20]


def set_search_parameters(index, parameters: dict) -> None:
    """Apply the search-time parameters the build tuned (``nprobe`` of an IVF index)."""
    import faiss

    if "nprobe" in parameters:
        faiss.extract_index_ivf(index).nprobe = int(parameters["nprobe"])


@dataclass
class SearchResult:
    """The best images of one query: ids, cosine scores and metadata rows (best first), notes (a truncated query, a
    raised nprobe, fewer results than asked) and the index version that answered."""

    ids: list[int]
    scores: list[float]
    metadata: list[dict]
    notes: list[str] = field(default_factory=list)
    version: int = 0


def too_long_texts(tokenizer, texts: Sequence[str], max_length: int) -> list[tuple[str, int]]:
    """(text, its token count) of the texts longer than `max_length` tokens: those are cut, and the user is told."""
    counts = [len(ids) for ids in tokenizer(list(texts), truncation=False)["input_ids"]]
    return [(text, count) for text, count in zip(texts, counts) if count > max_length]


def exact_top_k(matrix: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the `k` largest inner products of each query with the rows of `matrix`, best first (ties:
    lower row first). One BLAS matrix product per block of queries: FAISS's own flat search measured 2.4-3.4x slower
    than this product over the same vectors on the 2-core CPUs here (benchmarks/search_service.py)."""
    count = matrix.shape[0]
    scores_out = np.empty((len(queries), k), np.float32)
    rows_out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), 16):  # 16 queries x 1M rows: 64 MB of scores at a time
        block = queries[start : start + 16] @ matrix.T
        for offset, scores in enumerate(block):
            top = np.argpartition(-scores, k - 1)[:k] if k < count else np.arange(count)
            top = top[np.lexsort((top, -scores[top]))]
            scores_out[start + offset], rows_out[start + offset] = scores[top], top
    return scores_out, rows_out


def increasing(values: np.ndarray, block: int = 1 << 22) -> bool:
    """Whether `values` strictly increase, checked a block at a time (no temporary the size of the column)."""
    for start in range(0, max(len(values) - 1, 0), block):
        part = values[start : start + block + 1]
        if not (part[1:] > part[:-1]).all():
            return False
    return True


def record_batches(table) -> tuple[list, np.ndarray]:
    """(the non-empty record batches of a pyarrow `table`, the first row of each): what `take_rows` reads from."""
    batches = [batch for batch in table.to_batches() if batch.num_rows]
    return batches, np.cumsum([0, *(batch.num_rows for batch in batches)])


def take_rows(table, rows: Sequence[int] | np.ndarray, batches: tuple[list, np.ndarray] | None = None):
    """The rows `rows` of a pyarrow `table`, in that order, taken from each record batch that holds some
    (`batches`: the `record_batches` of the table or of some of its columns, when kept).

    pyarrow's ``Table.take`` concatenates each column's chunks first: a read of the whole table (0.13 s for a page of
    100 rows at 2M rows, so about 25 s at 400M; a memory-mapped table paged in whole) for every page of results."""
    import pyarrow

    rows = np.asarray(rows, np.int64).reshape(-1)
    batches, starts = batches or record_batches(table)
    if not batches:
        return table.take(pyarrow.array(rows))
    if len(batches) == 1:
        return pyarrow.Table.from_batches([batches[0].take(pyarrow.array(rows))])
    if (rows < 0).any() or (rows >= starts[-1]).any():
        raise IndexError(f"rows {rows.min()}..{rows.max()}: the table has {starts[-1]} rows.")
    which = np.searchsorted(starts, rows, side="right") - 1
    order = np.argsort(which, kind="stable")
    bounds = np.searchsorted(which[order], np.arange(len(batches) + 1))
    pieces = []
    for number in np.flatnonzero(np.diff(bounds)):
        chosen = order[bounds[number] : bounds[number + 1]]
        pieces.append(batches[number].take(pyarrow.array(rows[chosen] - starts[number])))
    taken = pyarrow.Table.from_batches(pieces, schema=batches[0].schema)
    back = np.empty(len(rows), np.int64)
    back[order] = np.arange(len(rows))
    return taken.take(pyarrow.array(back))  # in the order asked: the pieces hold only the rows taken


class IdColumn:
    """The id column of a metadata table, for finding rows by id with a binary search instead of a scan.

    The build numbers rows in increasing id order (``finalize`` appends new ids after the old ones, ``remove`` keeps
    the order), so the column's chunks are searched where they are: read-only NumPy views of the (memory-mapped)
    table, nothing copied. A table in any other order gets a sorted copy and each id's row (16 bytes a row)."""

    def __init__(self, column):
        chunks = [chunk.to_numpy(zero_copy_only=False) for chunk in column.chunks]
        self.starts = np.cumsum([0, *(len(chunk) for chunk in chunks)])[:-1]
        kept = [number for number, chunk in enumerate(chunks) if len(chunk)]
        chunks, self.starts = [chunks[number] for number in kept], self.starts[kept]
        self.order: np.ndarray | None = None
        in_order = all(increasing(chunk) for chunk in chunks) and all(
            before[-1] < after[0] for before, after in zip(chunks, chunks[1:])
        )
        if not in_order:
            ids = np.concatenate(chunks)
            self.order = np.argsort(ids, kind="stable")
            chunks, self.starts = [ids[self.order]], np.zeros(1, np.int64)
        self.chunks = chunks
        self.firsts = np.array([chunk[0] for chunk in chunks], np.int64)

    def rows(self, ids: Sequence[int]) -> np.ndarray:
        """The rows holding `ids` (those present, each row once), in the table's order: what a filter of the
        column by `ids` keeps."""
        wanted = np.unique(np.asarray([int(i) for i in ids if -(2**63) <= int(i) < 2**63], np.int64))
        which = np.searchsorted(self.firsts, wanted, side="right") - 1
        found = []
        for number in np.unique(which[which >= 0]):
            values, chunk = wanted[which == number], self.chunks[number]
            first = np.searchsorted(chunk, values, side="left")
            counts = np.searchsorted(chunk, values, side="right") - first
            within = np.repeat(first - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
            found.append(self.starts[number] + within)
        rows = np.concatenate(found) if found else np.empty(0, np.int64)
        return rows if self.order is None else np.sort(self.order[rows])


def check_deduplicated_page(k: int, offset: int, threshold: float) -> None:
    """`UsageError` naming the field when a deduplicated page ends past result `MAX_DEDUPLICATED`."""
    if threshold and offset + k > MAX_DEDUPLICATED:
        field = "k" if k > MAX_DEDUPLICATED else "offset"
        raise UsageError(
            f"{field}: offset + k = {offset + k} is above {MAX_DEDUPLICATED}, the most a deduplicated search pages "
            f"through (offset {offset}, k {k}); ask for an earlier page, or search without deduplicate."
        )


class Index:
    """One published version of a collection index: its vectors (FAISS, memory-mapped), metadata and the model that
    answers queries.

    ``Index.load(folder).search(texts=["ein Hund am Strand"], k=20)``; texts and images given together form one
    query (the normalised sum of their embeddings). ``index.reload()`` is the newer version once one is published."""

    def __init__(
        self,
        folder: Path,
        manifest: dict,
        metadata,
        faiss_index,
        embedder=None,
        model: str | None = None,
        flat_vectors: np.ndarray | None = None,
    ):
        self.folder, self.manifest, self.metadata, self.faiss_index = folder, manifest, metadata, faiss_index
        self._embedder, self._model, self._embedder_options = embedder, model, {}
        self.stamp: tuple[int, int] | None = None
        self.dim = int(manifest["dim"])
        self.index_dim = int(manifest.get("index_dim", self.dim))  # Matryoshka: a prefix of each embedding
        self._parts: dict[str, np.ndarray] = {}
        self._ids: IdColumn | None = None  # built on first use (`rows_of_ids`)
        self._batches = record_batches(metadata)  # what `take_rows` reads the metadata's rows from
        self._locations = record_batches(metadata.select(["part", "row"]))  # where each row's embedding is stored
        self._ids_lock = threading.Lock()
        self._flat = flat_vectors
        if self._flat is None and manifest["index"].get("exact") and faiss_index.ntotal:  # FAISS's flat codes
            import faiss

            codes = faiss.rev_swig_ptr(faiss_index.get_xb(), faiss_index.ntotal * faiss_index.d)
            codes = codes.reshape(faiss_index.ntotal, faiss_index.d)
            # a memory-mapped index.faiss puts the codes at an unaligned offset, which NumPy does not hand to BLAS
            # (15x slower): a copy then, unless `load` finds the version's aligned vectors.npy to map instead
            self._flat = codes if codes.flags.aligned else np.array(codes)
            self._flat.flags.writeable = False

    @classmethod
    def load(
        cls,
        folder: str | Path,
        model: str | None = None,
        embedder=None,
        version: int | None = None,
        **embedder_options,
    ) -> "Index":
        """The current version of the index in `folder` (or `version`); queries are embedded by `embedder` (an
        `altclip.common.embedding.Embedder` whose model the caller checked with `check_model`) or by `model`
        (default: the manifest's, found from any folder), loaded on first use."""
        folder = Path(folder).expanduser()
        for attempt in range(3):
            stamp = manifest_stamp(folder) if version is None else None
            manifest = read_manifest(folder, version)
            files = files_folder(folder, manifest)
            if files.is_dir() or version is not None or attempt == 2:
                break  # else: pruned between reading the manifest and opening its files; read the newer manifest
        metadata = read_metadata(files)
        faiss_index = read_faiss_index(files / INDEX_FILE)
        index_dim = manifest.get("index_dim", manifest["dim"])
        if faiss_index.ntotal != metadata.num_rows or faiss_index.d != index_dim:
            raise CollectionIndexError(
                f"{files / INDEX_FILE}: {faiss_index.ntotal} vectors of dimension {faiss_index.d}, but "
                f"{files / METADATA} has {metadata.num_rows} rows and the manifest says dimension {index_dim}; "
                "rebuild the index."
            )
        set_search_parameters(faiss_index, manifest["index"].get("parameters", {}))
        vectors = files / EXACT_VECTORS
        flat = None
        if manifest["index"].get("exact") and vectors.is_file():  # aligned: BLAS reads the mapped file directly
            flat = np.load(vectors, mmap_mode="r")
            if flat.shape != (faiss_index.ntotal, faiss_index.d):
                raise CollectionIndexError(f"{vectors}: {flat.shape}, not the index's; rebuild the index.")
        index = cls(folder, manifest, metadata, faiss_index, embedder, model, flat_vectors=flat)
        index._embedder_options, index.stamp = embedder_options, stamp
        return index

    def __len__(self) -> int:
        return self.faiss_index.ntotal

    def metadata_rows(self, rows: Sequence[int] | np.ndarray):
        """The metadata rows `rows` (pyarrow), in that order, read from the record batches holding them."""
        return take_rows(self.metadata, rows, self._batches)

    def rows_of_ids(self, ids: Sequence[int]) -> np.ndarray:
        """The metadata rows holding `ids` (those present; in the table's order, each once): a binary search of the
        id column (`IdColumn`, made once per loaded version), not a scan of it."""
        with self._ids_lock:
            if self._ids is None:
                self._ids = IdColumn(self.metadata.column("id"))
        return self._ids.rows(ids)

    @property
    def version(self) -> int:
        return int(self.manifest.get("version", 0))

    def reload(self) -> "Index":
        """This index, or its newer version when one was published since it was loaded (same query embedder)."""
        stamp = manifest_stamp(self.folder)
        if stamp is None or stamp == self.stamp:
            return self
        newer = Index.load(self.folder, model=self._model, embedder=self._embedder, **self._embedder_options)
        if newer.manifest["fingerprint"] != self.manifest["fingerprint"]:
            raise CollectionIndexError(f"{self.folder}: rebuilt by another model; load it again.")
        return newer

    @property
    def model_name(self) -> str:
        """The query model: the one given, else the manifest's (a moved model folder named in one line)."""
        return self._model or index_model(self.folder, self.manifest)

    def check_model(self, name: str, fingerprint: str) -> None:
        """Refuse a query model other than the one that built the index (both named)."""
        if fingerprint != self.manifest["fingerprint"]:
            raise CollectionIndexError(
                f"{self.folder} was built by {self.manifest['model']} (fingerprint {self.manifest['fingerprint']}), "
                f"not by {name} (fingerprint {fingerprint}); query it with {self.manifest['model']} or rebuild it."
            )

    @property
    def embedder(self):
        """The query embedder, loaded (and checked against the manifest) on first use."""
        if self._embedder is None:
            from modeling_altclip import AltCLIPModel, AltCLIPProcessor, check_finite_weights

            from .embedding import Embedder

            name = self.model_name
            model = AltCLIPModel.from_pretrained(name)
            check_finite_weights(model, name)
            processor = AltCLIPProcessor.from_pretrained(name)
            self.check_model(name, weights_fingerprint(model, processor.tokenizer))
            options = {"dtype": "float32", "batch_size": 16, **self._embedder_options}
            self._embedder = Embedder(model, processor, **options)
        return self._embedder

    def text_notes(self, texts: Sequence[str]) -> list[str]:
        """A note for each text the model cuts to its length."""
        limit = self.embedder.max_text_length
        return [
            f"query {text[:40]!r}… has {count} tokens; the model reads the first {limit}."
            for text, count in too_long_texts(self.embedder.processor.tokenizer, texts, limit)
        ]

    def query_vector(self, texts: Sequence[str] = (), images: Sequence[Any] = ()) -> tuple[np.ndarray, list[str]]:
        """The unit query vector of `texts` and `images` together, and notes (truncated texts)."""
        import torch
        import torch.nn.functional as F

        texts, images = [t for t in texts if t and t.strip()], list(images)
        if not texts and not images:
            raise CollectionIndexError("give a query: some text, an image, or both.")
        notes, parts = [], []
        if texts:
            notes += self.text_notes(texts)
            parts.append(self.embedder.texts(texts, "query texts"))
        if images:
            embeddings, _, failures = self.embedder.images(images, "query images")
            if failures:
                where = failures[0].where if len(failures[0].where) < 200 else "(image bytes)"
                raise CollectionIndexError(f"query image {where}: cannot be read ({failures[0].reason}).")
            parts.append(embeddings)
        vector = F.normalize(torch.cat(parts).sum(dim=0, keepdim=True), dim=-1)
        return vector.numpy().astype("float32"), notes

    def prepare(self, vectors: Any) -> np.ndarray:
        """Query vectors as the index compares them: float32 [queries, index_dim], finite, unit length (a
        full-length embedding is cut to the index's Matryoshka prefix)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        vectors = vectors[None] if vectors.ndim == 1 else vectors
        if vectors.ndim != 2 or vectors.shape[1] not in (self.dim, self.index_dim):
            raise CollectionIndexError(
                f"query vectors of shape {vectors.shape}; this index holds dimension {self.dim}"
                + (f" (searched by its first {self.index_dim})." if self.index_dim != self.dim else ".")
            )
        if not np.isfinite(vectors).all():
            raise CollectionIndexError("the query vector holds NaN or infinite values; give finite numbers.")
        vectors = vectors[:, : self.index_dim]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if (norms == 0).any():
            raise CollectionIndexError("the query vector is all zeros; it has no direction to search in.")
        return np.ascontiguousarray(vectors / norms, dtype=np.float32)

    def search_rows(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
        """(scores, rows, notes per query) of the `k` nearest rows of each prepared query vector. An IVF index that
        finds fewer than `k` within its tuned nprobe (lists too small) searches again with more lists."""
        k = min(k, len(self))
        notes: list[list[str]] = [[] for _ in vectors]
        if self._flat is not None:
            scores, rows = exact_top_k(self._flat, vectors, k)
            return scores, rows, notes
        scores, rows = self.faiss_index.search(vectors, k)
        short = np.flatnonzero((rows < 0).any(axis=1))
        if len(short):
            import faiss

            ivf = faiss.extract_index_ivf(self.faiss_index)
            nprobe = ivf.nprobe
            while len(short) and nprobe < ivf.nlist:
                nprobe = min(ivf.nlist, nprobe * 2)
                found = self.faiss_index.search(vectors[short], k, params=faiss.SearchParametersIVF(nprobe=nprobe))
                scores[short], rows[short] = found
                for query in short:
                    notes[query] = [f"searched {nprobe} of {ivf.nlist} lists (tuned: {ivf.nprobe}) to find {k}."]
                short = short[(rows[short] < 0).any(axis=1)]
        return scores, rows, notes

    def search_vectors(self, vectors: np.ndarray, k: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row numbers) of the `k` nearest rows of each vector in `vectors` ([queries, dim])."""
        scores, rows, _ = self.search_rows(self.prepare(vectors), k)
        return scores, rows

    def row_embeddings(self, rows: Sequence[int]) -> np.ndarray:
        """The stored unit embeddings (float32, full length) of metadata `rows`, read from the memory-mapped parts
        (one fancy-indexed read per part)."""
        selected = take_rows(self.metadata.select(["part", "row"]), rows, self._locations)
        vectors = np.empty((selected.num_rows, self.dim), np.float32)
        if not selected.num_rows:
            return vectors
        names, which = np.unique(selected.column("part").to_numpy(zero_copy_only=False), return_inverse=True)
        part_rows = selected.column("row").to_numpy()
        order = np.argsort(which, kind="stable")
        bounds = np.searchsorted(which[order], np.arange(len(names) + 1))
        for number, name in enumerate(names):
            where = order[bounds[number] : bounds[number + 1]]
            if name not in self._parts:
                self._parts[name] = np.load(self.folder / PARTS / f"{name}.npy", mmap_mode="r")
            vectors[where] = self._parts[name][part_rows[where]]
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def deduplicated(self, rows: np.ndarray, threshold: float, wanted: int | None = None) -> tuple[np.ndarray, int]:
        """(`rows` (best first) without those whose embedding is within `threshold` cosine of a better one kept,
        how many of `rows` were examined): `greedy_deduplicate` over the rows' stored embeddings, read a block at a
        time, stopping once `wanted` are kept."""

        def read(start: int, stop: int) -> np.ndarray:
            return self.row_embeddings(rows[start:stop])

        kept, examined = greedy_deduplicate(read, len(rows), threshold, wanted)
        return rows[kept], examined

    def results(
        self,
        vectors: np.ndarray,
        k: int = 20,
        offset: int = 0,
        deduplicate: bool | float = False,
        notes: Sequence[Sequence[str]] | None = None,
    ) -> list[SearchResult]:
        """One `SearchResult` per query vector: results `offset` to `offset + k` of each (a page), without
        near-duplicates (cosine above `deduplicate`, or `DEDUPLICATE_THRESHOLD` when True) if asked; a deduplicated
        page ends at result `MAX_DEDUPLICATED` at most (`UsageError` beyond), and its note counts the near-duplicates
        left out before the page's last result."""
        if k < 1 or offset < 0:
            raise CollectionIndexError(f"k must be at least 1 and offset at least 0, got k={k}, offset={offset}.")
        threshold = DEDUPLICATE_THRESHOLD if deduplicate is True else float(deduplicate or 0)
        check_deduplicated_page(k, offset, threshold)
        vectors = self.prepare(vectors)
        wanted = offset + k
        fetch = min(len(self), wanted * 4 + 16 if threshold else wanted)
        while True:  # with deduplication: more candidates until each query has a full page (or a limit is met)
            scores, rows, search_notes = self.search_rows(vectors, fetch)
            candidates = [rows[number][rows[number] >= 0] for number in range(len(vectors))]
            # each query's kept rows, and how many of its candidates were examined (all, without deduplication)
            pairs = [
                self.deduplicated(found, threshold, wanted) if threshold else (found, len(found))
                for found in candidates
            ]
            kept, examined = [pair[0] for pair in pairs], [pair[1] for pair in pairs]
            limit = min(len(self), max(64 * wanted, 1024))
            if not threshold or fetch >= limit or all(len(rows_kept) >= wanted for rows_kept in kept):
                break
            fetch = min(limit, fetch * 4)
        answers = []
        for number in range(len(vectors)):
            query_notes = [*(notes[number] if notes else ()), *search_notes[number]]
            found = candidates[number]
            by_row = dict(zip(found.tolist(), scores[number][: len(found)].tolist()))
            if threshold and len(kept[number]) < examined[number]:
                left_out = examined[number] - len(kept[number])
                query_notes.append(f"{left_out} near-duplicates (cosine ≥ {threshold}) left out.")
            found = kept[number]
            page = found[offset:wanted].tolist()
            if len(page) < min(k, len(self) - offset):  # a smaller index simply gives all it holds
                query_notes.append(
                    f"{len(page)} results, fewer than the {k} asked (from {offset}): "
                    + ("near-duplicates were left out." if threshold else "the index found no more.")
                )
            metadata = self.metadata_rows(page).to_pylist() if page else []
            answers.append(
                SearchResult(
                    ids=[row["id"] for row in metadata],
                    scores=[by_row[row] for row in page],
                    metadata=metadata,
                    notes=query_notes,
                    version=self.version,
                )
            )
        return answers

    def search(
        self,
        texts: Sequence[str] | str = (),
        images: Sequence[Any] = (),
        k: int = 20,
        offset: int = 0,
        deduplicate: bool | float = False,
        embedding: Sequence[float] | np.ndarray | None = None,
    ) -> SearchResult:
        """The `k` images nearest to the query made of `texts` and `images` (paths, bytes, PIL images), or to an
        `embedding`, from the `offset`-th on; a text cut to the model's length is said in the result's notes."""
        if k < 1:
            raise CollectionIndexError(f"k must be at least 1, got {k}.")
        texts = [texts] if isinstance(texts, str) else list(texts)
        if embedding is not None:
            vector, notes = np.asarray(embedding, dtype=np.float32), []
        else:
            vector, notes = self.query_vector(texts, images)
        return self.results(vector, k, offset, deduplicate, [notes])[0]


def read_parquet_rows(url: str, start: int, stop: int):
    """Rows `start` to `stop` of a Parquet file or URL as a pyarrow Table, reading only the row groups holding them
    (a part of a large table, a thumbnail's row: not the whole table each time)."""
    import io

    import pyarrow.parquet

    from .sources import open_stream

    with open_stream(url) as stream:
        file = pyarrow.parquet.ParquetFile(stream if stream.seekable() else io.BytesIO(stream.read()))
        groups, first, row = [], None, 0
        for group in range(file.num_row_groups):
            rows = file.metadata.row_group(group).num_rows
            if row < stop and row + rows > start:
                groups.append(group)
                first = row if first is None else first
            row += rows
        if not groups:
            return file.schema_arrow.empty_table()
        return file.read_row_groups(groups).slice(start - first, stop - start)


def open_indexed_image(row: dict):
    """The RGB image of a metadata row, for showing it: a file or URL, a member of a webdataset shard (``#key``) or
    a table row with image bytes (``#row=N``)."""
    import tarfile

    from .images import open_rgb_image
    from .sources import open_stream

    location, key = row["location"], row.get("key")
    if key and location.endswith(f"#{key}"):
        with open_stream(location[: -len(key) - 1]) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                stem, _, suffix = member.name.rpartition(".")
                if stem == key and suffix.lower() in ("jpg", "jpeg", "png", "webp"):
                    return open_rgb_image(tar.extractfile(member).read())
        raise FileNotFoundError(f"{location}: no image member")
    if "#row=" in location:
        table, number = location.rsplit("#row=", 1)
        cells = read_parquet_rows(table, int(number), int(number) + 1).to_pylist()[0]
        return open_rgb_image(next(value for value in cells.values() if isinstance(value, (bytes, dict))))
    with open_stream(location) as stream:
        return open_rgb_image(stream.read())
