"""Method families: a suite file names the methods of one comparison and the checkpoints behind each.

A suite is YAML (``suites/paper_r50.yaml``)::

    arch: resnet50                  # every checkpoint holds this architecture
    widths: [1.0, 0.75, 0.5, 0.25]  # where slimmable methods are evaluated
    tasks: [voc, coco, linear:cifar10]
    baseline: BYOL                  # deltas in the summary tables are against this method
    reference: [Table 5, Table 6]   # published tables overlaid on real-data plots (optional)
    demo: false                     # true: the built-in demo data (optional)
    methods:
      US3L:                         # one slimmable checkpoint evaluated at every width
        checkpoint: $OUTPUT/pretrain/imagenet_r50/backbone.pth
      BYOL:                         # one fixed-width checkpoint per width: one family, one line
        checkpoints:
          1.0: $OUTPUT/pretrain/imagenet_r50_byol_w100/backbone.pth
          0.5: $OUTPUT/pretrain/imagenet_r50_byol_w050/backbone.pth
      random init:                  # the checkpoint fixes arch and normalisation only
        checkpoint: $OUTPUT/pretrain/imagenet_r50/backbone.pth
        random_init: true

``$OUTPUT`` (or ``${OUTPUT}``) stands for the output directory (``make``'s ``OUTPUT``, default ``output``);
other relative paths are relative to the current directory. A slimmable method may restrict itself with
``widths:``.
:func:`load_suite` checks the file; :func:`suite_jobs` also checks every checkpoint and expands the suite
into the (method, checkpoint, width, task) jobs of a sweep.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import yaml

from us3l.channels import ARCHS, WidthError, check_width
from us3l.checkpoint import CheckpointError, load_checkpoint
from us3l.data import SPECS
from us3l.errors import UsageError

from . import reference as R

DETECTION_TASKS = ("voc", "coco")
SUITE_KEYS = {"name", "arch", "widths", "tasks", "baseline", "reference", "demo", "methods"}
METHOD_KEYS = {"checkpoint", "checkpoints", "widths", "random_init"}


class SuiteError(UsageError):
    """A suite file or one of its checkpoints is wrong (one line naming the file and the fix)."""


def same_width(a: float, b: float) -> bool:
    """Widths compared as numbers (``0.3333333`` is ``1/3`` written out)."""
    return abs(float(a) - float(b)) < 1e-6


@dataclass(frozen=True)
class Method:
    """A method's checkpoint at each of its widths: one path for a slimmable method, one per width otherwise."""

    name: str
    checkpoints: dict[float, str]
    slimmable: bool
    random_init: bool = False

    @property
    def widths(self) -> tuple[float, ...]:
        return tuple(self.checkpoints)


@dataclass(frozen=True)
class Suite:
    """A validated suite file."""

    name: str
    path: Path
    arch: str
    widths: tuple[float, ...]
    tasks: tuple[str, ...]
    baseline: str
    methods: tuple[Method, ...]
    reference: tuple[str, ...] = ()
    demo: bool = False

    def method(self, name: str) -> Method:
        return next(m for m in self.methods if m.name == name)


@dataclass(frozen=True)
class SuiteJob:
    """One evaluation of a suite: ``task`` is ``voc``, ``coco`` or ``linear`` (then ``dataset`` names the set)."""

    method: str
    checkpoint: str
    width: float
    task: str
    dataset: str | None
    random_init: bool
    demo: bool

    @property
    def task_name(self) -> str:
        """The sweep's name of the task: ``voc``, ``coco`` or ``linear:<dataset>``."""
        return f"{self.task}:{self.dataset}" if self.dataset else self.task


def load_suite(path: str | os.PathLike, output: str | os.PathLike = "output") -> Suite:
    """Read and check a suite file; ``$OUTPUT`` in checkpoint paths becomes ``output``."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path}: no such suite file; see suites/ for examples")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SuiteError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: a suite is a YAML mapping with keys {', '.join(sorted(SUITE_KEYS))}")

    def fail(msg: str) -> SuiteError:
        return SuiteError(f"{path}: {msg}")

    unknown = sorted(set(raw) - SUITE_KEYS)
    if unknown:
        raise fail(f"unknown key(s) {', '.join(unknown)}; a suite has {', '.join(sorted(SUITE_KEYS))}")
    missing = [k for k in ("arch", "widths", "tasks", "baseline", "methods") if k not in raw]
    if missing:
        raise fail(f"missing {', '.join(missing)}")
    if raw["arch"] not in ARCHS:
        raise fail(f"unknown arch {raw['arch']!r}; expected one of {', '.join(sorted(ARCHS))}")
    demo = raw.get("demo", False)
    if not isinstance(demo, bool):
        raise fail(f"demo must be true or false, got {demo!r}")
    widths = _widths(raw["widths"], "widths", fail)
    tasks = _tasks(raw["tasks"], demo, fail)
    if not isinstance(raw["methods"], dict) or not raw["methods"]:
        raise fail("methods must map method names to {checkpoint: PATH} or {checkpoints: {WIDTH: PATH, ...}}")
    methods = tuple(_method(str(name), spec, widths, str(output), fail) for name, spec in raw["methods"].items())
    seen: dict[tuple[str, bool], str] = {}
    for m in methods:
        for p in dict.fromkeys(m.checkpoints.values()):
            other = seen.setdefault((os.path.normpath(p), m.random_init), m.name)
            if other != m.name:
                raise fail(f"methods {other!r} and {m.name!r} both use {p}; a checkpoint belongs to one method "
                           f"(random_init: true makes a separate one)")
    baseline = str(raw["baseline"])
    if baseline not in {m.name for m in methods}:
        raise fail(f"baseline {baseline!r} is not one of the methods ({', '.join(m.name for m in methods)})")
    ref = raw.get("reference") or []
    known = R.tables()
    if not isinstance(ref, list) or any(t not in known for t in ref):
        raise fail(f"reference must list tables of the shipped paper values ({', '.join(known)}), got {ref!r}")
    if demo and ref:
        raise fail("a demo suite has no reference: published values are never drawn beside demo data")
    return Suite(str(raw.get("name") or path.stem), path, raw["arch"], widths, tasks, baseline, methods,
                 tuple(ref), demo)


def _widths(value: Any, what: str, fail) -> tuple[float, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(w, (int, float)) for w in value):
        raise fail(f"{what} must be a list of numbers, e.g. [1.0, 0.75, 0.5, 0.25]; got {value!r}")
    try:
        out = tuple(check_width(float(w)) for w in value)
    except WidthError as e:
        raise fail(f"{what}: {e}") from None
    if any(same_width(a, b) for i, a in enumerate(out) for b in out[i + 1:]):
        raise fail(f"{what} lists a width twice: {value!r}")
    return out


def _tasks(value: Any, demo: bool, fail) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise fail(f"tasks must be a list such as [voc, coco, linear:cifar100]; got {value!r}")
    linear = ", ".join(n for n, s in SPECS.items() if s.demo == demo)
    for t in value:
        kind, _, dataset = str(t).partition(":")
        if kind in DETECTION_TASKS and not dataset:
            continue
        if kind != "linear" or dataset not in SPECS:
            raise fail(f"unknown task {t!r}; expected voc, coco or linear:DATASET with DATASET one of {linear}")
        if SPECS[dataset].demo != demo:
            raise fail(f"task {t!r} is {'demo' if SPECS[dataset].demo else 'real'} data but the suite has "
                       f"demo: {str(demo).lower()}; use one of {linear}")
    if len(set(value)) != len(value):
        raise fail(f"tasks lists a task twice: {value!r}")
    return tuple(str(t) for t in value)


def _method(name: str, spec: Any, widths: tuple[float, ...], output: str, fail) -> Method:
    if not isinstance(spec, dict) or set(spec) - METHOD_KEYS or ("checkpoint" in spec) == ("checkpoints" in spec):
        raise fail(f"method {name!r} needs exactly one of checkpoint: PATH (slimmable) or checkpoints: "
                   f"{{WIDTH: PATH}} (one per width), optionally widths and random_init; got {spec!r}")
    random_init = spec.get("random_init", False)
    if not isinstance(random_init, bool):
        raise fail(f"method {name!r}: random_init must be true or false, got {random_init!r}")

    def path(p: Any) -> str:
        if not isinstance(p, str) or not p:
            raise fail(f"method {name!r}: a checkpoint is a path, got {p!r}")
        return Template(p).safe_substitute(OUTPUT=output)

    def in_suite(ws: tuple[float, ...]) -> tuple[float, ...]:
        for w in ws:
            if not any(same_width(w, s) for s in widths):
                raise fail(f"method {name!r} lists width {w:g}, which is not one of the suite's widths "
                           f"({', '.join(f'{s:g}' for s in widths)})")
        return tuple(next(s for s in widths if same_width(w, s)) for w in ws)

    if "checkpoint" in spec:
        own = in_suite(_widths(spec["widths"], f"method {name!r}: widths", fail)) if "widths" in spec else widths
        ckpt = path(spec["checkpoint"])
        return Method(name, {w: ckpt for w in own}, True, random_init)
    if "widths" in spec:
        raise fail(f"method {name!r}: its widths are the keys of checkpoints; drop widths")
    per = spec["checkpoints"]
    if not isinstance(per, dict) or not per:
        raise fail(f"method {name!r}: checkpoints must map each width to a path, e.g. {{1.0: PATH, 0.5: PATH}}")
    own = in_suite(_widths(list(per), f"method {name!r}: checkpoints", fail))
    return Method(name, {w: path(p) for w, p in zip(own, per.values())}, False, random_init)


def check_checkpoints(suite: Suite) -> None:
    """Every checkpoint exists, holds ``suite.arch`` and was trained for the widths it is listed at."""
    missing = [f"{p} ({m.name})" for m in suite.methods for p in dict.fromkeys(m.checkpoints.values())
               if not Path(p).is_file()]
    if missing:
        raise SuiteError(f"{suite.path}: {len(missing)} checkpoint file(s) missing: {'; '.join(missing)}; "
                         f"pretrain them first (make pretrain, python -m pretrain.per_width for one per width)")
    loaded: dict[str, tuple[float, float]] = {}
    for m in suite.methods:
        for w, p in m.checkpoints.items():
            if p not in loaded:
                try:
                    loaded[p] = load_checkpoint(p, arch=suite.arch).width_range
                except CheckpointError as e:
                    raise SuiteError(f"{suite.path}: method {m.name!r}: {e}") from None
            lo, hi = loaded[p]
            if not m.slimmable and not m.random_init and not (same_width(lo, w) and same_width(hi, w)):
                raise SuiteError(f"{suite.path}: method {m.name!r} lists {p} at width {w:g}, but it was trained "
                                 f"for [{lo:g}, {hi:g}]; list it at the width it was trained at")
            if not lo - 1e-6 <= w <= hi + 1e-6:
                raise SuiteError(f"{suite.path}: method {m.name!r}: width {w:g} is not covered by {p} (trained for "
                                 f"[{lo:g}, {hi:g}]); drop the width or use a checkpoint that covers it")


def suite_jobs(suite: Suite, *, check: bool = True) -> list[SuiteJob]:
    """The jobs of ``suite``: every task at every width of every method (checkpoints checked first)."""
    if check:
        check_checkpoints(suite)
    jobs = []
    for task in suite.tasks:
        kind, _, dataset = task.partition(":")
        for m in suite.methods:
            for w, ckpt in m.checkpoints.items():
                jobs.append(SuiteJob(m.name, ckpt, w, kind, dataset or None, m.random_init, suite.demo))
    return jobs
