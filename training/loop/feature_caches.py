"""Features computed once by a frozen tower and reused: the stage-1 teacher's text features (sharded, written by
all ranks in parallel) and the stage-2 image embeddings of a frozen image tower (stored during the first epoch).

Both are half-precision `.npy` shards, each written once by one process and put in place with an atomic rename,
in a folder whose name is a fingerprint of everything that determines them (weights, tokenizer or image processor,
dtype, length, corpus), with a ``manifest.json`` that only global rank 0 writes; nothing stale is reused. A shard
or manifest found damaged (cut short, another shape or size, non-finite values) is named in one warning and computed
again; an OSError with an errno (too many open files, NFS trouble) is never taken for damage. `numpy` memmaps rather
than a `datasets` table: rows are read by row number by many processes without loading whole shards; each process
keeps at most `OPEN_MAPS` of them open.
"""

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from altclip.common.errors import InputDataError, PathError
from altclip.common.files import PARTIAL_SUFFIX, replace_atomically

logger = logging.getLogger(__name__)

STORED_DTYPE = np.float16
MANIFEST = "manifest.json"
INDEX = "index.json"
WAIT_LOG_SECONDS = 60.0
MANIFEST_READ_ATTEMPTS = 4
OPEN_MAPS = 128  # memory-mapped shards kept open per process: each holds a file descriptor


def is_transient(error: BaseException) -> bool:
    """An OSError from the system (too many open files, a file renamed away, NFS trouble) says nothing about the
    file's contents; numpy's own complaints about a garbled file carry no errno."""
    return isinstance(error, OSError) and error.errno is not None


class OpenMaps:
    """At most `limit` memory-mapped `.npy` files open at once, the least recently used closed first: a process
    reading thousands of shards never runs out of file descriptors ("Too many open files")."""

    def __init__(self, limit: int | None = None):
        self.limit = limit or OPEN_MAPS
        self._maps: OrderedDict[Path, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._maps)

    def get(self, path: Path) -> np.ndarray:
        """The map of `path` (opened now if needed); OSError and numpy's errors pass to the caller."""
        if path in self._maps:
            self._maps.move_to_end(path)
            return self._maps[path]
        while len(self._maps) >= self.limit:
            self._maps.popitem(last=False)  # the last reference: numpy's memmap closes its mmap and descriptor
        array = np.load(path, mmap_mode="r")
        self._maps[path] = array
        return array

    def clear(self) -> None:
        self._maps.clear()


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
    def write(partial: Path) -> None:
        with open(partial, "wb") as handle:
            np.save(handle, array)
            handle.flush()
            os.fsync(handle.fileno())

    replace_atomically(path, write)


def _write_json_atomically(path: Path, payload: dict) -> None:
    replace_atomically(path, lambda partial: partial.write_text(json.dumps(payload, indent=2)))


def first_non_finite_row(array: np.ndarray, chunk_rows: int = 65_536) -> int | None:
    """The first row holding NaN or infinity, read in chunks (a memmap is never loaded whole), or None."""
    for start in range(0, len(array), chunk_rows):
        bad = ~np.isfinite(np.asarray(array[start : start + chunk_rows])).all(axis=tuple(range(1, array.ndim)))
        if bad.any():
            return start + int(bad.argmax())
    return None


def shard_problem(path: Path, shape: tuple[int, ...], dtype=STORED_DTYPE, values: bool = True) -> str | None:
    """What makes a stored shard unusable (None: nothing): unreadable or cut short, another shape or dtype, and
    with `values` a row that is not finite. An OSError with an errno (too many open files, a file gone) is raised:
    it says nothing about the contents, and callers must not treat it as damage."""
    try:
        array = np.load(path, mmap_mode="r")
    except Exception as error:  # numpy raises ValueError, EOFError or OSError for a cut or garbled file
        if is_transient(error):
            raise
        return f"unreadable or cut short: {error}"
    if array.shape != shape or array.dtype != dtype:
        return f"holds {array.dtype} {array.shape}, not {np.dtype(dtype)} {shape}"
    size, expected = path.stat().st_size, array.offset + array.nbytes
    if size != expected:
        return f"has {size} bytes, not the {expected} its header names"
    bad = first_non_finite_row(array) if values else None
    return None if bad is None else f"row {bad} is not finite"


def _read_text(path: Path, attempts: int = MANIFEST_READ_ATTEMPTS) -> str | None:
    """A file's text, None when it is not there; an OSError (NFS trouble, a rename racing the read) is tried again a
    few times before it is raised."""
    for attempt in range(attempts):
        try:
            return path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    return None


def read_manifest(path: Path) -> dict | None:
    """A manifest's content, or None (with a warning naming the file) when it is cut short or not JSON."""
    text = _read_text(path)
    if text is None:
        return None
    try:
        manifest = json.loads(text)
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
        return manifest
    except (ValueError, UnicodeDecodeError) as error:
        logger.warning("Cache manifest %s is damaged (%s); writing it again.", path, error)
        return None


class ShardedFeatures:
    """[rows, width] features stored as `shard_rows`-row `.npy` shards; `features[indices]` reads rows lazily
    (each process, DataLoader workers included, maps the shards it touches)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        manifest = json.loads((self.folder / MANIFEST).read_text())
        self.rows, self.width, self.shard_rows = manifest["rows"], manifest["width"], manifest["shard_rows"]
        self.shard_names = manifest["shards"]
        self._maps = OpenMaps()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": OpenMaps()}  # workers map the files themselves

    def __len__(self) -> int:
        return self.rows

    def _shard(self, number: int) -> np.ndarray:
        return self._maps.get(self.folder / self.shard_names[number])

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


class _ShardWatch:
    """The shards of other ranks this rank waits for, each checked (header, shape, size) once it appears (a damaged
    one left from an earlier run counts as missing until its owner has replaced it)."""

    def __init__(self, folder: Path, names: list[str], numbers: list[int], shapes: dict[int, tuple[int, int]]):
        self.folder, self.names, self.shapes = folder, names, shapes
        self.pending = set(numbers)
        self._rejected: dict[int, tuple[int, int]] = {}  # number -> (mtime_ns, size) of a damaged file

    def poll(self) -> bool:
        """Checks the shards that appeared or changed; True when one became usable."""
        progress = False
        for number in sorted(self.pending):
            path = self.folder / self.names[number]
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if self._rejected.get(number) == (stat.st_mtime_ns, stat.st_size):
                continue
            try:  # header, shape and size: the values were checked by the rank that wrote it
                problem = shard_problem(path, self.shapes[number], values=False)
            except OSError as error:  # transient: looked at again at the next poll, never counted as damage
                logger.warning("Could not read feature shard %s now (%s); trying again.", path, error)
                continue
            if problem is None:
                self.pending.discard(number)
                progress = True
            else:
                self._rejected[number] = (stat.st_mtime_ns, stat.st_size)
        return progress


def _wait_for_shards(watch: _ShardWatch, world_size: int, rank: int, poll_seconds: float, wait_seconds: float) -> None:
    """Polls the folder (no collective, which a long precompute would time out) until every shard is usable; gives
    up after `wait_seconds` without a new one, naming the missing shards and the ranks that own them."""
    last_progress = last_log = time.monotonic()
    while True:
        if watch.poll():
            last_progress = time.monotonic()
        if not watch.pending:
            return
        now = time.monotonic()
        if now - last_progress > wait_seconds:
            missing = ", ".join(f"{watch.names[n]} (rank {n % world_size})" for n in sorted(watch.pending)[:8])
            more = f" and {len(watch.pending) - 8} more" if len(watch.pending) > 8 else ""
            raise PathError(
                f"altclip-train: rank {rank} waited {wait_seconds:g} s for feature shards in {watch.folder} that "
                f"never came: {missing}{more}; check those ranks' logs (stopped or stuck?) and start again (finished "
                "shards are kept), or raise --ddp_timeout if they are only slow."
            )
        if now - last_log > WAIT_LOG_SECONDS:
            logger.info(
                "Rank %d waits for %d feature shards of other ranks in %s", rank, len(watch.pending), watch.folder
            )
            last_log = now
        time.sleep(poll_seconds)


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
    wait_seconds: float = 1800.0,
) -> ShardedFeatures:
    """Computes `encode(start, stop)` for every shard not usable on disk, shard j by rank j % world_size, each
    written once (atomically, its rows checked finite); then waits for the other ranks' shards by looking at the
    folder, without a collective that a long precompute could time out. A run killed halfway keeps its finished
    shards; a damaged shard (cut short, another shape or size) is named in a warning and computed again. A shard's
    values are checked (finite) only by the rank that computes it, before writing; at a start each rank reads only
    the headers and sizes of the stored shards, not the whole cache."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = shard_names(rows, shard_rows)
    shapes = {number: (min(shard_rows, rows - number * shard_rows), width) for number in range(len(names))}
    mine, missing = [number for number in range(len(names)) if number % world_size == rank], []
    for number in mine:
        path = folder / names[number]
        try:  # header, shape and size: its values were checked finite when written
            problem = shard_problem(path, shapes[number], values=False) if path.is_file() else "missing"
        except OSError as error:  # not damage: this rank owns the shard and writes it again, atomically
            logger.warning("Could not read feature shard %s (%s); computing it again.", path, error)
            problem = "missing"
        if problem == "missing" or problem is None:
            missing += [number] if problem else []
            continue
        logger.warning("Feature shard %s is damaged (%s); computing it again.", path, problem)
        path.unlink(missing_ok=True)
        missing.append(number)
    if missing:
        logger.info("Rank %d computes %d of %d feature shards in %s", rank, len(missing), len(names), folder)
    for done, number in enumerate(missing, 1):
        start = number * shard_rows
        features = np.asarray(encode(start, start + shapes[number][0]), dtype=STORED_DTYPE)
        if features.shape != shapes[number]:
            raise ValueError(f"Feature shard {names[number]}: computed {features.shape}, expected {shapes[number]}.")
        bad = first_non_finite_row(features)
        if bad is not None:
            raise InputDataError(
                f"altclip-train: the frozen model gives non-finite features for row {start + bad} (in float16); "
                "check its weights and dtype. Nothing was written for that shard."
            )
        _save_atomically(folder / names[number], features)
        logger.info("Wrote feature shard %s (%d/%d of this rank)", names[number], done, len(missing))
    others = [number for number in range(len(names)) if number % world_size != rank]
    _wait_for_shards(_ShardWatch(folder, names, others, shapes), world_size, rank, poll_seconds, wait_seconds)
    manifest = {"rows": rows, "width": width, "shard_rows": shard_rows, "shards": names, "key": key or {}}
    if rank == 0 and read_manifest(folder / MANIFEST) != manifest:
        _write_json_atomically(folder / MANIFEST, manifest)
    waited = time.monotonic()
    while read_manifest_quietly(folder / MANIFEST) != manifest:
        if time.monotonic() - waited > wait_seconds:
            raise PathError(
                f"altclip-train: rank {rank} waited {wait_seconds:g} s for {folder / MANIFEST}, which rank 0 writes "
                "once every shard is there; check rank 0's log."
            )
        time.sleep(poll_seconds)
    return ShardedFeatures(folder)


def read_manifest_quietly(path: Path) -> dict | None:
    try:
        return json.loads(_read_text(path) or "null")
    except (OSError, ValueError, UnicodeDecodeError):
        return None


class ImageEmbeddingCache:
    """Image embeddings of a frozen tower by table row, kept in ``folder``: ``manifest.json`` (rows, width, key) and
    shards each process writes alone, ``rank-R-TIME-PID.embeds.npy`` (float16 [n, width]) then
    ``rank-R-TIME-PID.rows.npy`` (their table rows), each by an atomic rename: a shard whose rows file exists is
    complete, on a local disk or a shared file system, and no two processes write one file.

    Each process buffers the rows it computes while training (`put`, finite rows only) and writes them as a shard
    every `shard_rows` rows and at each epoch's end (`flush`, see `ImageCacheCallback`). After the epoch-end barrier
    global rank 0 alone scans the shards and writes the row index (`build_index`): ``index-G.npy`` (int64 per table
    row: shard number << 32 | position, or -1) named with its shard list in ``index.json``. Every reading process
    (DataLoader workers included) memory-maps that one file read-only, so the 8 bytes per table row live once in the
    shared page cache, not once per process, and nobody rescans the folder. A row not in the index (written since)
    is computed again. A damaged shard (cut short, another shape or size, rows out of range) is named in a warning,
    set aside by rank 0 and its rows recomputed; a non-finite stored row is computed again too.
    """

    def __init__(self, folder: str | os.PathLike, rows: int, width: int, rank: int = 0, shard_rows: int = 16_384):
        self.folder, self.rows, self.width = Path(folder), rows, width
        self.rank, self.shard_rows = rank, shard_rows
        self._pending_rows: list[np.ndarray] = []
        self._pending_embeds: list[np.ndarray] = []
        self.stopped = False  # set when a write failed (disk full): this process caches no more
        self._reset_index()

    def _reset_index(self) -> None:
        self._location: np.ndarray | None = None  # table row -> shard number << 32 | position, or -1 (a memmap)
        self._index_read = False
        self._filled = 0
        self._shards: list[Path] = []
        self._maps = OpenMaps()
        self._warned: set[int] = set()

    @classmethod
    def create(
        cls,
        folder: str | os.PathLike,
        rows: int,
        width: int,
        key: dict,
        rank: int = 0,
        wait_seconds: float = 600.0,
        reserved_bytes: int = 0,
    ) -> "ImageEmbeddingCache":
        """The cache in `folder`; global rank 0 writes its manifest unless an intact one is there, the other ranks
        (of every node: call on global rank 0 first) wait until they read it. Refuses in one line when the disk
        cannot hold the rows not stored yet and `reserved_bytes` (checkpoints written to the same disk)."""
        cache = cls(folder, rows, width, rank)
        cache.folder.mkdir(parents=True, exist_ok=True)
        if rank == 0:  # temporary files of writers killed in an earlier run (no writer runs before this)
            for stale in cache.folder.glob(f"*{PARTIAL_SUFFIX}"):
                with contextlib.suppress(OSError):
                    stale.unlink()
        manifest = json.loads(json.dumps({"rows": rows, "width": width, "key": key, "format": "shards"}, default=str))
        if rank == 0 and read_manifest(cache.folder / MANIFEST) != manifest:
            _write_json_atomically(cache.folder / MANIFEST, manifest)
        waited = time.monotonic()
        while rank != 0 and read_manifest_quietly(cache.folder / MANIFEST) != manifest:
            if time.monotonic() - waited > wait_seconds:
                raise PathError(
                    f"altclip-train: rank {rank} waited {wait_seconds:g} s for {cache.folder / MANIFEST}, which "
                    "global rank 0 writes; check rank 0's log."
                )
            time.sleep(1.0)
        if rank == 0:  # the shards of an earlier, interrupted run are found before the first epoch
            cache.build_index()
        needed = (rows - cache.filled_rows()) * (width * np.dtype(STORED_DTYPE).itemsize + 8)
        free = shutil.disk_usage(cache.folder).free
        if needed + reserved_bytes > free:
            checkpoints = f" besides {reserved_bytes / 1e9:.2f} GB of checkpoints" if reserved_bytes else ""
            raise PathError(
                f"altclip-train: --cache_image_features needs {needed / 1e9:.2f} GB in {cache.folder} for {rows} "
                f"image embeddings{checkpoints}, and the disk has {free / 1e9:.2f} GB free; free space, point "
                "--image_feature_cache_dir at a larger disk, or train without --cache_image_features."
            )
        return cache

    def __getstate__(self) -> dict:
        # workers index and map the files themselves; rows not yet written stay with the training process
        state = {**self.__dict__, "_pending_rows": [], "_pending_embeds": []}
        return {**state, "_location": None, "_index_read": False, "_shards": [], "_maps": OpenMaps(), "_warned": set()}

    def _shard_problem(self, rows_file: Path, embeds_file: Path) -> str | None:
        """What is wrong with a shard's contents (None: nothing); transient OSErrors are raised."""
        try:
            rows = np.load(rows_file)
        except Exception as error:  # numpy raises ValueError, EOFError or OSError for a cut or garbled file
            if is_transient(error):
                raise
            return f"its rows file is unreadable or cut short: {error}"
        if rows.ndim != 1 or rows.dtype != np.int64 or (len(rows) and not 0 <= rows.min() <= rows.max() < self.rows):
            return f"its rows file holds {rows.dtype} {rows.shape} outside 0..{self.rows - 1}"
        return shard_problem(embeds_file, (len(rows), self.width), values=False)

    def _may_quarantine(self, rows_file: Path) -> bool:
        """Only the training process that wrote a shard, or rank 0's, sets it aside; DataLoader workers and other
        ranks only skip it (a reader's view may be stale, and a good shard renamed is lost to every rank)."""
        if torch.utils.data.get_worker_info() is not None:
            return False
        return self.rank == 0 or rows_file.name.startswith(f"rank-{self.rank}-")

    def _quarantine(self, rows_file: Path, embeds_file: Path, problem: str) -> None:
        logger.warning(
            "Image-feature cache shard %s is damaged (%s); its rows are computed again.", embeds_file, problem
        )
        if not self._may_quarantine(rows_file):
            return
        try:
            if self._shard_problem(rows_file, embeds_file) is None:  # re-checked: replaced or read well now
                return
        except OSError:
            return
        for path in (rows_file, embeds_file):  # renamed, not deleted: another reader may be looking at it
            with contextlib.suppress(OSError):
                path.replace(path.with_name(path.name + ".damaged"))

    def build_index(self) -> None:
        """Global rank 0, after the epoch-end barrier (and at open): scans the complete shards (damaged ones set
        aside), writes the row index to ``index-G.npy`` through a memory map (never whole in memory) and names it in
        ``index.json``; the previous index stays for readers still mapping it, older ones are removed."""
        previous = read_manifest_quietly(self.folder / INDEX) or {}
        generation = int(previous.get("generation", -1)) + 1
        index_file = self.folder / f"index-{generation}.npy"
        shards: list[str] = []

        def write(partial: Path) -> None:
            location = np.lib.format.open_memmap(partial, mode="w+", dtype=np.int64, shape=(self.rows,))
            location[:] = -1
            for rows_file in sorted(self.folder.glob("rank-*.rows.npy")):
                embeds_file = rows_file.with_name(rows_file.name.replace(".rows.npy", ".embeds.npy"))
                try:
                    problem = self._shard_problem(rows_file, embeds_file)
                    rows = np.load(rows_file) if problem is None else None
                except OSError as error:  # not damage (too many open files, renamed away): its rows are a miss
                    logger.warning("Image-feature cache shard %s not readable now (%s); skipped.", embeds_file, error)
                    continue
                if problem is not None:
                    self._quarantine(rows_file, embeds_file, problem)
                    continue
                location[rows] = (len(shards) << 32) | np.arange(len(rows), dtype=np.int64)
                shards.append(embeds_file.name)
            location.flush()
            self._filled = int(np.count_nonzero(location >= 0))
            del location

        replace_atomically(index_file, write)
        _write_json_atomically(
            self.folder / INDEX,
            {"generation": generation, "index": index_file.name, "shards": shards, "filled": self._filled},
        )
        keep = {index_file.name, str(previous.get("index"))}
        for old in self.folder.glob("index-*.npy"):
            if old.name not in keep:
                with contextlib.suppress(OSError):
                    old.unlink()
        self._reset_index()

    def _index(self) -> np.ndarray | None:
        """Table row -> where it is stored, from the index rank 0 wrote last (None: no index yet or unreadable now,
        every row a miss)."""
        if self._index_read:
            return self._location
        self._index_read = True
        description = read_manifest_quietly(self.folder / INDEX)
        if not description:
            return None
        try:
            location = np.load(self.folder / description["index"], mmap_mode="r")
            if location.shape != (self.rows,) or location.dtype != np.int64:
                raise ValueError(f"holds {location.dtype} {location.shape}, not int64 ({self.rows},)")
        except (OSError, ValueError, KeyError, TypeError) as error:  # rank 0 writes it again at the next epoch end
            logger.warning("Image-feature cache index %s not readable now (%s); rows are computed.", self.folder, error)
            return None
        self._shards = [self.folder / name for name in description["shards"]]
        self._filled = int(description.get("filled", 0))
        self._location = location
        return location

    def refresh(self) -> None:
        """Reads the index rank 0 wrote last (at each epoch's start)."""
        self._reset_index()

    def get(self, row: int) -> np.ndarray | None:
        """The row's embedding, or None when it is not stored (yet), stored damaged or not readable now."""
        index = self._index()
        if index is None:
            return None
        where = int(index[row])
        if where < 0:
            return None
        number, position = where >> 32, where & 0xFFFFFFFF
        try:
            embedding = np.array(self._maps.get(self._shards[number])[position])
        except (OSError, ValueError) as error:  # renamed away, too many open files, NFS: a miss, not damage
            if number not in self._warned:
                self._warned.add(number)
                logger.warning("Image-feature cache shard %s not readable now (%s).", self._shards[number], error)
            return None
        if not np.isfinite(embedding).all():
            if number not in self._warned:
                self._warned.add(number)
                logger.warning(
                    "Image-feature cache shard %s holds non-finite rows; they are computed again.", self._shards[number]
                )
            return None
        return embedding

    def put(self, rows: Sequence[int], embeds: torch.Tensor) -> None:
        """Keeps the finite rows among `embeds` (of table `rows`) for the next shard; non-finite ones are left out
        with a warning (the image is computed again when next seen)."""
        if self.stopped:
            return
        rows = np.asarray(rows, dtype=np.int64)
        values = embeds.detach().float().cpu().numpy().astype(STORED_DTYPE)
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            logger.warning(
                "%d image embeddings are not finite in float16 (table rows %s); not cached.",
                int((~finite).sum()),
                rows[~finite][:5].tolist(),
            )
        self._pending_rows.append(rows[finite])
        self._pending_embeds.append(values[finite])
        if self.stopped:
            return
        if sum(len(part) for part in self._pending_rows) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        """Writes the buffered rows as one shard of this process (embeddings first, their rows last)."""
        rows = np.concatenate(self._pending_rows) if self._pending_rows else np.empty(0, np.int64)
        if not len(rows):
            return
        embeds = np.concatenate(self._pending_embeds)
        self._pending_rows, self._pending_embeds = [], []
        if self.stopped:
            return
        stem = f"rank-{self.rank}-{time.time_ns():020d}-{os.getpid()}"
        embeds_file = self.folder / f"{stem}.embeds.npy"
        try:
            _save_atomically(embeds_file, embeds)
            _save_atomically(self.folder / f"{stem}.rows.npy", rows)
        except OSError as error:  # disk full, I/O error: this rank stops caching, training goes on
            embeds_file.unlink(missing_ok=True)  # without its rows file no reader uses it; not left taking room
            self.stopped = True
            logger.warning(
                "Image-feature cache: rank %d could not write to %s (%s); it stops caching image embeddings "
                "(training goes on, its images are computed each time).",
                self.rank,
                self.folder,
                error,
            )
            return
        # no re-index here: the rows written are found from the next epoch, through rank 0's index

    def filled_rows(self) -> int:
        """Table rows stored as of the index rank 0 wrote last."""
        self.refresh()
        self._index()
        return self._filled


class ImageCacheCallback(TrainerCallback):
    """Writes a process's buffered image embeddings at each epoch's end, then rank 0 indexes the shards; every
    process re-reads the index at each epoch's start."""

    def __init__(self, cache: ImageEmbeddingCache):
        self.cache = cache

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.cache.refresh()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.cache.flush()
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            torch.distributed.barrier()  # every rank's shard in place before rank 0 indexes them
        if self.cache.rank == 0:
            try:
                self.cache.build_index()
            except OSError as error:  # the ranks keep the last index; training goes on
                logger.warning("Image-feature cache index not written in %s (%s).", self.cache.folder, error)
        if distributed:
            torch.distributed.barrier()  # the new index in place before any rank reads it

    def on_train_end(self, args, state, control, **kwargs):
        self.cache.flush()
