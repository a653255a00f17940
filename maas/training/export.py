"""Export a trained Keras model as a TF Serving-compatible SavedModel with one ``serving_default``
signature whose input and output are named after the template's tensors."""

from __future__ import annotations

from typing import TYPE_CHECKING

from maas.signature import Signature
from maas.templates import Template

if TYPE_CHECKING:
    import keras


def export_saved_model(model: "keras.Model", template: Template, path: str) -> Signature:
    """Write ``model`` to ``path`` and return the signature read back from the written SavedModel."""
    import keras
    import tensorflow as tf

    spec = template.input
    input_signature = [tf.TensorSpec(shape=(None, *spec.item_shape), dtype=spec.dtype, name=spec.name)]

    def serve(x):
        return {template.output_name: model(x, training=False)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=serve, input_signature=input_signature)
    archive.write_out(path, verbose=False)
    loaded = tf.saved_model.load(path)
    return Signature.from_concrete_function(loaded.signatures["serving_default"])
