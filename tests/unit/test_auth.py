"""API keys: stored hashed, scoped per model, revoked; the checks serving applies to a request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maas.auth import KeyStore, authorize, key_id, presented_key, service_secret
from maas.errors import ConfigError, Forbidden, InvalidInput, Unauthorized

SECRET = b"s" * 32


def test_a_key_is_shown_once_and_stored_only_as_its_hash(tmp_path: Path) -> None:
    store = KeyStore(str(tmp_path), SECRET)
    key, record = store.create("app-1", ["digits"])
    assert key.startswith(f"maas_{record.id}_") and key_id(key) == record.id
    stored = (tmp_path / ".keys" / f"{record.id}.json").read_text()
    assert key not in stored and key.split("_")[2] not in stored
    assert json.loads(stored)["models"] == ["digits"]
    assert store.get(record.id) == record and store.list() == [record]


def test_a_new_key_is_three_words_and_an_old_url_safe_key_still_parses(tmp_path: Path) -> None:
    store = KeyStore(str(tmp_path), SECRET)
    for _ in range(50):  # url-safe base64 would put a "_" or "-" in most of 50 secrets
        key, record = store.create("app", ["digits"])
        prefix, id_, secret = key.split("_")
        assert (prefix, id_) == ("maas", record.id) and len(secret) == 43 and secret.isalnum()
    assert key_id("maas_0123456789ab_" + "a_-" * 14 + "b") == "0123456789ab"


def test_authorize_checks_the_secret_the_scope_and_revocation(tmp_path: Path) -> None:
    store = KeyStore(str(tmp_path), SECRET)
    key, record = store.create("app-1", ["digits"])
    assert authorize(store.get(record.id), key, "digits", secret=SECRET) == record
    with pytest.raises(Forbidden, match=f"{record.id} .*may not call model 'wine'"):
        authorize(store.get(record.id), key, "wine", secret=SECRET)
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    with pytest.raises(Unauthorized, match="Invalid API key"):
        authorize(store.get(record.id), forged, "digits", secret=SECRET)
    with pytest.raises(Unauthorized, match="Invalid API key"):
        authorize(None, key, "digits", secret=SECRET)
    store.revoke(record.id)
    with pytest.raises(Unauthorized, match="revoked"):
        authorize(store.get(record.id), key, "digits", secret=SECRET)
    assert not store.list()[0].active


def test_every_model_scope_and_bad_arguments(tmp_path: Path) -> None:
    store = KeyStore(str(tmp_path), SECRET)
    key, record = store.create("ops")
    assert record.models == ("*",) and authorize(record, key, "anything", secret=SECRET).id == record.id
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


def test_an_authorization_header_of_another_scheme_does_not_hide_x_api_key() -> None:
    """A proxy's Basic credentials beside the client's X-API-Key: the key is still found (6c14451 lost it)."""
    assert presented_key({"authorization": "Basic dXNlcjpwdw==", "x-api-key": "maas_k"}) == "maas_k"
    assert presented_key({"authorization": "Bearer ", "x-api-key": "maas_k"}) == "maas_k"
    assert presented_key({"authorization": "Bearer maas_b", "x-api-key": "maas_k"}) == "maas_b"


def test_a_record_written_without_the_service_secret_is_refused(tmp_path: Path) -> None:
    """Write access to the registry's storage no longer mints keys: the record must carry the HMAC."""
    import hashlib

    store = KeyStore(str(tmp_path), SECRET)
    key, record = store.create("real", ["*"])
    forged_key = f"maas_{'f' * 12}_{'A' * 43}"
    forged = json.loads(record.to_json())
    forged.update(id="f" * 12, sha256=hashlib.sha256(forged_key.encode()).hexdigest())
    (tmp_path / ".keys" / f"{'f' * 12}.json").write_text(json.dumps(forged))
    with pytest.raises(Unauthorized, match="did not sign"):
        authorize(store.get("f" * 12), forged_key, "digits", secret=SECRET)
    unsigned = json.loads(record.to_json()) | {"hmac": ""}
    (tmp_path / ".keys" / f"{record.id}.json").write_text(json.dumps(unsigned))
    with pytest.raises(Unauthorized, match="did not sign"):
        authorize(store.get(record.id), key, "digits", secret=SECRET)
    other_key, other = KeyStore(str(tmp_path / "b"), b"t" * 32).create("x")  # another service's secret
    with pytest.raises(Unauthorized, match="did not sign"):
        authorize(other, other_key, None, secret=SECRET)


def test_the_service_secret_comes_from_a_file_or_the_ray_token(tmp_path: Path, monkeypatch) -> None:
    token = tmp_path / "token"
    token.write_text("r" * 64)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("MAAS_KEY_SECRET_FILE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    from_token = service_secret()
    assert len(from_token) == 32 and b"r" * 16 not in from_token  # derived, not the token itself
    secret_file = tmp_path / "secret"
    secret_file.write_text("q" * 40)
    assert service_secret(str(secret_file)) != from_token
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="cannot be read"):
        service_secret()


def test_key_ids_are_listed_once(tmp_path: Path) -> None:
    store = KeyStore(str(tmp_path), SECRET)
    assert store.ids() == frozenset()
    _, a = store.create("a")
    _, b = store.create("b")
    (tmp_path / ".keys" / "not-an-id.json").write_text("{}")
    assert store.ids() == {a.id, b.id}
