"""Lazy package exports: names resolve to their submodule's objects, unknown names raise
AttributeError, and importing the light packages does not import Lightning."""

import subprocess
import sys

import pytest

from autoguide.core.lazy import lazy_getattr


def test_lazy_getattr_imports_on_first_use():
    getattr_ = lazy_getattr("autoguide.train", {"ConfigError": "plan"})
    from autoguide.core.typed_settings import ConfigError

    assert getattr_("ConfigError") is ConfigError
    with pytest.raises(AttributeError, match=r"module 'autoguide.train' has no attribute 'train'"):
        getattr_("train")


def test_packages_do_not_import_lightning_until_needed():
    code = (
        "import sys, autoguide.data, autoguide.train; autoguide.data.toy_mixture; autoguide.train.TrainSettings; "
        "import autoguide.train.validate; print('lightning' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
