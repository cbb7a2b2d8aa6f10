"""What the results scripts (``<name>/run.py``) share: running one of the project's commands
with its log, and reading and writing the values of its configs and CSVs."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
#: One torch thread per process (the results are sized for a shared 2-core CPU), wandb offline.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


def call(command: list[str], log: Path) -> float:
    """Run ``command`` in the repository root, its output into ``log``; returns its wall seconds.
    A failure exits naming the command and the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("+", " ".join(command), flush=True)
    started = time.time()
    with log.open("w") as out:
        done = subprocess.run(command, cwd=REPO, env=ENV, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        raise SystemExit(f"command failed (exit {done.returncode}), see {log}: {' '.join(command)}")
    return round(time.time() - started, 1)


def git_revision() -> str:
    """The repository's HEAD commit, with ``+changes`` when tracked files differ from it."""
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.strip()
    return head + ("+changes" if dirty else "")


def listing(values: Sequence[Any]) -> str:
    """A Hydra list override value, ``[a,b,c]``."""
    return "[" + ",".join(str(v) for v in values) + "]"


def number(value: str) -> Any:
    """A CSV cell as a float where it is a number, None where empty, else the string."""
    if value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return value


def write_report(
    folder: Path,
    stem: str,
    name: str,
    result: dict[str, Any],
    datasets: Iterable[str],
    markdown: Callable[[dict[str, Any], str], str],
) -> None:
    """Write ``<stem>-<name>.json`` (``result`` with the git revision) into ``folder``, then
    ``<stem>.md`` by ``markdown`` from every dataset's JSON there, and print it."""
    from autoguide.io import write_text_atomic

    revision = git_revision()
    write_text_atomic(folder / f"{stem}-{name}.json", json.dumps({"revision": revision, **result}, indent=1) + "\n")
    measured = {
        n: json.loads((folder / f"{stem}-{n}.json").read_text())
        for n in datasets
        if (folder / f"{stem}-{n}.json").is_file()
    }
    write_text_atomic(folder / f"{stem}.md", markdown(measured, revision))
    print((folder / f"{stem}.md").read_text())
