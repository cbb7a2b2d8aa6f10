"""The SIMS comparison app: one row per method and setting, all on the same seeds and labels."""

import json

import pytest
import torch
from tiny import TINY_MNIST_UNET

from autoguide.apps import sims_compare as compare
from autoguide.apps.config_tree import compose
from autoguide.eval.mnist_classifier import FORMAT, MnistClassifier, save_classifier
from autoguide.io import save_model
from autoguide.io.sims_pair import SimsPair, write_pair
from autoguide.nets import build_network
from autoguide.sims.weightspace import write_weightspace_model

NET = TINY_MNIST_UNET


def make_sims_dir(root):
    """base + negative + weight-space models (w' = 0 and 1) + pair.json + summary.json."""
    torch.manual_seed(0)
    nets = [build_network(NET), build_network(NET)]
    for net, gain in zip(nets, (1.0, 0.6), strict=True):
        with torch.no_grad():
            net.unet.out_gain.fill_(gain)
    save_model(root / "base.safetensors", nets[0], {"network": NET})
    folder = root / "iter-00" / "register" / "b000000000064-std0.1000"
    save_model(folder / "negative.safetensors", nets[1], {"network": NET})
    spaces = {
        w: write_weightspace_model(
            folder / f"ws{w}.safetensors", root / "base.safetensors", folder / "negative.safetensors", w, {}
        )
        for w in (0.0, 1.0)
    }
    write_pair(
        folder / "pair.json",
        SimsPair(root / "base.safetensors", folder / "negative.safetensors", 64, 0.1, 0, spaces),
        root,
    )
    summary = {
        "format": "autoguide-sims/1",
        "base": str(root / "base.safetensors"),
        "iterations": [{"iteration": 0, "pairs": [str(folder / "pair.json")]}],
    }
    (root / "summary.json").write_text(json.dumps(summary))


def test_compare_rows(tmp_path):
    make_sims_dir(tmp_path)
    torch.manual_seed(0)
    classifier = MnistClassifier()
    save_classifier(tmp_path / "clf.safetensors", classifier, {"format": FORMAT, "arch": classifier.arch})
    overrides = [
        f"sims_dir={tmp_path}",
        "omega=[0.0,2.0]",
        "seeds=0-7",
        "sampler.num_steps=2",
        "sampler.solver=euler",
        "device=cpu",
        f"extractors.mnist.path={tmp_path / 'clf.safetensors'}",
        "metrics.reference.split=test",
        f"metrics.cache_dir={tmp_path / 'refs'}",
    ]
    cfg = compose("sims_compare", overrides)
    report = compare.run(cfg)
    rows = {(r["method"], r["omega"], r["weight"]): r for r in report["rows"]}
    assert sorted(rows, key=str) == sorted(
        [
            ("unguided", None, None),
            ("sims", 0.0, None),
            ("sims", 2.0, None),
            ("weight_space", None, 0.0),
            ("weight_space", None, 1.0),
        ],
        key=str,
    )
    unguided = rows[("unguided", None, None)]["fd_mnist"]
    # omega = 0 and w' = 0 are the base model itself: same seeds and labels give the same value
    assert rows[("sims", 0.0, None)]["fd_mnist"] == pytest.approx(unguided, rel=1e-6)
    assert rows[("weight_space", None, 0.0)]["fd_mnist"] == pytest.approx(unguided, rel=1e-4)
    assert rows[("sims", 2.0, None)]["fd_mnist"] != pytest.approx(unguided, rel=1e-3)
    assert rows[("sims", 2.0, None)]["negative"].endswith("negative.safetensors")
    assert set(report["best"]) == {"unguided", "sims", "weight_space"}
    best_sims = min(r["fd_mnist"] for r in report["rows"] if r["method"] == "sims")
    assert report["best"]["sims"]["fd_mnist"] == best_sims
    table = (tmp_path / "compare" / "compare.md").read_text()
    assert table.count("\n") == 5 and "| sims | 0 | 64 | 0.1 |" in table
    assert (tmp_path / "compare" / "compare.csv").read_text().count("\n") == 6
