"""Whether training workers fit, and the one line a job fails with when they do not: the pure
decisions of maas/training/resources.py and the `--num-workers N|MIN-MAX` option, without Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from maas.errors import ConfigError
from maas.jobs.train import build_parser
from maas.training.arguments import config_from_args, to_argv
from maas.training.config import TrainConfig, parse_num_workers
from maas.training.resources import (
    Holder,
    NodeFree,
    WorkerRequest,
    describe_request,
    describe_shortfall,
    groups_that_fit,
    resource_amount,
    start_retries,
    summarize_holders,
    workers_that_fit,
)

ONE_CPU = WorkerRequest(2, 2, 1.0)

ROOT = Path(__file__).resolve().parents[2]


def _nodes(*free: float, total: float = 2.0) -> tuple[NodeFree, ...]:
    return tuple(NodeFree(f"n{i}", total, f) for i, f in enumerate(free))


def test_the_unit_tier_imports_neither_ray_nor_tensorflow() -> None:
    code = ("import sys, jobs.train, maas.training.resources, maas.training.arguments; "
            "print(sorted(m for m in ('ray', 'tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- --num-workers N | MIN-MAX ---------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [("2", (2, 2)), ("1-2", (1, 2)), (" 3-8 ", (3, 8)), (4, (4, 4))])
def test_num_workers_is_a_count_or_a_range(text: str | int, expected: tuple[int, int]) -> None:
    assert parse_num_workers(text) == expected


@pytest.mark.parametrize("text", ["x", "1-", "-1", "1.5", "1-2-3", "١"])  # noqa: RUF001 (an Arabic-Indic one)
def test_num_workers_that_is_neither_fails_in_one_line(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^num_workers must be N or MIN-MAX \(for example 2 or 1-2\)\. Received: "):
        parse_num_workers(text)


@pytest.mark.parametrize("text", ["3-1", "0-2"])
def test_a_range_needs_one_to_max(text: str) -> None:
    with pytest.raises(ConfigError, match=rf"^num_workers MIN-MAX needs 1 <= MIN <= MAX\. Received: '{text}'$"):
        parse_num_workers(text)


def test_config_keeps_a_fixed_size_unless_a_minimum_is_given() -> None:
    assert TrainConfig().worker_range == (2, 2) and TrainConfig().min_workers == 2
    assert TrainConfig(num_workers=4, min_workers=1).worker_range == (1, 4)
    assert TrainConfig().wait_for_resources == 30.0
    with pytest.raises(ConfigError, match=r"min_workers must be from 1 to num_workers \(2\)\. Received: 3"):
        TrainConfig(min_workers=3)
    with pytest.raises(ConfigError, match="wait_for_resources must be 0 or more seconds"):
        TrainConfig(wait_for_resources=-1)


def test_the_options_round_trip_to_a_submitted_job() -> None:
    parser = build_parser()
    args = parser.parse_args(["--num-workers", "1-2", "--wait-for-resources", "90"])
    config = config_from_args(args)
    assert config.worker_range == (1, 2) and config.wait_for_resources == 90.0
    again = config_from_args(parser.parse_args(to_argv(args)))
    assert (again.worker_range, again.wait_for_resources) == ((1, 2), 90.0)
    default = parser.parse_args([])
    assert default.num_workers == 2 and config_from_args(default).worker_range == (2, 2)


def test_a_bad_range_exits_2_with_one_line_before_ray_is_touched() -> None:
    # In a process of its own: whether Ray got imported says nothing in a suite that imported it.
    code = ("import sys\nfrom jobs.train import main\ntry:\n    main(['--num-workers', '3-1'])\n"
            "except SystemExit as exc:\n    print(exc.code, 'ray' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr
    assert proc.stderr == "error: num_workers MIN-MAX needs 1 <= MIN <= MAX. Received: '3-1'\n"


# ---- what fits --------------------------------------------------------------------------------------


def test_a_serve_replica_on_a_two_core_machine_leaves_room_for_one_worker() -> None:
    assert workers_that_fit(_nodes(1.5), ONE_CPU) == 1


def test_a_worker_needs_its_cpus_on_one_node() -> None:
    assert workers_that_fit(_nodes(0.5, 0.5, 0.5), WorkerRequest(1, 1, 1.0)) == 0  # 1.5 free, on no one node
    assert workers_that_fit(_nodes(2, 1.5, 0), WorkerRequest(1, 8, 1.0)) == 3
    assert workers_that_fit(_nodes(2, 2, 2), WorkerRequest(1, 4, 2.0)) == 3  # capped by what fits
    assert workers_that_fit(_nodes(2, 2, 2), WorkerRequest(1, 2, 1.0)) == 2  # capped by the maximum


def test_strict_strategies_count_nodes() -> None:
    assert workers_that_fit(_nodes(2, 2, 0.5), WorkerRequest(3, 3, 1.0, strategy="STRICT_SPREAD")) == 2
    assert workers_that_fit(_nodes(1.5, 1.5), WorkerRequest(2, 2, 1.0, strategy="STRICT_PACK")) == 1
    assert workers_that_fit(_nodes(1.5, 1.5), WorkerRequest(2, 2, 1.0, strategy="PACK")) == 2


def test_gpus_count_per_node_too() -> None:
    gpu = WorkerRequest(1, 2, 1.0, gpus=1.0)
    assert workers_that_fit(_nodes(2, 2), gpu) == 0
    assert workers_that_fit((NodeFree("g", 8, 8, 1, 1), NodeFree("h", 8, 8, 1, 0)), gpu) == 1


def test_parallel_folds_fit_by_groups() -> None:
    assert groups_that_fit(_nodes(2, 2, 2), ONE_CPU, 2) == 3
    assert groups_that_fit(_nodes(1.5, 1.5, 1.5), ONE_CPU, 2) == 1
    spread = WorkerRequest(2, 2, 1.0, strategy="STRICT_SPREAD")
    assert groups_that_fit(_nodes(3, 1, 1, total=4), spread, 2) == 2
    assert groups_that_fit(_nodes(4, 0, 1, total=4), spread, 2) == 1  # one node cannot hold both of a group
    assert groups_that_fit(_nodes(1.5, 1.5), WorkerRequest(2, 2, 1.0, strategy="STRICT_PACK"), 2) == 0


@pytest.mark.parametrize(("wait_s", "retries"), [(0, 0), (30, 0), (60, 0), (61, 1), (600, 9)])
def test_ray_train_retries_a_start_only_within_the_wait(wait_s: float, retries: int) -> None:
    assert start_retries(wait_s, 60.0) == retries


# ---- what holds the rest ------------------------------------------------------------------------------


def test_an_actor_in_a_placement_group_counts_once() -> None:
    assert resource_amount({"CPU": 0.5, "memory": 1e9}, "CPU") == 0.5
    assert resource_amount({"CPU_group_ab12": 1.0, "CPU_group_0_ab12": 1.0, "bundle_group_ab12": 0.001}, "CPU") == 1.0
    assert resource_amount({"CPU": 1.0}, "GPU") == 0.0


def test_holders_are_grouped_by_kind() -> None:
    actors = [
        ("ServeReplica:maas:ModelServer", {"CPU": 0.5}),
        ("ServeReplica:maas:ModelServer", {"CPU": 0.5}),
        ("ServeController", {}),  # holds nothing: not named
        ("RayTrainWorker", {"CPU_group_pg1": 1.0, "CPU_group_0_pg1": 1.0}),
        ("Placeholder", {"CPU": 0.5}),
        ("make.<locals>.Placeholder", {"CPU": 0.5}),  # a class defined in a function, as Ray names it
    ]
    holders = summarize_holders(actors, [{"CPU": 0.5}], used_cpus=4.5, used_gpus=0.0)
    assert holders == (
        Holder("Serve replicas", 1.0),
        Holder("Ray Train workers", 1.0),
        Holder("other actors", 1.0, names=("Placeholder",)),
        Holder("running tasks", 0.5),
        Holder("placement groups", 1.0),  # reserved, used by no actor or task yet
    )


# ---- the one line --------------------------------------------------------------------------------------


def test_the_issue_case_in_one_line() -> None:
    line = describe_shortfall(ONE_CPU, _nodes(1.5), (Holder("Serve replicas", 0.5),),
                              "do not fit after waiting 30 s")
    assert line == ("2 workers × 1 CPU do not fit after waiting 30 s: 1.5 of 2 CPU free (largest node 1.5); "
                    "Serve replicas hold 0.5 CPU. Use --num-workers 1-2 to start with what fits, or free CPUs "
                    "(maas undeploy).")


def test_more_workers_than_the_cluster_has() -> None:
    holders = (Holder("other actors", 1.0, names=("Placeholder",)),)
    line = describe_shortfall(WorkerRequest(7, 7, 1.0), _nodes(2, 2, 1), holders, "do not fit after waiting 30 s")
    assert line == ("7 workers × 1 CPU do not fit after waiting 30 s: 5 of 6 CPU free (largest node 2); "
                    "other actors hold 1 CPU (Placeholder). Use --num-workers 5-7 to start with what fits.")


def test_gpus_on_a_cluster_without_gpus() -> None:
    line = describe_shortfall(WorkerRequest(2, 2, 1.0, gpus=1.0), _nodes(2, 2), (), "do not fit after waiting 30 s")
    assert line == ("2 workers × (1 CPU + 1 GPU) do not fit after waiting 30 s: 4 of 4 CPU free (largest node 2); "
                    "asks for 1 GPU per worker; the cluster has 0 GPU; nothing else holds any. "
                    "Drop --use-gpu or add GPU nodes.")


def test_workers_larger_than_any_node() -> None:
    line = describe_shortfall(WorkerRequest(1, 1, 4.0), _nodes(2, 2), (), "does not fit after waiting 30 s")
    assert line.startswith("1 worker × 4 CPU does not fit after waiting 30 s: 4 of 4 CPU free (largest node 2)")
    assert line.endswith("Lower --cpus-per-worker (the largest node has 2 CPU).")


def test_strict_spread_and_unknown_holders_are_said() -> None:
    request = WorkerRequest(3, 3, 1.0, strategy="STRICT_SPREAD")
    line = describe_shortfall(request, _nodes(2, 2, 0.5), None, "do not fit after waiting 0 s")
    assert "STRICT_SPREAD needs one node per worker, 2 of 3 have room" in line
    assert "what holds the rest is unknown" in line
    assert line.endswith("Use --num-workers 2-3 to start with what fits.") and "\n" not in line


def test_with_no_other_remedy_it_says_add_nodes() -> None:
    line = describe_shortfall(ONE_CPU, _nodes(0), (Holder("other actors", 2.0, names=("Worker",)),),
                              "do not fit after waiting 30 s")
    assert line == ("2 workers × 1 CPU do not fit after waiting 30 s: 0 of 2 CPU free (largest node 0); "
                    "other actors hold 2 CPU (Worker). Add nodes (on an autoscaling cluster, raise "
                    "--wait-for-resources).")


def test_an_elastic_request_says_its_range() -> None:
    assert describe_request(WorkerRequest(2, 4, 1.0)) == "at least 2 of 2-4 workers × 1 CPU"
    assert describe_request(WorkerRequest(1, 1, 0.5, gpus=1.0)) == "1 worker × (0.5 CPU + 1 GPU)"


def test_many_kinds_of_other_actors_are_named_up_to_three() -> None:
    holders = (Holder("other actors", 4.0, names=("A", "B", "C", "D")), Holder("placement groups", 1.0))
    line = describe_shortfall(ONE_CPU, _nodes(0), holders, "do not fit after waiting 30 s")
    assert "other actors hold 4 CPU (A, B, C and 1 more), placement groups reserve 1 CPU." in line
