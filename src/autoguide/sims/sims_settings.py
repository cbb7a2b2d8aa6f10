"""The ``sims`` primary config (``conf/sims.yaml``) as typed settings: ``SimsSettings``.

Registered as the Hydra schema ``schema/sims`` (``autoguide.apps.config_tree``), so composing
``conf/sims.yaml`` already refuses unknown keys and values of the wrong type; ``from_mapping``
then builds these frozen dataclasses once, at the app boundary, and ``__post_init__`` checks
the ranges (each error one line naming the key). ``autoguide.sims.pipeline`` takes them and
resolves what needs files (the real set's size, the base run's learning rate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autoguide.core.typed_settings import ConfigError, choice, number, positive_int
from autoguide.core.units import MI
from autoguide.sample.sampler_settings import SamplerSettings

STAGES = ("base", "synthesize", "retrain", "register")


def budgets_from_mi(budget_mi: float | Sequence[float]) -> tuple[int, ...]:
    """Budgets in images, ``round(B_mi * 2**20)``, sorted and unique."""
    values = [budget_mi] if isinstance(budget_mi, (int, float)) else list(budget_mi)
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"budget_mi={budget_mi!r}: expected positive numbers of Mi images")
        out.append(round(value * MI))
    return tuple(sorted(set(out)))


@dataclass(frozen=True, kw_only=True)
class SynthesizeOptions:
    """The ``synthesize`` node: ``num_images`` (n_s; None: the real set's size), the share
    ``real_fraction`` taken from the real data (subset drawn with ``real_seed``), image ``i``
    from seed ``first_seed + i`` with the class of ``class_labels`` (``random`` | index |
    list), ``shard_size`` images per shard, the sampler, ``batch_size`` images per sampling
    batch, ``precision`` (fp32 | bf16), ``guidance`` (a generate guidance term), and the SLURM
    array position ``task`` of ``num_tasks``."""

    num_images: int | None = None
    real_fraction: float = 0.0
    real_seed: int = 0
    first_seed: int = 0
    class_labels: Any = "random"
    shard_size: int = 10000
    batch_size: int = 256
    precision: str = "fp32"
    task: int = 0
    num_tasks: int = 1
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    guidance: dict[str, Any] = field(default_factory=lambda: {"kind": "none"})

    def __post_init__(self) -> None:
        positive_int(self.num_tasks, "synthesize.num_tasks")
        if isinstance(self.task, bool) or not isinstance(self.task, int) or not 0 <= self.task < self.num_tasks:
            raise ConfigError(f"synthesize.task={self.task!r}: expected 0 <= task < num_tasks={self.num_tasks}")


@dataclass(frozen=True, kw_only=True)
class RetrainOptions:
    """The ``retrain`` node: the fine-tune's learning rate ``lr`` (None: the base run's final
    rate), decay ``lr_ref_batches`` (0: constant) and warm-up ``lr_rampup_mi``, the post-hoc EMA
    ``ema_stds`` it tracks, ``checkpoint_kimg`` (None: at every budget), further training
    ``overrides`` (the fine-tune's resources and recipe, e.g. ``trainer=gpu``) and the
    ``launcher`` command prefix (e.g. ``srun``)."""

    lr: float | None = None
    lr_ref_batches: float = 0.0
    lr_rampup_mi: float = 0.0
    ema_stds: list[float] = field(default_factory=lambda: [0.05, 0.10])
    checkpoint_kimg: float | None = None
    overrides: list[str] = field(default_factory=list)
    launcher: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class RegisterOptions:
    """The ``register`` node: the negative model's EMA length(s) and the weight-space ``w'``."""

    ema_stds: list[float] = field(default_factory=lambda: [0.10])
    weight_space: list[float] = field(default_factory=lambda: [0.5, 1.0])

    def __post_init__(self) -> None:
        if not self.ema_stds:
            raise ConfigError("register.ema_stds is empty: give the EMA length(s) of the negative model")


@dataclass(frozen=True, kw_only=True)
class SimsSettings:
    """``autoguide-sims``: the SIMS folder ``out_dir``; the base model (a file ``base``, or the
    post-hoc EMA of ``base_run`` at ``base_ema_std`` and ``base_at_nimg``); the real set
    (``real_data``, None: the base run's); the fine-tune budget(s) ``budget_mi`` (Mi images);
    ``iterations`` rounds; stop after stage ``stop_after`` of round ``iteration`` (None: the
    last); the sampling ``device``; the stage nodes (see ``conf/sims.yaml``)."""

    out_dir: str
    base: str | None = None
    base_run: str | None = None
    base_ema_std: float = 0.10
    base_at_nimg: int | None = None
    real_data: Any = None  # a dataset mapping or None (typed Any: OmegaConf cannot merge a mapping into a None dict)
    budget_mi: Any
    iterations: int = 1
    stop_after: str = "register"
    iteration: int | None = None
    device: str = "auto"
    synthesize: SynthesizeOptions = field(default_factory=SynthesizeOptions)
    retrain: RetrainOptions = field(default_factory=RetrainOptions)
    register: RegisterOptions = field(default_factory=RegisterOptions)

    def __post_init__(self) -> None:
        positive_int(self.iterations, "iterations", "an integer >= 1")
        choice(self.stop_after, "stop_after", STAGES)
        number(self.base_ema_std, "base_ema_std", 0, low_open=True, expected="a positive EMA std")
        if self.iteration is not None and not 0 <= self.iteration < self.iterations:
            raise ConfigError(f"iteration={self.iteration}: expected 0 <= iteration < iterations={self.iterations}")
        budgets_from_mi(self.budget_mi)
        if self.real_data is not None and not isinstance(self.real_data, Mapping):
            raise ConfigError(f"real_data={self.real_data!r}: expected a dataset config ({{name: ..., ...}}) or null")

    @property
    def budgets(self) -> tuple[int, ...]:
        """The fine-tune budgets in images (``budgets_from_mi``)."""
        return budgets_from_mi(self.budget_mi)

    @property
    def stop_point(self) -> tuple[int, int]:
        """``(iteration, stage index)`` after which to stop."""
        last = self.iterations - 1 if self.iteration is None else self.iteration
        return last, STAGES.index(self.stop_after)
