"""A model-based search with early stopping, one study shared by many workers
(docs/design.md, "Guidance search").

The optimiser is Optuna's: a sampler (``tpe``: the tree-structured Parzen estimator; ``gp``: a
Gaussian-process sampler; ``random``) proposes settings, a pruner stops the weak ones early.
A trial is measured on ``rungs`` of growing image counts ``n_0, n_0 f, n_0 f^2, ..., N``
(``N`` = the evaluation's seed count); after each rung its metric is reported at step = image
count, and the pruner (``sha``: successive halving, Li et al. 2020, asynchronous; ``hyperband``:
Li et al. 2018; ``none``) keeps it only if it ranks in the top ``1/f`` of the trials measured at
that rung. Every trial measures rung ``k`` on the same seeds (the first ``n_k`` of the
evaluation's seeds), so trials are only ever compared at equal image count on the same seeds:
a paired comparison in which the small-sample bias of FD (about ``k / n``) and the noise of the
seeds are shared, rather than an extrapolation across counts (FD_inf). The trial's value is its
metric at ``N``.

**Budget.** Counted in image evaluations: every measured rung adds its image count to its
trial's ``images``. A worker starts a new trial only while the images measured by the whole
study, plus those its running trials may still measure, plus one whole trial fit ``budget``: the
study never measures more than its budget, and trials stopped early leave room for more.

**Many workers.** The study lives in a storage every worker opens (``storage_for``): SQLite
(``sqlite:///study.db``, one machine), a journal file (``journal:/shared/study.log``, a shared
file system: Optuna's ``JournalFileBackend`` appends under a lock file), or any SQLAlchemy URL
(a cluster database). Optuna hands each trial to one worker. A worker records itself in its
running trial (``holder``: host, pid, SLURM job and restart, heartbeat every ``heartbeat_s``);
before taking a trial, a worker marks every running trial whose holder is provably gone (the
rules of ``autoguide.runtime.claim.stale_reason``: dead pid on this host, an earlier restart of this
SLURM job, a SLURM job that no longer runs, a heartbeat older than ``lease_s``) as failed, and
every failed trial is retried once more (its settings enqueued) up to ``max_retry`` times; a
setting that cannot be measured at all (``Infeasible``: an EMA std the snapshots cannot represent
at that time) fails without a retry. That
bookkeeping runs under the claim ``study`` of the output folder, so two workers never retry one
trial twice. The study's config (``fingerprint``) is stored with it; a worker with another
config is refused, naming the first differing key.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoguide.core.typed_settings import ConfigError
from autoguide.eval.search_space import SearchSpace
from autoguide.io.records import canonical, differences
from autoguide.runtime.claim import claim_folder, holder_from, holder_record, stale_reason

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "gp", "random")
PRUNERS = ("sha", "hyperband", "none")
CONFIG_ATTR = "autoguide_config"
HOLDER_ATTR = "holder"
IMAGES_ATTR = "images"
RETRY_ATTR = "retry_of"
INFEASIBLE_ATTR = "infeasible"
STUDY_WAIT_S = 600.0
MAX_INFEASIBLE_IN_A_ROW = 20

Measure = Callable[[Mapping[str, Any], int], float]  # (settings, image count) -> metric


class Infeasible(ValueError):
    """A proposed setting that cannot be measured (e.g. an EMA std the snapshots cannot
    represent at that time): its trial fails without being retried."""


def rungs(min_images: int, factor: int, max_images: int) -> tuple[int, ...]:
    """Image counts ``min_images * factor^k`` below ``max_images``, then ``max_images``."""
    counts = []
    n = min_images
    while n < max_images:
        counts.append(n)
        n *= factor
    return (*counts, max_images)


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """How to search: ``sampler`` and ``pruner`` (names above), the sampler's ``seed`` (mixed with
    ``worker``, this process's index, so parallel workers propose different settings), the
    ``study`` name in ``storage`` (a URL, ``journal:<file>``), the ``budget`` in image
    evaluations, the rungs (``min_images``, ``factor``, ``max_images``), ``startup_trials``
    (random proposals before the model is used), stale-trial detection (``heartbeat_s``,
    ``lease_s``) and ``max_retry``."""

    sampler: str = "tpe"
    pruner: str = "sha"
    seed: int = 0
    worker: int = 0
    study: str = "search"
    storage: str
    budget: int
    min_images: int
    factor: int = 3
    max_images: int
    startup_trials: int = 5
    heartbeat_s: float = 10.0
    lease_s: float = 120.0
    max_retry: int = 2

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"search.sampler: expected one of {list(SAMPLERS)}, got {self.sampler!r}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"search.pruner: expected one of {list(PRUNERS)}, got {self.pruner!r}")
        for key in ("min_images", "factor", "max_images", "budget"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if key == "factor" else 1):
                raise ConfigError(f"search.{key}: expected an integer >= {2 if key == 'factor' else 1}, got {value!r}")
        if self.min_images > self.max_images:
            raise ConfigError(
                f"search.rungs.min_images={self.min_images} exceeds the images per trial "
                f"({self.max_images}: the number of seeds)"
            )
        if self.budget < sum(self.rungs):
            raise ConfigError(
                f"search.budget={self.budget} image evaluations is smaller than one trial through every "
                f"rung {list(self.rungs)} ({sum(self.rungs)} images)"
            )

    @property
    def rungs(self) -> tuple[int, ...]:
        return rungs(self.min_images, self.factor, self.max_images)


def storage_for(url: str) -> Any:
    """The Optuna storage of ``url``: ``journal:<file>`` a journal file (shared file systems),
    anything else an SQLAlchemy URL (``sqlite:///<file>``, ``postgresql://...``)."""
    import optuna

    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
    return optuna.storages.RDBStorage(url)


def sampler_for(settings: SearchSettings) -> Any:
    """Optuna's sampler of ``settings.sampler``, seeded by (seed, worker)."""
    import numpy as np
    import optuna

    seed = int(np.random.SeedSequence([settings.seed, settings.worker]).generate_state(1)[0])
    if settings.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.startup_trials)
    if settings.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=settings.startup_trials)
    return optuna.samplers.RandomSampler(seed=seed)


def pruner_for(settings: SearchSettings) -> Any:
    """Optuna's pruner of ``settings.pruner`` over the rungs (steps are image counts)."""
    import optuna

    if settings.pruner == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=settings.min_images, reduction_factor=settings.factor
        )
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=settings.min_images, max_resource=settings.max_images, reduction_factor=settings.factor
        )
    return optuna.pruners.NopPruner()


def open_study(
    settings: SearchSettings, config: Mapping[str, Any], minimize: bool, lock_folder: Path | None = None
) -> Any:
    """Create or join the study ``settings.study``; a study begun with another ``config`` is
    refused (``ConfigError`` naming the first differing key). Workers starting together pass
    their shared ``lock_folder``: a new storage's tables and the study are then created by one
    of them at a time (Optuna's RDB storage does not survive two processes creating its tables)."""
    import contextlib

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    wanted = canonical(config)
    lock = None if lock_folder is None else claim_folder(lock_folder, role="study", wait_s=STUDY_WAIT_S)
    with lock or contextlib.nullcontext():
        study = optuna.create_study(
            study_name=settings.study,
            storage=storage_for(settings.storage),
            sampler=sampler_for(settings),
            pruner=pruner_for(settings),
            direction="minimize" if minimize else "maximize",
            load_if_exists=True,
        )
        found = study.user_attrs.get(CONFIG_ATTR)
        if found is None:
            study.set_user_attr(CONFIG_ATTR, wanted)
    if found is not None and found != wanted:
        changed = differences(found, wanted)
        raise ConfigError(
            f"search.study={settings.study!r} in {settings.storage} was started with another config: "
            f"{changed[0]}{f' (and {len(changed) - 1} more)' if len(changed) > 1 else ''}; "
            "rerun with the study's config, or name a new study"
        )
    return study


def spent_images(study: Any) -> int:
    """Images measured by every trial of ``study`` so far."""
    return sum(int(t.user_attrs.get(IMAGES_ATTR, 0)) for t in study.get_trials(deepcopy=False))


def committed_images(study: Any, per_trial: int) -> int:
    """Images measured so far plus those running trials may still measure (``per_trial``:
    the images of one trial through every rung)."""
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return spent_images(study) + sum(per_trial - int(t.user_attrs.get(IMAGES_ATTR, 0)) for t in running)


def recover(study: Any, max_retry: int, lease_s: float) -> list[int]:
    """Mark running trials whose holder is gone as failed; enqueue a retry of every failed trial
    not yet retried, up to ``max_retry`` retries of one setting. Returns the retried trials'
    numbers. The caller serialises calls (the ``study`` claim)."""
    import optuna
    from optuna.trial import TrialState

    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        holder = holder_from(trial.user_attrs.get(HOLDER_ATTR))
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        reason = (
            stale_reason(holder, now, lease_s)
            if holder
            else ("no holder recorded" if now - started > lease_s else None)
        )
        if reason is not None:
            log.warning("trial %d failed: %s", trial.number, reason)
            try:
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs[RETRY_ATTR] for t in trials if RETRY_ATTR in t.user_attrs}
    queued = []
    for trial in trials:
        if trial.state != TrialState.FAIL or trial.number in retried or INFEASIBLE_ATTR in trial.user_attrs:
            continue
        retries = int(trial.user_attrs.get("retries", 0))
        if retries >= max_retry:
            continue
        study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number, "retries": retries + 1})
        queued.append(trial.number)
        log.info("retrying trial %d (retry %d of %d)", trial.number, retries + 1, max_retry)
    return queued


class Heartbeat:
    """Records this process as the holder of a running trial and refreshes the record every
    ``every`` seconds from a thread, until ``stop``."""

    def __init__(self, study: Any, trial: Any, every: float) -> None:
        self.storage, self.trial_id = study._storage, trial._trial_id
        self.record = {**holder_record(), "token": str(trial.number)}
        self._stop = threading.Event()
        self.beat()
        self._thread = threading.Thread(target=self._run, args=(every,), name=f"trial {trial.number}", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        self.record["heartbeat"] = time.time()
        self.storage.set_trial_user_attr(self.trial_id, HOLDER_ATTR, self.record)

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.beat()
            except Exception as err:
                log.debug("heartbeat: %s", err)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_trial(study: Any, trial: Any, space: SearchSpace, measure: Measure, settings: SearchSettings) -> Any:
    """Measure a new ``trial`` of ``study`` rung by rung (pruned when it ranks low), tell the
    result; returns the finished trial."""
    from optuna.trial import TrialState

    heartbeat = Heartbeat(study, trial, settings.heartbeat_s)
    try:
        params = space.suggest(trial)
        images = 0
        state, value = TrialState.COMPLETE, math.nan
        for n in settings.rungs:
            value = float(measure(params, n))
            images += n
            trial.set_user_attr(IMAGES_ATTR, images)
            if not math.isfinite(value):
                raise Infeasible(f"the metric is {value} at {n} images")
            trial.report(value, n)
            log.info("trial %d at %d images: %g %s", trial.number, n, value, params)
            if n != settings.rungs[-1] and trial.should_prune():
                state = TrialState.PRUNED
                break
    except Infeasible as err:
        heartbeat.stop()
        log.warning("trial %d is infeasible: %s", trial.number, err)
        trial.set_user_attr(INFEASIBLE_ATTR, str(err))
        study.tell(trial, state=TrialState.FAIL)
        return study._storage.get_trial(trial._trial_id)
    except BaseException:
        heartbeat.stop()
        study.tell(trial, state=TrialState.FAIL)
        raise
    heartbeat.stop()
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    return study._storage.get_trial(trial._trial_id)


def run_worker(study: Any, space: SearchSpace, measure: Measure, settings: SearchSettings, lock_folder: Path) -> int:
    """Take trials until the budget is spent; returns the number this worker ran. Stale and
    failed trials are recovered first, under the claim ``study`` of ``lock_folder``."""
    done = infeasible = 0
    while True:
        with claim_folder(lock_folder, role="study", wait_s=STUDY_WAIT_S):
            recover(study, settings.max_retry, settings.lease_s)
            committed = committed_images(study, sum(settings.rungs))
            if committed + sum(settings.rungs) > settings.budget:
                log.info("budget spent: %d of %d image evaluations measured or running", committed, settings.budget)
                break
            trial = study.ask()  # taken under the claim: the next worker counts it as running
        result = run_trial(study, trial, space, measure, settings)
        done += 1
        infeasible = infeasible + 1 if INFEASIBLE_ATTR in result.user_attrs else 0
        if infeasible >= MAX_INFEASIBLE_IN_A_ROW:
            raise ConfigError(
                f"search.space: {infeasible} proposed settings in a row could not be measured, the last: "
                f"{result.user_attrs[INFEASIBLE_ATTR]}"
            )
    return done


def finished(study: Any) -> bool:
    """Whether no trial of ``study`` is running (called once this worker found the budget
    spent: no trial will start any more)."""
    from optuna.trial import TrialState

    return not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def best_trials(study: Any, minimize: bool, count: int = 1) -> Sequence[Any]:
    """The ``count`` best complete trials (by their value at the full image count)."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(complete, key=lambda t: t.value if minimize else -t.value)[:count]
