"""Benchmark the guided sampler: images/s per guidance term and the guided/unguided time ratio
next to the ideal ratio.

Ideal ratio = 1 + (cost of the term's extra forward) / (cost of the main forward): for
autoguidance ``1 + t_guide / t_main`` (forward times measured here at the same batch size);
for terms on the main network (CFG, ICG, TSG, PAG, SEG, SAG) ``2`` — they add a main forward's
worth of rows (SAG: a sequential main forward). Batched terms can beat 2 on a GPU that is not
saturated by one batch. Networks are presets with random weights (timing only).

    python benchmarks/sample.py --net mnist-s --guide mnist-xs --batch 16 --steps 8
    python benchmarks/sample.py --net img64-s --guide img64-xs --batch 64 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import time

import torch

from autoguide.config import get_preset
from autoguide.nets import build_network
from autoguide.sample import CFG, ICG, PAG, SAG, SEG, TSG, Autoguidance, GuidedDenoiser, SamplerSettings, SeedStreams, edm_sampler

SHARED_TERMS = {
    "cfg": lambda: CFG(weight=2.0),
    "icg": lambda: ICG(weight=2.0),
    "tsg": lambda: TSG(weight=2.0),
    "pag": lambda: PAG(weight=2.0),
    "seg": lambda: SEG(weight=2.0),
    "sag": lambda: SAG(weight=2.0),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def build(preset: str, device: torch.device) -> torch.nn.Module:
    return build_network(get_preset(preset)).eval().requires_grad_(False).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default="mnist-s", help="main network preset (conf/net/<name>.yaml)")
    parser.add_argument("--guide", default="mnist-xs", help="guide network preset for autoguidance")
    parser.add_argument("--terms", default="autoguidance,cfg,pag,seg,tsg,icg,sag", help="comma-separated terms to time")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="sampler steps (Heun: 2 steps - 1 evaluations)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    device = torch.device(args.device)
    net, guide = build(args.net, device), build(args.guide, device)
    shape = (net.img_channels, net.img_resolution, net.img_resolution) if net.img_resolution else (net.img_channels,)
    seeds = list(range(args.batch))
    noise = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    labels = torch.arange(args.batch) % net.label_dim if net.label_dim else None
    sigma = torch.ones(args.batch, device=device)
    onehot = None if labels is None else torch.nn.functional.one_hot(labels, net.label_dim).float().to(device)
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def forward(model):
        def call():
            with torch.no_grad(), torch.autocast(**autocast):
                model(noise, sigma, onehot)
        return call

    t_main = best_time(forward(net), device, args.repeats)
    t_guide = best_time(forward(guide), device, args.repeats)

    def sample(terms):
        streams = SeedStreams(seeds)
        denoise = GuidedDenoiser(net, terms, onehot, streams, args.precision)
        return lambda: edm_sampler(denoise, noise, SamplerSettings(num_steps=args.steps), streams)

    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"precision {args.precision}, batch {args.batch}, {args.steps} Heun steps ({2 * args.steps - 1} evaluations)")
    print(f"forward: main {args.net} {t_main * 1e3:.1f} ms, guide {args.guide} {t_guide * 1e3:.1f} ms")
    t_plain = best_time(sample([]), device, args.repeats)
    print(f"{'term':<14}{'images/s':>10}{'ratio':>8}{'ideal':>8}")
    print(f"{'unguided':<14}{args.batch / t_plain:>10.2f}{1.0:>8.2f}{1.0:>8.2f}")
    for name in args.terms.split(","):
        if name == "autoguidance":
            terms, ideal = [Autoguidance(guide=guide, weight=2.0)], 1 + t_guide / t_main
        elif name in SHARED_TERMS:
            terms, ideal = [SHARED_TERMS[name]()], 2.0
        else:
            raise SystemExit(f"--terms: unknown term {name!r}; valid: autoguidance, {', '.join(SHARED_TERMS)}")
        t = best_time(sample(terms), device, args.repeats)
        print(f"{name:<14}{args.batch / t:>10.2f}{t / t_plain:>8.2f}{ideal:>8.2f}")


if __name__ == "__main__":
    main()
