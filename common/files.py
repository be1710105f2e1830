"""Files written so that a reader never sees half of them: a temporary name in the same folder, then a rename."""

import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def partial_path(path: Path) -> Path:
    """A temporary sibling of `path` that no other process writes: on a file system shared by several nodes, process
    ids repeat across hosts, so the name holds the host name, the process id and a random part."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}")


def replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Calls `write(partial)` on a temporary sibling of `path`, then renames it over `path` (the temporary file is
    removed when writing fails)."""
    partial = partial_path(path)
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def probe_writable(folder: Path) -> None:
    """Creates `folder` and writes and removes one small file in it, raising the OSError that a later write would
    meet (a wrong path, a read-only mount, no permission), so that it can be named before any work starts."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = partial_path(folder / "write-test")
    probe.write_bytes(b"0")
    probe.unlink()
