"""``altclip-demo --index``: the "Search a collection" tab over an index of scikit-image's photos, through the API
and in a real headless Chromium (saving a screenshot), and an index of another model refused with both names.

For the README's screenshot, ``ALTCLIP_DEMO_MODEL``, ``ALTCLIP_DEMO_INDEX`` (an index that model built) and
``ALTCLIP_DEMO_QUERY`` replace the tiny model, the photo index and the query, and ``ALTCLIP_SCREENSHOT_DIR`` keeps
the picture."""

import os
from pathlib import Path

import pyarrow
import pyarrow.parquet
import pytest
from gradio_client import Client
from index_builds import build_flags
from ports import free_port

from altclip.demo.app import build_demo, main
from altclip.demo.collection_tab import load_collection
from altclip.demo.engine import DemoEngine
from altclip.demo.examples import example_photos
from altclip.search.cli import index_main

CAPTIONS = ["an astronaut", "eine Katze", "une tasse de café", "火箭", "una motocicleta"]


@pytest.fixture(scope="module")
def photo_index(tmp_path_factory, tiny_model_dir):
    """An index of the five bundled photos, with a caption each (a Parquet table of paths and captions)."""
    if os.environ.get("ALTCLIP_DEMO_INDEX"):
        return Path(os.environ["ALTCLIP_DEMO_INDEX"])
    folder = tmp_path_factory.mktemp("photo_index")
    table = folder / "photos.parquet"
    pyarrow.parquet.write_table(pyarrow.table({"image": example_photos(), "caption": CAPTIONS}), table)
    model = os.environ.get("ALTCLIP_DEMO_MODEL", str(tiny_model_dir))
    index_main(build_flags(model, folder / "index", table))
    return folder / "index"


@pytest.fixture(scope="module")
def app_url(photo_index, tiny_model_dir):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    engine = DemoEngine(os.environ.get("ALTCLIP_DEMO_MODEL", tiny_model_dir), device="cpu")
    app = build_demo(engine, load_collection(engine, photo_index))
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


def test_search_a_collection_through_the_api(app_url):
    results, note = Client(app_url, verbose=False).predict("eine Katze", api_name="/search_collection")
    assert len(results) == 5 and note == ""
    scores = [float(item["caption"].split(" · ")[0]) for item in results]
    assert scores == sorted(scores, reverse=True)
    assert {item["caption"].split(" · ")[1] for item in results} == set(CAPTIONS)


@pytest.mark.slow
def test_the_collection_tab_in_headless_chromium(app_url, tmp_path, chromium):
    from playwright.sync_api import expect

    screenshot = Path(os.environ.get("ALTCLIP_SCREENSHOT_DIR", tmp_path)) / "search_screenshot.png"
    query = os.environ.get("ALTCLIP_DEMO_QUERY", "une tasse de café")
    page = chromium.new_page(viewport={"width": 1280, "height": 800})
    page.goto(app_url)
    page.get_by_role("tab", name="Search a collection").click(timeout=60_000)
    page.get_by_label("Search the collection for").fill(query)
    page.get_by_role("button", name="Search collection").click()
    thumbnails = page.locator("[data-testid='gallery'] img, .gallery-container img, .thumbnail-item img")
    expect(thumbnails.first).to_be_visible(timeout=60_000)
    if not os.environ.get("ALTCLIP_DEMO_INDEX"):  # the photo index's captions are shown with the scores
        expect(page.get_by_text(query).first).to_be_visible()
    assert thumbnails.count() >= 5
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000


@pytest.mark.parametrize(
    "index, expected",
    [
        pytest.param(
            None,
            dict(match="^altclip-demo: --index", contains=["was built by", "not by {other}"]),
            id="another model's",
        ),
        pytest.param("nowhere", dict(contains=["no such index folder"]), id="no index folder"),
    ],
)
def test_an_index_that_cannot_serve_the_model_is_refused_in_one_line(
    photo_index, tmp_path, save_tiny_model, cli, index, expected
):
    other = save_tiny_model(tmp_path / "other", seed=5)
    expected = {**expected, "contains": [text.format(other=other) for text in expected["contains"]]}
    cli.refusal(main, "--model", other, "--index", photo_index if index is None else tmp_path / index, **expected)
