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

import heldout
import report

COLUMNS = [
    "weight",
    "main_std",
    "guide_std",
    "guide_nimg",
    "guide_model",
    "interval_lo",
    "interval_hi",
    "fd_mnist",
    "precision_mnist",
    "recall_mnist",
    "seconds",
]


def make_sweep(folder: Path, settings: list[tuple[float, float]], guide: str = "", interval: tuple = ("", "")) -> None:
    """A finished sweep folder with one ``(weight, fd)`` row per setting; best.json = lowest FD."""
    folder.mkdir(parents=True)
    rows = [
        {
            "weight": w,
            "main_std": 0.1,
            "guide_std": 0.1 if guide else "",
            "guide_nimg": 100 if guide else "",
            "guide_model": guide,
            "interval_lo": interval[0],
            "interval_hi": interval[1],
            "fd_mnist": fd,
            "precision_mnist": 0.5,
            "recall_mnist": 0.9,
            "seconds": 1.0,
        }
        for w, fd in settings
    ]
    with open(folder / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    best = {k: None if v == "" else v for k, v in min(rows, key=lambda r: r["fd_mnist"]).items()}  # JSON nulls
    (folder / "best.json").write_text(json.dumps({**best, "main_model": "main.safetensors", "main_nimg": 1000}))
    (folder / "sweep.yaml").write_text(
        yaml.safe_dump(
            {"guidance": {"kind": "cfg", "weight": 1.0}, "sampler": {}, "seeds": "0-9", "class_labels": "random"}
        )
    )


def make_heldout(runs: Path, name: str, fd: float) -> None:
    folder = runs / name
    folder.mkdir()
    (folder / "metrics.json").write_text(
        json.dumps(
            {
                "metrics": {"fd_mnist": fd, "precision_mnist": 0.5, "recall_mnist": 0.9},
                "sets": [{"seeds": "1000-1999", "images": 1000, "seconds": 1.0}],
            }
        )
    )


def test_every_method_collects_its_base_and_part_folders(tmp_path):
    make_sweep(tmp_path / "refine-cfg", [(1.25, 30.0), (1.5, 33.0)])
    make_sweep(tmp_path / "refine-cfg-fine", [(1.125, 29.0)])
    make_sweep(tmp_path / "refine-autoguidance-a", [(2.0, 31.0)], guide="runs/a/reconstructed/ema.safetensors")
    make_sweep(tmp_path / "refine-autoguidance-b", [(1.5, 28.0)], guide="runs/b/reconstructed/ema.safetensors")
    (tmp_path / "refine-cfg-unfinished").mkdir()  # no best.json: ignored
    make_sweep(tmp_path / "sweep-cfg", [(3.0, 10.0)])  # another stage: ignored
    assert [f.name for f in report.sweep_folders(tmp_path, "cfg", "refine")] == ["refine-cfg", "refine-cfg-fine"]
    rows = report.collect(tmp_path, "refine")
    assert rows["cfg"]["weight"] == 1.125 and rows["cfg"]["fd_mnist"] == 29.0
    assert sorted(t["weight"] for t in rows["cfg"]["tried"]) == [1.125, 1.25, 1.5]
    assert rows["autoguidance"]["weight"] == 1.5 and report.guide_name(rows["autoguidance"]["guide_model"]) == "b"
    assert rows["autoguidance"]["guidance"]["interval"] is None
    assert report.guide_name("runs/c/reconstructed/0a1b2c/ema-000000004000-0.0500.safetensors") == "c"  # cache entry


def test_a_pick_with_an_interval_carries_it_to_the_measurement_and_the_text(tmp_path):
    make_sweep(tmp_path / "refine-cfg", [(1.25, 30.0)])
    make_sweep(tmp_path / "refine-cfg-interval", [(2.0, 29.0)], interval=(0.28, 5.42))
    row = report.collect(tmp_path, "refine")["cfg"]
    assert row["guidance"]["interval"] == [0.28, 5.42] and row["guidance"]["weight"] == 2.0
    assert report.setting_text(row) == "w 2, sigma in (0.28, 5.42]"
    assert report.tried_text(row) == "2, sigma in (0.28, 5.42]: 29.0; 1.25: 30.0"  # best first


def test_verdict_needs_both_the_cut_and_beating_cfg(tmp_path):
    make_sweep(tmp_path / "refine-unguided", [(1.0, 40.0)])
    make_sweep(tmp_path / "refine-cfg", [(1.25, 30.0)])
    make_sweep(tmp_path / "refine-autoguidance-a", [(1.5, 29.0)], guide="runs/a/reconstructed/ema.safetensors")
    make_heldout(tmp_path, "heldout-refine-unguided", 40.0)
    make_heldout(tmp_path, "heldout-refine-cfg", 27.0)
    make_heldout(tmp_path, "heldout-refine-autoguidance", 27.5)  # -31.25%, but CFG is lower
    [line] = report.verdict(report.collect(tmp_path, "refine"))
    assert line.startswith("**Target NOT MET** (on the held-out FDs)") and "31.2%" in line and "does not beat" in line
    (tmp_path / "heldout-refine-autoguidance" / "metrics.json").unlink()
    (tmp_path / "heldout-refine-autoguidance").rmdir()
    make_heldout(tmp_path, "heldout-refine-autoguidance", 26.0)  # -35%, below CFG's 27
    [line] = report.verdict(report.collect(tmp_path, "refine"))
    assert line.startswith("**Target MET**") and "35.0%" in line and "beats the best CFG" in line


def test_supersede_keeps_the_earlier_measurement(tmp_path):
    make_heldout(tmp_path, "heldout-refine-autoguidance", 28.0)
    moved = heldout.supersede(tmp_path / "heldout-refine-autoguidance")
    assert moved == tmp_path / "superseded" / "heldout-refine-autoguidance-1"
    assert json.loads((moved / "metrics.json").read_text())["metrics"]["fd_mnist"] == 28.0
    make_heldout(tmp_path, "heldout-refine-autoguidance", 27.0)
    assert heldout.supersede(tmp_path / "heldout-refine-autoguidance").name == "heldout-refine-autoguidance-2"
    assert not list(tmp_path.glob("heldout-*"))  # report.py and same_measurement no longer see either


def make_final(runs: Path, name: str, fd: float, fd_inf: float) -> None:
    """A stage-8 measurement: 5,000 images with FD and FD_inf."""
    folder = runs / name
    folder.mkdir()
    (folder / "metrics.json").write_text(
        json.dumps(
            {
                "metrics": {"fd_mnist": fd, "fd_inf_mnist": fd_inf, "precision_mnist": 0.5, "recall_mnist": 0.9},
                "sets": [{"seeds": "3000-7999", "images": 5000, "seconds": 2.0}],
            }
        )
    )
    (folder / "evaluate.yaml").write_text(
        yaml.safe_dump({"metrics": {"fd_infinity": {"points": 15, "min_fraction": 0.2}}})
    )


def test_the_final_measurement_is_judged_on_both_fds(tmp_path):
    make_sweep(tmp_path / "refine-unguided", [(1.0, 40.0)])
    make_sweep(tmp_path / "refine-cfg", [(1.25, 30.0)])
    make_sweep(tmp_path / "refine-autoguidance-a", [(1.5, 29.0)], guide="runs/a/reconstructed/ema.safetensors")
    for method, fd in (("unguided", 40.0), ("cfg", 27.0), ("autoguidance", 27.5)):
        make_heldout(tmp_path, f"heldout-refine-{method}", fd)
    # 5,000 images: AG -30.0% and below CFG (met); FD_inf: AG -25% (not met), below CFG
    for method, fd, fd_inf in (("unguided", 30.0, 20.0), ("cfg", 22.0, 16.0), ("autoguidance", 21.0, 15.0)):
        make_final(tmp_path, f"final-refine-{method}", fd, fd_inf)
    refined = report.collect(tmp_path, "refine")
    assert refined["autoguidance"]["final"]["fd_inf_mnist"] == 15.0
    lines = report.final_verdict({}, refined, {})
    assert lines[0].startswith("**Target NOT MET** (on the held-out FDs of the 1,000-image picks)")
    assert lines[1].startswith("**Target MET** (on the 5,000-image FDs, default recipe)") and "30.0%" in lines[1]
    assert (
        lines[2].startswith("**Target NOT MET** (on the FD_inf, default recipe)")
        and "25.0%" in lines[2]
        and " beats" in lines[2]
    )
    table = report.final_lines(refined, "default recipe")
    assert (
        "| Autoguidance | w 1.5, guide `a` @ 100 img, EMA 0.1 | 27.50 | 21.00 | -30.0% | 15.00 | -25.0% | 0.500 | "
        "0.900 |" in table
    )
    assert report.wall_times(tmp_path)["final-refine-cfg"] == 2
