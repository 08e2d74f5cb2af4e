"""Sweeps: task parsing, result matching, job arguments, requeue checkpoints, and a local sweep end to end."""

from __future__ import annotations

import json

import pytest
from real_layouts import write_checkpoint, write_cifar10

import us3l
from transfer import sweep
from transfer.results import make_record, read_records, write_record
from transfer.sweep import JobSpec, Task, TaskRunner, failure_reason, has_result, parse_tasks, parse_widths


def test_parse_tasks_and_widths():
    assert parse_tasks("voc,coco,linear:cifar100") == [Task("voc", "voc"), Task("coco", "coco"),
                                                       Task("linear:cifar100", "linear", "cifar100")]
    for bad in ("linear:imagenet", "segmentation", "linear", "voc,voc"):
        with pytest.raises(sweep.UsageError):
            parse_tasks(bad)
    assert parse_widths("1.0,0.75,0.5,0.25") == [1.0, 0.75, 0.5, 0.25]
    with pytest.raises(sweep.UsageError):
        parse_widths("1.0,half")


def _record(task, dataset, width, sha, demo=False):
    return make_record(task, dataset, width, {"top1": 1.0}, demo=demo, checkpoint="c", checkpoint_sha256=sha,
                       method="m", arch="resnet18", params=1, macs=1, config={}, wall_time_s=0.0)


def test_has_result_matches_task_width_checkpoint_and_demo(tmp_path):
    sha = "a" * 64
    for rec in (_record("linear", "cifar10", 0.5, sha), _record("voc", "voc_2007_test", 0.25, sha, demo=True),
                _record("linear", "cifar100", 0.5, "b" * 64)):
        write_record(tmp_path, rec)
    records = read_records(tmp_path)
    lin = Task("linear:cifar10", "linear", "cifar10")
    assert has_result(records, JobSpec(lin, 0.5, ()), sha, demo=False)
    assert not has_result(records, JobSpec(lin, 0.25, ()), sha, demo=False)  # other width
    assert not has_result(records, JobSpec(lin, 0.5, ("--augment",)), sha, demo=False)  # other protocol
    assert not has_result(records, JobSpec(Task("linear:cifar100", "linear", "cifar100"), 0.5, ()), sha, False)
    assert has_result(records, JobSpec(Task("voc", "voc"), 0.25, ()), sha, demo=True)
    assert not has_result(records, JobSpec(Task("voc", "voc"), 0.25, ()), sha, demo=False)  # real run wanted
    assert not has_result(records, JobSpec(Task("coco", "coco"), 0.25, ()), sha, demo=True)


def test_job_arguments_and_requeue_checkpoint(tmp_path):
    ckpt = write_checkpoint(tmp_path / "ck.pth")
    cfg = sweep.parse_args(["--checkpoint", str(ckpt), "--tasks", "voc,linear:dtd", "--widths", "1,0.5",
                            "--results", str(tmp_path / "r"), "--output", str(tmp_path / "o"), "--gpus-per-job", "2",
                            "--linear-args", "--epochs 7", "--detection-args", "SOLVER.MAX_ITER 10"])
    specs = sweep.job_specs(cfg)
    assert [s.label for s in specs] == ["voc w=1", "voc w=0.5", "linear:dtd w=1", "linear:dtd w=0.5"]
    voc, lin = specs[1].argv, specs[3].argv
    assert voc[:2] == ("--task", "voc") and voc[voc.index("--width") + 1] == "0.5"
    assert voc[voc.index("--output") + 1] == str(tmp_path / "o" / "detection")
    assert voc[voc.index("--num-gpus") + 1] == "2" and voc[-2:] == ("SOLVER.MAX_ITER", "10")
    assert lin[:2] == ("--dataset", "dtd") and lin[-2:] == ("--epochs", "7") and "--output" not in lin
    det = TaskRunner("detection.train", voc, "voc w=0.5")
    again = det.checkpoint().function
    assert again.argv == (*voc, "--resume") and again.attempt == 2
    assert again.checkpoint().function.argv.count("--resume") == 1
    assert TaskRunner("transfer.linear", lin, "x").checkpoint().function.argv == lin  # cache makes reruns cheap


def test_failure_reason_prefers_the_tasks_error_line():
    exc = "Traceback (most recent call last):\n  File ...\nRuntimeError: linear:dtd w=1: exited with status 2\n"
    assert failure_reason(exc, "progress\ntransfer.linear: error: dataset 'dtd' not found\n") == \
        "transfer.linear: error: dataset 'dtd' not found"
    assert failure_reason(exc, "") == "RuntimeError: linear:dtd w=1: exited with status 2"


def test_bad_input_exits_2(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "ck.pth")
    base = ["--checkpoint", str(ckpt), "--results", str(tmp_path / "r"), "--output", str(tmp_path / "o")]
    assert sweep.main([*base, "--tasks", "linear:cifar10", "--widths", "1.0,0.1"]) == 2
    assert "[0.25, 1]" in capsys.readouterr().err
    assert sweep.main([*base, "--tasks", "linear:cifar10", "--demo"]) == 2
    assert "linear:shapes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        sweep.main([*base, "--tasks", "linear:imagenet"])
    assert e.value.code == 2 and "linear:DATASET" in capsys.readouterr().err


def test_local_sweep_end_to_end(tmp_path, capsys):
    """2 tasks x 2 widths on the local executor: the missing dataset's jobs fail with their log paths, the
    others complete; a second run submits nothing for the completed task."""
    write_cifar10(tmp_path / "data", n_train=100, n_test=50)
    ckpt = write_checkpoint(tmp_path / "ck.pth")
    argv = ["--checkpoint", str(ckpt), "--widths", "0.5,0.25", "--results", str(tmp_path / "r"),
            "--output", str(tmp_path / "o"), "--max-parallel", "2", "--poll-s", "0.5", "--cpus-per-job", "1",
            "--linear-args", f"--epochs 5 --lr 0.1 --data-root {tmp_path / 'data'}"]
    assert sweep.main([*argv, "--tasks", "linear:cifar10,linear:cifar100"]) == 1
    out = capsys.readouterr().out
    records = read_records(tmp_path / "r")
    assert sorted((r["dataset"], r["width"]) for r in records) == [("cifar10", 0.25), ("cifar10", 0.5)]
    assert all(r["checkpoint_sha256"] == us3l.file_sha256(ckpt) for r in records)
    failed = [ln for ln in out.splitlines() if ln.startswith("FAILED linear:cifar100")]
    assert len(failed) == 2 and all("cifar-100-python" in ln for ln in failed)
    logs = [ln.split("log: ", 1)[1] for ln in out.splitlines() if ln.strip().startswith("log: ")]
    assert logs and all("dataset 'cifar100' not found" in open(p).read() for p in logs)
    assert "2/4 jobs have results" in out
    before = {r["_path"]: json.loads(open(r["_path"]).read()) for r in records}
    assert sweep.main([*argv, "--tasks", "linear:cifar10"]) == 0
    out = capsys.readouterr().out
    assert "nothing to submit" in out and "submitted" not in out
    assert {r["_path"]: json.loads(open(r["_path"]).read()) for r in read_records(tmp_path / "r")} == before


@pytest.mark.slow
def test_local_demo_sweep_with_detection(tmp_path, capsys):
    """voc and linear:shapes on the demo data at one width through the local executor, then the plots."""
    from transfer import plot

    ckpt = write_checkpoint(tmp_path / "ck.pth", stem="imagenet")
    argv = ["--checkpoint", str(ckpt), "--tasks", "voc,linear:shapes", "--widths", "0.25", "--demo",
            "--results", str(tmp_path / "r"), "--output", str(tmp_path / "o"), "--poll-s", "1",
            "--linear-args", f"--epochs 5 --data-root {tmp_path / 'data'}",
            "--detection-args", "SOLVER.MAX_ITER 4 SOLVER.CHECKPOINT_PERIOD 100 MODEL.US3L.CALIBRATION_BATCHES 1 "
                                "TEST.PRECISE_BN.NUM_ITER 2"]
    assert sweep.main(argv) == 0, capsys.readouterr().out
    records = read_records(tmp_path / "r")
    assert sorted(r["task"] for r in records) == ["linear", "voc"] and all(r["demo"] for r in records)
    assert (tmp_path / "o" / "detection").is_dir()
    figures, summary = plot.render(tmp_path / "r", tmp_path / "plots")
    assert {f.name for f in figures} == {"demo-voc.png", "demo-linear.png"} and "## Benchmark" not in summary
