"""Helpers the tests share (not collected): real on-disk layouts, hand-written losses, runs of the programs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
