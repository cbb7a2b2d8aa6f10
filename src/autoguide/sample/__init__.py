"""The shared guided EDM sampler: one positive model, any negatives.

Python API
----------
``generate_images(net, seeds, labels=None, guidance=(), *, sampler=None, batch_size=64,
device="cpu", precision="fp32", progress=False, **sampler_fields) -> Tensor``
    ``[len(seeds), C, R, R]`` (or ``[len(seeds), C]`` for 2D models), float32 on the CPU,
    image ``i`` from the noise of seed ``seeds[i]`` and class ``labels[i]`` (indices ``[N]``,
    one-hot ``[N, label_dim]`` or ``None``); the result does not depend on ``batch_size``. It
    builds the guided denoiser of each batch and integrates it with ``edm_sampler``. ``sampler``
    is a ``SamplerSettings`` (EDM's Heun sampler by default; ``num_steps=8`` etc. set single
    fields); ``precision="bf16"`` runs the networks under bf16 autocast. ``net`` and guidance
    models must already be on ``device``.

``edm_sampler(denoise, noise, settings=None, streams=None) -> Tensor``
    The EDM ODE/SDE solver (Karras et al. 2022, Alg. 2; Heun with Euler on the last step, or
    Euler; stochastic churn) over any callable ``denoise(x, sigma)``; ``streams`` (the images'
    ``SeedStreams``) give the churn noise.

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
- ``SAG(weight=1.5, blur_sigma=1.0, threshold=1.0, block=None)`` — blurred high-attention regions;
- ``LayerSkip(weight=2.0, blocks=None)`` — the residual branch of blocks skipped (default: the bottleneck);
- ``Dropout(weight=2.0, p=0.1, blocks=None)`` — dropout kept on at sampling (in-situ autoguidance).
Attention block names are those of ``net.attention_ops()`` (``None``: the bottleneck); layer
skip and dropout take names of ``net.blocks()``. Terms on the positive network (CFG null
label, ICG, TSG, PAG, SEG, layer skip, dropout) share one batched forward with the positive;
autoguidance/SIMS cost one guide forward; equal negatives are evaluated once.

Every term also takes update rules (``autoguide.sample.rules``, ``autoguide.sample.weights``):
``apg=APG(eta=0.0, r=inf, beta=0.0, momentum="step", norm_dims=None)`` (Sadat et al. 2025),
``zero_star=ZeroStar(scale=True, zero_steps=0, space="flow")`` (CFG-Zero*, Fan et al. 2025),
``tcfg=TCFG(space="eps")`` (Kwon et al. 2025), ``fdg=FDG(weights=(1.0, 0.5), parallel=None)``
(Sadat et al. 2025), ``schedule=WeightSchedule(shape, start, end, sigma_start, sigma_end)``,
``fbg=Feedback(pi, temp, offset, max_weight)`` (Koulischer et al. 2025), ``mambo=MamboG(alpha,
space)``, ``rescale=phi`` (Lin et al. 2024) and ``cap`` (largest RMS change per element), each
per image; rules whose coefficients depend on the predictions name their prediction space.

Example::

    from autoguide import load_denoiser
    from autoguide.sample import generate_images
    from autoguide.sample.guidance import Autoguidance
    net, guide = load_denoiser("main.safetensors", "cuda"), load_denoiser("guide.safetensors", "cuda")
    images = generate_images(net, range(64), labels=None if not net.label_dim else [0] * 64,
                             guidance=[Autoguidance(guide=guide, weight=2.2)], device="cuda")

Command line: ``autoguide-generate`` (``autoguide.apps.generate``, config ``conf/generate.yaml``).
"""

from autoguide.sample.batch import generate_images
from autoguide.sample.guidance import (
    CFG,
    ICG,
    PAG,
    SAG,
    SEG,
    TSG,
    Autoguidance,
    Dropout,
    GuidanceTerm,
    LayerSkip,
    SIMSNegative,
    sample_shape,
)
from autoguide.sample.guided import GuidedDenoiser
from autoguide.sample.rules import APG, GuidanceRule, ZeroStar
from autoguide.sample.sampler import edm_sampler
from autoguide.sample.sampler_settings import SamplerSettings
from autoguide.sample.seeds import SeedStreams, parse_seeds, seed_noise

__all__ = [
    "APG",
    "CFG",
    "ICG",
    "PAG",
    "SAG",
    "SEG",
    "TSG",
    "Autoguidance",
    "Dropout",
    "GuidanceRule",
    "GuidanceTerm",
    "GuidedDenoiser",
    "LayerSkip",
    "SIMSNegative",
    "SamplerSettings",
    "SeedStreams",
    "ZeroStar",
    "edm_sampler",
    "generate_images",
    "parse_seeds",
    "sample_shape",
    "seed_noise",
]
