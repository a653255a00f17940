"""Domain errors. Each carries the HTTP status it maps to; serving turns them into JSON in one place."""

from __future__ import annotations

from typing import ClassVar


class MaasError(Exception):
    """Base class of every error this project raises on purpose."""

    http_status: int = 500
    http_headers: ClassVar[dict[str, str]] = {}  # extra response headers (for example WWW-Authenticate)


class InvalidInput(MaasError):
    """The request or argument does not match what was expected."""

    http_status = 400


class PayloadTooLarge(InvalidInput):
    """The request (its body, its instances, or the answer it asks for) is over a configured limit."""

    http_status = 413


class BodyTimeout(InvalidInput):
    """The request body did not arrive within ``body_timeout_s``."""

    http_status = 408


class ClientClosed(MaasError):
    """The client went away before its request was read: nobody gets the answer (nginx's 499)."""

    http_status = 499


class Unauthorized(MaasError):
    """No API key, or one that is unknown or revoked."""

    http_status = 401
    http_headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="maas"'}


class Forbidden(MaasError):
    """A valid API key used outside its scope."""

    http_status = 403


class RequestTimeout(MaasError):
    """A prediction was not answered within the configured time."""

    http_status = 504


class ServerBusy(MaasError):
    """A replica already holds as many pending predictions as it may: the client should retry."""

    http_status = 503
    http_headers: ClassVar[dict[str, str]] = {"Retry-After": "1"}


class BodyBudgetFull(ServerBusy):
    """A replica already holds as many bytes of request bodies as it may (``max_buffered_bytes``)."""


class StorageUnavailable(MaasError):
    """The registry's storage cannot be reached, and nothing known is fresh enough to answer with."""

    http_status = 503
    http_headers: ClassVar[dict[str, str]] = {"Retry-After": "2"}


class ModelUnavailable(MaasError):
    """A version could not be loaded (a corrupt or refused artifact): it cannot answer until it is fixed."""

    http_status = 503


class ModelNotFound(MaasError):
    """No model of that name in the registry."""

    http_status = 404

    def __init__(self, name: str) -> None:
        super().__init__(f"Model '{name}' not found")
        self.name = name


class VersionNotFound(MaasError):
    """The model exists, the version (or label) does not."""

    http_status = 404

    def __init__(self, name: str, version: int | str) -> None:
        super().__init__(f"Model '{name}' has no version {version}")
        self.name = name
        self.version = version


class LabelNotFound(MaasError):
    http_status = 404

    def __init__(self, name: str, label: str) -> None:
        super().__init__(f"Model '{name}' has no label '{label}'")
        self.name = name
        self.label = label


class RegistryConflict(MaasError):
    """A write lost a race with another writer (for example two publishers of one version)."""

    http_status = 409


class Unimplemented(MaasError):
    """An RPC of a protocol that this service does not answer (TF Serving's Classify, Regress, MultiInference)."""

    http_status = 501


class InferenceError(MaasError):
    """The model failed on input that passed validation: a fault of the model, hence of the service."""

    http_status = 500


class ConfigError(MaasError):
    """A configuration value is invalid; the message says which and what was received."""

    http_status = 400


class ResourcesUnavailable(MaasError):
    """A training job's workers cannot be placed on the cluster within the time it may wait; the
    message is one line: what was asked for, what is free, and what holds the rest."""

    http_status = 503
