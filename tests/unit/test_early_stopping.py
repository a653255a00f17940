"""Early stopping's bookkeeping and its options, without Ray: the best epoch, when to stop, what a
checkpoint keeps so that a resumed run stops where the uninterrupted one would have."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from maas.errors import ConfigError
from maas.training.config import TrainConfig
from maas.training.loop import EarlyStopping


def _weights(value: float) -> list[np.ndarray]:
    return [np.full((2, 2), value, np.float32), np.full((2,), value, np.float32)]


def test_stops_after_patience_epochs_without_a_better_loss_and_keeps_the_best_weights() -> None:
    watch = EarlyStopping(patience=2)
    verdicts = [watch.update(epoch, {"val_loss": loss, "val_accuracy": 0.5}, _weights(epoch))
                for epoch, loss in enumerate([0.9, 0.5, 0.6, 0.5], start=1)]
    assert verdicts == [False, False, False, True]  # 0.5 again is no improvement
    assert watch.best_epoch == 2 and watch.best_loss == 0.5
    assert watch.best_weights is not None and float(watch.best_weights[0][0, 0]) == 2.0
    assert [point["epoch"] for point in watch.curve] == [1, 2, 3, 4]
    assert set(watch.curve[0]) == {"epoch", "val_loss", "val_accuracy"}


def test_patience_zero_watches_but_never_stops() -> None:
    watch = EarlyStopping(patience=0)
    assert not any(watch.update(epoch, {"val_loss": float(epoch)}, _weights(epoch)) for epoch in range(1, 20))
    assert watch.best_epoch == 1


def test_a_checkpoint_restores_the_best_epoch_its_weights_and_the_curve(tmp_path: Path) -> None:
    watch = EarlyStopping(patience=3)
    watch.update(1, {"val_loss": 0.4}, _weights(1))
    watch.update(2, {"val_loss": 0.7}, _weights(2))
    watch.save_best(str(tmp_path))
    back = EarlyStopping.restore(3, watch.to_dict(), str(tmp_path))
    assert (back.best_epoch, back.best_loss, back.curve) == (1, 0.4, watch.curve)
    assert back.best_weights is not None
    assert all(np.array_equal(a, b) for a, b in zip(back.best_weights, _weights(1), strict=True))
    assert back.update(3, {"val_loss": 0.9}, _weights(3)) is False
    assert back.update(4, {"val_loss": 0.9}, _weights(4)) is True
    assert EarlyStopping.restore(3, back.to_dict(), str(tmp_path)).stopped  # a restart after the stop trains no more


@pytest.mark.parametrize(("values", "message"), [
    ({"validation_fraction": 0.5}, "validation_fraction must be"),
    ({"validation_fraction": -0.1}, "validation_fraction must be"),
    ({"early_stopping_patience": 2}, "give --validation-fraction too"),
    ({"validation_fraction": 0.1, "early_stopping_patience": -1}, "early_stopping_patience must be"),
])
def test_bad_options_are_refused_naming_the_option(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)
