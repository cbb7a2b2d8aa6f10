"""What a finished search writes (docs/design.md, "Guidance search"): ``trials.csv`` (one row
per trial: state, value, images measured, the metric at every rung with its image count, the
settings) and PNG plots made by Optuna's matplotlib views: ``history.png`` (objective per trial
and the best so far), ``importances.png`` (fANOVA parameter importances), ``slice.png`` (the
objective against each parameter) and ``contour.png`` (over the two most important
parameters). Files are written atomically.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoguide.eval.search import IMAGES_ATTR, RETRY_ATTR
from autoguide.io import atomic_path, write_csv_atomic

log = logging.getLogger(__name__)


def trial_rows(study: Any, rungs: tuple[int, ...]) -> tuple[list[dict[str, Any]], list[str]]:
    """``(rows, columns)`` of ``trials.csv``: every trial of ``study`` with its metric at each
    rung (``rung_<images>``)."""
    params = sorted({name for t in study.get_trials(deepcopy=False) for name in t.params})
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "images": t.user_attrs.get(IMAGES_ATTR, 0),
                **{f"rung_{n}": t.intermediate_values.get(n) for n in rungs},
                **{p: t.params.get(p) for p in params},
                "retry_of": t.user_attrs.get(RETRY_ATTR),
                "seconds": None if t.duration is None else round(t.duration.total_seconds(), 2),
            }
        )
    columns = ["number", "state", "value", "images", *(f"rung_{n}" for n in rungs), *params, "retry_of", "seconds"]
    return rows, columns


def _save(axes: Any, path: Path) -> None:
    figure = axes.flat[0].get_figure() if hasattr(axes, "flat") else axes.get_figure()
    figure.set_size_inches(max(figure.get_size_inches()[0], 6.4), max(figure.get_size_inches()[1], 4.2))
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", bbox_inches="tight", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(figure)


def plot_study(study: Any, out_dir: Path) -> list[Path]:
    """The plots of ``study`` that its trials allow (importances and contours need two complete
    trials and two varied parameters); returns the files written."""
    from optuna.importance import get_param_importances
    from optuna.visualization import matplotlib as views

    written = []
    plots: dict[str, Callable[[], Any]] = {
        "history": lambda: views.plot_optimization_history(study),
        "slice": lambda: views.plot_slice(study),
    }
    try:
        ranked = list(get_param_importances(study))
    except (RuntimeError, ValueError) as err:
        log.info("no parameter importances: %s", err)
        ranked = []
    if ranked:
        plots["importances"] = lambda: views.plot_param_importances(study)
    if len(ranked) >= 2:
        plots["contour"] = lambda: views.plot_contour(study, params=ranked[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib views experimental
        for name, plot in plots.items():
            path = out_dir / f"{name}.png"
            _save(plot(), path)
            written.append(path)
    return written


def write_trials(study: Any, rungs: tuple[int, ...], out_dir: Path) -> Path:
    """``trials.csv`` of ``study``."""
    rows, columns = trial_rows(study, rungs)
    write_csv_atomic(out_dir / "trials.csv", rows, columns)
    return out_dir / "trials.csv"
