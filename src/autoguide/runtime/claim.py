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

**When a lease may be taken over** -- only when its holder is provably gone, never from a live
holder that merely paused (Ctrl-Z, a debugger, a frozen node or VM, ``scontrol suspend``):
- the holder ran on this host: only when its process is gone (the pid is dead, or now belongs to
  a process that started later, or the host rebooted since: the lease records the boot id and
  the process's start time). Its heartbeat's age does not matter;
- it is an earlier incarnation of this very SLURM job (same job, lower ``SLURM_RESTART_COUNT``:
  a requeue);
- its SLURM job is no longer running (``scontrol show job``; a suspended job still runs);
- only where none of this can be told (another host and no SLURM job, or no answer from
  ``scontrol``): its heartbeat is older than ``lease_s`` (default 24 h, far beyond any pause
  named above; node clocks must agree to well within it).
A pid reused on the holder's host without ``/proc`` keeps the lease busy (the safe side). A
takeover is serialised by a second short-lived link file, so two contenders never both take one
lease. ``AUTOGUIDE_CLAIM_LEASE_S`` and ``AUTOGUIDE_CLAIM_HEARTBEAT_S`` override the defaults
(tests shorten them).

**A holder that lost its claim stops at once** (exit status ``EXIT_CLAIM_LOST``, one line on
stderr) before its next write: its heartbeat thread checks the lease every ``heartbeat_s``
seconds, and every atomic write (``io.atomic_path``, i.e. every checkpoint, snapshot, index,
model and config file) checks it before it starts and again before its rename, in the holder
and in the children that inherited the claim.

**Who needs no claim of its own:** processes started by a holder inherit its token
(``AUTOGUIDE_CLAIMS`` in the environment) and may write its folder (a SIMS stage's training
child, Lightning's DDP ranks); DDP ranks > 0 never claim. A second claim of a folder this
process already holds returns the same claim.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
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

from autoguide.io.atomic import add_write_guard, disk_full_error, is_disk_full
from autoguide.runtime.process import slurm_job_key

log = logging.getLogger(__name__)

FORMAT = "autoguide-claim/1"
TOKENS_ENV = "AUTOGUIDE_CLAIMS"
HEARTBEAT_S = 15.0
LEASE_S = 24 * 3600.0
HEARTBEAT_ENV = "AUTOGUIDE_CLAIM_HEARTBEAT_S"
LEASE_ENV = "AUTOGUIDE_CLAIM_LEASE_S"
EXIT_CLAIM_LOST = 5
"""Exit status of a process that stopped because another process took over its claim."""
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
    process: str | None = None  # "<boot id>:<start time>" of the holder's process, where /proc tells

    def describe(self, now: float) -> str:
        job = f", SLURM job {self.job}" + (f" restart {self.restart}" if self.restart else "") if self.job else ""
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"{self.host} pid {self.pid}{job}, since {started} (heartbeat {now - self.heartbeat:.0f} s ago)"


def _seconds_from_env(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise ValueError(f"{name}={text!r}: expected a positive number of seconds")
    return value


def process_identity(pid: int) -> str | None:
    """``"<boot id>:<start time in clock ticks>"`` of process ``pid`` (Linux ``/proc``), which a
    reused pid or a reboot changes; ``None`` where it cannot be read (no such process, no /proc)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3, starttime field 22
    return f"{boot}:{fields[19]}"


def _my_record(token: str, now: float) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "token": token,
        "process": process_identity(os.getpid()),
        "job": slurm_job_key(),
        "restart": int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0),
        "since": now,
        "heartbeat": now,
        "command": " ".join(sys.argv)[:500],
    }


def holder_record(now: float | None = None) -> dict[str, Any]:
    """This process as a holder record (host, pid, SLURM job and restart, times), no token."""
    return _my_record("", time.time() if now is None else now)


def holder_from(data: Any) -> Holder | None:
    """The holder a record (``holder_record``, a lease file) describes; None if it is malformed."""
    try:
        return Holder(
            str(data["host"]),
            int(data["pid"]),
            str(data["token"]),
            data.get("job"),
            int(data.get("restart", 0)),
            float(data["since"]),
            float(data["heartbeat"]),
            str(data.get("command", "")),
            data.get("process"),
        )
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


def holder_alive_here(holder: Holder) -> bool:
    """Whether the holder, a process of this host, still runs: its pid is alive and, where the
    lease and ``/proc`` tell, it is the same process (not a later one with a reused pid, not from
    before a reboot). A stopped process (SIGSTOP) is alive."""
    identity = process_identity(holder.pid) if holder.process is not None else None
    return identity == holder.process if identity is not None else _pid_alive(holder.pid)


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
    if holder.host == me["host"]:
        return None if holder_alive_here(holder) else f"process {holder.pid} on {holder.host} is gone"
    if holder.job and holder.job == me["job"] and holder.restart < me["restart"]:
        return f"it is an earlier run of this SLURM job {holder.job} (restart {holder.restart} < {me['restart']})"
    if holder.job and holder.job != me["job"]:
        running = _slurm_job_running(holder.job)
        if running is not None:
            return None if running else f"its SLURM job {holder.job} no longer runs"
    if now - holder.heartbeat > lease_s:
        return f"its heartbeat is {now - holder.heartbeat:.0f} s old (lease {lease_s:.0f} s)"
    return None


def _write_temp_beside(path: Path, record: dict[str, Any]) -> Path:
    """A complete temporary file beside ``path`` holding ``record``; none is left if writing
    fails (``DiskFullError`` naming ``path`` on a full disk)."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        temp.write_text(json.dumps(record, indent=1) + "\n")
    except BaseException as error:
        temp.unlink(missing_ok=True)
        if isinstance(error, OSError) and is_disk_full(error):
            raise disk_full_error(path) from error
        raise
    return temp


def _link_new(path: Path, record: dict[str, Any]) -> bool:
    """Create ``path`` holding ``record`` atomically and complete; False if it exists."""
    temp = _write_temp_beside(path, record)
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
        self.users = 1  # claim_folder calls of this process not yet released
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not inherited:
            self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), name=f"claim {folder}", daemon=True)
            self._thread.start()

    def _beat(self, every: float) -> None:
        failed = False
        while not self._stop.wait(every):
            self.check()
            try:
                record = json.loads(self.path.read_text())
                record["heartbeat"] = time.time()
                os.replace(_write_temp_beside(self.path, record), self.path)
                failed = False
            except (OSError, ValueError) as error:  # a full disk, a file server hiccup: beat again later
                if not failed:
                    log.warning("cannot refresh the claim on %s: %s", self.folder, error)
                failed = True

    def check(self) -> None:
        """Exit at once (status ``EXIT_CLAIM_LOST``, one line on stderr) if the lease file no
        longer holds this claim's token: another process took the folder over, or the lease was
        deleted. A lease that cannot be read just now (a file server hiccup) is not a loss."""
        try:
            data = json.loads(self.path.read_text())
            token = data.get("token") if isinstance(data, dict) else None
        except FileNotFoundError:
            token = None
        except (OSError, ValueError):
            return
        if token == self.token:
            return
        holder = read_holder(self.path)
        who = holder.describe(time.time()) if holder else "nobody (the lease file was removed)"
        print(
            f"{Path(sys.argv[0]).name}: error: the claim on {self.folder} was taken over by {who}; "
            f"stopping before writing anything more (exit {EXIT_CLAIM_LOST})",
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_CLAIM_LOST)  # no cleanup handler may write into the folder now

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


def _check_before_write(target: Path) -> None:
    """Write guard (``io.atomic_path``): stop this process if a claim it holds on a folder
    containing ``target`` was taken over."""
    if not _HELD:
        return
    target = target.resolve()
    for claim in list(_HELD.values()):
        if target.is_relative_to(claim.folder):
            claim.check()


add_write_guard(_check_before_write)


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
    folder: str | os.PathLike,
    role: str | None = None,
    wait_s: float = 0.0,
    heartbeat_s: float | None = None,
    lease_s: float | None = None,
) -> Claim:
    """Take the exclusive claim on ``folder`` (created if missing) for ``role``, or raise
    ``FolderBusy`` naming the holder (after waiting up to ``wait_s`` seconds for it to finish).
    ``heartbeat_s``, ``lease_s``: default ``AUTOGUIDE_CLAIM_HEARTBEAT_S`` /
    ``AUTOGUIDE_CLAIM_LEASE_S`` from the environment, else ``HEARTBEAT_S`` / ``LEASE_S``.
    ``DiskFullError`` naming the lease file when there is no space to write it."""
    heartbeat_s = _seconds_from_env(HEARTBEAT_ENV, HEARTBEAT_S) if heartbeat_s is None else heartbeat_s
    lease_s = _seconds_from_env(LEASE_ENV, LEASE_S) if lease_s is None else lease_s
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
        reason = (
            "its lease file is unreadable"
            if holder is None and path.exists() and now - path.stat().st_mtime > lease_s
            else None
        )
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
