"""The client SDK retries idempotent calls on a lost connection and on 503, with a bound, and counts
every retry: against a real HTTP server on 127.0.0.1 that drops connections or answers 503 on cue."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from maas.client import NO_RETRY, AsyncClient, Client, HTTPError, RetryPolicy

FAST = RetryPolicy(attempts=4, backoff_s=0.01, max_backoff_s=0.05)


class Script:
    """What the server does with each request, in order: ``drop`` (close the connection without an
    answer), ``503`` (answer 503 with ``Retry-After: 0``) or ``200``; ``200`` once the list is spent."""

    def __init__(self) -> None:
        self.actions: list[str] = []
        self.seen = 0
        self.lock = threading.Lock()

    def next(self) -> str:
        with self.lock:
            self.seen += 1
            return self.actions.pop(0) if self.actions else "200"


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            action = script.next()
            if action == "drop":
                self.close_connection = True
                self.connection.close()
                return
            final = action == "503-final"
            body = json.dumps({"live": True} if action == "200" else {"error": "restarting"}).encode()
            self.send_response(503 if final else int(action))
            if action == "503":  # a 503-final does not say when to come back (a version that cannot load)
                self.send_header("Retry-After", "0")

            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    httpd.shutdown()
    httpd.server_close()


def test_a_lost_connection_and_a_503_are_retried_and_counted(server) -> None:
    url, script = server
    script.actions = ["drop", "503", "drop"]
    client = Client(url, api_key="", retry=FAST)
    assert client.service_status() == {"live": True}
    assert script.seen == 4
    assert client.retries == Counter({"connection": 2, "503": 1})


def test_retries_stop_at_the_bound_and_the_last_answer_is_the_callers(server) -> None:
    url, script = server
    script.actions = ["503"] * 10
    client = Client(url, api_key="", retry=FAST)
    with pytest.raises(HTTPError) as caught:
        client.service_status()
    assert caught.value.status == 503 and script.seen == 4
    assert client.retries == Counter({"503": 3})
    script.actions = ["drop"] * 10
    with pytest.raises(ConnectionError):
        client.service_status()
    assert client.retries == Counter({"503": 3, "connection": 3})


def test_no_retry_means_the_first_failure_is_the_callers(server) -> None:
    url, script = server
    script.actions = ["drop"]
    client = Client(url, api_key="", retry=NO_RETRY)
    with pytest.raises(ConnectionError):
        client.service_status()
    assert script.seen == 1 and client.retries == Counter()


def test_a_refused_connection_is_retried_with_backoff_then_raised() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    client = Client(url, api_key="", retry=RetryPolicy(attempts=3, backoff_s=0.05, max_backoff_s=0.05))
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        client.service_status()
    assert client.retries == Counter({"connection": 2})
    assert time.monotonic() - started < 2


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    policy = RetryPolicy(backoff_s=0.1, max_backoff_s=2.0)
    assert 1.0 <= policy.wait_s(1, "1") <= 1.5  # spread: clients turned away together come back apart
    assert policy.wait_s(1, "3600") == 2.0
    assert 0 <= policy.wait_s(3, "soon") <= 0.4  # not a number of seconds: the backoff
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_the_async_client_retries_and_counts_the_same_way(server) -> None:
    url, script = server
    script.actions = ["drop", "503"]

    async def call() -> dict:
        async with AsyncClient(url, api_key="", retry=FAST) as client:
            answer = await client.service_status()
            return {"answer": answer, "retries": client.retries}

    result = asyncio.run(call())
    assert result == {"answer": {"live": True}, "retries": Counter({"connection": 1, "503": 1})}


def test_a_503_that_says_no_retry_after_and_health_probes_are_not_retried(server) -> None:
    url, script = server
    script.actions = ["503-final"]
    client = Client(url, api_key="", retry=FAST)
    with pytest.raises(HTTPError) as caught:
        client.service_status()
    assert caught.value.status == 503 and script.seen == 1
    script.actions = ["503"]
    assert client.ready() is False and script.seen == 2  # a probe reports what it finds
    assert client.retries == Counter()
