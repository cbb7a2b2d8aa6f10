"""What the argparse apps share: run one command, print its result as JSON or exit with the error."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any


def json_command(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    action: Callable[[argparse.Namespace], Any],
    errors: tuple[type[Exception], ...] = (ValueError,),
) -> None:
    """Parse ``argv``, run ``action(args)`` and print its result as indented JSON; one of
    ``errors`` becomes ``<prog>: error: <message>`` on stderr and exit status 1."""
    args = parser.parse_args(argv)
    try:
        result = action(args)
    except errors as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    print(json.dumps(result, indent=2))
