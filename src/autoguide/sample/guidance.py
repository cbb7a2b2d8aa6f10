"""Guidance terms: one small class per negative, all in the Karras convention.

One term with weight ``w``: ``D = D_neg + w (D_pos - D_neg)``; ``w = 1`` is no guidance.
Several terms: ``D = D_pos + sum_k (w_k - 1) (D_pos - D_neg_k)`` (docs/design.md, "Conventions"). A term may carry
a noise-level interval ``(sigma_lo, sigma_hi]`` (Kynkäänniemi et al. 2024, "Applying Guidance
in a Limited Interval Improves Sample and Distribution Quality in Diffusion Models"): outside
it the term is off and its negative is not evaluated. Other conventions convert at the edges:
a CFG/PAG/SEG/SAG "scale" ``gamma`` is ``w = 1 + gamma``; SIMS ``omega`` is ``w = 1 + omega``.

A term only says *what* its negative is (``negative()``, a hashable request); the
``GuidedDenoiser`` decides *how* to evaluate it: requests on the positive network
(``SameNetwork``) ride in the positive's batched forward, other networks (``OtherNetwork``)
get one forward each, SAG (``DegradedInput``) needs the positive's output first. Equal
requests are evaluated once.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch import nn

from autoguide.data.vae import check_same_latent_space
from autoguide.sample.perturb import (
    BlurredQueries,
    IdentityAttention,
    KeptDropout,
    NoisyEmbedding,
    Perturbation,
    SkippedBlocks,
    resolve_attention_blocks,
)
from autoguide.sample.rules import APG, FDG, TCFG, GuidanceRule, ZeroStar
from autoguide.sample.weights import Feedback, MamboG, WeightSchedule

LabelRule = Literal["same", "null", "random"]


def changes_output(weight: float, fbg: object | None = None) -> bool:
    """The one rule for "a weight of 1 is off": with ``D = D_neg + w (D_pos - D_neg)`` a term of
    ``w = 1`` gives ``D = D_pos`` and changes nothing, unless it carries feedback guidance (FBG,
    Koulischer et al. 2025), which adds a weight of its own."""
    return weight != 1 or fbg is not None


@dataclass(frozen=True)
class SameNetwork:
    """Negative = the positive network with other labels and/or a perturbation, same input.

    ``labels``: ``same`` (the positive's), ``null`` (all-zeros one-hot, CFG) or ``random`` (an
    independent uniformly random class per image, drawn once from its seed: ICG).
    """

    labels: LabelRule = "same"
    perturbation: Perturbation | None = None


@dataclass(frozen=True)
class OtherNetwork:
    """Negative = a separate network ``model`` on the same input; ``null_labels``: call it
    with ``labels=None`` (unconditional / null label) instead of the positive's labels."""

    model: nn.Module
    null_labels: bool = False


@dataclass(frozen=True)
class DegradedInput:
    """SAG negative: the positive network on an input whose high-attention regions were blurred.

    With ``x0 = D_pos(x)``, the attention map ``A`` of op ``block`` in that same forward,
    ``received = mean_heads sum_queries A`` per token, ``M = 1[received > threshold]``
    (nearest-upsampled to the image), ``x0' = x0 + M (blur(x0) - x0)`` and the re-noised input
    ``x' = x0' + (x - x0)`` (the predicted noise re-applied): ``D_neg = D(x') + (x - x')``,
    i.e. the negative's noise prediction ``(x' - D(x')) / sigma`` expressed at ``x``.
    """

    block: str | None
    blur_sigma: float
    threshold: float


NegativeRequest = SameNetwork | OtherNetwork | DegradedInput


def _check_weight(value: float, what: str) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value}")


def _field_names(cls: type) -> list[str]:
    """The sorted field names of the dataclass ``cls``."""
    return sorted(f.name for f in dataclasses.fields(cls))


def _option(cls: type, value: Any, what: str) -> Any:
    """A rule option given as a mapping (config) built into ``cls``; ``None`` and instances pass."""
    if value is None or isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a mapping of {_field_names(cls)}, got {value!r}")
    unknown = sorted(set(value) - set(_field_names(cls)))
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {unknown}; valid keys: {_field_names(cls)}")
    return cls(**value)


def sample_shape(net: nn.Module) -> tuple[int, ...]:
    """Shape of one sample: ``(C, R, R)`` for images, ``(C,)`` for 2D/vector data (resolution 0)."""
    channels, resolution = (int(getattr(net, name)) for name in ("img_channels", "img_resolution"))
    return (channels, resolution, resolution) if resolution > 0 else (channels,)


RULE_OPTIONS: dict[str, type] = {
    "apg": APG,
    "zero_star": ZeroStar,
    "tcfg": TCFG,
    "fdg": FDG,
    "schedule": WeightSchedule,
    "fbg": Feedback,
    "mambo": MamboG,
}


@dataclass(frozen=True, kw_only=True)
class GuidanceTerm(ABC):
    """Base of all terms: the optional interval and the update rule options
    (``autoguide.sample.rules`` and ``autoguide.sample.weights``: ``apg``, ``zero_star``,
    ``rescale``, ``cap``, ``tcfg``, ``fdg``, ``schedule``, ``fbg``, ``mambo``, each a mapping or
    its class); every term has a Karras ``weight`` field."""

    interval: tuple[float, float] | None = None
    apg: APG | None = None
    zero_star: ZeroStar | None = None
    rescale: float = 0.0
    cap: float | None = None
    tcfg: TCFG | None = None
    fdg: FDG | None = None
    schedule: WeightSchedule | None = None
    fbg: Feedback | None = None
    mambo: MamboG | None = None
    weight: float  # the Karras weight; each concrete term declares it again (SIMS derives it from omega)
    rule: GuidanceRule = field(init=False, repr=False, compare=False)  # built from the options above
    kind: ClassVar[str]

    def __post_init__(self) -> None:
        _check_weight(self.weight, f"{self.kind}: weight")
        try:
            options = {name: _option(cls, getattr(self, name), name) for name, cls in RULE_OPTIONS.items()}
            for name, value in options.items():
                object.__setattr__(self, name, value)
            rule = GuidanceRule(rescale=self.rescale, cap=math.inf if self.cap is None else self.cap, **options)
        except ValueError as error:
            raise ValueError(f"{self.kind}: {error}") from None
        object.__setattr__(self, "rule", rule)
        if self.interval is not None:
            lo, hi = (float(v) for v in self.interval)
            if not (0 <= lo < hi):
                raise ValueError(
                    f"{self.kind}: interval must be (sigma_lo, sigma_hi] with 0 <= lo < hi, got {self.interval}"
                )
            object.__setattr__(self, "interval", (lo, hi))

    @property
    def guides(self) -> bool:
        """Whether the term can change ``D`` at all (``changes_output``)."""
        return changes_output(self.weight, self.fbg)

    @abstractmethod
    def negative(self) -> NegativeRequest:
        """What the negative denoiser is."""

    def is_active(self, sigma: float) -> bool:
        """Whether the term changes ``D`` at noise level ``sigma``: it ``guides`` and ``sigma`` is in
        ``(sigma_lo, sigma_hi]``."""
        if not self.guides:
            return False
        return self.interval is None or self.interval[0] < sigma <= self.interval[1]

    def validate(self, net: nn.Module, conditional: bool) -> None:
        """Raise ``ValueError`` if the term cannot guide ``net`` (``conditional``: labels given)."""
        try:
            self.rule.check_samples((1, *sample_shape(net)))
        except ValueError as error:
            raise ValueError(f"{self.kind}: {error}") from None
        request = self.negative()
        if isinstance(request, SameNetwork) and request.perturbation is not None:
            request.perturbation.validate(net)
        if isinstance(request, OtherNetwork):
            _check_compatible(request.model, net, self.kind)


def _check_compatible(model: nn.Module, net: nn.Module, what: str) -> None:
    """The negative ``model`` must take the main ``net``'s inputs: the same shape and, for
    models with cards, the same latent space (VAE and standardisation)."""
    for attr in ("img_channels", "img_resolution"):
        if getattr(model, attr, None) != getattr(net, attr, None):
            raise ValueError(
                f"{what}: the negative model has {attr}={getattr(model, attr, None)} but the main model "
                f"has {attr}={getattr(net, attr, None)}"
            )
    if hasattr(model, "card") and hasattr(net, "card"):
        main, negative = (getattr(m, "card", {}).get("latent") for m in (net, model))
        check_same_latent_space(main, negative, "the main model", f"{what}'s negative model")


def _require_labels(net: nn.Module, conditional: bool, what: str) -> None:
    if not (getattr(net, "label_dim", 0) and conditional):
        raise ValueError(f"{what} needs a class-conditional model (label_dim > 0) and class labels")


@dataclass(frozen=True, kw_only=True)
class Autoguidance(GuidanceTerm):
    """Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of
    Itself"): the negative is a separate ``guide`` (smaller and/or trained shorter, its own
    EMA) with the same labels; ``D = D_guide + w (D_main - D_guide)``."""

    guide: nn.Module = field(repr=False)
    weight: float
    kind: ClassVar[str] = "autoguidance"

    def negative(self) -> OtherNetwork:
        return OtherNetwork(self.guide)

    def validate(self, net: nn.Module, conditional: bool) -> None:
        super().validate(net, conditional)
        if getattr(self.guide, "label_dim", 0) != getattr(net, "label_dim", 0):
            raise ValueError(
                f"autoguidance: the guide has label_dim={getattr(self.guide, 'label_dim', 0)} but the main model "
                f"has label_dim={getattr(net, 'label_dim', 0)}; a guide must share the conditioning"
            )


@dataclass(frozen=True, kw_only=True)
class SIMSNegative(Autoguidance):
    """SIMS (Alemohammad et al. 2024, "Self-Improving Diffusion Models with Synthetic Data"):
    the negative is the base model fine-tuned on its own samples,
    ``s = (1 + omega) s_base - omega s_synthetic``, i.e. autoguidance with ``w = 1 + omega``
    and the fine-tuned model as the guide."""

    omega: float
    weight: float = field(init=False)
    kind: ClassVar[str] = "sims"

    def __post_init__(self) -> None:
        _check_weight(self.omega, "sims: omega")
        object.__setattr__(self, "weight", 1.0 + self.omega)
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class CFG(GuidanceTerm):
    """Classifier-free guidance (Ho & Salimans 2022): the negative is the same model with the
    null label (all-zeros one-hot; needs a model trained with label dropout) or, if
    ``unconditional`` is given, that separate unconditional model. With a separate model the
    main model may also be a model of one class without labels: the autoguidance paper's toy
    guides p(x | A), trained on class A alone, with p(x) trained on both classes."""

    weight: float
    unconditional: nn.Module | None = field(default=None, repr=False)
    kind: ClassVar[str] = "cfg"

    def negative(self) -> SameNetwork | OtherNetwork:
        if self.unconditional is not None:
            return OtherNetwork(self.unconditional, null_labels=True)
        return SameNetwork(labels="null")

    def validate(self, net: nn.Module, conditional: bool) -> None:
        super().validate(net, conditional)
        if self.unconditional is None:
            _require_labels(net, conditional, "cfg")


@dataclass(frozen=True, kw_only=True)
class ICG(GuidanceTerm):
    """Independent condition guidance (Sadat et al. 2024, "No Training, No Problem"): the
    negative is the same model conditioned on an independent, uniformly random class per
    image (drawn once per image from its seed)."""

    weight: float
    kind: ClassVar[str] = "icg"

    def negative(self) -> SameNetwork:
        return SameNetwork(labels="random")

    def validate(self, net: nn.Module, conditional: bool) -> None:
        super().validate(net, conditional)
        _require_labels(net, conditional, "icg")


@dataclass(frozen=True, kw_only=True)
class TSG(GuidanceTerm):
    """Time-step guidance (Sadat et al. 2024): the negative is the same model with its
    noise-level embedding perturbed, ``e + scale * t^exponent * n`` (see ``NoisyEmbedding``)."""

    weight: float
    scale: float = 1.0
    exponent: float = 1.0
    kind: ClassVar[str] = "tsg"

    def negative(self) -> SameNetwork:
        return SameNetwork(perturbation=NoisyEmbedding(float(self.scale), float(self.exponent)))


def _blocks(blocks) -> tuple[str, ...] | None:
    return None if blocks is None else (blocks,) if isinstance(blocks, str) else tuple(blocks)


@dataclass(frozen=True, kw_only=True)
class PAG(GuidanceTerm):
    """Perturbed-attention guidance (Ahn et al. 2024): the negative is the same model with the
    self-attention map of ``blocks`` (default: the bottleneck, ``dec.8x8_in0`` in EDM2)
    replaced by the identity. PAG scale ``s`` is ``w = 1 + s``."""

    weight: float
    blocks: tuple[str, ...] | None = None
    kind: ClassVar[str] = "pag"

    def negative(self) -> SameNetwork:
        return SameNetwork(perturbation=IdentityAttention(_blocks(self.blocks)))


@dataclass(frozen=True, kw_only=True)
class SEG(GuidanceTerm):
    """Smoothed energy guidance (Hong 2024): the negative is the same model with the queries of
    ``blocks`` (default: the bottleneck) blurred over the token grid by a Gaussian of std
    ``blur_sigma`` tokens; ``inf`` replaces them by their mean. SEG scale ``s`` is ``w = 1 + s``."""

    weight: float
    blur_sigma: float = 10.0
    blocks: tuple[str, ...] | None = None
    kind: ClassVar[str] = "seg"

    def negative(self) -> SameNetwork:
        return SameNetwork(perturbation=BlurredQueries(float(self.blur_sigma), _blocks(self.blocks)))


@dataclass(frozen=True, kw_only=True)
class SAG(GuidanceTerm):
    """Self-attention guidance (Hong et al. 2023, "Improving Sample Quality of Diffusion Models
    Using Self-Attention Guidance"): the negative sees the input with the predicted image
    blurred (std ``blur_sigma`` pixels) where attention of ``block`` (default: the bottleneck)
    is high, re-noised (see ``DegradedInput``). SAG scale ``s`` is ``w = 1 + s``. Costs one
    extra forward after the positive's."""

    weight: float
    blur_sigma: float = 1.0
    threshold: float = 1.0
    block: str | None = None
    kind: ClassVar[str] = "sag"

    def negative(self) -> DegradedInput:
        return DegradedInput(self.block, float(self.blur_sigma), float(self.threshold))

    def validate(self, net: nn.Module, conditional: bool) -> None:
        super().validate(net, conditional)
        resolve_attention_blocks(net, None if self.block is None else [self.block], "sag")
        if not (0 < self.blur_sigma < math.inf):
            raise ValueError(f"sag: blur_sigma must be positive and finite, got {self.blur_sigma}")


@dataclass(frozen=True, kw_only=True)
class LayerSkip(GuidanceTerm):
    """Layer skip as a bad version of the model (SD3.5's skip-layer guidance; spatiotemporal
    skip guidance, Hyung et al. 2024): the negative is the same model with the residual branch
    of ``blocks`` (default: the UNet bottleneck, an MLP's middle block) skipped, each such block
    returning its skip path (see ``SkippedBlocks``). Rides in the positive's batch."""

    weight: float
    blocks: tuple[str, ...] | None = None
    kind: ClassVar[str] = "layer_skip"

    def negative(self) -> SameNetwork:
        return SameNetwork(perturbation=SkippedBlocks(_blocks(self.blocks)))


@dataclass(frozen=True, kw_only=True)
class Dropout(GuidanceTerm):
    """In-situ autoguidance (arXiv 2510.17136, "Guiding a diffusion model with itself using
    dropout"): the negative is the same model with dropout of rate ``p`` kept on at sampling on
    the residual branch of ``blocks`` (default: every block), masks drawn per image and
    evaluation from the image's seed (see ``KeptDropout``). Rides in the positive's batch."""

    weight: float
    p: float = 0.1
    blocks: tuple[str, ...] | None = None
    kind: ClassVar[str] = "dropout"

    def negative(self) -> SameNetwork:
        return SameNetwork(perturbation=KeptDropout(float(self.p), _blocks(self.blocks)))


TERMS: dict[str, type[GuidanceTerm]] = {
    cls.kind: cls for cls in (Autoguidance, SIMSNegative, CFG, ICG, TSG, PAG, SEG, SAG, LayerSkip, Dropout)
}
