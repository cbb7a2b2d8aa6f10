"""Training and generation throughput on one device, as ``benchmarks/device_check.sh`` runs it:
training images/s and peak memory of the EDM2 step (``harness.training_step``) per network x
batch x (eager, compiled), in bf16 autocast on a GPU; generation images/s of the guided
sampler, unguided and with autoguidance. Writes one JSON and prints a table.

    python benchmarks/throughput.py --out device_check.json                 # on a GPU: img512-xs and img512-s
    python benchmarks/throughput.py --cpu --out device_check.json           # tiny sizes, to check it runs

Every measurement runs within ``--budget`` seconds of wall time in all (what is left is
skipped and listed as skipped, so the check never overruns its slot).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from harness import median, timed, training_step

from autoguide.apps.config_tree import get_preset
from autoguide.nets import build_network
from autoguide.sample import Autoguidance, GuidedDenoiser, SamplerSettings, SeedStreams, edm_sampler

GPU_PLAN = {
    "train": [(net, batch) for net in ("img512-xs", "img512-s") for batch in (32, 64)],
    "generate": {"net": "img512-s", "guide": "img512-xs", "batch": 64, "steps": 32},
    "precision": "bf16",
}
CPU_PLAN = {
    "train": [("mnist-xs", 4)],
    "generate": {"net": "mnist-xs", "guide": "mnist-xs", "batch": 4, "steps": 2},
    "precision": "fp32",
}


def peak_memory_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def measure_training(
    preset: str, batch: int, compiled: bool, device: torch.device, precision: str, steps: int
) -> dict[str, Any]:
    torch.manual_seed(0)
    net = build_network(get_preset(preset)).to(device)
    if compiled:
        net.compile()
    reset_peak(device)
    step = training_step(net, batch, device, precision)
    started = time.perf_counter()
    step()  # warm-up (and compilation)
    first = time.perf_counter() - started
    seconds = median([timed(step, device) for _ in range(steps)])
    return {
        "images_per_s": batch / seconds,
        "step_s": seconds,
        "first_step_s": first,
        "peak_mib": peak_memory_mib(device),
    }


def measure_generation(plan: dict[str, Any], device: torch.device, precision: str, guided: bool) -> dict[str, Any]:
    torch.manual_seed(0)
    net = build_network(get_preset(plan["net"])).eval().requires_grad_(False).to(device)
    terms = []
    if guided:
        terms = [
            Autoguidance(
                guide=build_network(get_preset(plan["guide"])).eval().requires_grad_(False).to(device), weight=2.0
            )
        ]
    batch = plan["batch"]
    seeds = list(range(batch))
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    noise = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    labels = torch.nn.functional.one_hot(torch.arange(batch) % net.label_dim, net.label_dim).float().to(device)
    reset_peak(device)

    def run() -> None:
        streams = SeedStreams(seeds)
        edm_sampler(
            GuidedDenoiser(net, terms, labels, streams, precision),
            noise,
            SamplerSettings(num_steps=plan["steps"]),
            streams,
        )

    run()
    seconds = median([timed(run, device) for _ in range(2)])
    return {"images_per_s": batch / seconds, "batch_s": seconds, "peak_mib": peak_memory_mib(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (checks that the script runs)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per setting (median)")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds for all measurements")
    args = parser.parse_args()
    device = torch.device("cpu" if args.cpu else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu")
    plan = CPU_PLAN if args.cpu else GPU_PLAN
    deadline = time.monotonic() + args.budget
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "precision": plan["precision"],
        "training": [],
        "generation": [],
        "skipped": [],
    }
    for (preset, batch), compiled in [(setting, c) for setting in plan["train"] for c in (False, True)]:
        name = f"train {preset} batch {batch} {'compiled' if compiled else 'eager'}"
        if time.monotonic() > deadline:
            report["skipped"].append(name)
            continue
        result = measure_training(preset, batch, compiled, device, plan["precision"], args.steps)
        report["training"].append({"net": preset, "batch": batch, "compiled": compiled, **result})
    for guided in (False, True):
        name = f"generate {'autoguidance' if guided else 'unguided'}"
        if time.monotonic() > deadline:
            report["skipped"].append(name)
            continue
        report["generation"].append(
            {
                "guidance": "autoguidance" if guided else "none",
                **plan["generate"],
                **measure_generation(plan["generate"], device, plan["precision"], guided),
            }
        )
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{report['device']}, torch {report['torch']}, {report['precision']}")
    print(f"{'training':<36}{'images/s':>10}{'step s':>9}{'1st step s':>11}{'peak MiB':>10}")
    for row in report["training"]:
        name = f"{row['net']} batch {row['batch']} {'compiled' if row['compiled'] else 'eager'}"
        peak = "-" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        print(f"{name:<36}{row['images_per_s']:>10.1f}{row['step_s']:>9.3f}{row['first_step_s']:>11.1f}{peak:>10}")
    print(f"{'generation':<36}{'images/s':>10}{'batch s':>9}")
    for row in report["generation"]:
        print(f"{row['net'] + ' ' + row['guidance']:<36}{row['images_per_s']:>10.2f}{row['batch_s']:>9.2f}")
    for name in report["skipped"]:
        print(f"skipped (time budget): {name}")


if __name__ == "__main__":
    main()
