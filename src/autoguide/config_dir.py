"""Where the Hydra configuration tree (``conf/``) lives.

``AUTOGUIDE_CONFIG_DIR`` wins; otherwise the ``conf/`` folder at the top of the source
checkout (``pip install -e .`` keeps the package inside it).
"""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    """Absolute path of the ``conf/`` folder; ``FileNotFoundError`` naming where it looked."""
    env = os.environ.get("AUTOGUIDE_CONFIG_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "conf"
    if not path.is_dir():
        raise FileNotFoundError(
            f"autoguide config folder not found at {path}; install from a source checkout "
            "(pip install -e .) or set AUTOGUIDE_CONFIG_DIR to the repository's conf/ folder"
        )
    return path
