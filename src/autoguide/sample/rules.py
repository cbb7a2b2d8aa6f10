"""Update rules: how one guidance term turns ``D_pos - D_neg`` into its change of ``D``, for any
negative (docs/design.md, "Sampling").

Plain guidance adds ``c = (w - 1) (D_pos - D_neg)`` per term. A term's ``GuidanceRule`` changes
that, in this order; everything is per image (sums over all of an image's elements unless
APG's ``norm_dims`` says otherwise), on the EDM sampler's ``x``, ``sigma`` and ``D``, with
predictions in other spaces from ``autoguide.sample.spaces``:

1. The negative. CFG-Zero* (Fan et al. 2025, "CFG-Zero*: Improved Classifier-Free Guidance for
   Flow Matching Models"), ``zero_star``: in ``space`` (``flow``, the paper's velocity, default;
   or ``eps``), ``s* = <p_pos, p_neg> / ||p_neg||^2`` (the ``s`` minimising
   ``||p_pos - s p_neg||``) and ``p_neg <- s* p_neg``. In ``x0`` terms: ``flow``:
   ``s*`` from ``x - (1 + sigma) D`` and ``D_neg <- (1 - s*) x / (1 + sigma) + s* D_neg``;
   ``eps`` (CFG-Zero* on the EDM ODE's slope, what diffusers does for noise-prediction models):
   ``s*`` from ``x - D`` and ``D_neg <- x - s* (x - D_neg)``. Its zero-init (the first ``K``
   sampler steps output a zero prediction) is ``D = x / (1 + sigma)`` (``flow``) or ``D = x``
   (``eps``) at every denoiser call of the first ``K`` steps (``GuidedDenoiser``). Then TCFG
   (Kwon et al. 2025, "TCFG: Tangential Damping Classifier-free Guidance"), ``tcfg``: with the
   right singular vectors ``v_1, v_2`` of the ``2 x n`` matrix ``[p_pos; p_neg]`` (``space``,
   default ``eps``), ``p_neg <- <p_neg, v_1> v_1``: the negative's component along the second
   singular direction removed.
2. APG (Sadat et al. 2025, "Eliminating Oversaturation and Artifacts of High Guidance Scales in
   Diffusion Models"), ``apg``: with ``delta = D_pos - D_neg``, momentum
   ``delta <- delta + beta * m`` with ``m`` the momentum of the previous sampler step (``momentum:
   step``, as the paper and diffusers: one update per step, both Heun evaluations use the same
   ``m``) or of the previous denoiser call (``momentum: call``); the norm threshold
   ``delta <- delta * min(1, r / ||delta||)``, then the split into the part parallel to ``D_pos``
   and the rest: ``delta <- delta_orth + eta * delta_par``. Norms and projections are over
   ``norm_dims`` (``null``: the whole image; ``[2, 3]``: per channel of ``[N, C, H, W]``;
   diffusers' ``adaptive_projected_guidance_norm_dim``).
3. The weight ``w`` (``autoguide.sample.weights``): ``schedule``, ``fbg``, ``mambo``.
4. ``c = (w - 1) delta``; with FDG (Sadat et al. 2025, "Guidance in the Frequency Domain
   Enables High-Fidelity Sampling at Low CFG Scales"), ``fdg``, per band ``k`` of the Laplacian
   pyramid (``autoguide.sample.pyramid``, highest frequencies first):
   ``c = from_pyramid_k((w - 1) f_k (delta_k,orth + eta_k delta_k,par))``, ``f_k`` = ``weights[k]``
   and ``eta_k`` = ``parallel[k]`` (default 1), the parallel part with respect to the band of
   ``D_pos``: band ``k`` is guided with weight ``1 + f_k (w - 1)``.
5. Guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
   Flawed", eq. 15-16), ``rescale = phi``: with ``D_g = D_pos + c``,
   ``c <- phi * D_g * std(D_pos) / std(D_g) + (1 - phi) * D_g - D_pos`` (one term alone: exactly
   the paper's rule on the x0 prediction).
6. ``cap``: ``c <- c * min(1, cap / rms(c))``, the largest root-mean-square change per element
   one term may make.

Identity cases: ``eta = 1, r = inf, beta = 0``, FDG weights and parallel weights 1, a constant
schedule with ``start = 1``, ``mambo.alpha = 0``, ``phi = 0`` and ``cap = inf`` give plain
guidance. diffusers' guiders map as: ``guidance_scale = w`` for CFG, CFG-Zero*, MAMBO-G, TCFG and
rescale; ``guidance_scale = w - 1`` with ``use_original_formulation=True`` for APG and FDG
(``guidance_scales[k] = f_k (w - 1)``, ``parallel_weights[k] = eta_k``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from autoguide.sample.pyramid import check_pyramid_shape, from_pyramid, laplacian_pyramid
from autoguide.sample.spaces import check_space, denoised, prediction
from autoguide.sample.weights import Feedback, MamboG, WeightSchedule

MOMENTUM = ("step", "call")


def _per_image(t: torch.Tensor) -> torch.Tensor:
    """``t`` as ``[N, elements]``."""
    return t.reshape(t.shape[0], -1)


def _rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-image ``values [N]`` shaped to broadcast over ``like``."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def _dims(t: torch.Tensor, dims: Sequence[int] | None) -> list[int]:
    """The dims norms and projections run over: ``dims``, or all but the batch dim."""
    return list(range(1, t.ndim)) if dims is None else list(dims)


def optimized_scale(target: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``s = <target, basis> / ||basis||^2`` per image ``[N]``: the ``s`` minimising
    ``||target - s basis||`` (0 where ``basis`` is 0)."""
    t, b = _per_image(target).double(), _per_image(basis).double()
    norm2 = (b * b).sum(1)
    return torch.where(norm2 > 0, (t * b).sum(1) / norm2.clamp_min(torch.finfo(torch.float64).tiny), 0.0).to(
        target.dtype
    )


def project(
    delta: torch.Tensor, direction: torch.Tensor, dims: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(parallel, orthogonal)`` parts of ``delta`` with respect to ``direction``, over ``dims``
    (default: per image)."""
    over = _dims(delta, dims)
    d, u = delta.double(), direction.double()
    u = u / torch.linalg.vector_norm(u, dim=over, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    parallel = ((d * u).sum(over, keepdim=True) * u).to(delta.dtype)
    return parallel, delta - parallel


def norm_threshold(delta: torch.Tensor, r: float, dims: Sequence[int] | None = None) -> torch.Tensor:
    """``delta * min(1, r / ||delta||)``, norms over ``dims`` (default: per image)."""
    if math.isinf(r):
        return delta
    norm = torch.linalg.vector_norm(delta, dim=_dims(delta, dims), keepdim=True)
    return delta * torch.clamp(r / norm.clamp_min(torch.finfo(norm.dtype).tiny), max=1.0)


def rescaled(guided: torch.Tensor, d_pos: torch.Tensor, phi: float) -> torch.Tensor:
    """``phi * guided * std(D_pos) / std(guided) + (1 - phi) * guided``, stds per image."""
    ratio = _per_image(d_pos).std(dim=1) / _per_image(guided).std(dim=1).clamp_min(torch.finfo(guided.dtype).tiny)
    return phi * guided * _rows(ratio, guided) + (1 - phi) * guided


def capped(change: torch.Tensor, cap: float) -> torch.Tensor:
    """``change * min(1, cap / rms(change))`` per image."""
    if math.isinf(cap):
        return change
    rms = _per_image(change).square().mean(dim=1).sqrt()
    return change * _rows(torch.clamp(cap / rms.clamp_min(torch.finfo(rms.dtype).tiny), max=1.0), change)


def _floats(values: float | Sequence[float], what: str) -> tuple[float, ...]:
    values = (values,) if isinstance(values, (int, float)) else tuple(values)
    out = tuple(float(v) for v in values)
    if not out or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{what} must be a non-empty list of finite numbers, got {list(values)}")
    return out


@dataclass(frozen=True)
class APG:
    """Adaptive projected guidance: parallel weight ``eta``, norm threshold ``r`` (``inf``: none),
    momentum ``beta`` (the paper uses negative values, e.g. -0.5) advanced once per sampler
    ``step`` or per denoiser ``call``, norms and projections over ``norm_dims`` (``None``: per
    image)."""

    eta: float = 0.0
    r: float = math.inf
    beta: float = 0.0
    momentum: str = "step"
    norm_dims: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("eta", "beta"):
            object.__setattr__(self, name, float(getattr(self, name)))
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"apg.{name} must be finite, got {getattr(self, name)}")
        object.__setattr__(self, "r", float(self.r))
        if not self.r > 0:
            raise ValueError(f"apg.r must be > 0 (inf: no threshold), got {self.r}")
        if self.momentum not in MOMENTUM:
            raise ValueError(f"apg.momentum must be one of {', '.join(MOMENTUM)}, got {self.momentum!r}")
        if self.norm_dims is not None:
            dims = (self.norm_dims,) if isinstance(self.norm_dims, int) else tuple(self.norm_dims)
            if not dims or not all(isinstance(d, int) and d != 0 for d in dims) or len(set(dims)) != len(dims):
                raise ValueError(
                    f"apg.norm_dims must be distinct non-batch dims (not 0), e.g. [2, 3]; got {self.norm_dims!r}"
                )
            object.__setattr__(self, "norm_dims", dims)

    def check_dims(self, ndim: int) -> None:
        """Raise ``ValueError`` unless ``norm_dims`` are dims ``1 .. ndim-1`` of ``ndim``-dim samples."""
        if self.norm_dims is None:
            return
        resolved = [d % ndim if -ndim < d < ndim else None for d in self.norm_dims]
        if None in resolved or 0 in resolved or len(set(resolved)) != len(resolved):
            raise ValueError(
                f"apg.norm_dims={list(self.norm_dims)} out of range for {ndim}-dim batches: use distinct dims in "
                f"1..{ndim - 1} (or -{ndim - 1}..-1)"
            )

    def __call__(self, delta: torch.Tensor, d_pos: torch.Tensor) -> torch.Tensor:
        """Threshold and projection of ``delta`` (after ``advance``): ``orth + eta * par``."""
        parallel, orthogonal = project(norm_threshold(delta, self.r, self.norm_dims), d_pos, self.norm_dims)
        return orthogonal + self.eta * parallel

    def advance(self, delta: torch.Tensor, state: dict, first: bool) -> torch.Tensor:
        """``delta + beta * m``. ``state['apg']`` is the latest momentum and ``state['apg_step']``
        the one before this sampler step; per ``step`` only a step's ``first`` call advances."""
        if self.momentum == "call" or first:
            state["apg_step"] = state.get("apg")
            previous = state["apg_step"]
        else:
            previous = state.get("apg_step")
        out = delta if previous is None or self.beta == 0 else delta + self.beta * previous
        if self.momentum == "call" or first:
            state["apg"] = out
        return out


@dataclass(frozen=True)
class ZeroStar:
    """CFG-Zero* in ``space`` (``flow``: the paper's velocity; ``eps``: the EDM ODE slope):
    ``scale`` the negative by the optimised ``s*``; ``zero_steps``: a zero prediction at every
    call of the first that many sampler steps."""

    scale: bool = True
    zero_steps: int = 0
    space: str = "flow"

    def __post_init__(self) -> None:
        if not (isinstance(self.zero_steps, int) and self.zero_steps >= 0):
            raise ValueError(f"zero_star.zero_steps must be an integer >= 0, got {self.zero_steps!r}")
        check_space(self.space, "zero_star.space", ("flow", "eps"))

    def negative(self, x: torch.Tensor, d_pos: torch.Tensor, d_neg: torch.Tensor, sigma: float) -> torch.Tensor:
        """``D_neg`` whose prediction is ``s* p_neg``."""
        p_pos, p_neg = prediction(self.space, x, d_pos, sigma), prediction(self.space, x, d_neg, sigma)
        return denoised(self.space, x, _rows(optimized_scale(p_pos, p_neg), x) * p_neg, sigma)

    def zero(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The ``D`` of a zero prediction: ``x / (1 + sigma)`` (flow) or ``x`` (eps)."""
        return denoised(self.space, x, torch.zeros_like(x), sigma)


@dataclass(frozen=True)
class TCFG:
    """Tangential damping CFG: the negative's component along the second right singular vector
    of ``[p_pos; p_neg]`` removed, predictions in ``space``."""

    space: str = "eps"

    def __post_init__(self) -> None:
        check_space(self.space, "tcfg.space")

    def negative(self, x: torch.Tensor, d_pos: torch.Tensor, d_neg: torch.Tensor, sigma: float) -> torch.Tensor:
        p_pos, p_neg = (_per_image(prediction(self.space, x, d, sigma)) for d in (d_pos, d_neg))
        _, _, vh = torch.linalg.svd(torch.stack([p_pos, p_neg], dim=1).double(), full_matrices=False)
        first = vh[:, 0]  # [N, n]
        kept = ((p_neg.double() * first).sum(1, keepdim=True) * first).to(x.dtype).reshape(x.shape)
        return denoised(self.space, x, kept, sigma)


@dataclass(frozen=True)
class FDG:
    """Frequency-decoupled guidance: band ``k`` of the Laplacian pyramid (highest frequencies
    first) guided with weight ``1 + weights[k] (w - 1)`` and parallel weight ``parallel[k]``."""

    weights: tuple[float, ...] = (1.0, 1.0)
    parallel: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", _floats(self.weights, "fdg.weights"))
        if any(v < 0 for v in self.weights):
            raise ValueError(
                f"fdg.weights must be >= 0 (one per band, highest frequencies first), got {list(self.weights)}"
            )
        if self.parallel is not None:
            object.__setattr__(self, "parallel", _floats(self.parallel, "fdg.parallel"))
            if len(self.parallel) != len(self.weights):
                raise ValueError(
                    f"fdg.parallel needs one value per band ({len(self.weights)}), got {list(self.parallel)}"
                )

    def check_shape(self, shape: tuple[int, ...]) -> None:
        problem = check_pyramid_shape(shape, len(self.weights))
        if problem:
            raise ValueError(f"fdg.weights: {problem}")

    def change(self, strength: torch.Tensor, delta: torch.Tensor, d_pos: torch.Tensor) -> torch.Tensor:
        """``from_pyramid_k(strength f_k (delta_k,orth + eta_k delta_k,par))``, ``strength = w - 1`` per image."""
        levels = len(self.weights)
        parallel = self.parallel or (1.0,) * levels
        bands = []
        bands_of = zip(laplacian_pyramid(delta, levels), laplacian_pyramid(d_pos, levels), strict=True)
        for f, eta, (band, direction) in zip(self.weights, parallel, bands_of, strict=True):
            if eta != 1:
                par, orth = project(band, direction)
                band = orth + eta * par
            bands.append(_rows(strength, band) * f * band)
        return from_pyramid(bands)


@dataclass(frozen=True)
class GuidanceRule:
    """How a term applies ``D_pos - D_neg`` (module docstring); the default is plain guidance."""

    apg: APG | None = None
    zero_star: ZeroStar | None = None
    rescale: float = 0.0
    cap: float = math.inf
    tcfg: TCFG | None = None
    fdg: FDG | None = None
    schedule: WeightSchedule | None = None
    fbg: Feedback | None = None
    mambo: MamboG | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rescale", float(self.rescale))
        object.__setattr__(self, "cap", float(self.cap))
        if not 0 <= self.rescale <= 1:
            raise ValueError(f"rescale (phi) must be in [0, 1], got {self.rescale}")
        if not self.cap > 0:
            raise ValueError(f"cap must be > 0 (inf: none), got {self.cap}")

    def check_samples(self, shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` if the rule cannot act on batches of ``shape`` ``[N, ...]``."""
        if self.apg is not None:
            self.apg.check_dims(len(shape))
        if self.fdg is not None:
            self.fdg.check_shape(shape)

    def weight(
        self, weight: float, x: torch.Tensor, d_pos: torch.Tensor, d_neg: torch.Tensor, sigma: float, state: dict
    ) -> torch.Tensor:
        """The effective weight per image ``[N]``: schedule, FBG, MAMBO-G (``autoguide.sample.weights``)."""
        w = torch.full((x.shape[0],), float(weight), dtype=x.dtype, device=x.device)
        if self.schedule is not None:
            w = 1 + self.schedule.factor(sigma) * (w - 1)
        if self.fbg is not None:
            w = w + self.fbg.weight(self._log_posterior(state, x)) - 1
        if self.mambo is not None:
            w = 1 + (w - 1) * self.mambo.factor(x, d_pos, d_neg, sigma)
        return w

    def _log_posterior(self, state: dict, x: torch.Tensor) -> torch.Tensor:
        if "fbg" not in state:
            state["fbg"] = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        return state["fbg"]

    def change(
        self,
        weight: float,
        x: torch.Tensor,
        d_pos: torch.Tensor,
        d_neg: torch.Tensor,
        state: dict,
        sigma: float,
        first: bool = True,
    ) -> torch.Tensor:
        """The term's change of ``D`` at noise level ``sigma``; ``state`` carries this term's APG
        momentum and FBG estimate between calls; ``first``: the first call of a sampler step."""
        if self.fbg is not None and first:
            state["fbg_step"] = (d_pos, d_neg)  # the step's first predictions, for end_step
        if self.zero_star is not None and self.zero_star.scale:
            d_neg = self.zero_star.negative(x, d_pos, d_neg, sigma)
        if self.tcfg is not None:
            d_neg = self.tcfg.negative(x, d_pos, d_neg, sigma)
        delta = d_pos - d_neg
        if self.apg is not None:
            delta = self.apg(self.apg.advance(delta, state, first), d_pos)
        strength = self.weight(weight, x, d_pos, d_neg, sigma, state) - 1
        change = self.fdg.change(strength, delta, d_pos) if self.fdg is not None else _rows(strength, delta) * delta
        if self.rescale:
            change = rescaled(d_pos + change, d_pos, self.rescale) - d_pos
        return capped(change, self.cap)

    def end_step(self, state: dict, x: torch.Tensor, sigma: float, x_next: torch.Tensor, sigma_next: float) -> None:
        """After a sampler step from ``(x, sigma)`` to ``(x_next, sigma_next)``: FBG's update."""
        if self.fbg is not None and "fbg_step" in state:
            d_pos, d_neg = state.pop("fbg_step")
            state["fbg"] = self.fbg.update(self._log_posterior(state, x), x, sigma, x_next, sigma_next, d_pos, d_neg)
