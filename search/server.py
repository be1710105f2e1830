"""``altclip-serve INDEX_DIR... [--host --port --workers]``: an HTTP JSON API over one or more indices (FastAPI on
uvicorn), as clip-retrieval's clip-back serves its indices.

    POST /search          {"text" | "image" (base64) | "image_url" | "embedding", "k", "offset", "deduplicate", "index"}
    POST /search/upload   multipart: file=<image>, text=, k=, offset=, deduplicate=, index=
    POST /metadata        {"ids": [...], "index"}
    GET  /indices, /health, /metrics (Prometheus text)

The model loads once, before the port opens; concurrent queries are answered in batches (`service.QueryBatcher`);
``altclip-index build --add`` and ``remove`` publish new versions, served from the next query on. A bad request gets
a 4xx whose ``error`` is one line naming the field; no request stops the server. A deduplicated page ends at result
``MAX_DEDUPLICATED`` (1,000) at most: it is answered in the thread that answers every query.
"""

import argparse
import asyncio
import base64
import binascii
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from altclip.common.cli_errors import one_line_parser_errors, run_with_one_line_errors
from altclip.common.errors import UsageError

PROGRAM = "altclip-serve"
MAX_K = 10_000
MAX_OFFSET = 100_000
MAX_IMAGE_BYTES = 20 * 2**20
URL_TIMEOUT_S = 20
KEEP_ALIVE_S = 75
CONFIG_VARIABLE = "ALTCLIP_SERVE_CONFIG"  # how `--workers N` hands the indices to each worker process

logger = logging.getLogger(__name__)


def named_folders(specs: Sequence[str]) -> dict[str, str]:
    """``NAME=FOLDER`` or ``FOLDER`` (named by its last part) for each index; names must differ."""
    folders: dict[str, str] = {}
    for spec in specs:
        name, _, folder = spec.rpartition("=") if "=" in spec else (Path(spec).resolve().name, "", spec)
        if not name:
            raise UsageError(f"{spec}: give NAME=FOLDER or FOLDER.")
        if name in folders:
            raise UsageError(f"two indices are named {name!r} ({folders[name]}, {folder}); name them: NAME=FOLDER.")
        folders[name] = folder
    return folders


def deduplicated_page_error(k: int, offset: int, deduplicate: bool | float) -> str | None:
    """The one-line refusal of a deduplicated page ending past result `MAX_DEDUPLICATED`, or None: such a page is
    answered by comparing thousands of candidates in the thread that answers every query, so it is refused before it
    is queued."""
    from altclip.common.collection_index import DEDUPLICATE_THRESHOLD, check_deduplicated_page

    try:
        check_deduplicated_page(k, offset, DEDUPLICATE_THRESHOLD if deduplicate is True else float(deduplicate or 0))
    except UsageError as error:
        return str(error)
    return None


def create_app(service):
    """The FastAPI app answering through `service` (a `service.SearchService`)."""
    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    from .service import Query, UnknownIndexError

    app = FastAPI(title="altclip-serve", description=__doc__)

    class SearchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        index: str | None = None
        text: str | None = Field(None, max_length=10_000)
        image: str | None = Field(None, description="the image file's bytes, base64")
        image_url: str | None = None
        embedding: list[float] | None = None
        k: int = Field(10, ge=1, le=MAX_K)
        offset: int = Field(0, ge=0, le=MAX_OFFSET)
        deduplicate: bool | float = False
        metadata: bool = True

        @field_validator("deduplicate")
        @classmethod
        def threshold(cls, value):
            if not isinstance(value, bool) and not 0 < value <= 1:
                raise ValueError("give true, false or a cosine threshold in (0, 1]")
            return value

    class MetadataRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        index: str | None = None
        ids: list[int] = Field(..., max_length=MAX_K)

    def failure(status: int, message: str) -> JSONResponse:
        service.metrics.observe_error(status)
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part not in ("body", "query", "form")) or "body"
        value = f" (got {first['input']!r:.60})" if "input" in first and first["type"] != "missing" else ""
        return failure(422, f"{where}: {first['msg']}{value}")

    async def fetch(url: str) -> bytes:
        import httpx

        if not url.startswith(("http://", "https://")):
            raise UsageError(f"image_url {url!r:.80}: give an http:// or https:// URL.")
        try:
            async with httpx.AsyncClient(timeout=URL_TIMEOUT_S, follow_redirects=True) as client:
                async with client.stream("GET", url) as response:
                    if response.status_code != 200:
                        raise UsageError(f"image_url {url:.80}: answered HTTP {response.status_code}.")
                    data = b""
                    async for chunk in response.aiter_bytes():
                        data += chunk
                        if len(data) > MAX_IMAGE_BYTES:
                            raise UsageError(f"image_url {url:.80}: larger than {MAX_IMAGE_BYTES >> 20} MiB.")
                    return data
        except httpx.HTTPError as error:
            raise UsageError(f"image_url {url:.80}: cannot be fetched ({type(error).__name__}).") from None

    async def run(query: Query, metadata: bool = True) -> JSONResponse:
        started = time.perf_counter()
        try:
            result = await asyncio.wrap_future(service.batcher.submit(query))
        except UnknownIndexError as error:
            return failure(404, str(error))
        except ValueError as error:  # the query's own problem: an unreadable image, a NaN embedding, a bad size
            return failure(400, str(error).splitlines()[0])
        except Exception as error:  # a defect: named in one line, logged in full, the server goes on
            logger.exception("Query failed")
            return failure(500, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        service.metrics.observe_query(query.index or service.default, query.kind, time.perf_counter() - started)
        rows = [
            {"id": id_, "score": score, **({"metadata": row} if metadata else {})}
            for id_, score, row in zip(result.ids, result.scores, result.metadata)
        ]
        return JSONResponse(
            {"index": query.index or service.default, "version": result.version, "results": rows, "notes": result.notes}
        )

    @app.post("/search")
    async def search(request: SearchRequest):
        given = [name for name in ("text", "image", "image_url", "embedding") if getattr(request, name) is not None]
        if not given or (request.text is not None and not request.text.strip() and len(given) == 1):
            return failure(422, "body: give text, image (base64), image_url or embedding.")
        if request.embedding is not None and len(given) > 1:
            return failure(
                422, f"embedding: give it alone, not with {', '.join(n for n in given if n != 'embedding')}."
            )
        if request.image is not None and request.image_url is not None:
            return failure(422, "image: give image or image_url, not both.")
        if refused := deduplicated_page_error(request.k, request.offset, request.deduplicate):
            return failure(422, refused)
        images = []
        try:
            if request.image is not None:
                images.append(base64.b64decode(request.image, validate=True))
            if request.image_url is not None:
                images.append(await fetch(request.image_url))
        except binascii.Error:
            return failure(422, "image: not base64; send the image file's bytes base64-encoded.")
        except UsageError as error:
            return failure(400, str(error))
        query = Query(
            index=request.index,
            texts=[request.text] if request.text and request.text.strip() else [],
            images=images,
            embedding=request.embedding,
            k=request.k,
            offset=request.offset,
            deduplicate=request.deduplicate,
        )
        return await run(query, request.metadata)

    @app.post("/search/upload")
    async def search_upload(
        file: UploadFile = File(...),
        text: str = Form(""),
        k: int = Form(10, ge=1, le=MAX_K),
        offset: int = Form(0, ge=0, le=MAX_OFFSET),
        deduplicate: bool = Form(False),
        index: str | None = Form(None),
    ):
        if refused := deduplicated_page_error(k, offset, deduplicate):
            return failure(422, refused)
        data = await file.read(MAX_IMAGE_BYTES + 1)
        if len(data) > MAX_IMAGE_BYTES:
            return failure(413, f"file: larger than {MAX_IMAGE_BYTES >> 20} MiB.")
        query = Query(index=index, texts=[text] if text.strip() else [], images=[data], k=k, offset=offset)
        query.deduplicate = deduplicate
        return await run(query)

    # The handlers that read an index's tables, or may load its newer version (`service.index`), are plain `def`s:
    # FastAPI runs them in its thread pool, so that the event loop goes on answering meanwhile (/health in particular).
    @app.post("/metadata")
    def metadata(request: MetadataRequest):
        try:
            index = service.index(request.index)
        except UnknownIndexError as error:
            return failure(404, str(error))
        rows = index.metadata_rows(index.rows_of_ids(request.ids)).to_pylist()
        # a JSONResponse: encoded here, in the thread pool (FastAPI encodes a returned dict in the event loop)
        return JSONResponse({"version": index.version, "metadata": {str(row["id"]): row for row in rows}})

    @app.get("/indices")
    def indices():
        described = {}
        for name in list(service.indices):
            index = service.index(name)
            manifest = index.manifest
            described[name] = {
                "folder": str(index.folder),
                "version": index.version,
                "images": len(index),
                "model": manifest["model"],
                "dim": index.dim,
                "index_dim": index.index_dim,
                "index": {key: manifest["index"].get(key) for key in ("factory", "parameters", "recall_at_10_text",
                                                                      "recall_at_10_image", "note")},
            }  # fmt: skip
        return described

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "indices": {n: {"version": i.version, "images": len(i)} for n, i in service.indices.items()},
        }

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(service.metrics.text(), media_type="text/plain; version=0.0.4")

    return app


def app_from_environment():
    """The app of one ``--workers`` process, from the configuration `main` put in the environment."""
    from .service import SearchService

    config = json.loads(os.environ[CONFIG_VARIABLE])
    return create_app(SearchService(config["folders"], model=config["model"], device=config["device"]))


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("indices", nargs="+", metavar="INDEX_DIR", help="index folders, or NAME=FOLDER")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to answer other machines (no authentication)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="processes, each with its own model copy")
    parser.add_argument("--model", help="the query model (default: each index's own, from its manifest)")
    parser.add_argument("--device", default="cpu", help="the query model's device: cpu, cuda, cuda:1")
    one_line_parser_errors(parser, PROGRAM)
    return parser


def server_options(args) -> dict:
    """uvicorn's settings; idle connections kept 75 s (uvicorn's 5 s closes a client's kept-alive connection while
    the client sends its next query on it: "Server disconnected without sending a response")."""
    return {"host": args.host, "port": args.port, "log_level": "warning", "timeout_keep_alive": KEEP_ALIVE_S}


def serve(args) -> None:
    import uvicorn

    from .service import SearchService

    if args.workers < 1 or not 0 < args.port < 65536:
        raise UsageError(f"--workers {args.workers} --port {args.port}: give at least 1 worker and a port 1-65535.")
    folders = named_folders(args.indices)
    if args.workers == 1:
        service = SearchService(folders, model=args.model, device=args.device)
        counts = ", ".join(
            f"{name}: {len(index)} images (version {index.version})" for name, index in service.indices.items()
        )
        print(f"{PROGRAM}: serving {counts} on http://{args.host}:{args.port}", flush=True)
        uvicorn.run(create_app(service), **server_options(args))
        return
    SearchService(folders, model=args.model, load_model=False)  # every folder readable, before workers start
    os.environ[CONFIG_VARIABLE] = json.dumps({"folders": folders, "model": args.model, "device": args.device})
    print(f"{PROGRAM}: serving {', '.join(folders)} on http://{args.host}:{args.port} ({args.workers} workers)")
    factory = "altclip.search.server:app_from_environment"
    uvicorn.run(factory, factory=True, workers=args.workers, **server_options(args))


def main(argv: Sequence[str] | None = None) -> None:
    """``altclip-serve INDEX_DIR... [--host --port --workers]``."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bar per query
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from altclip.common.collection_index import CollectionIndexError

    def translate(error: BaseException) -> str | None:
        if isinstance(error, (CollectionIndexError, FileNotFoundError)):
            return f"{PROGRAM}: {str(error).splitlines()[0]}"
        return None

    run_with_one_line_errors(PROGRAM, lambda: serve(args), translate=translate)


if __name__ == "__main__":
    main()
