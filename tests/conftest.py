"""Shared test settings."""

import importlib
import os
from types import ModuleType

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The tests' networks are tiny: one thread is fastest, and the 2-core machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


REQUIRE_SLURM = os.environ.get("AUTOGUIDE_REQUIRE_SLURM") == "1"
"""Set in CI (``.ci/run``): a SLURM cluster or plugin that is missing fails the slurm tests
instead of skipping them."""


def skip_unless_slurm(reason: str) -> None:
    """Skip a SLURM test for ``reason``, or fail it when SLURM is required."""
    if REQUIRE_SLURM:
        pytest.fail(f"AUTOGUIDE_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


def import_slurm_plugin(name: str) -> ModuleType:
    """``importlib.import_module(name)``, or ``skip_unless_slurm`` if it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        skip_unless_slurm(f"{name} is not installed (pip install -e '.[slurm]')")
