"""What every Hydra app shares: the config tree, the schemas, one-line config errors.

``run_hydra_app(config_name, task)`` runs ``task(cfg)`` on ``conf/<config_name>.yaml``
composed with the command line. Before Hydra starts, every ``group=option`` override is checked
against the options in ``conf/<group>/`` (Hydra's own message for a missing option is a
multi-line listing) and the command line is composed once, so that a key typo or a value of the
wrong type is one line too (``compose_or_refuse``); a ``ConfigError`` (or one of ``errors``)
raised by the task becomes one line on stderr and exit status 2 (or the status ``errors`` gives),
and so does, in every app, a file that could not be written for lack of space, a refusal to write
or use non-finite values, and a file whose contents differ from their recorded SHA-256
(``FILE_ERRORS``: their messages name the file).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig

from autoguide.apps.config_tree import compose, config_dir, register_schemas, replace_whole_nodes
from autoguide.core.typed_settings import ConfigError
from autoguide.io.atomic import DiskFullError
from autoguide.io.integrity import IntegrityError, NonFiniteError

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


def composition_error_line(error: Exception) -> str:
    """Hydra's or OmegaConf's multi-line composition error as one line: its first line, the
    first line of its cause (what was wrong), then its other lines (what to do)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = error.__cause__
    reason = [line.strip() for line in str(cause).splitlines() if line.strip()][:1] if cause else []
    head = lines[0].rstrip(".") + (f": {reason[0]}" if reason else "")
    return "; ".join([head, *lines[1:]])


def compose_or_refuse(config_name: str, args: Sequence[str]) -> DictConfig | None:
    """The config ``conf/<config_name>.yaml`` composed with the command line ``args`` (with
    Hydra's node), ``ConfigError`` in one line for an unknown group option
    (``check_group_choices``) or when it does not compose; ``None`` when ``args`` hold a flag
    (a multirun, help, ``--config-dir``: left to Hydra)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    check_group_choices(args, config_dir())
    if any(arg.startswith("-") for arg in args):  # no single job, or Hydra flags (--config-dir X) that Hydra parses
        return None
    try:
        return compose(config_name, list(args), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(composition_error_line(error)) from None


def _prefix(how: str | tuple[str, int]) -> str:
    return how if isinstance(how, str) else how[0]


def exit_with(error: Exception, prefix: str, status: int = EXIT_CONFIG_ERROR) -> None:
    """Print ``<prefix>: <error>`` as one line on stderr and exit with ``status`` (default 2)."""
    print(f"{prefix}: {error}", file=sys.stderr)
    sys.exit(status)


def run_hydra_app(
    config_name: str,
    task: Callable[[DictConfig], Any],
    errors: Mapping[type[Exception], str | tuple[str, int]] | None = None,
    before_start: Callable[[DictConfig], None] | None = None,
) -> None:
    """Run ``task`` as the Hydra app ``conf/<config_name>.yaml`` with ``sys.argv``; ``errors``
    maps exception types to the prefix of their one-line message, or to ``(prefix, exit
    status)`` (default: a ``ConfigError`` is a ``config error``, status 2). ``before_start``
    gets the checked composition of a single run (with Hydra's node) before Hydra starts, e.g.
    to claim the folder Hydra will write; its exceptions are reported as ``errors`` says."""
    import hydra

    errors = dict(errors or {ConfigError: "config error"})
    for kind in FILE_ERRORS:
        errors.setdefault(kind, f"{Path(sys.argv[0]).name}: error")
    conf = config_dir()
    register_schemas()
    try:
        cfg = compose_or_refuse(config_name, sys.argv[1:])  # checks the group choices first
    except ConfigError as error:
        exit_with(error, _prefix(errors.get(ConfigError, "config error")))
    if cfg is not None:  # a single run: Hydra's job on this composition, not a second one
        if before_start is not None:
            call_reporting(before_start, cfg, errors)
        run_composed(cfg, lambda job_cfg: call_reporting(task, job_cfg, errors))
        return
    sys.argv[1:] = replace_whole_nodes(sys.argv[1:])  # e.g. metrics.reference={...}: another dataset, not merged keys
    hydra.main(config_path=str(conf), config_name=config_name, version_base="1.3")(
        lambda cfg: call_reporting(task, cfg, errors)
    )()


def run_composed(cfg: DictConfig, task: Callable[[DictConfig], Any]) -> Any:
    """Run ``task`` as Hydra's job on ``cfg``, a command line composed once with Hydra's node
    (``compose_or_refuse``): output folder, ``HydraConfig``, job logging, config copies and
    callbacks as ``hydra.main`` makes them for a single run, without composing again."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.utils import run_job
    from hydra.types import HydraContext

    context = HydraContext(config_loader=cast(Any, None), callbacks=Callbacks(cfg))  # run_job needs no loader
    job = run_job(task, cfg, job_dir_key="hydra.run.dir", job_subdir_key=None, hydra_context=context)
    return job.return_value  # re-raises what the task raised


def call_reporting(
    task: Callable[[DictConfig], Any], cfg: DictConfig, errors: Mapping[type[Exception], str | tuple[str, int]]
) -> Any:
    """``task(cfg)``; an exception of a type in ``errors`` becomes one line on stderr and the
    exit status ``errors`` gives it (``exit_with``)."""
    try:
        return task(cfg)
    except tuple(errors) as error:
        how = next(how for kind, how in errors.items() if isinstance(error, kind))
        exit_with(error, *((how,) if isinstance(how, str) else how))
