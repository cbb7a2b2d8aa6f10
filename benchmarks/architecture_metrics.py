"""Architecture metrics of a source tree (an autoguide checkout), for before -> after notes.

    python benchmarks/architecture_metrics.py [--root /path/to/checkout] [--config pyproject.toml]

Prints:
- modules per package of ``src/autoguide``: ``.py`` files directly in each package folder,
  ``__init__.py`` excluded; the files directly in ``src/autoguide`` count as ``(top level)``;
- the 10 longest functions and methods of ``src/autoguide`` (qualified ``module:Class.function``,
  nested functions as ``outer.<locals>.inner``), length = lines from ``def`` (decorators excluded)
  to the last line of the body, docstring and blank lines included;
- raw config reads in ``src/autoguide``, counted with ``ast`` on the names ``cfg``, ``config`` and
  any name ending in ``_cfg``: subscripts (``cfg["key"]``), ``.get(`` calls (``cfg.get("key")``),
  and attribute reads (``cfg.key``, ``cfg.items()``) in modules that import ``omegaconf`` (the only
  ones where such a name can hold a ``DictConfig``; elsewhere ``config`` is a typed object);
- ruff findings on ``src``, ``tests`` and ``benchmarks`` and mypy errors on ``src``, both run with
  the settings of ``--config`` (default: this checkout's ``pyproject.toml``), so two trees are
  measured by the same rules.
No test asserts these numbers; the script only measures.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
CONFIG_NAMES = {"cfg", "config"}
RUFF = [sys.executable, "-m", "ruff", "check", "--output-format", "json", "--exit-zero"]


def is_config_name(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and (node.id in CONFIG_NAMES or node.id.endswith("_cfg"))


def modules_per_package(package: Path) -> dict[str, int]:
    counts = {"(top level)": sum(1 for p in package.glob("*.py") if p.name != "__init__.py")}
    for folder in sorted(p for p in package.iterdir() if (p / "__init__.py").is_file()):
        counts[folder.name] = sum(1 for p in folder.rglob("*.py") if p.name != "__init__.py")
    return counts


def functions(tree: ast.Module, module: str) -> list[tuple[str, int]]:
    """``(qualified name, lines)`` of every function and method."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                found.append((f"{module}:{name}", (child.end_lineno or child.lineno) - child.lineno + 1))
                visit(child, f"{name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def imports_omegaconf(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "omegaconf" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "omegaconf":
            return True
    return False


def config_reads(tree: ast.Module) -> Counter[str]:
    counts: Counter[str] = Counter()
    typed_elsewhere = not imports_omegaconf(tree)
    gets = set()
    for node in ast.walk(tree):
        is_get = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
        if is_get and is_config_name(node.func.value):
            counts["cfg.get("] += 1
            gets.add(id(node.func))
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and is_config_name(node.value):
            counts["cfg["] += 1
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Load)
            and is_config_name(node.value)
            and id(node) not in gets
            and not typed_elsewhere
        ):
            counts["cfg.attribute"] += 1
    return counts


def ruff_findings(root: Path, config: Path) -> dict[str, int]:
    counts = {}
    for folder in ("src", "tests", "benchmarks"):
        out = subprocess.run(
            [*RUFF, "--config", str(config), folder],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
        counts[folder] = len(json.loads(out.stdout))
    return counts


def mypy_errors(root: Path, config: Path) -> tuple[int, str]:
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir", "/dev/null", "src"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr.strip()
    return sum(1 for line in out.stdout.splitlines() if re.search(r": error: ", line)), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=HERE, help="the checkout to measure (default: this one)")
    parser.add_argument("--config", type=Path, default=HERE / "pyproject.toml", help="ruff and mypy settings")
    args = parser.parse_args()
    root, config = args.root.resolve(), args.config.resolve()
    package = root / "src" / "autoguide"

    print(f"tree: {root}\nruff and mypy settings: {config}\n")
    counts = modules_per_package(package)
    print(f"modules per package ({sum(counts.values())} in all, __init__.py excluded):")
    print("  " + ", ".join(f"{name} {n}" for name, n in counts.items()))

    longest: list[tuple[str, int]] = []
    reads: Counter[str] = Counter()
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        module = ".".join(path.relative_to(root / "src").with_suffix("").parts)
        longest += functions(tree, module)
        reads += config_reads(tree)
    print("\n10 longest functions (lines, def to end):")
    for name, lines in sorted(longest, key=lambda f: (-f[1], f[0]))[:10]:
        print(f"  {lines:4d}  {name}")
    print(
        f"\nraw config reads in src (names cfg, config, *_cfg): {sum(reads.values())} = "
        f"{reads['cfg[']} subscripts + {reads['cfg.get(']} .get( calls + "
        f"{reads['cfg.attribute']} attribute reads in modules importing omegaconf"
    )
    ruff = ruff_findings(root, config)
    print(f"\nruff findings: {sum(ruff.values())} = " + ", ".join(f"{k} {v}" for k, v in ruff.items()))
    errors, summary = mypy_errors(root, config)
    print(f"mypy errors (src): {errors} ({summary})")


if __name__ == "__main__":
    main()
