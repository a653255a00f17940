"""API keys for the inference endpoints: created and revoked from the CLI, stored hashed beside the
registry (on any ``pyarrow.fs`` storage), each scoped to the models it may call, each record signed
with the service's secret.

Layout::

    <registry>/.keys/<key id>.json   # {"id", "name", "models", "sha256", "created_at", "revoked_at", "hmac"}

A key reads ``maas_<id>_<secret>``: the id finds its record in one read, the secret (32 random bytes)
is never stored; the record holds the key's SHA-256, compared in constant time. A slow, salted hash
(bcrypt and the like) is for passwords people choose; a 256-bit random secret cannot be guessed from its
digest, and a fast digest keeps the check off the request path's budget. Revoking keeps the record
(``revoked_at`` set) so that ``maas keys list`` shows what existed and when it ended.

**Signed records.** The registry's storage is not a secret store: whoever can write it could otherwise
mint a key by writing a record. Each record therefore carries an HMAC-SHA256 over its fields, made with
the *service secret*, which lives outside that storage: by default it is derived from the Ray cluster's
auth token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, which every node of a
token-auth cluster has), or read from ``$MAAS_KEY_SECRET_FILE``. Serving refuses a record whose HMAC
does not match, so writing the storage alone no longer grants access; creating and revoking keys
needs the secret. Rotating the Ray token (or the file) invalidates every key.

Clients send the key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import string
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pyarrow.fs as pafs

from maas.errors import ConfigError, Forbidden, InvalidInput, Unauthorized
from maas.names import validate_model_name
from maas.storage import resolve_uri, utc_now, write_atomic

KEYS_DIR = ".keys"
ALL_MODELS = "*"
SECRET_FILE_ENV = "MAAS_KEY_SECRET_FILE"
_KEY_RE = re.compile(r"maas_(?P<id>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})", flags=re.ASCII)
# New secrets are alphanumeric (43 of 62 symbols: 256 bits), so a key is one word to a double-click and its
# three parts split on "_"; keys made before, with url-safe base64 secrets, still parse.
_SECRET_ALPHABET = string.ascii_letters + string.digits
_SECRET_CHARS = 43
_ID_RE = re.compile(r"[0-9a-f]{12}", flags=re.ASCII)
_HMAC_CONTEXT = b"maas api key records v1"


def service_secret(secret_file: str | None = None) -> bytes:
    """The key that signs API key records: from ``secret_file`` (or ``$MAAS_KEY_SECRET_FILE``), else
    derived from the Ray cluster's auth token. Never stored in the registry."""
    path = secret_file or os.environ.get(SECRET_FILE_ENV)
    if path:
        raw = _read_secret(Path(path).expanduser(), f"the service secret file {path}")
    elif os.environ.get("RAY_AUTH_TOKEN"):
        raw = os.environ["RAY_AUTH_TOKEN"].encode()
    else:
        token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token")).expanduser()
        raw = _read_secret(token, f"the Ray auth token {token} (or set ${SECRET_FILE_ENV})")
    return hmac.new(raw.strip(), _HMAC_CONTEXT, hashlib.sha256).digest()


def _read_secret(path: Path, what: str) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"API keys need a service secret, and {what} cannot be read: "
                          f"{exc.strerror or type(exc).__name__}") from None
    if len(raw.strip()) < 16:
        raise ConfigError(f"API keys need a service secret of at least 16 bytes; {what} is shorter")
    return raw


@dataclass(frozen=True)
class ApiKey:
    """A key's stored record (never the key itself)."""

    id: str
    name: str
    models: tuple[str, ...]  # model names, or ("*",) for every model
    sha256: str
    created_at: str
    revoked_at: str | None = None
    hmac: str = ""  # over the other fields, with the service secret

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, model: str) -> bool:
        return ALL_MODELS in self.models or model in self.models

    def signed(self, secret: bytes) -> ApiKey:
        return replace(self, hmac=self._mac(secret))

    def signature_valid(self, secret: bytes) -> bool:
        return bool(self.hmac) and hmac.compare_digest(self.hmac, self._mac(secret))

    def _mac(self, secret: bytes) -> str:
        fields = {**asdict(self), "models": list(self.models)}
        del fields["hmac"]
        return hmac.new(secret, json.dumps(fields, sort_keys=True).encode(), hashlib.sha256).hexdigest()

    def to_json(self) -> bytes:
        return json.dumps({**asdict(self), "models": list(self.models)}, indent=2).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ApiKey:
        doc = json.loads(raw)
        return cls(**{**doc, "models": tuple(doc["models"])})


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str | None:
    """The id inside a well-formed key, else ``None``."""
    m = _KEY_RE.fullmatch(key)
    return m["id"] if m else None


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: ``Authorization: Bearer …``, else ``X-API-Key``. An ``Authorization``
    header of another scheme (a proxy's Basic credentials, say) does not hide an ``X-API-Key``."""
    scheme, _, value = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key") or None


class KeyStore:
    """The API keys of one registry root; ``secret`` signs and checks their records."""

    def __init__(self, registry_uri: str, secret: bytes | None = None) -> None:
        self.uri = registry_uri
        self._secret = secret
        self._fs, root = resolve_uri(registry_uri)
        self._dir = f"{root}/{KEYS_DIR}"

    @property
    def secret(self) -> bytes:
        if self._secret is None:
            self._secret = service_secret()
        return self._secret

    def create(self, name: str, models: list[str] | tuple[str, ...] = (ALL_MODELS,)) -> tuple[str, ApiKey]:
        """A new key and its record. The key is returned once and cannot be recovered later."""
        if not name or len(name) > 128 or not name.isprintable():
            raise InvalidInput(f"A key's name is 1-128 printable characters. Received: {name[:200]!r}")
        scopes = tuple(dict.fromkeys(models))
        if not scopes:
            raise InvalidInput("A key needs at least one model in its scope (or '*' for every model)")
        for model in scopes:
            if model != ALL_MODELS:
                validate_model_name(model)
        key_id_ = secrets.token_hex(6)
        key = f"maas_{key_id_}_{''.join(secrets.choice(_SECRET_ALPHABET) for _ in range(_SECRET_CHARS))}"
        record = ApiKey(id=key_id_, name=name, models=scopes, sha256=digest(key),
                        created_at=utc_now()).signed(self.secret)
        write_atomic(self._fs, self._path(key_id_), record.to_json())
        return key, record

    def ids(self) -> frozenset[str]:
        """Every key id with a record: one listing, whatever the number of ids asked about."""
        infos = self._fs.get_file_info(pafs.FileSelector(self._dir, allow_not_found=True))
        names = (i.base_name.removesuffix(".json") for i in infos if i.base_name.endswith(".json"))
        return frozenset(n for n in names if _ID_RE.fullmatch(n))

    def get(self, key_id_: str) -> ApiKey | None:
        """A key's record as stored (``None`` if there is none); :func:`authorize` checks its signature."""
        if not _ID_RE.fullmatch(key_id_):
            return None
        try:
            with self._fs.open_input_stream(self._path(key_id_)) as f:
                return ApiKey.from_json(f.read())
        except FileNotFoundError:
            return None

    def list(self) -> list[ApiKey]:
        records = [r for r in (self.get(i) for i in sorted(self.ids())) if r is not None]
        return sorted(records, key=lambda r: r.created_at)

    def revoke(self, key_id_: str) -> ApiKey:
        record = self.get(key_id_)
        if record is None:
            raise InvalidInput(f"No API key with id {key_id_[:40]!r} (see `maas keys list`)")
        if not record.active:
            return record
        revoked = replace(record, revoked_at=utc_now()).signed(self.secret)
        write_atomic(self._fs, self._path(key_id_), revoked.to_json())
        return revoked

    def _path(self, key_id_: str) -> str:
        return f"{self._dir}/{key_id_}.json"


def authorize(record: ApiKey | None, key: str, model: str | None, *, secret: bytes) -> ApiKey:
    """Check a presented ``key`` against its looked-up ``record`` and, if given, the ``model`` it calls.

    Raises :class:`Unauthorized` (401) for an unknown, malformed, forged or revoked key and
    :class:`Forbidden` (403) for a model outside its scope. Messages name the key by id only."""
    if record is None or not hmac.compare_digest(record.sha256, digest(key)):
        raise Unauthorized("Invalid API key")
    if not record.signature_valid(secret):
        raise Unauthorized(f"API key {record.id} has a record this service did not sign (a record written "
                           "without the service secret, or made before records were signed): create a new key "
                           "with `maas keys create`")
    if not record.active:
        raise Unauthorized(f"API key {record.id} was revoked at {record.revoked_at}")
    if model is not None and not record.allows(model):
        raise Forbidden(f"API key {record.id} ({record.name}) may not call model '{model}'")
    return record
