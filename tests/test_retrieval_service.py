"""The HTTP retrieval service and its client, against a real uvicorn server on loopback."""
from __future__ import annotations

import http.client
import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

from data_pipelines.build_index import index_memory
from retrieval import (
    BuildConfig,
    MissingImageError,
    RetrieverClient,
    RetrieverRequestError,
    RetrieverUnavailableError,
    open_index,
)
from retrieval.serve import BackgroundServer, ServiceConfig, create_app, index_metadata

COLORS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]
QUERIES = ["a small red circle moves left on grass", "blue square", "Kiki moves up on sand", "", "zebra",
           "ünïcode red — triangle", "the of and"]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("memory")
    (root / "img").mkdir()
    rows = []
    for i in range(40):
        c, s = COLORS[i % 4], SHAPES[(i // 4) % 3]
        img = None
        if i % 10 != 9:  # every tenth row has no image
            img = f"img/m{i:03d}.png"
            Image.new("RGB", (8, 8), (i * 6, 0, 255 - i * 6)).save(root / img)
        rows.append({"id": f"m{i:03d}", "caption": f"a photo of a {'small' if i % 2 else 'large'} {c} {s} on grass",
                     "image": img})
    rows.append({"id": "kiki", "caption": "a photo of Kiki on sand", "image": None})
    (root / "memory.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "index"
    index_memory(BuildConfig(memory=str(root / "memory.jsonl"), out=str(out), progress=False))
    return out


@pytest.fixture(scope="module")
def index(index_dir):
    return open_index(index_dir)


@pytest.fixture(scope="module")
def server(index, index_dir):
    cfg = ServiceConfig(index=str(index_dir), max_queries=16, max_query_chars=64, max_k=20, max_rows=8,
                        max_body_bytes=4096)
    with BackgroundServer(create_app(index, cfg, index_metadata(index_dir))) as url:
        yield url


def _post(url: str, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ round trip


def test_search_round_trip_equals_in_process(server, index):
    want = index.search(QUERIES, 7)
    got = RetrieverClient(server).search(QUERIES, 7)
    assert len(got) == len(want) and any(want)
    for w_hits, g_hits in zip(want, got):
        assert [(h.id, h.caption, h.score, h.rank, h.row) for h in g_hits] == \
               [(h.id, h.caption, h.score, h.rank, h.row) for h in w_hits]
        assert [h.image is None for h in g_hits] == [h.image is None for h in w_hits]
    # Requests larger than the client's batch are split; the answer does not change.
    assert [[h.id for h in q] for q in RetrieverClient(server, batch_size=2).search(QUERIES, 7)] == \
           [[h.id for h in q] for q in want]


def test_images_round_trip(server, index):
    client = RetrieverClient(server)
    hits = [h for q in index.search(QUERIES[:2], 12) for h in q]
    assert any(h.image is None for h in hits) and any(h.image is not None for h in hits)
    remote = client.images(client.search(QUERIES[:2], 12)[0] + client.search(QUERIES[:2], 12)[1])
    assert remote == [index.image(h) if h.image is not None else None for h in hits]
    with pytest.raises(MissingImageError):
        client.image(next(h for h in client.search(QUERIES[:2], 12)[0] if h.image is None))
    # GET /image/{row}: raw bytes a browser can show; 404 for a row without image / out of range.
    with_img = next(h for h in hits if h.image is not None)
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", f"/image/{with_img.row}")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type") == "image/png"
    assert Image.open(io.BytesIO(resp.read())).size == (8, 8)
    for row in (next(h for h in hits if h.image is None).row, 10**6, "abc", "-1"):
        conn.request("GET", f"/image/{row}")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 404, row


def test_health_reports_index_metadata(server, index, index_dir):
    h = RetrieverClient(server).health()
    assert h["status"] == "ok" and h["documents"] == len(index) == 41
    assert h["index"] == json.loads((index_dir / "index.json").read_text())
    assert h["limits"]["max_k"] == 20


# ------------------------------------------------------------------ bad requests


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b'{"queries": ["\xff\xfe red"], "k": 3}', 400, "UTF-8"),
        (b'{"queries": ["red"], "k": 3', 400, "JSON"),
        (b'["red"]', 400, "object"),
        (b'{"queries": "red", "k": 3}', 400, "list of strings"),
        (b'{"queries": [1, 2], "k": 3}', 400, "list of strings"),
        (b'{"queries": ["red"]}', 400, "missing"),
        (b'{"queries": ["red"], "k": 3, "kk": 1}', 400, "unknown"),
        (b'{"queries": ["red"], "k": "3"}', 400, "integer"),
        (b'{"queries": ["red"], "k": true}', 400, "integer"),
        (b'{"queries": ["red"], "k": 0}', 422, "out of range"),
        (b'{"queries": ["red"], "k": 21}', 422, "out of range"),
        (b'{"queries": ["red"], "k": 3, "mode": "magic"}', 422, "mode"),
        (b'{"queries": ["red"], "k": 3, "mode": "dense"}', 422, "dense"),
        (json.dumps({"queries": ["red"] * 17, "k": 3}).encode(), 413, "at most 16"),
        (json.dumps({"queries": ["red " * 20], "k": 3}).encode(), 413, "characters"),
        (json.dumps({"queries": ["r"] * 2000, "k": 3}).encode(), 413, "bytes"),
    ],
)
def test_malformed_search_gets_4xx_and_server_stays_up(server, body, status, words):
    got, reply = _post(server, "/search", body)
    assert got == status and words in reply["detail"], reply
    assert RetrieverClient(server).search(["red circle"], 2)[0]  # still serving


@pytest.mark.parametrize(
    "body, status",
    [(b'{"rows": [0, "1"]}', 400), (b'{"rows": [-1]}', 422), (b'{"rows": [41]}', 422),
     (b'{"rows": [0,1,2,3,4,5,6,7,8]}', 413), (b'{"ids": ["m001"]}', 400)],
)
def test_malformed_image_requests_get_4xx(server, body, status):
    assert _post(server, "/images", body)[0] == status
    assert RetrieverClient(server).health()["status"] == "ok"


def test_lying_content_length_and_client_4xx_are_not_retried(server):
    assert _post(server, "/search", b"{}", {"Content-Length": "999999"})[0] == 413
    client = RetrieverClient(server, retries=5, backoff=1.0)
    t0 = time.perf_counter()
    with pytest.raises(RetrieverRequestError) as e:
        client.search(["red"], 0)
    assert e.value.status == 422 and server in str(e.value)
    assert time.perf_counter() - t0 < 0.5  # a 4xx is final: no backoff sleeps


# ------------------------------------------------------------------ availability


def test_dead_url_fails_fast_after_retries_naming_the_url():
    url = f"http://127.0.0.1:{_free_port()}"
    client = RetrieverClient(url, timeout=1.0, retries=2, backoff=0.05)
    t0 = time.perf_counter()
    with pytest.raises(RetrieverUnavailableError, match=f"{url}.*3 attempt"):
        client.search(["red"], 3)
    assert 0.15 <= time.perf_counter() - t0 < 3.0  # slept 0.05 + 0.1 between attempts, then gave up


def test_unresponsive_server_times_out():
    with socket.socket() as s:  # accepts connections (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        client = RetrieverClient("http://127.0.0.1:%d" % s.getsockname()[1], timeout=0.2, retries=1, backoff=0.01)
        t0 = time.perf_counter()
        with pytest.raises(RetrieverUnavailableError, match="timed out"):
            client.health()
        assert time.perf_counter() - t0 < 2.0


def test_transient_503_is_retried(index):
    app, calls = FastAPI(), {"n": 0}

    @app.post("/search")
    async def flaky(request: Request):
        calls["n"] += 1
        if calls["n"] <= 2:
            return JSONResponse({"detail": "busy"}, status_code=503)
        return JSONResponse({"results": [[]]})

    with BackgroundServer(app) as url:
        assert RetrieverClient(url, retries=2, backoff=0.01).search(["red"], 3) == [[]]
        calls["n"] = 0
        with pytest.raises(RetrieverUnavailableError, match="503"):
            RetrieverClient(url, retries=1, backoff=0.01).search(["red"], 3)


def test_cli_serves_on_loopback(index_dir):
    proc = subprocess.Popen([sys.executable, "-m", "retrieval.serve", "--index", str(index_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("retrieval service on http://127.0.0.1:"), (
            line,
            proc.stderr.read() if proc.poll() else "",
        )
        url = line.split()[3]
        client = RetrieverClient(url, retries=20, backoff=0.05)  # uvicorn starts serving a moment after the bind
        assert client.health()["documents"] == 41
        assert client.search(["red circle"], 3)[0][0].caption.endswith("red circle on grass")
    finally:
        proc.terminate()
        proc.wait(10)


def test_cli_bad_index_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "retrieval.serve", "--index", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not an index folder" in proc.stderr, proc.stderr


# ------------------------------------------------------------------ fairness, timeouts, malformed paths


def _get_status(
    url: str, raw_path: str, headers: dict | None = None, method: str = "GET", body: bytes | None = None
) -> int:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.putrequest(method, raw_path, skip_accept_encoding=True)
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    conn.endheaders(body)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status


@pytest.mark.parametrize("path", ["/image/%C2%B2", "/image/%D9%A3", "/image/-1", "/image/1.5", "/image/+1", "/image/",
                                  "/image/99999999999999999999999999", "/image/%00", "/image/9", "/nope",
                                  "/image/1/2", "/search", "/health/x"])
def test_every_malformed_path_is_a_4xx(server, path):
    assert 400 <= _get_status(server, path) < 500           # /image/9 has no image: 404 too
    assert RetrieverClient(server).health()["status"] == "ok"


def test_non_ascii_content_length_is_a_4xx(server):
    assert _get_status(server, "/search", {"Content-Length": "²", "Content-Type": "application/json"},
                       method="POST") in (400, 413)


@pytest.fixture()
def strict_server(index, index_dir):
    cfg = ServiceConfig(index=str(index_dir), request_timeout=0.5)
    with BackgroundServer(create_app(index, cfg, index_metadata(index_dir))) as url:
        yield url


@pytest.mark.parametrize("partial", [b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Le",
                                     b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                                     b"Content-Type: application/json\r\n\r\n{\"queries\": ["])
def test_half_sent_requests_are_dropped(strict_server, partial):
    host, port = strict_server.removeprefix("http://").split(":")
    socks = [socket.create_connection((host, int(port)), timeout=10) for _ in range(20)]
    for s in socks:
        s.sendall(partial)
    for s in socks:   # each is closed by the server (an empty read), a 408 at most before that
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:80]
        s.close()
    assert RetrieverClient(strict_server).search(["red circle"], 2)[0]


def test_a_small_request_is_not_queued_behind_a_large_one():
    """Round robin over requests: with one worker busy on a 50-slice request, a 1-slice request
    that arrives runs after at most one more slice of the large one, not after all 50."""
    import asyncio
    import threading

    from retrieval.scheduler import FairScheduler

    order: list[str] = []
    started = threading.Event()

    def heavy_slice(i):
        def run():
            order.append(f"h{i}")
            started.set()
            time.sleep(0.002)
        return run

    async def scenario():
        sched = FairScheduler(workers=1)
        heavy = asyncio.ensure_future(sched.run([heavy_slice(i) for i in range(50)], timeout=30))
        await asyncio.get_running_loop().run_in_executor(None, started.wait)
        await sched.run([lambda: order.append("light")], timeout=30)
        await heavy
        sched.close()

    asyncio.run(scenario())
    assert len(order) == 51 and order.index("light") <= 3, order[:6]


def test_work_deadline_and_queue_bound_answer_busy():
    import asyncio
    import threading

    from retrieval.scheduler import Busy, FairScheduler

    ran, gate = [], threading.Event()

    async def scenario():
        sched = FairScheduler(workers=1, max_pending=1)
        first = asyncio.ensure_future(sched.run([gate.wait] + [lambda: ran.append(1)] * 5, timeout=0.2))
        await asyncio.sleep(0.05)
        with pytest.raises(Busy, match="queued"):            # the one pending slot is taken
            await sched.run([lambda: None], timeout=1)
        with pytest.raises(Busy, match="within"):
            await first
        gate.set()
        await asyncio.sleep(0.1)
        assert await sched.run([lambda: 7], timeout=5) == [7]   # the slot is free again
        sched.close()

    asyncio.run(scenario())
    assert ran == []   # the timed-out request's remaining slices never ran
