"""One writer per folder (``autoguide.runtime.claim``): a second writer is refused with the holder named,
stale claims (dead pid, earlier run of the same SLURM job, expired heartbeat) are taken over,
children inherit their parent's claim, and the apps claim before they write."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tiny import toy_run

import autoguide.runtime.claim as claim_module
from autoguide.ema.snapshots import read_index
from autoguide.io import read_card
from autoguide.runtime.claim import (
    FolderBusy,
    Holder,
    claim_folder,
    lease_path,
    process_identity,
    read_holder,
    stale_reason,
)
from autoguide.sims.records import run_stage
from autoguide.train.checkpoint import list_checkpoints

REPO = Path(__file__).resolve().parents[1]


def claim_in_child(
    folder: Path,
    env: dict[str, str] | None = None,
    role: str | None = None,
    wait_s: float = 0.0,
    lease_s: float | None = None,
    hold: bool = False,
) -> subprocess.CompletedProcess | subprocess.Popen:
    """Try to claim ``folder`` from another process; prints CLAIMED or the FolderBusy message.
    ``hold``: the child keeps the claim until a line on its stdin; returns it once CLAIMED."""
    code = textwrap.dedent(f"""
        import sys
        from autoguide.runtime.claim import FolderBusy, claim_folder
        try:
            claim_folder({str(folder)!r}, {role!r}, wait_s={wait_s}, lease_s={lease_s})
            print("CLAIMED", flush=True)
        except FolderBusy as error:
            print("BUSY", error)
        if {hold}:
            sys.stdin.readline()
    """)
    env = {**os.environ, **(env or {})}
    if not hold:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout.readline().strip() == "CLAIMED"
    return child


def write_lease(folder: Path, **fields) -> Path:
    now = time.time()
    record = {
        "format": "autoguide-claim/1",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "token": "t" * 32,
        "job": None,
        "restart": 0,
        "since": now,
        "heartbeat": now,
        "command": "test",
        **fields,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = lease_path(folder)
    path.write_text(json.dumps(record))
    return path


def clean_env() -> dict[str, str]:
    return {"AUTOGUIDE_CLAIMS": "", "SLURM_JOB_ID": "", "SLURM_RESTART_COUNT": ""}


def test_second_writer_is_refused_naming_the_holder_until_released(tmp_path):
    claim = claim_folder(tmp_path / "run")
    try:
        holder = read_holder(lease_path(tmp_path / "run"))
        assert holder.pid == os.getpid() and holder.host == socket.gethostname()
        other = claim_in_child(tmp_path / "run", clean_env())
        assert (
            other.stdout.startswith("BUSY")
            and f"pid {os.getpid()}" in other.stdout
            and str(tmp_path / "run") in other.stdout
        )
        assert claim_folder(tmp_path / "run") is claim  # the same process: the same claim
        claim.release()
        assert lease_path(tmp_path / "run").exists(), "still held by the first claim_folder"
    finally:
        claim.release()
    assert not lease_path(tmp_path / "run").exists()
    assert claim_in_child(tmp_path / "run", clean_env()).stdout.startswith("CLAIMED")


def test_children_inherit_the_claim_and_roles_are_separate(tmp_path):
    with claim_folder(tmp_path / "stage"):
        assert claim_in_child(tmp_path / "stage").stdout.startswith("CLAIMED")  # our environment: a child
        assert claim_in_child(tmp_path / "stage", clean_env()).stdout.startswith("BUSY")
        assert claim_in_child(tmp_path / "stage", clean_env(), role="task1-of-2").stdout.startswith("CLAIMED")


def test_stale_claims_are_taken_over(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout
    write_lease(tmp_path / "a", pid=int(dead))  # this host, a process that ended
    assert claim_in_child(tmp_path / "a", clean_env()).stdout.startswith("CLAIMED")

    # an earlier run of the same SLURM job (a requeue) on another host
    write_lease(tmp_path / "b", host="elsewhere", job="4242", restart=0)
    assert claim_in_child(
        tmp_path / "b", {**clean_env(), "SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "1"}
    ).stdout.startswith("CLAIMED")
    write_lease(tmp_path / "c", host="elsewhere", job="4242", restart=1)
    assert claim_in_child(
        tmp_path / "c", {**clean_env(), "SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "1"}
    ).stdout.startswith("BUSY")

    # another host, no SLURM job: busy through any pause (an hour), taken over once the 24 h lease expired
    write_lease(tmp_path / "d", host="elsewhere", heartbeat=time.time() - 3600)
    assert claim_in_child(tmp_path / "d", clean_env()).stdout.startswith("BUSY")
    write_lease(tmp_path / "d", host="elsewhere", heartbeat=time.time() - 2 * 86400)
    assert claim_in_child(tmp_path / "d", clean_env()).stdout.startswith("CLAIMED")
    assert not list(tmp_path.glob("d/.*stale*")), "the replaced lease is removed"


def test_heartbeat_keeps_the_lease_fresh_and_waiting_gets_it(tmp_path):
    claim = claim_folder(tmp_path / "r", heartbeat_s=0.1)
    first = read_holder(claim.path).heartbeat
    time.sleep(0.5)
    assert read_holder(claim.path).heartbeat > first
    claim.release()
    write_lease(tmp_path / "w", host="elsewhere")
    with pytest.raises(FolderBusy, match="elsewhere"):
        claim_folder(tmp_path / "w", wait_s=0.3)
    claim_folder(tmp_path / "w", wait_s=0.3, lease_s=0.1).release()  # expired during the wait


def test_a_sims_stage_in_use_is_refused(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        from autoguide.runtime.claim import claim_folder
        with claim_folder({str(tmp_path / "synthesize")!r}):
            print("HELD", flush=True)
            sys.stdin.readline()
    """)
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **clean_env()},
    )
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with pytest.raises(FolderBusy, match=f"pid {holder.pid}"):
            run_stage(tmp_path / "synthesize", "synthesize", {"a": 1}, lambda: pytest.fail("ran the stage"))
    finally:
        holder.communicate("\n", timeout=60)


def train_command(run_dir: Path, steps: int = 160) -> list[str]:
    """``train.py`` on a toy run: a snapshot every 10 steps, a checkpoint every 20 (3 kept)."""
    return [
        sys.executable,
        str(REPO / "train.py"),
        *toy_run(run_dir, steps, 10, batch=64, width=16, depth=2, checkpoint_every_steps=20),
        "train.target=data",  # the sample as the target: the exact posterior mean costs a pass over the set per step
        "callbacks.checkpoint.keep=3",
        "hydra.job_logging.root.level=WARNING",
    ]


@pytest.mark.timeout(600)
def test_second_training_on_a_run_folder_is_refused_while_the_first_finishes(tmp_path):
    """Two ``python train.py`` on one run folder: the second exits non-zero naming the first
    (host, pid) without waiting for it; the first finishes normally. Meanwhile a reader always
    sees an index and a checkpoint list whose files are complete. The first is paused (SIGSTOP,
    as Ctrl-Z would) while the second starts, so that it cannot finish first on a busy machine:
    a paused holder keeps its claim."""
    run_dir = tmp_path / "run"
    args = train_command(run_dir)
    env = {**os.environ, **clean_env()}
    first = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "phema" / "index.json").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with paused(first):  # the timeout only ends a hang: one that waited for the claim would train, exit 0
            second = subprocess.run(
                [*args, "seed=7"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env
            )
        assert second.returncode != 0
        message = second.stderr.strip().splitlines()
        assert len(message) == 1 and f"pid {first.pid}" in message[0] and socket.gethostname() in message[0], (
            second.stderr
        )
        assert "seed=7" not in (run_dir / "logs" / "hydra" / "overrides.yaml").read_text(), (
            "the second wrote Hydra's files"
        )
        readings = 0
        while first.poll() is None:  # a reader: everything the index and checkpoint list name is complete
            for entry in read_index(run_dir / "phema").entries:
                assert read_card(entry.path)["nimg"] == entry.nimg
            for _, path in list_checkpoints(run_dir):
                with contextlib.suppress(FileNotFoundError):  # old checkpoints are pruned (keep=3) while we read
                    assert path.stat().st_size > 0
            readings += 1
            time.sleep(0.01)  # leave the CPU to the training being read
        assert readings > 0
    finally:
        _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert (run_dir / "final.safetensors").is_file() and not lease_path(run_dir).exists()


def holder(**fields) -> Holder:
    now = time.time()
    return Holder(
        **{
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": "t",
            "job": None,
            "restart": 0,
            "since": now,
            "heartbeat": now - 10 * 86400,
            "command": "test",
            "process": process_identity(os.getpid()),
            **fields,
        }
    )


def test_a_live_holder_is_never_expired_and_a_gone_one_is_recognised(monkeypatch):
    """Same host: only the holder's process decides, never the heartbeat's age (here 10 days);
    another host: the SLURM job decides where SLURM answers, else the lease."""
    now = time.time()
    assert stale_reason(holder(), now, lease_s=1) is None
    assert stale_reason(holder(process=None), now, lease_s=1) is None  # a lease without /proc data: the pid
    assert "is gone" in stale_reason(holder(process="another-boot:1"), now, lease_s=1)  # pid reused or rebooted
    monkeypatch.setattr(claim_module, "_slurm_job_running", lambda job: True)  # e.g. SUSPENDED
    assert stale_reason(holder(host="elsewhere", job="77"), now, lease_s=1) is None
    monkeypatch.setattr(claim_module, "_slurm_job_running", lambda job: False)
    assert "no longer runs" in stale_reason(holder(host="elsewhere", job="77", heartbeat=now), now, lease_s=1)
    monkeypatch.setattr(claim_module, "_slurm_job_running", lambda job: None)  # no scontrol: the lease decides
    assert "heartbeat is" in stale_reason(holder(host="elsewhere", job="77"), now, lease_s=86400)
    assert stale_reason(holder(host="elsewhere", heartbeat=now - 3600), now, lease_s=claim_module.LEASE_S) is None


@contextlib.contextmanager
def paused(process: subprocess.Popen):
    """SIGSTOP ``process`` (a Ctrl-Z, a frozen node) for the ``with`` block, then SIGCONT."""
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGCONT)


SHORT_LEASE = {"AUTOGUIDE_CLAIM_LEASE_S": "1", "AUTOGUIDE_CLAIM_HEARTBEAT_S": "0.2"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_paused_run_keeps_its_claim_and_finishes_unmixed(tmp_path):
    """A training run stopped (SIGSTOP) for 3 leases: a second run with other settings is refused
    naming it, one waiting for the folder keeps waiting; after SIGCONT the first finishes and
    the folder holds its run only. (The lease is shortened to 1 s: the 320 s pause of the issue
    against the 300 s lease it had.)"""
    run_dir = tmp_path / "run"
    env = {**os.environ, **clean_env(), **SHORT_LEASE}
    args = train_command(run_dir, steps=120)
    first = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "phema" / "index.json").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with paused(first):
            time.sleep(3)
            assert time.time() - read_holder(lease_path(run_dir)).heartbeat > 2
            second = subprocess.run(
                [*args, "train.lr_ref=0.02"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env
            )
            message = second.stderr.strip().splitlines()
            assert second.returncode == 2 and len(message) == 1 and f"pid {first.pid}" in message[0], second.stderr
            waiting = claim_in_child(run_dir, {**clean_env(), **SHORT_LEASE}, wait_s=3)
            assert waiting.stdout.startswith("BUSY") and f"pid {first.pid}" in waiting.stdout
    finally:
        _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert "taken over" not in err
    assert "lr_ref: 0.02" not in (run_dir / "config.yaml").read_text()
    assert (run_dir / "final.safetensors").is_file() and not lease_path(run_dir).exists()


HOLDER = """
import sys, time
from pathlib import Path
from autoguide.runtime.claim import claim_folder
from autoguide.io import write_text_atomic
folder = Path(sys.argv[1])
claim_folder(folder, heartbeat_s=float(sys.argv[2]))
print("HELD", flush=True)
for i in range(int(sys.argv[3])):
    write_text_atomic(folder / f"file{i:05d}", "x")
    time.sleep(0.02)
"""


def test_a_paused_holder_keeps_its_claim_while_another_waits(tmp_path):
    """A writer stopped (SIGSTOP) for 3 leases while another waits for its folder: the other is
    refused naming it; after SIGCONT the writer finishes its writes and exits normally."""
    folder = tmp_path / "run"
    env = {**os.environ, **clean_env(), **SHORT_LEASE}
    first = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), "0.2", "150"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert first.stdout.readline().strip() == "HELD"
    with paused(first):
        time.sleep(1)
        waiting = claim_in_child(folder, {**clean_env(), **SHORT_LEASE}, wait_s=2)
        assert time.time() - read_holder(lease_path(folder)).heartbeat > 2, "the lease had expired meanwhile"
    assert waiting.stdout.startswith("BUSY") and f"pid {first.pid}" in waiting.stdout, waiting.stdout + waiting.stderr
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0 and err == ""
    assert len(list(folder.glob("file*"))) == 150 and not lease_path(folder).exists()


@pytest.mark.parametrize("heartbeat_s", [0.2, 3600.0], ids=["heartbeat", "write-guard"])
def test_a_holder_whose_claim_was_taken_exits_before_its_next_write(tmp_path, heartbeat_s):
    """The holder, paused, looks like a silent holder on another node whose lease expired; a new
    writer takes the folder over. On SIGCONT the old holder exits (status 5, one line) and
    writes nothing more: found by its heartbeat, or (heartbeat far away) by its next write."""
    folder = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), str(heartbeat_s), "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **clean_env()},
    )
    assert first.stdout.readline().strip() == "HELD"
    time.sleep(0.3)
    with paused(first):
        lease = lease_path(folder)
        record = json.loads(lease.read_text())
        lease.write_text(json.dumps({**record, "host": "elsewhere", "heartbeat": time.time() - 3600}))
        taken = claim_in_child(folder, clean_env(), lease_s=60, hold=True)
        written = sorted(p.name for p in folder.glob("file*"))
    try:
        _, err = first.communicate(timeout=60)
        assert first.returncode == claim_module.EXIT_CLAIM_LOST
        lines = err.strip().splitlines()
        assert len(lines) == 1 and f"the claim on {folder} was taken over by" in lines[0], err
        assert sorted(p.name for p in folder.glob("file*")) == written, "wrote after losing its claim"
        assert not list(folder.glob(".file*")), "left a temporary file"
        assert read_holder(lease_path(folder)).pid == taken.pid
    finally:
        taken.communicate("\n", timeout=60)


def test_a_child_writing_under_an_inherited_claim_stops_once_it_is_taken(tmp_path):
    """A child of a holder (a SIMS stage's training run) checks the lease before each write too."""
    folder = tmp_path / "stage"
    lease = write_lease(folder, token="a" * 32)
    env = {**os.environ, **clean_env(), "AUTOGUIDE_CLAIMS": "a" * 32}
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), "3600", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout.readline().strip() == "HELD"
    time.sleep(0.2)
    lease.write_text(lease.read_text().replace("a" * 32, "b" * 32))  # another writer took the folder
    _, err = child.communicate(timeout=60)
    assert child.returncode == claim_module.EXIT_CLAIM_LOST and len(err.strip().splitlines()) == 1, err
    assert lease.exists() and read_holder(lease).token == "b" * 32, "the child must not release a claim it lost"
