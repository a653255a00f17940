"""The Serve config has one source, the typed settings of maas/serving/config.py: the committed
deployments/serve_config.yaml must be what they generate (as `python -m maas.serving.serve_config
--check` says), and the ModelServer decorator must carry the same deployment options."""

from __future__ import annotations

from pathlib import Path

import yaml

from maas.serving import serve_config


def test_committed_serve_config_is_what_the_settings_generate(capsys) -> None:
    assert serve_config.main(["--check"]) == 0, capsys.readouterr().err
    assert yaml.safe_load(serve_config.YAML_PATH.read_text()) == serve_config.serve_config()


def test_the_check_fails_on_drift_and_names_the_file(tmp_path: Path, capsys) -> None:
    drifted = tmp_path / "serve_config.yaml"
    drifted.write_text(serve_config.render().replace("max_batch_size: 32", "max_batch_size: 64"))
    assert serve_config.main(["--check", "--out", str(drifted)]) == 1
    assert f"out of date: {drifted}" in capsys.readouterr().err
    assert serve_config.main(["--check", "--out", str(tmp_path / "missing.yaml")]) == 1


def test_every_setting_of_the_application_says_what_it_does() -> None:
    """Each setting under ``applications:`` (args, deployment options, user_config) has a comment
    above it: a field added without a description would be a setting nobody can read about."""
    lines = serve_config.render().splitlines()
    start = lines.index("applications:")
    serves_own = ("name", "route_prefix", "import_path", "enable_access_log")
    for before, line in zip(lines[start:], lines[start + 1:], strict=False):
        key, _, value = line.strip().removeprefix("- ").partition(":")
        if line.lstrip().startswith("#") or not value.strip() or key in serves_own:
            continue  # a comment, a block (its fields say it), or Serve's own
        assert before.lstrip().startswith("#"), f"no comment above {line.strip()!r}"
