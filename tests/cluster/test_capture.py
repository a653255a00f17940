"""Request capture over real HTTP: a Serve app capturing every digits prediction, under load, with its
registry's storage made unreachable mid-way and back. Every prediction is answered; what the replicas
could not hold is dropped oldest first and counted (maas_capture_dropped_total); Ray Data reads the
capture files back as they are, and their rows are the predictions that were sent, values included."""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from support import metric_series, ray_job_submit, scrape_metrics

from maas import deploy
from maas.auth import KeyStore
from maas.client import JSON, NO_RETRY, Call, Client
from maas.registry import Registry
from maas.serving.artifact_cache import ArtifactCache

pytestmark = pytest.mark.cluster


def _send(client: Client, ids: range) -> Counter[str]:
    """One request per id (1 instance whose values are the id), from 4 threads; every outcome counted."""
    def one(i: int) -> str:
        body = json.dumps({"instances": [np.full((8, 8), float(i)).tolist()]}).encode()
        try:
            return str(client.send(Call("POST", "/v1/models/digits:predict", body, JSON), {"x-request-id": f"r{i}"},
                                   retry=NO_RETRY).status)
        except Exception as exc:  # noqa: BLE001 (counted: a connection lost is an outcome)
            return type(exc).__name__

    with ThreadPoolExecutor(max_workers=4) as pool:
        return Counter(pool.map(one, ids, timeout=120))


def test_captures_under_load_survive_a_storage_outage_and_read_back_with_ray_data(ray_cluster, trained_digits,
                                                                                  tmp_path: Path) -> None:
    import ray

    config, outcome = trained_digits
    source = Registry(config.registry)
    artifact = ArtifactCache(source).local_path("digits", outcome.version.version)
    metadata = source.get("digits", outcome.version.version).metadata.to_json()
    root = tmp_path / "registry"
    registry = Registry(str(root))
    registry.publish("digits", artifact, {k: v for k, v in metadata.items() if k not in ("model", "version")})
    registry.promote("digits", 1)
    key = KeyStore(str(root)).create("capture")[0]
    serve_config = deploy.load_serve_config(registry=str(root), port=ray_cluster.serve_port,
                                            grpc_port=ray_cluster.grpc_port)
    serve_config["applications"][0]["args"].update(
        registry_refresh_s=0.5, stale_while_unreachable_s=60,
        capture={"models": {"digits": {"sample": 1.0}}, "flush_every_s": 0.5, "flush_records": 40,
                 "max_buffered_bytes": 40_000})  # about 70 one-instance records per replica
    deploy.deploy(serve_config, dashboard=ray_cluster.dashboard_url, timeout_s=300)
    client = Client(ray_cluster.serve_url, api_key=key, timeout_s=30)

    before = _send(client, range(0, 100))
    time.sleep(2)  # flushed
    away = root.rename(tmp_path / "unmounted")
    during = _send(client, range(100, 500))
    away.rename(root)
    after = _send(client, range(500, 600))
    assert before + during + after == Counter({"200": 600}), (before, during, after)

    deadline = time.monotonic() + 90
    while True:  # the writers retry with a back-off; the metric is exported every few seconds
        files = sorted(str(p) for p in (root / "_captures").rglob("*.parquet"))
        rows = ray.data.read_parquet(files, partitioning=ray.data.datasource.Partitioning("hive")).take_all() \
            if files else []
        dropped = metric_series(scrape_metrics(), "ray_maas_capture_dropped_total", model="digits")
        if len(rows) + dropped >= 600:
            break
        assert time.monotonic() < deadline, f"{len(rows)} rows and {dropped} dropped of 600"
        time.sleep(2)
    ids = [int(r["request_id"][1:]) for r in rows]
    assert len(ids) == len(set(ids)) and len(rows) + dropped == 600, (len(rows), dropped)
    assert set(range(0, 100)) | set(range(500, 600)) <= set(ids)  # written before; the newest, kept
    assert dropped > 0  # 400 predictions while the storage was away: more than the buffers hold
    for r in rows:
        assert r["pixels"] == [float(int(r["request_id"][1:]))] * 64 and len(r["output_probabilities"]) == 10
        assert (r["model"], int(r["version"]), r["label"], r["protocol"]) == ("digits", 1, "stable", "tfserving")

    # Retraining on what was captured: the input column and a label, as train.parquet and test.parquet.
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    captured = ds.dataset(str(root / "_captures" / "model=digits"), format="parquet", partitioning="hive").to_table()
    labels = pa.array([int(r[1:]) % 10 for r in captured.column("request_id").to_pylist()], pa.int64())
    table = pa.table({"pixels": captured.column("pixels"), "label": labels})
    data = tmp_path / "recaptured"
    data.mkdir()
    train_rows = int(0.8 * table.num_rows)
    pq.write_table(table.slice(0, train_rows), data / "train.parquet")
    pq.write_table(table.slice(train_rows), data / "test.parquet")
    proc = ray_job_submit(ray_cluster, "python", "-m", "jobs.train", "--template", "digits", "--data", str(data),
                          "--epochs", "1", "--num-workers", "1", "--model-name", "digits-recaptured",
                          "--registry", str(root))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trained = registry.get("digits-recaptured", 1).metadata
    assert trained.data is not None and trained.data.train_rows == train_rows and trained.template == "digits"
