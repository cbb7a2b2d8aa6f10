"""What every Hydra app shares: the config tree, the schemas, one-line config errors.

``run_hydra_app(config_name, task)`` runs ``task(cfg)`` on ``conf/<config_name>.yaml``
composed with the command line. Before Hydra starts, every ``group=option`` override is checked
against the options in ``conf/<group>/`` (Hydra's own message for a missing option is a
multi-line listing); a ``ConfigError`` (or one of ``errors``) raised by the task becomes one line
on stderr and exit status 2, and so does, in every app, a file that could not be written for lack
of space, a refusal to write or use non-finite values, and a file whose contents differ from their
recorded SHA-256 (``FILE_ERRORS``: their messages name the file).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from autoguide.config import config_dir, register_schemas
from autoguide.io.atomic import DiskFullError
from autoguide.io.integrity import IntegrityError, NonFiniteError
from autoguide.settings import ConfigError

EXIT_CONFIG_ERROR = 2
FILE_ERRORS = (DiskFullError, NonFiniteError, IntegrityError)


def check_group_choices(args: Sequence[str], conf: Path) -> None:
    """Every ``group=option`` override names an existing ``conf/<group>/<option>.yaml``."""
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+")
        if not sep or key.startswith(("~", "hydra")) or "." in key or not (conf / key).is_dir():
            continue
        options = sorted(p.stem for p in (conf / key).glob("*.yaml"))
        for option in value.split(","):
            if option not in options and option != "null":
                raise ConfigError(f"{key}={option}: no such option in {conf / key}; choose one of {', '.join(options)}")


def exit_with(error: Exception, prefix: str) -> None:
    """Print ``<prefix>: <error>`` as one line on stderr and exit with status 2."""
    print(f"{prefix}: {error}", file=sys.stderr)
    sys.exit(EXIT_CONFIG_ERROR)


def run_hydra_app(config_name: str, task: Callable[[DictConfig], Any], errors: Mapping[type[Exception], str] | None = None) -> None:
    """Run ``task`` as the Hydra app ``conf/<config_name>.yaml`` with ``sys.argv``; ``errors``
    maps exception types to the prefix of their one-line message (default: a ``ConfigError``
    is a ``config error``)."""
    import hydra

    errors = dict(errors or {ConfigError: "config error"})
    for kind in FILE_ERRORS:
        errors.setdefault(kind, f"{Path(sys.argv[0]).name}: error")
    conf = config_dir()
    register_schemas()
    try:
        check_group_choices(sys.argv[1:], conf)
    except ConfigError as error:
        exit_with(error, errors.get(ConfigError, "config error"))

    def guarded(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except tuple(errors) as error:
            exit_with(error, next(prefix for kind, prefix in errors.items() if isinstance(error, kind)))

    hydra.main(config_path=str(conf), config_name=config_name, version_base="1.3")(guarded)()
