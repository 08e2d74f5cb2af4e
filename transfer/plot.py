"""Plots and summary tables of a results directory.

``python -m transfer.plot RESULTS_DIR -o PLOTS_DIR [--suite FILE] [--baseline METHOD] [--reference FILE |
--no-reference] [--x width,backbone_macs,detector_macs,detector_params]`` reads the run records (record
version 2) and draws one line per method across widths: with ``--suite`` a suite method (a per-width family's
checkpoints form one line), otherwise one per checkpoint family (``<run>_w100`` ... ``_w025`` are one family).
Points are the mean over seeds with error bars of one standard deviation; failed runs are skipped.

``summary.md`` and ``summary.csv`` hold the paper's layouts (Table 4: linear top-1 per width; Table 5: COCO
box and mask AP/AP50/AP75; Table 6: linear top-1 on several datasets; Fig. 3: VOC AP50 per width), each cell
the mean ± std and the number of runs, failed cells marked ``failed``, and each method's difference from the
baseline (the suite's, or ``--baseline``). The paper's published values (:mod:`transfer.reference`) are
overlaid on real-data figures and added to real-data tables; records on the demo data get their own figures
(``demo-*.png``) and tables (``demo-summary.csv``), labelled, never beside real results or published values.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from us3l.atomic import atomic_path
from us3l.checkpoint import file_sha256
from us3l.errors import UsageError, run_cli

from .reference import PAPER, Entry, read_reference
from .suites import Suite, load_suite

RECORD_VERSION = 2


DETECTION_TASKS = ("voc", "coco")
RECOGNITION_PANELS = {"linear": ("top1", "linear top-1 (%)"), "knn": ("knn20_top1", "kNN (k=20) top-1 (%)")}
FIGURE_PANELS = {"voc": [("AP50", "VOC AP50"), ("AP", "VOC AP"), ("AP75", "VOC AP75")],
                 "coco": [("box_AP", "COCO box AP"), ("mask_AP", "COCO mask AP")]}
COCO_COLUMNS = [(f"{kind}_{m}", f"{kind} {m}") for kind in ("box", "mask") for m in ("AP", "AP50", "AP75")]
VOC_COLUMNS = [("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75")]
DATASET_ORDER = ("cifar10", "cifar100", "flowers102", "pets", "dtd", "imagenet")
# Paper tables overlaid by default (no suite): the ImageNet-pretraining ones. Table 2 (CIFAR-100
# pretraining, CIFAR stem) is overlaid only by a suite that names it.
DEFAULT_TABLES = ("Table 4", "Table 5", "Table 6", "Table 12")
X_AXES = {"width": "width", "backbone_macs": "backbone GMACs", "detector_macs": "detector GMACs",
          "detector_params": "detector params (M)"}
X_SCALE = {"width": 1.0, "backbone_macs": 1e9, "detector_macs": 1e9, "detector_params": 1e6}
DETECTOR_AXES = ("detector_macs", "detector_params")
COST_NAMES = {"backbone_params": "backbone params (M)", "backbone_macs": "backbone GMACs",
              "detector_params": "detector params (M)", "detector_macs": "detector GMACs"}


@dataclass(frozen=True)
class Run:
    """One evaluation: a record of the results directory, or a published value (``source`` names its table)."""

    task: str
    dataset: str
    width: float
    metrics: dict[str, float]
    method: str
    arch: str
    demo: bool = False
    ok: bool = True
    checkpoint: str = ""
    sha256: str = ""
    seed: int = 0
    random_init: bool = False
    setting: str = "{}"  # protocol and overrides as canonical JSON: runs differing here are never averaged
    cost: dict[str, float] = field(default_factory=dict)
    id: str = ""
    finished_at: str = ""
    source: str = ""

    @property
    def panel(self) -> tuple[str, str]:
        """Detection results share a panel per task; linear results one per dataset."""
        return (self.task, "" if self.task in DETECTION_TASKS else self.dataset)


def parse_record(obj: Any, path: str) -> Run | None:
    """The run of a version-2 record; ``None`` for other versions; ``ValueError`` naming what is missing."""
    if not isinstance(obj, dict) or obj.get("record_version") != RECORD_VERSION:
        return None
    try:
        spec = obj["spec"]
        ok = obj["status"] == "ok"
        setting = json.dumps({"protocol": spec.get("protocol", {}), "overrides": spec.get("overrides", [])},
                             sort_keys=True)
        return Run(task=spec["task"], dataset=spec["dataset"], width=float(spec["width"]),
                   metrics={k: float(v) for k, v in obj["metrics"].items()} if ok else {},
                   method=spec["method"], arch=spec["arch"], demo=bool(spec["demo"]), ok=ok,
                   checkpoint=spec["checkpoint"], sha256=spec.get("checkpoint_sha256", ""), seed=int(spec["seed"]),
                   random_init=bool(spec.get("random_init", False)), setting=setting,
                   cost={k: float(v) for k, v in (obj.get("cost") or {}).items() if isinstance(v, (int, float))},
                   id=str(obj["id"]), finished_at=str(obj.get("finished_at", "")))
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{path}: not a complete run record ({type(e).__name__}: {e})") from None


def read_runs(results_dir: str | os.PathLike) -> list[Run]:
    """The runs of ``results_dir``: one per identity (the last finished); other record versions are skipped."""
    latest: dict[str, Run] = {}
    for p in sorted(Path(results_dir).glob("*.json")):
        try:
            obj = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise UsageError(f"{p}: not valid JSON ({e})") from None
        run = parse_record(obj, str(p))
        if run and (run.id not in latest or run.finished_at >= latest[run.id].finished_at):
            latest[run.id] = run
    return list(latest.values())


def reference_runs(entries: Iterable[Entry], measured: Sequence[Run], tables: Sequence[str] | None,
                   suite: Suite | None = None) -> list[Run]:
    """Published values beside ``measured``: same arch and panel, from ``tables`` (all when ``None``), and
    only the suite's methods when a suite is given."""
    panels = {(r.arch, r.panel) for r in measured}
    methods = {m.name.casefold() for m in suite.methods} if suite else None
    out = []
    for e in entries:
        run = Run(e.task, e.dataset, e.width, e.metrics, e.method, e.arch, source=e.table,
                  cost={"backbone_macs": e.macs} if e.macs else {})
        if ((run.arch, run.panel) in panels and (tables is None or e.table in tables)
                and (methods is None or e.method.casefold() in methods)):
            out.append(run)
    return out


@dataclass(frozen=True)
class Line:
    """A line of a plot and a row group of a table: a method (measured or published) on one kind of data."""

    label: str
    method: str
    arch: str
    source: str = ""  # "" for measured runs, the paper table for published values
    variant: str = ""  # the protocol values that set this line apart from the method's other lines
    rank: tuple = field(default=(), compare=False)

    @property
    def reference(self) -> bool:
        return bool(self.source)


def _family_name(run: Run) -> str:
    """``output/pretrain/imagenet_r50_byol_w050/backbone.pth`` -> ``imagenet_r50_byol`` (a per-width family)."""
    p = Path(run.checkpoint)
    return re.sub(r"_w\d{3}$", "", p.parent.name or p.stem)


class _SuiteIndex:
    """Finds the suite method of a run by its checkpoint (path, or content for files present here)."""

    def __init__(self, suite: Suite) -> None:
        self.by_path: dict[tuple[str, bool], int] = {}
        self.by_sha: dict[tuple[str, bool], int] = {}
        for i, m in enumerate(suite.methods):
            for p in set(m.checkpoints.values()):
                self.by_path[(os.path.realpath(p), m.random_init)] = i
                if Path(p).is_file():
                    self.by_sha[(file_sha256(p), m.random_init)] = i

    def find(self, run: Run) -> int | None:
        i = self.by_path.get((os.path.realpath(run.checkpoint), run.random_init))
        return i if i is not None else self.by_sha.get((run.sha256, run.random_init))


def assign_lines(runs: Sequence[Run], suite: Suite | None = None) -> tuple[list[tuple[Run, Line]], int]:
    """Each run with its line; runs outside ``suite`` are dropped and counted."""
    families: list[tuple[Run, tuple]] = []  # (run, (label, method, arch, rank))
    dropped = 0
    index = _SuiteIndex(suite) if suite and any(not r.source for r in runs) else None
    for r in runs:
        if r.source:
            order = next((i for i, m in enumerate(suite.methods) if m.name.casefold() == r.method.casefold()),
                         len(suite.methods)) if suite else 0
            families.append((r, (r.method, r.method, r.arch, (1, r.source, order, r.method))))
        elif index is not None:
            i = index.find(r)
            if i is None:
                dropped += 1
                continue
            name = suite.methods[i].name
            families.append((r, (name, name, suite.arch, (0, i))))
        else:
            method = "random init" if r.random_init else r.method
            label = f"{method} ({_family_name(r)})"
            families.append((r, (label, method, r.arch, (0, label))))
    families = _split_mixed_checkpoints(families)
    variants = _variants(families)
    out = []
    for (r, (label, method, arch, rank)), variant in zip(families, variants):
        full = f"{label} (paper {r.source}, {_arch_short(arch)})" if r.source else label
        out.append((r, Line(full + (f" [{variant}]" if variant else ""), method, arch, r.source, variant,
                            rank + (variant,))))
    return out, dropped


def _arch_short(arch: str) -> str:
    """``resnet50`` -> ``R-50``."""
    return re.sub(r"^resnet(\d+)$", r"R-\1", arch)


def _split_mixed_checkpoints(families: list[tuple[Run, tuple]]) -> list[tuple[Run, tuple]]:
    """A family whose runs at one width come from different checkpoints is one line per checkpoint."""
    shas: dict[tuple, set[str]] = {}
    for r, fam in families:
        if not r.source:
            shas.setdefault((fam, r.width), set()).add(r.sha256)
    mixed = {fam for (fam, _), s in shas.items() if len(s) > 1}
    return [(r, (f"{fam[0]} {r.sha256[:8]}", *fam[1:3], fam[3] + (r.sha256,)) if fam in mixed else fam)
            for r, fam in families]


def _variants(families: list[tuple[Run, tuple]]) -> list[str]:
    """Per run, the protocol values that set it apart (``lr=0.1``), or ``""``.

    Runs of a family in one panel split into variants only where they differ at the same width: values that
    change with the width alone (a detector's FPN channels) keep one line. Digests (``*_sha256``) summarise
    other values (and may include the seed), so they split nothing."""
    flats = [_flatten(json.loads(r.setting)) for r, _ in families]
    at_width: dict[tuple, dict[float, list[dict[str, Any]]]] = {}
    for (r, fam), flat in zip(families, flats):
        at_width.setdefault((fam, r.panel), {}).setdefault(r.width, []).append(flat)
    keys = {group: sorted({k for same in ws.values() for f in same for k in f if any(g.get(k) != f.get(k)
                                                                                  for g in same)})
            for group, ws in at_width.items()}
    return [", ".join(f"{k}={flat.get(k)}" for k in keys[(fam, r.panel)]) for (r, fam), flat in zip(families, flats)]


def _flatten(setting: dict[str, Any]) -> dict[str, Any]:
    protocol = {k: v for k, v in setting.get("protocol", {}).items() if not k.endswith("_sha256")}
    return {**protocol, "overrides": " ".join(map(str, setting.get("overrides", [])))}


@dataclass
class Stat:
    """The values of one cell over seeds, and how many runs of it failed."""

    values: list[float] = field(default_factory=list)
    failed: int = 0

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation (0 for one value)."""
        return statistics.stdev(self.values) if self.n > 1 else 0.0


def cell_stats(pairs: Iterable[tuple[Run, Line]], panel: tuple[str, str],
               metric: str) -> dict[Line, dict[float, Stat]]:
    """line -> width -> the metric's values over the runs of ``panel`` (failed runs counted, not valued)."""
    out: dict[Line, dict[float, Stat]] = {}
    for r, line in pairs:
        if r.panel != panel:
            continue
        stat = out.setdefault(line, {}).setdefault(round(r.width, 6), Stat())
        if not r.ok:
            stat.failed += 1
        elif metric in r.metrics:
            stat.values.append(r.metrics[metric])
    return {line: ws for line, ws in out.items() if any(s.n or s.failed for s in ws.values())}


def costs(pairs: Iterable[tuple[Run, Line]], panel: tuple[str, str]) -> dict[tuple[Line, float], dict[str, float]]:
    """(line, width) -> mean cost (params, MACs) over its successful runs in ``panel``."""
    acc: dict[tuple[Line, float], dict[str, list[float]]] = {}
    for r, line in pairs:
        if r.panel == panel and r.ok:
            for k, v in r.cost.items():
                acc.setdefault((line, round(r.width, 6)), {}).setdefault(k, []).append(v)
    return {key: {k: statistics.fmean(v) for k, v in d.items()} for key, d in acc.items()}


# ---------------------------------------------------------------- figures


@dataclass(frozen=True)
class Panel:
    task: str
    dataset: str  # "" for detection
    metric: str
    title: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.task, self.dataset)


@dataclass
class FigureSpec:
    """One figure file: the runs of one kind of data (all demo, or real plus published) and its panels."""

    name: str
    demo: bool
    panels: list[Panel]
    pairs: list[tuple[Run, Line]]
    xs: tuple[str, ...] = ("width", "backbone_macs", "detector_macs")

    @property
    def axes(self) -> list[str]:
        """The x-axes of this figure (detector cost only for detection)."""
        detection = self.panels[0].task in DETECTION_TASKS
        return [x for x in self.xs if detection or x not in DETECTOR_AXES]


@dataclass(frozen=True)
class Point:
    x: float
    mean: float
    std: float
    n: int


def series(spec: FigureSpec, panel: Panel, x: str) -> dict[Line, list[Point]]:
    """What a panel draws against ``x``: per line, the mean and std of each width with a successful run."""
    stats = cell_stats(spec.pairs, panel.key, panel.metric)
    cost = costs(spec.pairs, panel.key)
    out = {}
    for line, ws in stats.items():
        pts = []
        for w, s in ws.items():
            xv = w if x == "width" else cost.get((line, w), {}).get(x)
            if s.n and xv is not None:
                pts.append(Point(xv / X_SCALE[x], s.mean, s.std, s.n))
        if pts:
            out[line] = sorted(pts, key=lambda p: p.x)
    return out


def figure_specs(groups: Sequence[tuple[bool, list[tuple[Run, Line]]]],
                 xs: tuple[str, ...] = ("width", "backbone_macs", "detector_macs")) -> list[FigureSpec]:
    """The figures of each data group: ``voc``, ``coco``, ``linear``, ``knn`` (``demo-`` first for demo data)."""
    specs = []
    for demo, pairs in groups:
        measured = [r for r, _ in pairs if not r.source]
        for task in (*DETECTION_TASKS, *RECOGNITION_PANELS):
            if task in RECOGNITION_PANELS:
                metric, title = RECOGNITION_PANELS[task]
                datasets = _datasets(r.dataset for r in measured if r.task == task)
                panels = [Panel(task, d, metric, f"{d} {title}") for d in datasets]
            else:
                have = {m for r in measured if r.task == task for m in r.metrics}
                panels = [Panel(task, "", m, t) for m, t in FIGURE_PANELS[task] if m in have]
            if panels:
                specs.append(FigureSpec(f"{'demo-' if demo else ''}{task}", demo, panels, pairs, xs))
    return specs


def _datasets(names: Iterable[str]) -> list[str]:
    """Linear datasets in the paper's column order, then the others by name."""
    names = set(names)
    return [d for d in DATASET_ORDER if d in names] + sorted(names - set(DATASET_ORDER))


def _colours(lines: Iterable[Line]) -> dict[str, Any]:
    """One colour per method, shared by its measured line and its published values."""
    import matplotlib.pyplot as plt

    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods = list(dict.fromkeys(ln.method.casefold() for ln in sorted(lines, key=lambda ln: ln.rank)))
    return {m: cycle[i % len(cycle)] for i, m in enumerate(methods)}


def build_figure(spec: FigureSpec):
    """A figure: a column per panel, a row per x-axis; measured lines with error bars, published ones dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_x = spec.axes
    fig, axes = plt.subplots(len(axes_x), len(spec.panels), figsize=(4.2 * len(spec.panels), 3.3 * len(axes_x)),
                             squeeze=False)
    colour = _colours(ln for _, ln in spec.pairs)
    handles: dict[str, Any] = {}
    for col, panel in enumerate(spec.panels):
        for row, x in enumerate(axes_x):
            ax = axes[row][col]
            for line, pts in sorted(series(spec, panel, x).items(), key=lambda kv: kv[0].rank):
                c = colour[line.method.casefold()]
                xs, ys = [p.x for p in pts], [p.mean for p in pts]
                if line.reference:
                    (h,) = ax.plot(xs, ys, linestyle="--", marker="x", color=c, alpha=0.7, label=line.label)
                else:
                    h = ax.errorbar(xs, ys, yerr=[p.std for p in pts], marker="o", capsize=3, color=c,
                                    label=line.label)
                handles.setdefault(line.label, h)
            ax.set_xlabel(X_AXES[x])
            ax.set_ylabel("top-1 (%)" if panel.metric == "top1" else panel.metric)
            ax.grid(alpha=0.3)
        axes[0][col].set_title(panel.title + (" - DEMO DATA" if spec.demo else ""))
    ncol = max(1, min(3, len(axes[0]), len(handles)))  # a one-panel-wide figure gets a one-column legend
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=ncol, fontsize=8)
    rows = math.ceil(len(handles) / ncol)
    fig.tight_layout(rect=(0, min(0.5, (0.35 + 0.22 * rows) / fig.get_figheight()), 1, 1))
    return fig


def save_figure(fig, path: Path) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------- tables


@dataclass
class Cell:
    """A table cell and its difference from the baseline's cell."""

    stat: Stat | None  # None: no run
    delta: float | None = None


@dataclass
class Row:
    """A table row: a line at one width (row layouts) or at every width (per-width layouts)."""

    line: Line
    width: float | None  # None in a per-width layout (the columns are widths)
    cost: dict[str, float]
    cells: list[Cell]


@dataclass
class Table:
    """One summary table in a paper layout."""

    key: str
    title: str
    first: list[str]  # leading column names (method, width, costs)
    columns: list[str]
    rows: list[Row]
    cost_keys: list[str]
    baseline: str | None
    widths: list[float] | None = None  # the columns' widths in a per-width layout


def _baseline_of(line: Line, lines: Iterable[Line], baseline: str | None) -> Line | None:
    """The baseline line ``line`` is compared with: same arch and source, the same protocol variant if any."""
    if not baseline:
        return None
    cands = [b for b in lines if b.method.casefold() == baseline.casefold() and b.arch == line.arch
             and b.source == line.source]
    if line in cands:
        return None
    same = [b for b in cands if b.variant == line.variant]
    return (same or cands)[0] if len(same) == 1 or len(cands) == 1 else None


def _cell(stat: Stat | None, base: Stat | None) -> Cell:
    delta = stat.mean - base.mean if stat and stat.n and base and base.n else None
    return Cell(stat, delta)


def _lines(stats: Iterable[dict[Line, Any]]) -> list[Line]:
    return sorted({ln for s in stats for ln in s}, key=lambda ln: ln.rank)


def width_table(key: str, title: str, pairs: list[tuple[Run, Line]], panel: tuple[str, str], metric: str,
                baseline: str | None) -> Table:
    """Methods as rows, widths as columns (Table 4, Fig. 3)."""
    stats = cell_stats(pairs, panel, metric)
    lines = _lines([stats])
    widths = sorted({w for ws in stats.values() for w in ws}, reverse=True)
    rows = []
    for line in lines:
        base = _baseline_of(line, lines, baseline)
        rows.append(Row(line, None, {}, [_cell(stats[line].get(w), stats[base].get(w) if base else None)
                                          for w in widths]))
    return Table(key, title, ["method"], [_width(w) for w in widths], rows, [], baseline, widths)


def row_table(key: str, title: str, pairs: list[tuple[Run, Line]], columns: list[tuple[tuple[str, str], str, str]],
              cost_keys: list[str], baseline: str | None) -> Table:
    """(width, method) rows, metric or dataset columns (Tables 5 and 6); ``columns``: (panel, metric, name)."""
    stats = [cell_stats(pairs, panel, metric) for panel, metric, _ in columns]
    keep = [i for i, s in enumerate(stats) if s]
    stats, columns = [stats[i] for i in keep], [columns[i] for i in keep]
    lines = _lines(stats)
    cost: dict[tuple[Line, float], dict[str, float]] = {}
    for panel in dict.fromkeys(p for p, _, _ in columns):
        for k, v in costs(pairs, panel).items():
            cost.setdefault(k, v)
    widths = sorted({w for s in stats for ws in s.values() for w in ws}, reverse=True)
    rows = []
    for w in widths:
        for line in lines:
            here = [s.get(line, {}).get(w) for s in stats]
            if not any(here):
                continue
            base = _baseline_of(line, lines, baseline)
            cells = [_cell(st, s.get(base, {}).get(w) if base else None) for st, s in zip(here, stats)]
            rows.append(Row(line, w, cost.get((line, w), {}), cells))
    first = ["method", "width", *(COST_NAMES[k] for k in cost_keys)]
    return Table(key, title, first, [name for _, _, name in columns], rows, cost_keys, baseline)



def summary_tables(pairs: list[tuple[Run, Line]], baseline: str | None) -> list[Table]:
    """The paper's layouts for the runs present: Table 4 and 6 (linear), Table 5 (COCO), Fig. 3 (VOC)."""
    measured = [r for r, _ in pairs if not r.source]
    tables = []
    datasets = _datasets(r.dataset for r in measured if r.task == "linear")
    for d in datasets:
        tables.append(width_table(f"table4-{d}", f"Linear top-1 (%) on {d} per width (Table 4 layout)", pairs,
                                  ("linear", d), "top1", baseline))
    if len(datasets) > 1:
        tables.append(row_table("table6", "Linear top-1 (%) per dataset (Table 6 layout)", pairs,
                                [(("linear", d), "top1", d) for d in datasets],
                                ["backbone_params", "backbone_macs"], baseline))
    for d in _datasets(r.dataset for r in measured if r.task == "knn"):
        tables.append(width_table(f"knn-{d}", f"kNN top-1 (%) on {d} per width (k=20, T=0.07)", pairs,
                                  ("knn", d), "knn20_top1", baseline))
    if any(r.task == "coco" for r in measured):
        tables.append(row_table("table5-coco", "COCO detection and segmentation (Table 5 layout)", pairs,
                                [(("coco", ""), m, name) for m, name in COCO_COLUMNS],
                                ["backbone_macs", "detector_macs", "detector_params"], baseline))
    if any(r.task == "voc" for r in measured):
        tables.append(width_table("fig3-voc", "VOC AP50 per width (Fig. 3 as a table)", pairs, ("voc", ""), "AP50",
                                  baseline))
        tables.append(row_table("voc", "VOC detection", pairs, [(("voc", ""), m, name) for m, name in VOC_COLUMNS],
                                ["backbone_macs", "detector_macs", "detector_params"], baseline))
    return tables


def _width(w: float) -> str:
    """1.0x, 0.75x, 0.5x, 0.35x: the paper's way of writing widths."""
    return f"{w:.1f}x" if round(w, 1) == w else f"{w:g}x"


def format_cell(cell: Cell, reference: bool = False) -> str:
    """``63.2 ± 0.4 (n=3) Δ+2.1``; ``failed`` when every run failed; a published value alone."""
    s = cell.stat
    if s is None:
        return "-"
    if not s.n:
        return "failed" if s.failed else "-"
    text = f"{s.mean:.1f}"
    if not reference:
        spread = f" ± {s.std:.1f}" if s.n > 1 else ""
        text += f"{spread} (n={s.n}{f', {s.failed} failed' if s.failed else ''})"
    return text + (f" Δ{cell.delta:+.1f}" if cell.delta is not None else "")


def _cost_text(cost: dict[str, float], key: str) -> str:
    return f"{cost[key] / (1e9 if key.endswith('macs') else 1e6):.3g}" if key in cost else "-"


def table_markdown(t: Table) -> str:
    """A markdown table with a one-line legend."""
    legend = "cells: mean ± std over seeds (n runs); failed: every run failed"
    if t.baseline:
        legend += f"; Δ: difference from {t.baseline} at the same width"
    lines = [f"### {t.title}", "", legend, "", "| " + " | ".join(t.first + t.columns) + " |",
             "|" + "---|" * (len(t.first) + len(t.columns))]
    for r in t.rows:
        lead = [r.line.label] + ([] if r.width is None else [_width(r.width)])
        lead += [_cost_text(r.cost, k) for k in t.cost_keys]
        lines.append("| " + " | ".join(lead + [format_cell(c, r.line.reference) for c in r.cells]) + " |")
    return "\n".join(lines)


CSV_FIELDS = ["table", "method", "source", "arch", "variant", "width", "column", "mean", "std", "n", "failed",
              "delta", "baseline", "backbone_params", "backbone_macs", "detector_params", "detector_macs"]


def table_csv_rows(t: Table) -> list[dict[str, Any]]:
    """Long-format rows of a table: one per cell, numbers unformatted."""
    out = []
    for r in t.rows:
        for i, (col, c) in enumerate(zip(t.columns, r.cells)):
            if c.stat is None:
                continue
            s = c.stat
            out.append({"table": t.key, "method": r.line.label, "source": r.line.source or "measured",
                        "arch": r.line.arch, "variant": r.line.variant,
                        "width": t.widths[i] if t.widths else r.width, "column": col,
                        "mean": s.mean if s.n else "", "std": s.std if s.n else "", "n": s.n, "failed": s.failed,
                        "delta": "" if c.delta is None else c.delta, "baseline": t.baseline or "",
                        **{k: r.cost.get(k, "") for k in COST_NAMES}})
    return out


def write_csv(path: Path, tables: Sequence[Table]) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for t in tables:
        w.writerows(table_csv_rows(t))
    with atomic_path(path) as tmp:
        Path(tmp).write_text(buf.getvalue())
    return path


# ---------------------------------------------------------------- the command


def data_groups(runs: Sequence[Run], suite: Suite | None = None, reference: str | os.PathLike | None = PAPER
                ) -> tuple[list[tuple[bool, list[tuple[Run, Line]]]], int]:
    """(demo, runs with their lines) for real results (with published values) and demo results, and the number
    of runs left out for not belonging to ``suite``."""
    pairs, dropped = assign_lines(runs, suite)
    groups = []
    for demo in (False, True):
        group = [(r, ln) for r, ln in pairs if r.demo == demo]
        if not group:
            continue
        if not demo and reference is not None:
            tables = suite.reference if suite else (DEFAULT_TABLES if Path(reference) == PAPER else None)
            refs = reference_runs(read_reference(reference), [r for r, _ in group], tables, suite)
            group += assign_lines(refs, suite)[0]
        groups.append((demo, group))
    return groups, dropped


def render(results_dir: str | os.PathLike, out_dir: str | os.PathLike, *, suite: Suite | None = None,
           reference: str | os.PathLike | None = PAPER, baseline: str | None = None,
           xs: tuple[str, ...] = ("width", "backbone_macs", "detector_macs")) -> tuple[list[Path], str]:
    """Write the figures, ``summary.md`` and the CSV tables of ``results_dir`` into ``out_dir``."""
    runs = read_runs(results_dir)
    if not runs:
        raise UsageError(f"no run records in {results_dir}; run `make sweep` (or `make demo`) first")
    groups, dropped = data_groups(runs, suite, reference)
    if not groups:
        raise UsageError(f"none of the {len(runs)} runs in {results_dir} belongs to suite {suite.name} "
                                f"({suite.path}); run `make sweep SUITE={suite.path}` first")
    baseline = baseline or (suite.baseline if suite else None)
    out = Path(out_dir)
    figures = [save_figure(build_figure(spec), out / f"{spec.name}.png") for spec in figure_specs(groups, xs)]
    sections = []
    for demo, pairs in groups:
        tables = summary_tables(pairs, baseline)
        write_csv(out / ("demo-summary.csv" if demo else "summary.csv"), tables)
        title = ("## Demo data (built-in shapes at CPU scale; not benchmark numbers)" if demo
                 else "## Benchmark results" + (f" (published values: {reference})" if reference else ""))
        sections.append("\n\n".join([title, *(table_markdown(t) for t in tables)]))
    head = f"# Suite {suite.name} ({suite.path})\n\n" if suite else ""
    note = f"\n\n{dropped} run(s) in {results_dir} belong to no method of the suite: left out." if dropped else ""
    summary = head + "\n\n".join(sections) + note + "\n"
    with atomic_path(out / "summary.md") as tmp:
        Path(tmp).write_text(summary)
    return figures, summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m transfer.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="results directory (JSON run records)")
    p.add_argument("-o", "--output", default="output/plots", help="directory of the figures and tables")
    p.add_argument("--suite", help="suite file (suites/*.yaml): its methods are the lines, its baseline the deltas")
    p.add_argument("--output-root", default="output", help="what $OUTPUT stands for in the suite (default output)")
    p.add_argument("--baseline", help="method the deltas are against (default: the suite's)")
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--reference", default=str(PAPER), help="published values to overlay on real-data results "
                                                            "(default: the US3L paper's, shipped)")
    ref.add_argument("--no-reference", action="store_true", help="overlay no published values")
    p.add_argument("--x", default="width,backbone_macs,detector_macs",
                   help=f"x-axes, comma-separated, of {', '.join(X_AXES)} (detector ones on detection figures)")
    a = p.parse_args(argv)
    return run_cli(p.prog, lambda: plot_command(a))


def plot_command(a: argparse.Namespace) -> None:
    """Render the figures and tables a command line asks for; print the summary and what was written."""
    xs = tuple(x.strip() for x in a.x.split(","))
    if not xs or any(x not in X_AXES for x in xs):
        raise UsageError(f"--x takes a comma-separated subset of {', '.join(X_AXES)}, got {a.x!r}")
    if not Path(a.results).is_dir():
        raise UsageError(f"no results directory {a.results}; run `make sweep` (or `make demo`) first")
    suite = load_suite(a.suite, a.output_root) if a.suite else None
    figures, summary = render(a.results, a.output, suite=suite, reference=None if a.no_reference else a.reference,
                              baseline=a.baseline, xs=xs)
    print(summary)
    for f in figures:
        print(f"wrote {f}")
    print(f"wrote {Path(a.output) / 'summary.md'} and the CSV tables beside it")


if __name__ == "__main__":
    sys.exit(main())
