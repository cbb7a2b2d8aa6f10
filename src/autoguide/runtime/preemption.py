"""Stopping a run cleanly when the cluster asks: checkpoint at a step boundary, requeue, exit.

SLURM signals a job some time before its time limit or a preemption (``sbatch
--signal=USR1@120`` in slurm/train.sbatch; submitit, the sweep launcher, asks for SIGUSR2).
SIGTERM (``scancel``, ``timeout``, ``kill``, a shutdown) is a request to stop: it saves and exits
the same way, but never requeues (``STOP_SIGNALS``).
``SignalFlag`` replaces the handlers of those signals by one that only records the signal; the
checkpoint callback acts on it at the end of the next optimizer step, when all ranks agree
(``autoguide.train.checkpoint.ImageCheckpoint``): it saves a checkpoint, global rank 0 requeues
the job (``scontrol requeue``) and every rank raises ``Preempted``. The requeued job keeps its
job id, runs the same command in the same run folder, and ``resume=auto`` continues there.

Why not save inside the handler, as Lightning's ``SLURMEnvironment(auto_requeue=True)`` does?
A handler runs between two bytecodes of the main thread, anywhere in a step: a checkpoint there
can pair the weights of one step with the image count of another, and under DDP its barrier
can meet another rank's gradient all-reduce. Why replace the handlers that are there?
Lightning's (SIGUSR1) saves such a mid-step ``hpc_ckpt_<n>.ckpt`` that ``resume=auto`` does not
read once a regular checkpoint exists; submitit's (SIGUSR2) requeues without saving anything;
Lightning's SIGTERM handler (installed after the callbacks' ``setup``, hence ``SignalFlag.reinstall``
at the start of training) ends the run at the next batch with exit status 0 and nothing saved.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

from autoguide.runtime.process import slurm_job_key

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 3
"""Exit status of a process that stopped on a preemption signal after saving a checkpoint."""
STOP_SIGNALS = frozenset({signal.SIGTERM})
"""Signals that ask a run to stop, not to move: the checkpoint is saved but the job not requeued."""


class Preempted(SystemExit):
    """Raised on every rank after the preemption checkpoint was saved (exit status 3).

    A ``SystemExit`` because Hydra's ``run_job`` and submitit's job runner catch ``Exception``
    and would record the interrupted run as a finished (failed) job: a sweep's submitting
    process would stop waiting for the requeued job."""

    def __init__(self, nimg: int, checkpoint: str, requeued: str | None) -> None:
        super().__init__(EXIT_PREEMPTED)
        self.nimg = nimg
        self.checkpoint = checkpoint
        self.requeued = requeued


def parse_signals(
    names: Sequence[str], key: str = "callbacks.checkpoint.preempt_signals"
) -> tuple[signal.Signals, ...]:
    """``["SIGUSR1", "USR2"]`` -> signals; ``ValueError`` naming ``key`` for an unknown or
    uncatchable name."""
    found = []
    for name in names:
        text = str(name).upper()
        text = text if text.startswith("SIG") else f"SIG{text}"
        if text not in signal.Signals.__members__ or text in ("SIGKILL", "SIGSTOP"):
            raise ValueError(f"{key}: {name!r} is not a catchable signal name (e.g. SIGUSR1)")
        found.append(signal.Signals[text])
    return tuple(found)


def requeue_slurm_job(env: Mapping[str, str] = os.environ) -> str | None:
    """``scontrol requeue`` this job; its key on success, ``None`` outside SLURM or on failure
    (logged: the checkpoint is saved either way, a resubmission continues from it)."""
    job = slurm_job_key(env)
    if job is None:
        return None
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        log.error("SLURM job %s: cannot requeue, scontrol is not on PATH", job)
        return None
    result = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True)
    if result.returncode != 0:
        log.error("scontrol requeue %s failed (status %d): %s", job, result.returncode, result.stderr.strip())
        return None
    return job


class SignalFlag:
    """While installed, the handlers of ``signals`` only record the latest signal number in
    ``received``; ``restore`` puts the previous handlers back."""

    def __init__(self, signals: Sequence[signal.Signals]) -> None:
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def install(self) -> None:
        self.received = None
        for sig in self.signals:
            self._previous.setdefault(sig, signal.getsignal(sig))
            signal.signal(sig, self._handler)

    def reinstall(self) -> None:
        """Install the handlers again over any that were set since ``install`` (keeping what
        was received and the handlers ``restore`` puts back)."""
        for sig in self._previous:
            signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()
