"""The environment every Ray node starts with, and HAProxy's owner-only folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from maas.local_cluster import node_env, prepare_haproxy_dir


def test_the_head_puts_haproxys_socket_and_files_in_the_given_folder() -> None:
    head, worker = node_env("/tmp/h", head=True), node_env("/tmp/h", head=False)
    assert worker == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(64 << 20)}
    assert head["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    for name in ("SOCKET_PATH", "METRICS_SOCKET_PATH", "CONFIG_FILE_LOC", "SERVER_STATE_FILE"):
        assert head[f"RAY_SERVE_HAPROXY_{name}"].startswith("/tmp/h/"), name
    assert head["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] == "60"
    assert (head["RAY_SERVE_HAPROXY_RETRIES"], head["RAY_SERVE_HAPROXY_OBSERVE_ERROR_LIMIT"]) == ("2", "1")


def test_the_folder_is_made_owner_only_and_a_foreign_one_refused(tmp_path: Path) -> None:
    short = Path(f"/tmp/maas-unit-{os.getpid()}")
    try:
        short.mkdir(mode=0o755)
        assert (prepare_haproxy_dir(short).stat().st_mode & 0o777) == 0o700  # an existing 0755 one tightened
    finally:
        short.rmdir()
    link = Path(f"/tmp/maas-unit-l{os.getpid()}")
    link.symlink_to(tmp_path)
    try:
        with pytest.raises(RuntimeError, match="not a folder owned by this user"):
            prepare_haproxy_dir(link)
    finally:
        link.unlink()
    with pytest.raises(RuntimeError, match="longer than 30"):
        prepare_haproxy_dir(tmp_path / "a" / "much" / "longer" / "path")
