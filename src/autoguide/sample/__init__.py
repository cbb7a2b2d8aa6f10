"""The shared guided EDM sampler: one positive model, any negatives.

Python API
----------
``edm_sampler(net, noise, labels=None, guidance=(), *, seeds=None, num_steps=32,
sigma_min=0.002, sigma_max=80, rho=7, solver="heun", S_churn=0, S_min=0, S_max=inf,
S_noise=1, precision="fp32") -> Tensor``
    EDM sampling (Karras et al. 2022, Alg. 2; Heun with Euler on the last step, or Euler)
    from unit-variance ``noise [N, ...]``. ``labels``: class indices ``[N]``, one-hot
    ``[N, label_dim]`` or ``None``. ``seeds``: one per image; required when anything else is
    random (churn, ICG, TSG) — each image's randomness comes from its own seed.
    ``precision="bf16"`` runs the networks under bf16 autocast (meant for CUDA).

``generate_images(net, seeds, labels=None, guidance=(), batch_size=64, device="cpu",
progress=False, **sampler_kwargs) -> Tensor``
    ``[len(seeds), C, R, R]`` (or ``[len(seeds), C]`` for 2D models), float32 on the CPU,
    image ``i`` from the noise of seed ``seeds[i]``; the result does not depend on
    ``batch_size``. ``net`` and guidance models must already be on ``device``.

``GuidedDenoiser(net, guidance, labels, streams, precision)(x, sigma) -> D``
    The guided denoiser itself, e.g. to plot guided predictions.

Guidance terms (``autoguide.sample.guidance``), Karras convention ``D = D_neg + w (D_pos -
D_neg)``, ``w = 1`` = off; several terms ``D = D_pos + sum_k (w_k - 1)(D_pos - D_neg_k)``;
every term takes ``interval=(sigma_lo, sigma_hi)`` (on for ``sigma`` in ``(lo, hi]``):

- ``Autoguidance(guide=net_small, weight=2.2)`` — a separate guide model, same labels;
- ``SIMSNegative(guide=net_synthetic, omega=1.0)`` — the same, ``w = 1 + omega``;
- ``CFG(weight=1.4)`` (null label) or ``CFG(weight=1.4, unconditional=net_uncond)``;
- ``ICG(weight=1.4)`` — an independent random class per image;
- ``TSG(weight=1.5, scale=1.0, exponent=1.0)`` — perturbed noise embedding;
- ``PAG(weight=3.0, blocks=["dec.8x8_in0"])`` — identity self-attention;
- ``SEG(weight=3.0, blur_sigma=10.0, blocks=None)`` — Gaussian-blurred queries;
- ``SAG(weight=1.5, blur_sigma=1.0, threshold=1.0, block=None)`` — blurred high-attention regions.
Block names are those of ``net.attention_ops()``; ``None`` means the bottleneck. Terms on the
positive network (CFG null label, ICG, TSG, PAG, SEG) share one batched forward with the
positive; autoguidance/SIMS cost one guide forward; equal negatives are evaluated once.

Example::

    from autoguide import load_denoiser
    from autoguide.sample import generate_images
    from autoguide.sample.guidance import Autoguidance
    net, guide = load_denoiser("main.safetensors", "cuda"), load_denoiser("guide.safetensors", "cuda")
    images = generate_images(net, range(64), labels=None if not net.label_dim else [0] * 64,
                             guidance=[Autoguidance(guide=guide, weight=2.2)], device="cuda")

Command line: ``autoguide-generate`` (``autoguide.sample.generate``, config ``conf/generate/``).
"""

from autoguide.sample.batch import generate_images, sample_shape
from autoguide.sample.guidance import CFG, ICG, PAG, SAG, SEG, TSG, Autoguidance, GuidanceTerm, SIMSNegative
from autoguide.sample.guided import GuidedDenoiser
from autoguide.sample.sampler import edm_sampler
from autoguide.sample.seeds import SeedStreams, parse_seeds, seed_noise

__all__ = [
    "CFG", "ICG", "PAG", "SAG", "SEG", "TSG", "Autoguidance", "GuidanceTerm", "GuidedDenoiser", "SIMSNegative",
    "SeedStreams", "edm_sampler", "generate_images", "parse_seeds", "sample_shape", "seed_noise",
]
