"""Files written so that a reader never sees half of them: a temporary name in the same folder, then a rename."""

import os
from collections.abc import Callable
from pathlib import Path


def replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Calls `write(partial)` on a temporary sibling of `path`, then renames it over `path`."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    write(partial)
    os.replace(partial, path)
