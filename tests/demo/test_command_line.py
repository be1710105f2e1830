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


def refusal(capsys, *argv: str) -> str:
    with pytest.raises(CommandLineError) as refused:
        app.main(list(argv))
    assert refused.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == str(refused.value)
    return str(refused.value)


def test_a_port_in_use_is_one_line_before_the_model_loads(capsys, monkeypatch, tiny_model_dir, taken_port):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(app, "DemoEngine", no_model)
    assert refusal(capsys, "--model", str(tiny_model_dir), "--port", str(taken_port)) == (
        f"altclip-demo: port {taken_port} on 127.0.0.1 is already in use (another altclip-demo?): choose a free one "
        "with --port."
    )
    assert refusal(capsys, "--model", str(tiny_model_dir), "--host", "10.254.254.254", "--port", "7999") == (
        "altclip-demo: --host 10.254.254.254 is not an address of this machine: use 127.0.0.1, or 0.0.0.0 for every "
        "interface."
    )
    assert refusal(capsys, "--model", str(tiny_model_dir), "--port", "70000") == (
        "altclip-demo: argument --port: 70000 is too large; give a whole number in [1, 65535]. 'altclip-demo --help' "
        "lists every flag."
    )


def test_a_port_taken_after_the_check_is_the_same_line(capsys, monkeypatch, tiny_model_dir, taken_port):
    monkeypatch.setattr(app, "check_address", lambda host, port: None)  # the port is taken while the model loads
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    assert refusal(capsys, "--model", str(tiny_model_dir), "--port", str(taken_port)) == (
        f"altclip-demo: port {taken_port} on 127.0.0.1 is already in use (another altclip-demo?): choose a free one "
        "with --port."
    )


def test_a_model_folder_without_tokenizer_files_names_them(capsys, tmp_path, tiny_model_dir):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "tokenizer.json").unlink()
    assert refusal(capsys, "--model", str(folder)) == (
        f"altclip-demo: --model {folder} has no tokenizer.json (or sentencepiece.bpe.model): copy the tokenizer and "
        "image-processor files from the model it was trained from, or save them there with "
        "AltCLIPProcessor.save_pretrained."
    )
