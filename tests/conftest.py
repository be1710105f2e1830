"""Fixtures shared by the whole suite: tiny random AltCLIP models built here, the real XLM-R tokenizer, one static
HTTP server on 127.0.0.1, one headless Chromium, and the command runner of the one-line-error tests."""

import contextlib
import http.server
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cli_runs import CommandRunner
from tiny_models import TINY_IMAGE_SIZE, tiny_config
from transformers import CLIPImageProcessorPil

from modeling_altclip import AltCLIPModel, AltCLIPProcessor
from modeling_altclip.assets import load_xlmr_tokenizer


@pytest.fixture(scope="session")
def xlmr_tokenizer():
    return load_xlmr_tokenizer()


@pytest.fixture(scope="session")
def image_processor():
    size = TINY_IMAGE_SIZE
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


@pytest.fixture(scope="session")
def processor(xlmr_tokenizer, image_processor):
    return AltCLIPProcessor(image_processor=image_processor, tokenizer=xlmr_tokenizer)


@pytest.fixture(scope="session")
def tiny_model():
    torch.manual_seed(0)
    return AltCLIPModel(tiny_config()).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model, processor):
    """A complete saved model folder: weights, config (with auto_map), code files, processor files."""
    path = tmp_path_factory.mktemp("tiny_altclip")
    tiny_model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def save_tiny_model(processor):
    """Writes another tiny random model (its own seed, optionally another projection width) with the processor
    files into a folder: ``save_tiny_model(path, seed, projection_dim=None) -> path``."""

    def save(path: Path, seed: int, projection_dim: int | None = None) -> Path:
        torch.manual_seed(seed)
        config = tiny_config()
        if projection_dim is not None:
            config.projection_dim = projection_dim
        AltCLIPModel(config).save_pretrained(path)
        processor.save_pretrained(path)
        return path

    return save


class FileServer:
    """A static HTTP server on 127.0.0.1 (a port the system chose) over folders shared with it: each shared folder is
    a link under the server's own folder, served at ``{url}/{number}``."""

    def __init__(self, root: Path):
        self.root = root

        class QuietHandler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def __init__(handler, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), QuietHandler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.numbers = itertools.count()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @contextlib.contextmanager
    def serving(self, folder: Path) -> Iterator[str]:
        """Serves `folder` while the block runs; yields its base URL (no trailing slash)."""
        link = self.root / str(next(self.numbers))
        link.symlink_to(Path(folder).resolve(), target_is_directory=True)
        try:
            yield f"{self.url}/{link.name}"
        finally:
            link.unlink()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def file_server(tmp_path_factory) -> Iterator[FileServer]:
    """The tests' one static HTTP server (remote sources: https://, hf://- and s3://-style URLs; image URLs):
    ``with file_server.serving(folder) as base_url: ...``."""
    server = FileServer(tmp_path_factory.mktemp("http_root"))
    yield server
    server.close()


@pytest.fixture
def served_folder(tmp_path, file_server) -> Iterator[tuple[Path, str]]:
    """An empty folder served over HTTP while the test runs: (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    with file_server.serving(folder) as base:
        yield folder, base


@pytest.fixture
def chromium():
    """A headless Chromium (Debian's package, the one set of flags of browsers.py) for the test."""
    from browsers import launch_chromium
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def cli(capsys) -> CommandRunner:
    """Runs a console entry point's ``main(argv)`` in this process: ``cli(main, *argv)`` -> exit status, stdout,
    stderr; ``cli.refusal(main, *argv, match=...)`` asserts a one-line error and returns it (cli_runs.py)."""
    return CommandRunner(capsys)
