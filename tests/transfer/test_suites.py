"""Suite files: the shipped paper suites, expansion into jobs, and one-line errors naming the fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support import ROOT

import us3l
from pretrain.per_width import run_name
from transfer import reference
from transfer.suites import SuiteError, SuiteJob, load_suite, suite_jobs
from us3l.models import us_resnet18

SHIPPED = sorted((ROOT / "suites").glob("*.yaml"))
def _shipped(name_filter=lambda p: True):
    return [pytest.param(p, id=p.stem) for p in SHIPPED if name_filter(p)]


@pytest.mark.parametrize("path", _shipped())
def test_shipped_suite_loads(path):
    suite = load_suite(path, output="OUT")
    jobs = suite_jobs(suite, check=False)
    assert len(jobs) == len(suite.tasks) * sum(len(m.widths) for m in suite.methods)
    for m in suite.methods:
        for w, ckpt in m.checkpoints.items():
            # output/pretrain/<config stem>/backbone.pth, per-width runs named as pretrain.per_width names them
            stem = re.fullmatch(r"OUT/pretrain/(.+)/backbone\.pth", ckpt).group(1)
            if not m.slimmable:
                config, _, _ = stem.rpartition("_w")
                assert stem == run_name(config, w)
                stem = config
            if not suite.demo:
                assert (ROOT / "pretrain" / "configs" / f"{stem}.yaml").is_file(), ckpt


@pytest.mark.parametrize("path", _shipped(lambda p: p.stem.startswith("paper")))
def test_paper_suites_name_the_paper_methods(path):
    """Every method of a paper suite has published values in its tables (so the overlay pairs them)."""
    suite = load_suite(path)
    entries = [e for e in reference.read_reference() if e.table in suite.reference and e.arch == suite.arch]
    assert entries and {m.name for m in suite.methods} <= {e.method for e in entries}
    assert {t for t in suite.tasks} == {e.task if e.task in ("voc", "coco") else f"linear:{e.dataset}"
                                        for e in entries} | ({"voc", "coco"} & set(suite.tasks))
    assert all(any(e.width == w for e in entries) for w in suite.widths)


def test_paper_r50_reproduces_tables_5_and_6_and_fig_3():
    suite = load_suite(ROOT / "suites" / "paper_r50.yaml")
    assert (suite.arch, suite.baseline, suite.reference) == ("resnet50", "BYOL", ("Table 5", "Table 6"))
    assert suite.tasks == ("voc", "coco", "linear:cifar10", "linear:cifar100", "linear:flowers102", "linear:pets",
                           "linear:dtd")
    us3l_m, byol = suite.method("US3L"), suite.method("BYOL")
    assert us3l_m.slimmable and set(us3l_m.checkpoints.values()) == {"output/pretrain/imagenet_r50/backbone.pth"}
    assert not byol.slimmable and byol.checkpoints == {
        w: f"output/pretrain/imagenet_r50_byol_w{n}/backbone.pth" for w, n in ((1.0, "100"), (0.75, "075"),
                                                                              (0.5, "050"), (0.25, "025"))}


def _ckpt(path: Path, width_range=(0.25, 1.0)) -> str:
    us3l.save_checkpoint(path, us_resnet18(stem="cifar", num_classes=0, width_range=width_range), method="t",
                         config={}, provenance={})
    return str(path)


def _write(tmp_path: Path, body: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(body)
    return p


@pytest.fixture(scope="module")
def checkpoints(module_dir):
    d = module_dir
    return {"slim": _ckpt(d / "slim.pth"), "w100": _ckpt(d / "w100.pth", (1.0, 1.0)),
            "w050": _ckpt(d / "w050.pth", (0.5, 0.5)), "half": _ckpt(d / "half.pth", (0.5, 1.0))}


def _suite(ck: dict[str, str], *, byol_050: str | None = None, extra: str = "", widths: str = "[1.0, 0.75, 0.5]"):
    return f"""arch: resnet18
widths: {widths}
tasks: [voc, linear:cifar10]
baseline: BYOL
methods:
  US3L:
    checkpoint: {ck['slim']}
  BYOL:
    checkpoints: {{1.0: {ck['w100']}, 0.5: {byol_050 or ck['w050']}}}
  random init:
    checkpoint: {ck['slim']}
    random_init: true
    widths: [0.5]
{extra}"""


def test_suite_jobs_expand_methods_widths_and_tasks(tmp_path, checkpoints):
    suite = load_suite(_write(tmp_path, _suite(checkpoints)))
    jobs = suite_jobs(suite)
    assert jobs[:6] == [SuiteJob("US3L", checkpoints["slim"], w, "voc", None, False, False) for w in (1.0, 0.75, 0.5)] \
        + [SuiteJob("BYOL", checkpoints["w100"], 1.0, "voc", None, False, False),
           SuiteJob("BYOL", checkpoints["w050"], 0.5, "voc", None, False, False),
           SuiteJob("random init", checkpoints["slim"], 0.5, "voc", None, True, False)]
    assert [j.task_name for j in jobs] == ["voc"] * 6 + ["linear:cifar10"] * 6
    assert {(j.task, j.dataset) for j in jobs[6:]} == {("linear", "cifar10")}


def test_output_placeholder_and_widths_as_numbers(tmp_path):
    p = _write(tmp_path, """arch: resnet50
widths: [1.0, 0.3333333]
tasks: [coco]
baseline: B
methods:
  B:
    checkpoints: {1.0: $OUTPUT/b_w100/backbone.pth, 0.33333333: $OUTPUT/b_w033/backbone.pth}
""")
    suite = load_suite(p, output="/scratch/out")
    assert suite.method("B").checkpoints == {1.0: "/scratch/out/b_w100/backbone.pth",
                                             0.3333333: "/scratch/out/b_w033/backbone.pth"}


@pytest.mark.parametrize("body, message", [
    ("- a list", "a suite is a YAML mapping"),
    ("arch: resnet18\nwidths: [1.0]\ntasks: [voc]\nmethods: {A: {checkpoint: a}}", "missing baseline"),
    ("arch: resnet18\nwidth: [1.0]\n", "unknown key(s) width; a suite has"),
    ("arch: resnet99\nwidths: [1.0]\ntasks: [voc]\nbaseline: A\nmethods: {A: {checkpoint: a}}", "unknown arch"),
    ("arch: resnet18\nwidths: [1.0, 1.2]\ntasks: [voc]\nbaseline: A\nmethods: {A: {checkpoint: a}}",
     "widths: width must be a number in (0, 1], got 1.2"),
    ("arch: resnet18\nwidths: [1.0]\ntasks: [voc, linear:imagenette]\nbaseline: A\nmethods: {A: {checkpoint: a}}",
     "unknown task 'linear:imagenette'; expected voc, coco or linear:DATASET with DATASET one of cifar10"),
    ("arch: resnet18\nwidths: [1.0]\ntasks: [linear:shapes]\nbaseline: A\nmethods: {A: {checkpoint: a}}",
     "task 'linear:shapes' is demo data but the suite has demo: false"),
    ("arch: resnet18\nwidths: [1.0]\ntasks: [voc]\nbaseline: A\nmethods: {A: {checkpoint: a, checkpoints: {}}}",
     "method 'A' needs exactly one of checkpoint"),
    ("arch: resnet18\nwidths: [1.0]\ntasks: [voc]\nbaseline: A\nmethods: {A: {checkpoints: {0.5: a}}}",
     "method 'A' lists width 0.5, which is not one of the suite's widths (1)"),
    ("arch: resnet18\nwidths: [1.0]\ntasks: [voc]\nbaseline: B\nmethods: {A: {checkpoint: a}}",
     "baseline 'B' is not one of the methods (A)"),
    ("arch: resnet18\nwidths: [1.0]\ntasks: [voc]\nbaseline: A\nmethods: {A: {checkpoint: a}, B: {checkpoint: a}}",
     "methods 'A' and 'B' both use a"),
    ("arch: resnet18\nwidths: [1.0]\ntasks: [voc]\nbaseline: A\nreference: [Table 99]\nmethods: {A: {checkpoint: a}}",
     "reference must list tables of the shipped paper values (Table 2, Table 4, Table 5, Table 6, Table 12)"),
    ("arch: resnet18\ndemo: true\nwidths: [1.0]\ntasks: [voc]\nbaseline: A\nreference: [Table 4]\n"
     "methods: {A: {checkpoint: a}}", "a demo suite has no reference"),
])
def test_bad_suite_is_one_line_naming_the_file(tmp_path, body, message):
    p = _write(tmp_path, body)
    with pytest.raises(SuiteError) as e:
        load_suite(p)
    assert str(e.value).startswith(f"{p}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_missing_checkpoints_are_listed_before_any_job(tmp_path, checkpoints):
    suite = load_suite(_write(tmp_path, _suite(checkpoints, byol_050=str(tmp_path / "nope_w050/backbone.pth"))))
    with pytest.raises(SuiteError, match=r"1 checkpoint file\(s\) missing: .*nope_w050/backbone.pth \(BYOL\); "
                                         r"pretrain them first"):
        suite_jobs(suite)
    assert len(suite_jobs(suite, check=False)) == 12  # expansion alone needs no file


def test_fixed_width_checkpoint_must_sit_at_its_width(tmp_path, checkpoints):
    suite = load_suite(_write(tmp_path, _suite(checkpoints, byol_050=checkpoints["w100"])))
    with pytest.raises(SuiteError, match=r"method 'BYOL' lists .*w100.pth at width 0.5, but it was trained for "
                                         r"\[1, 1\]"):
        suite_jobs(suite)


def test_slimmable_checkpoint_must_cover_every_width(tmp_path, checkpoints):
    ck = {**checkpoints, "slim": checkpoints["half"]}
    suite = load_suite(_write(tmp_path, _suite(ck, widths="[1.0, 0.75, 0.5, 0.25]")))
    with pytest.raises(SuiteError, match=r"method 'US3L': width 0.25 is not covered by .*half.pth \(trained for "
                                         r"\[0.5, 1\]\)"):
        suite_jobs(suite)


def test_checkpoint_of_another_arch_is_refused(tmp_path, checkpoints):
    suite = load_suite(_write(tmp_path, _suite(checkpoints).replace("arch: resnet18", "arch: resnet50")))
    with pytest.raises(SuiteError, match=r"method 'US3L': .*holds a resnet18, expected a resnet50"):
        suite_jobs(suite)
