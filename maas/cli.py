"""``maas``: the platform's command line. Every verb has ``--help``.

    maas cluster up|down|status|env    local Ray cluster (dashboard http://127.0.0.1:8265)
    maas train --template digits       submit a training job to the cluster (ray job submit)
    maas models list|show|promote|rollback|label|set-weight|history|unlabel|delete|gc|import
    maas registry clean                remove what dead publishers left (never a published version)
    maas keys create|list|revoke       API keys for the HTTP API (scoped per model, stored hashed)
    maas deploy                        apply the Serve config (deployments/serve_config.yaml's settings)
    maas status                        per model: versions, labels, replicas, recent error rate
    maas predict digits --instances '[[...]]'
    maas demo                          the whole path, end to end
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maas import settings
from maas.cli_support import fail, run_cli

if TYPE_CHECKING:
    from maas.auth import KeyStore
    from maas.client import Client
    from maas.records import LabelEvent
    from maas.registry import Label, ModelVersion, Registry
    from maas.serving.status import ModelServiceStatus, RecentTraffic


def main(argv: list[str] | None = None) -> int:
    from maas.local_cluster import use_client_auth

    use_client_auth()  # before anything imports Ray: clients of a token-auth cluster need RAY_AUTH_MODE
    parser = _build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    return run_cli(lambda: handler(args))


def _build_parser() -> argparse.ArgumentParser:
    from maas.training.arguments import add_train_arguments

    p = argparse.ArgumentParser(prog="maas", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(title="verbs", metavar="VERB")

    from maas.local_cluster import REDIS_PORT

    c = sub.add_parser("cluster", help="start, stop or inspect the local Ray cluster")
    csub = c.add_subparsers(title="actions", metavar="ACTION")
    up = csub.add_parser("up", help="start a single-machine Ray head (idempotent)")
    up.add_argument("--num-cpus", type=int, default=None, help="logical CPUs (default: all cores)")
    up.add_argument("--no-ha-proxy", action="store_true", help="use Serve's default proxy instead of HAProxy")
    up.add_argument("--ha", action="store_true",
                    help="GCS fault tolerance: the head keeps the cluster's tables in a local redis-server "
                         f"(127.0.0.1:{REDIS_PORT}, password and data in $MAAS_HOME/redis), so a restarted GCS "
                         "finds actors, jobs and Serve as they were")
    up.set_defaults(handler=_cluster_up)
    csub.add_parser("down", help="stop Ray and everything it started (idempotent)").set_defaults(handler=_cluster_down)
    csub.add_parser("status", help="what runs: Ray, Serve applications").set_defaults(handler=_cluster_status)
    csub.add_parser(
        "env", help="print the exports that let plain Ray tools in this shell reach the cluster",
        description='eval "$(maas cluster env)" and then `ray job submit --working-dir . -- python -m jobs.train` '
                    "works as is (token auth, dashboard address). The token itself is never printed.",
    ).set_defaults(handler=_cluster_env)

    t = sub.add_parser("train", help="train a template as a Ray job and publish a version",
                       description="Submits `python -m jobs.train …` to the running cluster (as `ray job submit`) "
                                   "and follows its logs.")
    add_train_arguments(t)
    t.add_argument("--local", action="store_true", help="run in this process instead of submitting a job")
    t.set_defaults(handler=_train)

    m = sub.add_parser("models", help="list, inspect and label model versions")
    m.add_argument("--registry", default=None, help=f"registry URI (default: {settings.default_registry_uri()})")
    msub = m.add_subparsers(title="actions", metavar="ACTION")
    msub.add_parser("list", help="models, versions and labels").set_defaults(handler=_models_list)
    show = msub.add_parser("show", help="one version's metadata as JSON")
    show.add_argument("model")
    show.add_argument("--version", type=int, default=None, help="default: the stable label, else the latest")
    show.set_defaults(handler=_models_show)
    promote = msub.add_parser("promote", help="point the 'stable' label at a version")
    promote.add_argument("model")
    promote.add_argument("version", type=int, nargs="?", default=None, help="default: the latest")
    promote.set_defaults(handler=_models_promote)
    rollback = msub.add_parser("rollback", help="point 'stable' back at its previous version")
    rollback.add_argument("model")
    rollback.set_defaults(handler=_models_rollback)
    label = msub.add_parser("label", help="set a label on a version: canary (a share of routed traffic), shadow "
                                          "(a share also predicted, only compared), stable, or any name")
    label.add_argument("model")
    label.add_argument("label")
    label.add_argument("version", type=int)
    label.add_argument("--weight", type=float, default=1.0,
                       help="share of routed traffic for a canary or a shadow, in [0, 1]")
    label.set_defaults(handler=_models_label)
    weight = msub.add_parser("set-weight", help="change the canary's share of routed traffic")
    weight.add_argument("model")
    weight.add_argument("weight", type=float, help="share of traffic, in [0, 1]")
    weight.add_argument("--label", default="canary")
    weight.set_defaults(handler=_models_set_weight)
    capture = msub.add_parser(
        "capture", help="capture a share of the model's predictions as Parquet (off by default)",
        description="Serving replicas write that share of NAME's predictions (inputs, outputs, version, label, "
                    "protocol, latency, time, request id; never keys or headers) under <registry>/_captures/ "
                    "within registry_refresh_s. Captured inputs are user data: see `maas captures clean`.")
    capture.add_argument("model", metavar="NAME")
    share = capture.add_mutually_exclusive_group(required=True)
    share.add_argument("--sample", type=float, help="share of predictions captured, in [0, 1] (0: none)")
    share.add_argument("--clear", action="store_true", help="leave it to the Serve config's args.capture")
    capture.set_defaults(handler=_models_capture)
    history = msub.add_parser("history", help="label changes, automatic rollbacks with their reason")
    history.add_argument("model")
    history.set_defaults(handler=_models_history)
    unlabel = msub.add_parser("unlabel", help="remove a label")
    unlabel.add_argument("model")
    unlabel.add_argument("label")
    unlabel.set_defaults(handler=_models_unlabel)
    delete = msub.add_parser(
        "delete", help="delete a version (refused while a label points at it); its number is never reused",
        description="Delete one published version. Serving answers 404 for it within registry_refresh_s; "
                    "requests already running on it finish. A labelled version is refused unless --force, "
                    "which removes its labels (recorded in the history) and moves none to another version.")
    delete.add_argument("model")
    delete.add_argument("version", type=int)
    delete.add_argument("--force", action="store_true", help="delete even if labelled: its labels are removed")
    delete.set_defaults(handler=_models_delete)
    gc = msub.add_parser(
        "gc", help="delete all but the newest N versions, never a labelled one (dry run unless --yes)")
    gc.add_argument("model")
    gc.add_argument("--keep", type=int, required=True, metavar="N", help="how many of the newest versions to keep")
    gc.add_argument("--yes", action="store_true", help="delete; without it, only print what would go")
    gc.set_defaults(handler=_models_gc)
    imp = msub.add_parser(
        "import", help="publish a model you already have (.keras, .h5, SavedModel folder) as a new version",
        description="Publish a Keras 3 .keras file, a legacy .h5 file or a SavedModel folder, from a local path or "
                    "any URI (s3://...), as the next version of NAME, laid out as trained versions are. It is "
                    "refused, and nothing is written, unless its signature has a batch dimension first and known "
                    "other sizes, its graph uses no op serving refuses, and it answers a zero batch as serving "
                    "loads it.")
    imp.add_argument("model", metavar="NAME")
    imp.add_argument("path", metavar="PATH", help="the .keras or .h5 file or SavedModel folder: a path or a URI")
    imp.add_argument("--signature", default=None, metavar="KEY",
                     help="the SavedModel signature to serve (default: serving_default)")
    imp.add_argument("--input-shape", action="append", default=[], metavar="[INPUT=]D1,D2",
                     help="sizes of one instance (no batch dimension) for an input whose sizes the model leaves "
                          "unknown, such as 28,28; repeat as NAME=28,28 for several inputs")
    imp.add_argument("--task", default=None, metavar="TASK", help="classification or regression (recorded)")
    imp.add_argument("--classes", default=None, metavar="A,B,C", help="class names, in output order (recorded)")
    imp.add_argument("--metrics", default=None, metavar="FILE",
                     help="a JSON object of numbers (such as {\"accuracy\": 0.97}) to record as the version's metrics")
    imp.set_defaults(handler=_models_import)

    cap = sub.add_parser("captures", help="what request capture wrote: list, show, clean by age")
    cap.add_argument("--registry", default=None, help=f"registry URI (default: {settings.default_registry_uri()})")
    capsub = cap.add_subparsers(title="actions", metavar="ACTION")
    clist = capsub.add_parser("list", help="per model, version and day: files and rows")
    clist.add_argument("model", nargs="?", default=None)
    clist.set_defaults(handler=_captures_list)
    cshow = capsub.add_parser("show", help="a model's newest captured rows (no inputs or outputs)")
    cshow.add_argument("model")
    cshow.add_argument("--limit", type=int, default=10, help="rows to print (default: 10)")
    cshow.set_defaults(handler=_captures_show)
    cclean = capsub.add_parser("clean", help="delete the captures of days before the last N (dry run unless --yes)")
    cclean.add_argument("model", nargs="?", default=None)
    cclean.add_argument("--keep-days", type=int, required=True, metavar="N", help="days to keep, today included")
    cclean.add_argument("--yes", action="store_true", help="delete; without it, only print what would go")
    cclean.set_defaults(handler=_captures_clean)

    r = sub.add_parser("registry", help="maintain the registry's storage")
    rsub = r.add_subparsers(title="actions", metavar="ACTION")
    clean = rsub.add_parser(
        "clean", help="remove what dead publishers left: staging folders, partial versions, stale claims, "
                      "partial downloads (never a published version)",
        description="A publisher that dies leaves only what readers never look at. This removes it once its "
                    "newest write is older than --older-than by the storage's clock: staging folders and temp "
                    "files, numbered folders without metadata.json (their number stays taken), label-lock "
                    "claims (also only once 2 minutes old), and this machine's partial downloads.")
    clean.add_argument("--registry", default=None, help=f"registry URI (default: {settings.default_registry_uri()})")
    clean.add_argument("--older-than", default="1h", metavar="AGE",
                       help="only leftovers untouched this long: 3600, 90s, 30m, 1h, 2d (default: 1h). 0 takes "
                            "everything; on an object store use it only while nothing is publishing")
    clean.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
    clean.set_defaults(handler=_registry_clean)

    k = sub.add_parser("keys", help="API keys for the HTTP API (stored hashed beside the registry)")
    k.add_argument("--registry", default=None, help=f"registry URI (default: {settings.default_registry_uri()})")
    ksub = k.add_subparsers(title="actions", metavar="ACTION")
    create = ksub.add_parser("create", help="create a key; it is printed once and never stored")
    create.add_argument("name", help="who or what uses the key (for `keys list`)")
    create.add_argument("--models", nargs="+", default=["*"], metavar="MODEL",
                        help="models the key may call (default: '*', every model)")
    create.add_argument("--save", action="store_true",
                        help=f"write the key to {settings.api_key_path()} (owner-only) for this machine's "
                             "clients instead of printing it")
    create.set_defaults(handler=_keys_create)
    ksub.add_parser("list", help="ids, names, scopes, when created and revoked").set_defaults(handler=_keys_list)
    revoke = ksub.add_parser("revoke", help="revoke a key (serving sees it within registry_refresh_s)")
    revoke.add_argument("id", help="the key's id (`keys list`; the 12 hex digits after maas_)")
    revoke.set_defaults(handler=_keys_revoke)

    st = sub.add_parser("status", help="per model: versions, labels, replicas, recent requests and error rate")
    st.add_argument("model", nargs="?", default=None, help="one model (default: every model the key may see)")
    st.add_argument("--url", default=None, help=f"service URL (default: {settings.serve_url()})")
    st.add_argument("--json", action="store_true", help="print the service's JSON answer")
    st.set_defaults(handler=_status)

    d = sub.add_parser("deploy", help="deploy the Serve application (serve deploy of the Serve config)")
    d.add_argument("--config", default=None,
                   help="Serve config YAML to apply, e.g. an edited deployments/serve_config.yaml "
                        "(default: the config generated from maas.serving.config, which that file is)")
    d.add_argument("--registry", default=None, help=f"registry URI (default: {settings.default_registry_uri()})")
    d.add_argument("--port", type=int, default=None, help="HTTP port (default: the config's, 8000)")
    d.add_argument("--grpc-port", type=int, default=None,
                   help="gRPC port, TF Serving's and KServe V2's services (default: the config's, 9000)")
    d.add_argument("--host", default=None,
                   help="address the HTTP proxy listens on (default: the config's, 127.0.0.1; "
                        "0.0.0.0 on a cluster behind a load balancer)")
    d.set_defaults(handler=_deploy)
    sub.add_parser("undeploy", help="remove the Serve applications").set_defaults(handler=_undeploy)

    pr = sub.add_parser("predict", help="send a TF Serving :predict request (REST, or Predict over gRPC) and print "
                                        "the answer")
    pr.add_argument("model")
    which = pr.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, default=None)
    which.add_argument("--label", default=None)
    data = pr.add_mutually_exclusive_group(required=True)
    data.add_argument("--instances", help="JSON list of instances")
    data.add_argument("--file", help="JSON file holding a full request body, or - for standard input")
    pr.add_argument("--url", default=None, help=f"service URL (default: {settings.serve_url()})")
    pr.add_argument("--grpc", action="store_true",
                    help="call TF Serving's gRPC PredictionService/Predict instead (the answer printed as REST's)")
    pr.add_argument("--target", default=None, help=f"gRPC host:port with --grpc (default: {settings.grpc_target()})")
    pr.set_defaults(handler=_predict)

    demo = sub.add_parser("demo", help="cluster, 2-worker training, publish, deploy, HTTP predictions")
    demo.add_argument("--num-workers", type=int, default=2)
    demo.add_argument("--epochs", type=int, default=None)
    demo.add_argument("--samples", type=int, default=20, help="held-out digits to send over HTTP")
    demo.set_defaults(handler=_demo)
    return p


# ---- cluster -------------------------------------------------------------------------------------


def _cluster_up(args: argparse.Namespace) -> int:
    from maas import local_cluster

    before = local_cluster.local_state().running
    state = local_cluster.up(num_cpus=args.num_cpus, ha_proxy=not args.no_ha_proxy, ha=args.ha)
    print(("Ray already running" if before else "Ray started") + f" at {state.gcs_address}")
    print(f"Dashboard: {state.dashboard_url}  (token auth on; token in {local_cluster.token_path()})")
    return 0


def _cluster_down(args: argparse.Namespace) -> int:
    from maas import local_cluster

    print("Ray stopped" if local_cluster.down() else "Ray was not running")
    return 0


def _cluster_env(args: argparse.Namespace) -> int:
    from maas import local_cluster

    exports = {"RAY_ADDRESS": settings.dashboard_url()}
    mode = os.environ.get(local_cluster.AUTH_MODE_ENV)  # main() set it to "token" when a token exists
    if mode:
        exports[local_cluster.AUTH_MODE_ENV] = mode
    for key, value in exports.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def _cluster_status(args: argparse.Namespace) -> int:
    from maas import local_cluster

    state = local_cluster.local_state()
    if not state.running:
        print("Ray: not running (start it with `maas cluster up`)")
        return 1
    print(f"Ray: running at {state.gcs_address}; dashboard {state.dashboard_url}")
    try:
        from maas.deploy import serve_client

        apps = serve_client(state.dashboard_url).get_serve_details().get("applications", {})
    except Exception as exc:  # noqa: BLE001 (dashboard still starting, or Serve never started: any failure is 'unknown')
        print(f"Serve: unknown ({type(exc).__name__})")
        return 0
    if not apps:
        print("Serve: no applications (deploy with `maas deploy`)")
    for name, app in apps.items():
        print(f"Serve app {name}: {app.get('status')} at {settings.serve_url()}{app.get('route_prefix') or ''}")
        for dname, dep in app.get("deployments", {}).items():
            running = sum(1 for r in dep.get("replicas", []) if r.get("state") == "RUNNING")
            print(f"  {dname}: {dep.get('status')}, {running} replica(s) running")
    return 0


# ---- training ------------------------------------------------------------------------------------


def _train(args: argparse.Namespace) -> int:
    from maas.training.arguments import config_from_args, to_argv

    config_from_args(args)  # validate here: a bad option fails in one line before anything is submitted
    if args.local:
        import maas.jobs.train

        return maas.jobs.train.main(to_argv(args))
    from maas import jobclient, local_cluster

    if not local_cluster.local_state().running and "RAY_ADDRESS" not in os.environ:
        fail("no Ray cluster is running: start one with `maas cluster up` (or use --local)")
    outcome = jobclient.submit("jobs.train", to_argv(args))
    print(f"Job {outcome.submission_id}: {outcome.status}")
    return 0 if outcome.status == "SUCCEEDED" else 1


# ---- models --------------------------------------------------------------------------------------


def _registry(args: argparse.Namespace) -> Registry:
    from maas.registry import Registry

    return Registry(args.registry or settings.default_registry_uri())


def _models_list(args: argparse.Namespace) -> int:
    from maas.training.metrics import headline

    reg = _registry(args)
    models = reg.models()
    if not models:
        print(f"No models in {reg.uri}")
        return 0
    for name in models:
        labels = reg.labels(name)
        print(name)
        for v in reg.versions(name):
            version = reg.get(name, v)
            tags = ",".join(f"{k}" + (f"({lab.weight:g})" if k != "stable" else "") for k, lab in labels.items()
                            if lab.version == v)
            score = headline(version.metrics.to_json(exclude={"baseline"}))
            print(f"  v{v:<4} {version.metadata.created_at or '':<26} {score:<40} {tags}")
    return 0


def _models_show(args: argparse.Namespace) -> int:
    # Keys sorted, as metadata.json holds them.
    print(json.dumps(_registry(args).get(args.model, args.version).metadata.to_json(), indent=2, sort_keys=True))
    return 0


def _models_promote(args: argparse.Namespace) -> int:
    label = _registry(args).promote(args.model, args.version)
    print(f"{args.model}: stable -> version {label.version}")
    return 0


def _models_rollback(args: argparse.Namespace) -> int:
    label = _registry(args).rollback(args.model)
    print(f"{args.model}: stable rolled back to version {label.version}")
    return 0


def _models_label(args: argparse.Namespace) -> int:
    _print_label(args.model, args.label, _registry(args).set_label(args.model, args.label, args.version,
                                                                  weight=args.weight))
    return 0


def _models_capture(args: argparse.Namespace) -> int:
    sample = None if args.clear else args.sample
    _registry(args).set_capture_sample(args.model, sample)
    print(f"{args.model}: capture " + ("left to the Serve config" if sample is None else f"{sample:g} of predictions"))
    return 0


def _captures_list(args: argparse.Namespace) -> int:
    from maas.captures import partitions

    found = partitions(_registry(args).uri, args.model)
    for p in found:
        print(f"{p.model}\tversion {p.version}\t{p.day}\t{len(p.files)} files\t{p.rows} rows")
    if not found:
        print("no captures" + (f" of {args.model}" if args.model else ""))
    return 0


def _captures_show(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from maas.captures import partitions
    from maas.errors import InvalidInput
    from maas.storage import resolve_uri

    if args.limit < 1:
        raise InvalidInput(f"--limit must be at least 1. Received: {args.limit}")
    uri = _registry(args).uri
    found = partitions(uri, args.model)
    if not found:
        raise InvalidInput(f"no captures of {args.model}")
    fs, _ = resolve_uri(uri)
    days = sorted(p.day for p in found)  # partitions come in version order, then day
    print(f"{args.model}: {sum(p.rows for p in found)} rows in {sum(len(p.files) for p in found)} files, "
          f"versions {sorted({p.version for p in found})}, days {days[0]} to {days[-1]}")
    # A file holds one day's records, and its name starts with its time: by day folder, then by name.
    newest = sorted((f for p in found for f in p.files), key=lambda f: (f.rsplit("/", 2)[-2], f.rsplit("/", 1)[-1]))
    newest = newest[-args.limit:]
    columns = ["time", "request_id", "instance", "label", "protocol", "latency_ms"]
    rows = []
    for f in newest:
        try:
            rows += pq.read_table(f, filesystem=fs, columns=columns).to_pylist()
        except (pa.ArrowException, ValueError):  # a torn or foreign file (list says which)
            continue
    for row in sorted(rows, key=lambda r: r["time"])[-args.limit:]:
        print(f"{row['time'].isoformat()}  {row['request_id']}[{row['instance']}]  {row['label']}  {row['protocol']}  "
              f"{row['latency_ms']:.2f} ms")
    return 0


def _captures_clean(args: argparse.Namespace) -> int:
    from maas.captures import clean

    old = clean(_registry(args).uri, args.keep_days, model=args.model, dry_run=not args.yes)
    verb = "deleted" if args.yes else "would delete"
    for p in old:
        print(f"{verb} {p.model} version {p.version} {p.day}: {p.rows} rows")
    if not old:
        print(f"nothing older than {args.keep_days} day(s)")
    return 0


def _models_set_weight(args: argparse.Namespace) -> int:
    _print_label(args.model, args.label, _registry(args).set_weight(args.model, args.label, args.weight))
    return 0


def _print_label(model: str, name: str, label: Label) -> None:
    print(f"{model}: {name} -> version {label.version} (weight {label.weight:g})")


def _models_history(args: argparse.Namespace) -> int:
    for event in _registry(args).label_history(args.model):
        weight = f" (weight {event.weight:g})" if event.weight not in (None, 1.0) else ""
        reason = f"  [{event.reason}]" if event.reason else ""
        print(f"{event.at}  {event.label} {_label_target(event, 'version ')}{weight}, was {event.previous}{reason}")
    return 0


def _label_target(event: LabelEvent, prefix: str) -> str:
    """Where a label change took the label: ``removed`` or ``-> <prefix><version>``."""
    return "removed" if event.version is None else f"-> {prefix}{event.version}"


def _models_unlabel(args: argparse.Namespace) -> int:
    _registry(args).remove_label(args.model, args.label)
    print(f"{args.model}: label {args.label} removed")
    return 0


def _models_delete(args: argparse.Namespace) -> int:
    deletion = _registry(args).delete(args.model, args.version, force=args.force)
    print(f"{args.model}: version {deletion.version} deleted (its number is not reused)")
    for name in deletion.labels_removed:
        print(f"{args.model}: label {name} removed (it pointed at version {deletion.version}); no label was moved")
    if "stable" in deletion.labels_removed:
        from maas.errors import ModelNotFound

        try:
            print(f"{args.model}: routed requests now go to the latest version, {_registry(args).latest(args.model)}")
        except ModelNotFound:
            print(f"{args.model}: no version is left")
    return 0


def _models_gc(args: argparse.Namespace) -> int:
    from maas.formatting import format_bytes

    reg = _registry(args)
    plan = reg.gc_plan(args.model, keep=args.keep)
    sizes = {v: reg.version_bytes(args.model, v) for v in plan.delete}
    if args.yes:
        plan = reg.gc(args.model, keep=args.keep)
    kept = ", ".join(filter(None, [_versions_text(plan.newest, f"the newest {plan.keep}"),
                                   _versions_text(plan.labelled, "labelled"),
                                   _versions_text((plan.default,), "routed traffic's")]))
    if not plan.delete:
        print(f"{args.model}: nothing to delete (kept: {kept or 'none'})")
        return 0
    verb = "deleted" if args.yes else "would delete"
    size = format_bytes(sum(sizes.get(v, 0) for v in plan.delete))
    print(f"{args.model}: {verb} {_versions_text(plan.delete, '')} ({size}); kept: {kept or 'none'}")
    if not args.yes:
        print("dry run: nothing deleted; add --yes to delete")
    return 0


def _models_import(args: argparse.Namespace) -> int:
    from maas import importing

    # Every flag is read here, before TensorFlow loads: a bad one fails at once, in one line.
    shapes = importing.parse_input_shapes(args.input_shape)
    classes = None if args.classes is None else importing.parse_classes(args.classes)
    metrics = None if args.metrics is None else importing.read_metrics(args.metrics)
    quiet = contextlib.nullcontext() if os.environ.get("MAAS_VERBOSE") else _native_stderr_silenced()
    with quiet:  # TensorFlow's and Keras's start-up lines are not the one line an error is
        version = importing.import_model(_registry(args), args.model, args.path,
                                         signature=args.signature or importing.DEFAULT_SIGNATURE,
                                         input_shape=shapes, task=args.task, classes=classes, metrics=metrics)
    print(f"{args.model}: {_imported_line(version)}")
    return 0


def _imported_line(version: ModelVersion) -> str:
    """``version N imported from SOURCE (FORMAT; INPUTS -> OUTPUTS; sha256 PREFIX)``."""
    meta = version.metadata
    inputs, outputs = (", ".join(f"{s.name} {s.dtype}{list(s.shape)}" for s in specs)
                       for specs in (version.signature.inputs, version.signature.outputs))
    return (f"version {version.version} imported from {meta.source} ({meta.format}; {inputs} -> {outputs}; "
            f"sha256 {(meta.sha256 or '')[:12]})")


def _versions_text(versions: tuple[int, ...], why: str) -> str:
    if not versions:
        return ""
    listed = " ".join(f"v{v}" for v in versions)
    return f"{listed} ({why})" if why else listed


def _registry_clean(args: argparse.Namespace) -> int:
    from maas.formatting import parse_age
    from maas.registry_clean import clean

    older_than_s = parse_age(args.older_than)  # here, not as an argparse type: one error line, exit 2
    for line in clean(_registry(args), older_than_s=older_than_s, dry_run=args.dry_run).lines():
        print(line)
    return 0


# ---- serving -------------------------------------------------------------------------------------


def _deploy(args: argparse.Namespace) -> int:
    from maas import deploy

    config = deploy.load_serve_config(args.config, registry=args.registry, port=args.port,
                                      host=args.host, grpc_port=args.grpc_port)
    deploy.deploy(config)
    http = config.get("http_options", {})
    host = http.get("host", settings.SERVE_HOST)
    host = '127.0.0.1' if host == '0.0.0.0' else host
    grpc_port = config.get("grpc_options", {}).get("port")
    print(f"Deployed: http://{host}:{http.get('port', settings.SERVE_PORT)}/v1/models/<name>:predict"
          + (f", gRPC {host}:{grpc_port}" if grpc_port else ""))
    return 0


def _undeploy(args: argparse.Namespace) -> int:
    from maas import deploy

    deploy.undeploy()
    print("Serve applications removed")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from maas.client import JSON, Call, Client, predict_path

    try:
        if args.instances is not None:
            body = {"instances": json.loads(args.instances)}
        else:
            raw = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
            body = json.loads(raw)
    except (json.JSONDecodeError, OSError) as exc:
        fail(f"cannot read the request: {exc}")
    if args.grpc:
        print(json.dumps(_predict_grpc(args, body)))
        return 0
    call = Call("POST", predict_path(args.model, args.version, args.label), json.dumps(body).encode(), JSON)
    print(json.dumps(_call_service(Client(args.url), lambda client: client.send(call).raise_for_status().json())))
    return 0


_GRPC_CLIENT_ERRORS = ("INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED", "PERMISSION_DENIED",
                       "RESOURCE_EXHAUSTED", "UNIMPLEMENTED")


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null meanwhile: what native libraries print at start-up (absl's and
    CUDA's lines) is not the one line a CLI error is."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _predict_grpc(args: argparse.Namespace, body: dict[str, Any]) -> dict[str, Any]:
    """A REST ``:predict`` body sent as a gRPC ``Predict`` ("instances": one input; "inputs": by name),
    each input cast to the signature's dtype where no value changes (as REST reads JSON numbers); the
    answer in REST's shape; errors as ``_call_service``'s."""
    import numpy as np

    with _native_stderr_silenced():  # the messages import TensorFlow, whose C++ start-up writes to fd 2
        from tensorflow_serving.apis import predict_pb2  # noqa: F401
    from maas.errors import MaasError
    from maas.grpc_client import GrpcClient, GrpcError, as_inputs, cast_inputs, no_replica_answered

    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        fail("the request must hold exactly one of 'instances' or 'inputs'")
    client = GrpcClient(args.target)
    try:
        definition = client.metadata(args.model, version=args.version, label=args.label)
        inputs = body.get("inputs")
        given = cast_inputs({k: np.asarray(v) for k, v in inputs.items()}, definition) if isinstance(inputs, dict) \
            else as_inputs(np.asarray(body.get("instances", inputs)), definition)
        answer = client.predict(args.model, given, version=args.version, label=args.label)
    except GrpcError as exc:
        if exc.code.name in _GRPC_CLIENT_ERRORS:
            fail(exc.message)
        if no_replica_answered(exc):
            fail(f"cannot reach {client.target}: {exc.message}")
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except (ValueError, MaasError) as exc:  # ragged or mixed instances, several inputs given bare
        fail(str(exc))
    finally:
        client.close()
    key = "predictions" if "instances" in body else "outputs"
    if isinstance(answer, dict):
        return {key: {name: value.tolist() for name, value in answer.items()}}
    return {key: answer.tolist()}


def _call_service(client: Client, ask: Callable[[Client], object]) -> object:
    """``ask(client)``, with the service's errors as one line and exit code 2 (1 for a server error)."""
    from maas.client import HTTPError

    try:
        return ask(client)
    except HTTPError as exc:
        if exc.status < 500:
            fail(exc.message)
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as exc:
        fail(f"cannot reach {client.base_url}: {exc}")


def _status(args: argparse.Namespace) -> int:
    from maas.client import Client
    from maas.serving.status import ServiceStatus

    answer = ServiceStatus.model_validate(_call_service(Client(args.url), lambda client: client.service_status()))
    models = answer.models
    if args.model is not None:
        if args.model not in models:
            fail(f"no model {args.model!r} (or the API key may not see it); models: {', '.join(models) or 'none'}")
        models = {args.model: models[args.model]}
    if args.json:
        print(json.dumps(answer.model_copy(update={"models": models}).to_json(), indent=2))
        return 0
    deployments = ", ".join(f"{name} {d.replicas} replica(s) {d.status}" for name, d in answer.deployments.items())
    print(f"Serving: {deployments or 'no deployments'}")
    if answer.replica is not None:
        print(f"Recent, drift and shadow figures are replica {answer.replica}'s")
    for name, model in models.items():
        for line in _model_status_lines(name, model):
            print(line)
    return 0


def _model_status_lines(name: str, model: ModelServiceStatus) -> list[str]:
    """What ``maas status`` says of one model: versions and labels, recent traffic, the drift of each
    version's inputs, the last label change."""
    labels = ", ".join(f"{k} -> v{v.version}" + (f" ({v.weight:g})" if k != "stable" else "")
                       for k, v in model.labels.items()) or "no labels"
    lines = [f"{name}: versions {', '.join(map(str, model.versions))}; {labels}", _recent_line(model.recent)]
    for version, v in model.recent.versions.items():
        routes = ", ".join(f"{k} {n}" for k, n in v.labels.items())
        lines.append(f"  v{version}: {v.requests} requests ({routes}), {v.errors} errors, "
                     f"on {len(v.replicas)} replica(s)")
    for version, d in model.drift.items():
        drifted = ", ".join(f"{f} (mean shift {d.features[f].mean_shift:+.2f} sd"
                            + (f", PSI {d.features[f].psi:.2f})" if d.features[f].psi is not None else ")")
                            for f in d.flagged)
        lines.append(f"  v{version} inputs ({d.instances:g} instances): "
                     + (f"drift in {drifted}" if drifted else "no feature past the drift thresholds"))
    shadow = model.shadow
    if shadow is not None:
        agreement = (f"agreement {shadow.agreement:.1%}" if shadow.agreement is not None
                     else f"mean abs diff {shadow.mean_abs_diff:.4g}" if shadow.mean_abs_diff is not None
                     else "no comparison yet")
        lines.append(f"  shadow v{shadow.version} ({shadow.weight:g} of routed): {shadow.compared} compared, "
                     f"{agreement}, {shadow.errors} errors, {shadow.skipped} skipped"
                     + ("" if shadow.running is None else f", {shadow.running} running")
                     + f"; p50 {shadow.shadow_p50_ms} ms beside {shadow.answer_p50_ms} ms answering"
                     + ("" if shadow.state in (None, "ready") else f"; {shadow.state} on this replica"))
    change = model.last_label_change
    if change:
        reason = f" [{change.reason}]" if change.reason else ""
        lines.append(f"  last label change: {change.at} {change.label} {_label_target(change, 'v')}{reason}")
    return lines


def _recent_line(recent: RecentTraffic) -> str:
    if not recent.requests:
        return f"  last {recent.window_s:g}s: no requests"
    return (f"  last {recent.window_s:g}s: {recent.requests} requests, {recent.errors} errors "
            f"({recent.error_rate:.1%}), {recent.client_errors} rejected (4xx), "
            f"p50 {recent.p50_ms} ms, p99 {recent.p99_ms} ms")


# ---- API keys ------------------------------------------------------------------------------------


def _keys(args: argparse.Namespace) -> KeyStore:
    from maas.auth import KeyStore

    return KeyStore(args.registry or settings.default_registry_uri())


def _keys_create(args: argparse.Namespace) -> int:
    key, record = _keys(args).create(args.name, args.models)
    scope = ", ".join(record.models)
    if args.save:
        path = settings.save_api_key(key)
        print(f"Created key {record.id} ({record.name}; models: {scope}), saved to {path}")
    else:
        print(key)
        print(f"Created key {record.id} ({record.name}; models: {scope}). It is shown once: store it now.",
              file=sys.stderr)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    records = _keys(args).list()
    if not records:
        print("No API keys (create one with `maas keys create NAME`)")
    for r in records:
        state = f"revoked {r.revoked_at}" if r.revoked_at else "active"
        print(f"{r.id}  {r.name:<20} models: {', '.join(r.models):<30} created {r.created_at}  {state}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    record = _keys(args).revoke(args.id)
    print(f"Key {record.id} ({record.name}) revoked at {record.revoked_at}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from maas.demo import run_demo

    return run_demo(num_workers=args.num_workers, epochs=args.epochs, samples=args.samples)


if __name__ == "__main__":
    sys.exit(main())
