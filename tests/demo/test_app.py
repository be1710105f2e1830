"""The Gradio app launched on 127.0.0.1: driven through its API with `gradio_client`, and in a real headless
Chromium (Debian's package) that runs an example and finds the result, saving a screenshot."""

import os
import re
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from huggingface_hub import constants
from ports import free_port
from tiny_models import random_images

from altclip.demo.app import build_demo
from altclip.demo.engine import DemoEngine
from altclip.demo.examples import classification_examples, example_photos


@pytest.fixture(scope="module")
def app_url(tiny_model_dir):
    """The app on a free port, with the tiny model (or $ALTCLIP_DEMO_MODEL, used for the README's screenshot)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = build_demo(DemoEngine(os.environ.get("ALTCLIP_DEMO_MODEL", tiny_model_dir), device="cpu"))
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def test_classify_through_the_api(client):
    labels = client.predict(
        handle_file(example_photos()[1]), "Katze, Rakete\n猫", "ein Foto von {}", api_name="/classify"
    )
    confidences = {entry["label"]: entry["confidence"] for entry in labels["confidences"]}
    assert set(confidences) == {"Katze", "Rakete", "猫"} and sum(confidences.values()) == pytest.approx(1, abs=1e-4)


def test_search_and_caption_ranking_through_the_api(client, tmp_path):
    matches, note = client.predict("eine Katze", None, api_name="/search")  # the bundled photos
    assert len(matches) == 5 and note == ""
    ranking = client.predict(handle_file(example_photos()[0]), "an astronaut\n一只猫", api_name="/rank_captions")
    assert {entry["label"] for entry in ranking["confidences"]} == {"an astronaut", "一只猫"}
    random_images(1)[0].save(tmp_path / "mine.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    matches, note = client.predict(
        "x", [handle_file(str(tmp_path / "mine.png")), handle_file(str(tmp_path / "broken.png"))], api_name="/search"
    )
    assert len(matches) == 1 and "Left out 1 unreadable file" in note


@pytest.mark.parametrize(
    "arguments, message",
    [
        ((None, "cat", "{}"), "Please upload an image first"),
        (("photo", "  ", "{}"), "at least one label"),
        (("photo", ",".join(map(str, range(60))), "{}"), "60 labels is too many"),
        (("photo", "cat", "no slot"), "exactly one {}"),
        (("broken", "cat", "{}"), "Could not read the image"),
    ],
)
def test_bad_input_is_a_message_and_the_queue_goes_on(client, tmp_path, arguments, message):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    files = {"photo": handle_file(example_photos()[2]), "broken": handle_file(str(tmp_path / "broken.png")), None: None}
    with pytest.raises(Exception, match=message):
        client.predict(files[arguments[0]], *arguments[1:], api_name="/classify")
    labels = client.predict(handle_file(example_photos()[2]), "cup, cat", "{}", api_name="/classify")
    assert len(labels["confidences"]) == 2  # the app still answers


def label_pattern(labels: str) -> re.Pattern:
    """Any one of the comma-separated `labels`, as the whole text of the Label's top class."""
    return re.compile("^(" + "|".join(re.escape(label.strip()) for label in labels.split(",")) + ")$")


@pytest.mark.slow
def test_headless_chromium_opens_classified_and_runs_an_example(app_url, tmp_path, tiny_model_dir, chromium):
    from playwright.sync_api import expect

    screenshot = Path(os.environ.get("ALTCLIP_SCREENSHOT_DIR", tmp_path)) / "demo_screenshot.png"
    # the first example opens classified; the second is clicked (the model's own examples where it has some)
    examples = classification_examples(os.environ.get("ALTCLIP_DEMO_MODEL", tiny_model_dir))
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    page.goto(app_url)
    page.get_by_text("Examples (labels in several languages)").wait_for(timeout=60_000)
    # on open, before any click: the first example's image, its labels and their probabilities
    expect(page.get_by_label("Labels (comma or newline separated, at most 50)")).to_have_value(examples[0][1])
    expect(page.locator("[data-testid='image'] img, .image-container img").first).to_be_visible(timeout=30_000)
    best = page.locator("[data-testid='label-output-value']").first  # the top label, in large type
    expect(best).to_have_text(label_pattern(examples[0][1]), timeout=30_000)
    expect(page.get_by_role("meter")).to_have_count(len(examples[0][1].split(",")))  # one bar per label
    expect(page.get_by_role("button", name=re.compile(r" \d+%$")).first).to_be_visible()
    # one view of the probabilities: a single block titled so, and no plot beside it
    expect(page.get_by_text("Probabilities", exact=True)).to_have_count(1)
    expect(page.locator(".js-plotly-plot, .vega-embed, [data-testid='plot']")).to_have_count(0)
    page.screenshot(path=str(screenshot), full_page=True)
    page.locator(".gallery-item, tr.tr-body, button.gallery-item").nth(1).click()
    expect(page.get_by_label("Labels (comma or newline separated, at most 50)")).to_have_value(
        examples[1][1], timeout=30_000
    )
    page.get_by_role("button", name="Classify").click()
    expect(best).to_have_text(label_pattern(examples[1][1]), timeout=60_000)
    assert screenshot.stat().st_size > 10_000


def without_a_default_model(tmp_path, monkeypatch):
    monkeypatch.setenv("ALTCLIP_DEFAULT_MODEL", str(tmp_path / "none"))
    return [], "No default AltCLIP model at .*none. Build it offline"


def a_model_neither_here_nor_in_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALTCLIP_DEFAULT_MODEL", str(tmp_path / "none"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return ["--model", "not-a-model"], r"^altclip-demo: --model not-a-model: no such local folder, and not in the Hub"


MISSING_MODELS = [without_a_default_model, a_model_neither_here_nor_in_the_hub_cache]


@pytest.mark.parametrize("case", MISSING_MODELS, ids=[case.__name__ for case in MISSING_MODELS])
def test_command_without_a_model_says_how_to_get_one(case, tmp_path, monkeypatch, cli):
    from altclip.demo.app import main

    argv, message = case(tmp_path, monkeypatch)
    cli.refusal(main, *argv, match=message)
