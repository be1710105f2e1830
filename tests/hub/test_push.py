"""altclip-push and altclip-push-space: the dry-run folder, refusals, and real one-commit uploads through
`huggingface_hub` to a Hub-API server that the test runs on 127.0.0.1."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_hub import FakeHub
from huggingface_hub import ModelCard
from ports import free_port
from safetensors.torch import load_file, save_file
from tiny_models import random_images

from altclip.common.cli_errors import CommandLineError
from altclip.hub.cli import main, space_main
from modeling_altclip import AltCLIPModel, AltCLIPProcessor

TOKEN = "hf_test_token"
MODEL_FILES = {
    "README.md",
    "config.json",
    "configuration_altclip.py",
    "modeling_altclip.py",
    "processing_altclip.py",
    "processor_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_stored_login(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no `hf auth login` token from this machine
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture
def training_output(tmp_path, tiny_model_dir) -> Path:
    """A model folder as training leaves it: the model plus a summary, checkpoints, pickles and an optimizer."""
    folder = tmp_path / "trained"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "training_summary.json").write_text(
        json.dumps({"stage": "contrastive", "global_step": 7, "first_loss": 2.0, "last_loss": 1.5})
    )
    (folder / "checkpoint-7").mkdir()
    (folder / "checkpoint-7" / "optimizer.pt").write_bytes(b"optimizer state")
    (folder / "training_args.bin").write_bytes(b"a pickle")
    (folder / "notes.txt").write_text("private notes")
    return folder


@pytest.fixture
def eval_results(tmp_path) -> Path:
    folder = tmp_path / "eval"
    folder.mkdir()
    results = [
        {
            "task": "zero-shot classification",
            "dataset": "imagenet1k",
            "language": "cn",
            "metrics": {"top1": 12.5, "top5": 30.0},
        },
        {"task": "retrieval", "dataset": "xtd10_de", "language": "de", "metrics": {"mean_recall": 44.4}},
    ]
    (folder / "results.json").write_text(json.dumps({"model": "x", "results": results}))
    return folder


def push(*argv: str) -> None:
    main([*map(str, argv)])


def test_dry_run_writes_exactly_the_model_files_and_a_real_card(tmp_path, training_output, eval_results, capsys):
    target = tmp_path / "upload"
    push(
        training_output,
        "someone/tiny-altclip",
        "--dry-run",
        target,
        "--results",
        eval_results,
        "--base-model",
        "openai/clip-vit-base-patch32",
        "FacebookAI/xlm-roberta-base",
        "--dataset",
        "laion/laion2B-en",
    )
    files = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()}
    assert files == MODEL_FILES | {"training_summary.json"}  # no checkpoint, pickle, optimizer or notes
    assert "Dry run: 10 files" in capsys.readouterr().out

    card = ModelCard.load(target / "README.md")
    assert card.data.pipeline_tag == "zero-shot-image-classification" and card.data.library_name == "transformers"
    assert card.data.language == ["zh", "de"] and card.data.license == "apache-2.0"
    assert card.data.base_model == ["openai/clip-vit-base-patch32", "FacebookAI/xlm-roberta-base"]
    assert card.data.datasets == ["laion/laion2B-en"]
    assert {(r.dataset_type, r.metric_type, r.metric_value) for r in card.data.eval_results} == {
        ("imagenet1k", "top1", 12.5),
        ("imagenet1k", "top5", 30.0),
        ("xtd10_de", "mean_recall", 44.4),
    }
    assert 'AutoModel.from_pretrained("someone/tiny-altclip", trust_remote_code=True)' in card.text
    assert "| imagenet1k | cn | 12.50 | 30.00 |" in card.text and "7 steps (loss 2.000 → 1.500)" in card.text

    config = json.loads((target / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_altclip.AltCLIPModel"
    original, published = AltCLIPModel.from_pretrained(training_output), AltCLIPModel.from_pretrained(target)
    inputs = AltCLIPProcessor.from_pretrained(target)(text=["ein Hund"], images=random_images(1), return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(original(**inputs).logits_per_image, published(**inputs).logits_per_image)


# Checkpoints altclip-push refuses before writing anything: each case breaks the training output (or gives a folder
# without a model) and returns the folder to push and the expected message.
def a_nan_logit_scale(folder, tmp_path):
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    tensors["logit_scale"] = torch.tensor(float("nan"))
    save_file(tensors, weights, metadata={"format": "pt"})
    return folder, r"NaN or infinite weights in logit_scale \(1 of 1 values\)"


def nan_embedding_rows(folder, tmp_path):
    """NaN rows the two-caption smoke test never reads: found by the check of every weight."""
    weights = folder / "model.safetensors"
    original = load_file(weights)
    embedding = "text_model.roberta.embeddings.word_embeddings.weight"
    key = next(name for name in original if name.endswith("word_embeddings.weight"))
    broken = original[key].clone()
    broken[100_000:100_010] = float("nan")
    save_file({**original, key: broken}, weights, metadata={"format": "pt"})
    return folder, rf"NaN or infinite weights in {embedding} \({10 * broken.shape[1]:,} of"


def a_truncated_download(folder, tmp_path):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return folder, rf"does not load: OSError: {weights}: the weights cannot be read"


def a_folder_without_a_model(folder, tmp_path):
    return tmp_path, "has no config.json"


BROKEN_CHECKPOINTS = [a_nan_logit_scale, nan_embedding_rows, a_truncated_download, a_folder_without_a_model]


@pytest.mark.parametrize("case", BROKEN_CHECKPOINTS, ids=[case.__name__ for case in BROKEN_CHECKPOINTS])
def test_broken_checkpoints_are_refused(case, tmp_path, training_output, cli):
    folder, message = case(training_output, tmp_path)
    cli.refusal(main, folder, "someone/x", "--dry-run", tmp_path / "upload", match=message)
    assert not (tmp_path / "upload").exists()


def test_dry_run_never_writes_into_a_used_folder(tmp_path, tiny_model_dir, cli):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    cli.refusal(main, tiny_model_dir, "someone/x", "--dry-run", target, match="is not empty")
    assert (target / "keep.txt").read_text() == "mine"


def test_upload_arrives_in_one_commit_on_a_branch(tmp_path, training_output, no_stored_login, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    push(training_output, "someone/tiny-altclip", "--dry-run", tmp_path / "expected")
    with FakeHub(TOKEN) as hub:
        push(
            training_output,
            "someone/tiny-altclip",
            "--private",
            "--revision",
            "dev",
            "--commit-message",
            "First model",
            "--endpoint",
            hub.endpoint,
        )
    record = hub.record
    assert record.repos["someone/tiny-altclip"]["visibility"] == "private"
    assert record.branches == [("someone/tiny-altclip", "dev")]
    (commit,) = record.commits
    assert (commit.repo_id, commit.revision, commit.message) == ("someone/tiny-altclip", "dev", "First model")
    assert set(commit.files) == MODEL_FILES | {"training_summary.json"}
    assert record.validated_metadata[0]["pipeline_tag"] == "zero-shot-image-classification"
    for name, content in commit.files.items():
        assert content == (tmp_path / "expected" / name).read_bytes(), name
    assert "Uploaded 10 files to someone/tiny-altclip in one commit" in capsys.readouterr().out


def test_command_line_upload_with_endpoint_and_token_from_the_environment(tmp_path, tiny_model_dir):
    with FakeHub(TOKEN) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf")}
        done = subprocess.run(
            [sys.executable, "-m", "altclip.hub.cli", str(tiny_model_dir), "someone/cli-model"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    (commit,) = hub.record.commits
    assert set(commit.files) == MODEL_FILES and commit.revision == "main"
    assert hub.record.repos["someone/cli-model"].get("visibility", "public") == "public"


def test_no_token_no_upload(tmp_path, tiny_model_dir, no_stored_login, cli):
    with FakeHub(TOKEN) as hub:
        cli.refusal(main, tiny_model_dir, "someone/x", "--endpoint", hub.endpoint, match="No Hugging Face token")
        line = cli.refusal(
            main, tiny_model_dir, "someone/x", "--endpoint", hub.endpoint, "--token", "hf_wrong", kind=CommandLineError
        )
    assert line == (
        f"altclip-push: the Hub at {hub.endpoint} refused the token (401 Unauthorized): pass a valid --token, set "
        "HF_TOKEN, or run `hf auth login`."
    )
    assert hub.record.commits == [] and hub.record.unauthorized == 1


def test_an_unreachable_endpoint_is_one_line(tiny_model_dir, no_stored_login, cli):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    line = cli.refusal(
        main, tiny_model_dir, "someone/x", "--endpoint", endpoint, "--token", TOKEN, kind=CommandLineError
    )
    assert line == (
        f"altclip-push: cannot reach the Hub at {endpoint} (ConnectError: [Errno 111] Connection refused): check "
        "--endpoint / HF_ENDPOINT and the network."
    )
    space = ["someone/demo", "--model", "someone/x", "--endpoint", endpoint, "--token", TOKEN]
    cli.refusal(
        space_main, *space, kind=CommandLineError, match=f"^altclip-push-space: cannot reach the Hub at {endpoint} "
    )


@pytest.mark.parametrize(
    ("removed", "named"),
    [
        (["tokenizer.json"], "tokenizer.json (or sentencepiece.bpe.model)"),
        (
            ["tokenizer.json", "tokenizer_config.json"],
            "tokenizer.json (or sentencepiece.bpe.model) and no tokenizer_config.json",
        ),
        (["processor_config.json"], "processor_config.json (or preprocessor_config.json)"),
    ],
)
def test_a_folder_without_processor_files_names_them(tmp_path, tiny_model_dir, cli, removed, named):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    for name in removed:
        (folder / name).unlink()
    line = cli.refusal(main, folder, "someone/x", "--dry-run", tmp_path / "upload", kind=CommandLineError)
    assert line == (
        f"altclip-push: {folder} has no {named}: copy the tokenizer and image-processor files from the model it was "
        "trained from, or save them there with AltCLIPProcessor.save_pretrained."
    )
    assert not (tmp_path / "upload").exists()


def test_space_push(tmp_path, no_stored_login):
    space_main(["someone/altclip-demo", "--model", "someone/tiny-altclip", "--dry-run", str(tmp_path / "space")])
    files = {str(p.relative_to(tmp_path / "space")) for p in (tmp_path / "space").rglob("*") if p.is_file()}
    assert {
        "app.py",
        "requirements.txt",
        "README.md",
        "altclip/__init__.py",
        "altclip/demo/app.py",
        "altclip/demo/engine.py",
        "altclip/common/images.py",
        "modeling_altclip/modeling_altclip.py",
    } <= files
    assert not any("__pycache__" in name for name in files)
    # the Space's copies import each other (the demo's image loader is the shared one), not this checkout's
    check = (
        "import altclip.demo.engine as e, altclip.common.images as i, modeling_altclip as m;"
        "print(e.__file__); print(i.__file__); print(m.__file__)"
    )
    imported = subprocess.run([sys.executable, "-c", check], cwd=tmp_path / "space", capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr
    assert all(line.startswith(str(tmp_path / "space")) for line in imported.stdout.split())
    assert "sdk: gradio" in (tmp_path / "space" / "README.md").read_text()
    assert "'someone/tiny-altclip'" in (tmp_path / "space" / "app.py").read_text()
    with FakeHub(TOKEN) as hub:
        space_main(
            ["someone/altclip-demo", "--model", "someone/tiny-altclip", "--endpoint", hub.endpoint, "--token", TOKEN]
        )
    assert hub.record.repos["someone/altclip-demo"]["type"] == "space"
    assert hub.record.repos["someone/altclip-demo"]["sdk"] == "gradio"
    (commit,) = hub.record.commits
    assert set(commit.files) == files
