"""`Client`: the Python side of ``altclip-serve``, as clip-retrieval's ClipClient is of clip-back.

from altclip.search import Client
client = Client("http://127.0.0.1:8000")
result = client.search(text="ein Hund am Strand", k=20)       # or image="photo.jpg", image_url=..., embedding=...
result.ids, result.scores, result.metadata, result.notes, result.version
"""

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from altclip.common.collection_index import SearchResult
from altclip.common.errors import AltCLIPError


class SearchServerError(AltCLIPError, ValueError):
    """The server refused a request: its one-line ``error`` and the HTTP status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def image_bytes(image: Any) -> bytes:
    """A path, bytes or PIL image as encoded image bytes (PIL images as PNG)."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Client:
    """Queries an ``altclip-serve`` server: `search`, `metadata`, `indices`, `health`; `index` names the default
    index of this client (the server's first when None)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", index: str | None = None, timeout: float = 60.0):
        self.url, self.index = url.rstrip("/"), index
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def _request(self, method: str, path: str, **options) -> Any:
        try:
            response = self._http.request(method, path, **options)
        except httpx.RemoteProtocolError:  # a kept-alive connection the server closed as the query left: once more
            response = self._http.request(method, path, **options)
        if response.status_code >= 400:
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise SearchServerError(f"{self.url}{path}: {message}", response.status_code)
        return response.json() if path != "/metrics" else response.text

    def search(
        self,
        text: str | None = None,
        image: Any = None,
        image_url: str | None = None,
        embedding: Sequence[float] | None = None,
        k: int = 10,
        offset: int = 0,
        deduplicate: bool | float = False,
        index: str | None = None,
    ) -> SearchResult:
        """The `k` best images from the `offset`-th on for a text (any language), an image (path, bytes, PIL), an
        image URL the server fetches, or an embedding."""
        body: dict[str, Any] = {"k": k, "offset": offset, "deduplicate": deduplicate, "index": index or self.index}
        if text is not None:
            body["text"] = text
        if image is not None:
            body["image"] = base64.b64encode(image_bytes(image)).decode("ascii")
        if image_url is not None:
            body["image_url"] = image_url
        if embedding is not None:
            body["embedding"] = [float(value) for value in embedding]
        answer = self._request("POST", "/search", json=body)
        return SearchResult(
            ids=[row["id"] for row in answer["results"]],
            scores=[row["score"] for row in answer["results"]],
            metadata=[row.get("metadata", {}) for row in answer["results"]],
            notes=answer["notes"],
            version=answer["version"],
        )

    def metadata(self, ids: Sequence[int], index: str | None = None) -> dict[int, dict]:
        """The metadata rows of `ids` (those still in the index)."""
        answer = self._request("POST", "/metadata", json={"ids": list(ids), "index": index or self.index})
        return {int(id_): row for id_, row in answer["metadata"].items()}

    def indices(self) -> dict:
        return self._request("GET", "/indices")

    def health(self) -> dict:
        return self._request("GET", "/health")

    def metrics(self) -> str:
        return self._request("GET", "/metrics")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
