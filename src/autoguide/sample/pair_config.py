"""``pair=<pair.json>`` in the generation config: sample with a SIMS pair.

A SIMS ``pair.json`` (``autoguide.io.sims_pair``, written by ``autoguide-sims``) names a base
model and its negative. ``pair=`` makes the base the positive model (``model``) and the negative
the model of a ``guidance=sims`` term, so that
``D = D_base + omega (D_base - D_negative)`` (Alemohammad et al. 2024; Karras ``w = 1 + omega``):

    autoguide-generate pair=runs/sims/iter-00/register/b4096-std0.100/pair.json guidance.omega=1.5
    autoguide-eval pair=<pair.json> guidance=sims guidance.omega=0.5 metrics=mnist

The pair's model files are checked against the SHA-256 hashes it recorded. ``omega`` comes from
``guidance.omega`` when ``guidance=sims`` is given, else 1.0.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

from autoguide.io.sims_pair import read_pair

DEFAULT_OMEGA = 1.0


def apply_pair(cfg: DictConfig) -> None:
    """Set ``cfg.model`` and ``cfg.guidance`` from ``cfg.pair`` (no-op when it is null).

    Refuses a ``model=`` that is not the pair's base and any guidance other than SIMS or the
    default (autoguidance at weight 1, i.e. none), naming the key."""
    if cfg.get("pair") is None:
        return
    pair = read_pair(str(cfg.pair), check_hashes=True)
    if not OmegaConf.is_missing(cfg, "model") and cfg.model is not None and str(cfg.model) != str(pair.positive):
        raise ValueError(f"pair={cfg.pair} sets the model to its base {pair.positive}; remove model={cfg.model}")
    guidance = cfg.guidance
    kind = guidance.get("kind")
    if kind == "sims":
        omega = float(guidance.omega)
        interval = OmegaConf.to_container(guidance.interval) if guidance.get("interval") is not None else None
    elif kind == "autoguidance" and float(guidance.get("weight", 1.0)) == 1.0:
        omega, interval = DEFAULT_OMEGA, None
    else:
        raise ValueError(f"pair={cfg.pair} samples with guidance=sims; got guidance.kind={kind!r} (use guidance=sims guidance.omega=...)")
    with open_dict(cfg):
        cfg.model = str(pair.positive)
        cfg.guidance = OmegaConf.create(pair.guidance(omega, interval))
