"""Building an index: each process embeds its share of the parts (every N-th), writes each part as it finishes
(float16 embeddings + a Parquet table, renamed into place: a killed build resumes with its finished parts), then the
first process gathers the parts into the metadata table, the FAISS index and the manifest.

``add`` embeds only the new sources' parts and gathers again; ``remove`` drops ids and rebuilds the vector index from
the stored embeddings (no image is embedded again in either).
"""

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
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

from altclip.common.collection_index import (
    FORMAT_VERSION,
    INDEX_FILE,
    MANIFEST,
    METADATA,
    PARTS,
    CollectionIndexError,
    read_manifest,
    read_metadata,
)
from altclip.common.embedding import Embedder, model_input_side
from altclip.common.images import open_rgb_image
from altclip.common.records import DataFormatError

from .collection import Part, part_samples, plan_digest
from .vector_index import EXACT_LIMIT, MEMORY_BUDGET, RECALL_TARGET, build_faiss_index

logger = logging.getLogger(__name__)

PLAN = "plan.json"
SKIPPED = "skipped.parquet"
PART_COLUMNS = ("location", "caption", "key", "row", "skipped")


@dataclass
class IndexSettings:
    """How the vector index is chosen (kept in the manifest so that ``add`` and ``remove`` choose alike)."""

    memory_budget: int = MEMORY_BUDGET
    exact_limit: int = EXACT_LIMIT
    recall_target: float = RECALL_TARGET


class PartBatches(IterableDataset):
    """Preprocessed batches of the given parts, each batch inside one part (so batches, hence embeddings, do not
    depend on how many processes or workers share the work); DataLoader workers take every W-th part."""

    def __init__(self, parts: Sequence[tuple[int, Part]], image_processor, batch_size: int, reduced_decoding: bool):
        self.parts, self.image_processor, self.batch_size = list(parts), image_processor, batch_size
        self.min_side = model_input_side(image_processor) if reduced_decoding else None

    def _pixels(self, source) -> torch.Tensor:
        if isinstance(source, Exception):
            raise source
        image = open_rgb_image(source, self.min_side)
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        mine = self.parts[worker.id :: worker.num_workers] if worker else self.parts
        for number, part in mine:
            records, pixels = [], []
            for sample in part_samples(part):
                try:
                    pixels.append(self._pixels(sample.source))
                    records.append((sample.location, sample.caption, sample.key, None))
                except Exception as error:  # any unreadable image: left out, counted with its location
                    records.append((sample.location, sample.caption, sample.key, f"{type(error).__name__}: {error}"))
                if len(pixels) == self.batch_size:
                    yield {"part": number, "records": records, "pixels": torch.stack(pixels), "last": False}
                    records, pixels = [], []
            yield {"part": number, "records": records, "pixels": torch.stack(pixels) if pixels else None, "last": True}


def _replace_atomically(path: Path, write) -> None:
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    os.replace(temporary, path)


def write_part(folder: Path, part: Part, records: list[tuple], embeddings: np.ndarray) -> None:
    """The part's embeddings, then its table (whose presence marks the part finished)."""
    (folder / PARTS).mkdir(parents=True, exist_ok=True)
    _replace_atomically(folder / PARTS / f"{part.name}.npy", lambda path: np.save(open(path, "wb"), embeddings))
    rows, row = [], 0
    for location, caption, key, skipped in records:
        rows.append((location, caption, key, -1 if skipped else row, skipped))
        row += skipped is None
    table = pyarrow.table(
        {name: [r[i] for r in rows] for i, name in enumerate(PART_COLUMNS)},
        schema=pyarrow.schema(
            [(n, pyarrow.string()) for n in PART_COLUMNS[:3]]
            + [("row", pyarrow.int64()), ("skipped", pyarrow.string())]
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
            for location, _, _, reason in skipped[:3]:
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
        ]
    )


def write_vector_index(folder: Path, metadata, dim: int, settings: IndexSettings) -> dict:
    """The FAISS index over the metadata rows, written in place; its description for the manifest."""
    import faiss

    if metadata.num_rows == 0:
        raise CollectionIndexError(f"{folder}: no image left to index.")
    started = time.perf_counter()
    vectors = gather_embeddings(folder, metadata, dim)
    index, description = build_faiss_index(
        vectors, settings.memory_budget, settings.exact_limit, settings.recall_target
    )
    _replace_atomically(folder / INDEX_FILE, lambda path: faiss.write_index(index, str(path)))
    description["seconds"] = round(time.perf_counter() - started, 2)
    return description


def finalize(
    folder: Path,
    parts: Sequence[Part],
    model: str,
    fingerprint: str,
    dim: int,
    settings: IndexSettings,
    sources: Sequence[str],
    digest: str,
) -> dict:
    """Gathers the finished parts (after those of an existing index) into metadata, vector index and manifest."""
    previous = read_manifest(folder) if (folder / MANIFEST).is_file() else None
    old_parts = previous["parts"] if previous else []
    tables, skipped = [], []
    if previous:
        old = read_metadata(folder)
        tables.append(old.filter(pyarrow.compute.is_in(old["part"], pyarrow.array(old_parts))))
        if (folder / SKIPPED).is_file():
            skipped.append(pyarrow.parquet.read_table(folder / SKIPPED))
    next_id = previous["next_id"] if previous else 0
    for part in parts:
        table = read_part_table(folder, part.name)
        kept = table.filter(pyarrow.compute.greater_equal(table["row"], 0))
        tables.append(
            pyarrow.table(
                {
                    "id": pyarrow.array(range(next_id, next_id + kept.num_rows), pyarrow.int64()),
                    "location": kept["location"],
                    "caption": kept["caption"],
                    "key": kept["key"],
                    "part": pyarrow.array([part.name] * kept.num_rows, pyarrow.string()),
                    "row": kept["row"],
                },
                schema=metadata_schema(),
            )
        )
        next_id += kept.num_rows
        bad = table.filter(pyarrow.compute.less(table["row"], 0))
        skipped.append(pyarrow.table({"location": bad["location"], "reason": bad["skipped"]}))
    metadata = pyarrow.concat_tables([t.cast(metadata_schema()) for t in tables])
    skipped_table = pyarrow.concat_tables(skipped) if skipped else pyarrow.table({"location": [], "reason": []})
    if metadata.num_rows == 0:
        first = skipped_table.slice(0, 1).to_pylist()
        example = f"{first[0]['location']}: {first[0]['reason']}" if first else "none"
        raise CollectionIndexError(f"none of the {skipped_table.num_rows} images could be read (first: {example}).")
    _replace_atomically(folder / METADATA, lambda path: pyarrow.parquet.write_table(metadata, path))
    _replace_atomically(folder / SKIPPED, lambda path: pyarrow.parquet.write_table(skipped_table, path))
    description = write_vector_index(folder, metadata, dim, settings)
    manifest = {
        "format": FORMAT_VERSION,
        "model": model,
        "fingerprint": fingerprint,
        "dim": dim,
        "counts": {
            "images": metadata.num_rows,
            "skipped": skipped_table.num_rows,
            "removed": previous["counts"]["removed"] if previous else 0,
            "parts": len(old_parts) + len(parts),
        },
        "index": description,
        "index_settings": settings.__dict__,
        "parts": [*old_parts, *(part.name for part in parts)],
        "next_id": next_id,
        "sources": [*(previous["sources"] if previous else []), *sources],
        "plan_digest": digest,
    }
    write_manifest(folder, manifest)
    return manifest


def write_manifest(folder: Path, manifest: dict) -> None:
    _replace_atomically(
        folder / MANIFEST, lambda path: path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    )


def remove_ids(folder: Path, ids: Sequence[int]) -> dict:
    """Drops `ids` from the index (metadata and vector index; the stored embeddings stay for a later rebuild)."""
    manifest = read_manifest(folder)
    metadata = read_metadata(folder)
    present = set(metadata.column("id").to_pylist())
    unknown = sorted(set(ids) - present)
    if unknown:
        raise CollectionIndexError(f"{folder}: no image with id {', '.join(map(str, unknown[:10]))}; nothing removed.")
    kept = metadata.filter(pyarrow.compute.invert(pyarrow.compute.is_in(metadata["id"], pyarrow.array(list(ids)))))
    settings = IndexSettings(**manifest.get("index_settings", {}))
    description = write_vector_index(folder, kept, manifest["dim"], settings)
    _replace_atomically(folder / METADATA, lambda path: pyarrow.parquet.write_table(kept, path))
    manifest["index"] = description
    manifest["counts"].update(images=kept.num_rows, removed=manifest["counts"]["removed"] + len(set(ids)))
    write_manifest(folder, manifest)
    return manifest


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
