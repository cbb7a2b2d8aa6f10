"""The training step and the eval forward of the benchmark UNet (model_channels 64,
channel_mult (1, 2, 3, 4), 3 blocks per level, attention at 16x16 and 8x8, 32x32x3 inputs, 10
classes), every variant side by side in one run: each variant in its own process, the steps
interleaved (A B C A B C ...), medians, and each variant's speed-up over eager fp32.

    python benchmarks/train_step.py [--variants eager,compile] [--precision fp32,bf16] [--channels-last]
        [--baseline-src /path/to/older/checkout/src] [--rounds 5] [--batch 16] [--eval-batch 64] [--threads N]
        [--profile]

``--baseline-src`` adds the eager fp32 step and forward of another checkout of autoguide (e.g.
``git worktree add /tmp/before <commit>``: ``/tmp/before/src``), and every ratio is then also
given against it. The training step: ``harness.training_step`` (loss, backward, non-finite
gradients zeroed, Adam, two post-hoc EMAs); the eval forward: one no-grad denoiser call.
``--profile`` then prints the top 10 operators of one training step of every variant.
"""

from __future__ import annotations

import argparse
import itertools
import json

from harness import NETWORK, interleave, median, workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="eager,compile", help="comma-separated: eager, compile")
    parser.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16 (autocast)")
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="each variant with channels-last (NHWC) and with NCHW activations and weights "
        "(default: the code's choice, NHWC)",
    )
    parser.add_argument(
        "--baseline-src", default=None, help="src folder of another checkout to compare against (eager fp32)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="training batch")
    parser.add_argument("--eval-batch", type=int, default=64, help="eval forward batch")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the medians here")
    parser.add_argument(
        "--profile", action="store_true", help="then print each variant's top 10 operators of one training step"
    )
    args = parser.parse_args()

    jobs = {"train": args.batch, "eval": args.eval_batch}
    base = {"network": NETWORK, "jobs": jobs, "warmup": args.warmup, "threads": args.threads}
    specs = {}
    if args.baseline_src:
        specs["baseline eager fp32"] = ({**base}, args.baseline_src)
    layouts = ["channels_last", "contiguous_format"] if args.channels_last else [None]
    for variant, precision, layout in itertools.product(args.variants.split(","), args.precision.split(","), layouts):
        name = f"{variant} {precision}" + {"channels_last": " NHWC", "contiguous_format": " NCHW", None: ""}[layout]
        specs[name] = ({**base, "compile": variant == "compile", "precision": precision, "memory_format": layout}, None)

    with workers(specs) as started:
        threads = ", ".join(str(t) for t in sorted({w.ready["threads"] for w in started.values()}))
        timers = {(name, job): (lambda w=w, j=job: w(j)) for name, w in started.items() for job in jobs}
        times = interleave(timers, args.rounds)
        profiles = {name: w.profile("train") for name, w in started.items()} if args.profile else {}
    medians = {key: median(values) for key, values in times.items()}
    reference = "eager fp32" if "eager fp32" in specs else next(n for n in specs if n.startswith("eager fp32"))
    print(
        f"UNet {NETWORK['model_channels']} ch, 32x32x3, train batch {args.batch}, eval batch {args.eval_batch}, "
        f"{args.rounds} interleaved rounds, {threads} thread(s); seconds are medians"
    )
    header = f"{'variant':<32}{'train s':>10}{'eval s':>10}{'train x':>10}{'eval x':>10}"
    if args.baseline_src:
        header += f"{'train x base':>14}{'eval x base':>13}"
    print(header)
    for name in specs:
        row = f"{name:<32}{medians[name, 'train']:>10.3f}{medians[name, 'eval']:>10.3f}"
        row += "".join(f"{medians[reference, p] / medians[name, p]:>10.2f}" for p in ("train", "eval"))
        if args.baseline_src:
            base_name = "baseline eager fp32"
            row += f"{medians[base_name, 'train'] / medians[name, 'train']:>14.2f}"
            row += f"{medians[base_name, 'eval'] / medians[name, 'eval']:>13.2f}"
        print(row)
    for name, ops in profiles.items():
        print(f"\ntop operators of one training step, {name} (self CPU time)")
        for op in ops:
            print(f"  {op['op']:<48}{op['ms']:>10.1f} ms{100 * op['share']:>7.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{name}|{job}": value for (name, job), value in medians.items()}, f, indent=1)


if __name__ == "__main__":
    main()
