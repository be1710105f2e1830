"""Building an index: each process embeds its share of the parts (every N-th), writes each part as it finishes
(float16 embeddings + a Parquet table, renamed into place: a killed build resumes with its finished parts), then the
first process gathers the parts into the metadata table, the FAISS index and the manifest.

``add`` embeds only the new sources' parts and gathers again; ``remove`` drops ids and rebuilds the vector index from
the stored embeddings (no image is embedded again in either).
"""

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow
import pyarrow.compute
import pyarrow.parquet
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from altclip.common.embedding import Embedder, model_input_side
from altclip.common.errors import PathError
from altclip.common.files import partial_path, probe_writable, replace_atomically
from altclip.common.images import open_rgb_image
from altclip.common.index_folder import (
    EXACT_VECTORS,
    FORMAT_VERSION,
    INDEX_FILE,
    KEEP_VERSIONS,
    MANIFEST,
    METADATA,
    METADATA_ARROW,
    PARTS,
    SKIPPED,
    VERSIONS,
    CollectionIndexError,
    files_folder,
    read_manifest,
    read_metadata,
    version_name,
    write_metadata_arrow,
)
from altclip.common.records import DataFormatError

from .collection import Part, part_samples, plan_digest
from .vector_index import EXACT_LIMIT, MEMORY_BUDGET, RECALL_TARGET, build_faiss_index, unit_prefix

logger = logging.getLogger(__name__)

PLAN = "plan.json"
LOCK = ".lock"
TUNING_QUERIES = "tuning_queries.npy"  # in a version's folder: the text queries nprobe was tuned on, embedded
PART_COLUMNS = ("location", "caption", "key", "row", "skipped", "sha256")
MAX_TUNING_QUERIES = 1000


@dataclass
class IndexSettings:
    """How the vector index is chosen (kept in the manifest so that ``add`` and ``remove`` choose alike)."""

    memory_budget: int = MEMORY_BUDGET
    exact_limit: int = EXACT_LIMIT
    recall_target: float = RECALL_TARGET
    dims: int | None = None  # Matryoshka: index the first `dims` values of each embedding (None: all)


class PartBatches(IterableDataset):
    """Preprocessed batches of the given parts, each batch inside one part (so batches, hence embeddings, do not
    depend on how many processes or workers share the work); DataLoader workers take every W-th part."""

    def __init__(self, parts: Sequence[tuple[int, Part]], image_processor, batch_size: int, reduced_decoding: bool):
        self.parts, self.image_processor, self.batch_size = list(parts), image_processor, batch_size
        self.min_side = model_input_side(image_processor) if reduced_decoding else None

    def _pixels(self, source) -> tuple[torch.Tensor, str]:
        """The image's pixels and the checksum of its bytes (what duplicate detection compares)."""
        if isinstance(source, Exception):
            raise source
        data = source_bytes(source)
        image = open_rgb_image(data, self.min_side)
        pixels = self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        return pixels, hashlib.sha256(data).hexdigest()[:32]

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        mine = self.parts[worker.id :: worker.num_workers] if worker else self.parts
        for number, part in mine:
            records, pixels = [], []
            for sample in part_samples(part):
                try:
                    image_pixels, checksum = self._pixels(sample.source)
                    pixels.append(image_pixels)
                    records.append((sample.location, sample.caption, sample.key, None, checksum))
                except Exception as error:  # any unreadable image: left out, counted with its location
                    reason = f"{type(error).__name__}: {error}"
                    records.append((sample.location, sample.caption, sample.key, reason, None))
                if len(pixels) == self.batch_size:
                    yield {"part": number, "records": records, "pixels": torch.stack(pixels), "last": False}
                    records, pixels = [], []
            yield {"part": number, "records": records, "pixels": torch.stack(pixels) if pixels else None, "last": True}


def source_bytes(source) -> bytes:
    """The encoded bytes of an image source: a path, bytes, a datasets ``{"bytes", "path"}`` cell or a URL reader."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, dict):
        return source.get("bytes") or Path(source["path"]).read_bytes()
    if hasattr(source, "read"):
        return source.read()
    return Path(source).read_bytes()


_replace_atomically = replace_atomically


def write_part(folder: Path, part: Part, records: list[tuple], embeddings: np.ndarray) -> None:
    """The part's embeddings, then its table (whose presence marks the part finished)."""
    (folder / PARTS).mkdir(parents=True, exist_ok=True)
    _replace_atomically(folder / PARTS / f"{part.name}.npy", lambda path: np.save(open(path, "wb"), embeddings))
    rows, row = [], 0
    for location, caption, key, skipped, checksum in records:
        rows.append((location, caption, key, -1 if skipped else row, skipped, checksum))
        row += skipped is None
    table = pyarrow.table(
        {name: [r[i] for r in rows] for i, name in enumerate(PART_COLUMNS)},
        schema=pyarrow.schema(
            [(n, pyarrow.string()) for n in PART_COLUMNS[:3]]
            + [("row", pyarrow.int64()), ("skipped", pyarrow.string()), ("sha256", pyarrow.string())]
        ),
    )
    _replace_atomically(folder / PARTS / f"{part.name}.parquet", lambda path: pyarrow.parquet.write_table(table, path))


def is_finished(folder: Path, part: Part) -> bool:
    return (folder / PARTS / f"{part.name}.parquet").is_file()


@torch.no_grad()
def embed_parts(
    embedder: Embedder, parts: Sequence[Part], folder: Path, rank: int = 0, world_size: int = 1
) -> dict[str, int]:
    """Embeds this process's unfinished parts (every `world_size`-th from `rank`) into `folder`; counts."""
    mine = [(number, part) for number, part in enumerate(parts) if number % world_size == rank]
    pending = [(number, part) for number, part in mine if not is_finished(folder, part)]
    if len(pending) < len(mine):
        logger.info(
            "Rank %d: %d of its %d parts are already finished; resuming", rank, len(mine) - len(pending), len(mine)
        )
    sizes = [part.size for _, part in pending]
    total = None if None in sizes else sum(sizes)
    dataset = PartBatches(pending, embedder.processor.image_processor, embedder.batch_size, embedder.reduced_decoding)
    loader = DataLoader(dataset, batch_size=None, num_workers=min(embedder.num_workers, len(pending)))
    buffers: dict[int, tuple[list, list]] = {}
    counts = {"images": 0, "skipped": 0}
    by_number = dict(pending)
    bar = tqdm(total=total, unit="img", desc=f"Embedding (process {rank + 1}/{world_size})", smoothing=0.1)
    for batch in loader:
        records, embeddings = buffers.setdefault(batch["part"], ([], []))
        records += batch["records"]
        if batch["pixels"] is not None:
            features = embedder.image_features(batch["pixels"].to(embedder.device, embedder.dtype))
            embeddings.append(F.normalize(features.float(), dim=-1).cpu().numpy().astype(np.float16))
        bar.update(len(batch["records"]))
        if batch["last"]:
            records, embeddings = buffers.pop(batch["part"])
            dim = embedder.model.config.projection_dim
            matrix = np.concatenate(embeddings) if embeddings else np.zeros((0, dim), np.float16)
            if not np.isfinite(matrix).all():
                raise ValueError(f"{by_number[batch['part']].name}: NaN or infinite embeddings; check the model.")
            write_part(folder, by_number[batch["part"]], records, matrix)
            skipped = [record for record in records if record[3]]
            counts["images"] += len(records) - len(skipped)
            counts["skipped"] += len(skipped)
            for location, _, _, reason, _ in skipped[:3]:
                logger.warning("Left out unreadable image %s (%s)", location, reason)
    bar.close()
    return counts


def read_part_table(folder: Path, name: str):
    path = folder / PARTS / f"{name}.parquet"
    try:
        return pyarrow.parquet.read_table(path)
    except (OSError, pyarrow.ArrowInvalid) as error:
        raise CollectionIndexError(f"{path}: corrupt part ({error}); delete it and run the build again.") from None


def part_embeddings(folder: Path, name: str, dim: int, rows: int) -> np.ndarray:
    """A part's float16 embeddings, memory-mapped, checked against its table and the index's dimension."""
    path = folder / PARTS / f"{name}.npy"
    try:
        matrix = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise CollectionIndexError(
            f"{path}: corrupt embedding shard ({error}); delete it and its .parquet, then run the build again."
        ) from None
    if matrix.dtype != np.float16 or matrix.ndim != 2 or matrix.shape != (rows, dim):
        raise CollectionIndexError(
            f"{path}: corrupt embedding shard ({matrix.dtype} {matrix.shape}, expected float16 ({rows}, {dim})); "
            "delete it and its .parquet, then run the build again."
        )
    return matrix


def gather_embeddings(folder: Path, metadata, dim: int) -> np.ndarray:
    """The float32 embeddings of the metadata rows, in their order."""
    parts = metadata.column("part").to_numpy(zero_copy_only=False)
    rows = metadata.column("row").to_numpy()
    vectors = np.empty((len(rows), dim), np.float32)
    for name in dict.fromkeys(parts):
        where = np.flatnonzero(parts == name)
        table = read_part_table(folder, name)
        kept = int((table.column("row").to_numpy() >= 0).sum())
        vectors[where] = part_embeddings(folder, name, dim, kept)[rows[where]]
    return vectors


def metadata_schema() -> pyarrow.Schema:
    return pyarrow.schema(
        [
            ("id", pyarrow.int64()),
            ("location", pyarrow.string()),
            ("caption", pyarrow.string()),
            ("key", pyarrow.string()),
            ("part", pyarrow.string()),
            ("row", pyarrow.int64()),
            ("sha256", pyarrow.string()),
        ]
    )


def with_checksums(table):
    """`table` in the metadata schema; rows of indexes built before checksums get none (never a duplicate)."""
    if "sha256" not in table.column_names:
        table = table.append_column("sha256", pyarrow.nulls(table.num_rows, pyarrow.string()))
    return table.select(metadata_schema().names).cast(metadata_schema())


def tuning_texts(metadata, given: Sequence[str] | None = None) -> tuple[list[str], str]:
    """Text queries to tune the index for, and where they came from: the user's sample, else the collection's own
    captions, else words of its file names (``dog_on_beach.jpg``); at most `MAX_TUNING_QUERIES`, a fixed sample."""

    def sample(texts: list[str]) -> list[str]:
        if len(texts) <= MAX_TUNING_QUERIES:
            return texts
        chosen = np.random.default_rng(0).choice(len(texts), MAX_TUNING_QUERIES, replace=False)
        return [texts[number] for number in sorted(chosen)]

    if given:
        return sample([text for text in dict.fromkeys(given) if text.strip()]), "given"
    captions = [c for c in dict.fromkeys(metadata.column("caption").to_pylist()) if c and c.strip()]
    if captions:
        return sample(captions), "captions"
    names = []
    for location in metadata.column("location").to_pylist():
        words = " ".join(re.split(r"[\W_]+", Path(location.split("#")[0].split("?")[0]).stem)).strip()
        if sum(character.isalpha() for character in words) >= 3 and not re.fullmatch(
            r"(img|dsc|pxl|photo)?[\W\d]*", words.lower()
        ):
            names.append(words)
    names = list(dict.fromkeys(names))
    return (sample(names), "file names") if names else ([], "none")


def build_vector_index(
    folder: Path, metadata, dim: int, settings: IndexSettings, text_queries: np.ndarray | None = None
) -> tuple[object, dict]:
    """The FAISS index over the metadata rows (their Matryoshka prefix with ``settings.dims``), tuned for
    `text_queries` too; its description for the manifest."""
    if metadata.num_rows == 0:
        raise CollectionIndexError(f"{folder}: no image left to index.")
    started = time.perf_counter()
    index_dim = settings.dims or dim
    vectors = gather_embeddings(folder, metadata, dim)
    queries = text_queries if text_queries is not None and len(text_queries) else None
    if index_dim < dim:  # all dimensions: the stored vectors as they are (normalised when embedded)
        vectors = unit_prefix(vectors, index_dim)
        queries = unit_prefix(queries, index_dim) if queries is not None else None
    index, description = build_faiss_index(
        vectors, settings.memory_budget, settings.exact_limit, settings.recall_target, text_queries=queries
    )
    description["seconds"] = round(time.perf_counter() - started, 2)
    return index, description


@contextmanager
def writer_lock(folder: Path) -> Iterator[None]:
    """One writer (``--add``, ``remove``) at a time in `folder`; refuses a folder it cannot write, in one line,
    before any work."""
    try:
        probe_writable(folder)
        handle = open(folder / LOCK, "a")
    except OSError as error:
        raise PathError(
            f"{folder}: cannot write there ({error.strerror or error}); copy the index to a writable folder to change "
            "it (searching it needs no write access)."
        ) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def publish_version(folder: Path, manifest: dict, metadata, skipped, index, text_queries: np.ndarray | None) -> dict:
    """Writes a new version's folder aside, renames it into ``versions/``, then replaces ``manifest.json`` (the one
    rename that publishes it: a reader sees the old version or the new one, never a mix); prunes old versions."""
    import faiss

    previous = read_manifest(folder) if (folder / MANIFEST).is_file() else None
    number = (previous.get("version", 0) if previous else 0) + 1
    (folder / VERSIONS).mkdir(exist_ok=True)
    target = folder / VERSIONS / version_name(number)
    manifest = {**manifest, "format": FORMAT_VERSION, "version": number, "files": f"{VERSIONS}/{target.name}"}
    staging = partial_path(target)
    staging.mkdir()
    try:
        pyarrow.parquet.write_table(metadata, staging / METADATA)
        write_metadata_arrow(metadata, staging / METADATA_ARROW)  # what servers memory-map
        pyarrow.parquet.write_table(skipped, staging / SKIPPED)
        faiss.write_index(index, str(staging / INDEX_FILE))
        if manifest["index"].get("exact"):  # np.save aligns the data to 64 bytes; FAISS's file leaves it unaligned
            codes = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
            np.save(staging / EXACT_VECTORS, codes)
        if text_queries is not None:
            np.save(staging / TUNING_QUERIES, np.asarray(text_queries, np.float16))
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        if target.exists():  # written by a writer that died before publishing it: never read by anyone
            shutil.rmtree(target)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_manifest(folder, manifest)
    for old in (folder / VERSIONS).iterdir():
        stale = old.name.isdigit() and int(old.name) <= number - KEEP_VERSIONS
        if stale or old.name.endswith(".partial"):  # the lock is held: no other writer's partial folder is live
            shutil.rmtree(old, ignore_errors=True)
    return manifest


def previous_text_queries(folder: Path, manifest: dict | None) -> np.ndarray | None:
    path = files_folder(folder, manifest) / TUNING_QUERIES if manifest else None
    return np.load(path).astype(np.float32) if path is not None and path.is_file() else None


def finalize(
    folder: Path,
    parts: Sequence[Part],
    model: str | dict,
    fingerprint: str,
    dim: int,
    settings: IndexSettings,
    sources: Sequence[str],
    digest: str,
    embed_texts: Callable[[list[str]], np.ndarray] | None = None,
    tune_queries: Sequence[str] | None = None,
    repeated: int = 0,
    text_query_vectors: np.ndarray | None = None,
) -> dict:
    """Gathers the finished parts (after those of an existing index) into metadata, vector index and manifest, and
    publishes them as a new version. Images whose bytes are indexed already are left out and counted; the index is
    tuned for text queries (`tune_queries`, else captions or file names, embedded by `embed_texts`)."""
    with writer_lock(folder):
        previous = read_manifest(folder) if (folder / MANIFEST).is_file() else None
        old_parts = previous["parts"] if previous else []
        tables, skipped = [], []
        if previous:
            old = with_checksums(read_metadata(files_folder(folder, previous)))
            tables.append(old.filter(pyarrow.compute.is_in(old["part"], pyarrow.array(old_parts))))
            if (files_folder(folder, previous) / SKIPPED).is_file():
                skipped.append(pyarrow.parquet.read_table(files_folder(folder, previous) / SKIPPED))
        known = {checksum for table in tables for checksum in table.column("sha256").to_pylist() if checksum}
        next_id, duplicates = (previous["next_id"] if previous else 0), 0
        for part in parts:
            table = read_part_table(folder, part.name)
            kept = table.filter(pyarrow.compute.greater_equal(table["row"], 0))
            checksums = kept["sha256"].to_pylist() if "sha256" in kept.column_names else [None] * kept.num_rows
            first_copy = []
            for checksum in checksums:
                first_copy.append(checksum is None or checksum not in known)
                known.add(checksum)
            duplicates += first_copy.count(False)
            kept = kept.filter(pyarrow.array(first_copy, pyarrow.bool_()))
            tables.append(
                pyarrow.table(
                    {
                        "id": pyarrow.array(range(next_id, next_id + kept.num_rows), pyarrow.int64()),
                        "location": kept["location"],
                        "caption": kept["caption"],
                        "key": kept["key"],
                        "part": pyarrow.array([part.name] * kept.num_rows, pyarrow.string()),
                        "row": kept["row"],
                        "sha256": pyarrow.array(
                            [c for c, first in zip(checksums, first_copy) if first], pyarrow.string()
                        ),
                    },
                    schema=metadata_schema(),
                )
            )
            next_id += kept.num_rows
            bad = table.filter(pyarrow.compute.less(table["row"], 0))
            skipped.append(pyarrow.table({"location": bad["location"], "reason": bad["skipped"]}))
        metadata = pyarrow.concat_tables([with_checksums(t) for t in tables])
        skipped_table = pyarrow.concat_tables(skipped) if skipped else pyarrow.table({"location": [], "reason": []})
        if metadata.num_rows == 0:
            first = skipped_table.slice(0, 1).to_pylist()
            example = f"{first[0]['location']}: {first[0]['reason']}" if first else "none"
            raise CollectionIndexError(f"none of the {skipped_table.num_rows} images could be read (first: {example}).")
        texts, origin = tuning_texts(metadata, tune_queries)
        if text_query_vectors is not None:  # embedded elsewhere (`index_from_vectors`)
            text_queries, origin = np.asarray(text_query_vectors, np.float32), "given vectors"
        elif texts and embed_texts is not None:
            text_queries = np.asarray(embed_texts(texts), np.float32)
        else:
            text_queries, origin = previous_text_queries(folder, previous), "earlier version"
            origin = origin if text_queries is not None else "none"
        index, description = build_vector_index(folder, metadata, dim, settings, text_queries)
        description["text_queries_from"] = origin
        before = previous["counts"] if previous else {}
        manifest = {
            **(model if isinstance(model, dict) else {"model": model}),
            "fingerprint": fingerprint,
            "dim": dim,
            "index_dim": settings.dims or dim,
            "counts": {
                "images": metadata.num_rows,
                "skipped": skipped_table.num_rows,
                "removed": before.get("removed", 0),
                "parts": len(old_parts) + len(parts),
                "duplicates": before.get("duplicates", 0) + duplicates,
                "repeated_locations": before.get("repeated_locations", 0) + repeated,
            },
            "index": description,
            "index_settings": settings.__dict__,
            "parts": [*old_parts, *(part.name for part in parts)],
            "next_id": next_id,
            "sources": [*(previous["sources"] if previous else []), *sources],
            "plan_digest": digest,
        }
        return publish_version(folder, manifest, metadata, skipped_table, index, text_queries)


def write_manifest(folder: Path, manifest: dict) -> None:
    _replace_atomically(
        folder / MANIFEST, lambda path: path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    )


def remove_ids(folder: Path, ids: Sequence[int]) -> dict:
    """Drops `ids` from the index as a new version (metadata and vector index; the stored embeddings stay)."""
    read_manifest(folder)
    with writer_lock(folder):
        manifest = read_manifest(folder)
        files = files_folder(folder, manifest)
        metadata = with_checksums(read_metadata(files))
        present = set(metadata.column("id").to_pylist())
        unknown = sorted(set(ids) - present)
        if unknown:
            raise CollectionIndexError(
                f"{folder}: no image with id {', '.join(map(str, unknown[:10]))}; nothing removed."
            )
        kept = metadata.filter(pyarrow.compute.invert(pyarrow.compute.is_in(metadata["id"], pyarrow.array(list(ids)))))
        settings = IndexSettings(**manifest.get("index_settings", {}))
        text_queries = previous_text_queries(folder, manifest)
        index, description = build_vector_index(folder, kept, manifest["dim"], settings, text_queries)
        description["text_queries_from"] = manifest["index"].get("text_queries_from", "none")
        skipped = pyarrow.parquet.read_table(files / SKIPPED) if (files / SKIPPED).is_file() else None
        skipped = skipped if skipped is not None else pyarrow.table({"location": [], "reason": []})
        manifest["index"] = description
        manifest["counts"].update(images=kept.num_rows, removed=manifest["counts"]["removed"] + len(set(ids)))
        return publish_version(folder, manifest, kept, skipped, index, text_queries)


def check_plan(folder: Path, parts: Sequence[Part], rank: int) -> str:
    """The plan's digest; a build resumed in `folder` must cut the same parts (same sources, same settings)."""
    digest = plan_digest(parts)
    path = folder / PLAN
    finished_digest = read_manifest(folder).get("plan_digest") if (folder / MANIFEST).is_file() else None
    if path.is_file():
        written = json.loads(path.read_text())["digest"]
        if written not in (digest, finished_digest):
            raise DataFormatError(
                f"{path}: an unfinished build of other sources or settings is in {folder}; run it again as it was, "
                "or build into another --output."
            )
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        plan = {"digest": digest, "parts": [part.name for part in parts]}
        _replace_atomically(path, lambda p: p.write_text(json.dumps(plan) + "\n"))
    return digest


def process_group() -> tuple[int, int]:
    """(rank, world size) of a torchrun / accelerate launch (gloo: only barriers travel), or (0, 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", timeout=timedelta(hours=48))  # a share may take hours
    return int(os.environ.get("RANK", "0")), world_size


def wait_for_everyone(world_size: int) -> None:
    if world_size > 1:
        torch.distributed.barrier()


def index_from_vectors(
    folder: Path,
    vectors: np.ndarray,
    locations: Sequence[str],
    captions: Sequence[str | None] | None = None,
    settings: IndexSettings | None = None,
    model: str = "none",
    fingerprint: str = "none",
    part_size: int = 100_000,
    text_query_vectors: np.ndarray | None = None,
) -> dict:
    """An index folder over embeddings computed elsewhere (unit float vectors, one per location), as ``altclip-index
    build`` would write it: for benchmarks and tests at sizes no CPU embeds, and for collections embedded by another
    program. Its manifest names `model`; searching it by text needs that model."""
    folder.mkdir(parents=True, exist_ok=True)
    captions = list(captions) if captions is not None else [None] * len(locations)
    parts = []
    for number, start in enumerate(range(0, len(vectors), part_size)):
        stop = min(start + part_size, len(vectors))
        part = Part(f"part-{number:05d}", "files", items=list(zip(locations[start:stop], captions[start:stop])))
        records = [(loc, cap, None, None, None) for loc, cap in part.items]
        write_part(folder, part, records, np.asarray(vectors[start:stop], np.float16))
        parts.append(part)
    settings, dim = settings or IndexSettings(), vectors.shape[1]
    return finalize(folder, parts, model, fingerprint, dim, settings, [], "", text_query_vectors=text_query_vectors)
