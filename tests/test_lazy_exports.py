"""``altclip``'s lazy exports: cheap to import, and typed: the ``TYPE_CHECKING`` block names exactly the lazy table,
each pointing at the object that ``__getattr__`` returns."""

import ast
import subprocess
import sys
from pathlib import Path

import altclip

INIT = Path(altclip.__file__)


def type_checking_imports() -> dict[str, tuple[str, str]]:
    tree = ast.parse(INIT.read_text())
    (block,) = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    return {
        alias.asname or alias.name: (node.module, alias.name)
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def test_the_type_checking_block_names_every_lazy_export_as_its_runtime_object():
    assert type_checking_imports() == altclip._LAZY and sorted(altclip._LAZY) == altclip.__all__
    assert altclip.AltCLIPModel.__module__.startswith("modeling_altclip") and altclip.train.__name__ == "main"


def test_importing_altclip_stays_cheap():
    code = "import sys, altclip; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]
