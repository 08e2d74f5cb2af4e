"""Published values to overlay on real-data plots and tables.

``us3l_cvpr2023.json`` holds the US3L paper's Tables 2, 4, 5, 6 and 12 as printed (Fig. 3 exists only as a
picture). A reference file is JSON: ``{"source": "...", "entries": [{"table": "Table 5", "method": "US3L",
"arch": "resnet50", "task": "coco", "dataset": "coco_2017_val", "width": 0.5, "metrics": {"box_AP": ...},
"macs": 1.06e9, "pretrain": "imagenet"}, ...]}``; ``macs`` and ``pretrain`` are optional.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from us3l.errors import UsageError

PAPER = Path(__file__).with_name("us3l_cvpr2023.json")
REQUIRED = ("table", "method", "arch", "task", "dataset", "width", "metrics")


@dataclass(frozen=True)
class Entry:
    """One published row at one width: its metrics, and its backbone MACs when the paper prints them."""

    table: str
    method: str
    arch: str
    task: str
    dataset: str
    width: float
    metrics: dict[str, float]
    macs: float | None = None
    pretrain: str | None = None


def read_reference(path: str | os.PathLike = PAPER) -> list[Entry]:
    """The entries of a reference file; ``ValueError`` naming the file and entry when one is malformed."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: not a readable reference file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise UsageError(f"{path}: a reference file is a JSON object with a list 'entries'")
    out = []
    for i, e in enumerate(data["entries"]):
        missing = [k for k in REQUIRED if k not in e]
        if missing:
            raise UsageError(f"{path}: entry {i} lacks {', '.join(missing)}")
        metrics = {k: float(v) for k, v in e["metrics"].items()}
        if not metrics or not all(math.isfinite(v) for v in metrics.values()):
            raise UsageError(f"{path}: entry {i} needs finite metrics, got {e['metrics']!r}")
        out.append(Entry(str(e["table"]), str(e["method"]), str(e["arch"]), str(e["task"]), str(e["dataset"]),
                         float(e["width"]), metrics, None if e.get("macs") is None else float(e["macs"]),
                         e.get("pretrain")))
    return out


def tables(path: str | os.PathLike = PAPER) -> list[str]:
    """The table names of a reference file, in file order."""
    return list(dict.fromkeys(e.table for e in read_reference(path)))
