"""What the benchmarks share: the training step and eval forward being timed, interleaved
timing (A B A B ..., medians), the top operators of one call (``torch.profiler``), and worker
processes that let two code versions be timed side by side in one run (``--baseline-src``: an older checkout's ``src``).

The training step is the one ``autoguide.train.module.DiffusionModule`` takes, outside
Lightning: ``edm2_loss`` (EDM2's P_mean/P_std of the preset's data), backward, non-finite
gradient entries zeroed, Adam (betas 0.9/0.99, eps 1e-8) and the update of two post-hoc EMAs
(std 0.05 and 0.10). Code that predates a feature (flat gradients, fused Adam) runs the step as
that code did.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
EMA_STDS = (0.05, 0.10)
NETWORK = {
    "arch": "unet",
    "img_resolution": 32,
    "img_channels": 3,
    "label_dim": 10,
    "model_channels": 64,
    "channel_mult": [1, 2, 3, 4],
    "num_blocks": 3,
    "attn_resolutions": [16, 8],
}
"""The network the training-step and reconstruction benchmarks time: a 32x32 RGB class-conditional
UNet, 64 channels at the top level."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def inputs(net: torch.nn.Module, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random images in [-1, 1] and one-hot labels (cycling the classes) for ``net``."""
    generator = torch.Generator().manual_seed(0)
    images = (
        torch.rand(batch, net.img_channels, net.img_resolution, net.img_resolution, generator=generator) * 2 - 1
    ).to(device)
    labels = (
        torch.nn.functional.one_hot(torch.arange(batch) % net.label_dim, net.label_dim).float().to(device)
        if net.label_dim
        else None
    )
    return images, labels


def training_step(
    net: torch.nn.Module, batch: int, device: torch.device, precision: str = "fp32"
) -> Callable[[], None]:
    """One EDM2 training step of ``net`` (already on ``device``, compiled or not) as a closure."""
    from autoguide.diffusion import edm2_loss
    from autoguide.ema import PowerEMA

    images, labels = inputs(net, batch, device)
    net.train()
    ema = PowerEMA(net, EMA_STDS)
    try:
        from autoguide.train.gradients import FlatGradients

        gradients = FlatGradients(net.parameters())
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.99), eps=1e-8, fused=True)
    except ImportError:  # older code: per-parameter clean-up, torch's default Adam
        gradients = None
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.99), eps=1e-8)
    state = {"nimg": 0}

    def step() -> None:
        with autocast(device, precision):
            loss = edm2_loss(net, images, labels, -0.4, 1.0)
        if gradients is not None:
            gradients.zero_()
        else:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if gradients is not None:
            gradients.clean_()
        else:
            for p in net.parameters():
                torch.nan_to_num(p.grad, nan=0.0, posinf=0.0, neginf=0.0, out=p.grad)
        optimizer.step()
        state["nimg"] += batch
        ema.update(net, state["nimg"])

    return step


def eval_forward(net: torch.nn.Module, batch: int, device: torch.device, precision: str = "fp32") -> Callable[[], None]:
    """One no-grad denoiser evaluation at sigma 1 (what a sampler step costs) as a closure."""
    images, labels = inputs(net, batch, device)
    sigma = torch.ones(batch, device=device)
    net.eval()

    @torch.no_grad()
    def forward() -> None:
        with autocast(device, precision):
            net(images, sigma, labels)

    return forward


def timed(fn: Callable[[], None], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def top_ops(fn: Callable[[], None], count: int = 10) -> list[dict[str, Any]]:
    """The ``count`` operators with the most self CPU time in one call of ``fn``
    (``torch.profiler``): name, milliseconds and share of all self time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as recorded:
        fn()
    events = recorded.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:count]
    return [{"op": e.key, "ms": e.self_cpu_time_total / 1000, "share": e.self_cpu_time_total / total} for e in ranked]


def interleave(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call every timer once per round, in turn (A B C A B C ...): slow drifts of the machine
    hit every variant alike. Returns the seconds of every call."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(fn())
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


# ------------------------------------------------------------------------- worker processes
class Worker:
    """A benchmark variant in its own process (own imports, threads, compiled code): send
    ``"<job>"`` lines, receive the seconds it took. ``src`` is prepended to its import path."""

    def __init__(self, spec: dict[str, Any], src: str | None = None) -> None:
        # idle workers must not spin their OpenMP threads while another one is timed
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
        if src:
            env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
        self.spec = spec
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "harness.py"), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.ready = json.loads(self._line())

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker {self.spec} died (exit {self.proc.wait()})")
        return line

    def _ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._line()

    def __call__(self, job: str) -> float:
        return float(self._ask(job))

    def profile(self, job: str) -> list[dict[str, Any]]:
        """``top_ops`` of one call of ``job`` in this worker."""
        return json.loads(self._ask(f"profile {job}"))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _serve(spec: dict[str, Any]) -> None:
    """Worker main loop: build the variant, warm it up, then time one job per input line."""
    import autoguide
    from autoguide.nets import build_network

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec.get("device", "cpu"))
    jobs: dict[str, Callable[[], None]] = {}
    for job, batch in spec["jobs"].items():
        torch.manual_seed(0)
        net = build_network(spec["network"]).to(device)
        if spec.get("memory_format"):  # this code's default otherwise
            net.unet.set_memory_format(getattr(torch, spec["memory_format"]))
        if spec.get("compile"):
            net.compile()
        make = training_step if job == "train" else eval_forward
        jobs[job] = make(net, batch, device, spec.get("precision", "fp32"))
        for _ in range(spec.get("warmup", 2)):
            jobs[job]()
    print(
        json.dumps({"autoguide": str(Path(autoguide.__file__).parent), "threads": torch.get_num_threads()}), flush=True
    )
    for line in sys.stdin:
        command, _, job = line.strip().rpartition(" ")
        print(json.dumps(top_ops(jobs[job])) if command == "profile" else timed(jobs[job], device), flush=True)


@contextlib.contextmanager
def workers(specs: dict[str, tuple[dict[str, Any], str | None]]) -> Iterator[dict[str, Worker]]:
    """Start one ``Worker`` per named spec; close them all afterwards."""
    started: dict[str, Worker] = {}
    try:
        for name, (spec, src) in specs.items():
            started[name] = Worker(spec, src)
        yield started
    finally:
        for worker in started.values():
            worker.close()


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
