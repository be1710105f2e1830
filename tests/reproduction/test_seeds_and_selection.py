"""Issue 27: the reproduction is seeded and deterministic at a fixed thread count, its stage-2 learning rate is the
one the validation sweep chose, and the seed spread's table is the mean and range of the runs it reads."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from altclip.common.errors import AltCLIPError, InputDataError
from altclip.reproduction.run import PRESETS, reproduce
from altclip.reproduction.seed_spread import markdown, spread, write_spread
from altclip.reproduction.stage2_selection import load_selection, select_learning_rate

DOCS = Path(__file__).parents[2] / "docs"


def validation_report(preset: str, scores: dict[str, float], seed: int = 1) -> dict:
    """A stage2_validation report whose runs end at step 600 with the given validation non-English means."""
    row = lambda value: {"validation": {"mean_non_english": value}}  # noqa: E731
    return {
        "preset": preset,
        "validation_seed": seed,
        "stage1": row(5.0),
        "runs": {rate: {"0": row(5.0), "300": row(99.0), "600": row(value)} for rate, value in scores.items()},
    }


def test_the_rate_with_the_best_mean_over_splits_at_the_last_step_is_chosen():
    reports = {
        "a": validation_report("small", {"0.0002": 7.0, "0.001": 8.0, "5e-05": 6.0}),
        "b": validation_report("small", {"0.0002": 7.5, "0.001": 6.0}, seed=2),
    }
    selection = select_learning_rate(reports)
    # 2e-4: (7.0 + 7.5) / 2 = 7.25 beats 1e-3: (8.0 + 6.0) / 2 = 7.0; step 300's 99.0 is not the last step
    assert selection["chosen"] == {"stage2_learning_rate": 2e-4}
    assert selection["sweep"]["0.001"] == {"per_split": {"a": 8.0, "b": 6.0}, "mean": 7.0}
    assert selection["splits"] == {"a": 1, "b": 2}
    tie = {"a": validation_report("small", {"0.001": 7.0, "0.0002": 7.0})}
    assert select_learning_rate(tie)["chosen"] == {"stage2_learning_rate": 2e-4}  # a tie goes to the smaller rate


def test_the_packaged_choice_is_the_shipped_sweep_s_and_the_full_preset_uses_it():
    reports = {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(DOCS.glob("stage2_validation_small*.json"))
    }
    assert len(reports) == 2
    packaged = load_selection()
    assert packaged == select_learning_rate(reports)
    assert PRESETS["full"].stage2_learning_rate == packaged["chosen"]["stage2_learning_rate"]


def run_report(seed: int, student_top1: float, stage1_top1: float) -> dict:
    languages = ("en", "de", "zh")
    row = lambda top1: {"top1": top1, "R@1": top1 / 2, "R@5": top1 * 2}  # noqa: E731
    return {
        "seed": seed,
        "timings_s": {"total": 1.0},
        "summary": {
            "teacher": {x: row(10.0 if x == "en" else 1.0) for x in languages},
            "stage1": {x: row(stage1_top1 + i) for i, x in enumerate(languages)},
            "student": {x: row(student_top1 + i) for i, x in enumerate(languages)},
        },
    }


def test_the_spread_is_each_column_s_mean_and_range_and_stage_2_s_gain_is_paired_by_seed(tmp_path):
    reports = [run_report(0, 9.0, 8.0), run_report(1, 5.0, 6.0), run_report(2, 7.0, 7.0)]
    result = spread(reports)
    assert result["seeds"] == [0, 1, 2]
    assert result["table"]["de"]["student top1"] == {"mean": 8.0, "min": 6.0, "max": 10.0, "runs": [10.0, 6.0, 8.0]}
    # non-English mean of seed 0's student: (de 10 + zh 11) / 2 = 10.5
    assert result["table"]["mean non-en"]["student top1"]["runs"] == [10.5, 6.5, 8.5]
    assert result["table"]["mean non-en"]["stage 2 gain top1"]["runs"] == [1.0, -1.0, 0.0]
    assert result["table"]["en"]["stage 2 gain R@5"]["runs"] == [2.0, -2.0, 0.0]
    text = markdown(result)
    assert "| de | 1.0 (1.0–1.0) | 8.0 (7.0–9.0) | 8.0 (6.0–10.0) |" in text
    assert "per seed: +1.0, -1.0, +0.0" in text
    for seed, report in zip((0, 1, 2), reports):
        (tmp_path / f"seed-{seed}").mkdir()
        (tmp_path / f"seed-{seed}" / "results.json").write_text(json.dumps(report))
    write_spread([tmp_path / f"seed-{seed}" for seed in (0, 1, 2)], tmp_path)
    assert json.loads((tmp_path / "spread.json").read_text())["table"] == result["table"]
    assert (tmp_path / "spread.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputDataError, match=r"seed-7/results\.json is missing; that run did not finish"):
        write_spread([tmp_path / "seed-7"], tmp_path)


@pytest.mark.slow
def test_the_same_seed_gives_the_same_weights_and_scores_and_another_seed_does_not(tmp_path, tiny_reproduction):
    """At one thread, two runs of the same seed are bit-identical (the table holds on a machine of this kind); the
    seed reaches every stage (another seed changes the teacher, stage 1 and stage 2 weights). Run "a" is the shared
    tiny reproduction (seed 0, made earlier in this session, in another folder)."""
    folders = {"a": tiny_reproduction[0], "b": tmp_path / "b", "c": tmp_path / "c"}
    # "b" by the command line in another process while "c" runs here: one thread each, side by side on 2 cores
    command = [sys.executable, "-m", "altclip.reproduction.run", "--preset", "tiny", "--seed", "0", "--threads", "1"]
    command += ["--no_cache_default", "--output_dir", str(folders["b"])]
    other = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = {"c": reproduce(folders["c"], PRESETS["tiny"], cache_default=False, seed=1)}
    finally:
        torch.set_num_threads(threads)
        output, _ = other.communicate(timeout=600)
    assert other.returncode == 0, output[-3000:]
    runs["b"] = json.loads((folders["b"] / "results.json").read_text(encoding="utf-8"))
    runs["a"] = tiny_reproduction[1]
    assert runs["a"]["summary"] == runs["b"]["summary"] and runs["a"]["seed"] == 0 and runs["c"]["seed"] == 1
    assert runs["a"]["torch_threads"] == 1 and runs["a"]["stage2_selection"] == load_selection()
    for stage in ("teacher_clip", "stage1_teacher_learning", "stage2_contrastive"):
        weights = {name: (folders[name] / stage / "model.safetensors").read_bytes() for name in runs}
        assert weights["a"] == weights["b"], stage
        assert weights["a"] != weights["c"], stage


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("run", ["--seed", "-1"], "altclip-reproduce: argument --seed: -1 is out of range (0..4294967294)."),
        ("run", ["--threads", "0"], "altclip-reproduce: argument --threads: 0 is out of range (1 or more)."),
        ("seed_spread", ["--seeds", "0", "x"], "seed_spread: argument --seeds: 'x' is not a whole number."),
        ("seed_spread", ["--parallel", "0"], "seed_spread: argument --parallel: 0 is out of range (1 or more)."),
        ("finetune_demonstration", ["--steps", "0"], "finetune_demonstration: argument --steps: 0 is out of range"),
        (
            "stage2_validation",
            ["--validation_fraction", "2"],
            "stage2_validation: argument --validation_fraction: 2 is",
        ),
        ("stage2_validation", ["--learning_rates", "1e-3", "nan"], "stage2_validation: argument --learning_rates: nan"),
    ],
)
def test_bad_numbers_are_one_line_before_anything_runs(module, argv, message, monkeypatch, cli, tmp_path):
    import importlib
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [module, *argv])
    main = importlib.import_module(f"altclip.reproduction.{module}").main
    line = cli.call_refusal(
        lambda: main(argv) if module in ("run", "finetune_demonstration") else main(), only_line=True
    )
    assert line.startswith(message), line
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    "content, expected",
    [("{bad", "is not JSON"), ('{"runs": 3}', "lack what stage2_validation writes")],
    ids=["not JSON", "another report"],
)
def test_reports_that_are_not_stage2_validation_s_are_one_line(tmp_path, cli, content, expected):
    from altclip.reproduction import stage2_selection

    (tmp_path / "report.json").write_text(content)
    argv = [str(tmp_path / "report.json"), "--output", str(tmp_path / "out.json")]
    cli.call_refusal(lambda: stage2_selection.main(argv), match=expected)
    assert not (tmp_path / "out.json").exists()


@pytest.mark.slow
def test_run_seeds_runs_one_reproduction_per_seed_side_by_side_and_names_a_failed_one(tmp_path):
    from altclip.reproduction.seed_spread import run_seeds

    folders = run_seeds([3, 5], tmp_path / "ok", "tiny", parallel=2, cache_default=False)
    assert folders == [tmp_path / "ok" / "seed-3", tmp_path / "ok" / "seed-5"]
    seeds = [json.loads((folder / "results.json").read_text())["seed"] for folder in folders]
    assert seeds == [3, 5] and all((tmp_path / "ok" / f"seed-{s}.log").stat().st_size > 0 for s in seeds)
    with pytest.raises(AltCLIPError, match=r"the run of seed 0 failed \(exit 2\); its output is in .*seed-0\.log"):
        run_seeds([0], tmp_path / "bad", "no-such-preset", parallel=1, cache_default=False)


def test_a_cut_results_json_is_named_in_one_line_not_a_json_traceback(tmp_path, cli):
    from altclip.reproduction.seed_spread import main

    for seed in (0, 1):
        (tmp_path / f"seed-{seed}").mkdir()
        (tmp_path / f"seed-{seed}" / "results.json").write_text(json.dumps(run_report(seed, 9.0, 8.0)))
    cut = tmp_path / "seed-1" / "results.json"
    cut.write_text(cut.read_text()[:40])
    line = cli.refusal(main, "--seeds", "0", "1", "--summarise_only", "--output_dir", tmp_path, only_line=True)
    assert line.startswith(f"seed_spread: {cut} is not readable JSON"), line
    assert "Run that seed again" in line and not (tmp_path / "spread.json").exists()
