"""``altclip-push MODEL_DIR REPO_ID`` publishes a checkpoint with its model card in one commit;
``altclip-push-space SPACE_ID --model REPO_ID`` publishes the Gradio demo as a Space.

The token comes from ``--token``, ``HF_TOKEN`` or the stored ``hf auth login``; ``--endpoint`` (or
``HF_ENDPOINT``) points at another Hub. ``--dry-run DIR`` writes the exact upload folder and uploads nothing.
"""

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence

from altclip.common.cli_errors import fail, one_line_parser_errors

from .model_card import CardOptions
from .space import prepare_space_folder
from .staging import PushRefused, prepare_upload_folder
from .upload import describe_hub_failure, resolve_token, upload_in_one_commit


def add_upload_flags(parser: argparse.ArgumentParser, default_message: str) -> None:
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", "--branch", default=None, help="branch to commit to (created if missing)")
    parser.add_argument("--commit-message", "--commit_message", default=default_message)
    parser.add_argument(
        "--dry-run",
        "--dry_run",
        metavar="DIR",
        default=None,
        help="write the folder that would be uploaded into DIR (new or empty) and stop",
    )
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login)")
    parser.add_argument("--endpoint", default=os.environ.get("HF_ENDPOINT"), help="Hub URL (default: HF_ENDPOINT)")


def model_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="altclip-push", description="Check, card and upload an AltCLIP checkpoint.")
    parser.add_argument("model_dir", help="the model folder (altclip-train output or any AltCLIP checkpoint)")
    parser.add_argument("repo_id", help="owner/name on the Hub")
    parser.add_argument(
        "--language",
        "--languages",
        dest="languages",
        nargs="+",
        default=[],
        help="languages for the card (default: those of the --results)",
    )
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument(
        "--base-model",
        "--base_model",
        dest="base_models",
        nargs="+",
        default=[],
        help="Hub ids of the CLIP and the text encoder it started from",
    )
    parser.add_argument("--dataset", "--datasets", dest="datasets", nargs="+", default=[])
    parser.add_argument("--tag", "--tags", dest="tags", nargs="+", default=[])
    parser.add_argument(
        "--results",
        nargs="+",
        default=[],
        help="altclip-eval output folders (or results.json files) for the card's model-index",
    )
    add_upload_flags(parser, "Upload AltCLIP model with altclip-push")
    return parser


def space_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="altclip-push-space", description="Publish the Gradio demo as a Space.")
    parser.add_argument("space_id", help="owner/name of the Space")
    parser.add_argument("--model", required=True, help="the Hub id of the model the Space loads")
    parser.add_argument("--title", default="AltCLIP multilingual demo")
    add_upload_flags(parser, "Upload AltCLIP demo with altclip-push-space")
    return parser


def stage_and_upload(args: argparse.Namespace, prepare, repo_id: str, **upload_kwargs) -> None:
    """`prepare(folder)` writes the upload folder; a dry run keeps it, a real run uploads it in one commit."""
    if args.dry_run:
        files = prepare(args.dry_run)
        print(f"Dry run: {len(files)} files in {args.dry_run}, nothing uploaded:\n  " + "\n  ".join(files))
        return
    token = resolve_token(args.token)  # before any work: no token, no push
    with tempfile.TemporaryDirectory(prefix="altclip-push-") as folder:
        files = prepare(folder)
        try:
            info = upload_in_one_commit(
                folder,
                repo_id,
                token=token,
                private=args.private,
                revision=args.revision,
                commit_message=args.commit_message,
                endpoint=args.endpoint,
                **upload_kwargs,
            )
        except Exception as error:
            message = describe_hub_failure(error, args.endpoint, repo_id)
            if message is None:
                raise
            raise PushRefused(message) from error
    print(f"Uploaded {len(files)} files to {repo_id} in one commit: {info.commit_url}")


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None, space: bool) -> None:
    one_line_parser_errors(parser, parser.prog)
    args = parser.parse_args(argv)
    try:
        if space:
            stage_and_upload(
                args,
                lambda folder: prepare_space_folder(folder, args.model, args.title),
                args.space_id,
                repo_type="space",
                space_sdk="gradio",
            )
        else:
            options = CardOptions(
                languages=args.languages,
                license=args.license,
                base_models=args.base_models,
                datasets=args.datasets,
                tags=args.tags,
                results_files=args.results,
            )
            stage_and_upload(
                args, lambda folder: prepare_upload_folder(args.model_dir, folder, args.repo_id, options), args.repo_id
            )
    except (PushRefused, PermissionError, FileNotFoundError, ValueError) as error:
        raise fail(f"{parser.prog}: {str(error).splitlines()[0]}") from None


def main(argv: Sequence[str] | None = None) -> None:
    run(model_parser(), sys.argv[1:] if argv is None else argv, space=False)


def space_main(argv: Sequence[str] | None = None) -> None:
    run(space_parser(), sys.argv[1:] if argv is None else argv, space=True)


if __name__ == "__main__":
    main()
