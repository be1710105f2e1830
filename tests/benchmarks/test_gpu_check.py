"""benchmarks/gpu_check.py --smoke: the GPU check's every path on tiny shapes, so that it cannot rot between the
rare sessions that have a GPU."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_gpu_check_smoke_runs_every_check_and_reports_them(tmp_path):
    command = [sys.executable, "benchmarks/gpu_check.py", "--smoke", "--output_dir", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check_smoke.json").read_text())
    assert (tmp_path / "gpu_check_smoke.png").read_bytes().startswith(PNG_SIGNATURE)
    (row,) = report["shapes"].values()
    bf16 = row["numerics"]["sdpa bfloat16"]
    assert bf16["image_min_cosine"] > 0.99 and bf16["text_min_cosine"] > 0.99
    assert row["numerics"]["eager float32"]["text_min_cosine"] > 0.9999  # eager and SDPA agree in fp32
    for side in ("ours", "transformers"):
        assert row["inference_bf16"][side]["images_per_s"] > 0 and row["inference_bf16"][side]["texts_per_s"] > 0
    trained = {name: numbers for name, numbers in row["training_bf16"].items() if "samples_per_s" in numbers}
    assert set(trained) == {"teacher", "teacher, checkpointing", "contrastive", "contrastive, checkpointing"}
    assert all(numbers["samples_per_s"] > 0 and numbers["model_tflops"] > 0 for numbers in trained.values())
    assert row["largest_contrastive_batch"]["largest_batch"] >= 16
    index_build = row["cli"].pop("index build (altclip-index) over the images")
    assert index_build["returncode"] == 0 and index_build["images"] > 0, index_build
    assert any("LoRA" in name for name in row["cli"])
    for name, run in row["cli"].items():
        if name != "deepspeed":
            assert run["returncode"] == 0 and run["global_step"] == 2, (name, run)
    assert "== tiny" in result.stdout and "train contrastive" in result.stdout


def test_flop_count_matches_the_written_out_formula():
    sys.path.insert(0, str(REPO))
    from benchmarks.gpu_check import encoder_forward_flops, stage_flops_per_sample, vision_tokens

    assert encoder_forward_flops(10, 8, 2) == 2 * (24 * 10 * 64 + 4 * 100 * 8)
    assert vision_tokens("vit-l-14_xlm-r-large") == 257 and vision_tokens("vit-b-32_xlm-r-base") == 50
    # stage 2 at the released shape: the frozen ViT-L/14 forward is ~156 GFLOPs of the total per pair
    image = encoder_forward_flops(257, 1024, 24)
    assert 150e9 < image < 170e9
    assert stage_flops_per_sample("vit-l-14_xlm-r-large", "contrastive") > image
