"""``altclip-demo``: a Gradio app for multilingual zero-shot classification, text-to-image search and caption
ranking with any AltCLIP model (default: the package's own, built offline by the README's main command)."""

import argparse
import errno
import functools
import logging
import socket
from collections.abc import Callable, Sequence

import gradio as gr

from altclip.common.cli_errors import fail, one_line_parser_errors
from altclip.common.model_paths import incomplete_model_folder, unavailable_model
from altclip.common.number_checks import NumberRange, number_type

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


def first_example_result(engine: DemoEngine, example: list[str]) -> dict[str, float] | None:
    """The first example's probabilities, computed once when the app is built, so that the page opens on a
    classified image instead of an empty upload box; None (an empty result) if that example cannot be classified."""
    try:
        return engine.classify(example[0], example[1], example[2])
    except Exception:
        logger.exception("The first example could not be classified; the demo opens without a result")
        return None


def build_demo(engine: DemoEngine, collection=None) -> gr.Blocks:
    """The app; with `collection` (an `altclip.common.collection_index.Index`), a "Search a collection" tab too."""
    photos = example_photos()
    examples = classification_examples(engine.name)

    @shown_to_user
    def classify(image, labels, template):
        return engine.classify(file_path(image), labels, template)

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
                    image = gr.Image(
                        type="filepath", label="Image", sources=["upload", "clipboard"], value=examples[0][0]
                    )
                    labels = gr.Textbox(
                        label=f"Labels (comma or newline separated, at most {MAX_LABELS})",
                        value=examples[0][1],
                        lines=2,
                    )
                    template = gr.Textbox(label="Prompt template ({} is the label)", value=examples[0][2])
                    classify_button = gr.Button("Classify", variant="primary")
                with gr.Column():
                    label_output = gr.Label(
                        label="Probabilities", num_top_classes=10, value=first_example_result(engine, examples[0])
                    )
            gr.Examples(
                examples,
                inputs=[image, labels, template],
                label="Examples (labels in several languages)",
            )
            classify_button.click(
                classify, [image, labels, template], [label_output], api_name="classify", preprocess=False
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


def check_address(host: str, port: int) -> None:
    """Binds `host`:`port` once and lets it go, so that a port in use or a host that is not this machine's is named
    in one line before the model loads (Gradio would say it after loading, in a traceback)."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a port in TIME_WAIT is free
            probe.bind(address)
    except socket.gaierror as error:
        raise fail(f"altclip-demo: --host {host}: {error.strerror}; give an address such as 127.0.0.1 or 0.0.0.0.")
    except OSError as error:
        raise fail(f"altclip-demo: {address_problem(error, host, port)}") from None


def address_problem(error: OSError, host: str, port: int) -> str:
    if error.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use (another altclip-demo?): choose a free one with --port."
    if error.errno == errno.EADDRNOTAVAIL:
        return f"--host {host} is not an address of this machine: use 127.0.0.1, or 0.0.0.0 for every interface."
    if error.errno == errno.EACCES:
        return f"port {port} needs administrator rights: choose --port 1024 or above (e.g. 7860)."
    return f"cannot serve on {host}:{port}: {error.strerror or error}."


port_number = number_type(NumberRange(low=1, high=65535, whole=True))  # --port: a TCP port


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="altclip-demo", description=__doc__)
    parser.add_argument("--model", help="AltCLIP folder or Hub id (default: the package's default model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=port_number, default=7860, help="port to serve on")
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
    problem = unavailable_model(args.model) or incomplete_model_folder(model)
    if problem:
        raise fail(f"altclip-demo: --model {problem}")
    if args.index:  # a missing or corrupt index is named before the model loads
        from altclip.common.collection_index import CollectionIndexError, read_manifest

        try:
            read_manifest(args.index)
        except CollectionIndexError as error:
            raise fail(f"altclip-demo: --index {args.index}: {error}") from None
    check_address(args.host, args.port)
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
    try:
        build_demo(engine, collection).launch(server_name=args.host, server_port=args.port, share=args.share)
    except OSError as error:  # taken between the check above and now (Gradio's error has no errno: "Cannot find
        # empty port in range")
        in_use = OSError(errno.EADDRINUSE, "in use") if "Cannot find empty port" in str(error) else error
        raise fail(f"altclip-demo: {address_problem(in_use, args.host, args.port)}") from None


if __name__ == "__main__":
    main()
