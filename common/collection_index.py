"""Reading an image collection index (what ``altclip-index build`` writes) and querying it, for the search job and
the demo alike.

It lives in common, not in the search job, because the demo answers queries over an index too and no job imports
another; building, adding and removing stay in ``altclip.search``. An index folder holds:

- ``manifest.json``: the model and its weights' fingerprint, the dimension, counts, the FAISS index's kind and
  measured recall@10;
- ``parts/part-NNNNN.npy`` (float16 embeddings, one row per readable image) and ``parts/part-NNNNN.parquet``;
- ``metadata.parquet``: one row per searchable image (id, location, caption, key, part, row), in index order;
- ``index.faiss``: the vector index over those rows, memory-mapped when loaded.
"""

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST, METADATA, INDEX_FILE, PARTS = "manifest.json", "metadata.parquet", "index.faiss", "parts"
METADATA_COLUMNS = ("id", "location", "caption", "key", "part", "row")


class CollectionIndexError(ValueError):
    """An index folder that cannot be used as it is; the message names the file and what to do."""


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


def read_manifest(folder: str | Path) -> dict:
    """The manifest of an index folder, or `CollectionIndexError` naming the file."""
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise CollectionIndexError(f"{folder}: no such index folder; build one with altclip-index build.")
    if not path.is_file():
        raise CollectionIndexError(
            f"{path}: missing; {folder} is not a finished index (altclip-index build writes it)."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CollectionIndexError(f"{path}: corrupt manifest ({error}); rebuild the index.") from None
    missing = [key for key in ("format", "model", "fingerprint", "dim", "counts", "index") if key not in manifest]
    if not isinstance(manifest, dict) or missing:
        raise CollectionIndexError(f"{path}: corrupt manifest (no {', '.join(missing)}); rebuild the index.")
    if manifest["format"] != FORMAT_VERSION:
        raise CollectionIndexError(f"{path}: index format {manifest['format']}, this package reads {FORMAT_VERSION}.")
    return manifest


def read_metadata(folder: str | Path) -> "Any":
    """The metadata table (pyarrow) of an index folder, or `CollectionIndexError` naming the file."""
    import pyarrow.parquet

    path = Path(folder) / METADATA
    try:
        table = pyarrow.parquet.read_table(path)
    except (OSError, pyarrow.ArrowInvalid) as error:
        raise CollectionIndexError(f"{path}: corrupt or missing metadata ({error}); rebuild the index.") from None
    if missing := [column for column in METADATA_COLUMNS if column not in table.column_names]:
        raise CollectionIndexError(f"{path}: corrupt metadata (no column {', '.join(missing)}); rebuild the index.")
    return table


def read_faiss_index(path: Path, memory_map: bool = True):
    """The FAISS index in `path`, memory-mapped (flat codes and IVF lists stay on disk until touched)."""
    import faiss

    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if memory_map else 0
    try:
        try:
            return faiss.read_index(str(path), flags | (faiss.IO_FLAG_MMAP_IFC if memory_map else 0))
        except RuntimeError:  # an index kind whose codes cannot be mapped: its lists still are
            return faiss.read_index(str(path), flags)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1][:200]
        raise CollectionIndexError(f"{path}: corrupt FAISS index ({reason}); rebuild the index.") from None


def set_search_parameters(index, parameters: dict) -> None:
    """Apply the search-time parameters the build tuned (``nprobe`` of an IVF index)."""
    import faiss

    if "nprobe" in parameters:
        faiss.extract_index_ivf(index).nprobe = int(parameters["nprobe"])


@dataclass
class SearchResult:
    """The `k` best images of one query: ids, cosine scores and metadata rows (best first), and notes such as a
    truncated query."""

    ids: list[int]
    scores: list[float]
    metadata: list[dict]
    notes: list[str] = field(default_factory=list)


def too_long_texts(tokenizer, texts: Sequence[str], max_length: int) -> list[tuple[str, int]]:
    """(text, its token count) of the texts longer than `max_length` tokens: those are cut, and the user is told."""
    counts = [len(ids) for ids in tokenizer(list(texts), truncation=False)["input_ids"]]
    return [(text, count) for text, count in zip(texts, counts) if count > max_length]


class Index:
    """A built collection index: its vectors (FAISS, memory-mapped), metadata and the model that answers queries.

    ``Index.load(folder).search(texts=["ein Hund am Strand"], k=20)``; texts and images given together form one
    query (the normalised sum of their embeddings)."""

    def __init__(self, folder: Path, manifest: dict, metadata, faiss_index, embedder=None, model: str | None = None):
        self.folder, self.manifest, self.metadata, self.faiss_index = folder, manifest, metadata, faiss_index
        self._embedder, self._model = embedder, model

    @classmethod
    def load(cls, folder: str | Path, model: str | None = None, embedder=None, **embedder_options) -> "Index":
        """The index in `folder`; queries are embedded by `embedder` (an `altclip.common.embedding.Embedder` whose
        model the caller checked with `check_model`) or by `model` (default: the manifest's), loaded on first use."""
        folder = Path(folder).expanduser()
        manifest = read_manifest(folder)
        metadata = read_metadata(folder)
        index_path = folder / INDEX_FILE
        if not index_path.is_file():
            raise CollectionIndexError(f"{index_path}: missing; rebuild the index.")
        faiss_index = read_faiss_index(index_path)
        if faiss_index.ntotal != metadata.num_rows or faiss_index.d != manifest["dim"]:
            raise CollectionIndexError(
                f"{index_path}: {faiss_index.ntotal} vectors of dimension {faiss_index.d}, but {folder / METADATA} has "
                f"{metadata.num_rows} rows and the manifest says dimension {manifest['dim']}; rebuild the index."
            )
        set_search_parameters(faiss_index, manifest["index"].get("parameters", {}))
        index = cls(folder, manifest, metadata, faiss_index, embedder, model)
        index._embedder_options = embedder_options
        return index

    def __len__(self) -> int:
        return self.faiss_index.ntotal

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

            name = self._model or self.manifest["model"]
            model = AltCLIPModel.from_pretrained(name)
            check_finite_weights(model, name)
            processor = AltCLIPProcessor.from_pretrained(name)
            self.check_model(name, weights_fingerprint(model, processor.tokenizer))
            options = {"dtype": "float32", "batch_size": 16, **self._embedder_options}
            self._embedder = Embedder(model, processor, **options)
        return self._embedder

    def query_vector(self, texts: Sequence[str] = (), images: Sequence[Any] = ()) -> tuple[np.ndarray, list[str]]:
        """The unit query vector of `texts` and `images` together, and notes (truncated texts)."""
        import torch
        import torch.nn.functional as F

        texts, images = [t for t in texts if t and t.strip()], list(images)
        if not texts and not images:
            raise CollectionIndexError("give a query: some text, an image, or both.")
        notes, parts = [], []
        if texts:
            limit = self.embedder.max_text_length
            for text, count in too_long_texts(self.embedder.processor.tokenizer, texts, limit):
                notes.append(f"query {text[:40]!r}… has {count} tokens; the model reads the first {limit}.")
            parts.append(self.embedder.texts(texts, "query texts"))
        if images:
            embeddings, _, failures = self.embedder.images(images, "query images")
            if failures:
                raise CollectionIndexError(f"query image {failures[0].where}: cannot be read ({failures[0].reason}).")
            parts.append(embeddings)
        vector = F.normalize(torch.cat(parts).sum(dim=0, keepdim=True), dim=-1)
        return vector.numpy().astype("float32"), notes

    def search_vectors(self, vectors: np.ndarray, k: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row numbers) of the `k` nearest rows of each unit vector in `vectors` ([queries, dim])."""
        vectors = np.ascontiguousarray(vectors, dtype="float32")
        if vectors.ndim != 2 or vectors.shape[1] != self.manifest["dim"]:
            raise CollectionIndexError(
                f"query vectors of shape {vectors.shape}; this index holds dimension {self.manifest['dim']}."
            )
        return self.faiss_index.search(vectors, min(k, len(self)))

    def search(self, texts: Sequence[str] | str = (), images: Sequence[Any] = (), k: int = 20) -> SearchResult:
        """The `k` images nearest to the query made of `texts` and `images` (paths, bytes, PIL images); a text cut to
        the model's length is said in the result's notes."""
        if k < 1:
            raise CollectionIndexError(f"k must be at least 1, got {k}.")
        texts = [texts] if isinstance(texts, str) else list(texts)
        vector, notes = self.query_vector(texts, images)
        scores, rows = self.search_vectors(vector, k)
        found = [int(row) for row in rows[0] if row >= 0]
        metadata = self.metadata.take(found).to_pylist() if found else []
        return SearchResult(
            ids=[row["id"] for row in metadata],
            scores=[float(s) for s in scores[0][: len(found)]],
            metadata=metadata,
            notes=notes,
        )


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
        import pyarrow.parquet

        table, number = location.rsplit("#row=", 1)
        with open_stream(table) as stream:
            cells = pyarrow.parquet.read_table(stream).slice(int(number), 1).to_pylist()[0]
        return open_rgb_image(next(value for value in cells.values() if isinstance(value, (bytes, dict))))
    with open_stream(location) as stream:
        return open_rgb_image(stream.read())
