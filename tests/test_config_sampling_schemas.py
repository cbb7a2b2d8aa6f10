"""The typed primary configs of the sampling apps (``autoguide.apps.sampling_configs``): what
they read from the composed YAML, and that an unknown key, a value of the wrong type or one out
of range is refused in one line naming the key; the one "weight 1 is off" rule; ``plain``."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from omegaconf import OmegaConf

from autoguide.apps.config_tree import compose
from autoguide.apps.hydra_app import compose_or_refuse
from autoguide.apps.sampling_configs import (
    PRIMARY_CONFIGS,
    EvalConfig,
    GenerateConfig,
    SimsCompareConfig,
    SweepConfig,
    read_config,
)
from autoguide.core.typed_settings import ConfigError, plain
from autoguide.eval.evaluator import FdInfinitySettings
from autoguide.sample.guidance import changes_output
from autoguide.sample.guidance_spec import GuidanceSettings, TermSettings, build_term


def settings(name: str, *overrides: str):
    """The typed config of ``conf/<name>.yaml`` with ``overrides``, composed as the apps do."""
    cfg = compose_or_refuse(name, list(overrides))
    assert cfg is not None
    return read_config(PRIMARY_CONFIGS[name], cfg)


def test_each_primary_config_composes_onto_its_schema():
    for name, cls in PRIMARY_CONFIGS.items():
        assert OmegaConf.get_type(compose(name)) is cls


def test_generate_reads_its_config_into_typed_settings():
    got = settings("generate", "model=m.safetensors", "seeds='3-5,9'", "guidance.weight=2.2", "guide=g.safetensors")
    assert isinstance(got, GenerateConfig)
    assert got.model_file() == "m.safetensors" and got.seeds == (3, 4, 5, 9)
    (term,) = got.guidance_settings.terms
    assert (term.kind, term.model, term.weight, term.active) == ("autoguidance", "g.safetensors", 2.2, True)
    assert got.output.dir == "generated" and got.output.formats == ("grid",)
    generation = got.generation()
    assert (generation.batch_size, generation.precision, generation.sampler.num_steps) == (64, "fp32", 32)
    two = settings("generate", "model=m", "guidance=autoguidance_cfg").guidance_settings
    assert two.several and [t.kind for t in two.terms] == ["autoguidance", "cfg"]
    composed = compose("generate", ["guidance=autoguidance_cfg"]).guidance
    assert two.to_dict() == OmegaConf.to_container(composed, resolve=True)


def test_eval_protocol_and_sweep_settings_come_from_the_yaml():
    edm2 = settings("eval", "model=m", "protocol=edm2", "metrics.reference=img512.pkl")
    assert isinstance(edm2, EvalConfig)
    assert len(edm2.seeds) == 50_000 and edm2.plan().seed_sets == 3 and edm2.shards.images == 2500
    metrics = edm2.metrics_settings
    assert metrics.features == ("inception", "dinov2") and metrics.reference_is_file
    assert metrics.names() == ["fd_inception", "fd_dinov2"]  # a statistics file: no precision/recall
    toy = settings("eval", "model=m", "metrics=toy2d", "+metrics.fd_infinity={points:3,min_fraction:0.5}")
    assert toy.metrics_settings.toy is not None and toy.metrics_settings.toy.classes == "A"
    assert toy.metrics_settings.fd_infinity == FdInfinitySettings(points=3, min_fraction=0.5)

    sweep = settings("sweep", "main.run=r", "guides.runs=[g]", "grid.weight=[1,2]", "grid.interval=[null,[0.5,5]]")
    assert isinstance(sweep, SweepConfig) and sweep.search is None
    grid = sweep.sweep_settings()
    assert (grid.main_run, grid.guide_runs, grid.weight) == ("r", ("g",), (1.0, 2.0))
    assert grid.interval == (None, (0.5, 5.0)) and grid.guide_times == (None,)
    search = settings("sweep", "main.run=r", "search=gp", "search.budget=900", "seeds=0-99", "output.dir=o")
    assert search.search is not None
    study = search.search.settings(len(search.seeds), search.output.dir)
    assert (study.sampler, study.budget, study.min_images, study.max_images) == ("gp", 900, 100, 100)
    assert study.storage.startswith("sqlite:///") and study.storage.endswith("o/study.db")

    compare = settings("sims_compare", "sims_dir=runs/s", "omega=[0.5,1]", "iterations=[0]")
    assert isinstance(compare, SimsCompareConfig)
    assert (compare.sims_dir, compare.omega, compare.iterations) == ("runs/s", [0.5, 1.0], [0])


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        # unknown keys: refused by composition (the schema), or by the free-form node's reader
        ("generate", ["modell=m"], r"modell"),
        ("eval", ["model=m", "shards.image=3"], r"shards\.image"),
        ("sweep", ["main.run=r", "grid.wieght=[1]"], r"grid\.wieght"),
        (
            "generate",
            ["model=m", "+guidance.wieght=2"],
            r"^guidance: unknown key\(s\) \['wieght'\] for kind=autoguidance",
        ),
        ("eval", ["model=m", "+metrics.kk=1"], r"^metrics: unknown key\(s\) \['kk'\]"),
        ("eval", ["model=m", "metrics.fd_infinity={points:3}"], r"^metrics\.fd_infinity\.min_fraction is not set"),
        # wrong types
        ("generate", ["model=m", "batch_size=many"], r"batch_size=many"),
        ("eval", ["model=m", "seed_sets=two"], r"seed_sets=two"),
        ("sweep", ["main.run=r", "grid.weight=[heavy]"], r"grid\.weight"),
        ("sims_compare", ["sims_dir=s", "omega=[big]"], r"omega"),
        ("sweep", ["main.run=r", "search=tpe", "search.rungs.factor=x"], r"search\.rungs\.factor"),
        # values out of range
        ("generate", ["model=m", "batch_size=0"], r"^batch_size=0: expected a positive integer"),
        ("generate", ["model=m", "precision=fp8"], r"^precision='fp8': expected one of"),
        ("generate", ["model=m", "output.formats=[jpg]"], r"^output\.formats: unknown format\(s\) \['jpg'\]"),
        ("generate", ["model=m", "seeds=9-3"], r"^seeds: .*9-3"),
        ("generate", ["model=m", "guidance.kind=autoguide"], r"^guidance\.kind='autoguide': expected one of none"),
        ("eval", ["model=m", "seed_sets=0"], r"^seed_sets=0: expected a positive integer"),
        ("eval", ["model=m", "chunk_images=-5"], r"^chunk_images=-5"),
        ("eval", ["model=m", "preview_images=-1"], r"^preview_images=-1: expected an integer >= 0"),
        ("eval", ["model=m", "shards.images=0"], r"^shards\.images=0"),
        ("eval", ["model=m", "metrics.k=0"], r"^metrics\.k=0: expected a positive integer"),
        ("eval", ["model=m", "metrics.fd_infinity={points:1,min_fraction:0.5}"], r"^metrics\.fd_infinity: points"),
        ("eval", ["model=m", "metrics.features=[]"], r"^metrics: nothing to measure"),
        ("sweep", ["main.run=r", "reconstruct.batch=0"], r"^reconstruct\.batch=0"),
        ("sweep", ["main.run=r", "reconstruct.max_error=0"], r"^reconstruct\.max_error=0"),
        ("sims_compare", [], r"^sims_dir is not set"),
    ],
)
def test_a_bad_setting_is_one_error_naming_its_key(name, overrides, message):
    with pytest.raises(ConfigError, match=message) as caught:
        settings(name, *overrides)
    assert "\n" not in str(caught.value)


def test_the_model_and_the_sweep_axes_are_checked_where_they_are_used():
    with pytest.raises(ConfigError, match=r"^model is not set; give model=<file> \(or pair=<pair\.json>\)"):
        settings("generate").model_file()
    with pytest.raises(ConfigError, match=r"^main: set exactly one of main\.run"):
        settings("sweep").sweep_settings()
    with pytest.raises(ConfigError, match=r"^search\.budget: give the study's budget"):
        found = settings("sweep", "main.run=r", "search=tpe").search
        assert found is not None
        found.settings(100, "o")


@pytest.mark.parametrize(
    ("mapping", "active"),
    [
        ({"kind": "autoguidance", "weight": 1.0, "model": "g"}, False),
        ({"kind": "autoguidance", "weight": 1.0, "fbg": {"pi": 0.5}, "model": "g"}, True),  # FBG adds its weight
        ({"kind": "autoguidance", "weight": 2.0, "model": "g"}, True),
        ({"kind": "cfg", "weight": 1}, False),
        ({"kind": "cfg", "weight": 0.5}, True),  # w < 1 pushes towards the negative: not off
        ({"kind": "sims", "omega": 0.0, "model": "s"}, False),  # w = 1 + omega
        ({"kind": "sims", "omega": 0.25, "model": "s"}, True),
        ({"kind": "none"}, False),
    ],
)
def test_weight_one_is_off_by_one_rule(mapping, active):
    """``TermSettings.active`` (the config side) and ``GuidanceTerm.guides`` (the built term)
    agree with ``changes_output``: ``w != 1`` or FBG, where ``D = D_neg + w (D_pos - D_neg)``
    is ``D_pos`` at ``w = 1``."""
    term = TermSettings.from_mapping(mapping)
    weight = 1.0 + mapping["omega"] if "omega" in mapping else mapping.get("weight", 1.0)
    assert term.active == active == (mapping["kind"] != "none" and changes_output(weight, mapping.get("fbg")))
    built = build_term(term, lambda path: _Guide())
    assert (built is not None) == active
    if built is not None:
        assert built.guides and built.weight == pytest.approx(weight)


class _Guide:
    """A stand-in guide network: the terms only hold it."""


def test_guidance_settings_round_trip_and_refusals():
    node = {"terms": [{"kind": "cfg", "weight": 1.5, "interval": [0.1, 2.0]}, {"kind": "icg", "weight": 1.2}]}
    read = GuidanceSettings.from_mapping(node)
    assert read.terms[0].options["interval"] == (0.1, 2.0)
    assert read.to_dict() == {
        "terms": [{"kind": "cfg", "weight": 1.5, "interval": [0.1, 2.0], "model": None}, {"kind": "icg", "weight": 1.2}]
    }
    assert GuidanceSettings.from_mapping(None).terms == ()
    with pytest.raises(ConfigError, match=r"^guidance: with 'terms', no other keys are allowed"):
        GuidanceSettings.from_mapping({**node, "kind": "cfg"})
    with pytest.raises(ConfigError, match=r"^guidance\.terms\[1\]: unknown key\(s\) \['blocks'\] for kind=icg"):
        GuidanceSettings.from_mapping({"terms": [{"kind": "cfg", "weight": 2}, {"kind": "icg", "blocks": None}]})


def test_plain_is_the_one_conversion_to_plain_data():
    @dataclass(frozen=True)
    class Inner:
        values: tuple[int, ...] = (1, 2)

    @dataclass(frozen=True)
    class Outer:
        inner: Inner
        name: str = "x"

    cfg = OmegaConf.create({"a": [1, {"b": "${c}"}], "c": 3, "t": "text"})
    assert plain(cfg) == {"a": [1, {"b": 3}], "c": 3, "t": "text"}
    assert plain(Outer(Inner())) == {"inner": {"values": [1, 2]}, "name": "x"}
    assert plain(("a", ("b",))) == ["a", ["b"]] and plain("ab") == "ab" and plain(None) is None
