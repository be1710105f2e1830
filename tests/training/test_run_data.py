"""One way for a run's data: `run_data.get_data` turns parsed arguments into the sources and shard sizes that both
``altclip-train plan`` and the run read; no module cache ties them, and the argument layer imports no command."""

import ast
from pathlib import Path

import pytest
from stage_runs import QUIET

from altclip.training import plan_command, run_data, run_plan, stages
from altclip.training.arguments import parse
from altclip.training.cli import main as train_main

TRAINING = Path(stages.__file__).resolve().parent


class Stop(Exception):
    """Ends a run once its data has been seen, before any model loads."""


def training_imports() -> dict[str, set[str]]:
    """module -> the training modules it imports (at the top or inside functions), from the source's AST."""
    graph = {}
    for path in TRAINING.rglob("*.py"):
        module = path.relative_to(TRAINING).with_suffix("").as_posix().replace("/", ".")
        package = module.rsplit(".", 1)[0] if "." in module else ""
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                name = ".".join([*base, *([node.module] if node.module else [])])
                targets.add(name)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("altclip.training."):
                targets.add(node.module.removeprefix("altclip.training."))
        graph[module] = targets
    return graph


def test_no_training_module_imports_the_command_line_and_there_is_no_import_circle():
    graph = training_imports()
    assert {"cli", "plan_command", "arguments", "run_data", "stages"} <= set(graph)
    assert not [module for module, targets in graph.items() if "cli" in targets]
    seen, on_path = set(), []

    def visit(module):
        if module in on_path:
            raise AssertionError(f"import circle: {' -> '.join(on_path[on_path.index(module) :] + [module])}")
        if module in seen or module not in graph:
            return
        on_path.append(module)
        for target in graph[module]:
            visit(target)
        on_path.pop()
        seen.add(module)

    for module in graph:
        visit(module)


def test_no_module_level_cache_of_shard_sizes():
    for module in (run_data, run_plan, plan_command, stages):
        caches = [
            name
            for name, value in vars(module).items()
            if isinstance(value, dict) and name.startswith("_") and not name.startswith("__")
        ]
        assert not caches, f"{module.__name__} keeps {caches}"


def test_plan_and_run_read_the_same_data_from_the_same_flags(tmp_path, toy, teacher_model_dir, monkeypatch, capsys):
    flags = ["--model_name_or_path", str(teacher_model_dir), "--train_files", str(toy["shards"])]
    flags += ["--per_device_train_batch_size", "8", "--data_cache_dir", str(tmp_path / "cache")]
    made = []
    real_get_data = run_data.get_data

    def recorded(run, stage):
        made.append(real_get_data(run, stage))
        return made[-1]

    monkeypatch.setattr(run_data, "get_data", recorded)  # plan_command imports it when the plan is asked for
    monkeypatch.setattr(stages, "get_data", recorded)
    train_main(["plan", "--stage", "contrastive", *QUIET, *flags, "--format", "json"])
    assert '"samples_per_epoch": 180' in capsys.readouterr().out

    def stop(run, data):
        raise Stop

    monkeypatch.setattr(stages, "run_contrastive", stop)
    with pytest.raises(Stop):
        train_main(["contrastive", "--output_dir", str(tmp_path / "out"), *QUIET, *flags])
    plan_data, run_of_data = made
    assert plan_data is not run_of_data and plan_data == run_of_data  # built anew each time, equal
    assert plan_data.is_shards and sum(plan_data.sized.sizes) == 180 and plan_data.sized.origins == ["sizes.json"]


def test_get_data_resolves_shard_sizes_on_every_call(toy, teacher_model_dir, monkeypatch):
    run = parse("contrastive", ["--model_name_or_path", str(teacher_model_dir), "--train_files", str(toy["shards"])])
    calls = []
    real = run_data.resolve_shard_sizes
    monkeypatch.setattr(run_data, "resolve_shard_sizes", lambda *args: calls.append(args) or real(*args))
    first, second = run_data.get_data(run, "contrastive"), run_data.get_data(run, "contrastive")
    assert len(calls) == 2 and first.sized == second.sized
