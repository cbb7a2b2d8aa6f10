"""Guidance terms from configuration mappings (the ``guidance`` entry of the generation config).

A term mapping has ``kind`` (``none``, ``autoguidance``, ``sims``, ``cfg``, ``icg``, ``tsg``,
``pag``, ``seg``, ``sag``, ``layer_skip``, ``dropout``) and the keyword arguments of that class
in ``autoguide.sample.guidance`` (``weight``, ``interval``, ``blocks``, the update rule options
``apg``, ``zero_star``, ``rescale``, ``cap``, ``tcfg``, ``fdg``, ``schedule``, ``fbg``,
``mambo``); a model-file path
under ``model`` stands for the term's network (autoguidance/sims: the guide, required;
cfg: an optional separate unconditional model). Several terms: ``{terms: [term, ...]}``.
A term that cannot change the result (``weight 1`` without FBG, SIMS ``omega 0``) is dropped
before its model is loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from autoguide.sample.guidance import TERMS, GuidanceTerm

MODEL_FIELDS = {"autoguidance": "guide", "sims": "guide", "cfg": "unconditional"}
REQUIRED_MODEL = {"autoguidance", "sims"}


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain lists/dicts (without importing OmegaConf here)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


def term_keys(kind: str) -> list[str]:
    """The config keys a term of ``kind`` accepts."""
    cls = TERMS[kind]
    keys = [f.name for f in dataclasses.fields(cls) if f.init and f.name != MODEL_FIELDS.get(kind)]
    return ["kind", *keys, *(["model"] if kind in MODEL_FIELDS else [])]


def build_term(
    cfg: Mapping[str, Any], load_model: Callable[[str], nn.Module], where: str = "guidance"
) -> GuidanceTerm | None:
    """One term from its mapping; ``None`` for ``kind: none`` and for terms without effect."""
    cfg = _plain(cfg)
    kind = cfg.get("kind")
    if kind == "none":
        return None
    if kind not in TERMS:
        raise ValueError(f"{where}.kind={kind!r}: expected one of none, {', '.join(TERMS)}")
    unknown = sorted(set(cfg) - set(term_keys(kind)))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for kind={kind}; valid keys: {term_keys(kind)}")
    kwargs = {k: v for k, v in cfg.items() if k not in ("kind", "model")}
    if kwargs.get("interval") is not None:
        kwargs["interval"] = tuple(kwargs["interval"])
    if ("omega" in kwargs and kwargs["omega"] == 0) or (kwargs.get("weight") == 1 and kwargs.get("fbg") is None):
        return None
    path = cfg.get("model")
    if kind in MODEL_FIELDS and path is not None:
        kwargs[MODEL_FIELDS[kind]] = load_model(str(path))
    elif kind in REQUIRED_MODEL:
        raise ValueError(
            f"{where}: kind={kind} needs a model file ({where}.model=<file>; for autoguidance guide=<file>)"
        )
    try:
        return TERMS[kind](**kwargs)
    except TypeError as err:
        raise ValueError(f"{where}: {err}; valid keys for kind={kind}: {term_keys(kind)}") from err


def build_guidance(cfg: Mapping[str, Any] | None, load_model: Callable[[str], nn.Module]) -> list[GuidanceTerm]:
    """The terms of a ``guidance`` config: a single term mapping or ``{terms: [...]}``."""
    if cfg is None:
        return []
    cfg = _plain(cfg)
    if "terms" in cfg:
        if set(cfg) != {"terms"}:
            raise ValueError(f"guidance: with 'terms', no other keys are allowed; got {sorted(cfg)}")
        built = [build_term(term, load_model, f"guidance.terms[{i}]") for i, term in enumerate(cfg["terms"])]
    else:
        built = [build_term(cfg, load_model)]
    return [term for term in built if term is not None]
