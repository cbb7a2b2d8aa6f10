"""Typed settings: frozen dataclasses validated once, each error one line naming the config key.

The settings classes (``autoguide.train.recipe.TrainSettings``,
``autoguide.sample.sampler_settings.SamplerSettings``, the network configs of
``autoguide.nets.architectures``) are the schemas of their config nodes: ``autoguide.apps.config_tree`` registers
them with Hydra, so composition already rejects unknown keys and wrong types, and
``from_mapping`` turns a composed node (or a model card's JSON) into the object the library
takes, running the range checks of its ``__post_init__``. This module holds what they share.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from autoguide.core.units import KIMG

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting that cannot be used; the message is one line naming the config key."""


def number(
    value: Any,
    key: str,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    expected: str | None = None,
) -> float:
    """``value`` as a float within the bounds, else ``ConfigError`` naming ``key``.

    ``expected`` replaces the generated description of the range in the message."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        if expected is None:
            lo, hi = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open else "]")
            expected = f"a number in {lo}, {hi}"
        raise ConfigError(f"{key}={value!r}: expected {expected}")
    return float(value)


def positive_int(value: Any, key: str, expected: str = "a positive integer") -> int:
    """``value`` as an int > 0, else ``ConfigError`` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key}={value!r}: expected {expected}")
    return value


def choice(value: Any, key: str, options: Sequence[str]) -> str:
    """``value`` if it is one of ``options``, else ``ConfigError`` listing them."""
    if value not in options:
        raise ConfigError(f"{key}={value!r}: expected one of {list(options)}")
    return value


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _nested_class(annotation: Any) -> type | None:
    """The settings dataclass inside ``annotation`` (``X`` or ``X | None``), if any."""
    options = typing.get_args(annotation) or (annotation,)
    found = [a for a in options if isinstance(a, type) and dataclasses.is_dataclass(a)]
    return found[0] if found else None


def from_mapping(cls: type[T], values: Mapping[str, Any], where: str, context: str = "") -> T:
    """Build the settings dataclass ``cls`` from a plain mapping (a composed config node,
    ``OmegaConf.to_container``'d, or JSON). Unknown and missing keys are ``ConfigError``s naming
    ``<where>.<key>`` (``<key>`` for ``where=""``, a primary config); nested settings dataclasses are
    built the same way; ``__post_init__`` then checks the values. ``context`` follows the unknown
    keys in that message."""
    prefix = f"{where}." if where else ""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping of settings, got {values!r}")
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{where}: {cls!r} is not a settings dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {unknown}{context}; valid keys: {sorted(fields)}")
    missing = sorted(
        name
        for name, f in fields.items()
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ConfigError(f"{prefix}{missing[0]} is not set (required: {missing})")
    types = _field_types(cls)
    kwargs = {}
    for name, value in values.items():
        nested = _nested_class(types.get(name))
        if nested is not None and isinstance(value, Mapping):
            value = from_mapping(nested, value, f"{prefix}{name}")
        elif isinstance(value, str) and value == "???":
            raise ConfigError(f"{prefix}{name} is not set (??? in the config)")
        kwargs[name] = value
    return cls(**kwargs)


def plain(value: Any) -> Any:
    """``value`` as plain JSON-ready data: settings dataclasses and mappings (OmegaConf's too,
    interpolations resolved) become dicts, sequences other than strings (tuples, OmegaConf
    lists) lists; anything else unchanged. The one plain conversion of the package."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(v) for v in value]
    return value


def to_dict(settings: Any) -> dict[str, Any]:
    """A settings dataclass as plain JSON-ready data (``plain``)."""
    return plain(settings)


def interval_images(kimg: Any, key: str) -> int:
    """An interval given in kimg (``autoguide.core.units.KIMG`` images) as a whole number of images,
    at least 1; ``ConfigError`` naming ``key`` unless it is a positive number."""
    return max(1, round(number(kimg, key, 0, low_open=True, expected="a positive number of kimg") * KIMG))
