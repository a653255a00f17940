"""Access control over real HTTP: API keys made with the CLI, scoped per model, revoked from the CLI;
401 without a valid key, 403 outside its scope; health stays open; keys never reach the logs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from maas.client import JSON, Call, Client
from maas.registry import Registry

pytestmark = pytest.mark.cluster
MAAS = str(Path(sys.executable).parent / "maas")
PREDICT = Call("POST", "/v1/models/digits:predict", json.dumps({"instances": np.zeros((1, 8, 8)).tolist()}).encode(),
               JSON)


def _keys(registry: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MAAS, "keys", "--registry", registry, *args], capture_output=True, text=True, timeout=60)


def test_scoped_keys_from_the_cli_401_403_revocation_and_open_health(digits_app, tiny_saved_model) -> None:
    app = digits_app.ensure()
    registry = Registry(app.registry_uri)
    if "other" not in registry.models():
        registry.publish("other", str(tiny_saved_model), registry.get("digits").metadata)
    created = _keys(app.registry_uri, "create", "app-digits", "--models", "digits")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    key_id = key.split("_")[1]
    assert f"Created key {key_id} (app-digits; models: digits)" in created.stderr

    anonymous = Client(app.cluster.serve_url, api_key="")
    reply = anonymous.send(PREDICT)
    assert reply.status == 401 and "API key required" in reply.json()["error"]
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert Client(app.cluster.serve_url, api_key="maas_000000000000_" + "x" * 43).send(PREDICT).status == 401
    assert anonymous.send(PREDICT, headers={"Authorization": f"Bearer {key}x"}).status == 401
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/openapi.json"):  # open without a key
        assert anonymous.send(Call("GET", path)).status == 200, path

    scoped = Client(app.cluster.serve_url, api_key=key)
    assert scoped.predict("digits", np.zeros((1, 8, 8))).shape == (1, 10)
    assert anonymous.send(PREDICT, headers={"X-API-Key": key}).status == 200  # the other header works too
    forbidden = scoped.send(Call("GET", "/v2/models/other"))
    assert forbidden.status == 403 and forbidden.json() == {
        "error": f"API key {key_id} (app-digits) may not call model 'other'"}
    assert "other" not in scoped.service_status()["models"]  # status shows only the key's models

    listed = _keys(app.registry_uri, "list")
    assert key_id in listed.stdout and "active" in listed.stdout and key not in listed.stdout
    revoked = _keys(app.registry_uri, "revoke", key_id)
    assert revoked.returncode == 0 and f"Key {key_id} (app-digits) revoked" in revoked.stdout
    deadline = time.monotonic() + 15  # the ingress re-reads key records every registry_refresh_s (2 s)
    while (reply := scoped.send(PREDICT)).status == 200:
        assert time.monotonic() < deadline, "revoked key still accepted"
        time.sleep(0.5)
    assert reply.status == 401 and f"API key {key_id} was revoked" in reply.json()["error"]
    bad = _keys(app.registry_uri, "revoke", "nosuchkey")
    assert bad.returncode == 2 and bad.stderr.startswith("error: No API key with id")

    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    secret = key.split("_", 2)[2]  # the whole secret: token_urlsafe may itself contain "_"
    leaked = [p for p in logs.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == [], f"API key found in Ray logs: {leaked}"


def test_a_flood_of_random_key_ids_gets_401s_and_the_valid_key_still_answers(digits_app) -> None:
    """Unknown key ids cost no storage read (the unit tier counts them); over HTTP, every one of them
    is a 401, and a valid key is answered meanwhile."""
    import secrets

    app = digits_app.ensure()
    valid = Client(app.cluster.serve_url)
    assert valid.send(PREDICT).status == 200
    statuses = [Client(app.cluster.serve_url, api_key=f"maas_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}")
                .send(PREDICT).status for _ in range(500)]
    assert statuses == [401] * 500
    assert valid.send(PREDICT).status == 200
