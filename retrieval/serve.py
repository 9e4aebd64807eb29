"""HTTP retrieval service: ``python -m retrieval.serve --index INDEX [--host 127.0.0.1 --port 8088]``.

Exposes the in-process retriever's batched ``search`` over JSON so that many shard builders
(and inference-time t2v retrieval, VIMI Sec. 3.1) share one index in RAM:

- ``POST /search``  ``{"queries": [str, ...], "k": int, "mode": "bm25"}`` -> ``{"results": [[hit, ...], ...]}``,
  hit = ``{"id", "caption", "score", "rank", "row", "image"}``; ``row`` is the document's stable
  number in the index and ``image`` is ``/image/{row}``, or null when the memory row has no image;
- ``POST /images``  ``{"rows": [int, ...]}`` -> ``{"images": [base64 | null, ...]}`` (batched, for builders);
- ``GET /image/{row}`` -> the image's raw bytes (404 when the row has none);
- ``GET /health``   -> index metadata (``index.json``), document count and the request limits.

The service has no authentication, so it binds to loopback unless told otherwise. Every
request is bounded (body bytes, query count, query length, k, rows per image request); a
malformed request gets a 4xx with a message and the server keeps serving. Searches run on a
small pool of worker threads in slices, round robin across requests (``retrieval.scheduler``),
so no client can stall the others; a request must arrive whole within ``request_timeout`` (a
half-sent one is dropped) and finish within ``work_timeout`` (else 503).
"""
from __future__ import annotations

import argparse
import base64
import functools
import json
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval import IndexFormatError, MissingImageError, SearchError, open_index, read_image
from retrieval.api import MODES
from retrieval.scheduler import Busy, FairScheduler, slices

try:  # FastAPI/uvicorn are service-only dependencies; the rest of retrieval/ works without them.
    import h11
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.requests import ClientDisconnect
    from uvicorn.protocols.http.h11_impl import H11Protocol
except ImportError as e:  # pragma: no cover - exercised only on a broken install
    raise ImportError("retrieval.serve needs fastapi and uvicorn (pip install fastapi uvicorn)") from e


@dataclass
class ServiceConfig:
    index: str = ""                        # index folder written by retrieval.build_index
    host: str = "127.0.0.1"                # loopback by default: the service has no authentication
    port: int = 8088                       # 0 picks a free port (printed at start-up)
    max_queries: int = 1024                # queries per /search request
    max_query_chars: int = 2048            # characters per query
    max_k: int = 100                       # hits per query (k must be in 1..max_k)
    max_rows: int = 4096                   # images per /images request
    max_body_bytes: int = 16 * 1024 * 1024  # request body; larger bodies get 413 unread
    workers: int = 2                       # search threads (the index is read-only; scratch is per thread)
    slice_cost: int = 8192                 # work per slice, in query characters + 64 per query
    max_pending: int = 256                 # requests queued for the workers; more get 503
    request_timeout: float = 10.0          # seconds to receive a whole request (headers + body)
    work_timeout: float = 60.0             # seconds a request's searches may take; then 503
    log_level: str = "warning"


class RequestError(Exception):
    """A client error, turned into a 4xx JSON reply."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def index_metadata(index: str | Path) -> dict:
    meta_path = Path(index) / "index.json"
    return json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}


def create_app(retriever: Any, cfg: ServiceConfig, metadata: dict | None = None) -> FastAPI:
    """The FastAPI app around an opened index (``retrieval.open_index``)."""
    limits = {k: getattr(cfg, k) for k in ("max_queries", "max_query_chars", "max_k", "max_rows", "max_body_bytes",
                                           "request_timeout", "work_timeout")}
    num_docs = len(retriever)
    health = {"status": "ok", "index": metadata or {}, "documents": num_docs, "limits": limits}
    # IndexRetriever backends search read-only arrays (per-thread scratch), so searches run
    # concurrently; one that declares otherwise gets a single worker, still sliced and fair.
    workers = cfg.workers if getattr(retriever, "thread_safe", True) else 1
    scheduler = FairScheduler(workers, cfg.max_pending)
    app = FastAPI(title="vimi retrieval", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler, app.state.service_config = scheduler, cfg

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(Busy)
    async def _busy(_: Request, exc: Busy) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.get("/health")
    def _health() -> dict:
        return health

    @app.post("/search")
    async def _search(request: Request) -> JSONResponse:
        queries, k, mode = _validate_search(await _read_json(request, cfg.max_body_bytes), cfg)

        def search_slice(part: list[str]) -> str:
            try:
                hits = retriever.search(part, k, mode=mode)
            except SearchError as e:  # e.g. dense mode on an index built without --dense
                raise RequestError(422, str(e)) from None
            # JSON is built in the slice too: for 1,024 x 100 hits it costs more than the search
            return json.dumps([[_hit_json(h) for h in q] for q in hits])[1:-1]

        groups = slices(queries, lambda q: len(q) + 64, cfg.slice_cost)
        parts = await scheduler.run([functools.partial(search_slice, [queries[i] for i in g]) for g in groups],
                                    cfg.work_timeout)
        body = '{"results": [' + ", ".join(parts) + "]}"
        return Response(content=body.encode("utf-8"), media_type="application/json")

    @app.post("/images")
    async def _images(request: Request) -> JSONResponse:
        rows = _validate_rows(await _read_json(request, cfg.max_body_bytes), cfg, num_docs)
        parts = await scheduler.run(
            [functools.partial(_row_images, retriever, rows[i:i + 64]) for i in range(0, len(rows), 64)],
            cfg.work_timeout,
        )
        images = [b for part in parts for b in part]
        return JSONResponse(
            {"images": [base64.b64encode(b).decode("ascii") if b is not None else None for b in images]}
        )

    @app.get("/image/{row}")
    async def _image(row: str) -> Response:
        if not _is_decimal(row) or int(row) >= num_docs:   # "²".isdigit() is True, int("²") fails
            raise RequestError(404, f"no document row {row!r} (index has {num_docs})")
        data = (await scheduler.run([functools.partial(_row_images, retriever, [int(row)])], cfg.work_timeout))[0][0]
        if data is None:
            raise RequestError(404, f"document row {row} has no image")
        return Response(content=data, media_type=_media_type(data))

    return app


def _is_decimal(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts superscripts and other scripts' digits."""
    return text.isascii() and text.isdigit()


def _row_images(retriever: Any, rows: list[int]) -> list[bytes | None]:
    """Image bytes of index rows (None where the memory row has no image or its file is gone)."""
    _, _, refs = retriever.docs.rows(rows)
    out: list[bytes | None] = []
    for ref in refs:
        try:
            out.append(read_image(ref))
        except MissingImageError:
            out.append(None)
    return out


async def _read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and not _is_decimal(declared):
        raise RequestError(400, f"content-length {declared!r} is not a number")
    if declared is not None and int(declared) > limit:
        raise RequestError(413, f"request body over {limit} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"request body over {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:  # the client went away, or the request timeout closed the connection
        raise RequestError(408, "request body not received in time") from None
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(400, f"request body is not valid UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(400, f"request body is not valid JSON ({e.msg} at char {e.pos})") from None


def _check_keys(payload: Any, allowed: set[str], required: set[str]) -> dict:
    if not isinstance(payload, dict):
        raise RequestError(400, "request body must be a JSON object")
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise RequestError(400, f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    missing = sorted(required - set(payload))
    if missing:
        raise RequestError(400, f"missing field(s) {missing}")
    return payload


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate_search(payload: Any, cfg: ServiceConfig) -> tuple[list[str], int, str]:
    payload = _check_keys(payload, {"queries", "k", "mode"}, {"queries", "k"})
    queries, k, mode = payload["queries"], payload["k"], payload.get("mode", "bm25")
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise RequestError(400, "'queries' must be a list of strings")
    if len(queries) > cfg.max_queries:
        raise RequestError(413, f"{len(queries)} queries in one request; at most {cfg.max_queries}")
    for i, q in enumerate(queries):
        if len(q) > cfg.max_query_chars:
            raise RequestError(413, f"query {i} has {len(q)} characters; at most {cfg.max_query_chars}")
    if not _is_int(k):
        raise RequestError(400, "'k' must be an integer")
    if not 1 <= k <= cfg.max_k:
        raise RequestError(422, f"k={k} out of range 1..{cfg.max_k}")
    if mode not in MODES:
        raise RequestError(422, f"mode {mode!r} is not one of {list(MODES)}")
    return queries, k, mode


def _validate_rows(payload: Any, cfg: ServiceConfig, num_docs: int) -> list[int]:
    rows = _check_keys(payload, {"rows"}, {"rows"})["rows"]
    if not isinstance(rows, list) or not all(_is_int(r) for r in rows):
        raise RequestError(400, "'rows' must be a list of integers")
    if len(rows) > cfg.max_rows:
        raise RequestError(413, f"{len(rows)} rows in one request; at most {cfg.max_rows}")
    bad = [r for r in rows if not 0 <= r < num_docs]
    if bad:
        raise RequestError(422, f"row(s) {bad[:5]} out of range 0..{num_docs - 1}")
    return rows


def _hit_json(hit: Any) -> dict:
    return {
        "id": hit.id,
        "caption": hit.caption,
        "score": float(hit.score),
        "rank": int(hit.rank),
        "row": int(hit.row),
        "image": f"/image/{int(hit.row)}" if hit.image is not None else None,
    }


def _media_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def timed_protocol(request_timeout: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose request has not arrived whole within
    ``request_timeout`` seconds of the connection (or of the previous response). uvicorn has no
    such limit: a client that sends half a header, or a body slower than a byte a minute, would
    otherwise hold its connection (and a file descriptor) forever."""

    class TimedH11Protocol(H11Protocol):
        _deadline = None

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(request_timeout, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR):
                self._disarm()  # the whole request is in; the work has its own deadline

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()   # the next request on this keep-alive connection

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return TimedH11Protocol


def _server(app: FastAPI, log_level: str) -> "uvicorn.Server":
    cfg = getattr(app.state, "service_config", None) or ServiceConfig()
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False,
                                         http=timed_protocol(cfg.request_timeout)))


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this: replies go out as headers + body in two writes, and
    # Nagle + the client's delayed ACK would otherwise stall every reply by ~40 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))  # bound here so that port 0 can report the port it got
    return sock


def serve(cfg: ServiceConfig) -> None:
    """Open the index and serve until interrupted. Prints the URL once the socket is bound."""
    retriever = open_index(cfg.index)
    app = create_app(retriever, cfg, index_metadata(cfg.index))
    sock = _bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {cfg.host} without authentication", file=sys.stderr)
    print(f"retrieval service on http://{host}:{port} (index {cfg.index}, {len(retriever)} documents)", flush=True)
    _server(app, cfg.log_level).run(sockets=[sock])


class BackgroundServer:
    """Serve an app from a thread of this process (tests, notebooks): ``with BackgroundServer(app) as url:``."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self._sock = _bind(host, port)
        self.url = "http://%s:%d" % self._sock.getsockname()[:2]
        self._server = _server(app, log_level)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"retrieval service at {self.url} failed to start")
            self._thread.join(0.01)
        return self.url

    def __exit__(self, *exc: Any) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m retrieval.serve", description=__doc__.split("\n")[0])
    d = ServiceConfig()
    p.add_argument("--index", required=True, help="index folder from retrieval.build_index")
    p.add_argument("--host", default=d.host, help="bind address (default loopback; no authentication!)")
    p.add_argument("--port", type=int, default=d.port, help="port (0 = any free port)")
    p.add_argument("--max-queries", type=int, default=d.max_queries)
    p.add_argument("--max-query-chars", type=int, default=d.max_query_chars)
    p.add_argument("--max-k", type=int, default=d.max_k)
    p.add_argument("--max-rows", type=int, default=d.max_rows)
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--workers", type=int, default=d.workers, help="search threads")
    p.add_argument("--max-pending", type=int, default=d.max_pending, help="queued requests before 503")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout,
                   help="seconds to receive a whole request; slower connections are closed")
    p.add_argument("--work-timeout", type=float, default=d.work_timeout, help="seconds of search per request; then 503")
    p.add_argument("--log-level", default=d.log_level)
    args = p.parse_args(argv)
    try:
        serve(ServiceConfig(**vars(args)))
    except (IndexFormatError, OSError) as e:  # no/half index, port in use, bad host
        print(f"retrieval.serve: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from base.cli_guard import guarded

    sys.exit(guarded(main, prog="python -m retrieval.serve"))
