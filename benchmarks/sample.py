"""Benchmark the guided sampler: the time of each guidance term relative to unguided sampling,
next to its ideal ratio, measured interleaved (every variant once per round, A B C A B C ...,
medians over the rounds) so that a drift of the machine cannot favour one.

Ideal ratio = 1 + (cost of the term's extra forward) / (cost of the main forward): for
autoguidance ``1 + t_guide / t_main`` (forward times measured here, interleaved too); for terms
on the main network (CFG, ICG, TSG, PAG, SEG, SAG) ``2`` -- they add one main forward's worth of
rows per evaluation. Networks are presets with random weights (timing only).

    python benchmarks/sample.py --net mnist-s --guide mnist-xs --batch 16 --steps 8 --rounds 7
    python benchmarks/sample.py --net img512-s --guide img512-xs --batch 64 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse

import torch
from harness import autocast, interleave, median, timed

from autoguide.apps.config_tree import get_preset
from autoguide.nets import build_network
from autoguide.sample import (
    CFG,
    ICG,
    PAG,
    SAG,
    SEG,
    TSG,
    Autoguidance,
    GuidedDenoiser,
    SamplerSettings,
    SeedStreams,
    edm_sampler,
)

SHARED_TERMS = {
    "cfg": lambda: CFG(weight=2.0),
    "icg": lambda: ICG(weight=2.0),
    "tsg": lambda: TSG(weight=2.0),
    "pag": lambda: PAG(weight=2.0),
    "seg": lambda: SEG(weight=2.0),
    "sag": lambda: SAG(weight=2.0),
}


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
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    device = torch.device(args.device)
    net, guide = build(args.net, device), build(args.guide, device)
    shape = (net.img_channels, net.img_resolution, net.img_resolution) if net.img_resolution else (net.img_channels,)
    seeds = list(range(args.batch))
    noise = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    labels = torch.arange(args.batch) % net.label_dim if net.label_dim else None
    onehot = None if labels is None else torch.nn.functional.one_hot(labels, net.label_dim).float().to(device)
    sigma = torch.ones(args.batch, device=device)

    def forward(model):
        def call():
            with torch.no_grad(), autocast(device, args.precision):
                model(noise, sigma, onehot)

        return lambda: timed(call, device)

    def sample(terms):
        def call():
            streams = SeedStreams(seeds)
            edm_sampler(
                GuidedDenoiser(net, terms, onehot, streams, args.precision),
                noise,
                SamplerSettings(num_steps=args.steps),
                streams,
            )

        return lambda: timed(call, device)

    names = args.terms.split(",")
    unknown = [n for n in names if n != "autoguidance" and n not in SHARED_TERMS]
    if unknown:
        raise SystemExit(f"--terms: unknown term(s) {unknown}; valid: autoguidance, {', '.join(SHARED_TERMS)}")
    timers = {"forward main": forward(net), "forward guide": forward(guide), "unguided": sample([])}
    for name in names:
        timers[name] = sample(
            [Autoguidance(guide=guide, weight=2.0)] if name == "autoguidance" else [SHARED_TERMS[name]()]
        )
    for timer in timers.values():  # warm-up
        timer()
    times = {name: median(values) for name, values in interleave(timers, args.rounds).items()}

    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
        f"{torch.get_num_threads()} threads), "
        f"precision {args.precision}, batch {args.batch}, {args.steps} Heun steps ({2 * args.steps - 1} evaluations), "
        f"{args.rounds} interleaved rounds, medians"
    )
    print(
        f"forward: main {args.net} {times['forward main'] * 1e3:.1f} ms, guide {args.guide} "
        f"{times['forward guide'] * 1e3:.1f} ms"
    )
    print(f"{'term':<16}{'images/s':>10}{'ratio':>8}{'ideal':>8}{'excess':>9}")
    print(f"{'unguided':<16}{args.batch / times['unguided']:>10.2f}{1.0:>8.2f}{1.0:>8.2f}")
    for name in names:
        ideal = 1 + times["forward guide"] / times["forward main"] if name == "autoguidance" else 2.0
        ratio = times[name] / times["unguided"]
        print(f"{name:<16}{args.batch / times[name]:>10.2f}{ratio:>8.2f}{ideal:>8.2f}{ratio / ideal - 1:>+9.1%}")


if __name__ == "__main__":
    main()
