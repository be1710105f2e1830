"""Features computed once by a frozen tower and reused: the stage-1 teacher's text features (sharded, written by
all ranks in parallel) and the stage-2 image embeddings of a frozen image tower (filled during the first epoch).

Both are half-precision, memory-mapped `.npy` files in a folder whose name is a fingerprint of everything that
determines them (weights, tokenizer or image processor, dtype, length, corpus), so nothing stale is ever reused.
`numpy` memmaps rather than a `datasets` table: rows are written in place by several processes and read by row
number, which Arrow files (immutable once written) do not offer.
"""

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

STORED_DTYPE = np.float16
MANIFEST = "manifest.json"
WAIT_LOG_SECONDS = 60.0


def module_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameter and buffer names, dtypes and bytes: the weights, not only the config."""
    digest = hashlib.sha256()
    for name, tensor in sorted({**dict(module.named_parameters()), **dict(module.named_buffers())}.items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def fingerprint(parts: dict) -> str:
    """A short stable digest of JSON-able `parts`."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _save_atomically(path: Path, array: np.ndarray) -> None:
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as handle:
        np.save(handle, array)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


class ShardedFeatures:
    """[rows, width] features stored as `shard_rows`-row `.npy` shards; `features[indices]` reads rows lazily
    (each process, DataLoader workers included, maps the shards it touches)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        manifest = json.loads((self.folder / MANIFEST).read_text())
        self.rows, self.width, self.shard_rows = manifest["rows"], manifest["width"], manifest["shard_rows"]
        self.shard_names = manifest["shards"]
        self._maps: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}  # workers map the files themselves

    def __len__(self) -> int:
        return self.rows

    def _shard(self, number: int) -> np.ndarray:
        if number not in self._maps:
            self._maps[number] = np.load(self.folder / self.shard_names[number], mmap_mode="r")
        return self._maps[number]

    def __getitem__(self, indices: Sequence[int]) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), self.width), dtype=STORED_DTYPE)
        shards, rows = np.divmod(indices, self.shard_rows)
        for shard in np.unique(shards):  # one fancy-indexed read per shard the batch touches, not one per row
            chosen = shards == shard
            out[chosen] = self._shard(int(shard))[rows[chosen]]
        return out


def shard_names(rows: int, shard_rows: int) -> list[str]:
    return [f"features-{number:05d}.npy" for number in range((rows + shard_rows - 1) // shard_rows)]


def compute_sharded_features(
    folder: str | os.PathLike,
    rows: int,
    width: int,
    encode: Callable[[int, int], np.ndarray],
    rank: int = 0,
    world_size: int = 1,
    shard_rows: int = 65_536,
    key: dict | None = None,
    poll_seconds: float = 2.0,
) -> ShardedFeatures:
    """Computes `encode(start, stop)` for every shard not on disk yet, shard j by rank j % world_size, each
    written once (atomically); then waits for the other ranks' shards by looking at the folder, without a
    collective that a long precompute could time out. A run killed halfway keeps its finished shards."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = shard_names(rows, shard_rows)
    mine = [number for number in range(len(names)) if number % world_size == rank]
    missing = [number for number in mine if not (folder / names[number]).is_file()]
    if missing:
        logger.info("Rank %d computes %d of %d feature shards in %s", rank, len(missing), len(names), folder)
    for done, number in enumerate(missing, 1):
        start = number * shard_rows
        features = np.asarray(encode(start, min(start + shard_rows, rows)), dtype=STORED_DTYPE)
        _save_atomically(folder / names[number], features)
        logger.info("Wrote feature shard %s (%d/%d of this rank)", names[number], done, len(missing))
    last_log = time.monotonic()
    while not all((folder / name).is_file() for name in names):
        if time.monotonic() - last_log > WAIT_LOG_SECONDS:
            waiting = sum(not (folder / name).is_file() for name in names)
            logger.info("Rank %d waits for %d feature shards of other ranks in %s", rank, waiting, folder)
            last_log = time.monotonic()
        time.sleep(poll_seconds)
    manifest = {"rows": rows, "width": width, "shard_rows": shard_rows, "shards": names, "key": key or {}}
    if rank == 0 and not (folder / MANIFEST).is_file():
        partial = folder / f"{MANIFEST}.partial"
        partial.write_text(json.dumps(manifest, indent=2))
        os.replace(partial, folder / MANIFEST)
    while not (folder / MANIFEST).is_file():
        time.sleep(poll_seconds)
    return ShardedFeatures(folder)


class ImageEmbeddingCache:
    """Image embeddings of a frozen tower by table row: ``embeds.npy`` (float16 [rows, width]) and ``filled.npy``
    (1 where a row was written). Rows are written by whichever rank trains them in the first epoch and read
    afterwards, also by DataLoader workers, so later epochs neither decode those images nor run the tower. The
    folder must be shared by all ranks (one machine, or a shared file system)."""

    def __init__(self, folder: str | os.PathLike, rows: int, width: int):
        self.folder, self.rows, self.width = Path(folder), rows, width
        self._embeds = self._filled = None
        self._writable = False

    @classmethod
    def create(cls, folder: str | os.PathLike, rows: int, width: int, key: dict) -> "ImageEmbeddingCache":
        """Creates the (sparse) files unless an earlier run left them; call on one process before the others."""
        cache = cls(folder, rows, width)
        cache.folder.mkdir(parents=True, exist_ok=True)
        if not (cache.folder / MANIFEST).is_file():
            for name, shape, dtype in (("embeds.npy", (rows, width), STORED_DTYPE), ("filled.npy", (rows,), np.uint8)):
                np.lib.format.open_memmap(cache.folder / name, mode="w+", dtype=dtype, shape=shape).flush()
            (cache.folder / MANIFEST).write_text(json.dumps({"rows": rows, "width": width, "key": key}, indent=2))
        return cache

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_embeds": None, "_filled": None, "_writable": False}

    def _open(self, writable: bool) -> None:
        if self._embeds is None or (writable and not self._writable):
            mode = "r+" if writable else "r"
            self._embeds = np.load(self.folder / "embeds.npy", mmap_mode=mode)
            self._filled = np.load(self.folder / "filled.npy", mmap_mode=mode)
            self._writable = writable

    def get(self, row: int) -> np.ndarray | None:
        """The row's embedding, or None when it has not been computed yet."""
        self._open(writable=False)
        return np.array(self._embeds[row]) if self._filled[row] else None

    def put(self, rows: Sequence[int], embeds: torch.Tensor) -> None:
        self._open(writable=True)
        rows = np.asarray(rows, dtype=np.int64)
        self._embeds[rows] = embeds.detach().float().cpu().numpy().astype(STORED_DTYPE)
        self._filled[rows] = 1  # after the embedding: a reader never sees a flag without its row

    def filled_rows(self) -> int:
        self._open(writable=False)
        return int(np.count_nonzero(self._filled))
