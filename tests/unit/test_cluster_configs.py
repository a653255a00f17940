"""The scale-out configs, validated offline: `cluster.yaml` against Ray's own cluster-launcher schema,
and one Ray version pinned across pyproject.toml and every config. No cluster, no cloud needed."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
from maas.kuberay import IMAGE_HAPROXY_DIR  # noqa: E402  (in the project image; cluster/Dockerfile makes it 0700)


def pinned_ray_version() -> str:
    from maas.kuberay import project_versions

    return project_versions()[1]


def _launcher_config(raw: dict) -> dict:
    """The config as `ray up` sees it: merged with the provider's defaults, then validated."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_rays_own_schema(cluster_config: dict) -> None:
    config = _launcher_config(cluster_config)
    types = config["available_node_types"]
    assert config["provider"]["type"] == "aws"
    assert set(types) == {"head", "cpu_worker", "gpu_worker"} and config["head_node_type"] == "head"
    assert types["gpu_worker"]["resources"]["GPU"] >= 1
    for name in ("cpu_worker", "gpu_worker"):  # autoscaling bounds on every worker type
        assert 0 <= types[name]["min_workers"] <= types[name]["max_workers"] <= config["max_workers"]


@pytest.mark.parametrize(
    "break_it, expected",
    [
        (lambda c: c.update(max_wrokers=3), "Additional properties are not allowed"),
        (lambda c: c["available_node_types"]["cpu_worker"].update(min_workers=20), "max_workers"),
        (lambda c: c.update(head_node_type="gpu"), "head_node_type"),
    ],
)
def test_the_schema_check_catches_mistakes(cluster_config: dict, break_it, expected: str) -> None:
    broken = copy.deepcopy(cluster_config)
    break_it(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError), match=expected):
        _launcher_config(broken)


def test_one_ray_version_everywhere(cluster_config: dict) -> None:
    version = pinned_ray_version()
    text = CLUSTER_YAML.read_text()
    images = re.findall(r"rayproject/ray:([0-9.]+)", text)
    installs = re.findall(r"ray\[[a-z,]+\]==([0-9.]+)", text)
    assert images and installs
    assert set(images) == set(installs) == {version}
    # Python in the images matches what the project supports.
    assert set(re.findall(r"rayproject/ray:[0-9.]+-py3(\d+)", text)) == {"11"}


def test_every_node_gets_the_project_the_token_and_the_shared_storage(cluster_config: dict) -> None:
    mounts = cluster_config["file_mounts"]
    assert mounts["/home/ray/maas"] == "."
    assert mounts["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    gpu = cluster_config["available_node_types"]["gpu_worker"]
    for commands in (cluster_config["setup_commands"], gpu["worker_setup_commands"]):
        joined = "\n".join(commands)
        assert "pip install -q -e" in joined and "/home/ray/maas" in joined
        for var in ("MAAS_REGISTRY=s3://", "MAAS_RUNS=s3://", "MAAS_DATA=s3://", "RAY_AUTH_MODE=token"):
            assert var in joined
    head_start = " ".join(cluster_config["head_start_ray_commands"])
    assert "--disable-usage-stats" in head_start
    from maas.local_cluster import node_env

    for head, key in ((True, "head_start_ray_commands"), (False, "worker_start_ray_commands")):
        start = " ".join(cluster_config[key])
        for name, value in node_env(IMAGE_HAPROXY_DIR, head=head).items():  # the same settings as `maas cluster up`
            assert f"{name}={shlex.quote(value)}" in start, (key, name)  # as a shell reads it
    assert f"install -d -m 700 {IMAGE_HAPROXY_DIR}" in head_start
    assert all(". ~/.maas_env" in " ".join(cluster_config[k])
               for k in ("head_start_ray_commands", "worker_start_ray_commands"))


# ---- KubeRay manifests ------------------------------------------------------------------------

CRD_DIR = ROOT.parent / "shared" / "kuberay-crds"
K8S_DIR = ROOT / "cluster" / "k8s"
MANIFESTS = {"ray-cluster.yaml": "rayclusters", "ray-job.train.yaml": "rayjobs", "ray-service.yaml": "rayservices"}
needs_crds = pytest.mark.skipif(not CRD_DIR.is_dir(), reason=f"KubeRay CRD schemas not found at {CRD_DIR}")


def _strict(schema: dict) -> dict:
    """The CRD's OpenAPI schema, rejecting unknown fields as `kubectl apply --validate=strict` does
    (the API server would otherwise drop a misspelt field without a word)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


def crd_validator(plural: str) -> jsonschema.Draft7Validator:
    crd = yaml.safe_load((CRD_DIR / f"ray.io_{plural}.yaml").read_text())
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(_strict(v1["schema"]["openAPIV3Schema"]))


def _manifest(name: str) -> dict:
    return yaml.safe_load((K8S_DIR / name).read_text())


@needs_crds
@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_kuberay_manifest_matches_its_crd_schema(name: str) -> None:
    doc = _manifest(name)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in crd_validator(MANIFESTS[name]).iter_errors(doc)]
    assert not errors, errors
    assert doc["apiVersion"] == "ray.io/v1"


@needs_crds
@pytest.mark.parametrize(
    "break_it, expected",
    [
        (lambda d: d["spec"].update(workerGroupSpec=[]), "workerGroupSpec"),  # misspelt field
        (lambda d: d["spec"]["workerGroupSpecs"][0].update(replicas="two"), "'two' is not of type 'integer'"),
        (lambda d: d["spec"]["authOptions"].update(mode="password"), "'password' is not one of"),
    ],
)
def test_the_crd_check_catches_mistakes(break_it, expected: str) -> None:
    doc = _manifest("ray-cluster.yaml")
    break_it(doc)
    messages = [e.message for e in crd_validator("rayclusters").iter_errors(doc)]
    assert any(expected in m for m in messages), messages


def test_committed_manifests_are_what_the_sources_generate() -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "maas.kuberay", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_generator_writes_installation_specific_manifests(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "maas.kuberay", "--out", str(tmp_path), "--image", "reg.example/maas:9",
         "--gpu-image", "reg.example/maas:9-gpu", "--bucket", "acme-models"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    spec = yaml.safe_load((tmp_path / "ray-cluster.yaml").read_text())["spec"]
    images = [g["template"]["spec"]["containers"][0]["image"] for g in spec["workerGroupSpecs"]]
    assert images == ["reg.example/maas:9", "reg.example/maas:9-gpu"]
    env = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "MAAS_REGISTRY", "value": "s3://acme-models/registry"} in env


def test_ray_service_serves_the_projects_own_serve_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    from maas.serving.serve_config import YAML_PATH

    ours = yaml.safe_load(YAML_PATH.read_text())
    theirs = yaml.safe_load(_manifest("ray-service.yaml")["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(theirs)
    assert theirs["applications"] == ours["applications"]  # the same apps, deployments, knobs
    # The only differences are what pods behind a Kubernetes Service need.
    assert theirs["proxy_location"] == "EveryNode" and theirs["http_options"]["host"] == "0.0.0.0"
    assert {**theirs["http_options"], "host": ours["http_options"]["host"]} == ours["http_options"]


def test_the_decorator_and_the_config_carry_the_same_deployment_options() -> None:
    from maas.serving.app import ModelServer
    from maas.serving.config import MODEL_SERVER
    from maas.serving.serve_config import serve_config

    (deployment,) = serve_config()["applications"][0]["deployments"]
    assert deployment["name"] == ModelServer.name
    options = ModelServer._deployment_config
    assert options.max_ongoing_requests == deployment["max_ongoing_requests"] == MODEL_SERVER.max_ongoing_requests
    assert options.health_check_period_s == deployment["health_check_period_s"]
    autoscaling = options.autoscaling_config.model_dump()
    assert {k: autoscaling[k] for k in deployment["autoscaling_config"]} == deployment["autoscaling_config"]
    assert ModelServer.ray_actor_options == deployment["ray_actor_options"]


def test_ray_job_runs_the_training_entry_point_with_valid_options() -> None:
    import shlex

    from maas.jobs.train import build_parser

    argv = shlex.split(_manifest("ray-job.train.yaml")["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.train"]
    args = build_parser().parse_args(argv[3:])
    assert args.template == "digits" and args.num_workers == 2


def test_one_ray_version_across_manifests_and_image() -> None:
    version = pinned_ray_version()
    for name in MANIFESTS:
        doc = _manifest(name)
        spec = doc["spec"].get("rayClusterSpec") or doc["spec"].get("rayClusterConfig") or doc["spec"]
        assert spec["rayVersion"] == version
        assert spec["authOptions"] == {"mode": "token"}
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    assert set(re.findall(r"rayproject/ray:([0-9.]+)", dockerfile)) == {version}


def test_long_lived_clusters_keep_the_gcs_tables_in_redis_and_a_job_cluster_does_not() -> None:
    """RayCluster and RayService restart their head without losing the cluster (KubeRay's GCS fault
    tolerance, the password from a Secret, never in the manifest); a RayJob's cluster lives one job."""
    service = _manifest("ray-service.yaml")["spec"]["rayClusterConfig"]
    for spec in (_manifest("ray-cluster.yaml")["spec"], service):
        options = spec["gcsFaultToleranceOptions"]
        assert options["redisAddress"] and "value" not in options["redisPassword"]
        assert options["redisPassword"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    assert "gcsFaultToleranceOptions" not in _manifest("ray-job.train.yaml")["spec"]["rayClusterSpec"]
