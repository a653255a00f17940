"""Fuzzing the live service from its own OpenAPI document with schemathesis: generated requests of
every operation (valid and invalid, with the suite's key, and replayed without it), checked for no
5xx, answers that match the document (status, content type, headers, body), 405 with ``Allow``, and
no 200 on a model route without a key. The replica then answers a known-good request.

``make test`` runs a few hundred generated requests; ``make fuzz`` runs ``FUZZ_REQUESTS`` (10,000 by
default), with schemathesis's coverage phase (boundary and negative cases) as well.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from maas.client import Client

pytestmark = pytest.mark.cluster
REQUESTS = int(os.environ.get("MAAS_FUZZ_REQUESTS", "300"))
# make test: generated requests only; make fuzz adds the coverage phase (boundary and negative cases)
PHASES = "examples,coverage,fuzzing" if "MAAS_FUZZ_REQUESTS" in os.environ else "examples,fuzzing"
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance", "ignored_auth",
          "unsupported_method", "allow_header_conformance")
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))


def _operations(document: dict) -> int:
    return sum(len(item) for item in document["paths"].values())


def test_generated_requests_get_no_5xx_and_answers_match_the_document(digits_app, tmp_path: Path) -> None:
    app = digits_app.ensure()
    client = Client(app.cluster.serve_url)
    document = client.send(_get("/openapi.json")).json()
    per_operation = max(1, REQUESTS // (2 * _operations(document)))
    totals: Counter = Counter()
    started = time.monotonic()
    # Two runs: path names left to the generator (names and their rules fuzzed), and the served
    # model's name fixed (the generated requests reach its signature checks and predictions).
    for run, parameters in (("names", {}), ("model", {"model": "digits"})):
        report = tmp_path / run
        config = tmp_path / f"{run}.toml"
        config.write_text("[parameters]\n" + "".join(f'{k} = "{v}"\n' for k, v in parameters.items()))
        proc = subprocess.run(
            [SCHEMATHESIS, "--config-file", str(config), "run", f"{app.cluster.serve_url}/openapi.json",
             "-H", f"Authorization: Bearer {os.environ['MAAS_API_KEY']}", "--checks", ",".join(CHECKS),
             "--max-examples", str(per_operation), "--seed", "14", "--request-timeout", "30",
             # one worker: CPython 3.11.7's ast.parse, which hypothesis calls, is not thread-safe (gh-106905)
             "--workers", "1", "--phases", PHASES, "--suppress-health-check", "all",
             "--report", "ndjson", "--report-dir", str(report)],
            capture_output=True, text=True, timeout=3600, env=dict(os.environ, NO_COLOR="1"))
        statuses = _statuses(report)
        totals += statuses
        print(f"\nschemathesis ({run}): {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
        assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    total = sum(totals.values())
    print(f"schemathesis: {total} requests in {time.monotonic() - started:.0f}s, "
          f"statuses {dict(sorted(totals.items()))}")
    assert total >= min(REQUESTS, 200), f"only {total} requests were generated"
    assert not [s for s in totals if s >= 500]
    assert totals[200] > 0  # some generated requests were answered, not only refused
    answer = client.predict("digits", np.zeros((1, 8, 8)))  # the replica still answers afterwards
    assert answer.shape == (1, 10)


def _get(path: str):
    from maas.client import Call

    return Call("GET", path)


def _statuses(report_dir: Path) -> Counter:
    """Every response status in schemathesis's event log (one JSON event per line)."""
    found: Counter = Counter()

    def walk(node) -> None:
        if isinstance(node, dict):
            response = node.get("response")
            if isinstance(response, dict) and isinstance(response.get("status_code"), int):
                found[response["status_code"]] += 1
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in report_dir.rglob("*.ndjson"):
        for line in path.read_text().splitlines():
            walk(json.loads(line))
    return found
