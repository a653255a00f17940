"""A small client for the TF Serving REST API this project serves (standard library HTTP only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np

from maas import settings


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass
class TFServingClient:
    base_url: str = ""
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        self.base_url = (self.base_url or settings.serve_url()).rstrip("/")

    def predict(
        self, model: str, instances: Any, *, version: int | None = None, label: str | None = None
    ) -> np.ndarray:
        """Row-format ``:predict``; returns ``predictions`` as an array."""
        if isinstance(instances, np.ndarray):
            instances = instances.tolist()
        body = self.request("POST", f"{self.model_path(model, version, label)}:predict", {"instances": instances})
        return np.asarray(body["predictions"])

    def status(self, model: str, *, version: int | None = None) -> dict[str, Any]:
        return self.request("GET", self.model_path(model, version, None))

    def metadata(self, model: str, *, version: int | None = None) -> dict[str, Any]:
        return self.request("GET", f"{self.model_path(model, version, None)}/metadata")

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw).get("error", raw.decode(errors="replace"))
            except (json.JSONDecodeError, AttributeError):
                message = raw.decode(errors="replace")
            raise HTTPError(exc.code, message) from None

    @staticmethod
    def model_path(model: str, version: int | None, label: str | None) -> str:
        path = f"/v1/models/{model}"
        if version is not None:
            path += f"/versions/{version}"
        elif label is not None:
            path += f"/labels/{label}"
        return path
