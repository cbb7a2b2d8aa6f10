"""Locating the Hydra config tree."""

from __future__ import annotations

import pytest

from autoguide.config_dir import config_dir


def test_default_is_the_checkout_conf_folder(monkeypatch):
    monkeypatch.delenv("AUTOGUIDE_CONFIG_DIR", raising=False)
    path = config_dir()
    assert path.is_absolute() and path.name == "conf"
    assert (path / "config.yaml").is_file() and (path / "net").is_dir()


def test_environment_variable_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOGUIDE_CONFIG_DIR", str(tmp_path))
    assert config_dir() == tmp_path
    monkeypatch.setenv("AUTOGUIDE_CONFIG_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="AUTOGUIDE_CONFIG_DIR"):
        config_dir()
