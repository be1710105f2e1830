"""Search your own images in any language: ``altclip-index`` embeds a collection (one or many processes) into a
FAISS index, ``altclip-search`` and `Index` query it with text, an image or both, ``altclip-serve`` serves it over
HTTP and `Client` queries that server."""

from typing import TYPE_CHECKING

from altclip.common.collection_index import Index, SearchResult

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Client", "Index", "SearchResult"]


def __getattr__(name: str):
    if name == "Client":  # httpx only when the client is used
        from .client import Client

        return Client
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
