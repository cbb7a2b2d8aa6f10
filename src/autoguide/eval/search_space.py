"""The space a guidance search explores (docs/design.md, "Guidance search"): ranges, not lists.

A searched knob is ``{low, high, scale}`` (``scale``: ``linear`` or ``log``; an optional
``step`` for a linear grid of floats) or ``{choices: [...]}``. The knobs: ``main_std``,
``guide_std``, ``guide_time`` (a fraction of the guide run's last snapshot, the nearest snapshot
time is used), ``weight``, ``sigma_lo`` and ``sigma_hi`` (the guidance interval), and under
``term`` any option of the guidance term that the sweep's term axis takes
(``autoguide.eval.sweep.term_option_keys``: update-rule parameters, blocks, dropout ``p`` ...).
Choices may be any JSON value (``apg: {choices: [null, {eta: 0.0}]}``); they are handed to the
optimiser as their JSON text, so every choice is a plain categorical value of the study.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoguide.core.typed_settings import ConfigError

KNOBS = ("main_std", "guide_std", "guide_time", "weight", "sigma_lo", "sigma_hi")
SCALES = ("linear", "log")
RANGE_KEYS = {"low", "high", "scale", "step"}


@dataclass(frozen=True)
class Knob:
    """One searched parameter: a float range (``log`` scale, optional ``step``) or JSON ``choices``."""

    name: str
    low: float = 0.0  # range bounds (unused with choices)
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[str, ...] | None = None  # JSON texts

    def suggest(self, trial: Any) -> Any:
        """This knob's value for an Optuna ``trial`` (choices decoded from JSON)."""
        if self.choices is not None:
            return json.loads(trial.suggest_categorical(self.name, list(self.choices)))
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def decode(self, value: Any) -> Any:
        """A stored parameter value of this knob as the setting it means."""
        return json.loads(value) if self.choices is not None else float(value)


def _knob(name: str, spec: Any, where: str) -> Knob:
    """A knob from its config ``spec``; a ``ConfigError`` naming ``where`` for an empty or
    inverted range, an unknown scale or key, or an empty choice list."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected {{low, high, scale}} or {{choices: [...]}}, got {spec!r}")
    if "choices" in spec:
        if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise ConfigError(f"{where}: choices must be a non-empty list and the only key, got {dict(spec)!r}")
        texts = tuple(dict.fromkeys(json.dumps(c, sort_keys=True, separators=(",", ":")) for c in spec["choices"]))
        return Knob(name, choices=texts)
    unknown = sorted(set(spec) - RANGE_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}: unknown key; a range takes {sorted(RANGE_KEYS)}, a choice list 'choices'"
        )
    bounds = []
    for key in ("low", "high"):
        value = spec.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}.{key}: expected a finite number, got {value!r}")
        bounds.append(float(value))
    low, high = bounds
    if not low < high:
        raise ConfigError(f"{where}: empty or inverted range [{low:g}, {high:g}]; low must be below high")
    scale = spec.get("scale", "linear")
    if scale not in SCALES:
        raise ConfigError(f"{where}.scale: expected one of {list(SCALES)}, got {scale!r}")
    if scale == "log" and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0, got {low:g}")
    step = spec.get("step")
    if step is not None and (
        scale == "log" or isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0
    ):
        raise ConfigError(f"{where}.step: expected a positive number on a linear scale, got {step!r}")
    return Knob(name, low, high, scale == "log", None if step is None else float(step))


@dataclass(frozen=True)
class SearchSpace:
    """The searched knobs (``KNOBS``) and term options (``term.<key>``), in a fixed order."""

    knobs: tuple[Knob, ...]

    @classmethod
    def from_config(
        cls, space: Mapping[str, Any] | None, term_options: list[str], where: str = "search.space"
    ) -> SearchSpace:
        """The space of ``space`` (unset knobs are ``None``); ``term_options``: the keys the
        guidance term lets the sweep vary. Errors name the key."""
        space = dict(space or {})
        unknown = sorted(set(space) - {*KNOBS, "term"})
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown knob; search one of {[*KNOBS, 'term.<option>']}")
        knobs = [_knob(k, space[k], f"{where}.{k}") for k in KNOBS if space.get(k) is not None]
        for key, spec in (space.get("term") or {}).items():
            if key not in term_options:
                raise ConfigError(f"{where}.term.{key}: not an option of this guidance term; valid: {term_options}")
            knobs.append(_knob(f"term.{key}", spec, f"{where}.term.{key}"))
        found = {k.name: k for k in knobs}
        time_ = found.get("guide_time")
        if time_ is not None and time_.choices is None and not (time_.low > 0 and time_.high <= 1):
            raise ConfigError(f"{where}.guide_time: a fraction of the run's last snapshot, within (0, 1]")
        lo, hi = found.get("sigma_lo"), found.get("sigma_hi")
        if lo is not None and hi is not None and lo.choices is None and hi.choices is None and lo.high > hi.low:
            raise ConfigError(
                f"{where}.sigma_lo: its range [{lo.low:g}, {lo.high:g}] must lie below "
                f"sigma_hi's [{hi.low:g}, {hi.high:g}] so that every interval is (lo, hi] with lo < hi"
            )
        if not knobs:
            raise ConfigError(
                f"{where}: nothing to search; give a range for at least one of {[*KNOBS, 'term.<option>']}"
            )
        return cls(tuple(knobs))

    @property
    def names(self) -> list[str]:
        return [k.name for k in self.knobs]

    def suggest(self, trial: Any) -> dict[str, Any]:
        """``{name: value}`` of every knob for ``trial``."""
        return {k.name: k.suggest(trial) for k in self.knobs}

    def decode(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's stored ``params`` as settings (choices decoded)."""
        return {k.name: k.decode(params[k.name]) for k in self.knobs if k.name in params}
