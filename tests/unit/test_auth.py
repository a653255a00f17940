"""API keys: stored hashed, scoped per model, revoked; the checks serving applies to a request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maas.auth import KeyStore, authorize, key_id, presented_key
from maas.errors import Forbidden, InvalidInput, Unauthorized


def test_a_key_is_shown_once_and_stored_only_as_its_hash(tmp_path: Path) -> None:
    store = KeyStore(str(tmp_path))
    key, record = store.create("app-1", ["digits"])
    assert key.startswith(f"maas_{record.id}_") and key_id(key) == record.id
    stored = (tmp_path / ".keys" / f"{record.id}.json").read_text()
    assert key not in stored and key.split("_")[2] not in stored
    assert json.loads(stored)["models"] == ["digits"]
    assert store.get(record.id) == record and store.list() == [record]


def test_authorize_checks_the_secret_the_scope_and_revocation(tmp_path: Path) -> None:
    store = KeyStore(str(tmp_path))
    key, record = store.create("app-1", ["digits"])
    assert authorize(store.get(record.id), key, "digits") == record
    with pytest.raises(Forbidden, match=f"{record.id} .*may not call model 'wine'"):
        authorize(store.get(record.id), key, "wine")
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    with pytest.raises(Unauthorized, match="Invalid API key"):
        authorize(store.get(record.id), forged, "digits")
    with pytest.raises(Unauthorized, match="Invalid API key"):
        authorize(None, key, "digits")
    store.revoke(record.id)
    with pytest.raises(Unauthorized, match="revoked"):
        authorize(store.get(record.id), key, "digits")
    assert not store.list()[0].active


def test_every_model_scope_and_bad_arguments(tmp_path: Path) -> None:
    store = KeyStore(str(tmp_path))
    key, record = store.create("ops")
    assert record.models == ("*",) and authorize(record, key, "anything").id == record.id
    with pytest.raises(InvalidInput, match="Model names"):
        store.create("bad", ["no/slashes"])
    with pytest.raises(InvalidInput, match="No API key with id"):
        store.revoke("0123456789ab")
    assert store.get("../../etc/passwd") is None and key_id("maas_short_x") is None


def test_keys_are_read_from_bearer_or_x_api_key_headers() -> None:
    assert presented_key({"authorization": "Bearer abc"}) == "abc"
    assert presented_key({"authorization": "Basic abc"}) is None
    assert presented_key({"x-api-key": "abc"}) == "abc"
    assert presented_key({}) is None
