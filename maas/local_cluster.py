"""The local single-machine Ray cluster, and how this project's tools connect to a cluster.

Token authentication stays on: ``up`` makes sure a token exists (``~/.ray/auth_token``) and starts the
head with ``RAY_AUTH_MODE=token``; every client here (jobs, CLI, tests) sets ``RAY_AUTH_MODE=token``
when a token is available, which is what ``ray job submit`` from another shell needs too.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from maas import settings

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"


def token_path() -> Path:
    return Path(os.environ.get(TOKEN_PATH_ENV, Path.home() / ".ray" / "auth_token")).expanduser()


def auth_env() -> dict[str, str]:
    """Environment a Ray client needs for this machine's clusters: token mode when a token exists."""
    if os.environ.get(AUTH_MODE_ENV):
        return {}
    if os.environ.get(TOKEN_ENV) or token_path().is_file():
        return {AUTH_MODE_ENV: "token"}
    return {}


def use_client_auth() -> None:
    """Put :func:`auth_env` into this process's environment.

    Ray reads ``RAY_AUTH_MODE`` when it is first imported; if it already was (and a token appeared
    since), its cached configuration is refreshed the way ``ray.init`` does it.
    """
    env = auth_env()
    os.environ.update(env)
    if env and "ray._raylet" in sys.modules:
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]  # compiled, no stubs

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def ensure_token() -> Path:
    """Create ``~/.ray/auth_token`` (mode 0600) if no token exists yet; never print the token."""
    path = token_path()
    if not path.is_file() and not os.environ.get(TOKEN_ENV):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))  # 256 bits, as `ray get-auth-token --generate`
    use_client_auth()
    return path


def connect(address: str | None = None) -> None:
    """``ray.init`` against ``address``, ``RAY_ADDRESS`` or the cluster ``maas cluster up`` started;
    with none of them, a local cluster for this process's lifetime."""
    use_client_auth()
    import ray

    if ray.is_initialized():
        return
    ray.init(address=address, logging_level=logging.WARNING, configure_logging=True)


@dataclass(frozen=True)
class ClusterState:
    running: bool
    gcs_address: str | None
    dashboard_url: str


def local_state() -> ClusterState:
    from ray._private.services import find_gcs_addresses

    addresses = sorted(find_gcs_addresses())
    return ClusterState(
        running=bool(addresses),
        gcs_address=addresses[0] if addresses else None,
        dashboard_url=settings.dashboard_url(),
    )


HAPROXY_IDLE_CLIENT_S = 60  # Ray's default keeps a silent client connection for an hour
HAPROXY_RETRY_ON = "conn-failure empty-response"  # Ray's default: conn-failure (see node_env)
HAPROXY_RETRIES = 2  # HAProxy's default is 3: a request that kills its replica could take 3 more down
GRPC_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # Ray's default is 2 GiB, received whole before any check
HAPROXY_OBSERVE_ERROR_LIMIT = 1  # Ray's default is 3 refused connections before a replica is taken out


HAPROXY_DIR_ENV = "MAAS_HAPROXY_DIR"
_MAX_HAPROXY_DIR = 30  # HAProxy refuses socket paths over 97 bytes; Ray adds a 56-character folder and the name


def haproxy_dir() -> Path:
    """Where Serve's HAProxy keeps its config, state and sockets on this machine: a short path (see
    ``_MAX_HAPROXY_DIR``), ``$MAAS_HAPROXY_DIR`` or ``/tmp/maas-haproxy-<uid>``, made owner-only by
    :func:`prepare_haproxy_dir`."""
    return Path(os.environ.get(HAPROXY_DIR_ENV) or f"/tmp/maas-haproxy-{os.getuid()}")


def node_env(haproxy_folder: str | Path, *, head: bool) -> dict[str, str]:
    """The environment every Ray node of this project starts with (``maas cluster up``, ``cluster.yaml``,
    the KubeRay pods and the tests' cluster all take it from here).

    - Serve's throughput-optimized mode: replicas run request code on their main event loop (no thread
      hop per request), freeze the start-up heap out of the GC, buffer their request logs.
    - A gRPC message (request or answer) is at most ``GRPC_MAX_MESSAGE_BYTES``: gRPC refuses a larger
      one (``RESOURCE_EXHAUSTED``) before a replica holds it, where Ray's default lets a client make a
      replica receive 2 GiB. The service's own ``max_request_bytes`` and ``max_response_bytes`` apply
      within it.
    - On the head, Serve's HAProxy ingress, with its files in ``haproxy_folder``: Ray's template creates
      the admin socket ``mode 666 level admin`` (anyone who can reach it can reconfigure the proxy), so
      it must live in a folder only Ray's user can enter (0700, made by :func:`prepare_haproxy_dir`).
    - A client connection silent for ``HAPROXY_IDLE_CLIENT_S`` is closed (HAProxy's ``timeout client``).
    - HAProxy retries a request on another replica when the one it went to closed the connection
      without answering (``empty-response``: the replica died mid-request), not only when it could not
      connect (Ray's default). Safe here: every POST route is a prediction, which changes nothing on
      the server. HAProxy can replay only what it buffered, so a body over its 16 KB buffer is not
      retried; a timeout or a 503 (deliberate backpressure) never is. Twice (``HAPROXY_RETRIES``): a
      request that itself kills the replica it reaches (a crash in the model) reaches two more.
    - One refused connection takes a replica out of rotation (``HAPROXY_OBSERVE_ERROR_LIMIT``); its
      health check brings it back within a second if it lives. This matters after a reload: a client
      connection that was idle when HAProxy reloaded is served by the old HAProxy process (Ray's
      ``idle-close-on-response``), for one more request, with the replica list of before the reload and
      no health checks. If those replicas are gone, each retry takes one of them out and the next goes
      to a live one, or to the head's Serve proxy (the backup server) once none is left: two retries
      cover a redeploy that replaced both default replicas.
    """
    folder = str(haproxy_folder)
    env = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(GRPC_MAX_MESSAGE_BYTES)}
    if head:
        env.update({
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{folder}/admin.sock",
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{folder}/metrics.sock",
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{folder}/haproxy.cfg",
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": folder,
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{folder}/server-state",
            "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": str(HAPROXY_IDLE_CLIENT_S),
            "RAY_SERVE_HAPROXY_RETRY_ON": HAPROXY_RETRY_ON,
            "RAY_SERVE_HAPROXY_RETRIES": str(HAPROXY_RETRIES),
            "RAY_SERVE_HAPROXY_OBSERVE_ERROR_LIMIT": str(HAPROXY_OBSERVE_ERROR_LIMIT),
        })
    return env


def prepare_haproxy_dir(folder: Path) -> Path:
    """Create ``folder`` owner-only (0700), or make it so (Ray would create it 0755). One that exists
    but is not a folder of this user's (another user's squatted ``/tmp`` path, a symlink) is refused."""
    if len(str(folder)) > _MAX_HAPROXY_DIR:
        raise RuntimeError(f"{HAPROXY_DIR_ENV}={folder} is longer than {_MAX_HAPROXY_DIR} characters: HAProxy "
                           "refuses longer socket paths")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RuntimeError(f"{folder} exists but is not a folder owned by this user: refusing to put HAProxy's "
                           f"admin socket there (remove it, or set {HAPROXY_DIR_ENV})")
    os.chmod(folder, 0o700)
    return folder


# ---- the GCS's fault tolerance: its tables in Redis ----------------------------------------------

REDIS_PORT = 6380  # beside Ray's own 6379 (the GCS port), which Redis would otherwise take
REDIS_ADDRESS_ENV = "RAY_REDIS_ADDRESS"  # read by Ray's head at start (ray/_private/node.py)


@dataclass(frozen=True)
class Redis:
    """A Redis server the head's GCS keeps its tables in, so that a restarted GCS finds the cluster
    (actors, jobs, Serve's controller and checkpoints) as it was, and the raylets reconnect to it."""

    address: str
    password: str
    folder: Path


def redis_dir() -> Path:
    return settings.maas_home() / "redis"


def start_redis(folder: Path | None = None, *, port: int = REDIS_PORT) -> Redis:
    """Start ``redis-server`` on 127.0.0.1:``port`` with a password and an append-only file in
    ``folder`` (owner-only; idempotent). The password is kept in ``folder/password`` (0600) and the
    configuration in ``folder/redis.conf`` (0600), never on a command line of Redis's own; Ray passes
    it to its GCS process on the command line, so it keeps other hosts out, not this host's users."""
    folder = folder or redis_dir()
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (Debian/Ubuntu: apt-get install -y redis-server); "
                           "`maas cluster up --ha` keeps the GCS's tables in it")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    password = _secret_file(folder / "password")
    config = folder / "redis.conf"
    settings.write_private(config, "\n".join([
        f"port {port}", "bind 127.0.0.1", "protected-mode yes", f"requirepass {password}",
        f"dir {folder}", "appendonly yes", "appendfsync everysec", "daemonize yes",
        f"pidfile {folder}/redis.pid", f"logfile {folder}/redis.log", ""]))
    redis = Redis(f"127.0.0.1:{port}", password, folder)
    if _redis_pid(folder) is None:
        proc = subprocess.run([binary, str(config)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"redis-server failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    _wait_for_port("127.0.0.1", port, what=f"redis-server (see {folder}/redis.log)", timeout_s=15)
    return redis


def stop_redis(folder: Path | None = None) -> bool:
    """Stop the Redis of :func:`start_redis` and drop its data (the next cluster starts afresh)."""
    folder = folder or redis_dir()
    pid = _redis_pid(folder)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _redis_pid(folder) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
    for data in ("appendonlydir", "dump.rdb"):
        target = folder / data
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    return pid is not None


def ha_head_args(redis: Redis) -> tuple[dict[str, str], list[str]]:
    """The environment and ``ray start --head`` arguments that keep the GCS's tables in ``redis``."""
    return {REDIS_ADDRESS_ENV: redis.address}, ["--redis-password", redis.password]


def _redis_pid(folder: Path) -> int | None:
    try:
        pid = int((folder / "redis.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _secret_file(path: Path) -> str:
    if not path.is_file():
        settings.write_private(path, secrets.token_hex(32))
    return path.read_text().strip()


def up(*, num_cpus: int | None = None, ha_proxy: bool = True, ha: bool = False) -> ClusterState:
    """Start the local Ray head (idempotent): dashboard on 127.0.0.1:8265, token auth, HAProxy ingress;
    with ``ha``, the GCS's tables in a local Redis (:func:`start_redis`), so that the head's GCS can
    restart without losing the cluster."""
    state = local_state()
    if state.running:
        return state
    ensure_token()
    env = dict(os.environ, **{AUTH_MODE_ENV: "token"})
    # Jobs run `python -m jobs.…` with the cluster's PATH: make that this environment's Python.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(node_env(prepare_haproxy_dir(haproxy_dir()), head=ha_proxy))
    cmd = [
        _ray_bin(), "start", "--head",
        "--dashboard-host", settings.DASHBOARD_HOST,
        "--dashboard-port", str(settings.DASHBOARD_PORT),
        "--disable-usage-stats",
    ]
    if ha:
        ha_env, ha_args = ha_head_args(start_redis())
        env.update(ha_env)
        cmd += ha_args
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ray start failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    _wait_for_dashboard()
    return local_state()


def _wait_for_dashboard(timeout_s: float = 60.0) -> None:
    """`ray start` returns before the dashboard listens; deploys and job submissions go through it."""
    _wait_for_port(settings.DASHBOARD_HOST, settings.DASHBOARD_PORT, timeout_s=timeout_s,
                   what=f"Ray's dashboard ({settings.dashboard_url()}; see /tmp/ray/session_latest/logs/dashboard.log)")


def _wait_for_port(host: str, port: int, *, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on {host}:{port} within {timeout_s:g}s") from None
            time.sleep(0.2)


def down() -> bool:
    """Stop the local cluster and everything it started, HAProxy included (idempotent).

    Returns whether anything was running.
    """
    was_running = local_state().running
    subprocess.run([_ray_bin(), "stop", "--force"], capture_output=True, text=True)
    killed = _kill_leftover_haproxy()
    redis = stop_redis()
    return was_running or killed or redis


def _kill_leftover_haproxy() -> bool:
    """``ray stop --force`` leaves Serve's HAProxy running and holding the HTTP port; end it."""
    killed = False
    for pid, cmdline in _processes():
        if "haproxy" in Path(cmdline[0]).name and any("serve" in a or "ray" in a for a in cmdline):
            try:
                os.kill(pid, signal.SIGTERM)
                killed = True
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    while killed and time.monotonic() < deadline and any(
        "haproxy" in Path(c[0]).name for _, c in _processes()
    ):
        time.sleep(0.1)
    return killed


def _processes() -> list[tuple[int, list[str]]]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        args = [a for a in raw.decode(errors="replace").split("\0") if a]
        if args:
            out.append((int(entry.name), args))
    return out


def _ray_bin() -> str:
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.exists() else "ray"
