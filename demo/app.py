"""``altclip-demo``: a Gradio app for multilingual zero-shot classification, text-to-image search and caption
ranking with any AltCLIP model (default: the package's own, built offline by the README's main command)."""

import argparse
import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import gradio as gr
import pandas as pd

from altclip.common.cli_errors import fail, one_line_parser_errors
from altclip.common.model_paths import missing_local_model

from .engine import MAX_GALLERY, MAX_LABELS, DemoEngine, DemoInputError
from .examples import CAPTIONS, SEARCHES, classification_examples, example_photos

logger = logging.getLogger(__name__)


def shown_to_user(function: Callable) -> Callable:
    """Input problems become a message in the UI; anything unexpected too (logged), never a crashed queue."""

    @functools.wraps(function)
    def guarded(*args):
        try:
            return function(*args)
        except DemoInputError as error:
            raise gr.Error(str(error)) from error
        except Exception as error:
            logger.exception("The demo failed on an input")
            raise gr.Error(f"Something went wrong: {type(error).__name__}: {error}") from error

    return guarded


def file_path(payload):
    """The uploaded file's path. Events run with ``preprocess=False`` so that this package, not Gradio, decodes
    uploads and can name what is wrong with a bad one; Gradio then hands over its file payloads as they are."""
    if isinstance(payload, dict):
        return payload.get("path")
    return getattr(payload, "path", payload)


def probability_chart(probabilities: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame({"label": list(probabilities), "probability": list(probabilities.values())})


def build_demo(engine: DemoEngine, collection=None) -> gr.Blocks:
    """The app; with `collection` (an `altclip.common.collection_index.Index`), a "Search a collection" tab too."""
    photos = example_photos()
    examples = classification_examples(engine.name)

    @shown_to_user
    def classify(image, labels, template):
        probabilities = engine.classify(file_path(image), labels, template)
        return probabilities, probability_chart(probabilities)

    @shown_to_user
    def search(query, files):
        gallery = [file_path(f) for f in files] if files else photos
        return engine.search(query, gallery)

    @shown_to_user
    def rank(image, captions):
        return engine.rank_captions(file_path(image), captions)

    with gr.Blocks(title="AltCLIP multilingual demo") as demo:
        gr.Markdown(
            f"# AltCLIP: CLIP in your language\nModel: `{engine.name}`. Type labels, queries and captions "
            "in any language the model knows."
        )
        with gr.Tab("Zero-shot classification"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"])
                    labels = gr.Textbox(
                        label=f"Labels (comma or newline separated, at most {MAX_LABELS})",
                        value=examples[0][1],
                        lines=2,
                    )
                    template = gr.Textbox(label="Prompt template ({} is the label)", value=examples[0][2])
                    classify_button = gr.Button("Classify", variant="primary")
                with gr.Column():
                    label_output = gr.Label(label="Probabilities", num_top_classes=10)
                    chart = gr.BarPlot(x="label", y="probability", label="Probabilities", y_lim=[0, 1], sort="-y")
            gr.Examples(
                examples,
                inputs=[image, labels, template],
                label="Examples (labels in several languages)",
            )
            classify_button.click(
                classify, [image, labels, template], [label_output, chart], api_name="classify", preprocess=False
            )
        with gr.Tab("Text-to-image search"):
            with gr.Row():
                with gr.Column():
                    query = gr.Textbox(label="Search for", value=SEARCHES[0])
                    files = gr.File(
                        label=f"Your gallery (optional, at most {MAX_GALLERY} images; default: the bundled photos)",
                        file_count="multiple",
                        type="filepath",
                    )
                    search_button = gr.Button("Search", variant="primary")
                with gr.Column():
                    results = gr.Gallery(label="Best matches (cosine similarity)", columns=4, height="auto")
                    note = gr.Markdown()
            gr.Examples([[text] for text in SEARCHES], inputs=[query], label="Example queries")
            search_button.click(search, [query, files], [results, note], api_name="search", preprocess=False)
        with gr.Tab("Image-to-text ranking"):
            with gr.Row():
                with gr.Column():
                    rank_image = gr.Image(type="filepath", label="Image", value=photos[1])
                    captions = gr.Textbox(label="Captions, one per line", value=CAPTIONS, lines=5)
                    rank_button = gr.Button("Rank captions", variant="primary")
                ranking = gr.Label(label="Caption probabilities", num_top_classes=20)
            rank_button.click(rank, [rank_image, captions], [ranking], api_name="rank_captions", preprocess=False)
        if collection is not None:
            from .collection_tab import collection_tab

            collection_tab(collection, shown_to_user)
    demo.queue(default_concurrency_limit=2, max_size=64)
    return demo


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="altclip-demo", description=__doc__)
    parser.add_argument("--model", help="AltCLIP folder or Hub id (default: the package's default model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="ask Gradio for a public share link")
    parser.add_argument("--index", help="an index folder (altclip-index build) to search in a tab of its own")
    one_line_parser_errors(parser, parser.prog)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    from modeling_altclip.assets import require_default_model

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        model = args.model or str(require_default_model())
    except FileNotFoundError as error:
        raise fail(f"altclip-demo: {error}") from None
    if args.model and (missing_local_model(args.model) or (not Path(args.model).exists() and "/" not in args.model)):
        raise fail(f"altclip-demo: --model {args.model}: no such folder (and not a Hub id like owner/name).")
    if args.index:  # a missing or corrupt index is named before the model loads
        from altclip.common.collection_index import CollectionIndexError, read_manifest

        try:
            read_manifest(args.index)
        except CollectionIndexError as error:
            raise fail(f"altclip-demo: --index {args.index}: {error}") from None
    try:
        engine = DemoEngine(model)
    except (OSError, ValueError) as error:  # a folder without a model, a broken or non-finite checkpoint
        raise fail(f"altclip-demo: {str(error).splitlines()[0]}") from None
    collection = None
    if args.index:
        from altclip.common.collection_index import CollectionIndexError

        from .collection_tab import load_collection

        try:
            collection = load_collection(engine, args.index)
        except CollectionIndexError as error:  # missing, corrupt, or built by another model: one line
            raise fail(f"altclip-demo: --index {args.index}: {error}") from None
    build_demo(engine, collection).launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
