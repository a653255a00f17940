"""Small helpers the cluster tests share (importable as ``support``; ``conftest`` is not a module
name tests can rely on, as each tier has its own)."""

from __future__ import annotations

import socket

SERVICE_MAX_BODY = 1 << 20  # the digits service's max_request_bytes, small enough to test 413 cheaply
SERVICE_BODY_TIMEOUT_S = 5.0  # and its body_timeout_s, short enough to test 408 in seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
