"""Export a trained Keras model as a TF Serving-compatible SavedModel with one ``serving_default``
signature whose input and output are named after the template's tensors."""

from __future__ import annotations

from typing import TYPE_CHECKING

from maas.signature import Signature
from maas.templates import DataInfo, Template

if TYPE_CHECKING:
    import keras


def export_saved_model(model: keras.Model, template: Template, info: DataInfo, path: str) -> Signature:
    """Write ``model`` to ``path`` and return the signature read back from the written SavedModel.

    Regression models answer one number per example (shape ``[-1]``), not ``[-1, 1]``."""
    import keras
    import tensorflow as tf

    spec = template.input_spec(info)
    input_signature = [tf.TensorSpec(shape=(None, *spec.item_shape), dtype=spec.dtype, name=spec.name)]
    regression = template.task == "regression"

    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        out = model(x, training=False)
        return {template.output_name: tf.squeeze(out, -1) if regression else out}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=serve, input_signature=input_signature)
    archive.write_out(path, verbose=False)
    loaded = tf.saved_model.load(path)
    return Signature.from_concrete_function(loaded.signatures["serving_default"])
