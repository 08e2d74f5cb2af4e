"""Plots and summary tables from run records: families, mean ± std over seeds, failures, deltas, overlays."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import matplotlib
import pytest
from matplotlib.container import ErrorbarContainer
from support import ROOT

from transfer import plot
from transfer.reference import PAPER
from transfer.suites import load_suite

matplotlib.use("Agg")

US3L = "/ck/imagenet_r50/backbone.pth"


def byol(w: float) -> str:
    """A per-width BYOL checkpoint, named as pretrain.per_width names its runs."""
    return f"/ck/imagenet_r50_byol_w{round(w * 100):03d}/backbone.pth"


def record(task: str, dataset: str, width: float, metrics: dict[str, float] | None, *, checkpoint: str = US3L,
           method: str = "us3l", seed: int = 0, demo: bool = False, random_init: bool = False,
           protocol: dict | None = None, arch: str = "resnet50", macs: float | None = None) -> dict:
    """A record of version 2 as the jobs write it; ``metrics=None`` makes a failed run."""
    spec = {"task": task, "dataset": dataset, "width": width, "checkpoint": checkpoint,
            "checkpoint_sha256": hashlib.sha256(checkpoint.encode()).hexdigest(), "method": method, "arch": arch,
            "seed": seed, "demo": demo, "random_init": random_init, "protocol": protocol or {"lr": 0.1},
            "overrides": []}
    cost = {"backbone_params": int(25e6 * width ** 2), "backbone_macs": int(macs or 4.1e9 * width ** 2),
            "input_size": 224}
    if task in ("voc", "coco"):
        cost.update(detector_params=int(40e6 * width), detector_macs=int(180e9 * width))
    return {"record_version": 2, "id": hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16],
            "status": "ok" if metrics is not None else "failed",
            "error": None if metrics is not None else "loss is nan at iteration 3", "spec": spec,
            "metrics": metrics or {}, "undefined_metrics": [], "cost": cost,
            "provenance": {"precision": "float32", "device": "cpu", "git_commit": "0" * 40}, "wall_time_s": 1.0,
            "finished_at": "2026-12-01T00:00:00+0000"}


def write(results: Path, *records: dict) -> None:
    results.mkdir(parents=True, exist_ok=True)
    for r in records:
        (results / f"{r['spec']['task']}-{r['id']}.json").write_text(json.dumps(r, allow_nan=False))


def suite_file(tmp_path: Path, tasks: str = "[linear:cifar10]", reference: str = "[]") -> Path:
    text = f"""arch: resnet50
widths: [1.0, 0.5, 0.25]
tasks: {tasks}
baseline: BYOL
reference: {reference}
methods:
  US3L:
    checkpoint: {US3L}
  BYOL:
    checkpoints: {{1.0: {byol(1.0)}, 0.5: {byol(0.5)}, 0.25: {byol(0.25)}}}
"""
    (tmp_path / "suite.yaml").write_text(text)
    return tmp_path / "suite.yaml"


@pytest.fixture
def linear_results(tmp_path):
    """US3L: 3 seeds at 1.0 (70, 72, 74), 2 of 3 at 0.5 (60, 62; one failed), every run failed at 0.25.
    BYOL, one checkpoint per width: 1.0 -> 71, 0.5 -> 55 and 57, 0.25 -> 40."""
    r = tmp_path / "results"
    write(r, *(record("linear", "cifar10", 1.0, {"top1": v}, seed=s) for s, v in enumerate((70.0, 72.0, 74.0))),
          record("linear", "cifar10", 0.5, {"top1": 60.0}, seed=0), record("linear", "cifar10", 0.5, {"top1": 62.0},
                                                                            seed=1),
          record("linear", "cifar10", 0.5, None, seed=2),
          *(record("linear", "cifar10", 0.25, None, seed=s) for s in range(2)),
          record("linear", "cifar10", 1.0, {"top1": 71.0}, checkpoint=byol(1.0), method="byol"),
          *(record("linear", "cifar10", 0.5, {"top1": v}, checkpoint=byol(0.5), method="byol", seed=s)
            for s, v in enumerate((55.0, 57.0))),
          record("linear", "cifar10", 0.25, {"top1": 40.0}, checkpoint=byol(0.25), method="byol"))
    return r


def _row(summary: str, title: str, label: str) -> list[str]:
    """The cells of ``label``'s row in the table titled ``title``."""
    section = summary.split(f"### {title}")[1].split("###")[0]
    [row] = [ln for ln in section.splitlines() if ln.startswith(f"| {label} |")]
    return [c.strip() for c in row.strip("|").split("|")]


def test_table_shows_mean_std_n_failed_and_deltas(linear_results, tmp_path):
    suite = load_suite(suite_file(tmp_path))
    _, summary = plot.render(linear_results, tmp_path / "plots", suite=suite, reference=None)
    title = "Linear top-1 (%) on cifar10 per width (Table 4 layout)"
    assert "| method | 1.0x | 0.5x | 0.25x |" in summary
    # US3L - BYOL: 72 - 71 = +1; 61 - 56 = +5; nothing to compare where every run failed
    assert _row(summary, title, "US3L") == ["US3L", "72.0 ± 2.0 (n=3) Δ+1.0", "61.0 ± 1.4 (n=2, 1 failed) Δ+5.0",
                                            "failed"]
    assert _row(summary, title, "BYOL") == ["BYOL", "71.0 (n=1)", "56.0 ± 1.4 (n=2)", "40.0 (n=1)"]
    assert "Δ: difference from BYOL at the same width" in summary
    rows = list(csv.DictReader((tmp_path / "plots" / "summary.csv").open()))
    [cell] = [r for r in rows if r["table"] == "table4-cifar10" and r["method"] == "US3L" and r["width"] == "0.5"]
    assert (float(cell["mean"]), float(cell["std"]), cell["n"], cell["failed"], float(cell["delta"])) == (
        61.0, pytest.approx(2 ** 0.5), "2", "1", 5.0)
    [failed] = [r for r in rows if r["method"] == "US3L" and r["width"] == "0.25"]
    assert (failed["mean"], failed["n"], failed["failed"], failed["delta"]) == ("", "0", "2", "")


def test_one_line_per_method_with_error_bars(linear_results, tmp_path):
    suite = load_suite(suite_file(tmp_path))
    groups, dropped = plot.data_groups(plot.read_runs(linear_results), suite, reference=None)
    assert dropped == 0
    [spec] = plot.figure_specs(groups)
    [panel] = spec.panels
    lines = plot.series(spec, panel, "width")
    assert {ln.label: [(p.x, p.mean, p.n) for p in pts] for ln, pts in lines.items()} == {
        "US3L": [(0.5, 61.0, 2), (1.0, 72.0, 3)],  # 0.25 failed: skipped
        "BYOL": [(0.25, 40.0, 1), (0.5, 56.0, 2), (1.0, 71.0, 1)],  # three checkpoints, one line
    }
    fig = plot.build_figure(spec)
    assert [ax.get_xlabel() for ax in fig.axes] == ["width", "backbone GMACs"]  # no detector axis for linear
    for ax in fig.axes:
        bars = {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}
        assert set(bars) == {"US3L", "BYOL"}
        data_line, _, (segments,) = bars["US3L"].lines
        assert list(data_line.get_ydata()) == [61.0, 72.0]
        heights = sorted(round(float(s[1][1] - s[0][1]), 6) for s in segments.get_segments())
        assert heights == [round(2 * 2 ** 0.5, 6), 4.0]  # +-1 std: 1.414 at 0.5, 2.0 at 1.0
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["US3L", "BYOL"]
    matplotlib.pyplot.close(fig)


def test_without_suite_a_per_width_family_is_one_line(linear_results):
    groups, _ = plot.data_groups(plot.read_runs(linear_results), reference=None)
    [spec] = plot.figure_specs(groups)
    lines = plot.series(spec, spec.panels[0], "backbone_macs")
    assert sorted(ln.label for ln in lines) == ["byol (imagenet_r50_byol)", "us3l (imagenet_r50)"]
    [byol_line] = [pts for ln, pts in lines.items() if ln.method == "byol"]
    assert [round(p.x, 4) for p in byol_line] == [0.2562, 1.025, 4.1]  # backbone GMACs of the three checkpoints


def test_runs_differing_in_protocol_are_separate_lines(tmp_path):
    r = tmp_path / "r"
    write(r, *(record("linear", "cifar10", 1.0, {"top1": v}, protocol={"lr": lr, "epochs": 90})
               for lr, v in ((0.1, 50.0), (1.0, 70.0))))
    groups, _ = plot.data_groups(plot.read_runs(r), reference=None)
    [spec] = plot.figure_specs(groups)
    lines = plot.series(spec, spec.panels[0], "width")
    assert {ln.label: [p.mean for p in pts] for ln, pts in lines.items()} == {
        "us3l (imagenet_r50) [lr=0.1]": [50.0], "us3l (imagenet_r50) [lr=1.0]": [70.0]}


def test_width_dependent_protocol_values_and_digests_keep_one_line(tmp_path):
    """Detection protocols hold the FPN width (changes with the width) and a config digest (changes with the
    seed): neither splits a method's line, and the seeds of a width are averaged."""
    r = tmp_path / "r"
    write(r, *(record("voc", "voc_2007_test", w, {"AP50": 50.0 + s}, seed=s,
                      protocol={"base_lr": 0.02, "fpn_channels": int(256 * w), "config_sha256": f"{w}-{s}"})
               for w in (1.0, 0.5) for s in range(2)))
    groups, _ = plot.data_groups(plot.read_runs(r), reference=None)
    [spec] = plot.figure_specs(groups)
    lines = plot.series(spec, spec.panels[0], "width")
    assert {ln.label: [(p.x, p.mean, p.n) for p in pts] for ln, pts in lines.items()} == {
        "us3l (imagenet_r50)": [(0.5, 50.5, 2), (1.0, 50.5, 2)]}


def test_a_retrained_checkpoint_is_not_averaged_with_the_old_one(tmp_path):
    r = tmp_path / "r"
    old, new = record("linear", "cifar10", 1.0, {"top1": 50.0}), record("linear", "cifar10", 1.0, {"top1": 70.0})
    new["spec"]["checkpoint_sha256"] = "f" * 64
    new["id"] = "1" * 16
    write(r, old, new)
    groups, _ = plot.data_groups(plot.read_runs(r), reference=None)
    labels = {ln.label for _, ln in groups[0][1]}
    assert len(labels) == 2 and all(lb.startswith("us3l (imagenet_r50) ") for lb in labels)


@pytest.fixture
def mixed_results(tmp_path):
    """Real COCO, VOC and linear runs of US3L and BYOL at 1.0 and 0.25, and the same tasks on demo data."""
    r = tmp_path / "results"
    for w in (1.0, 0.25):
        for ck, method, base in ((US3L, "us3l", 30.0), (byol(w), "byol", 20.0)):
            write(r, record("coco", "coco_2017_val", w, {f"{k}_{m}": base + w for k in ("box", "mask")
                                                         for m in ("AP", "AP50", "AP75")}, checkpoint=ck,
                            method=method),
                  record("voc", "voc_2007_test", w, {"AP": base, "AP50": base + 20, "AP75": base + 5},
                         checkpoint=ck, method=method),
                  *(record("linear", d, w, {"top1": base + 40}, checkpoint=ck, method=method)
                    for d in ("cifar10", "dtd")))
        # demo values below 10: any mixing with real values (>= 20) shows
        write(r, record("voc", "voc_demo_test", w, {"AP": 1.0, "AP50": 2.0, "AP75": 0.5}, demo=True, arch="resnet18",
                        checkpoint="/ck/demo_shapes/backbone.pth"),
              record("linear", "shapes", w, {"top1": 5.0}, demo=True, arch="resnet18",
                     checkpoint="/ck/demo_shapes/backbone.pth"))
    return r


def test_reference_overlay_on_real_results_only(mixed_results, tmp_path):
    suite = load_suite(suite_file(tmp_path, "[voc, coco, linear:cifar10, linear:dtd]", "[Table 5, Table 6]"))
    figures, real = plot.render(mixed_results, tmp_path / "plots", suite=suite)
    assert sorted(f.name for f in figures) == ["coco.png", "linear.png", "voc.png"]  # the demo runs are not in it
    assert "4 run(s) in" in real and "belong to no method of the suite" in real
    groups, _ = plot.data_groups(plot.read_runs(mixed_results), suite)
    for spec in plot.figure_specs(groups):
        fig = plot.build_figure(spec)
        labels = {ln.get_label() for ax in fig.axes for ln in ax.get_lines() if not ln.get_label().startswith("_")}
        assert labels == {"coco": {"US3L (paper Table 5, R-50)", "BYOL (paper Table 5, R-50)"},
                          "linear": {"US3L (paper Table 6, R-50)", "BYOL (paper Table 6, R-50)"}}.get(spec.name,
                                                                                                     set())
        matplotlib.pyplot.close(fig)
    # the paper's own delta next to ours: US3L - BYOL box AP at 0.25x is 27.5 - 26.0
    cells = _row(real, "COCO detection and segmentation (Table 5 layout)", "US3L (paper Table 5, R-50) | 0.25x")
    assert cells[5] == "27.5 Δ+1.5"
    ours = _row(real, "COCO detection and segmentation (Table 5 layout)", "US3L | 0.25x")
    assert ours[5] == "30.2 (n=1) Δ+10.0" and ours[2:5] == ["0.256", "45", "10"]  # GMACs, detector GMACs, params


def test_demo_and_real_never_share_a_figure_or_table(mixed_results, tmp_path):
    figures, summary = plot.render(mixed_results, tmp_path / "plots")
    real, demo = summary.split("## Demo data")
    assert "demo_shapes" not in real and "imagenet_r50" not in demo and "paper" in real and "paper" not in demo
    assert sorted(f.name for f in figures) == ["coco.png", "demo-linear.png", "demo-voc.png", "linear.png", "voc.png"]
    groups, _ = plot.data_groups(plot.read_runs(mixed_results))
    for spec in plot.figure_specs(groups):
        fig = plot.build_figure(spec)
        assert all(("DEMO DATA" in ax.get_title()) == spec.demo for ax in fig.axes if ax.get_title())
        assert any(ln.reference for _, ln in spec.pairs) != spec.demo  # published values beside real results only
        assert {r.demo for r, _ in spec.pairs} == {spec.demo}
        matplotlib.pyplot.close(fig)
    demo_rows = list(csv.DictReader((tmp_path / "plots" / "demo-summary.csv").open()))
    assert demo_rows and all(float(r["mean"]) < 10 for r in demo_rows)
    assert all(float(r["mean"]) >= 20 for r in csv.DictReader((tmp_path / "plots" / "summary.csv").open()))


def test_table_layouts(mixed_results, tmp_path):
    _, summary = plot.render(mixed_results, tmp_path / "p", reference=None, baseline="byol")
    assert "| method | width | backbone GMACs | detector GMACs | detector params (M) | box AP | box AP50 | box AP75 " \
           "| mask AP | mask AP50 | mask AP75 |" in summary
    assert "| method | width | backbone params (M) | backbone GMACs | cifar10 | dtd |" in summary
    assert _row(summary, "VOC AP50 per width (Fig. 3 as a table)", "us3l (imagenet_r50)") == [
        "us3l (imagenet_r50)", "50.0 (n=1) Δ+10.0", "50.0 (n=1) Δ+10.0"]
    assert _row(summary, "Linear top-1 (%) per dataset (Table 6 layout)", "us3l (imagenet_r50) | 0.25x")[4:] == [
        "70.0 (n=1) Δ+10.0", "70.0 (n=1) Δ+10.0"]


def test_detection_figures_can_use_detector_cost(mixed_results):
    groups, _ = plot.data_groups(plot.read_runs(mixed_results), reference=None)
    spec = next(s for s in plot.figure_specs(groups, ("width", "detector_macs", "detector_params"))
                if s.name == "voc")
    assert spec.axes == ["width", "detector_macs", "detector_params"]
    lines = plot.series(spec, spec.panels[0], "detector_params")
    assert {ln.method: [p.x for p in pts] for ln, pts in lines.items()} == {"us3l": [10.0, 40.0],
                                                                           "byol": [10.0, 40.0]}


def test_default_reference_is_the_shipped_paper(tmp_path):
    assert PAPER.is_file() and PAPER.parent.name == "reference"
    r = tmp_path / "r"
    write(r, record("linear", "cifar10", 0.5, {"top1": 80.0}))
    _, summary = plot.render(r, tmp_path / "p")
    # without a suite: the ImageNet-pretraining tables (6 here), all methods, none of Table 2
    assert "US3L (paper Table 6, R-50)" in summary and "BYOL (paper Table 6, R-50)" in summary
    assert "Table 2" not in summary.replace("published values", "")


def test_cli(tmp_path, linear_results, capsys):
    assert plot.main([str(tmp_path / "nowhere"), "-o", str(tmp_path / "p")]) == 2
    assert "make sweep" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert plot.main([str(tmp_path / "empty"), "-o", str(tmp_path / "p")]) == 2
    assert plot.main([str(linear_results), "-o", str(tmp_path / "p"), "--x", "width,flops"]) == 2
    assert "--x takes" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"entries": [{"method": "m"}]}))
    assert plot.main([str(linear_results), "-o", str(tmp_path / "p"), "--reference", str(bad)]) == 2
    assert "entry 0 lacks table" in capsys.readouterr().err
    other = suite_file(tmp_path)
    other.write_text(other.read_text().replace("/ck/", "/elsewhere/"))
    assert plot.main([str(linear_results), "-o", str(tmp_path / "p"), "--suite", str(other)]) == 2
    assert "none of the 12 runs" in capsys.readouterr().err
    assert plot.main([str(linear_results), "-o", str(tmp_path / "p"), "--suite", str(suite_file(tmp_path))]) == 0
    assert "Δ+5.0" in capsys.readouterr().out and (tmp_path / "p" / "linear.png").is_file()


def test_broken_record_is_named(tmp_path):
    r = tmp_path / "r"
    rec = record("linear", "cifar10", 1.0, {"top1": 1.0})
    del rec["spec"]["width"]
    write(r, rec)
    with pytest.raises(ValueError, match=r"linear-.*\.json: not a complete run record .*width"):
        plot.read_runs(r)


def test_demo_suite_with_random_init_baseline(tmp_path):
    """US3L (one checkpoint), BYOL trained at 1.0 and 0.5, and random initialisation of US3L's network: three
    lines, deltas against random init, labelled demo data, no published values."""
    demo_ck = "/ck/pretrain/demo_shapes/backbone.pth"
    r = tmp_path / "r"
    for w in (1.0, 0.5, 0.25):
        write(r, *(record("linear", "shapes", w, {"top1": 80.0 + w + s}, checkpoint=demo_ck, seed=s, demo=True)
                   for s in range(2)),
              record("linear", "shapes", w, {"top1": 30.0}, checkpoint=demo_ck, random_init=True, demo=True))
    for w in (1.0, 0.5):
        ck = f"/ck/pretrain/demo_shapes_byol_w{round(w * 100):03d}/backbone.pth"
        write(r, record("linear", "shapes", w, {"top1": 60.0}, checkpoint=ck, method="byol", demo=True))
    (tmp_path / "demo.yaml").write_text(
        (ROOT / "suites" / "demo.yaml").read_text().replace("[linear:shapes, voc]",
                                                                                              "[linear:shapes]"))
    suite = load_suite(tmp_path / "demo.yaml", output="/ck")
    figures, summary = plot.render(r, tmp_path / "p", suite=suite)
    assert [f.name for f in figures] == ["demo-linear.png"] and "## Benchmark" not in summary
    assert "paper" not in summary and "## Demo data" in summary
    title = "Linear top-1 (%) on shapes per width (Table 4 layout)"
    assert _row(summary, title, "US3L")[1:] == ["81.5 ± 0.7 (n=2) Δ+51.5", "81.0 ± 0.7 (n=2) Δ+51.0",
                                                "80.8 ± 0.7 (n=2) Δ+50.8"]
    assert _row(summary, title, "BYOL")[1:] == ["60.0 (n=1) Δ+30.0", "60.0 (n=1) Δ+30.0", "-"]
    assert _row(summary, title, "random init")[1:] == ["30.0 (n=1)"] * 3
    groups, _ = plot.data_groups(plot.read_runs(r), suite)
    [spec] = plot.figure_specs(groups)
    lines = plot.series(spec, spec.panels[0], "width")
    assert {ln.label: len(pts) for ln, pts in lines.items()} == {"US3L": 3, "BYOL": 2, "random init": 3}


def test_reads_the_records_the_jobs_write(tmp_path):
    """A record written by us3l.jobs (the writer of every evaluation job) reads back as the same run."""
    from us3l import jobs

    spec = jobs.JobSpec(task="linear", dataset="cifar10", width=0.5, checkpoint=US3L, checkpoint_sha256="a" * 64,
                        method="us3l", arch="resnet50", seed=3, demo=False, protocol={"lr": 30.0, "augment": False})
    ok = jobs.make_record(spec, metrics={"top1": 61.5}, cost={"backbone_macs": 1_000_000_000},
                          provenance={"precision": "float32"}, wall_time_s=2.0)
    failed = jobs.make_record(jobs.JobSpec(**{**spec.__dict__, "seed": 4}), metrics={}, cost={}, provenance={},
                              wall_time_s=1.0, error="loss is nan")
    for rec in (ok, failed):
        jobs.write_record(tmp_path, rec)
    runs = sorted(plot.read_runs(tmp_path), key=lambda r: r.seed)
    assert [(r.id, r.ok, r.seed, r.width, r.metrics) for r in runs] == [
        (spec.id, True, 3, 0.5, {"top1": 61.5}), (failed["id"], False, 4, 0.5, {})]
    assert runs[0].cost == {"backbone_macs": 1e9} and runs[0].checkpoint == US3L
