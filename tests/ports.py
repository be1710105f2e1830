"""A free TCP port on 127.0.0.1 (torchrun's rendezvous, the Gradio app, the search server). The tests' static HTTP
server is the ``file_server`` fixture of conftest.py."""

import socket


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
