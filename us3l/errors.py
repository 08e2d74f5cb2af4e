"""What a program tells its user when it stops: bad input (exit 2) or a run that failed (exit 1), in one line."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UsageError(ValueError):
    """Bad user input (arguments, config, files, machine): the program prints one line and exits 2."""


class RunFailed(Exception):
    """A run that started and failed (e.g. diverged): one line, exit status 1; what it leaves says so."""


class Diverged(RunFailed, RuntimeError):
    """A NaN or infinite loss or metric: the run stops with exit status 1 (a job leaves a failed record,
    pretraining its last good checkpoint)."""


def run_cli(prog: str, body: Callable[[], int | None]) -> int:
    """Run a program's ``body``; its exit status (None: 0). A :class:`UsageError` prints ``prog: error: ...`` and
    gives 2, a :class:`RunFailed` the same line and 1; any other exception is a bug and propagates."""
    try:
        status = body()
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    return 0 if status is None else status
