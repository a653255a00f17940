"""What users write without a platform: FastAPI + uvicorn, one request -> one forward pass.

    python -m benchmarks.servers.fastapi_server --port 8101 NAME=SAVED_MODEL_DIR ...

Speaks TF Serving's row format on the same path: ``POST /v1/models/NAME:predict {"instances": ...}``.
"""

from __future__ import annotations

import argparse

import numpy as np
from fastapi import FastAPI, HTTPException, Request  # module level: FastAPI resolves the handler's annotations here


def build_app(models: dict[str, str]) -> FastAPI:
    import tensorflow as tf

    loaded = {}
    for name, path in models.items():
        fn = tf.saved_model.load(path).signatures["serving_default"]
        ((input_name, spec),) = fn.structured_input_signature[1].items()
        loaded[name] = (fn, input_name, spec.dtype.as_numpy_dtype)
    app = FastAPI()

    @app.post("/v1/models/{name}:predict")
    async def predict(name: str, request: Request) -> dict:
        if name not in loaded:
            raise HTTPException(404, f"no model {name}")
        fn, input_name, dtype = loaded[name]
        body = await request.json()
        x = tf.constant(np.asarray(body["instances"], dtype=dtype))
        out = fn(**{input_name: x})
        return {"predictions": next(iter(out.values())).numpy().tolist()}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("models", nargs="+", help="NAME=SAVED_MODEL_DIR")
    args = parser.parse_args()
    models = dict(m.split("=", 1) for m in args.models)
    uvicorn.run(build_app(models), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
