"""altclip-demo's address problems: one line naming the port or host (exit status 2), found before the model loads
where it can be, and Gradio's own "Cannot find empty port" when the port is taken after that check."""

import shutil
import socket

import pytest

from altclip.common.cli_errors import CommandLineError
from altclip.demo import app


@pytest.fixture
def taken_port():
    """A port on 127.0.0.1 that another server listens on."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def a_port_in_use(model, port):
    line = (
        f"altclip-demo: port {port} on 127.0.0.1 is already in use (another altclip-demo?): choose a free one with "
        "--port."
    )
    return ["--model", model, "--port", port], line


def a_host_that_is_not_of_this_machine(model, port):
    line = (
        "altclip-demo: --host 10.254.254.254 is not an address of this machine: use 127.0.0.1, or 0.0.0.0 for every "
        "interface."
    )
    return ["--model", model, "--host", "10.254.254.254", "--port", "7999"], line


def a_port_past_65535(model, port):
    line = (
        "altclip-demo: argument --port: 70000 is too large; give a whole number in [1, 65535]. 'altclip-demo --help' "
        "lists every flag."
    )
    return ["--model", model, "--port", "70000"], line


BAD_ADDRESSES = [a_port_in_use, a_host_that_is_not_of_this_machine, a_port_past_65535]


@pytest.mark.parametrize("case", BAD_ADDRESSES, ids=[case.__name__ for case in BAD_ADDRESSES])
def test_a_bad_address_is_one_line_before_the_model_loads(case, cli, monkeypatch, tiny_model_dir, taken_port):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(app, "DemoEngine", no_model)
    argv, line = case(tiny_model_dir, taken_port)
    cli.refusal(app.main, *argv, kind=CommandLineError, line=line)


def test_a_port_taken_after_the_check_is_the_same_line(cli, monkeypatch, tiny_model_dir, taken_port):
    monkeypatch.setattr(app, "check_address", lambda host, port: None)  # the port is taken while the model loads
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    argv, line = a_port_in_use(tiny_model_dir, taken_port)
    cli.refusal(app.main, *argv, kind=CommandLineError, line=line)


def test_a_model_folder_without_tokenizer_files_names_them(cli, tmp_path, tiny_model_dir):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "tokenizer.json").unlink()
    line = (
        f"altclip-demo: --model {folder} has no tokenizer.json (or sentencepiece.bpe.model): copy the tokenizer and "
        "image-processor files from the model it was trained from, or save them there with "
        "AltCLIPProcessor.save_pretrained."
    )
    cli.refusal(app.main, "--model", folder, kind=CommandLineError, line=line)
