"""Shard sizing (sizes.json through pipe: commands, --shard_sizes, --train_num_samples, local counts kept) and
``altclip-train plan`` (its report, its refusals, the shipped 8-GPU config in seconds, accelerate's memory parts)."""

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from accelerate.commands.estimate import estimate_training_usage
from stage_runs import run_stage, toy_teacher_inputs

from altclip.training.cli import main as train_main
from altclip.training.data import shard_stream
from altclip.training.data.sizing import inner_url, resolve_shard_sizes
from altclip.training.data.sources import parse_sources
from altclip.training.run_plan import count_parameters, memory_report
from modeling_altclip import AltCLIPConfig, AltCLIPModel

REPO = Path(__file__).resolve().parents[2]


def toy_sizes(toy) -> dict[str, int]:
    return json.loads((Path(toy["shards"]).parent / "sizes.json").read_text())


def test_the_url_inside_a_pipe_command_finds_its_sizes_json(toy):
    folder = Path(toy["shards"]).parent
    spec = f"pipe:cat {folder}/shard-{{0000..0007}}.tar"
    assert inner_url("pipe:aws s3 cp s3://b/x/00001.tar -") == "s3://b/x/00001.tar"
    sized = resolve_shard_sizes(parse_sources([spec]))
    assert sized.sizes == [toy_sizes(toy)[f"shard-{n:04d}.tar"] for n in range(8)]
    assert sized.origins == ["sizes.json"] and not sized.estimated


def test_pipe_shards_without_sizes_json_are_refused_then_sized_by_shard_sizes_or_train_num_samples(tmp_path, toy):
    for number in range(2):
        shutil.copy(Path(toy["shards"]).parent / f"shard-000{number}.tar", tmp_path / f"shard-000{number}.tar")
    sources = parse_sources([f"pipe:cat {tmp_path}/shard-000{{0..1}}.tar"])
    with pytest.raises(Exception, match=r"no sizes.json beside the remote shards .*--shard_sizes FILE.*--train_num_"):
        resolve_shard_sizes(sources)
    given = tmp_path / "sizes-elsewhere.json"
    given.write_text(json.dumps({"shard-0000.tar": 5, f"{tmp_path}/shard-0001.tar": 7}))
    assert resolve_shard_sizes(sources, [str(given)]).sizes == [5, 7]
    estimated = resolve_shard_sizes(sources, train_num_samples=[41])
    assert estimated.sizes == [21, 20] and estimated.estimated and estimated.origins == ["--train_num_samples"]


def test_local_shards_are_counted_once_and_the_count_kept(tmp_path, toy, monkeypatch):
    folder = tmp_path / "shards"
    shutil.copytree(Path(toy["shards"]).parent, folder)
    (folder / "sizes.json").unlink()
    sources = parse_sources([f"{folder}/shard-{{0000..0007}}.tar"])
    first = resolve_shard_sizes(sources, cache_dir=str(tmp_path / "cache"))
    assert first.sizes == [toy_sizes(toy)[f"shard-{n:04d}.tar"] for n in range(8)] and first.origins == ["counted"]

    def no_second_count(url):
        raise AssertionError(f"{url} counted again")

    monkeypatch.setattr(shard_stream, "_count_samples", no_second_count)
    assert resolve_shard_sizes(sources, cache_dir=str(tmp_path / "cache")).sizes == first.sizes


def plan_output(capsys, *flags: str) -> str:
    train_main(["plan", *flags])
    return capsys.readouterr().out


def test_plan_of_toy_shards_reports_readers_steps_batches_and_memory(toy, teacher_model_dir, capsys):
    flags = [
        "--model_name_or_path", str(teacher_model_dir), "--train_files", str(toy["shards"]),
        "--per_device_train_batch_size", "8", "--dataloader_num_workers", "2", "--world_size", "2",
    ]  # fmt: skip
    text = plan_output(capsys, *flags)
    assert "4 readers (processes x workers) for 8 shards (2.0 per reader, mode split)" in text
    report = json.loads(plan_output(capsys, *flags, "--format", "json"))
    data = report["data"]
    assert data["samples_per_epoch"] == 180 and data["batches_per_rank_per_epoch"] == 2 * 6  # 45 per reader
    assert data["per_device_batch"] == {"asked": 8, "min": 7, "mean": 7.5, "max": 8}
    assert report["sources"][0]["sized_by"] == "sizes.json"
    memory = report["model"]["memory_per_device"]
    assert report["model"]["backend"] == "ddp" and memory["weights"] == 4 * report["model"]["parameters"]["total"]


def test_a_plan_that_leaves_readers_without_samples_is_refused_in_one_line(tmp_path, toy, teacher_model_dir, cli):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(Path(toy["shards"]).parent / "shard-0000.tar", one)
    cli.refusal(
        train_main,
        "plan", "--model_name_or_path", teacher_model_dir, "--train_files", one / "shard-0000.tar",
        "--dataloader_num_workers", "8", "--world_size", "4", "--data_cache_dir", tmp_path / "cache",
        contains=["for 32 readers", "fewer --dataloader_num_workers"],
    )  # fmt: skip


def test_the_shipped_8_gpu_config_plans_from_sizes_given_without_any_download(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(REPO)
    report = json.loads(
        plan_output(
            capsys,
            "--config",
            "training/configs/contrastive_vit-l-14_xlm-r-large.yaml",
            "--world_size",
            "8",
            "--train_num_samples",
            "414080000",
            "100000000",
            "--format",
            "json",
        )  # fmt: skip
    )
    data, model = report["data"], report["model"]
    assert data["shards"] == 51_408 and data["readers"] == 64 and data["per_device_batch"]["max"] <= 512
    assert data["padding_share"] < 0.01 and model["backend"] == "zero2" and model["activation_checkpointing"]
    assert model["parameters"]["total"] == count_parameters(AltCLIPConfig(), "contrastive")["total"]
    assert [source["samples_per_epoch"] for source in report["sources"]] == [411_264_000, 102_816_000]


def test_plan_for_8_nodes_of_8_processes_is_the_plan_of_a_world_of_64(capsys, monkeypatch):
    """--nnodes 8 --nproc_per_node 8 (torchrun's names, the sbatch recipe's 64 GPUs) plans the world of 64."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(REPO)
    config = ["--config", "training/configs/contrastive_vit-l-14_xlm-r-large.yaml", "--train_num_samples", "414080000"]
    by_nodes = plan_output(capsys, *config, "100000000", "--nnodes", "8", "--nproc_per_node", "8", "--format", "json")
    by_world = plan_output(capsys, *config, "100000000", "--world_size", "64", "--format", "json")
    nodes, world = json.loads(by_nodes), json.loads(by_world)
    assert nodes.pop("nodes") == 8 and world.pop("nodes") == 1 and nodes == world
    assert nodes["world_size"] == 64 and nodes["data"]["readers"] == 64 * 8
    assert nodes["data"]["batches_per_rank_per_epoch"] < 125_512 // 7  # the 8-process plan's, over 8 (rounded up)
    text = plan_output(capsys, *config, "100000000", "--nnodes", "8", "--nproc_per_node", "8")
    assert text.startswith("Plan of altclip-train contrastive on 64 processes (8 nodes x 8)")
    with pytest.raises(SystemExit) as refused:
        plan_output(capsys, *config, "100000000", "--nnodes", "8", "--nproc_per_node", "8", "--world_size", "8")
    assert refused.value.code == 2
    assert "--world_size 8 is not --nnodes 8 x --nproc_per_node 8" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_ddp_memory_of_a_fully_trained_model_on_one_device_equals_accelerates_estimate(dtype):
    params = count_parameters(AltCLIPConfig(), "contrastive", unfreeze_vision=True)
    ours = memory_report(params, "ddp", world=1, bf16=dtype == "bfloat16")
    theirs = estimate_training_usage(4 * params["total"], dtype)
    assert (ours["weights"], ours["gradients"], ours["optimizer_states"]) == (
        theirs["model"],
        theirs["gradients"],
        theirs["optimizer"],
    )


def keyed(raw: dict) -> dict:
    return {"key": raw["where"]}


def test_readers_starting_inside_a_shard_read_past_its_first_samples_and_together_read_each_once(toy):
    sources = parse_sources([str(toy["shards"])])
    everything = Counter(sample["where"] for url in sources[0].urls for sample in shard_stream.shard_samples(url))
    read: Counter = Counter()
    for rank in range(3):  # 180 samples of 8 shards in 3 ranges of 60: two cuts inside shards
        stream = shard_stream.ShardStream(sources, keyed, batch_size=7, rank=rank, world_size=3, shuffle_buffer=4)
        assert (stream.shard_plan.reader_pieces(0, rank).start > 0).any() or rank == 0
        batches = list(stream)
        assert len(batches) == len(stream) == 9 and max(len(batch) for batch in batches) <= 7
        read.update(row["key"] for batch in batches for row in batch)
    assert read == everything


def test_resampled_stream_reads_whole_shards_from_their_start_up_to_its_quota(toy):
    sources = parse_sources([str(toy["shards"])])
    stream = shard_stream.ShardStream(sources, keyed, batch_size=8, mode="resampled", samples_per_epoch=50)
    batches = list(stream)
    assert [len(batch) for batch in batches] == [8, 7, 7, 7, 7, 7, 7]
    pieces = stream.shard_plan.reader_pieces(0, 0)
    assert (pieces.start == 0).all() and pieces.lengths.sum() == 50


def test_shard_flags_on_tables_are_refused_before_models_load(tmp_path, toy):
    with pytest.raises(SystemExit, match=r"--train_num_samples applies to webdataset shards"):
        run_stage("teacher", tmp_path, *toy_teacher_inputs(toy), "--train_num_samples", "100")


def test_a_stage_1_flag_names_the_stage_and_the_teacher_counts_in_the_total(toy, teacher_model_dir, capsys):
    """Stage 1 may start from a trained AltCLIP (add-language, ``--teacher self``): the plan takes it as stage 1,
    not as stage 2 (it failed on an ambiguous --teacher), and the teacher it holds is in the memory total."""
    from altclip.training.plan_command import infer_stage

    assert infer_stage(["--model_name_or_path", "m", "--teacher", "self"]) == "teacher"
    assert infer_stage(["--model_name_or_path", "m", "--loss", "siglip"]) == "contrastive"
    assert infer_stage(["--clip_model_name_or_path", "c", "--text_encoder_name_or_path", "x"]) == "teacher"
    flags = ["--model_name_or_path", str(teacher_model_dir), "--teacher", "self", "--train_files", str(toy["parallel"])]
    memory = json.loads(plan_output(capsys, *flags, "--format", "json"))["model"]["memory_per_device"]
    parts = ("weights", "gradients", "optimizer_states", "activations", "frozen_teacher")
    assert memory["frozen_teacher"] > 0 and memory["total"] == sum(memory[part] for part in parts)
    precomputed = json.loads(plan_output(capsys, *flags, "--precompute_teacher_features", "true", "--format", "json"))
    assert precomputed["model"]["memory_per_device"]["frozen_teacher"] == 0  # freed before the first step


def test_anchor_texts_count_in_the_text_towers_activations(tmp_path, toy, teacher_model_dir, capsys):
    """``--anchor_texts`` puts `--anchor_batch_size` more texts through the text tower in every forward: with a
    frozen image tower, the plan's activations grow by that share of the batch."""
    anchors = tmp_path / "anchors.txt"
    anchors.write_text("a red circle\nein blauer Kreis\n", encoding="utf-8")
    flags = ["--model_name_or_path", str(teacher_model_dir), "--train_files", str(toy["captions"]), "--format", "json"]
    flags += ["--per_device_train_batch_size", "8"]

    def activations(*extra: str) -> int:
        return json.loads(plan_output(capsys, *flags, *extra))["model"]["memory_per_device"]["activations"]

    plain = activations()
    assert activations("--anchor_texts", str(anchors)) == 2 * plain  # default: as many anchors as captions
    assert activations("--anchor_texts", str(anchors), "--anchor_batch_size", "4") == plain * 3 // 2
    for world in (1, 2):  # and their start embeddings, float32 on the device: this rank's share of 2 texts
        memory = json.loads(plan_output(capsys, *flags, "--anchor_texts", str(anchors), "--world_size", str(world)))
        memory = memory["model"]["memory_per_device"]
        width = AltCLIPModel.from_pretrained(teacher_model_dir).config.projection_dim
        assert memory["anchor_targets"] == (2 // world) * width * 4
        parts = ("weights", "gradients", "optimizer_states", "activations", "anchor_targets")
        assert memory["total"] == sum(memory[part] for part in parts)
