"""``pair=<pair.json>`` in the generation config: sample with a SIMS pair.

A SIMS ``pair.json`` (``autoguide.io.sims_pair``, written by ``autoguide-sims``) names a base
model and its negative. ``pair=`` makes the base the positive model and the negative the model
of a ``guidance=sims`` term, so that ``D = D_base + omega (D_base - D_negative)``
(Alemohammad et al. 2024; Karras ``w = 1 + omega``):

    autoguide-generate pair=runs/sims/iter-00/register/b4096-std0.100/pair.json guidance.omega=1.5
    autoguide-eval pair=<pair.json> guidance=sims guidance.omega=0.5 metrics=mnist

The pair's model files are checked against the SHA-256 hashes it recorded. ``omega`` comes from
``guidance.omega`` when ``guidance=sims`` is given, else 1.0.
"""

from __future__ import annotations

from autoguide.core.typed_settings import ConfigError
from autoguide.io.sims_pair import read_pair
from autoguide.sample.guidance_spec import GuidanceSettings

DEFAULT_OMEGA = 1.0


def pair_sampling(pair_path: str, model: str | None, guidance: GuidanceSettings) -> tuple[str, GuidanceSettings]:
    """``(model file, guidance)`` that sample with the pair at ``pair_path``.

    ``model`` and ``guidance`` are what the config says besides: a ``model`` other than the
    pair's base, and guidance other than SIMS or the default (one autoguidance term without
    effect, ``TermSettings.active``), are refused, naming the key."""
    pair = read_pair(pair_path, check_hashes=True)
    if model is not None and str(model) != str(pair.positive):
        raise ConfigError(f"pair={pair_path} sets the model to its base {pair.positive}; remove model={model}")
    term = guidance.terms[0] if len(guidance.terms) == 1 and not guidance.several else None
    if term is not None and term.kind == "sims":
        omega, interval = float(term.options["omega"]), term.options.get("interval")
    elif term is not None and term.kind == "autoguidance" and not term.active:
        omega, interval = DEFAULT_OMEGA, None
    else:
        kind = term.kind if term is not None else None
        raise ConfigError(
            f"pair={pair_path} samples with guidance=sims; got guidance.kind={kind!r} "
            "(use guidance=sims guidance.omega=...)"
        )
    return str(pair.positive), GuidanceSettings.from_mapping(pair.guidance(omega, interval))
