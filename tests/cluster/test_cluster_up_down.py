"""`maas cluster up|down|status` on the default ports, idempotent, leaving nothing behind.

`maas cluster down` runs `ray stop --force`, which stops every Ray process on this machine, so this
test must never run beside another cluster (yours, or a pytest run's shared one). It is marked
``exclusive``: left out of an ordinary pytest run, and run by `make test` in a pytest process of its
own. Wherever it runs, it first checks that no Ray cluster runs here (when it starts, not when it is
collected) and skips if one does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from maas.local_cluster import REDIS_PORT, _processes, local_state

MAAS = str(Path(sys.executable).with_name("maas"))
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.exclusive


def _maas(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MAAS, *args], env=env, capture_output=True, text=True, timeout=300)


def _live_haproxy() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if cmd and Path(cmd.decode(errors="replace")).name == "haproxy":
                pids.append(int(entry.name))
    return pids


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _listeners() -> set[tuple[str, int]]:
    """Every listening TCP socket on this machine, as (address, port), from /proc/net/tcp and tcp6."""
    import ipaddress

    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state != "0A":  # LISTEN
                continue
            raw, port = local.split(":")
            packed = bytes.fromhex(raw)
            if len(packed) == 4:
                address = str(ipaddress.IPv4Address(packed[::-1]))
            else:  # four little-endian 32-bit words
                address = str(ipaddress.IPv6Address(b"".join(packed[i:i + 4][::-1] for i in range(0, 16, 4))))
            found.add((address, int(port, 16)))
    return found


def _check_what_listens_where() -> None:
    """The HTTP and gRPC ingress and the dashboard on loopback only; HAProxy's stats page and metrics are the
    two documented exceptions (Ray's template binds them on every interface); its admin socket lives in
    a folder only this user can enter, so another local user cannot reach it."""
    from maas.local_cluster import haproxy_dir

    listening = _listeners()
    wildcard = {port for address, port in listening if address in ("0.0.0.0", "::")}
    assert ("127.0.0.1", 8000) in listening and 8000 not in wildcard
    assert ("127.0.0.1", 8265) in listening and 8265 not in wildcard
    assert ("127.0.0.1", 9000) in listening and 9000 not in wildcard  # gRPC, through the same HAProxy
    assert {8404, 9101} <= wildcard  # documented in the README, with the firewall rule that closes them
    folder = haproxy_dir()
    assert (folder.stat().st_mode & 0o777) == 0o700
    sockets = list(folder.rglob("admin.sock"))
    assert sockets, f"no HAProxy admin socket under {folder}"
    if os.geteuid() == 0:  # as another user (nobody), the socket cannot be reached
        pid = os.fork()
        if pid == 0:  # the child: become nobody, try to connect, say how it went in the exit code
            code = 2
            try:
                os.setgid(65534)
                os.setuid(65534)
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(sockets[0]))
                code = 1
            except PermissionError:
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "another local user reached HAProxy's admin socket"


def _up_deploy_and_answer(env: dict[str, str], *flags: str) -> None:
    up = _maas("cluster", "up", *flags, env=env)
    assert up.returncode == 0, up.stderr
    assert "Dashboard: http://127.0.0.1:8265" in up.stdout
    deployed = _maas("deploy", env=env)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    status, body = _get_json("http://127.0.0.1:8000/v1/models/absent")  # through HAProxy to the ingress
    assert status == 401 and "API key required" in body["error"]  # security is on by default
    assert _live_haproxy(), "Serve should run its HAProxy ingress"


def test_cluster_up_down_is_idempotent_and_leaves_nothing_behind(tmp_path: Path) -> None:
    if local_state().running:
        pytest.skip("a Ray cluster already runs on this machine; not stopping it "
                    "(run `pytest -m exclusive` on its own)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_DASHBOARD"))}
    env["MAAS_HOME"] = str(tmp_path)
    try:
        _up_deploy_and_answer(env)
        _check_what_listens_where()
        again = _maas("cluster", "up", env=env)
        assert again.returncode == 0 and "already running" in again.stdout
        status = _maas("cluster", "status", env=env)
        assert status.returncode == 0 and "Serve app maas: RUNNING" in status.stdout
        # Another shell's client, with only the token file: the job API answers.
        code = "from ray.job_submission import JobSubmissionClient as C; print(len(C('http://127.0.0.1:8265').list_jobs()))"
        client = subprocess.run([sys.executable, "-c", code], env=dict(env, RAY_AUTH_MODE="token"),
                                capture_output=True, text=True, timeout=120)
        assert client.returncode == 0, client.stderr[-2000:]
        # ...and plain `ray job submit` after `eval "$(maas cluster env)"`.
        exports = _maas("cluster", "env", env=env).stdout
        job_env = dict(env, **dict(line.removeprefix("export ").split("=", 1) for line in exports.splitlines()))
        assert job_env["RAY_AUTH_MODE"] == "token" and job_env["RAY_ADDRESS"] == "http://127.0.0.1:8265"
        submit = subprocess.run(
            [str(Path(sys.executable).with_name("ray")), "job", "submit", "--working-dir", str(ROOT), "--",
             "python", "-m", "jobs.train", "--help"],
            env=job_env, capture_output=True, text=True, timeout=300,
        )
        assert submit.returncode == 0 and "usage: python -m jobs.train" in submit.stdout, submit.stderr[-2000:]

        down = _maas("cluster", "down", env=env)
        assert down.returncode == 0 and "Ray stopped" in down.stdout
        assert not local_state().running
        assert not _live_haproxy()
        deadline = time.monotonic() + 10
        while not _port_free(8000) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _port_free(8000), "port 8000 still held after `cluster down`"
        assert "not running" in _maas("cluster", "down", env=env).stdout
        assert _maas("cluster", "status", env=env).returncode == 1

        # The HAProxy finding: a restart after a stop must serve again (no stale proxy on port 8000);
        # this time with the GCS's tables in Redis (`--ha`).
        _up_deploy_and_answer(env, "--ha")
        gcs = [args for _, args in _processes() if "gcs_server" in args[0]]
        assert gcs and f"--redis_port={REDIS_PORT}" in gcs[0], "the GCS should keep its tables in Redis"
        assert (tmp_path / "redis" / "password").stat().st_mode & 0o777 == 0o600
    finally:
        _maas("cluster", "down", env=env)
    assert not _live_haproxy()
    assert not [args for _, args in _processes() if "redis-server" in args[0] and f":{REDIS_PORT}" in " ".join(args)]
