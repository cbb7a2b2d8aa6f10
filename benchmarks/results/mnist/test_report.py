"""The MNIST report's folder collection, pick and target verdict, and ``heldout.py``'s handling
of a changed pick, on hand-made run folders whose answers are worked out by hand here
(``pytest benchmarks/results/mnist``)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import heldout  # noqa: E402
import report  # noqa: E402

COLUMNS = ["weight", "main_std", "guide_std", "guide_nimg", "guide_model", "interval_lo", "interval_hi", "fd_mnist",
           "precision_mnist", "recall_mnist", "seconds"]


def make_sweep(folder: Path, settings: list[tuple[float, float]], guide: str = "", interval: tuple = ("", "")) -> None:
    """A finished sweep folder with one ``(weight, fd)`` row per setting; best.json = lowest FD."""
    folder.mkdir(parents=True)
    rows = [{"weight": w, "main_std": 0.1, "guide_std": 0.1 if guide else "", "guide_nimg": 100 if guide else "",
             "guide_model": guide, "interval_lo": interval[0], "interval_hi": interval[1], "fd_mnist": fd,
             "precision_mnist": 0.5, "recall_mnist": 0.9, "seconds": 1.0}
            for w, fd in settings]
    with open(folder / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    best = {k: None if v == "" else v for k, v in min(rows, key=lambda r: r["fd_mnist"]).items()}   # JSON nulls
    (folder / "best.json").write_text(json.dumps({**best, "main_model": "main.safetensors", "main_nimg": 1000}))
    (folder / "sweep.yaml").write_text(yaml.safe_dump({"guidance": {"kind": "cfg", "weight": 1.0}, "sampler": {},
                                                       "seeds": "0-9", "class_labels": "random"}))


def make_heldout(runs: Path, name: str, fd: float) -> None:
    folder = runs / name
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({
        "metrics": {"fd_mnist": fd, "precision_mnist": 0.5, "recall_mnist": 0.9},
        "sets": [{"seeds": "1000-1999", "images": 1000, "seconds": 1.0}]}))


def test_every_method_collects_its_base_and_part_folders(tmp_path):
    make_sweep(tmp_path / "refine-cfg", [(1.25, 30.0), (1.5, 33.0)])
    make_sweep(tmp_path / "refine-cfg-fine", [(1.125, 29.0)])
    make_sweep(tmp_path / "refine-autoguidance-a", [(2.0, 31.0)], guide="runs/a/reconstructed/ema.safetensors")
    make_sweep(tmp_path / "refine-autoguidance-b", [(1.5, 28.0)], guide="runs/b/reconstructed/ema.safetensors")
    (tmp_path / "refine-cfg-unfinished").mkdir()                      # no best.json: ignored
    make_sweep(tmp_path / "sweep-cfg", [(3.0, 10.0)])                 # another stage: ignored
    assert [f.name for f in report.sweep_folders(tmp_path, "cfg", "refine")] == ["refine-cfg", "refine-cfg-fine"]
    rows = report.collect(tmp_path, "refine")
    assert rows["cfg"]["weight"] == 1.125 and rows["cfg"]["fd_mnist"] == 29.0
    assert sorted(t["weight"] for t in rows["cfg"]["tried"]) == [1.125, 1.25, 1.5]
    assert rows["autoguidance"]["weight"] == 1.5 and report.guide_name(rows["autoguidance"]["guide_model"]) == "b"
    assert rows["autoguidance"]["guidance"]["interval"] is None


def test_a_pick_with_an_interval_carries_it_to_the_measurement_and_the_text(tmp_path):
    make_sweep(tmp_path / "refine-cfg", [(1.25, 30.0)])
    make_sweep(tmp_path / "refine-cfg-interval", [(2.0, 29.0)], interval=(0.28, 5.42))
    row = report.collect(tmp_path, "refine")["cfg"]
    assert row["guidance"]["interval"] == [0.28, 5.42] and row["guidance"]["weight"] == 2.0
    assert report.setting_text(row) == "w 2, sigma in (0.28, 5.42]"
    assert report.tried_text(row) == "2, sigma in (0.28, 5.42]: 29.0; 1.25: 30.0"   # best first


def test_verdict_needs_both_the_cut_and_beating_cfg(tmp_path):
    make_sweep(tmp_path / "refine-unguided", [(1.0, 40.0)])
    make_sweep(tmp_path / "refine-cfg", [(1.25, 30.0)])
    make_sweep(tmp_path / "refine-autoguidance-a", [(1.5, 29.0)], guide="runs/a/reconstructed/ema.safetensors")
    make_heldout(tmp_path, "heldout-refine-unguided", 40.0)
    make_heldout(tmp_path, "heldout-refine-cfg", 27.0)
    make_heldout(tmp_path, "heldout-refine-autoguidance", 27.5)   # -31.25%, but CFG is lower
    [line] = report.verdict(report.collect(tmp_path, "refine"))
    assert line.startswith("**Target NOT MET** (on the held-out FDs)") and "31.2%" in line and "does not beat" in line
    (tmp_path / "heldout-refine-autoguidance" / "metrics.json").unlink()
    (tmp_path / "heldout-refine-autoguidance").rmdir()
    make_heldout(tmp_path, "heldout-refine-autoguidance", 26.0)   # -35%, below CFG's 27
    [line] = report.verdict(report.collect(tmp_path, "refine"))
    assert line.startswith("**Target MET**") and "35.0%" in line and "beats the best CFG" in line


def test_supersede_keeps_the_earlier_measurement(tmp_path):
    make_heldout(tmp_path, "heldout-refine-autoguidance", 28.0)
    moved = heldout.supersede(tmp_path / "heldout-refine-autoguidance")
    assert moved == tmp_path / "superseded" / "heldout-refine-autoguidance-1"
    assert json.loads((moved / "metrics.json").read_text())["metrics"]["fd_mnist"] == 28.0
    make_heldout(tmp_path, "heldout-refine-autoguidance", 27.0)
    assert heldout.supersede(tmp_path / "heldout-refine-autoguidance").name == "heldout-refine-autoguidance-2"
    assert not list(tmp_path.glob("heldout-*"))    # report.py and same_measurement no longer see either
