"""The benchmark harness itself: the load generator's bounds and counts against a real local HTTP
server and a real local gRPC server, and the report's target verdicts (the figures come from
`make bench`, not from tests)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks.loadgen import Request, closed_loop
from benchmarks.report import serving_markdown, serving_targets


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        status = 500 if self.path == "/fail" else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_the_load_stops_at_its_request_count_and_counts_instances(server: str) -> None:
    result = closed_loop(Request(server + "/ok", b"{}", {}, instances=4), 8, max_requests=200, max_seconds=30,
                         warmup=2)
    assert result.requests == 200 and result.errors == 0 and result.concurrency == 8
    assert result.instances_per_s == pytest.approx(result.requests_per_s * 4, rel=0.01)
    assert 0 < result.p50_ms <= result.p99_ms


def test_the_load_stops_at_its_time_limit_and_counts_errors(server: str) -> None:
    result = closed_loop(Request(server + "/fail", b"{}", {}, instances=1), 2, max_requests=10**9, max_seconds=0.5,
                         warmup=0)
    assert result.seconds < 5 and result.requests == 0 and result.errors > 0
    assert result.first_error.startswith("HTTP 500")


@pytest.fixture(scope="module")
def grpc_server():
    """A gRPC server whose /t.S/Ok answers its request back and /t.S/Fail answers UNAVAILABLE."""
    from concurrent import futures

    import grpc

    def fail(request: bytes, context) -> bytes:
        context.abort(grpc.StatusCode.UNAVAILABLE, "scripted")

    handlers = {"Ok": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
                "Fail": grpc.unary_unary_rpc_method_handler(fail)}
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def test_the_grpc_load_counts_answers_and_errors_as_the_http_one(grpc_server: str) -> None:
    ok = closed_loop(Request(grpc_server, b"x" * 100, {"k": "v"}, instances=2, grpc_method="/t.S/Ok"), 40,
                     max_requests=300, max_seconds=30, warmup=2)
    assert ok.requests == 300 and ok.errors == 0 and ok.instances_per_s == pytest.approx(ok.requests_per_s * 2,
                                                                                         rel=0.01)
    failed = closed_loop(Request(grpc_server, b"", {}, instances=1, grpc_method="/t.S/Fail"), 2,
                         max_requests=10**9, max_seconds=0.5, warmup=0)
    assert failed.requests == 0 and failed.errors > 0 and failed.first_error == "UNAVAILABLE: scripted"


def _row(contender: str, model: str, payload: str, concurrency: int, rps: float, p50: float, p99: float,
         instances: int = 1) -> dict:
    return {"contender": contender, "model": model, "payload": payload, "concurrency": concurrency,
            "requests_per_s": rps, "instances_per_s": rps * instances, "p50_ms": p50, "p99_ms": p99, "errors": 0,
            "startup_s": 1.0}


def test_the_report_judges_each_target_from_the_figures() -> None:
    results = {
        "machine": {"cpu": "test", "cores": 2, "memory_gib": 24, "gpus": [], "ray": "2.60.0", "tensorflow": "2.21.0",
                    "python": "3.11"},
        "settings": {"concurrency": [1, 32], "max_requests": 100, "max_seconds": 1.0},
        "in_process": {"cnn": {"1": 300.0, "8": 600.0, "32": 700.0, "128": 720.0}},
        "serving": [_row("maas", "mlp", "json1", 32, 1600, 15, 40), _row("fastapi", "mlp", "json1", 32, 1000, 30, 60),
                    _row("bentoml", "mlp", "json1", 32, 600, 50, 200), _row("maas", "cnn", "binary", 32, 300, 90, 150),
                    _row("fastapi", "cnn", "json1", 32, 24, 900, 1500), _row("maas", "mlp", "json1", 1, 500, 3.5, 5),
                    _row("fastapi", "mlp", "json1", 1, 900, 1.0, 2), _row("maas", "cnn", "grpc1", 32, 330, 80, 140),
                    _row("maas", "mlp", "grpc1", 32, 1700, 14, 38)],
        "skipped": {"kserve": "not installed"},
    }
    verdicts = {t.text: t.met for t in serving_targets(results)}
    assert verdicts["MLP, JSON, 1 instance, 32 clients: >= 1.5x FastAPI throughput"] is True  # 1.6x
    assert verdicts["MLP, JSON, 1 instance, 32 clients: >= 3x BentoML throughput"] is False  # 2.7x
    assert verdicts["CNN, binary tensors, 32 clients: >= 10x FastAPI's JSON throughput"] is True  # 12.5x
    assert verdicts["CNN, binary tensors, 32 clients: >= 60% of the in-process ceiling at batch 32"] is False  # 43%
    assert verdicts["p50 at concurrency 1 within 2 ms of the hand-written server"] is False  # +2.5 ms
    assert verdicts["CNN image over gRPC, 32 clients: >= 1.2x the REST binary tensor throughput"] is False  # 1.1x
    assert verdicts["MLP, 1 instance over gRPC, 32 clients: >= REST JSON throughput"] is True  # 1.06x
    text = serving_markdown(results)
    assert "| mlp:json1 | 32 | 1600 (15.0 / 40.0) | 1000 (30.0 / 60.0) | 600 (50.0 / 200.0) |" in text
    assert "Not measured: kserve (not installed)" in text
