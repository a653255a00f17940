"""API keys for the inference endpoints: created and revoked from the CLI, stored hashed beside the
registry (on any ``pyarrow.fs`` storage), each scoped to the models it may call.

Layout::

    <registry>/.keys/<key id>.json   # {"id", "name", "models", "sha256", "created_at", "revoked_at"}

A key reads ``maas_<id>_<secret>``: the id finds its record in one read, the secret (32 random bytes)
is never stored; the record holds the key's SHA-256, compared in constant time. A slow, salted hash
(bcrypt and the like) is for passwords people choose; a 256-bit random secret cannot be guessed from its
digest, and a fast digest keeps the check off the request path's budget. Revoking keeps the record
(``revoked_at`` set) so that ``maas keys list`` shows what existed and when it ended.

Clients send the key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import asdict, dataclass
from typing import Mapping

import pyarrow.fs as pafs

from maas.errors import Forbidden, InvalidInput, Unauthorized
from maas.registry import validate_model_name
from maas.storage import resolve_uri, write_bytes_atomic

KEYS_DIR = ".keys"
ALL_MODELS = "*"
_KEY_RE = re.compile(r"^maas_(?P<id>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})$")
_ID_RE = re.compile(r"^[0-9a-f]{12}$")


@dataclass(frozen=True)
class ApiKey:
    """A key's stored record (never the key itself)."""

    id: str
    name: str
    models: tuple[str, ...]  # model names, or ("*",) for every model
    sha256: str
    created_at: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, model: str) -> bool:
        return ALL_MODELS in self.models or model in self.models

    def to_json(self) -> bytes:
        return json.dumps({**asdict(self), "models": list(self.models)}, indent=2).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "ApiKey":
        doc = json.loads(raw)
        return cls(**{**doc, "models": tuple(doc["models"])})


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str | None:
    """The id inside a well-formed key, else ``None``."""
    m = _KEY_RE.match(key)
    return m["id"] if m else None


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries (``Authorization: Bearer …`` or ``X-API-Key``), if any."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    return headers.get("x-api-key") or None


class KeyStore:
    """The API keys of one registry root."""

    def __init__(self, registry_uri: str) -> None:
        self.uri = registry_uri
        self._fs, root = resolve_uri(registry_uri)
        self._dir = f"{root}/{KEYS_DIR}"

    def create(self, name: str, models: list[str] | tuple[str, ...] = (ALL_MODELS,)) -> tuple[str, ApiKey]:
        """A new key and its record. The key is returned once and cannot be recovered later."""
        if not name or len(name) > 128 or not name.isprintable():
            raise InvalidInput(f"A key's name is 1-128 printable characters. Received: {name!r}")
        scopes = tuple(dict.fromkeys(models))
        if not scopes:
            raise InvalidInput("A key needs at least one model in its scope (or '*' for every model)")
        for model in scopes:
            if model != ALL_MODELS:
                validate_model_name(model)
        key_id_ = secrets.token_hex(6)
        key = f"maas_{key_id_}_{secrets.token_urlsafe(32)}"
        record = ApiKey(id=key_id_, name=name, models=scopes, sha256=digest(key), created_at=_now())
        write_bytes_atomic(self._fs, self._path(key_id_), record.to_json())
        return key, record

    def get(self, key_id_: str) -> ApiKey | None:
        if not _ID_RE.match(key_id_):
            return None
        try:
            with self._fs.open_input_stream(self._path(key_id_)) as f:
                return ApiKey.from_json(f.read())
        except FileNotFoundError:
            return None

    def list(self) -> list[ApiKey]:
        infos = self._fs.get_file_info(pafs.FileSelector(self._dir, allow_not_found=True))
        ids = sorted(i.base_name.removesuffix(".json") for i in infos if i.base_name.endswith(".json"))
        records = [r for r in (self.get(i) for i in ids) if r is not None]
        return sorted(records, key=lambda r: r.created_at)

    def revoke(self, key_id_: str) -> ApiKey:
        record = self.get(key_id_)
        if record is None:
            raise InvalidInput(f"No API key with id {key_id_!r} (see `maas keys list`)")
        if not record.active:
            return record
        revoked = ApiKey(**{**asdict(record), "revoked_at": _now()})
        write_bytes_atomic(self._fs, self._path(key_id_), revoked.to_json())
        return revoked

    def _path(self, key_id_: str) -> str:
        return f"{self._dir}/{key_id_}.json"


def authorize(record: ApiKey | None, key: str, model: str | None) -> ApiKey:
    """Check a presented ``key`` against its looked-up ``record`` and, if given, the ``model`` it calls.

    Raises :class:`Unauthorized` (401) for an unknown, malformed or revoked key and :class:`Forbidden`
    (403) for a model outside its scope. Messages name the key by id only, never the key."""
    if record is None or not hmac.compare_digest(record.sha256, digest(key)):
        raise Unauthorized("Invalid API key")
    if not record.active:
        raise Unauthorized(f"API key {record.id} was revoked at {record.revoked_at}")
    if model is not None and not record.allows(model):
        raise Forbidden(f"API key {record.id} ({record.name}) may not call model '{model}'")
    return record


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
