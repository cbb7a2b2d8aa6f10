"""Locating the Hydra config tree: inside the package (so a wheel carries it), the checkout's
top-level ``conf`` pointing at the same folder."""

from __future__ import annotations

from pathlib import Path

import pytest

import autoguide
from autoguide.apps.config_tree import config_dir

REPO = Path(__file__).resolve().parents[1]


def test_default_is_the_package_conf_folder(monkeypatch):
    monkeypatch.delenv("AUTOGUIDE_CONFIG_DIR", raising=False)
    path = config_dir()
    assert path.is_absolute() and path == Path(autoguide.__file__).resolve().parent / "conf"
    for primary in ("train", "generate", "eval", "sweep", "sims", "sims_compare"):
        assert (path / f"{primary}.yaml").is_file(), primary
    assert (path / "net").is_dir()
    assert (REPO / "conf").resolve() == path.resolve()


def test_environment_variable_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOGUIDE_CONFIG_DIR", str(tmp_path))
    assert config_dir() == tmp_path
    monkeypatch.setenv("AUTOGUIDE_CONFIG_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="AUTOGUIDE_CONFIG_DIR"):
        config_dir()
