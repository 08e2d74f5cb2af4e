"""Where datasets live, and the one error for a dataset that is not there."""

from __future__ import annotations

import os
from pathlib import Path

from us3l.errors import UsageError


class DatasetMissingError(UsageError, FileNotFoundError):
    """A dataset is not where it is expected or not in the expected layout; the message names path and layout."""


def data_root() -> Path:
    """Root of the recognition datasets: ``$DATA_ROOT`` if set, else ``./datasets``."""
    return Path(os.environ.get("DATA_ROOT") or "datasets")


def detection_root() -> Path:
    """Root of Detectron2's built-in detection datasets: ``$DETECTRON2_DATASETS`` (default ``datasets``), as
    Detectron2 itself reads it."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets"))
