"""Plots and summary tables of a results directory.

``python -m transfer.plot RESULTS_DIR -o PLOTS_DIR [--reference FILE]`` draws VOC AP50/AP/AP75, COCO box
and mask AP and linear top-1 per dataset versus width and versus backbone MACs, one line per
(method, checkpoint), and writes ``summary.md`` (printed too) in the paper's layout: detection and
linear tables with one row per (method, width). Records on the built-in demo data go to their own
figures (``demo-*.png``) and their own tables, labelled as demo data: never in a line or row with
real results. ``--reference`` overlays published values (see :func:`read_reference`) on the real
figures and adds them to the real tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from us3l.atomic import atomic_path

from .results import read_records

# (figure, task of the records, [(metric key, panel title)])
DETECTION_PANELS = {
    "voc": [("AP50", "VOC AP50"), ("AP", "VOC AP"), ("AP75", "VOC AP75")],
    "coco": [("box_AP", "COCO box AP"), ("mask_AP", "COCO mask AP")],
}
LINEAR_TASKS = ("linear", "linear-augment")


@dataclass(frozen=True)
class Series:
    """One line of a plot: a method's checkpoint (or a published reference), on demo or real data."""

    method: str
    source: str  # checkpoint name + hash prefix, or the reference's citation
    demo: bool
    reference: bool = False

    @property
    def label(self) -> str:
        return f"{self.method} ({self.source})" + (" [demo data]" if self.demo else "")


def series_of(rec: dict[str, Any]) -> Series:
    """The line a record belongs to."""
    if rec.get("reference"):
        return Series(rec["method"], rec["source"], False, reference=True)
    name = Path(rec.get("checkpoint", "")).parent.name or Path(rec.get("checkpoint", "")).name
    return Series(rec.get("method", "?"), f"{name} {rec.get('checkpoint_sha256', '')[:6]}".strip(),
                  bool(rec.get("demo")))


def latest(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (series, task, dataset, width): the last finished."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in records:
        key = (series_of(r), r["task"], r["dataset"], round(float(r["width"]), 6))
        if key not in best or r.get("finished_at", "") >= best[key].get("finished_at", ""):
            best[key] = r
    return list(best.values())


def read_reference(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Published values as pseudo-records.

    The file is JSON: ``{"source": "US3L CVPR 2023", "entries": [{"table": "Table 5", "method": "US3L",
    "arch": "resnet50", "task": "voc", "dataset": "voc_2007_test", "width": 0.5, "macs": 1.06e9,
    "metrics": {"AP50": ...}}, ...]}``; ``macs`` is optional (the point is then drawn only versus width).
    """
    with open(path) as f:
        data = json.load(f)
    out = []
    for i, e in enumerate(data.get("entries", [])):
        missing = {"method", "task", "dataset", "width", "metrics"} - set(e)
        if missing:
            raise ValueError(f"{path}: entry {i} lacks {', '.join(sorted(missing))}")
        source = f"{data.get('source', Path(path).stem)} {e.get('table', '')}".strip()
        out.append({**e, "reference": True, "source": source, "demo": False, "width": float(e["width"]),
                    "macs": e.get("macs")})
    return out


def _panels(records: list[dict[str, Any]]) -> dict[str, list[tuple[str, str, str, str]]]:
    """Figure name -> panels (task, dataset or '', metric, title) present in ``records``."""
    figures: dict[str, list[tuple[str, str, str, str]]] = {}
    for task, panels in DETECTION_PANELS.items():
        have = [(task, "", m, t) for m, t in panels
                if any(r["task"] == task and m in r["metrics"] for r in records)]
        if have:
            figures[task] = have
    for task in LINEAR_TASKS:
        datasets = sorted({r["dataset"] for r in records if r["task"] == task})
        if datasets:
            title = "linear top-1" + (" (augment)" if task == "linear-augment" else "")
            figures[task] = [(task, d, "top1", f"{d} {title}") for d in datasets]
    return figures


def _points(records: list[dict[str, Any]], task: str, dataset: str, metric: str) -> dict[Series, list[tuple]]:
    lines: dict[Series, list[tuple]] = {}
    for r in records:
        if r["task"] != task or (dataset and r["dataset"] != dataset) or metric not in r["metrics"]:
            continue
        lines.setdefault(series_of(r), []).append((r["width"], r.get("macs"), r["metrics"][metric]))
    return {s: sorted(p) for s, p in lines.items()}


@dataclass
class FigureSpec:
    """One figure file: its records (all demo, or all real plus references) and its panels."""

    name: str
    demo: bool
    panels: list[tuple[str, str, str, str]]
    records: list[dict[str, Any]]


def groups(records: list[dict[str, Any]], reference: list[dict[str, Any]]) -> list[tuple[bool, list[dict[str, Any]]]]:
    """(demo, records) for the real results (with the references) and for the demo results, when present."""
    out = []
    for demo in (False, True):
        group = [r for r in records if bool(r.get("demo")) == demo]
        if group:
            out.append((demo, group if demo else group + reference))
    return out


def figure_specs(records: list[dict[str, Any]], reference: list[dict[str, Any]]) -> list[FigureSpec]:
    """The figures of ``records``: demo results in ``demo-*`` figures of their own."""
    return [FigureSpec(f"{'demo-' if demo else ''}{name}", demo, panels, group)
            for demo, group in groups(records, reference) for name, panels in _panels(group).items()]


def build_figure(spec: FigureSpec):
    """A matplotlib figure: a column per panel, metric versus width (top) and versus backbone MACs (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(spec.panels), figsize=(4.2 * len(spec.panels), 7), squeeze=False)
    for col, (task, dataset, metric, title) in enumerate(spec.panels):
        for s, pts in sorted(_points(spec.records, task, dataset, metric).items(), key=lambda kv: kv[0].label):
            style = {"linestyle": "--", "marker": "x"} if s.reference else {"linestyle": "-", "marker": "o"}
            axes[0][col].plot([p[0] for p in pts], [p[2] for p in pts], label=s.label, **style)
            with_macs = [p for p in pts if p[1]]
            if with_macs:
                axes[1][col].plot([p[1] / 1e9 for p in with_macs], [p[2] for p in with_macs], label=s.label, **style)
        axes[0][col].set_title(title + (" - DEMO DATA" if spec.demo else ""))
        axes[0][col].set_xlabel("width")
        axes[1][col].set_xlabel("backbone GMACs")
        for row in axes:
            row[col].set_ylabel("top-1 (%)" if metric == "top1" else metric)
            row[col].grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, max(1, len(labels))), fontsize=8)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) // 3), 1, 1))
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


def _width(w: float) -> str:
    """1.0x, 0.75x, 0.5x, 0.35x: the paper's way of writing widths."""
    return f"{w:.1f}x" if round(w, 1) == w else f"{w:g}x"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def summary_tables(records: list[dict[str, Any]]) -> str:
    """Markdown tables in the paper's layout: one row per (method, checkpoint, width)."""
    parts = []
    det_cols = [(task, m, t) for task, panels in DETECTION_PANELS.items() for m, t in panels]
    det = [r for r in records if r["task"] in DETECTION_PANELS]
    if det:
        parts.append(_table(det, "Detection", [(t, lambda rs, task=task, m=m: _metric(rs, task, None, m))
                                               for task, m, t in det_cols
                                               if any(r["task"] == task and m in r["metrics"] for r in det)]))
    for task in LINEAR_TASKS:
        lin = [r for r in records if r["task"] == task]
        if lin:
            datasets = sorted({r["dataset"] for r in lin})
            name = "Linear top-1" + (" (augment)" if task == "linear-augment" else "")
            parts.append(_table(lin, name, [(d, lambda rs, d=d, task=task: _metric(rs, task, d, "top1"))
                                            for d in datasets]))
    return "\n\n".join(parts)


def _metric(rows: list[dict[str, Any]], task: str, dataset: str | None, metric: str) -> float | None:
    for r in rows:
        if r["task"] == task and (dataset is None or r["dataset"] == dataset) and metric in r["metrics"]:
            return r["metrics"][metric]
    return None


def _table(records: list[dict[str, Any]], name: str, columns: list[tuple[str, Any]]) -> str:
    groups: dict[tuple[Series, float], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((series_of(r), round(float(r["width"]), 6)), []).append(r)
    head = ["method (checkpoint)", "width", "backbone GMACs", *[c for c, _ in columns]]
    lines = [f"**{name}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (s, w), rows in sorted(groups.items(), key=lambda kv: (kv[0][0].reference, kv[0][0].label, -kv[0][1])):
        macs = next((r["macs"] for r in rows if r.get("macs")), None)
        cells = [s.label, _width(w), "-" if not macs else f"{macs / 1e9:.3g}", *[_fmt(f(rows)) for _, f in columns]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(results_dir: str | os.PathLike, out_dir: str | os.PathLike,
           reference: str | os.PathLike | None = None) -> tuple[list[Path], str]:
    """Write the figures and ``summary.md`` of ``results_dir`` into ``out_dir``; returns (figures, summary)."""
    records = latest(read_records(results_dir))
    if not records:
        raise FileNotFoundError(f"no results records in {results_dir}; run `make sweep` (or `make demo`) first")
    ref = read_reference(reference) if reference else []
    out = Path(out_dir)
    figures = [save_figure(build_figure(spec), out / f"{spec.name}.png") for spec in figure_specs(records, ref)]
    sections = []
    for demo, group in groups(records, ref):
        title = ("## Demo data (built-in shapes at CPU scale; not benchmark numbers)" if demo
                 else "## Benchmark results")
        sections.append(f"{title}\n\n{summary_tables(group)}")
    summary = "\n\n".join(sections) + "\n"
    with atomic_path(out / "summary.md") as tmp:
        Path(tmp).write_text(summary)
    return figures, summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m transfer.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="results directory (JSON records)")
    p.add_argument("-o", "--output", default="output/plots", help="directory of the figures and summary.md")
    p.add_argument("--reference", help="JSON file of published values to overlay (see transfer.plot.read_reference)")
    a = p.parse_args(argv)
    if not Path(a.results).is_dir():
        print(f"transfer.plot: error: no results directory {a.results}; run `make sweep` (or `make demo`) first",
              file=sys.stderr)
        return 2
    try:
        figures, summary = render(a.results, a.output, a.reference)
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as e:
        print(f"transfer.plot: error: {e}", file=sys.stderr)
        return 2
    print(summary)
    for f in figures:
        print(f"wrote {f}")
    print(f"wrote {Path(a.output) / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
