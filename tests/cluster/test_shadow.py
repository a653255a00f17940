"""Shadow versions over real HTTP on the digits service: `maas models label NAME shadow V --weight W`
sends routed requests also to V after answering them; under load every request is answered by the
default version, `maas status` shows the shadow's agreement and latency beside the answering
version's, a corrupt shadow fails no request while its errors are counted (status and metric), and a
shadow that never answers (blocked in its graph) makes no request slower: its work holds at most
max_concurrent threads of its own per replica, the rest of its share is skipped and counted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from support import metric_series, scrape_metrics

from maas import settings
from maas.client import Client, HTTPError
from maas.registry import Registry
from maas.serving.artifact_cache import ArtifactCache
from maas.templates import get_template
from maas.training.data import builtin_held_out

pytestmark = pytest.mark.cluster
MAAS = str(Path(sys.executable).parent / "maas")
MODEL = "digits-shadow"


def _maas(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([MAAS, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def _load(client: Client, x: np.ndarray, n: int = 160) -> Counter[str]:
    """``n`` routed predictions from 8 threads; every outcome counted here."""
    return _timed_load(client, x, n)[0]


def _timed_load(client: Client, x: np.ndarray, n: int = 160) -> tuple[Counter[str], float]:
    """:func:`_load`, and the answers' median latency in milliseconds."""
    def one(i: int) -> tuple[str, float]:
        started = time.perf_counter()
        try:
            reply = client.send(client_call(x[i % len(x): i % len(x) + 1]))
            return f"{reply.status} v{reply.headers.get('model-version')}", time.perf_counter() - started
        except Exception as exc:  # noqa: BLE001 (counted: a connection lost is an outcome)
            return type(exc).__name__, time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(n), timeout=120))
    return Counter(r for r, _ in results), float(np.median([s for _, s in results])) * 1000.0


def _never_answering_digits(path: Path) -> Path:
    """A SavedModel of the digits signature that answers its all-zeros warm-up, and blocks for ever
    (waiting on an empty queue, using no CPU) on any other input."""
    import tensorflow as tf

    class Blocked(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8], tf.float32, name="pixels")])
        def serve(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
            def block() -> tf.Tensor:
                queue = tf.raw_ops.FIFOQueueV2(component_types=[tf.float32], shapes=[[]], capacity=1)
                return tf.reshape(tf.raw_ops.QueueDequeueV2(handle=queue, component_types=[tf.float32])[0], [])

            waited = tf.cond(tf.reduce_max(pixels) > 0.0, block, lambda: tf.constant(0.0))
            return {"probabilities": tf.nn.softmax(tf.zeros([tf.shape(pixels)[0], 10]) + waited)}

    module = Blocked()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def client_call(instances: np.ndarray):
    from maas.client import predict_call

    return predict_call(MODEL, instances, None, None)


def _shadow(client: Client, x: np.ndarray, answering: int, want: int, version: int) -> dict:
    """The answering replica's shadow figures, once it has compared or failed ``want``. `maas status`
    is one replica's view: while it has seen too few, send another round (bounded), every answer checked."""
    deadline = time.monotonic() + 90
    while True:
        shadow = json.loads(_maas("status", MODEL, "--json").stdout)["models"][MODEL]["shadow"]
        if shadow and shadow["version"] == version and shadow["compared"] + shadow["errors"] >= want:
            return shadow
        assert time.monotonic() < deadline, shadow
        outcomes = _load(client, x, 40)
        assert outcomes == Counter({f"200 v{answering}": 40}), outcomes


def _saturated(client: Client, x: np.ndarray, answering: int, version: int, slots: int) -> None:
    """Rounds of routed requests (bounded, every answer checked) until every ModelServer replica says
    ``version`` is loaded there and holds all its ``slots``: the shadow's one-time load is over and
    its stuck predictions are all it will ever run."""
    seen: set[str] = set()
    deadline = time.monotonic() + 120
    while True:
        answer = json.loads(_maas("status", MODEL, "--json").stdout)
        shadow = answer["models"][MODEL]["shadow"]
        if shadow["version"] == version and shadow["state"] == "ready" and shadow["running"] == slots:
            seen.add(answer["replica"])
            if len(seen) >= answer["deployments"]["ModelServer"]["replicas"]:
                return
        assert time.monotonic() < deadline, (seen, answer["deployments"], shadow)
        outcomes = _load(client, x, 40)
        assert outcomes == Counter({f"200 v{answering}": 40}), outcomes


def test_a_shadow_is_compared_never_answers_and_a_corrupt_one_fails_no_request(digits_app, tiny_saved_model,
                                                                                tmp_path: Path) -> None:
    app = digits_app.ensure()
    registry = Registry(app.registry_uri)
    trained = registry.get("digits", app.version).metadata.to_json()
    document = {k: v for k, v in trained.items() if k not in ("model", "version", "created_at")}
    artifact = ArtifactCache(registry).local_path("digits", app.version)
    answering = registry.publish(MODEL, artifact, document).version
    untrained = registry.publish(MODEL, str(tiny_saved_model), document).version  # digits, drawn weights
    corrupt_dir = tmp_path / "corrupt"
    shutil.copytree(artifact, corrupt_dir)
    for data in (corrupt_dir / "variables").glob("variables.data-*"):
        data.write_bytes(b"not the weights")
    corrupt = registry.publish(MODEL, str(corrupt_dir), document).version
    _maas("models", "promote", MODEL, str(answering))
    blocked = registry.publish(MODEL, str(_never_answering_digits(tmp_path / "blocked")), document).version
    x, _ = builtin_held_out(get_template("digits"), settings.default_data_dir())
    client = Client(app.cluster.serve_url, timeout_s=30)
    time.sleep(3)  # registry_refresh_s: the replicas see the labels
    outcomes = _load(client, x, 40)  # answering version loaded on every replica
    assert outcomes == Counter({f"200 v{answering}": 40}), outcomes
    _maas("models", "label", MODEL, "shadow", str(untrained), "--weight", "1.0")
    time.sleep(3)

    outcomes = _load(client, x)
    assert outcomes == Counter({f"200 v{answering}": 160}), outcomes
    shadow = _shadow(client, x, answering, 20, untrained)
    assert shadow["errors"] == 0 and shadow["weight"] == 1.0
    assert 0.0 <= shadow["agreement"] < 0.6  # drawn weights rarely pick the trained top class
    assert shadow["shadow_p50_ms"] > 0 and shadow["answer_p50_ms"] > 0
    text = _maas("status", MODEL).stdout
    assert f"shadow v{untrained} (1 of routed): " in text and "agreement " in text, text

    _maas("models", "label", MODEL, "shadow", str(corrupt), "--weight", "1.0")
    time.sleep(3)
    outcomes = _load(client, x)
    assert outcomes == Counter({f"200 v{answering}": 160}), outcomes
    shadow = _shadow(client, x, answering, 5, corrupt)
    assert shadow["errors"] >= 5 and shadow["compared"] == 0 and shadow["agreement"] is None
    deadline = time.monotonic() + 60
    while metric_series(scrape_metrics(), "ray_maas_shadow_requests_total", model=MODEL, version=str(corrupt),
                        outcome="error") < 1:
        assert time.monotonic() < deadline, "maas_shadow_requests_total not exported"
        time.sleep(2)
    with pytest.raises(HTTPError):  # asked for by name, the corrupt version is what fails
        client.predict(MODEL, x[:1], version=corrupt)

    # A shadow that never answers, measured against a baseline taken just before, once its load is
    # over (a one-time cost of any version a replica loads): its stuck work slows no answer.
    _maas("models", "unlabel", MODEL, "shadow")
    time.sleep(3)
    baseline, baseline_ms = _timed_load(client, x)
    assert baseline == Counter({f"200 v{answering}": 160}), baseline
    _maas("models", "label", MODEL, "shadow", str(blocked), "--weight", "1.0")
    time.sleep(3)
    _saturated(client, x, answering, blocked, slots=4)  # args.shadow.max_concurrent of serve_config.yaml
    outcomes, blocked_ms = _timed_load(client, x)
    assert outcomes == Counter({f"200 v{answering}": 160}), outcomes
    print(f"\nmedian latency of 160 routed requests: {baseline_ms:.1f} ms without a shadow, {blocked_ms:.1f} ms "
          "with a shadow that never answers")
    assert blocked_ms <= 1.5 * baseline_ms + 5.0, (blocked_ms, baseline_ms)  # no slower
    shadow = _shadow(client, x, answering, 1, blocked)  # past their deadline: errors; the rest skipped
    assert shadow["skipped"] >= 1 and shadow["compared"] == 0, shadow
    _maas("models", "unlabel", MODEL, "shadow")
