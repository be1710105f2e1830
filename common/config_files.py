"""``--config FILE.yaml|json`` for the command-line tools: a file of flags that later flags override."""

import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from altclip.common.errors import InputDataError, PathError, UsageError

# Flags whose value names another file: a relative path is read beside the config file first (so a config and
# the DeepSpeed JSON it names travel together and work from any folder), else from the current folder.
FILE_FLAGS = ("deepspeed",)


def config_file_to_flags(path: str) -> list[str]:
    """A YAML/JSON mapping of flag names to values, as command-line flags."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
        values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except OSError as error:
        raise PathError(f"cannot read config file {path}: {error}") from error
    except (ValueError, yaml.YAMLError) as error:
        raise InputDataError(f"cannot read config file {path}: {error}") from error
    if not isinstance(values, dict):
        raise InputDataError(f"{path} must map flag names to values.")
    flags: list[str] = []
    for name, value in values.items():
        if value is None:
            continue
        flags.append(f"--{name}")
        if name in FILE_FLAGS and isinstance(value, str):
            value = beside_config(path, value)
        if value is True:  # a bare flag: true for boolean fields, and what switches on ``--fsdp`` (a str field)
            continue
        if value is False:
            flags.append("false")
        elif isinstance(value, (list, tuple)):
            flags.extend(str(item) for item in value)
        elif isinstance(value, dict):
            flags.append(json.dumps(value))
        else:
            flags.append(str(value))
    return flags


def beside_config(config_path: str, value: str) -> str:
    """`value` as a path beside the config file when it names a file there (as written, or by its file name)."""
    if Path(value).is_absolute() or value.lstrip().startswith("{"):
        return value
    folder = Path(config_path).parent
    for candidate in (folder / value, folder / Path(value).name):
        if candidate.is_file():
            return str(candidate)
    return value


def expand_config(argv: Sequence[str]) -> list[str]:
    """Replaces ``--config FILE`` by the flags it holds, where it stands (so later flags override it)."""
    expanded, index = [], 0
    while index < len(argv):
        if argv[index] == "--config":
            if index + 1 >= len(argv):
                raise UsageError("--config needs a file.")
            expanded.extend(config_file_to_flags(argv[index + 1]))
            index += 2
        elif argv[index].startswith("--config="):
            expanded.extend(config_file_to_flags(argv[index].split("=", 1)[1]))
            index += 1
        else:
            expanded.append(argv[index])
            index += 1
    return expanded
