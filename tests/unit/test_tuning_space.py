"""Each template's tuning space and what a trial's settings become, without Ray."""

from __future__ import annotations

import pytest

from maas.errors import ConfigError
from maas.templates import TEMPLATES, get_template
from maas.training.config import TrainConfig
from maas.training.tuning import trial_config


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_tunes_the_learning_rate_and_its_own_settings_around_its_defaults(name: str) -> None:
    template = TEMPLATES[name]
    space = {hp.name: hp for hp in template.tuning_space}
    assert next(iter(space)) == "learning_rate" and len(space) >= 3
    assert space["learning_rate"].default == template.default_learning_rate
    for hp in space.values():  # every default lies in its own space (a run that does not tune is one point of it)
        assert hp.check(hp.default) == hp.default
    assert set(template.hyperparameters()) == set(space) - {"learning_rate"}


def test_settings_outside_the_space_or_unknown_are_refused_naming_them() -> None:
    with pytest.raises(ConfigError, match="has no hyperparameter depth"):
        TrainConfig(template="digits", hyperparameters={"depth": 2})
    with pytest.raises(ConfigError, match=r"width must be in \{32, 64, 128\}"):
        TrainConfig(template="digits", hyperparameters={"width": 100})
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 0.5\]"):
        TrainConfig(template="maintenance", hyperparameters={"dropout": 0.9})


def test_a_trial_runs_with_its_own_learning_rate_settings_and_run_name() -> None:
    run = TrainConfig(template="maintenance", tune=True, trials=4, run_name="search")
    assert run.validation_fraction == 0.2  # --tune judges trials on a validation split
    trial = trial_config(run, {"learning_rate": 0.004, "width": 128, "depth": 3, "dropout": 0.1}, "search-t1")
    assert (trial.learning_rate, trial.run_name, trial.tune) == (0.004, "search-t1", False)
    assert get_template("maintenance").hyperparameters(trial.hyperparameters) == {
        "width": 128, "depth": 3, "dropout": 0.1}


def test_tuning_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="trials must be at least 1"):
        TrainConfig(tune=True, trials=0)
    with pytest.raises(ConfigError, match="do not combine"):
        TrainConfig(tune=True, cv_folds=3)
