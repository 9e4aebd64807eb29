"""HTTP client for `retrieval.serve`, with the in-process retriever's `search` signature.

Many shard builders share one retrieval service (docs/architecture.md, Retrieval); each holds a
`RetrieverClient` and calls ``search(queries, k)`` exactly as it would call
``open_index(path).search``. Connection failures are retried with exponential backoff and then
raise `RetrieverUnavailableError` naming the URL: a dead service stops a build quickly and
loudly instead of hanging it.
"""
from __future__ import annotations

import base64
import http.client
import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from retrieval.api import Hit
from retrieval.docstore import MissingImageError


class RetrieverError(RuntimeError):
    """The retrieval service answered with an error."""


class RetrieverRequestError(RetrieverError, ValueError):
    """The service rejected the request (4xx): retrying the same request cannot help."""

    def __init__(self, url: str, status: int, detail: str):
        super().__init__(f"{url}: HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class RetrieverUnavailableError(RetrieverError, ConnectionError):
    """The service could not be reached (or kept failing) after every retry."""


_RETRY_STATUS = {502, 503, 504}


class RetrieverClient:
    """``RetrieverClient("http://127.0.0.1:8088").search(queries, k) -> list[list[Hit]]``."""

    def __init__(
        self,
        url: str,
        timeout: float = 30.0,   # seconds per attempt (connect and each read)
        retries: int = 3,        # extra attempts after the first on connection errors / 502-504
        backoff: float = 0.25,   # first retry waits this long, doubling each time
        batch_size: int = 256,   # queries (or images) per request, capped by the service's limits
    ):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"retriever URL must look like http://host:port, got {url!r}")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._scheme, self._host = parts.scheme, parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self.timeout, self.retries, self.backoff, self.batch_size = timeout, retries, backoff, batch_size
        self._conn: http.client.HTTPConnection | None = None
        self._limits: dict | None = None

    # ------------------------------------------------------------------ public API

    def health(self) -> dict:
        """The service's ``/health``: index metadata, document count, request limits."""
        return self._json("GET", "/health")

    def search(self, queries: list[str], k: int, mode: str = "bm25") -> list[list[Hit]]:
        """Top-k hits per query, best first; ``hit.image`` is the URL of the hit's image or None."""
        if isinstance(queries, (str, bytes)):
            raise TypeError("queries must be a list of strings, not one string")
        out: list[list[Hit]] = []
        step = self._step("max_queries")
        for start in range(0, len(queries), step):
            chunk = list(queries[start : start + step])
            reply = self._json("POST", "/search", {"queries": chunk, "k": k, "mode": mode})
            results = reply.get("results") if isinstance(reply, dict) else None
            if not isinstance(results, list) or len(results) != len(chunk):
                raise RetrieverError(f"{self.url}/search: malformed reply (expected {len(chunk)} result lists)")
            for hits in results:
                out.append([
                    Hit(id=h["id"], caption=h["caption"], score=float(h["score"]),
                        image=f"{self.url}{h['image']}" if h.get("image") else None,
                        rank=int(h["rank"]), row=int(h["row"]))
                    for h in hits
                ])
        return out

    def images(self, hits: list[Hit]) -> list[bytes | None]:
        """Image bytes of many hits in batched requests (None where a hit has no image)."""
        out: list[bytes | None] = [None] * len(hits)
        todo = [i for i, h in enumerate(hits) if h.image is not None]
        step = self._step("max_rows")
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            reply = self._json("POST", "/images", {"rows": [hits[i].row for i in chunk]})
            images = reply.get("images") if isinstance(reply, dict) else None
            if not isinstance(images, list) or len(images) != len(chunk):
                raise RetrieverError(f"{self.url}/images: malformed reply (expected {len(chunk)} images)")
            for i, b in zip(chunk, images):
                out[i] = base64.b64decode(b) if b is not None else None
        return out

    def image(self, hit: Hit) -> bytes:
        """One hit's image bytes, like ``open_index(...).image(hit)``.

        Raises ``MissingImageError`` when the hit has no image.
        """
        data = self.images([hit])[0]
        if data is None:
            raise MissingImageError(f"{self.url}: hit {hit.id!r} (row {hit.row}) has no image")
        return data

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "RetrieverClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ transport

    def _step(self, limit: str) -> int:
        """Items per request: our batch size, capped by the limit the service announces."""
        if self._limits is None:
            try:
                self._limits = self.health().get("limits", {})
            except RetrieverRequestError:  # a service without /health: trust our batch size
                self._limits = {}
        return max(1, min(self.batch_size, int(self._limits.get(limit, self.batch_size))))

    def _json(self, method: str, path: str, payload: Any = None) -> Any:
        body = None if payload is None else json.dumps(payload, ensure_ascii=False).encode("utf-8")
        raw = self._request(method, path, body)
        try:
            return json.loads(raw)
        except ValueError:
            raise RetrieverError(f"{self.url}{path}: reply is not JSON") from None

    def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        last: str = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                conn = self._connection()
                headers = {"Content-Type": "application/json"} if body is not None else {}
                conn.request(method, self._prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException, socket.timeout) as e:
                # Refused, reset, timed out, or the server closed a kept-alive connection:
                # reconnect and try again.
                self.close()
                last = f"{type(e).__name__}: {e}"
                continue
            if resp.status < 300:
                return data
            detail = _detail(data)
            if resp.status in _RETRY_STATUS:
                last = f"HTTP {resp.status}: {detail}"
                continue
            if 400 <= resp.status < 500:
                raise RetrieverRequestError(f"{self.url}{path}", resp.status, detail)
            raise RetrieverError(f"{self.url}{path}: HTTP {resp.status}: {detail}")
        raise RetrieverUnavailableError(
            f"retrieval service at {self.url} unreachable after {self.retries + 1} attempt(s): {last}"
        )

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.timeout)
        return self._conn


def _detail(data: bytes) -> str:
    try:
        payload = json.loads(data)
        return str(payload.get("detail", payload)) if isinstance(payload, dict) else str(payload)
    except ValueError:
        return data[:200].decode("utf-8", "replace")
