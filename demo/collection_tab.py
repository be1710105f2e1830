"""The demo's "Search a collection" tab (``altclip-demo --index INDEX_DIR``): a query in any language over an index
that ``altclip-index build`` wrote, answered through `altclip.common.collection_index` (the demo imports no other
job), results shown as thumbnails with their scores and captions."""

import logging
from pathlib import Path

import gradio as gr
from PIL import Image

from altclip.common.collection_index import Index, open_indexed_image, weights_fingerprint
from altclip.common.embedding import Embedder

from .engine import MAX_LABEL_CHARS, DemoEngine, DemoInputError

logger = logging.getLogger(__name__)

THUMBNAIL = 256
RESULTS = 12


def load_collection(engine: DemoEngine, folder: str | Path) -> Index:
    """The index in `folder`, queried with the demo's own model, which must be the one that built it."""
    embedder = Embedder(
        engine.model, engine.processor, device=str(engine.device), dtype="float32", batch_size=8, onednn_linear=False
    )  # the engine's model already runs oneDNN's Linear kernel on the CPU
    index = Index.load(folder, embedder=embedder)
    index.check_model(engine.name, weights_fingerprint(engine.model, engine.processor.tokenizer))
    return index


def thumbnail(row: dict) -> Image.Image:
    """A small copy of the result's image, or a grey square where it cannot be read any more."""
    try:
        image = open_indexed_image(row)
    except Exception as error:  # moved or deleted since the build: still listed, shown blank
        logger.warning("Cannot show %s: %s", row["location"], error)
        return Image.new("RGB", (THUMBNAIL, THUMBNAIL), (200, 200, 200))
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return image


class ServedCollection:
    """The tab's index, moved to the newest published version before each query (``altclip-index build --add`` and
    ``remove`` publish new versions while the demo runs), as ``altclip-serve`` does."""

    def __init__(self, index: Index):
        self.index = index

    def current(self) -> Index:
        self.index = self.index.reload()
        return self.index


def search_collection(
    index: "Index | ServedCollection", query: str, k: int = RESULTS
) -> tuple[list[tuple[Image.Image, str]], str]:
    """Thumbnails labelled "score · caption (or file name)" of the `k` best images, and a note (a cut query)."""
    index = index.current() if isinstance(index, ServedCollection) else index
    query = (query or "").strip()
    if not query:
        raise DemoInputError("Please type what to search for.")
    if len(query) > MAX_LABEL_CHARS * 5:
        raise DemoInputError(f"A query may have at most {MAX_LABEL_CHARS * 5} characters.")
    result = index.search(query, k=k)
    shown = [
        (thumbnail(row), f"{score:.3f} · {row['caption'] or Path(row['key'] or row['location']).name}")
        for score, row in zip(result.scores, result.metadata)
    ]
    return shown, " ".join(result.notes)


def collection_tab(index: Index, guard) -> None:
    """The tab's components and event, inside the caller's ``gr.Blocks``; `guard` turns input errors into UI
    messages (the app's `shown_to_user`)."""
    counts = index.manifest["counts"]
    with gr.Tab("Search a collection"):
        gr.Markdown(
            f"{counts['images']:,} images indexed from `{index.folder}` ({index.manifest['index']['factory']} index). "
            "Type in any language the model knows."
        )
        with gr.Row():
            query = gr.Textbox(label="Search the collection for", scale=4)
            button = gr.Button("Search collection", variant="primary", scale=1)
        results = gr.Gallery(label="Best matches (cosine similarity · caption)", columns=6, height="auto")
        note = gr.Markdown()
        served = ServedCollection(index)
        search = guard(lambda text: search_collection(served, text))
        button.click(search, [query], [results, note], api_name="search_collection")
        query.submit(search, [query], [results, note])
