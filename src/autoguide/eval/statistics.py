"""Feature statistics files: the Gaussian summaries ``{metric: {"mu": [D], "sigma": [D, D]}}`` that
Fréchet distances are measured against, in the layouts the EDM papers publish them.

- EDM2 (``.pkl``, e.g. ``img512.pkl``): a pickle of plain dicts of numpy arrays,
  ``{"fid": {"mu", "sigma"}, "fd_dinov2": {"mu", "sigma"}}``. It is read by a restricted
  unpickler (``StatisticsUnpickler``) that resolves only the globals numpy needs to rebuild an
  array or a scalar; any other global (``os.system``, ``builtins.exec``, a class) is refused by
  name before anything is called.
- EDM (``.npz``): arrays ``mu`` and ``sigma``, FID only; read with ``allow_pickle=False``.

Metric keys and the extractors they belong to (``stats_key``): ``fid`` is Inception-v3 pool3,
``fd_dinov2`` DINOv2 ViT-L/14's class token, any other extractor ``e`` is ``fd_<e>``. Every
statistic is checked on reading (a float ``mu [D]``, a float ``sigma [D, D]``, all finite) and
returned as float64.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from autoguide.io import atomic_path

Statistics = dict[str, dict[str, np.ndarray]]

STATS_KEYS = {"inception": "fid", "dinov2": "fd_dinov2"}
NPZ_METRIC = "fid"

# The globals a pickle of numpy arrays and numpy scalars refers to (numpy 1 and numpy 2 spellings;
# protocol 2 spells bytes as _codecs.encode(str, "latin1")).
_NUMPY_GLOBALS = (
    {("_codecs", "encode")}
    | {
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    }
    | {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }
)


class StatisticsError(ValueError):
    """A statistics file that cannot be used; the message names the file and what was expected."""


def stats_key(extractor: str) -> str:
    """The metric key of ``extractor``'s statistics: ``fid``, ``fd_dinov2`` or ``fd_<extractor>``."""
    return STATS_KEYS.get(extractor, f"fd_{extractor}")


class StatisticsUnpickler(pickle.Unpickler):
    """Admits dicts, lists, tuples, scalars and numpy arrays; refuses every other global by name."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _NUMPY_GLOBALS:
            raise StatisticsError(
                f"{self.path}: refuses the global {module}.{name}; a statistics file may hold only dicts, lists, "
                "scalars and numpy arrays"
            )
        return super().find_class(module, name)


def _checked(metric: str, entry: object, path: Path) -> dict[str, np.ndarray]:
    if not isinstance(entry, Mapping) or not {"mu", "sigma"} <= set(entry):
        raise StatisticsError(f"{path}: {metric!r} must be a dict with 'mu' and 'sigma', got {type(entry).__name__}")
    mu, sigma = (np.asarray(entry[k]) for k in ("mu", "sigma"))
    if mu.dtype.kind not in "fiu" or sigma.dtype.kind not in "fiu":
        raise StatisticsError(f"{path}: {metric} mu and sigma must be numeric arrays, got {mu.dtype} and {sigma.dtype}")
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise StatisticsError(
            f"{path}: {metric} needs mu [D] and sigma [D, D], got {list(mu.shape)} and {list(sigma.shape)}"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise StatisticsError(f"{path}: {metric} mu or sigma holds NaN or infinite values")
    return {"mu": mu.astype(np.float64), "sigma": sigma.astype(np.float64)}


def read_statistics(path: str | os.PathLike) -> Statistics:
    """``{metric: {"mu": float64 [D], "sigma": float64 [D, D]}}`` of an EDM2 ``.pkl`` or EDM ``.npz``
    statistics file (its metric ``fid``); ``StatisticsError`` naming the file for anything else."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"statistics file {path} does not exist")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                raw: object = {NPZ_METRIC: {k: data[k] for k in data.files}}
        except (ValueError, OSError) as err:
            raise StatisticsError(f"{path}: not a readable .npz of mu and sigma ({err})") from None
    elif path.suffix == ".pkl":
        try:
            with open(path, "rb") as f:
                raw = StatisticsUnpickler(f, path).load()
        except StatisticsError:
            raise
        except Exception as err:
            raise StatisticsError(f"{path}: not a readable statistics pickle ({type(err).__name__}: {err})") from None
    else:
        raise StatisticsError(
            f"{path}: a statistics file is .pkl (EDM2) or .npz (EDM), got {path.suffix or 'no suffix'!r}"
        )
    if not isinstance(raw, Mapping) or not raw:
        raise StatisticsError(
            f"{path}: expected a dict of metrics ({{'fid': {{'mu', 'sigma'}}, ...}}), got {type(raw).__name__}"
        )
    return {str(metric): _checked(str(metric), entry, path) for metric, entry in raw.items()}


def write_statistics(stats: Mapping[str, Mapping[str, np.ndarray]], path: str | os.PathLike) -> Path:
    """Write ``stats`` atomically in the layout of ``path``'s suffix: ``.pkl`` EDM2's (plain dicts of
    float64 numpy arrays, readable by EDM2's scripts), ``.npz`` EDM's (``mu``, ``sigma``: ``fid`` only)."""
    path = Path(path).expanduser()
    plain = {str(m): _checked(str(m), entry, path) for m, entry in stats.items()}
    if path.suffix not in (".pkl", ".npz"):
        raise StatisticsError(
            f"{path}: a statistics file is .pkl (EDM2) or .npz (EDM), got {path.suffix or 'no suffix'!r}"
        )
    if path.suffix == ".npz" and set(plain) != {NPZ_METRIC}:
        raise StatisticsError(
            f"{path}: EDM's .npz layout holds FID statistics only ('fid'), got {sorted(plain)}; use .pkl"
        )
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        if path.suffix == ".pkl":
            pickle.dump(plain, f)
        else:
            np.savez(f, mu=plain[NPZ_METRIC]["mu"], sigma=plain[NPZ_METRIC]["sigma"])
    return path
