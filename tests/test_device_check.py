"""``benchmarks/device_check.sh --cpu`` parses and runs end to end (tiny sizes): one JSON with the
CUDA tests' outcome (skipped here) and the throughput rows, and a printed table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about 45 s: two training and two generation timings (.ci/run runs -m slow)
def test_device_check_runs_on_the_cpu(tmp_path):
    out = tmp_path / "check.json"
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "device_check.sh"), "--cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["cuda_tests"]["skipped"] >= 5 and "failed" not in report["cuda_tests"]
    assert [(r["net"], r["compiled"]) for r in report["training"]] == [("mnist-xs", False), ("mnist-xs", True)]
    assert all(r["images_per_s"] > 0 for r in report["training"] + report["generation"])
    assert [r["guidance"] for r in report["generation"]] == ["none", "autoguidance"]
    assert "images/s" in done.stdout and "cuda tests:" in done.stdout
