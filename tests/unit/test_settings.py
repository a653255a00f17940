"""Where this machine keeps its API key."""

from __future__ import annotations

import stat
from pathlib import Path

from maas import settings


def test_the_saved_key_is_0600_even_when_the_file_existed_with_a_looser_mode(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MAAS_HOME", str(tmp_path))
    monkeypatch.delenv(settings.API_KEY_ENV, raising=False)
    existing = tmp_path / "api_key"
    existing.write_text("old\n")
    existing.chmod(0o644)
    path = settings.save_api_key("maas_new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and settings.api_key() == "maas_new"
