"""Runs as data: the job spec every evaluation program builds at its command line, and the record it writes.

A :class:`JobSpec` holds everything that decides a result: task, dataset, width, the checkpoint and its
SHA-256, every protocol hyper-parameter, the config overrides, the seed and the demo flag. It is built
and validated once where a program reads its command line (or where the sweep plans its jobs), pickled
by submitit, and stored in the record. Its identity (:attr:`JobSpec.id`) is a hash of its canonical form:
the same spec is never run twice by a sweep, and a different spec never overwrites another's record
or run directory.

A record (:func:`make_record`) is one strict-JSON file per run in a results directory, written atomically:
spec, identity, status (``ok`` or ``failed``, with no metric), metrics, cost, provenance (git commit and
dirty flag, command line, host, device, precision, world size, package versions), wall time. No
Detectron2 import here: detection and linear evaluation both write records through this module.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import atomic_path
from .channels import WidthError, check_width
from .errors import Diverged, UsageError

if TYPE_CHECKING:
    from .checkpoint import BackboneCheckpoint

RECORD_VERSION = 2
TASKS = ("voc", "coco", "linear", "knn")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
SIGNIFICANT_DIGITS = 12  # floats are compared at this precision: 1/3 and 0.333333333333 are one width
ID_LENGTH = 16


class SpecError(UsageError):
    """A job spec that cannot run (one line naming what to change; exit status 2)."""


def canonical(value: Any) -> Any:
    """``value`` as JSON data in the form identities are computed on.

    Floats keep :data:`SIGNIFICANT_DIGITS` significant digits (so widths compare as numbers), non-finite
    floats become the strings ``nan``, ``inf``, ``-inf`` (records stay strict JSON), tuples become lists.
    """
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}") if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    raise SpecError(f"{value!r} ({type(value).__name__}) cannot go into a job spec: use numbers, strings, lists")


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class JobSpec:
    """One evaluation job: everything its result depends on, validated on construction.

    ``checkpoint`` is where the checkpoint was found; it is not part of the identity (its SHA-256 is), so
    a moved checkpoint is still the same job. ``method`` is the checkpoint's method, or ``random-init``
    when ``random_init`` (the checkpoint then only fixes architecture and input normalisation).
    """

    task: str
    dataset: str
    width: float
    checkpoint: str
    checkpoint_sha256: str
    method: str
    arch: str
    seed: int
    demo: bool
    random_init: bool = False
    protocol: Mapping[str, Any] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise SpecError(f"unknown task {self.task!r}; expected one of {', '.join(TASKS)}")
        if isinstance(self.width, str):
            raise SpecError(f"width must be a number in (0, 1], got {self.width!r}")
        try:
            check_width(self.width)
        except WidthError as e:
            raise SpecError(str(e)) from None
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise SpecError(f"seed must be an integer >= 0, got {self.seed!r}")
        if len(self.checkpoint_sha256) != 64 or set(self.checkpoint_sha256) - set("0123456789abcdef"):
            raise SpecError(f"checkpoint_sha256 must be 64 hex digits, got {self.checkpoint_sha256!r}")
        object.__setattr__(self, "width", float(self.width))
        object.__setattr__(self, "demo", bool(self.demo))
        object.__setattr__(self, "random_init", bool(self.random_init))
        object.__setattr__(self, "protocol", dict(self.protocol))
        object.__setattr__(self, "overrides", tuple(str(o) for o in self.overrides))
        canonical(self.protocol)  # every value is JSON data

    @classmethod
    def for_checkpoint(cls, ck: BackboneCheckpoint, *, task: str, dataset: str, width: float, seed: int,
                       demo: bool, protocol: Mapping[str, Any], overrides: Iterable[str] = (),
                       random_init: bool = False) -> JobSpec:
        """The spec of a job on ``ck`` at ``width`` (checked by :func:`checked_width`)."""
        return cls(task=task, dataset=dataset, width=checked_width(ck, width), checkpoint=str(Path(ck.path).resolve()),
                   checkpoint_sha256=ck.sha256, method="random-init" if random_init else ck.method, arch=ck.arch,
                   seed=seed, demo=demo, random_init=random_init, protocol=protocol, overrides=tuple(overrides))

    def to_dict(self) -> dict[str, Any]:
        """The canonical spec (strict JSON data), as records store it."""
        return canonical({"task": self.task, "dataset": self.dataset, "width": self.width,
                          "checkpoint": self.checkpoint, "checkpoint_sha256": self.checkpoint_sha256,
                          "method": self.method, "arch": self.arch, "seed": self.seed, "demo": self.demo,
                          "random_init": self.random_init, "protocol": self.protocol,
                          "overrides": list(self.overrides)})

    @property
    def id(self) -> str:
        """The run's identity: the first 16 hex digits of the SHA-256 of the canonical spec (less the path)."""
        return spec_id(self.to_dict())

    def check_checkpoint(self, sha256: str) -> None:
        """``SpecError`` when the checkpoint file now has other contents than when the job was specified."""
        if sha256 != self.checkpoint_sha256:
            raise SpecError(f"{self.checkpoint} changed since this job was specified (sha256 {sha256[:12]}, the "
                            f"spec says {self.checkpoint_sha256[:12]}): specify the job again")


def checked_width(ck: BackboneCheckpoint, width: float) -> float:
    """``width`` as a float when ``ck`` was trained for it, else ``SpecError`` naming the range: the one check of a
    job's width against its checkpoint."""
    try:
        return ck.check_width(width)
    except ValueError as e:
        raise SpecError(str(e)) from None


def spec_id(spec: Mapping[str, Any]) -> str:
    """Identity of a canonical spec dict (``JobSpec.to_dict()`` or a record's ``spec``)."""
    return _digest({k: v for k, v in spec.items() if k != "checkpoint"})[:ID_LENGTH]


def spec_diff(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of the fields in which two canonical specs differ (``protocol.lr``, ``overrides``)."""
    out = []
    for k in sorted(set(a) | set(b)):
        if k == "checkpoint" and not prefix:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += spec_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(prefix + k)
    return out


def split_metrics(metrics: Mapping[str, float], required: Iterable[str]) -> tuple[dict[str, float], list[str]]:
    """(finite metrics, names of undefined ones), or ``Diverged`` when a ``required`` metric is missing or not
    finite. Other metrics may be undefined (e.g. COCO's APs on data without small objects)."""
    for name in required:
        value = metrics.get(name)
        if value is None or not math.isfinite(value):
            raise Diverged(f"metric {name} is {value}")
    finite = {k: float(v) for k, v in metrics.items() if math.isfinite(v)}
    return finite, sorted(set(metrics) - set(finite))


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state() -> tuple[str, bool]:
    """(commit, dirty) of the project's checkout; dirty: tracked files differ from the commit. Outside a git
    checkout: ``("unknown", True)``, since nothing vouches for the code."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    if commit is None or status is None:
        return "unknown", True
    return commit.strip(), bool(status.strip())


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on (Detectron2's when a detection job has imported it)."""
    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "numpy", "pycocotools", "fvcore"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    d2 = sys.modules.get("detectron2")
    if d2 is not None:
        out["detectron2"] = str(getattr(d2, "__version__", "unknown"))
    torch = sys.modules.get("torch")
    if torch is not None and torch.version.cuda:
        out["cuda"] = torch.version.cuda
        if torch.backends.cudnn.is_available():
            out["cudnn"] = str(torch.backends.cudnn.version())
    return out


def command_line(module: str, argv: Iterable[str]) -> str:
    """``python -m module ARGS``, shell-quoted: how to run a job again by hand."""
    return shlex.join(["python", "-m", module, *argv])


def provenance(spec: JobSpec, *, command: str, device: Mapping[str, Any], precision: str, world_size: int,
               **extra: Any) -> dict[str, Any]:
    """Where, how and from what code a job ran (``device`` as :func:`us3l.device.device_info` gives it)."""
    commit, dirty = git_state()
    return {"git_commit": commit, "git_dirty": dirty, "command": command, "host": platform.node(),
            "device": dict(device), "precision": precision, "world_size": int(world_size), "versions": versions(),
            "checkpoint_sha256": spec.checkpoint_sha256, "spec_id": spec.id, **extra}


def make_record(spec: JobSpec, *, metrics: Mapping[str, float], cost: Mapping[str, int],
                provenance: Mapping[str, Any], wall_time_s: float, error: str | None = None,
                undefined_metrics: Iterable[str] = ()) -> dict[str, Any]:
    """A run record (DESIGN.md's contract): ``status`` is ``failed`` with no metric when ``error`` is given."""
    if error is not None and metrics:
        raise ValueError("a failed record has no metrics")
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"non-finite metrics {bad}: name them in undefined_metrics (see split_metrics)")
    return {"record_version": RECORD_VERSION, "id": spec.id, "status": "failed" if error is not None else "ok",
            "error": None if error is None else " ".join(str(error).split()),
            "spec": spec.to_dict(), "metrics": {k: float(v) for k, v in metrics.items()},
            "undefined_metrics": sorted(undefined_metrics), "cost": {k: int(v) for k, v in cost.items()},
            "provenance": dict(provenance), "wall_time_s": float(wall_time_s),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def dataset_slug(dataset: str) -> str:
    """``dataset`` as part of a file name: ``imagefolder:/data/birds`` -> ``imagefolder-birds`` (names unchanged)."""
    kind, _, path = dataset.partition(":")
    text = f"{kind}-{Path(path).name}" if path else kind
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def record_name(spec: Mapping[str, Any]) -> str:
    """File name of the record of a canonical spec: ``<task>-<dataset slug>-w<width>-<id>.json``."""
    return f"{spec['task']}-{dataset_slug(spec['dataset'])}-w{float(spec['width']):.4f}-{spec_id(spec)}.json"


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as strict JSON (no NaN or infinity) to ``path`` through a temporary file and a rename."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.write("\n")
    return Path(path)


def write_record(results_dir: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write ``record`` atomically into ``results_dir`` (a rerun of the same spec replaces it); returns its path."""
    return write_json_atomic(Path(results_dir) / record_name(record["spec"]), {k: v for k, v in record.items()
                                                                               if not k.startswith("_")})


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not strict JSON")


def read_records(results_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records (this version) in ``results_dir``, each with its file in ``_path``; other JSON files and
    temporary files of jobs still writing are ignored."""
    out = []
    for p in sorted(Path(results_dir).glob("*.json")):
        with open(p) as f:
            try:
                rec = json.load(f, parse_constant=_reject_constant)
            except ValueError as e:
                raise ValueError(f"{p}: not a readable record ({e})") from None
        if isinstance(rec, dict) and rec.get("record_version") == RECORD_VERSION:
            rec["_path"] = str(p)
            out.append(rec)
    return out
