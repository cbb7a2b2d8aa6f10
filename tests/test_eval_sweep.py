"""``autoguide-sweep`` end to end on tiny toy runs built here (post-hoc EMA snapshots written
with ``autoguide.io.save_model``): the grid, the EMA cache, the best setting and the plots."""

import csv
import json

import pytest
import torch

from autoguide.apps.config_tree import compose as compose_config
from autoguide.apps.evaluate import run as evaluate
from autoguide.apps.sweep import run as sweep
from autoguide.ema.posthoc import PosthocEMA, parse_time
from autoguide.ema.snapshots import Snapshot, snapshot_filename, write_index
from autoguide.io import read_card, save_model
from autoguide.nets import build_network

TIMES = (1000, 2000, 3000, 4000)
STDS = (0.05, 0.10)


def make_run(root, width, seed):
    """A run folder with phema/ snapshots of a tiny 2D MLP (weights drift between snapshots)."""
    config = {"arch": "mlp", "img_channels": 2, "label_dim": 2, "width": width, "depth": 1, "sigma_data": 0.5}
    torch.manual_seed(seed)
    net = build_network(config)
    entries = []
    for nimg in TIMES:
        for std in STDS:
            with torch.no_grad():
                for name, p in net.named_parameters():
                    p.copy_(torch.ones_like(p) if name.endswith("gain") else p + 0.05 * torch.randn_like(p))
            path = root / "phema" / snapshot_filename(nimg, std)
            save_model(path, net, {"network": config, "nimg": nimg, "ema_std": std, "source": "test"})
            entries.append(Snapshot(path, nimg, std))
    write_index(root / "phema", config, [n for n, _ in net.named_buffers()], entries)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return make_run(root / "main", 16, 0), make_run(root / "guide", 8, 1)


def sweep_cfg(runs, out, *extra):
    main, guide = runs
    return compose_config(
        "sweep",
        [
            f"main.run={main}",
            f"guides.runs=[{guide}]",
            "guides.times=[0.5,null]",
            "grid.weight=[1,2.5]",
            "grid.main_std=[0.05,0.1]",
            "grid.guide_std=[0.1]",
            "grid.interval=[null,[0.5,80]]",
            "metrics=toy2d",
            "metrics.toy.num_density_samples=2000",
            "select=toy_logp",
            "seeds=0-79",
            "sampler.num_steps=3",
            "class_labels=0",
            "device=cpu",
            f"output.dir={out}",
            *extra,
        ],
    )


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_parse_time():
    assert parse_time(None) == (None, None)
    assert parse_time(0.0625) == (None, 0.0625) and parse_time("1/16") == (None, 0.0625)
    assert parse_time(1) == (None, 1.0) and parse_time(3000) == (3000, None)
    for bad in (0, -5, 2.5, "x"):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_sweep_end_to_end(runs, tmp_path, monkeypatch):
    main, guide = runs
    best = sweep(sweep_cfg(runs, tmp_path / "a"))
    rows = read_rows(tmp_path / "a" / "sweep.csv")
    assert len(rows) == 2 * 2 * 1 * 2 * 2  # main std x guide time x guide std x interval x weight
    assert {r["guide"] for r in rows} == {"guide@2000", "guide@4000"}  # 0.5 of the last snapshot, and the last

    # EMAs were reconstructed once per (run, std, nimg), into <run>/reconstructed
    cards = {
        (p.parent.parent.name, read_card(p)["nimg"], read_card(p)["ema_std"]) for p in (main.glob("reconstructed/*"))
    }
    cards |= {
        (p.parent.parent.name, read_card(p)["nimg"], read_card(p)["ema_std"]) for p in (guide.glob("reconstructed/*"))
    }
    assert cards == {("main", 4000, 0.05), ("main", 4000, 0.1), ("guide", 2000, 0.1), ("guide", 4000, 0.1)}

    # weight 1 is no guidance: one value per main EMA, whatever the guide or interval
    for std in ("0.05", "0.1"):
        unguided = {r["toy_logp"] for r in rows if r["weight"] == "1.0" and r["main_std"] == std}
        assert len(unguided) == 1
    assert len({r["toy_logp"] for r in rows if r["weight"] == "2.5"}) > 1

    # best = the highest toy_logp of the CSV, and a guided row equals a direct autoguide-eval run
    top = max(rows, key=lambda r: float(r["toy_logp"]))
    assert best["toy_logp"] == pytest.approx(float(top["toy_logp"]))
    assert json.loads((tmp_path / "a" / "best.json").read_text())["toy_logp"] == pytest.approx(best["toy_logp"])
    row = next(r for r in rows if r["weight"] == "2.5" and r["interval_lo"] == "0.5" and r["guide"] == "guide@2000")
    direct = evaluate(
        compose_config(
            "eval",
            [
                f"model={row['main_model']}",
                f"guide={row['guide_model']}",
                "guidance.weight=2.5",
                "guidance.interval=[0.5,80]",
                "metrics=toy2d",
                "metrics.toy.num_density_samples=2000",
                "seeds=0-79",
                "sampler.num_steps=3",
                "class_labels=0",
                "device=cpu",
                f"output.dir={tmp_path / 'direct'}",
                "preview_images=0",
            ],
        )
    )
    assert float(row["toy_logp"]) == pytest.approx(direct["metrics"]["toy_logp"], rel=1e-9)

    for name in ("weight.png", "ema.png"):
        assert (tmp_path / "a" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second sweep reuses the reconstructions: rebuilding would fail here
    stamps = {p: p.stat().st_mtime_ns for p in [*main.glob("reconstructed/*"), *guide.glob("reconstructed/*")]}
    monkeypatch.setattr(PosthocEMA, "write", lambda *a, **k: pytest.fail("rebuilt a cached EMA"))
    again = sweep(sweep_cfg(runs, tmp_path / "b"))
    assert again["toy_logp"] == pytest.approx(best["toy_logp"])
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}


def test_sweep_without_guides_varies_weight_of_configured_guidance(runs, tmp_path):
    cfg = sweep_cfg(runs, tmp_path, "guidance=cfg", "guides.runs=[]", "grid.interval=[null]", "grid.main_std=[0.1]")
    sweep(cfg)
    rows = read_rows(tmp_path / "sweep.csv")
    assert [(r["guide"], r["weight"], r["guide_model"]) for r in rows] == [("cfg", "1.0", ""), ("cfg", "2.5", "")]
    assert rows[0]["toy_logp"] != rows[1]["toy_logp"]


def test_sweep_errors(runs, tmp_path):
    with pytest.raises(ValueError, match="select='fd_mnist' is not measured"):
        sweep(sweep_cfg(runs, tmp_path, "select=fd_mnist"))
    with pytest.raises(FileNotFoundError, match="no post-hoc EMA snapshots"):
        PosthocEMA(tmp_path).nimg(None)


def test_sweep_with_a_fixed_main_model(runs, tmp_path):
    """``main.model``: one main file (an imported release) against the guide runs' EMAs."""
    main, _guide = runs
    (main_file,) = PosthocEMA(main).write([0.07], out_dir=tmp_path / "main")
    best = sweep(sweep_cfg(runs, tmp_path / "out", "main.run=null", f"main.model={main_file}", "grid.interval=[null]"))
    rows = read_rows(tmp_path / "out" / "sweep.csv")
    assert {(r["main_model"], r["main_std"], r["main_nimg"]) for r in rows} == {(str(main_file), "0.07", "4000")}
    assert len(rows) == 2 * 2 and best["main_model"] == str(main_file)  # guide time x weight
    with pytest.raises(ValueError, match=r"set exactly one of main.run"):
        sweep(sweep_cfg(runs, tmp_path / "both", f"main.model={main_file}"))


def test_sweep_over_term_options_and_a_guide_from_the_main_run(runs, tmp_path):
    """``grid.term``: dropout rate x APG on/off as a product (the ``variant`` column); a guide
    from the main run itself (a shorter EMA of an earlier snapshot)."""
    main, _ = runs
    cfg = sweep_cfg(
        runs,
        tmp_path / "dropout",
        "guidance=dropout",
        "guides.runs=[]",
        "grid.interval=[null]",
        "grid.main_std=[0.1]",
        "grid.weight=[1,2]",
        "grid.term={p:[0.2,0.5],apg:[null,{eta:0.0}]}",
    )
    sweep(cfg)
    rows = read_rows(tmp_path / "dropout" / "sweep.csv")
    variants = ["p=0.2 apg=null", 'p=0.2 apg={"eta":0.0}', "p=0.5 apg=null", 'p=0.5 apg={"eta":0.0}']
    assert [(r["variant"], r["weight"]) for r in rows] == [(v, w) for v in variants for w in ("1.0", "2.0")]
    assert len({r["toy_logp"] for r in rows if r["weight"] == "1.0"}) == 1  # unguided once
    assert len({r["toy_logp"] for r in rows if r["weight"] == "2.0"}) == 4  # every variant differs

    same_run = sweep(
        sweep_cfg(
            runs,
            tmp_path / "same",
            f"guides.runs=[{main}]",
            "guides.times=[0.5]",
            "grid.interval=[null]",
            "grid.main_std=[0.1]",
            "grid.guide_std=[0.05]",
            "grid.weight=[2]",
        )
    )
    assert same_run["guide"] == "main@2000" and same_run["guide_std"] == 0.05

    with pytest.raises(
        ValueError, match=r"grid.term.weight: not an option to sweep for guidance kind=dropout; valid: \[.*'p'"
    ):
        sweep(sweep_cfg(runs, tmp_path / "bad", "guidance=dropout", "guides.runs=[]", "grid.term={weight:[2]}"))
    with pytest.raises(ValueError, match=r"grid.term.q: not an option"):
        sweep(sweep_cfg(runs, tmp_path / "bad", "guidance=dropout", "guides.runs=[]", "grid.term={q:[2]}"))


def test_sweep_over_the_new_rules(runs, tmp_path):
    """``grid.term`` takes every new rule and option (on the toy's points: FDG needs images, so
    it is refused there with its key named)."""
    rules = (
        "{tcfg:[null,{space:eps}],schedule:[{shape:linear,start:0.5,end:1.0}],fbg:[{pi:0.5,temp:0.001,offset:-0.01}],"
        "mambo:[{alpha:1.0}],apg:[{eta:0.5,norm_dims:[1],momentum:call}],zero_star:[{space:flow,zero_steps:1}]}"
    )
    common = ["guides.times=[null]", "grid.interval=[null]", "grid.main_std=[0.1]", "grid.weight=[2]"]
    sweep(sweep_cfg(runs, tmp_path / "rules", *common, f"grid.term={rules}"))
    rows = read_rows(tmp_path / "rules" / "sweep.csv")
    assert len(rows) == 2 and rows[0]["toy_logp"] != rows[1]["toy_logp"]  # TCFG off / on
    assert rows[1]["variant"].startswith('tcfg={"space":"eps"} schedule={"shape":"linear"')
    with pytest.raises(ValueError, match=r"fdg.weights: needs images \[N, C, H, W\], got samples of shape \[2\]"):
        sweep(sweep_cfg(runs, tmp_path / "fdg", *common, "grid.term={fdg:[{weights:[1.0,0.5]}]}"))
