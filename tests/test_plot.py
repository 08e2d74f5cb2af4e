"""Plots and summary tables: demo and real results never share a line or a row; references overlay real ones."""

from __future__ import annotations

import json

import matplotlib
import pytest

from transfer import plot
from transfer.results import make_record, read_records, write_record

matplotlib.use("Agg")

WIDTHS = (1.0, 0.75, 0.5, 0.25)
SHA = "c" * 64  # the same checkpoint and method for demo and real runs


def _write(results, task, dataset, metrics_of, demo):
    for w in WIDTHS:
        write_record(results, make_record(task, dataset, w, metrics_of(w), demo=demo, checkpoint="/x/run/backbone.pth",
                                          checkpoint_sha256=SHA, method="us3l", arch="resnet18", params=1,
                                          macs=int(1.8e9 * w * w), config={}, wall_time_s=1.0))


@pytest.fixture
def results(tmp_path):
    # demo values lie in [0, 40), real values in [50, 100]: any mixing shows in the numbers
    for demo, base, suffix in ((True, 0.0, "_demo"), (False, 50.0, "")):
        _write(tmp_path, "voc", "voc_2007_test" + suffix, lambda w, b=base: {"AP": b + 10 * w, "AP50": b + 20 * w,
                                                                   "AP75": b + 5 * w}, demo)
        _write(tmp_path, "coco", "coco_2017_val" + suffix,
               lambda w, b=base: {"box_AP": b + 8 * w, "mask_AP": b + 7 * w}, demo)
        _write(tmp_path, "linear", "shapes" if demo else "cifar10",
               lambda w, b=base: {"top1": b + 30 * w, "top5": b + 40 * w}, demo)
    return tmp_path


def _values(fig):
    """(label, y values) of every line of a figure."""
    return [(line.get_label(), list(line.get_ydata())) for ax in fig.axes for line in ax.get_lines()]


def test_demo_and_real_results_never_share_a_line(results):
    specs = plot.figure_specs(plot.latest(read_records(results)), [])
    assert sorted(s.name for s in specs) == ["coco", "demo-coco", "demo-linear", "demo-voc", "linear", "voc"]
    for spec in specs:
        fig = plot.build_figure(spec)
        lines = _values(fig)
        assert lines and all(len(ys) == 4 for _, ys in lines)
        for label, ys in lines:
            assert ("[demo data]" in label) == spec.demo
            assert all((y < 40) if spec.demo else (y >= 50) for y in ys), (spec.name, label, ys)
        assert all(("DEMO DATA" in ax.get_title()) == spec.demo for ax in fig.axes if ax.get_title())
        matplotlib.pyplot.close(fig)


def test_summary_rows_never_mix_demo_and_real(results, tmp_path):
    figures, summary = plot.render(results, tmp_path / "plots")
    assert {f.name for f in figures} == {"voc.png", "coco.png", "linear.png", "demo-voc.png", "demo-coco.png",
                                         "demo-linear.png"}
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)
    assert (tmp_path / "plots" / "summary.md").read_text() == summary
    real, demo = summary.split("## Demo data")
    rows = [ln for ln in summary.splitlines() if ln.startswith("| us3l")]
    assert len(rows) == 16  # (detection + linear) x 4 widths x (demo, real)
    for row in rows:
        values = [float(c) for c in row.strip("|").split("|")[3:] if c.strip() not in ("-", "")]
        is_demo = "[demo data]" in row
        assert (row in demo) == is_demo and (row in real) != is_demo
        assert values and all((v < 40) if is_demo else (v >= 50) for v in values), row
    # the paper's layout: per width a row with VOC AP50/AP/AP75 and COCO box/mask AP; 0.5x row of real results
    [row] = [r for r in rows if "| 0.5x |" in r and "[demo" not in r and "VOC" not in r and r in real.split(
        "**Linear")[0]]
    assert row.split("|")[4:9] == [" 60.0 ", " 55.0 ", " 52.5 ", " 54.0 ", " 53.5 "]


def test_reference_overlay_only_on_real_figures(results, tmp_path):
    ref = tmp_path / "paper.json"
    ref.write_text(json.dumps({"source": "paper", "entries": [
        {"table": "Table 5", "method": "published", "task": "voc", "dataset": "voc_2007_test", "width": w,
         "metrics": {"AP50": 90.0 + w}} for w in WIDTHS]}))
    specs = plot.figure_specs(plot.latest(read_records(results)), plot.read_reference(ref))
    for spec in specs:
        labels = [label for label, _ in _values(plot.build_figure(spec))]
        assert any("published (paper Table 5)" in lb for lb in labels) == (spec.name == "voc")
    matplotlib.pyplot.close("all")
    _, summary = plot.render(results, tmp_path / "p", ref)
    real, demo = summary.split("## Demo data")
    assert "published (paper Table 5)" in real and "published" not in demo


def test_cli_errors(tmp_path, capsys):
    assert plot.main([str(tmp_path / "nowhere"), "-o", str(tmp_path / "p")]) == 2
    assert "make sweep" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert plot.main([str(tmp_path / "empty"), "-o", str(tmp_path / "p")]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"entries": [{"method": "m"}]}))
    _write(tmp_path / "r", "linear", "cifar10", lambda w: {"top1": w}, False)
    assert plot.main([str(tmp_path / "r"), "-o", str(tmp_path / "p"), "--reference", str(bad)]) == 2
    assert "entry 0 lacks" in capsys.readouterr().err
    assert plot.main([str(tmp_path / "r"), "-o", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "linear.png").is_file()
