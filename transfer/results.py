"""The results store: one JSON record per evaluation job, written atomically into a directory.

A record holds task, dataset, width, metrics, backbone params/MACs at that width, checkpoint hash,
config, wall time, versions, where it ran (host, device type/name/count, precision, seed) and whether
the data was the built-in demo data (``demo``), so that plots and tables never mix demo numbers with
real benchmark numbers.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

from us3l.atomic import atomic_path

RECORD_VERSION = 1


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on."""
    import torch
    import torchvision

    out = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__}
    try:
        import detectron2

        out["detectron2"] = detectron2.__version__
    except ImportError:
        pass
    return out


def record_name(task: str, dataset: str, width: float, checkpoint_sha256: str) -> str:
    """File name of the record of one (task, dataset, width, checkpoint) job."""
    return f"{task}-{dataset}-w{float(width):.4f}-{checkpoint_sha256[:12]}.json"


def make_record(task: str, dataset: str, width: float, metrics: dict[str, float], *, demo: bool,
                checkpoint: str, checkpoint_sha256: str, method: str, arch: str, params: int, macs: int,
                config: dict[str, Any], wall_time_s: float, seed: int | None = None,
                precision: str | None = None, device: dict[str, Any] | None = None) -> dict[str, Any]:
    """A results record in the contract of DESIGN.md.

    ``seed`` is the seed the job used, ``precision`` the arithmetic it trained in (``float32``,
    ``amp-float16``, ``amp-bfloat16``), ``device`` what :func:`us3l.device.device_info` says. A metric
    that is undefined (NaN, e.g. COCO's APs on data without small objects) is left out of ``metrics``
    and named in ``undefined_metrics``: records are strict JSON.
    """
    return {
        "record_version": RECORD_VERSION,
        "task": task,
        "dataset": dataset,
        "width": float(width),
        "metrics": {k: float(v) for k, v in metrics.items() if math.isfinite(v)},
        "undefined_metrics": sorted(k for k, v in metrics.items() if not math.isfinite(v)),
        "demo": bool(demo),
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": checkpoint_sha256,
        "method": method,
        "arch": arch,
        "params": int(params),
        "macs": int(macs),
        "config": config,
        "wall_time_s": float(wall_time_s),
        "seed": None if seed is None else int(seed),
        "precision": precision,
        "device": device,
        "host": platform.node(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
    }


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as strict JSON (no NaN or infinity) to ``path`` through a temporary file and a rename."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.write("\n")
    return Path(path)


def write_record(results_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write ``record`` atomically into ``results_dir``; returns its path."""
    name = record_name(record["task"], record["dataset"], record["width"], record["checkpoint_sha256"])
    return write_json_atomic(Path(results_dir) / name, record)


def read_records(results_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All records in ``results_dir`` (temporary files of jobs still writing are ignored)."""
    out = []
    for p in sorted(Path(results_dir).glob("*.json")):
        with open(p) as f:
            rec = json.load(f)
        if rec.get("record_version") == RECORD_VERSION:
            rec["_path"] = str(p)
            out.append(rec)
    return out
