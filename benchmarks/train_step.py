"""Training throughput and peak memory of one EDM2 training step (forward, loss, backward,
Adam) of the reference-sized UNet: model_channels 64, channel_mult (1, 2, 3, 4), 3 blocks per
level, attention at 16x16 and 8x8, 32x32x3 inputs, 10 classes, batch 16, fp32 on the CPU.

    python benchmarks/train_step.py [--steps 5] [--warmup 2] [--batch 16] [--device cpu] [--threads N]

Prints seconds per Adam step (wall clock and process CPU time), images per second and peak
memory (process peak RSS on the CPU, peak allocated CUDA memory on a GPU). The step is the one ``DiffusionModule`` takes:
``autoguide.diffusion.edm2_loss`` with EDM2's P_mean/P_std, non-finite gradients zeroed,
Adam with betas (0.9, 0.99) and eps 1e-8.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from autoguide.diffusion import edm2_loss
from autoguide.nets import build_network
from autoguide.train.settings import EDM2_ADAM_KWARGS

NETWORK = {
    "arch": "unet", "img_resolution": 32, "img_channels": 3, "label_dim": 10,
    "model_channels": 64, "channel_mult": [1, 2, 3, 4], "num_blocks": 3, "attn_resolutions": [16, 8],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    torch.manual_seed(0)
    net = build_network(NETWORK).to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, **EDM2_ADAM_KWARGS)
    images = torch.rand(args.batch, 3, 32, 32, device=device) * 2 - 1
    labels = torch.nn.functional.one_hot(torch.arange(args.batch, device=device) % 10, 10).float()

    def step() -> None:
        loss = edm2_loss(net, images, labels, -0.8, 1.6)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for p in net.parameters():
            torch.nan_to_num(p.grad, nan=0.0, posinf=0.0, neginf=0.0, out=p.grad)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step()
    per_step = (time.perf_counter() - start) / args.steps
    cpu_per_step = (time.process_time() - cpu_start) / args.steps

    if device.type == "cuda":
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB peak CUDA memory allocated"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB peak process RSS"
    params = sum(p.numel() for p in net.parameters())
    print(f"UNet {params / 1e6:.2f} M params, batch {args.batch}, 32x32x3, fp32 on {device} ({torch.get_num_threads()} threads)")
    print(f"{per_step:.3f} s/step, {args.batch / per_step:.1f} images/s, {peak}")
    print(f"process CPU time {cpu_per_step:.3f} s/step (on a busy machine, the cost without waiting for cores)")


if __name__ == "__main__":
    main()
