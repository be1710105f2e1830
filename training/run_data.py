"""The data of a run, from its parsed arguments, in one place (open_clip's ``get_data``): `get_data` checks the
sources against the stage and counts shard sizes once; the dataset builders below turn that `RunData` into what the
Trainer reads. ``altclip-train plan`` and the run call the same functions on the same object, so the plan is the
run's plan; nothing is cached between calls."""

import functools
from dataclasses import dataclass

from transformers import TrainingArguments

from altclip.common.errors import UsageError

from .arguments import RunArguments
from .data.epoch_plan import data_seed, shuffles
from .data.image_text_data import ImageTextTable, PairDecoder, decode_shard_sample
from .data.language_balance import balance_shards, check_balancing_flags
from .data.shard_plan import RESAMPLED, SPLIT
from .data.shard_stream import ShardStream
from .data.sizing import SizedShards, resolve_shard_sizes
from .data.sources import Source, parse_sources
from .data.tables import built_first, check_columns
from .data.text_data import ParallelText
from .loop.contrastive_objective import check_objective_flags
from .loop.text_anchors import AnchorTexts, check_anchor_arguments, read_anchor_texts
from .run_plan import plan_problems, shard_data_report


@dataclass
class RunData:
    """What a run reads: its checked training and validation sources and, for webdataset shards, their sizes."""

    stage: str
    train_sources: list[Source]
    validation_sources: list[Source] | None
    sized: SizedShards | None = None  # shard sources only: samples per shard and where each size came from
    anchors: AnchorTexts | None = None  # --anchor_texts: this rank's share, their count and digest (stage 2)

    @property
    def is_shards(self) -> bool:
        return self.train_sources[0].is_shards


def get_data(run: RunArguments, stage: str) -> RunData:
    """The run's sources, checked before any model loads (one-line errors), with shard sizes resolved once (each
    node's first process counts local shards; the others read its counts)."""
    train_sources, validation_sources = read_sources(run.data, stage)
    check_stage_flags(stage, run.stage, run.training, train_sources)
    check_balancing_flags(run.data, train_sources)
    data = RunData(stage, train_sources, validation_sources)
    if stage == "contrastive":
        check_anchor_arguments(run.stage, run.flags_given, run.model.model_name_or_path)
        if run.stage.anchor_texts:
            stage_args, training = run.stage, run.training
            data.anchors = read_anchor_texts(
                stage_args.anchor_texts, stage_args.anchor_text_column, training.process_index, training.world_size
            )
    if not data.is_shards:
        given = [flag for flag in ("shard_sizes", "train_num_samples", "dataset_resampled") if getattr(run.data, flag)]
        if given:
            raise UsageError(
                f"altclip-train: --{given[0]} applies to webdataset shards; tables are sized by their rows: drop it."
            )
        return data
    with run.training.main_process_first(desc="shard sizes"):
        data.sized = resolve_shard_sizes(  # a DataFormatError names an unsized source in one line
            train_sources, run.data.shard_sizes, run.data.train_num_samples, run.data.data_cache_dir
        )
    if run.data.language_sampling_alpha is not None:  # sources weighted n^alpha by their samples
        data.train_sources = balance_shards(train_sources, data.sized.sizes, run.data.language_sampling_alpha)
    return data


def check_shard_plan(data: RunData, run: RunArguments) -> None:
    """Shard sources: the reading plan of this world size checked against the invariants before any model loads."""
    if not data.is_shards:
        return
    problems = plan_problems(shard_data_report(shard_stream(data, run)), run.training)
    if problems:
        raise UsageError(f"altclip-train: {problems[0]}")


def read_sources(data_args, stage: str) -> tuple[list[Source], list[Source] | None]:
    """Training and validation sources, checked before any model loads (one-line errors): they exist, their kinds
    fit the stage and every table has the stage's columns."""
    columns = (
        (data_args.english_column, data_args.translation_column)
        if stage == "teacher"
        else (data_args.image_column, data_args.caption_column)
    )
    train = parse_sources(data_args.train_files, data_args.train_file_weights)
    validation = parse_sources(data_args.validation_files) if data_args.validation_files else None
    for source in train + (validation or []):
        if not source.is_shards:
            check_columns(source, columns)
    if stage == "teacher" and any(source.is_shards for source in train + (validation or [])):
        raise UsageError(
            "altclip-train teacher: parallel text comes as tables (JSONL/CSV/TSV/Parquet/datasets "
            "folders), not webdataset shards."
        )
    if validation and any(source.is_shards for source in validation):
        raise UsageError(
            "altclip-train: --validation_files must be tables (JSONL/CSV/TSV/Parquet/datasets folders); held-out "
            "webdataset shards are not supported for eval_loss yet."
        )
    if data_args.shuffle_buffer < 1:
        raise UsageError(f"altclip-train: --shuffle_buffer must be at least 1, not {data_args.shuffle_buffer}.")
    return train, validation


def check_stage_flags(stage: str, stage_args, training_args: TrainingArguments, train_sources: list[Source]) -> None:
    """Flag combinations that cannot work, refused in one line before any model loads."""
    if stage != "contrastive":
        return
    check_objective_flags(stage_args)
    if stage_args.cache_image_features and stage_args.unfreeze_vision:
        raise UsageError(
            "altclip-train: --cache_image_features needs a frozen image tower (its embeddings change every step "
            "under --unfreeze_vision); drop one of the two."
        )
    if stage_args.cache_image_features and any(source.is_shards for source in train_sources):
        raise UsageError(
            "altclip-train: --cache_image_features works on table data (JSONL/CSV/TSV/Parquet/datasets folders), "
            "whose rows have a fixed index; webdataset shards stream and are not cached."
        )
    sharded = "DeepSpeed" if training_args.deepspeed else "FSDP" if training_args.fsdp else None
    if sharded and stage_args.full_batch_negatives and training_args.gradient_accumulation_steps > 1:
        raise UsageError(
            "altclip-train: --full_batch_negatives with --gradient_accumulation_steps above 1 (GradCache: several "
            f"backward passes per optimizer step, the temperature read outside the forward) is not supported under "
            f"{sharded}; use DDP, or pass --full_batch_negatives false for plain accumulation."
        )


def reading_mode(data_args) -> dict:
    """`ShardStream` keywords of ``--dataset_resampled`` (with ``--train_num_samples`` as the epoch's samples)."""
    if not data_args.dataset_resampled:
        return {"mode": SPLIT, "samples_per_epoch": None}
    samples = sum(data_args.train_num_samples) if data_args.train_num_samples else None
    return {"mode": RESAMPLED, "samples_per_epoch": samples}


def shard_stream(
    data: RunData, run: RunArguments, decode=dict, world_size: int | None = None, rank: int = 0, shuffle: bool = True
) -> ShardStream:
    """The `ShardStream` of one reader rank: decoding with `decode` for training, or `dict` for a plan that is never
    iterated (every rank computes the same plan)."""
    training_args: TrainingArguments = run.training
    return ShardStream(
        data.train_sources,
        decode,
        batch_size=training_args.per_device_train_batch_size,
        rank=rank,
        world_size=training_args.world_size if world_size is None else world_size,
        num_workers=training_args.dataloader_num_workers,
        seed=data_seed(training_args),
        shuffle_buffer=run.data.shuffle_buffer,
        shuffle=shuffle and shuffles(training_args),
        sizes=data.sized.sizes,
        **reading_mode(run.data),
    )


def table_dataset(data: RunData, run: RunArguments, sources: list[Source], image_processor=None):
    """`ParallelText` (teacher learning) or `ImageTextTable` (contrastive) of table `sources`, built (or opened from
    the Arrow cache) by each node's first process; the plan passes no image processor and decodes no image."""
    data_args = run.data
    if data.stage == "teacher":
        with built_first(run.training, sources, data_args.table_build_processes, "parallel text tables"):
            return ParallelText(
                sources,
                english_column=data_args.english_column,
                translation_column=data_args.translation_column,
                include_english_pairs=run.stage.include_english_pairs,
                cache_dir=data_args.data_cache_dir,
                build_processes=data_args.table_build_processes,
            )
    with built_first(run.training, sources, data_args.table_build_processes, "image-caption tables"):
        return ImageTextTable(
            sources,
            image_processor,
            image_column=data_args.image_column,
            caption_column=data_args.caption_column,
            image_root=data_args.image_root,
            cache_dir=data_args.data_cache_dir,
            reduced_jpeg_decoding=data_args.reduced_jpeg_decoding,
            build_processes=data_args.table_build_processes,
        )


def train_dataset(data: RunData, run: RunArguments, image_processor=None):
    """What this rank trains on: a `ShardStream` of its share of the shards, or the table dataset."""
    if data.is_shards:
        decode = functools.partial(
            decode_shard_sample, decode=PairDecoder(image_processor, run.data.reduced_jpeg_decoding)
        )
        return shard_stream(data, run, decode, rank=run.training.process_index)
    return table_dataset(data, run, data.train_sources, image_processor)


def validation_dataset(data: RunData, run: RunArguments, image_processor=None):
    """The held-out tables for eval_loss (None without --validation_files)."""
    if not data.validation_sources:
        return None
    return table_dataset(data, run, data.validation_sources, image_processor)
