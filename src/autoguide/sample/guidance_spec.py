"""Guidance terms as typed settings (the ``guidance`` node of the generation config), and the
terms built from them.

A term has ``kind`` (``none``, ``autoguidance``, ``sims``, ``cfg``, ``icg``, ``tsg``, ``pag``,
``seg``, ``sag``, ``layer_skip``, ``dropout``) and the keyword arguments of that class in
``autoguide.sample.guidance`` (``weight``, ``interval``, ``blocks``, the update rule options
``apg``, ``zero_star``, ``rescale``, ``cap``, ``tcfg``, ``fdg``, ``schedule``, ``fbg``,
``mambo``); a model-file path under ``model`` stands for the term's network (autoguidance/sims:
the guide, required; cfg: an optional separate unconditional model). Several terms:
``{terms: [term, ...]}``. ``GuidanceSettings.from_mapping`` reads that node once (unknown keys
and kinds are refused naming the key); ``build_guidance`` turns the settings into terms. A term
that cannot change the result (``autoguide.sample.guidance.changes_output``: weight 1 without
FBG, SIMS ``omega 0``) is dropped before its model is loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from autoguide.core.typed_settings import ConfigError, plain
from autoguide.sample.guidance import TERMS, GuidanceTerm, changes_output

MODEL_FIELDS = {"autoguidance": "guide", "sims": "guide", "cfg": "unconditional"}
REQUIRED_MODEL = {"autoguidance", "sims"}
NO_GUIDANCE = "none"


def term_keys(kind: str) -> list[str]:
    """The config keys a term of ``kind`` accepts."""
    cls = TERMS[kind]
    keys = [f.name for f in dataclasses.fields(cls) if f.init and f.name != MODEL_FIELDS.get(kind)]
    return ["kind", *keys, *(["model"] if kind in MODEL_FIELDS else [])]


@dataclass(frozen=True, kw_only=True)
class TermSettings:
    """One guidance term as configured: its ``kind``, the keyword arguments of its class
    (``options``: weight, interval, blocks, update-rule options ...) and the ``model`` file of
    its network; ``where`` is its config key, for messages."""

    kind: str
    options: Mapping[str, Any] = field(default_factory=dict)
    model: str | None = None
    where: str = "guidance"

    def __post_init__(self) -> None:
        if self.kind == NO_GUIDANCE:
            if self.options or self.model is not None:
                raise ConfigError(f"{self.where}: kind=none takes no other keys; got {sorted(self.options)}")
            return
        if self.kind not in TERMS:
            raise ConfigError(f"{self.where}.kind={self.kind!r}: expected one of none, {', '.join(TERMS)}")
        given = {"kind", *self.options, *(["model"] if self.model is not None else [])}
        unknown = sorted(given - set(term_keys(self.kind)))
        if unknown:
            raise ConfigError(
                f"{self.where}: unknown key(s) {unknown} for kind={self.kind}; valid keys: {term_keys(self.kind)}"
            )
        options = plain(self.options)
        if options.get("interval") is not None:
            options["interval"] = tuple(options["interval"])
        object.__setattr__(self, "options", options)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str = "guidance") -> TermSettings:
        """The term of a config mapping ``{kind, model, <options>}``."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: expected a guidance term {{kind: ..., ...}}, got {values!r}")
        values = plain(values)
        options = {k: v for k, v in values.items() if k not in ("kind", "model")}
        model = values.get("model")
        unset = model is None or model == "???"  # ???: not given (guidance=sims before pair= sets it)
        return cls(kind=str(values.get("kind")), options=options, model=None if unset else str(model), where=where)

    @property
    def weight(self) -> float | None:
        """The Karras weight ``w`` (SIMS: ``1 + omega``); ``None`` if not given."""
        if "omega" in self.options:
            return 1.0 + float(self.options["omega"])
        weight = self.options.get("weight")
        return None if weight is None else float(weight)

    @property
    def active(self) -> bool:
        """Whether the term can change the result (``changes_output``); ``kind: none`` cannot."""
        return self.kind != NO_GUIDANCE and (
            self.weight is None or changes_output(self.weight, self.options.get("fbg"))
        )

    def to_dict(self) -> dict[str, Any]:
        """The term as its config mapping (plain data)."""
        model = {"model": self.model} if self.kind in MODEL_FIELDS else {}
        options = {k: list(v) if k == "interval" and v is not None else v for k, v in self.options.items()}
        return {"kind": self.kind, **options, **model}


@dataclass(frozen=True)
class GuidanceSettings:
    """The ``guidance`` node: one term, or several (``{terms: [...]}``, ``several``); no terms
    for ``guidance: null``."""

    terms: tuple[TermSettings, ...] = ()
    several: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> GuidanceSettings:
        """The settings of a ``guidance`` node: ``null``, one term mapping or ``{terms: [...]}``."""
        if values is None:
            return cls()
        if not isinstance(values, Mapping):
            raise ConfigError(f"guidance: expected a term {{kind: ..., ...}} or {{terms: [...]}}, got {values!r}")
        if "terms" not in values:
            return cls((TermSettings.from_mapping(values),))
        if set(values) != {"terms"}:
            raise ConfigError(f"guidance: with 'terms', no other keys are allowed; got {sorted(values)}")
        terms = values["terms"] or []
        return cls(tuple(TermSettings.from_mapping(t, f"guidance.terms[{i}]") for i, t in enumerate(terms)), True)

    def to_dict(self) -> dict[str, Any] | None:
        """The node as plain data, in the shape it was given."""
        if self.several:
            return {"terms": [t.to_dict() for t in self.terms]}
        return self.terms[0].to_dict() if self.terms else None


def build_term(term: TermSettings, load_model: Callable[[str], nn.Module]) -> GuidanceTerm | None:
    """The term ``term`` describes, its model loaded with ``load_model``; ``None`` for
    ``kind: none`` and for terms without effect (``TermSettings.active``)."""
    if not term.active:
        return None
    kwargs = dict(term.options)
    if term.model is not None:
        kwargs[MODEL_FIELDS[term.kind]] = load_model(term.model)
    elif term.kind in REQUIRED_MODEL:
        raise ConfigError(
            f"{term.where}: kind={term.kind} needs a model file "
            f"({term.where}.model=<file>; for autoguidance guide=<file>)"
        )
    try:
        return TERMS[term.kind](**kwargs)
    except TypeError as err:
        raise ConfigError(f"{term.where}: {err}; valid keys for kind={term.kind}: {term_keys(term.kind)}") from err


def build_guidance(settings: GuidanceSettings, load_model: Callable[[str], nn.Module]) -> list[GuidanceTerm]:
    """The active terms of ``settings``, their models loaded with ``load_model``."""
    built = [build_term(term, load_model) for term in settings.terms]
    return [term for term in built if term is not None]
