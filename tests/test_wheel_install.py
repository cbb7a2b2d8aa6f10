"""The package works installed as a wheel: built from the checkout's files (what a clean clone
holds), installed without ``-e`` into a fresh virtual environment, its CLIs find the configs
shipped inside it. Dependencies come from the test's own environment (a path entry), never
from the network; the wheel's ``autoguide`` is the one imported."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def checkout_files() -> list[str]:
    """Tracked and untracked-not-ignored files: what a commit of the working tree holds."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    return [name for name in listed if name and ((REPO / name).exists() or (REPO / name).is_symlink())]


def copy_checkout(target: Path) -> None:
    for name in checkout_files():
        source, dest = REPO / name, target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            dest.symlink_to(source.readlink())
        elif source.is_file():
            shutil.copy2(source, dest)


def run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the wheel's copy, not a source tree
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{' '.join(map(str, args))}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs the git checkout")
def test_wheel_in_a_fresh_environment_runs_the_clis(tmp_path):
    source, dist, env, work = tmp_path / "src", tmp_path / "dist", tmp_path / "env", tmp_path / "work"
    copy_checkout(source)
    work.mkdir()
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(dist),
            str(source),
        ],
        tmp_path,
    )
    (wheel,) = dist.glob("autoguide-*.whl")
    run([sys.executable, "-m", "venv", "--without-pip", str(env)], tmp_path)
    python = env / "bin" / "python"
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        tmp_path,
    )
    purelib = Path(
        run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], work).stdout.strip()
    )
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    where = run(
        [
            str(python),
            "-c",
            "import autoguide, autoguide.apps.config_tree as c; print(autoguide.__file__); print(c.config_dir())",
        ],
        work,
    )
    package, conf = where.stdout.split()
    assert Path(package).is_relative_to(env) and Path(conf).is_relative_to(env), where.stdout
    assert (Path(conf) / "train.yaml").is_file() and (Path(conf) / "net" / "_base" / "edm2-img512.yaml").is_file()

    assert "model" in run([str(env / "bin" / "autoguide-generate"), "--help"], work).stdout
    assert "--std" in run([str(env / "bin" / "autoguide-reconstruct"), "--help"], work).stdout
    job = run([str(env / "bin" / "autoguide-train"), "experiment=img512-xs-guide", "--cfg", "job"], work).stdout
    assert "name: img512-xs-guide" in job and "model_channels: 128" in job and "duration_fraction: 0.0625" in job
