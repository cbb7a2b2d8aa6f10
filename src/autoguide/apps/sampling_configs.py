"""The typed primary configs of the sampling apps: ``generate.yaml`` (``GenerateConfig``),
``eval.yaml`` (``EvalConfig``), ``sweep.yaml`` (``SweepConfig``) and ``sims_compare.yaml``
(``SimsCompareConfig``), each extending the one before (the YAML files do the same).

``autoguide.apps.config_tree`` registers them as Hydra structured configs (``schema/generate``
...; each YAML file starts from its schema), so composition refuses unknown keys and values of
the wrong type. ``read_config`` turns a composed config into its class once, at the app
boundary; ``__post_init__`` checks the ranges and reads the free-form nodes (``guidance``,
``metrics``, ``seeds``) into the library's typed settings, each error one ``ConfigError``
naming the key. The library then receives only these typed objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from autoguide.core.typed_settings import ConfigError, from_mapping, number, plain, positive_int
from autoguide.data.sample_files import OutputSettings
from autoguide.eval.evaluate import EvalPlan
from autoguide.eval.evaluator import MetricsSettings
from autoguide.eval.extractors import ExtractorFiles
from autoguide.eval.search import SearchSettings
from autoguide.eval.sweep import SweepSettings
from autoguide.sample.guidance_spec import GuidanceSettings
from autoguide.sample.sampler_settings import GenerationSettings, SamplerSettings
from autoguide.sample.seeds import parse_seeds

C = TypeVar("C")


def read_config(cls: type[C], cfg: Any) -> C:
    """The composed config ``cfg`` (a DictConfig or a mapping; interpolations resolved, Hydra's
    own node left out) as the typed primary config ``cls``; a value left ``???`` is refused naming its key."""
    if OmegaConf.is_dict(cfg):
        keys = [str(k) for k in cfg if k != "hydra"]
        missing = [k for k in keys if OmegaConf.is_missing(cfg, k)]
        if missing:
            raise ConfigError(f"{missing[0]} is not set (??? in the config; required: {missing})")
        try:
            cfg = OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)
        except OmegaConfBaseException as error:
            key = getattr(error, "full_key", None)
            raise ConfigError(f"{key}: {str(error).splitlines()[0]}") from None
    values = {k: v for k, v in plain(cfg).items() if k != "hydra"}
    return from_mapping(cls, values, "")


def _seeds(value: Any) -> tuple[int, ...]:
    """A seed spec (``"0-63"``, ``"0,5,10-12"``, a list) as a tuple; ``ConfigError`` naming ``seeds``."""
    try:
        return tuple(parse_seeds(value))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _settings(cls: type[C], value: Any, key: str) -> C:
    """``value`` if it is already a ``cls`` (after ``dataclasses.replace``), else read from its mapping."""
    return value if isinstance(value, cls) else from_mapping(cls, value or {}, key)


@dataclass(frozen=True, kw_only=True)
class GenerateConfig:
    """``generate.yaml``: the model (``model``; ``guide`` for autoguidance; ``pair``: a SIMS
    pair.json, ``vae_path`` for latent models), which images (``seeds``, ``class_labels``), how
    (``sampler``, ``guidance``, ``batch_size``, ``device``, ``precision``, ``progress``) and
    where they go (``output``). After ``__post_init__`` ``seeds`` is a tuple of ints and
    ``guidance`` a ``GuidanceSettings``."""

    model: str | None = None
    guide: str | None = None
    pair: str | None = None
    vae_path: str | None = None
    seeds: Any = "0-63"
    class_labels: Any = "random"
    batch_size: int = 64
    device: str = "auto"
    precision: str = "fp32"
    progress: bool = True
    output: OutputSettings = field(default_factory=lambda: OutputSettings(dir="generated"))
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    guidance: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", _seeds(self.seeds))
        if not isinstance(self.guidance, GuidanceSettings):
            object.__setattr__(self, "guidance", GuidanceSettings.from_mapping(self.guidance))
        self.generation()  # batch_size and precision checked

    @property
    def guidance_settings(self) -> GuidanceSettings:
        """``guidance``, typed."""
        guidance: GuidanceSettings = self.guidance
        return guidance

    def generation(self) -> GenerationSettings:
        """``sampler``, ``batch_size``, ``precision`` and ``progress``."""
        return GenerationSettings(
            sampler=self.sampler, batch_size=self.batch_size, precision=self.precision, progress=self.progress
        )

    def model_file(self) -> str:
        """``model``; ``ConfigError`` when it is not set."""
        if self.model is None:
            raise ConfigError("model is not set; give model=<file> (or pair=<pair.json>)")
        return self.model


@dataclass(frozen=True, kw_only=True)
class ShardSettings:
    """``shards``: sharded, resumable measurement (``autoguide.eval.shards``): ``images`` per
    shard (``None``: one process, in memory), the shard ``dir``, and this process's share
    (``worker`` of ``workers``; ``None``: the launcher's ranks)."""

    images: int | None = None
    dir: str = "shards"
    worker: int | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.images is not None:
            positive_int(self.images, "shards.images", "a positive integer or null")


@dataclass(frozen=True, kw_only=True)
class EvalConfig(GenerateConfig):
    """``eval.yaml``: ``generate.yaml`` plus the measurement: ``seed_sets`` disjoint repeats,
    ``chunk_images`` held at a time, ``metrics`` (read into ``MetricsSettings``), the feature
    networks' files (``extractors``), ``shards``, and a preview of ``preview_images``."""

    seeds: Any = "0-4999"
    seed_sets: int = 1
    chunk_images: int = 1000
    progress: bool = False
    preview_images: int = 64
    shards: ShardSettings = field(default_factory=ShardSettings)
    cache_dir: str = "~/.cache/autoguide"
    extractors: ExtractorFiles = field(default_factory=ExtractorFiles)
    metrics: Any = None
    output: OutputSettings = field(default_factory=lambda: OutputSettings(dir="eval"))

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "metrics", _settings(MetricsSettings, self.metrics, "metrics"))
        self.plan()  # seed_sets and chunk_images checked
        if isinstance(self.preview_images, bool) or not isinstance(self.preview_images, int) or self.preview_images < 0:
            raise ConfigError(f"preview_images={self.preview_images!r}: expected an integer >= 0")

    @property
    def metrics_settings(self) -> MetricsSettings:
        """``metrics``, typed."""
        metrics: MetricsSettings = self.metrics
        return metrics

    def plan(self) -> EvalPlan:
        """The images measured: seeds, labels, seed sets, chunk size."""
        return EvalPlan(
            seeds=self.seeds, class_labels=self.class_labels, seed_sets=self.seed_sets, chunk_images=self.chunk_images
        )


@dataclass(frozen=True, kw_only=True)
class MainModel:
    """``main``: a training ``run`` (its post-hoc EMAs at ``time``) or one model file ``model``."""

    run: str | None = None
    model: str | None = None
    time: Any = None


@dataclass(frozen=True, kw_only=True)
class GuideRuns:
    """``guides``: guide training ``runs`` (the guide "size" axis) at every guide time of ``times``."""

    runs: list[str] = field(default_factory=list)
    times: list[Any] = field(default_factory=lambda: [None])


@dataclass(frozen=True, kw_only=True)
class Grid:
    """``grid``: the values of each sweep axis; ``interval`` entries are null or ``[lo, hi]``;
    ``term``: ``{option: [values]}`` of other term options."""

    weight: list[float] = field(default_factory=lambda: [1.0, 1.5, 2.0, 2.5, 3.0])
    main_std: list[float] = field(default_factory=lambda: [0.1])
    guide_std: list[float] = field(default_factory=lambda: [0.1])
    interval: list[Any] = field(default_factory=lambda: [None])
    term: Any = None


@dataclass(frozen=True, kw_only=True)
class Reconstruction:
    """``reconstruct``: the post-hoc EMA reconstruction's largest accepted relative error and
    EMAs built per pass."""

    max_error: float = 0.05
    batch: int = 8

    def __post_init__(self) -> None:
        number(self.max_error, "reconstruct.max_error", 0, low_open=True)
        positive_int(self.batch, "reconstruct.batch")


@dataclass(kw_only=True)
class Rungs:
    """``search.rungs``: images of the first rung, growth factor per rung."""

    min_images: int = 100
    factor: int = 3


@dataclass(kw_only=True)
class SearchCache:
    """``search.cache``: the shared post-hoc EMA reconstructions and their size cap in GB."""

    dir: str = "ema-cache"
    max_gb: float | None = None


@dataclass(kw_only=True)
class SearchNode:
    """``search`` (``conf/search/tpe.yaml``): the study's settings (``SearchSettings`` less the
    image counts), the worker's own ones, the held-out seeds, the cache and the ``space``
    (ranges, read by ``autoguide.eval.search_space.SearchSpace``). Not frozen, like ``Rungs`` and
    ``SearchCache``: Hydra builds this optional node from the ``search`` group after the schema
    was registered, and a frozen dataclass would make it read-only."""

    sampler: str = "tpe"
    pruner: str = "sha"
    seed: int = 0
    worker: int = 0
    study: str = "search"
    storage: str | None = None
    budget: int | None = None
    rungs: Rungs = field(default_factory=Rungs)
    startup_trials: int = 5
    holdout_seeds: Any = None
    heartbeat_s: float = 10.0
    lease_s: float = 120.0
    max_retry: int = 2
    cache: SearchCache = field(default_factory=SearchCache)
    space: Any = None

    def settings(self, images: int, output_dir: str) -> SearchSettings:
        """The library's ``SearchSettings``; ``images``: seeds per trial (the last rung)."""
        if self.budget is None:
            raise ConfigError("search.budget: give the study's budget in image evaluations (every worker together)")
        storage = self.storage or f"sqlite:///{Path(output_dir).expanduser().resolve() / 'study.db'}"
        return SearchSettings(
            sampler=self.sampler,
            pruner=self.pruner,
            seed=self.seed,
            worker=self.worker,
            study=self.study,
            storage=storage,
            budget=self.budget,
            min_images=self.rungs.min_images,
            factor=self.rungs.factor,
            max_images=images,
            startup_trials=self.startup_trials,
            heartbeat_s=self.heartbeat_s,
            lease_s=self.lease_s,
            max_retry=self.max_retry,
        )


@dataclass(frozen=True, kw_only=True)
class SweepConfig(EvalConfig):
    """``sweep.yaml``: ``eval.yaml`` plus the grid (``main``, ``guides``, ``grid``), the metric
    that names the best setting (``select``), the EMA ``reconstruct``ion and, for a search
    instead of the grid, ``search``."""

    main: MainModel = field(default_factory=MainModel)
    guides: GuideRuns = field(default_factory=GuideRuns)
    grid: Grid = field(default_factory=Grid)
    select: str = "fd_mnist"
    reconstruct: Reconstruction = field(default_factory=Reconstruction)
    search: SearchNode | None = None
    preview_images: int = 0
    output: OutputSettings = field(default_factory=lambda: OutputSettings(dir="sweep"))

    def sweep_settings(self) -> SweepSettings:
        """The library's ``SweepSettings``."""
        term = plain(self.grid.term) or {}
        if not isinstance(term, dict):
            raise ConfigError(f"grid.term={term!r}: expected {{option: [values], ...}}")
        return SweepSettings(
            main_run=self.main.run,
            main_time=self.main.time,
            main_model=self.main.model,
            guide_runs=tuple(self.guides.runs),
            guide_times=tuple(self.guides.times),
            weight=tuple(self.grid.weight),
            main_std=tuple(self.grid.main_std),
            guide_std=tuple(self.grid.guide_std),
            interval=tuple(None if i is None else (float(i[0]), float(i[1])) for i in self.grid.interval),
            term=tuple((str(key), tuple(_listed(values))) for key, values in term.items()),
            select=self.select,
            max_error=self.reconstruct.max_error,
            batch=self.reconstruct.batch,
        )


def _listed(values: Any) -> list[Any]:
    """A grid axis's values: a list, or one value."""
    return list(values) if isinstance(values, (list, tuple)) else [values]


@dataclass(frozen=True, kw_only=True)
class SimsCompareConfig(EvalConfig):
    """``sims_compare.yaml``: ``eval.yaml`` plus the SIMS folder ``sims_dir``, the ``omega``
    values, the ``iterations`` to include (``None``: all) and the metric ``select``."""

    sims_dir: str = MISSING
    omega: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 3.0])
    iterations: list[int] | None = None
    select: str = "fd_mnist"
    preview_images: int = 0


PRIMARY_CONFIGS: dict[str, type] = {
    "generate": GenerateConfig,
    "eval": EvalConfig,
    "sweep": SweepConfig,
    "sims_compare": SimsCompareConfig,
}
"""The schemas of the sampling apps' primary configs, by config name."""
