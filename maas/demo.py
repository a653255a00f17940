"""``make demo``: the whole path on this machine, with real parts only.

Local Ray cluster -> 2-worker Ray Train job (submitted like ``ray job submit``) on the real digits ->
new registry version, promoted to stable -> Ray Serve deployment -> HTTP predictions on held-out
digits, printed beside their true labels. The service stays up afterwards.
"""

from __future__ import annotations

import time

import numpy as np

from maas import deploy, jobclient, local_cluster, settings
from maas.auth import KeyStore, key_id
from maas.cli_support import fail
from maas.client import Client
from maas.registry import Registry
from maas.templates import get_template
from maas.training.data import builtin_held_out

_MODEL = "digits"


def _interesting(line: str) -> bool:
    return any(key in line for key in ("[maas]", "Published", "Error", "Traceback", "error:"))


def run_demo(*, num_workers: int = 2, epochs: int | None = None, samples: int = 20) -> int:
    started = time.perf_counter()
    print("== 1/4 Local Ray cluster")
    state = local_cluster.up()
    print(f"   Ray at {state.gcs_address}, dashboard {state.dashboard_url}")

    print(f"== 2/4 Training '{_MODEL}' with Ray Train on {num_workers} workers (a Ray job, as `ray job submit`)")
    # 1-N: on a 2-core machine where an earlier demo's service still holds 0.5 CPU, 2 workers cannot
    # fit; the job then starts with the 1 that does instead of failing.
    args = ["--template", _MODEL, "--num-workers", f"1-{num_workers}"]
    if epochs is not None:
        args += ["--epochs", str(epochs)]
    outcome = jobclient.submit("jobs.train", args, show=_interesting)
    if outcome.status != "SUCCEEDED":
        fail(f"training job {outcome.submission_id} ended {outcome.status}; see its logs on the dashboard")
    registry = Registry(settings.default_registry_uri())
    version = registry.latest(_MODEL)
    registry.promote(_MODEL, version)
    metrics = registry.get(_MODEL, version).metrics
    print(f"   job {outcome.submission_id}: version {version} promoted to stable "
          f"(held-out accuracy {metrics.accuracy:.4f})")

    print("== 3/4 Deploying with Ray Serve (deployments/serve_config.yaml)")
    deploy.deploy(deploy.load_serve_config())
    key, about = _ensure_api_key(registry)
    print(f"   {about}")
    client = Client(api_key=key)

    print(f"== 4/4 HTTP predictions: POST {client.base_url}/v1/models/{_MODEL}:predict")
    x_test, y_test = builtin_held_out(get_template(_MODEL), settings.default_data_dir())
    probs = np.concatenate([client.predict(_MODEL, x_test[i : i + 64]) for i in range(0, len(x_test), 64)])
    predicted = probs.argmax(axis=1)
    for i in range(min(samples, len(x_test))):
        mark = "ok" if predicted[i] == y_test[i] else "WRONG"
        print(f"   digit #{i:<3} true {y_test[i]}  predicted {predicted[i]}  "
              f"(p={probs[i, predicted[i]]:.3f})  {mark}")
    accuracy = float((predicted == y_test).mean())
    print(f"\nHTTP accuracy on {len(y_test)} held-out digits: {accuracy:.4f}  "
          f"(registry metadata says {metrics.accuracy:.4f})")
    print(f"Done in {time.perf_counter() - started:.0f}s. The service is still running:")
    print(f"  Dashboard:  {state.dashboard_url}")
    print(f"  Try it:     .venv/bin/maas predict digits --instances '{_example_instance(x_test[0])}'")
    print("  Stop it:    make stop   (or .venv/bin/maas cluster down)")
    return 0


def _ensure_api_key(registry: Registry) -> tuple[str, str]:
    """This machine's clients need an API key: keep a working saved one (signed with this cluster's
    secret), else create and save one."""
    keys = KeyStore(registry.uri)
    saved = settings.api_key()
    record = keys.get(key_id(saved) or "") if saved else None
    if saved and record is not None and record.active and record.allows(_MODEL) and record.signature_valid(keys.secret):
        return saved, f"API key {record.id} ({settings.API_KEY_ENV} or {settings.api_key_path()})"
    key, record = keys.create("local", ["*"])
    path = settings.save_api_key(key)
    return key, f"API key {record.id} created for this machine's clients, saved to {path} (maas keys list)"


def _example_instance(image: np.ndarray) -> str:
    """One instance (an 8x8 image) as the JSON ``instances`` list that holds it."""
    return "[[" + ",".join("[" + ",".join(f"{v:g}" for v in row) + "]" for row in image) + "]]"
