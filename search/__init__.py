"""Search your own images in any language: ``altclip-index`` embeds a collection (one or many processes) into a
FAISS index, ``altclip-search`` and `Index` query it with text, an image or both."""

from altclip.common.collection_index import Index, SearchResult

__all__ = ["Index", "SearchResult"]
