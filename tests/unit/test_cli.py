"""The `maas` and `python -m jobs.train` command lines: help, one-line errors with exit code 2,
and the registry verbs on a real registry. No Ray cluster needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import free_port

from maas.registry import Registry
from maas.signature import Signature, TensorSpec

MAAS = str(Path(sys.executable).with_name("maas"))
SIG = Signature(inputs=(TensorSpec("pixels", "float32", (-1, 8, 8)),),
                outputs=(TensorSpec("probabilities", "float32", (-1, 10)),))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "verb",
    [[], ["cluster"], ["cluster", "up"], ["cluster", "down"], ["cluster", "status"], ["cluster", "env"], ["train"],
     ["models"], ["models", "list"], ["models", "show"], ["models", "promote"], ["models", "rollback"],
     ["models", "label"], ["models", "unlabel"], ["deploy"], ["undeploy"], ["predict"], ["demo"]],
)
def test_every_verb_has_help(verb: list[str]) -> None:
    proc = run(MAAS, *verb, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: maas" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        ([MAAS, "train", "--epochs", "0"], "error: epochs must be at least 1. Received: 0"),
        ([MAAS, "train", "--cpus-per-worker", "-1"], "error: cpus_per_worker must be positive. Received: -1.0"),
        ([MAAS, "train", "--model-name", "a/b"], "Received: 'a/b'"),
        ([MAAS, "predict", "digits", "--instances", "[[1,"], "error: cannot read the request"),
        ([sys.executable, "-m", "jobs.train", "--epochs", "0"], "error: epochs must be at least 1. Received: 0"),
        ([MAAS, "train", "--num-workers", "3-1"], "error: num_workers MIN-MAX needs 1 <= MIN <= MAX. Received: '3-1'"),
        ([sys.executable, "-m", "jobs.train", "--num-workers", "two"],
         "error: num_workers must be N or MIN-MAX (for example 2 or 1-2). Received: 'two'"),
        ([MAAS, "train", "--wait-for-resources", "-1"], "error: wait_for_resources must be 0 or more seconds."),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args: list[str], message: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_unknown_template_is_rejected_by_the_parser() -> None:
    proc = run(sys.executable, "-m", "jobs.train", "--template", "nope")
    assert proc.returncode == 2 and "invalid choice: 'nope'" in proc.stderr


def test_models_verbs_on_a_real_registry(tmp_path: Path, tiny_saved_model: Path) -> None:
    reg = Registry(str(tmp_path))
    for _ in range(2):
        reg.publish("digits", str(tiny_saved_model), {"signature": SIG.to_dict(), "metrics": {"accuracy": 0.97}})
    base = [MAAS, "models", "--registry", str(tmp_path)]
    listing = run(*base, "list")
    assert listing.returncode == 0 and "v1" in listing.stdout and "accuracy 0.9700" in listing.stdout
    assert run(*base, "promote", "digits", "1").stdout.strip() == "digits: stable -> version 1"
    assert run(*base, "promote", "digits").stdout.strip() == "digits: stable -> version 2"
    assert run(*base, "label", "digits", "canary", "1", "--weight", "0.1").returncode == 0
    assert "canary(0.1)" in run(*base, "list").stdout
    assert run(*base, "set-weight", "digits", "0.25").stdout.strip() == "digits: canary -> version 1 (weight 0.25)"
    out_of_range = run(*base, "set-weight", "digits", "1.5")
    assert out_of_range.returncode == 2 and out_of_range.stderr.strip() == (
        "error: A label's weight is a share of traffic in [0, 1]. Received: 1.5")
    reg.retire_canary("digits", 1, "auto-rollback: error rate 40.0% (8 of 20) over 60s exceeds 5.0%")
    history = run(*base, "history", "digits").stdout.strip().splitlines()
    assert history[-2].endswith("canary -> version 1 (weight 0.25), was 1")
    assert history[-1].endswith("canary removed, was 1  [auto-rollback: error rate 40.0% (8 of 20) over 60s "
                                "exceeds 5.0%]")
    reg.set_label("digits", "canary", 1, weight=0.1)
    assert run(*base, "rollback", "digits").stdout.strip() == "digits: stable rolled back to version 1"
    shown = json.loads(run(*base, "show", "digits").stdout)
    assert shown["version"] == 1
    assert run(*base, "unlabel", "digits", "canary").returncode == 0
    missing = run(*base, "show", "nope")
    assert missing.returncode == 2 and missing.stderr.strip() == "error: Model 'nope' not found"
    bad = run(*base, "show", "digits", "--version", "9")
    assert bad.returncode == 2 and "no version 9" in bad.stderr


def test_unreachable_storage_is_one_line_and_exit_code_2() -> None:
    closed = free_port()  # nothing listens there: the S3 client is refused at once, on loopback
    env = dict(os.environ, AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{closed}", AWS_ACCESS_KEY_ID="x",
               AWS_SECRET_ACCESS_KEY="y", AWS_EC2_METADATA_DISABLED="true")
    env.pop("MAAS_VERBOSE", None)
    proc = subprocess.run([MAAS, "models", "--registry", "s3://no-such-bucket/registry", "list"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: OSError:"), proc.stderr
    assert "no-such-bucket" in lines[0] and "Traceback" not in proc.stderr


def test_keys_create_save_makes_an_existing_key_file_owner_only(tmp_path: Path) -> None:
    """`maas keys create --save` into a ~/.maas/api_key that exists with mode 0644: it ends 0600."""
    import stat

    home = tmp_path / "home"
    home.mkdir()
    (home / "api_key").write_text("old\n")
    (home / "api_key").chmod(0o644)
    proc = subprocess.run([MAAS, "keys", "--registry", str(tmp_path / "registry"), "create", "ops", "--save"],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, MAAS_HOME=str(home)))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE((home / "api_key").stat().st_mode) == 0o600
    saved = (home / "api_key").read_text().strip()
    assert saved.startswith("maas_") and f"Created key {saved.split('_')[1]}" in proc.stdout + proc.stderr
