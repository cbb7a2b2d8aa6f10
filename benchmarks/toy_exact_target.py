"""Speed of the toy's exact posterior mean (the ``train.target=exact`` regression target, one call
per training step) for cache-sized row chunks against 2048-row chunks, side by side, on the CPU.

    python benchmarks/toy_exact_target.py [--rows 4096] [--repeats 5] [--classes A] [--dtype float32]

Prints the median seconds per call for each chunking (calls interleaved) and their ratio; both
give the same values (checked).
"""

from __future__ import annotations

import argparse
import time

import torch

import autoguide.data.toy2d as toy2d


def timed_call(
    mixture: toy2d.ToyMixture, x: torch.Tensor, sigma: torch.Tensor, chunk_elements: int
) -> tuple[float, torch.Tensor]:
    """Wall seconds and result of one ``mixture.denoise(x, sigma)`` with ``CPU_CHUNK_ELEMENTS`` set."""
    saved, toy2d.CPU_CHUNK_ELEMENTS = toy2d.CPU_CHUNK_ELEMENTS, chunk_elements
    try:
        started = time.perf_counter()
        out = mixture.denoise(x, sigma)
        return time.perf_counter() - started, out
    finally:
        toy2d.CPU_CHUNK_ELEMENTS = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4096, help="points per call (the toy recipe's batch)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--classes", default="A", choices=["A", "B", "AB"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    mixture = toy2d.toy_mixture(args.classes).select(None, getattr(torch, args.dtype))
    generator = torch.Generator().manual_seed(0)
    sigma = (torch.randn(args.rows, generator=generator) * 1.5 - 2.3).exp()
    x = (
        mixture.sample(args.rows, generator)
        + torch.randn(args.rows, 2, generator=generator, dtype=mixture.dtype) * sigma[:, None]
    )
    settings = {"cache": toy2d.CPU_CHUNK_ELEMENTS, "large": toy2d.CHUNK * len(mixture.weights)}  # large: 2048 rows
    times: dict[str, list[float]] = {name: [] for name in settings}
    outputs = {}
    for _ in range(args.repeats + 1):  # interleaved, so that machine load affects both alike; first call = warm-up
        for name, elements in settings.items():
            seconds, outputs[name] = timed_call(mixture, x, sigma, elements)
            times[name].append(seconds)
    cache_sized, large = (sorted(times[name][1:])[args.repeats // 2] for name in settings)
    fast, slow = outputs["cache"], outputs["large"]
    rows = mixture.rows_per_chunk(torch.device("cpu"))
    torch.testing.assert_close(fast, slow)
    print(
        f"{args.rows} points, {len(mixture.weights)} components, {args.dtype}, torch threads {torch.get_num_threads()}"
    )
    print(f"  {rows} rows per chunk (cache-sized): {cache_sized * 1e3:.1f} ms per call")
    print(f"  {toy2d.CHUNK} rows per chunk:            {large * 1e3:.1f} ms per call")
    print(f"  speed-up: {large / cache_sized:.2f}x")


if __name__ == "__main__":
    main()
