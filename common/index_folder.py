"""The layout of an image index folder (what ``altclip-index build`` writes) and how a reader opens one version of it.

An index folder holds:

- ``manifest.json``: the current version's manifest (the model and its weights' fingerprint, dimensions, counts, the
  FAISS index's kind and its measured recall), and ``files``, the folder of that version. Writers replace it with one
  rename, after the version's folder is complete: a reader that reads it once sees one whole version, never a mix.
- ``versions/NNNNN/``: ``metadata.parquet`` (one row per searchable image, in index order, ids increasing), the same
  table as ``metadata.arrow`` (uncompressed Arrow IPC, which readers memory-map instead of decoding the Parquet into
  each process's memory; versions written before it are read from the Parquet), ``index.faiss`` (the vector
  index over those rows, memory-mapped when loaded; an exact index's vectors also as ``vectors.npy``, aligned for
  BLAS), ``skipped.parquet`` and a copy of that version's manifest. A
  published version folder is never written again; the oldest ones are deleted after `KEEP_VERSIONS` newer ones.
- ``parts/part-NNNNN.npy`` (float16 embeddings, one row per readable image) and ``parts/part-NNNNN.parquet``,
  append-only, shared by every version.

Format 1 (before versions: the metadata and FAISS files beside the manifest) is still read.
"""

import json
import os
from pathlib import Path

from .model_paths import looks_local

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
MANIFEST, METADATA, INDEX_FILE, SKIPPED = "manifest.json", "metadata.parquet", "index.faiss", "skipped.parquet"
METADATA_ARROW = "metadata.arrow"  # the metadata again, as an Arrow IPC file that readers memory-map
METADATA_BATCH_ROWS = 1 << 20  # rows per record batch of metadata.arrow (at most; fewer where strings pass 2 GiB)
PARTS, VERSIONS = "parts", "versions"
EXACT_VECTORS = "vectors.npy"  # an exact index's vectors again, 64-byte aligned for BLAS (FAISS's file is not)
METADATA_COLUMNS = ("id", "location", "caption", "key", "part", "row")
KEEP_VERSIONS = 3  # a server that loaded one of the last three versions can still open it


class CollectionIndexError(ValueError):
    """An index folder that cannot be used as it is; the message names the file and what to do."""


def version_name(number: int) -> str:
    return f"{number:05d}"


def read_manifest(folder: str | Path, version: int | None = None) -> dict:
    """The current manifest of an index folder (or that of `version`), or `CollectionIndexError` naming the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CollectionIndexError(f"{folder}: no such index folder; build one with altclip-index build.")
    path = folder / MANIFEST if version is None else folder / VERSIONS / version_name(version) / MANIFEST
    if not path.is_file():
        if version is not None:
            raise CollectionIndexError(f"{path}: missing; version {version} of {folder} is gone or was never written.")
        raise CollectionIndexError(
            f"{path}: missing; {folder} is not a finished index (altclip-index build writes it)."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CollectionIndexError(f"{path}: corrupt manifest ({error}); rebuild the index.") from None
    if not isinstance(manifest, dict):
        raise CollectionIndexError(f"{path}: corrupt manifest (not an object); rebuild the index.")
    missing = [key for key in ("format", "model", "fingerprint", "dim", "counts", "index") if key not in manifest]
    if missing:
        raise CollectionIndexError(f"{path}: corrupt manifest (no {', '.join(missing)}); rebuild the index.")
    if manifest["format"] not in READABLE_FORMATS:
        raise CollectionIndexError(f"{path}: index format {manifest['format']}, this package reads {READABLE_FORMATS}.")
    return manifest


def files_folder(folder: Path, manifest: dict) -> Path:
    """The folder holding the metadata and FAISS files of the manifest's version (format 1: the index folder)."""
    return folder / manifest.get("files", ".")


def manifest_stamp(folder: Path) -> tuple[int, int] | None:
    """(inode, modification time) of the manifest: changes with every published version, read without parsing."""
    try:
        stat = os.stat(folder / MANIFEST)
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def read_metadata(folder: str | Path) -> "object":
    """The metadata table (pyarrow) in `folder` (a version's folder), or `CollectionIndexError` naming the file:
    ``metadata.arrow`` memory-mapped where the version has it (its pages are the file's, shared by every process that
    maps it and left to the page cache), else ``metadata.parquet`` read into memory."""
    import pyarrow
    import pyarrow.ipc
    import pyarrow.parquet

    path = Path(folder) / METADATA_ARROW
    try:
        if path.is_file():
            table = pyarrow.ipc.open_file(pyarrow.memory_map(str(path))).read_all()
        else:
            path = Path(folder) / METADATA
            table = pyarrow.parquet.read_table(path)
    except (OSError, pyarrow.ArrowInvalid) as error:
        raise CollectionIndexError(f"{path}: corrupt or missing metadata ({error}); rebuild the index.") from None
    if missing := [column for column in METADATA_COLUMNS if column not in table.column_names]:
        raise CollectionIndexError(f"{path}: corrupt metadata (no column {', '.join(missing)}); rebuild the index.")
    return table


def write_metadata_arrow(table, path: Path) -> None:
    """`table` as an uncompressed Arrow IPC file of `METADATA_BATCH_ROWS`-row record batches (`read_metadata` maps
    it); one batch's copy in memory at a time."""
    import pyarrow
    import pyarrow.ipc

    with pyarrow.OSFile(str(path), "wb") as sink, pyarrow.ipc.new_file(sink, table.schema) as writer:
        for start in range(0, table.num_rows, METADATA_BATCH_ROWS):
            rows = table.slice(start, METADATA_BATCH_ROWS)
            try:
                rows = rows.combine_chunks()
            except (pyarrow.ArrowInvalid, pyarrow.ArrowCapacityError):  # strings over 2 GiB: left in their chunks
                pass
            writer.write_table(rows)


def read_faiss_index(path: Path, memory_map: bool = True):
    """The FAISS index in `path`, memory-mapped (flat codes and IVF lists stay on disk until touched)."""
    import faiss

    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if memory_map else 0
    if not path.is_file():
        raise CollectionIndexError(f"{path}: missing; rebuild the index.")
    try:
        try:
            return faiss.read_index(str(path), flags | (faiss.IO_FLAG_MMAP_IFC if memory_map else 0))
        except RuntimeError:  # an index kind whose codes cannot be mapped: its lists still are
            return faiss.read_index(str(path), flags)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1][:200]
        raise CollectionIndexError(f"{path}: corrupt FAISS index ({reason}); rebuild the index.") from None


def portable_model_name(name: str, index_folder: Path) -> dict:
    """How the manifest names the model: a local folder as an absolute path plus its path relative to the index (found
    again when both move together, e.g. copied to another machine), a Hub id as typed."""
    path = Path(name).expanduser()
    if path.exists():
        absolute = path.resolve()
        return {"model": str(absolute), "model_relative": os.path.relpath(absolute, Path(index_folder).resolve())}
    return {"model": name}


def index_model(folder: Path, manifest: dict) -> str:
    """The model that built the index, found from any working directory: the absolute path, else the same path
    relative to the index folder, else the Hub id; a local folder that is not here is named in one line."""
    name = manifest["model"]
    if Path(name).expanduser().is_dir():
        return name
    if relative := manifest.get("model_relative"):
        moved_with_index = (Path(folder) / relative).resolve()
        if moved_with_index.is_dir():
            return str(moved_with_index)
    if relative or looks_local(name) or "/" not in name:  # a folder (relative: typed before portable manifests)
        raise CollectionIndexError(
            f"{folder} was built by the model folder {name}, which is not here (moved, or another machine); give "
            "--model (model= in Python) with that model's folder or Hub id."
        )
    return name
