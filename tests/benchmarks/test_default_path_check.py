"""benchmarks/default_path_check.py: its verdict is the one its printed ratios call for, and it fails loudly (exit 1,
a banner naming the rows) when the default path lost. A benchmark, not a timed test: nothing here asserts a speed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.default_path_check import slower_rows  # noqa: E402


def test_a_row_below_one_minus_the_tolerance_is_a_loss():
    rows = [{"measure": "a", "ratio": 0.97}, {"measure": "b", "ratio": 1.2}, {"measure": "c", "ratio": 0.999}]
    assert [row["measure"] for row in slower_rows(rows, 0.0)] == ["a", "c"]
    assert [row["measure"] for row in slower_rows(rows, 0.02)] == ["a"]
    assert slower_rows(rows, 0.05) == []


@pytest.mark.slow
def test_the_check_runs_end_to_end_and_its_exit_status_follows_its_ratios(tmp_path):
    command = [sys.executable, str(REPO / "benchmarks" / "default_path_check.py"), "--shape", "tiny"]
    command += ["--images", "2", "--texts", "4", "--batch_size", "2", "--repeats", "1", "--remeasure_kernel"]
    done = subprocess.run(
        [*command, "--output_dir", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]
    result = json.loads((tmp_path / "default_path_tiny.json").read_text())
    assert result["cpu"] and result["threads"] >= 1 and result["linear_kernel"]["reason"] == "measured now"
    assert [row["measure"] for row in result["rows"]] == [
        "image embedding, files -> embeddings, fp32",
        "image embedding, model only, fp32",
        "text embedding, mixed lengths, fp32",
    ]
    lost = [row["measure"] for row in result["rows"] if row["ratio"] < 1.0]
    assert result["default_slower"] == lost and done.returncode == (1 if lost else 0)
    assert ("DEFAULT PATH SLOWER" in done.stderr) == bool(lost)
    assert all(name in done.stderr for name in lost)
