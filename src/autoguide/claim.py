"""One writer per folder: an exclusive claim taken before anything is written, valid across the
nodes of a shared file system (docs/design.md, "Conventions").

**Mechanism: a lease file** ``<folder>/.autoguide-claim[-<role>].json`` holding the holder's
host, pid, SLURM job and restart count, command, start time, a random token and a heartbeat.
It is created complete and atomically with ``link(2)`` from a temporary file (``link`` fails if
the name exists: the classic lock primitive of NFS, atomic on local file systems, NFSv3+ and
Lustre, where ``fcntl``/``flock`` locks depend on mount options such as Lustre's ``flock`` and
may be node-local). A thread of the holder rewrites the heartbeat every ``heartbeat_s`` seconds
(atomic replace). Released on exit (also on ``SystemExit``, e.g. a SLURM preemption), not on
SIGKILL: then the lease stays until someone recognises it as stale.

**When a lease may be taken over** -- only when its holder is provably gone or its lease
expired: the holder ran on this host and its pid is dead; or it is an earlier incarnation of this
very SLURM job (same job, lower ``SLURM_RESTART_COUNT``: a requeue); or its SLURM job is no
longer running (``scontrol show job``); or its heartbeat is older than ``lease_s`` (default 5
min). Limits: clocks of the nodes must agree to well within ``lease_s`` (NTP); a pid reused on
the holder's host by another process keeps the lease busy (the safe side). A takeover is
serialised by a second short-lived link file, so two contenders never both take one lease.

**Who needs no claim of its own:** processes started by a holder inherit its token
(``AUTOGUIDE_CLAIMS`` in the environment) and may write its folder (a SIMS stage's training
child, Lightning's DDP ranks); DDP ranks > 0 never claim. A second claim of a folder this
process already holds returns the same claim.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoguide.runtime import slurm_job_key

log = logging.getLogger(__name__)

FORMAT = "autoguide-claim/1"
TOKENS_ENV = "AUTOGUIDE_CLAIMS"
HEARTBEAT_S = 15.0
LEASE_S = 300.0
TAKEOVER_STALE_S = 30.0
RUNNING_JOB_STATES = ("RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "PENDING", "REQUEUED", "RESIZING", "STOPPED")


class FolderBusy(RuntimeError):
    """Another process holds the claim on a folder; the message names the folder and the holder."""


@dataclass(frozen=True)
class Holder:
    """What a lease file says about its holder."""

    host: str
    pid: int
    token: str
    job: str | None
    restart: int
    since: float
    heartbeat: float
    command: str

    def describe(self, now: float) -> str:
        job = f", SLURM job {self.job}" + (f" restart {self.restart}" if self.restart else "") if self.job else ""
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"{self.host} pid {self.pid}{job}, since {started} (heartbeat {now - self.heartbeat:.0f} s ago)"


def _my_record(token: str, now: float) -> dict[str, Any]:
    return {
        "format": FORMAT, "host": socket.gethostname(), "pid": os.getpid(), "token": token,
        "job": slurm_job_key(), "restart": int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0),
        "since": now, "heartbeat": now, "command": " ".join(sys.argv)[:500],
    }


def holder_record(now: float | None = None) -> dict[str, Any]:
    """This process as a holder record (host, pid, SLURM job and restart, times), no token."""
    return _my_record("", time.time() if now is None else now)


def holder_from(data: Any) -> Holder | None:
    """The holder a record (``holder_record``, a lease file) describes; None if it is malformed."""
    try:
        return Holder(str(data["host"]), int(data["pid"]), str(data["token"]), data.get("job"), int(data.get("restart", 0)),
                      float(data["since"]), float(data["heartbeat"]), str(data.get("command", "")))
    except (ValueError, KeyError, TypeError):
        return None


def read_holder(path: Path) -> Holder | None:
    """The holder recorded in lease file ``path``; None if there is none or it is unreadable."""
    try:
        return holder_from(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _slurm_job_running(job: str) -> bool | None:
    """Whether SLURM still runs ``job`` (None: cannot tell, no ``scontrol`` or no answer)."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return None
    try:
        result = subprocess.run([scontrol, "show", "job", "-o", job], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return False if "Invalid job id" in result.stderr else None
    states = [field.partition("=")[2] for field in result.stdout.split() if field.startswith("JobState=")]
    return any(state in RUNNING_JOB_STATES for state in states) if states else None


def stale_reason(holder: Holder, now: float, lease_s: float) -> str | None:
    """Why the holder is provably gone or its lease expired; None while it may still write."""
    me = _my_record("", now)
    if holder.host == me["host"] and not _pid_alive(holder.pid):
        return f"process {holder.pid} on {holder.host} is gone"
    if holder.job and holder.job == me["job"] and holder.restart < me["restart"]:
        return f"it is an earlier run of this SLURM job {holder.job} (restart {holder.restart} < {me['restart']})"
    if holder.job and holder.job != me["job"] and _slurm_job_running(holder.job) is False:
        return f"its SLURM job {holder.job} no longer runs"
    if now - holder.heartbeat > lease_s:
        return f"its heartbeat is {now - holder.heartbeat:.0f} s old (lease {lease_s:.0f} s)"
    return None


def _link_new(path: Path, record: dict[str, Any]) -> bool:
    """Create ``path`` holding ``record`` atomically and complete; False if it exists."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    temp.write_text(json.dumps(record, indent=1) + "\n")
    try:
        os.link(temp, path)
        return True
    except FileExistsError:
        return False
    finally:
        temp.unlink(missing_ok=True)


def inherited_tokens() -> set[str]:
    return {t for t in os.environ.get(TOKENS_ENV, "").split(":") if t}


class Claim:
    """A held claim on ``folder``; ``release()`` (or leaving the ``with`` block, or process
    exit) gives it back. ``inherited``: the claim of an ancestor process, not ours to release."""

    def __init__(self, folder: Path, path: Path, token: str, inherited: bool, heartbeat_s: float) -> None:
        self.folder, self.path, self.token, self.inherited = folder, path, token, inherited
        self.lost = False
        self.users = 1  # claim_folder calls of this process not yet released
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not inherited:
            self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), name=f"claim {folder}", daemon=True)
            self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            holder = read_holder(self.path)
            if holder is None or holder.token != self.token:
                if not self.lost:
                    log.error("the claim on %s was taken over by %s; stop this process", self.folder,
                              holder.describe(time.time()) if holder else "nobody (the lease file is gone)")
                self.lost = True
                continue
            record = json.loads(self.path.read_text())
            record["heartbeat"] = time.time()
            temp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
            temp.write_text(json.dumps(record, indent=1) + "\n")
            os.replace(temp, self.path)

    def release(self) -> None:
        """Give back one ``claim_folder`` of this process; the last one stops the heartbeat and
        removes the lease if it is still ours."""
        self.users -= 1
        if self.users > 0:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        _HELD.pop(self.path, None)
        if not self.inherited:
            holder = read_holder(self.path)
            if holder is not None and holder.token == self.token:
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_HELD: dict[Path, Claim] = {}


@atexit.register
def _release_all() -> None:
    for claim in list(_HELD.values()):
        claim.users = 1
        claim.release()


def lease_path(folder: Path, role: str | None = None) -> Path:
    """The lease file of ``folder`` for ``role`` (None: the whole folder)."""
    suffix = "" if role is None else "-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in role)
    return folder / f".autoguide-claim{suffix}.json"


def _take_over(path: Path, stale: Holder, record: dict[str, Any]) -> bool:
    """Replace the stale lease ``stale`` by ``record``, serialised by ``<lease>.takeover``."""
    guard = path.with_name(path.name + ".takeover")
    if guard.exists() and time.time() - guard.stat().st_mtime > TAKEOVER_STALE_S:
        guard.unlink(missing_ok=True)  # a contender died inside its takeover
    if not _link_new(guard, {"token": record["token"]}):
        return False
    try:
        current = read_holder(path)
        if current is not None and current.token != stale.token:
            return False  # someone else took it meanwhile
        aside = path.with_name(f".{path.name}.stale-{uuid.uuid4().hex}")
        if path.exists():
            os.replace(path, aside)
        taken = _link_new(path, record)
        aside.unlink(missing_ok=True)
        return taken
    finally:
        guard.unlink(missing_ok=True)


def claim_folder(
    folder: str | os.PathLike, role: str | None = None, wait_s: float = 0.0,
    heartbeat_s: float = HEARTBEAT_S, lease_s: float = LEASE_S,
) -> Claim:
    """Take the exclusive claim on ``folder`` (created if missing) for ``role``, or raise
    ``FolderBusy`` naming the holder (after waiting up to ``wait_s`` seconds for it to finish)."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    path = lease_path(folder, role)
    if path in _HELD:
        _HELD[path].users += 1
        return _HELD[path]
    deadline = time.monotonic() + wait_s
    while True:
        now = time.time()
        token = uuid.uuid4().hex
        record = _my_record(token, now)
        if _link_new(path, record):
            return _hold(Claim(folder, path, token, False, heartbeat_s), token)
        holder = read_holder(path)
        if holder is not None and holder.token in inherited_tokens():
            return _hold(Claim(folder, path, holder.token, True, heartbeat_s), None)
        reason = "its lease file is unreadable" if holder is None and path.exists() and now - path.stat().st_mtime > lease_s else None
        reason = reason or (stale_reason(holder, now, lease_s) if holder is not None else None)
        if reason is not None and _take_over(path, holder or Holder("?", -1, "", None, 0, now, now, ""), record):
            log.warning("took over the claim on %s: %s", folder, reason)
            return _hold(Claim(folder, path, token, False, heartbeat_s), token)
        if time.monotonic() >= deadline:
            who = holder.describe(now) if holder else "a process whose lease is being written"
            raise FolderBusy(
                f"{folder} is being written by {who}; wait for it to finish or stop it, or write elsewhere "
                f"(another run_dir / out_dir); if that process is gone for good, delete {path}"
            )
        time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))


def _hold(claim: Claim, token: str | None) -> Claim:
    _HELD[claim.path] = claim
    if token is not None:
        os.environ[TOKENS_ENV] = ":".join(sorted(inherited_tokens() | {token}))
    return claim
