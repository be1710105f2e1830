"""Local servers for the tests, on 127.0.0.1 only: a free TCP port (torchrun's rendezvous, the Gradio app) and a
static HTTP server over a folder (remote sources: https://, hf://- and s3://-style URLs)."""

import contextlib
import http.server
import socket
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[str]:
    """Serves `folder` over HTTP on 127.0.0.1 while the block runs; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
