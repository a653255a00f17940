"""KServe's Python model server (V2 Open Inference Protocol), serving SavedModels.

    python -m benchmarks.servers.kserve_server --port 8103 NAME=SAVED_MODEL_DIR ...

Runs from its own virtual environment (benchmarks/.venvs/kserve): kserve pins versions of its own.
``POST /v2/models/NAME/infer`` with JSON tensors or the binary tensor data extension.
"""

from __future__ import annotations

import argparse

import kserve
from kserve import InferOutput, InferRequest, InferResponse


class SavedModel(kserve.Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self._path = path
        self.load()

    def load(self) -> bool:
        import tensorflow as tf

        self._tf = tf
        self._fn = tf.saved_model.load(self._path).signatures["serving_default"]
        ((self._input, spec),) = self._fn.structured_input_signature[1].items()
        self._dtype = spec.dtype.as_numpy_dtype
        self.ready = True
        return True

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = payload.inputs[0].as_numpy().astype(self._dtype, copy=False)
        out = next(iter(self._fn(**{self._input: self._tf.constant(x)}).values())).numpy()
        result = InferOutput(name="output", shape=list(out.shape), datatype="FP32")
        result.set_data_from_numpy(out, binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[result], response_id=payload.id or "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("models", nargs="+", help="NAME=SAVED_MODEL_DIR")
    args = parser.parse_args()
    models = [SavedModel(*m.split("=", 1)) for m in args.models]
    kserve.ModelServer(http_port=args.port, workers=1, enable_grpc=False).start(models)


if __name__ == "__main__":
    main()
