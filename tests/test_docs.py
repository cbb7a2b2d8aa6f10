"""The docs follow the code: docs/design.md's Parts table names every package of ``src/autoguide``
with exactly the packages it imports (read from the source, ``test_architecture.import_graph``),
and every repository file cited in docs/*.md and README.md exists."""

from __future__ import annotations

import re
from pathlib import Path

from test_architecture import import_graph, package_graph

ROOT = Path(__file__).resolve().parents[1]
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
TABLE_HEADER = "| package | job | imports (besides torch, numpy) |"
# A cited file: a path under one of the repository's folders, ending in a known suffix.
CITED_PATH = re.compile(r"(?<![\w/.-])((?:src|conf|docs|benchmarks|slurm|tests)/[\w./*-]+\.(?:py|yaml|md|sh))\b")


def parts_table(text: str) -> dict[str, set[str]]:
    """``package -> packages its imports column names``, from the markdown table under
    ``TABLE_HEADER``. A row's package is the backticked name in its first cell; the imports
    column lists backticked package names, each optionally followed by a note in parentheses
    (dropped, with any backticks in it); "nothing of autoguide" is the empty set."""
    lines = text.splitlines()
    if TABLE_HEADER not in lines:
        raise AssertionError(f"docs/design.md: no Parts table (expected the header {TABLE_HEADER!r})")
    rows: dict[str, set[str]] = {}
    for line in lines[lines.index(TABLE_HEADER) + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) != 3 or not re.fullmatch(r"`\w+`", cells[0]):
            raise AssertionError(f"docs/design.md Parts table: expected '| `package` | job | imports |', got {line!r}")
        package = cells[0].strip("`")
        if package in rows:
            raise AssertionError(f"docs/design.md Parts table: package {package} has two rows")
        rows[package] = set(re.findall(r"`([^`]+)`", re.sub(r"\([^()]*\)", "", cells[2])))
    return rows


def test_parts_table_parser():
    text = "\n".join(
        [
            "intro",
            TABLE_HEADER,
            "|---|---|---|",
            "| `core` | units (`core.units`) | nothing of autoguide |",
            "| `nets` | layers | `core` (typed settings, `core.typed_settings`), `io` |",
            "",
            "| `later` | not | `in the table` |",
        ]
    )
    assert parts_table(text) == {"core": set(), "nets": {"core", "io"}}


def test_parts_table_matches_the_import_graph():
    documented = parts_table((ROOT / "docs" / "design.md").read_text())
    real = package_graph(import_graph())
    assert sorted(documented) == sorted(real), "every package needs exactly one row in docs/design.md's Parts table"
    wrong = {
        package: {"missing": sorted(real[package] - named), "extra": sorted(named - real[package])}
        for package, named in documented.items()
        if named != real[package]
    }
    assert not wrong, f"docs/design.md Parts table: imports column differs from the source: {wrong}"


def cited_paths(text: str) -> set[str]:
    """Repository paths cited in a doc; placeholders (``<name>``) are skipped."""
    return {path for path in CITED_PATH.findall(text) if "<" not in path}


def test_cited_paths_finder():
    text = "see `conf/train.yaml`, src/autoguide/io/atomic.py and conf/net/img512-*.yaml; not x/conf/a.yaml"
    assert cited_paths(text) == {"conf/train.yaml", "src/autoguide/io/atomic.py", "conf/net/img512-*.yaml"}


def test_every_cited_file_exists():
    missing = [
        f"{doc.relative_to(ROOT)}: {path}"
        for doc in DOCS
        for path in sorted(cited_paths(doc.read_text()))
        if not any(ROOT.glob(path))
    ]
    assert not missing, f"docs cite files that do not exist: {missing}"
