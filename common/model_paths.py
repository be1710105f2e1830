"""Telling a local model folder from a Hub id before anything loads, so that a mistyped path is named at once
instead of after transformers' Hub retries (~25 s offline)."""

from pathlib import Path


def looks_local(name: str) -> bool:
    """A path rather than a Hub id: absolute, relative with ./ ../ ~, more than one slash, or whose first part is an
    existing local folder (outputs/run)."""
    path = Path(name).expanduser()
    return (
        path.is_absolute()
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or "\\" in name
        or (len(path.parts) > 1 and Path(path.parts[0]).is_dir())
    )


def missing_local_model(name: str | None) -> bool:
    """True when `name` looks like a local path (`looks_local`) that does not exist."""
    return bool(name) and looks_local(name) and not Path(name).expanduser().exists()
