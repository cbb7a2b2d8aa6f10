"""``logs/train.log`` without creating the run folder for a run that is then refused.

Hydra opens its job log file at the first record, and Lightning logs while the Trainer is
built, before the run's last checks (the batch plan needs the Trainer's world size) and before
the run folder is prepared. ``FolderFileHandler`` keeps records in memory until its folder
exists (``autoguide.train.run`` creates ``<run>/logs`` once every check passed), then writes
them and everything after to the file; a refused run leaves no ``logs/`` behind.
"""

from __future__ import annotations

import logging
from pathlib import Path

MAX_HELD_RECORDS = 10_000


class FolderFileHandler(logging.FileHandler):
    """A ``logging.FileHandler`` (always opened lazily) that holds records while the file's
    folder does not exist yet (at most ``MAX_HELD_RECORDS``, the oldest dropped first)."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None, delay: bool = True) -> None:
        super().__init__(filename, mode, encoding, delay=True)
        self.held: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None and not Path(self.baseFilename).parent.is_dir():
            self.held = [*self.held[-(MAX_HELD_RECORDS - 1) :], record]
            return
        held, self.held = self.held, []
        for earlier in held:
            super().emit(earlier)
        super().emit(record)
