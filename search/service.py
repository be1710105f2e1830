"""What ``altclip-serve`` does between HTTP and the indices: several indices by name, one query model per fingerprint
loaded once, concurrent queries gathered into batches by one thread, new index versions picked up without a restart.

One thread answers every query (`QueryBatcher`): it takes whatever queued while it was busy, embeds the texts in one
batch and the images in one batch, and searches each index once per page size. Torch and FAISS then run one batch at a
time with all cores, instead of N request threads contending for two; and index reloads happen between batches, so a
query is answered by one whole version.
"""

import concurrent.futures
import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from altclip.common.collection_index import CollectionIndexError, Index, SearchResult
from altclip.common.errors import UsageError

from .metrics import Metrics

logger = logging.getLogger(__name__)


@dataclass
class Query:
    """One search: text, image bytes (uploaded or fetched), both, or an embedding; a page of `k` from `offset`."""

    index: str
    texts: list[str] = field(default_factory=list)
    images: list[bytes] = field(default_factory=list)
    embedding: Sequence[float] | None = None
    k: int = 10
    offset: int = 0
    deduplicate: bool | float = False

    @property
    def kind(self) -> str:
        if self.embedding is not None:
            return "embedding"
        return "+".join(name for name, given in (("text", self.texts), ("image", self.images)) if given)


class UnknownIndexError(UsageError):
    """A query naming an index the server does not serve."""


class SearchService:
    """The served indices (name -> `Index`, reloaded when a new version is published) and their query embedders."""

    def __init__(self, folders: dict[str, str | Path], model: str | None = None, load_model: bool = True, **options):
        if not folders:
            raise UsageError("give at least one index folder to serve.")
        self.indices = {name: Index.load(folder, model=model, **options) for name, folder in folders.items()}
        self.default = next(iter(self.indices))
        if load_model:  # once per model, now: the first query is not slow, and a missing model stops the start
            embedders = {}
            for index in self.indices.values():
                fingerprint = index.manifest["fingerprint"]
                if fingerprint not in embedders:
                    embedders[fingerprint] = index.embedder
                index._embedder = embedders[fingerprint]
        self.metrics = Metrics()
        self.batcher = QueryBatcher(self)
        self._reload_lock = threading.Lock()

    def index(self, name: str | None) -> Index:
        """The newest published version of the index `name` (default: the first served)."""
        name = name or self.default
        if name not in self.indices:
            raise UnknownIndexError(f"index {name!r}: not served here; served: {', '.join(self.indices)}.")
        with self._reload_lock:
            current = self.indices[name]
            newer = current.reload()
            if newer is not current:
                logger.info("%s: version %d published; now serving it", name, newer.version)
                self.indices[name] = newer
            return newer

    def answer(self, queries: Sequence[Query]) -> list[SearchResult | Exception]:
        """The result of each query, or the exception that query alone raised (the others are answered)."""
        answers: list[SearchResult | Exception | None] = [None] * len(queries)
        vectors: dict[int, np.ndarray] = {}
        notes: dict[int, list[str]] = defaultdict(list)
        indices: dict[int, Index] = {}
        for number, query in enumerate(queries):
            try:
                indices[number] = self.index(query.index)
            except Exception as error:
                answers[number] = error
        live = [number for number in indices]
        texts = [n for n in live if queries[n].texts and not queries[n].images and queries[n].embedding is None]
        images = [n for n in live if queries[n].images and not queries[n].texts and queries[n].embedding is None]
        for number in live:
            query = queries[number]
            try:
                if query.embedding is not None:
                    vectors[number] = indices[number].prepare(query.embedding)[0]
                elif number not in texts and number not in images:  # text and image: their normalised sum
                    vector, notes[number] = indices[number].query_vector(query.texts, query.images)
                    vectors[number] = vector[0]
            except Exception as error:
                answers[number] = error
        self._embed_texts([n for n in texts if answers[n] is None], queries, indices, vectors, notes, answers)
        self._embed_images([n for n in images if answers[n] is None], queries, indices, vectors, answers)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for number in vectors:
            query = queries[number]
            groups[(id(indices[number]), query.k, query.offset, query.deduplicate)].append(number)
        for (_, k, offset, deduplicate), numbers in groups.items():
            index = indices[numbers[0]]
            try:
                found = index.results(
                    np.stack([vectors[n] for n in numbers]), k, offset, deduplicate, [notes[n] for n in numbers]
                )
                for number, result in zip(numbers, found):
                    answers[number] = result
            except Exception as error:
                for number in numbers:
                    answers[number] = error
        return answers

    def _embed_texts(self, numbers, queries, indices, vectors, notes, answers) -> None:
        """One text batch per query model."""
        by_model: dict[int, list[int]] = defaultdict(list)
        for number in numbers:
            by_model[id(indices[number].embedder)].append(number)
        for members in by_model.values():
            index = indices[members[0]]
            single = [n for n in members if len(queries[n].texts) == 1]
            for number in set(members) - set(single):  # several texts: their normalised sum, one query at a time
                try:
                    vector, notes[number] = indices[number].query_vector(queries[number].texts)
                    vectors[number] = vector[0]
                except Exception as error:
                    answers[number] = error
            if not single:
                continue
            try:
                batch = [queries[n].texts[0] for n in single]
                embedded = index.embedder.texts(batch, "query texts").numpy()
                for number, text, vector in zip(single, batch, embedded):
                    vectors[number] = vector
                    notes[number] = index.text_notes([text])
            except Exception as error:
                for number in single:
                    answers[number] = error

    def _embed_images(self, numbers, queries, indices, vectors, answers) -> None:
        """One image batch per query model; an unreadable image fails its own query only."""
        by_model: dict[int, list[int]] = defaultdict(list)
        for number in numbers:
            by_model[id(indices[number].embedder)].append(number)
        for members in by_model.values():
            embedder = indices[members[0]].embedder
            sources = [image for n in members for image in queries[n].images]
            owners = [n for n in members for _ in queries[n].images]
            try:
                embedded, kept, failures = embedder.images(sources, "query images", allow_none=True)
            except Exception as error:
                for number in members:
                    answers[number] = error
                continue
            sums: dict[int, np.ndarray] = {}
            for position, vector in zip(kept, embedded.numpy()):
                sums[owners[position]] = sums.get(owners[position], 0) + vector
            for number in members:
                if number in sums and len(queries[number].images) == sum(owners[p] == number for p in kept):
                    vectors[number] = sums[number]
                else:
                    reason = failures[0].reason if len(failures) == 1 else "not a readable image file"
                    answers[number] = CollectionIndexError(f"image: cannot be read as an image ({reason}).")

    def close(self) -> None:
        self.batcher.close()


class QueryBatcher:
    """One thread answering the queries queued while it was busy, up to `max_batch` at a time."""

    def __init__(self, service: SearchService, max_batch: int = 64):
        self.service, self.max_batch = service, max_batch
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="altclip-serve-batches", daemon=True)
        self.thread.start()

    def submit(self, query: Query) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.queue.put((query, future))
        return future

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.queue.put(None)
                    break
                batch.append(item)
            self.service.metrics.observe_batch(len(batch))
            try:
                answers = self.service.answer([query for query, _ in batch])
            except Exception as error:  # a defect: every query of the batch gets it; the thread goes on
                logger.exception("Answering a batch of %d queries failed", len(batch))
                answers = [error] * len(batch)
            for (_, future), answer in zip(batch, answers):
                if isinstance(answer, Exception):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10)
