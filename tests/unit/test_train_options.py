"""`python -m jobs.train`'s options are generated from TrainConfig's fields: one flag per setting with
the field's default, a value out of bounds fails in the field's one line (exit code 2), and a
published version records the model's own settings. No Ray."""

from __future__ import annotations

from typing import Any, Literal, get_origin

import pytest

from maas.jobs.train import build_parser, main
from maas.training.arguments import config_from_args, options, to_argv
from maas.training.config import GROUPS, TrainConfig, setting_of

FIELDS = TrainConfig.model_fields
# The settings set by another setting's option rather than by one of their own.
NO_FLAG = {"min_workers": "--num-workers MIN-MAX", "hyperparameters": "the template's space (--tune)"}


def test_every_setting_is_in_one_group_and_has_a_flag_or_says_why_not() -> None:
    grouped = [name for group in GROUPS for name in group.model_fields]
    assert sorted(grouped) == sorted(FIELDS) and len(grouped) == len(set(grouped))
    flagged = {o.name for _, group_options in options() for o in group_options}
    assert flagged == set(FIELDS) - set(NO_FLAG)
    assert {name for name, f in FIELDS.items() if setting_of(f).flag is None} == set(NO_FLAG)
    assert all(FIELDS[name].description for name in FIELDS)


def test_every_option_defaults_to_its_field() -> None:
    parsed = vars(build_parser().parse_args([]))
    for _, group_options in options():
        for option in group_options:
            field = FIELDS[option.name]
            if field.default_factory is not None or setting_of(field).given_only:
                assert parsed[option.name] is None, option.name  # resolved by the model, where the job runs
            else:
                assert parsed[option.name] == field.default, option.name
    default, model = config_from_args(build_parser().parse_args([])), TrainConfig()
    assert default.to_dict() == {**model.to_dict(), "run_name": default.run_name}


def _out_of_bounds(name: str) -> str:
    """A value just outside the field's declared bounds."""
    for bound in FIELDS[name].metadata:  # pydantic's Ge, Gt, Lt...
        if getattr(bound, "ge", None) is not None:
            return str(bound.ge - 1)
        if getattr(bound, "gt", None) is not None:
            return str(bound.gt)
    return "1"  # cv_folds: 0 or at least 2


# The settings with bounds the model checks (argparse checks choices, as --template's and
# --placement-strategy's).
BOUNDED = [name for name, f in FIELDS.items()
           if setting_of(f).invalid and setting_of(f).flag is not None and get_origin(f.annotation) is not Literal]


@pytest.mark.parametrize("name", BOUNDED)
def test_a_value_out_of_bounds_exits_2_with_the_fields_one_line(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    flag = next(o.flag for _, group_options in options() for o in group_options if o.name == name)
    with pytest.raises(SystemExit) as exc:
        main([flag, _out_of_bounds(name)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {setting_of(FIELDS[name]).invalid}. Received: ") and err.count("\n") == 1, err


def test_a_value_argparse_cannot_read_is_its_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--epochs", "many"])
    assert exc.value.code == 2 and "argument --epochs: invalid int value: 'many'" in capsys.readouterr().err


def test_a_version_records_the_models_settings_but_the_run_only_ones() -> None:
    config = TrainConfig(template="maintenance", num_workers=3, min_workers=1, epochs=2, cv_folds=2,
                         hyperparameters={"depth": 3}, model_name="m", registry="/tmp/r")
    recorded = config.recorded_params()
    run_only = {name for name, f in FIELDS.items() if not setting_of(f).recorded}
    assert recorded == {k: v for k, v in config.to_dict().items() if k not in run_only}
    assert set(recorded) == {"num_workers", "min_workers", "use_gpu", "cpus_per_worker", "placement_strategy",
                             "epochs", "batch_size", "learning_rate", "seed", "mixed_precision", "cv_folds",
                             "max_failures", "validation_fraction", "early_stopping_patience", "trials",
                             "max_concurrent", "hyperparameters"}
    assert recorded["hyperparameters"] == {"width": 64, "depth": 3, "dropout": 0.0}  # complete, the rest defaults


@pytest.mark.parametrize("argv", [
    [],
    ["--template", "maintenance", "--num-workers", "1-3", "--use-gpu", "--cv", "3", "--no-mixed-precision",
     "--seed", "7", "--max-failures", "-1", "--data-dir", "/tmp/d", "--registry", "/tmp/r"],
    ["--tune", "--trials", "6", "--max-concurrent", "2", "--validation-fraction", "0.25",
     "--early-stopping-patience", "2", "--resume", "digits-x", "--wait-for-resources", "90", "--mixed-precision"],
])
def test_the_options_given_forward_to_a_submitted_job(argv: list[str]) -> None:
    parser = build_parser()
    given = config_from_args(parser.parse_args(argv)).to_dict()
    again = config_from_args(parser.parse_args(to_argv(parser.parse_args(argv)))).to_dict()

    def stamped(d: dict[str, Any]) -> dict[str, Any]:
        return {**d, "run_name": None} if "--resume" not in argv else d
    assert stamped(again) == stamped(given)
