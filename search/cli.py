"""``altclip-index`` (build, add to, remove from an index of an image collection) and ``altclip-search`` (query it in
any language, with text, an image, or both).

    altclip-index build --model M --images photos/ more/*.jpg table.parquet shards/{000..099}.tar --output INDEX
    torchrun --nproc_per_node 8 -m altclip.search.cli build ...   (each process embeds its share of the parts)
    altclip-index build --add --images new_photos/ --output INDEX
    altclip-index remove INDEX --ids 3 17
    altclip-search INDEX "ein Hund am Strand" [--image FILE] [--k 20] [--json]
"""

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from altclip.common.cli_errors import fail, one_line_parser_errors, run_with_one_line_errors
from altclip.common.collection_index import (
    MANIFEST,
    CollectionIndexError,
    Index,
    read_manifest,
    read_metadata,
    weights_fingerprint,
)
from altclip.common.errors import UsageError
from altclip.common.index_folder import files_folder, index_model, portable_model_name
from altclip.common.model_paths import missing_local_model
from altclip.common.number_checks import COUNT, WHOLE_NON_NEGATIVE, NumberRange, number_type
from altclip.common.processes import processes_released_when_done
from altclip.common.records import DataFormatError

logger = logging.getLogger(__name__)
INDEX_PROGRAM, SEARCH_PROGRAM = "altclip-index", "altclip-search"


def _translator(program: str):
    """User errors as one line starting with the program's name; anything else keeps its traceback."""

    def translate(error: BaseException) -> str | None:
        if isinstance(error, (CollectionIndexError, DataFormatError, FileNotFoundError)):
            return f"{program}: {str(error).splitlines()[0]}"
        if isinstance(error, (OSError, ValueError)):
            return f"{program}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        return None

    return translate


RECALL = NumberRange(low=0, high=1, low_open=True)  # recall@10 to reach: above 0, at most 1


def index_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=INDEX_PROGRAM, description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="embed a collection (or --add to one) and index it")
    build.add_argument(
        "--images", nargs="+", required=True, help="folders, image files, globs, braces, tables, shards, URLs"
    )
    build.add_argument("--output", required=True, help="the index folder (created; resumed if a build was killed)")
    build.add_argument(
        "--model", help="AltCLIP folder or Hub id (default: the package's default model; with --add: the index's model)"
    )
    build.add_argument("--add", action="store_true", help="append the images to the index in --output")
    build.add_argument("--image_column", default="image", help="tables: the image path, URL or bytes column")
    build.add_argument("--caption_column", default="caption", help="tables: the caption column (optional)")
    build.add_argument("--batch_size", type=number_type(COUNT), default=64)
    build.add_argument(
        "--num_workers", type=number_type(WHOLE_NON_NEGATIVE), default=2, help="DataLoader workers decoding images"
    )
    build.add_argument("--device", default="auto", help="auto: this process's GPU if any, else the CPU")
    build.add_argument(
        "--dtype", default="auto", help="auto: bf16 on a GPU, fp32 on the CPU; or float32/float16/bfloat16"
    )
    build.add_argument("--quantization", choices=["int8"], help="CPU: dynamic int8 Linear layers")
    build.add_argument(
        "--reduced_decoding", action="store_true", help="decode JPEGs at the smallest scale covering the input"
    )
    build.add_argument(
        "--part_size", type=number_type(COUNT), default=4096, help="images per part (the unit of work and of resuming)"
    )
    build.add_argument("--memory_budget", help="the vector index's memory budget, e.g. 16G (default; chooses its kind)")
    build.add_argument(
        "--exact_limit", type=number_type(WHOLE_NON_NEGATIVE), default=None, help="exact search up to this many images"
    )
    build.add_argument(
        "--recall_target", type=number_type(RECALL), default=None, help="approximate index: recall@10 to reach"
    )
    build.add_argument(
        "--tune_queries",
        help="a text file of example queries, one a line, to tune the index for (default: the collection's captions "
        "or file names)",
    )
    build.add_argument(
        "--dims",
        type=number_type(COUNT),
        help="index the first N values of each embedding (Matryoshka-trained models; default: all)",
    )
    remove = commands.add_parser("remove", help="drop images from an index by id")
    remove.add_argument("index", help="the index folder")
    remove.add_argument("--ids", type=number_type(WHOLE_NON_NEGATIVE), nargs="+", required=True)
    for sub in (build, remove):
        one_line_parser_errors(sub, INDEX_PROGRAM)
    one_line_parser_errors(parser, INDEX_PROGRAM)
    return parser


def resolve_model(name: str | None, program: str) -> str:
    """The model to load, named before anything loads: a missing folder is one line, not a Hub retry."""
    if name is None:
        from modeling_altclip.assets import require_default_model

        return str(require_default_model())
    if missing_local_model(name) or (not Path(name).exists() and "/" not in name):
        raise fail(f"{program}: --model {name}: no such folder (and not a Hub id like owner/name).")
    return name


def indexed_locations(output: Path, manifest: dict) -> set[str]:
    """The locations an index already holds or found unreadable: ``--add`` does not read them again."""
    import pyarrow.parquet

    files = files_folder(output, manifest)
    locations = set(read_metadata(files).column("location").to_pylist())
    if (files / "skipped.parquet").is_file():
        locations |= set(pyarrow.parquet.read_table(files / "skipped.parquet").column("location").to_pylist())
    return locations


def read_tune_queries(path: str | None) -> list[str] | None:
    """The example queries in `path` (one a line), checked before any model loads."""
    if path is None:
        return None
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--tune_queries {path}: cannot be read ({error}); give a UTF-8 text file, one query a line.")
    if not any(lines):
        raise UsageError(f"--tune_queries {path}: no query in it; give one query a line.")
    return [line for line in lines if line]


def check_output(args) -> dict | None:
    """The existing manifest for --add; refuses to overwrite an index or a folder that is not one."""
    output = Path(args.output)
    has_index = (output / MANIFEST).is_file()
    if args.add:
        if not has_index:
            raise fail(f"{INDEX_PROGRAM}: --add: {output} holds no finished index; build one first (without --add).")
        return read_manifest(output)
    if has_index:
        raise fail(f"{INDEX_PROGRAM}: {output} already holds an index; give --add to append, or another --output.")
    if output.is_dir() and any(output.iterdir()) and not (output / "plan.json").is_file():
        raise fail(f"{INDEX_PROGRAM}: --output {output} is a folder with other files; give a new or empty folder.")
    return None


def build_command(args) -> None:
    from altclip.common.embedding import Embedder
    from modeling_altclip import AltCLIPModel, AltCLIPProcessor, check_finite_weights

    from .build import (
        IndexSettings,
        check_plan,
        embed_parts,
        finalize,
        process_group,
        wait_for_everyone,
    )
    from .collection import plan_collection
    from .vector_index import parse_bytes

    output = Path(args.output)
    previous = check_output(args)
    settings = IndexSettings(**(previous or {}).get("index_settings", {}))
    if args.memory_budget is not None:
        settings.memory_budget = parse_bytes(args.memory_budget)
    if args.exact_limit is not None:
        settings.exact_limit = args.exact_limit
    if args.recall_target is not None:
        settings.recall_target = args.recall_target
    if args.dims is not None and previous and args.dims != (settings.dims or previous["dim"]):
        raise UsageError(
            f"--dims {args.dims}: {output} indexes {settings.dims or previous['dim']} dimensions; add with the same "
            "--dims (or none)."
        )
    if args.dims is not None and args.dims < 1:
        raise UsageError(f"--dims {args.dims}: give a positive number of dimensions.")
    settings.dims = args.dims if args.dims is not None else settings.dims
    tune_queries = read_tune_queries(args.tune_queries)
    first_part = len(previous["parts"]) if previous else 0
    indexed = indexed_locations(output, previous) if previous else set()
    plan = plan_collection(
        args.images, args.part_size, args.image_column, args.caption_column, first_part, indexed_locations=indexed
    )
    parts = plan.parts
    if plan.repeated:
        print(
            f"{output}: {len(plan.repeated)} image location(s) given twice or already indexed, left out "
            f"(first: {plan.repeated[0]})."
        )
    if previous and not parts:
        print(f"{output}: nothing new to add; the index is unchanged ({previous['counts']['images']} images).")
        return
    if previous:
        model_name = resolve_model(args.model or index_model(output, previous), INDEX_PROGRAM)
    else:
        model_name = resolve_model(args.model, INDEX_PROGRAM)
    rank, world_size = process_group()

    device = args.device
    if device == "auto" and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    model = AltCLIPModel.from_pretrained(model_name)
    check_finite_weights(model, model_name)
    processor = AltCLIPProcessor.from_pretrained(model_name)
    fingerprint = weights_fingerprint(model, processor.tokenizer)
    dim = model.config.projection_dim
    if settings.dims is not None and settings.dims > dim:
        raise UsageError(f"--dims {settings.dims}: {model_name} embeds in {dim} dimensions; give at most {dim}.")
    if previous:
        if dim != previous["dim"]:
            raise fail(
                f"{INDEX_PROGRAM}: --add: {model_name} embeds in {dim} dimensions, the index in {output} holds "
                f"{previous['dim']} (built by {previous['model']}); add with that model or build a new index."
            )
        if fingerprint != previous["fingerprint"]:
            raise fail(
                f"{INDEX_PROGRAM}: --add: {output} was built by {previous['model']} (fingerprint "
                f"{previous['fingerprint']}), not by {model_name} (fingerprint {fingerprint}); add with that model."
            )
    digest = check_plan(output, parts, rank)
    embedder = Embedder(
        model,
        processor,
        device=device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        quantization=args.quantization,
        reduced_decoding=args.reduced_decoding,
    )
    counts = embed_parts(embedder, parts, output, rank, world_size)
    logger.info(
        "Process %d/%d embedded %d images (%d unreadable)", rank + 1, world_size, counts["images"], counts["skipped"]
    )
    wait_for_everyone(world_size)
    if rank == 0:

        def embed_texts(texts: list[str]):
            return torch.nn.functional.normalize(embedder.texts(texts, "tuning queries"), dim=-1).numpy()

        manifest = finalize(
            output,
            parts,
            {key: previous[key] for key in ("model", "model_relative") if key in previous}
            if previous
            else portable_model_name(model_name, output),
            fingerprint,
            dim,
            settings,
            args.images,
            digest,
            embed_texts=embed_texts,
            tune_queries=tune_queries,
            repeated=len(plan.repeated),
        )
        counts, index = manifest["counts"], manifest["index"]
        new_duplicates = counts["duplicates"] - (previous["counts"].get("duplicates", 0) if previous else 0)
        print(
            f"{output}: {counts['images']} images indexed ({counts['skipped']} unreadable, listed in "
            f"{output / manifest['files'] / 'skipped.parquet'}; {new_duplicates} duplicate(s) of indexed images "
            f"left out); {index['factory']} index, recall@10 for text queries {index['recall_at_10_text']}, for "
            f"images {index['recall_at_10_image']} (version {manifest['version']})"
        )
        if index.get("note"):
            print(f"{output}: {index['note']}")
    wait_for_everyone(world_size)


def remove_command(args) -> None:
    from .build import remove_ids

    manifest = remove_ids(Path(args.index), args.ids)
    print(f"{args.index}: removed {len(set(args.ids))} image(s); {manifest['counts']['images']} remain.")


def index_main(argv: Sequence[str] | None = None) -> None:
    """``altclip-index``: build (or --add to) an index, or remove ids from it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = index_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = build_command if args.command == "build" else remove_command
    with processes_released_when_done():
        run_with_one_line_errors(INDEX_PROGRAM, lambda: command(args), translate=_translator(INDEX_PROGRAM))


def search_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=SEARCH_PROGRAM, description="Search an image index in any language.")
    parser.add_argument("index", help="the index folder (altclip-index build)")
    parser.add_argument("query", nargs="?", default="", help="what to look for, in any language the model knows")
    parser.add_argument("--image", action="append", default=[], help="an image to search by (with the text: both)")
    parser.add_argument("--k", type=number_type(COUNT), default=20, help="how many results")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--model", help="the model answering queries (default: the index's; must be the same)")
    one_line_parser_errors(parser, SEARCH_PROGRAM)
    return parser


def search_command(args) -> None:
    if args.k < 1:
        raise fail(f"{SEARCH_PROGRAM}: --k {args.k}: give at least 1.")
    if not args.query.strip() and not args.image:
        raise fail(f"{SEARCH_PROGRAM}: give a query text, an --image, or both.")
    for image in args.image:
        if not Path(image).is_file():
            raise fail(f"{SEARCH_PROGRAM}: --image {image}: no such file.")
    index = Index.load(args.index, model=args.model)
    if args.model:
        resolve_model(args.model, SEARCH_PROGRAM)
    else:
        index.model_name  # a model folder that is not here: named now, not after the Hub's retries
    result = index.search(texts=[args.query] if args.query.strip() else [], images=args.image, k=args.k)
    for note in result.notes:
        print(f"{SEARCH_PROGRAM}: {note}", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {"ids": result.ids, "scores": result.scores, "metadata": result.metadata, "notes": result.notes},
                ensure_ascii=False,
                indent=2,
            )
        )
        return
    for score, row in zip(result.scores, result.metadata):
        caption = f"  {row['caption']}" if row["caption"] else ""
        key = f"#{row['key']}" if row["key"] and not row["location"].endswith(row["key"]) else ""
        print(f"{score:.4f}  {row['id']:>8}  {row['location']}{key}{caption}")


def search_main(argv: Sequence[str] | None = None) -> None:
    """``altclip-search INDEX "query" [--image FILE] [--k 20] [--json]``."""
    args = search_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_with_one_line_errors(SEARCH_PROGRAM, lambda: search_command(args), translate=_translator(SEARCH_PROGRAM))


if __name__ == "__main__":  # torchrun -m altclip.search.cli build ...
    index_main()
