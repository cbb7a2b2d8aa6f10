"""The reconstruction command line as the reconstruction tests call it."""

from __future__ import annotations

import pytest

from autoguide.apps import reconstruct as rec


def cli(*args):
    rec.main([str(a) for a in args] + ["--no-progress"])


def expect_refusal(capsys, *args, match):
    """``autoguide-reconstruct args`` exits 2 with ``match`` in its one line on stderr."""
    with pytest.raises(SystemExit) as info:
        cli(*args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert match in err, err
