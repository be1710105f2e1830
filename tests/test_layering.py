"""The package's layers, read from the import statements: modeling_altclip, then common, then the five jobs that
never import each other, then the reproduction (which runs training and evaluation) and the benchmarks."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
JOBS = ("training", "evaluation", "hub", "demo", "search")
ALLOWED = {
    "modeling_altclip": {"modeling_altclip"},
    "common": {"modeling_altclip", "common"},
    **{job: {"modeling_altclip", "common", job} for job in JOBS},
    "reproduction": {"modeling_altclip", "common", "training", "evaluation", "reproduction"},
}


def imported_layers(folder: str, root: Path = REPO) -> dict[str, set[str]]:
    """{module file: the layers it imports}, counting absolute imports (altclip.<layer>, modeling_altclip) and
    relative ones that climb out of the folder."""
    found = {}
    for path in sorted((root / folder).rglob("*.py")):
        layers = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    depth = len(path.relative_to(root / folder).parts) - 1
                    names = ["altclip." + (folder if node.level <= depth + 1 else node.module or "")]
                else:
                    names = [node.module or ""]
            for name in names:
                parts = name.split(".")
                if parts[0] == "modeling_altclip":
                    layers.add("modeling_altclip")
                elif parts[0] == "altclip" and len(parts) > 1:
                    layers.add(parts[1])
        found[path.relative_to(root).as_posix()] = layers
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(layer):
    crossing = {
        module: sorted(layers - ALLOWED[layer])
        for module, layers in imported_layers(layer).items()
        if layers - ALLOWED[layer]
    }
    assert not crossing, f"{layer} imports layers it must not: {crossing}"


def test_the_scan_sees_a_crossing(tmp_path):
    (tmp_path / "demo" / "tabs").mkdir(parents=True)
    (tmp_path / "demo" / "bad.py").write_text("from altclip.search.build import x\nfrom ..training import y\n")
    (tmp_path / "demo" / "tabs" / "ok.py").write_text("from ..examples import z\nimport modeling_altclip\n")
    assert imported_layers("demo", tmp_path) == {
        "demo/bad.py": {"search", "training"},
        "demo/tabs/ok.py": {"demo", "modeling_altclip"},
    }
