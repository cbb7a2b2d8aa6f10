"""Distributed training on CPU: two DDP processes (gloo) train the toy model together.

Checks, with a probe callback and an audit hook loaded into both processes (from files this
test writes; nothing in the package knows about them):
- both ranks end with bit-identical weights, equal to the run's ``final.safetensors``, and
  different from the initial weights (the run trained);
- the global batch is split as configured: every rank takes the same number of micro-batches
  (``accumulate`` per optimizer step) of ``micro_batch`` images, different images on the
  two ranks, and the image count ends at ``steps * batch_size``;
- only rank 0 writes into the run folder (checkpoints, snapshots, samples, logs, config): the
  other rank opens no file there for writing and renames nothing there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
BATCH = 32  # global images per optimizer step
MICRO_BATCH = 8  # micro-batch per device -> 32 / (2 x 8) = 2 accumulation rounds
STEPS = 4
INTERVAL_KIMG = 2 * BATCH / 1000  # checkpoints, snapshots and samples every 2 steps

# Runs at interpreter start in every process (it is `sitecustomize` on PYTHONPATH): records
# each file under the run folder opened for writing and each rename into it.
AUDIT_HOOK = """
import atexit, json, os, sys

_run = os.path.realpath(os.environ["AG_PROBE_RUN_DIR"])
_out = os.environ["AG_PROBE_OUT"]
_opened, _renamed = [], []


def _inside(path):
    if isinstance(path, int) or path is None:
        return None
    path = os.path.realpath(os.fsdecode(os.fspath(path)))
    return path if path == _run or path.startswith(_run + os.sep) else None


def _hook(event, args):
    if event == "open":
        path, flags = _inside(args[0]), args[2]
        if path and flags is not None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND):
            _opened.append(path)
    elif event == "os.rename":
        path = _inside(args[1])
        if path:
            _renamed.append(path)


def _dump():
    with open(os.path.join(_out, f"writes-{os.getpid()}.json"), "w") as f:
        json.dump({"opened": _opened, "renamed": _renamed}, f)


sys.addaudithook(_hook)
atexit.register(_dump)
"""

# A callback (module `ag_probe` on PYTHONPATH) that records, per rank: its pid, the images of
# every micro-batch it trained on, and its weights at the start and at the end of training.
PROBE = """
import json, os
import lightning.pytorch as pl
import torch
from safetensors.torch import save_file


class RankProbe(pl.Callback):
    def __init__(self, out_dir):
        self.out = out_dir
        self.batches = []

    def _save(self, pl_module, name, rank):
        state = {k: v.detach().cpu().contiguous() for k, v in pl_module.net.state_dict().items()}
        save_file(state, os.path.join(self.out, f"{name}-rank{rank}.safetensors"))

    def on_train_start(self, trainer, pl_module):
        self._save(pl_module, "start", trainer.global_rank)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch[0].detach().cpu().clone())

    def on_train_end(self, trainer, pl_module):
        rank = trainer.global_rank
        self._save(pl_module, "end", rank)
        torch.save(torch.stack(self.batches), os.path.join(self.out, f"batches-rank{rank}.pt"))
        info = {"pid": os.getpid(), "world_size": trainer.world_size, "nimg": int(pl_module.nimg)}
        with open(os.path.join(self.out, f"rank{rank}.json"), "w") as f:
            json.dump(info, f)
"""


def probe_env(tmp_path: Path, run_dir: Path) -> tuple[dict[str, str], Path]:
    """Environment that loads the audit hook and the probe into every process of the run."""
    code = tmp_path / "probe_code"
    out = tmp_path / "probe_out"
    code.mkdir()
    out.mkdir()
    (code / "sitecustomize.py").write_text(AUDIT_HOOK)
    (code / "ag_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "LOCAL_RANK", "WORLD_SIZE"))}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")])),
        AG_PROBE_RUN_DIR=str(run_dir),
        AG_PROBE_OUT=str(out),
        OMP_NUM_THREADS="1",
    )
    return env, out


def train_overrides(run_dir: Path, probe_out: Path) -> list[str]:
    """A tiny toy2d run: STEPS optimizer steps of BATCH images, every callback firing."""
    return [
        "experiment=toy2d-main",
        "logger=csv",
        f"run_dir={run_dir}",
        "net.width=16",
        "net.depth=2",
        f"train.batch_size={BATCH}",
        f"train.micro_batch={MICRO_BATCH}",
        f"train.duration_mi={STEPS * BATCH / 2**20}",
        "train.lr_rampup_mi=0.0001",
        f"train.checkpoint_kimg={INTERVAL_KIMG}",
        f"train.snapshot_kimg={INTERVAL_KIMG}",
        f"train.sample_kimg={INTERVAL_KIMG}",
        f"train.log_kimg={INTERVAL_KIMG}",
        "callbacks.sample_grid.num_images=8",
        "callbacks.sample_grid.num_steps=2",
        "callbacks.sample_grid.batch_size=8",
        "callbacks.progress_bar=null",
        "+callbacks.probe._target_=ag_probe.RankProbe",
        f"+callbacks.probe.out_dir={probe_out}",
    ]


def check_ranks(run_dir: Path, out: Path, world_size: int, micro_batch: int, accumulate: int) -> None:
    """The checks of the module docstring on a finished run with the probe's records in ``out``."""
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world_size)]
    assert {r["world_size"] for r in ranks} == {world_size}
    assert {r["nimg"] for r in ranks} == {STEPS * BATCH}
    assert len({r["pid"] for r in ranks}) == world_size, "the ranks must be separate processes"

    final = load_file(str(run_dir / "final.safetensors"))
    start = load_file(str(out / "start-rank0.safetensors"))
    for r in range(world_size):
        end = load_file(str(out / f"end-rank{r}.safetensors"))
        assert end.keys() == final.keys()
        for key in final:
            assert torch.equal(end[key], final[key]), f"rank {r}: {key} differs from final.safetensors"
    assert any(not torch.equal(start[k], final[k]) for k in final), "training did not change the weights"

    batches = [torch.load(out / f"batches-rank{r}.pt", weights_only=True) for r in range(world_size)]
    for b in batches:
        assert b.shape[:2] == (STEPS * accumulate, micro_batch)
    for r in range(1, world_size):
        assert not torch.equal(batches[0][0], batches[r][0]), f"ranks 0 and {r} trained on the same images"

    writes = {}
    for path in out.glob("writes-*.json"):
        pid = int(path.stem.split("-")[1])
        record = json.loads(path.read_text())
        writes[pid] = set(record["opened"]) | set(record["renamed"])
    pids = {r: ranks[r]["pid"] for r in range(world_size)}
    assert set(pids.values()) <= set(writes), "the audit hook did not report from every rank"
    for r in range(1, world_size):
        assert not writes[pids[r]], f"rank {r} wrote into the run folder: {sorted(writes[pids[r]])[:10]}"
    written = {Path(p).relative_to(run_dir.resolve()).as_posix() for p in writes[pids[0]]}
    for expected in ("final.safetensors", "config.yaml", "phema/index.json"):
        assert expected in written, f"rank 0 did not write {expected}"
    assert any(name.startswith("checkpoints/nimg-") for name in written)
    assert any(name.startswith("samples/") for name in written)


def test_two_process_ddp_identical_weights_and_rank0_writes(tmp_path):
    run_dir = tmp_path / "run"
    env, out = probe_env(tmp_path, run_dir)
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *train_overrides(run_dir, out), "trainer=ddp_cpu"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    check_ranks(run_dir, out, world_size=2, micro_batch=MICRO_BATCH, accumulate=BATCH // (2 * MICRO_BATCH))
