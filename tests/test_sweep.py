"""Sweeps: task parsing, result matching, job arguments, GPUs and CPUs per job (the sbatch file submitit
writes, no silent CPU), requeue checkpoints, and a local sweep end to end."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
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
    specs = sweep.job_specs(cfg, 2)
    assert [s.label for s in specs] == ["voc w=1", "voc w=0.5", "linear:dtd w=1", "linear:dtd w=0.5"]
    voc, lin = specs[1].argv, specs[3].argv
    assert voc[:2] == ("--task", "voc") and voc[voc.index("--width") + 1] == "0.5"
    assert voc[voc.index("--output") + 1] == str(tmp_path / "o" / "detection")
    assert voc[voc.index("--num-gpus") + 1] == "2" and voc[-2:] == ("SOLVER.MAX_ITER", "10")
    assert lin[:2] == ("--dataset", "dtd") and lin[-2:] == ("--epochs", "7") and "--output" not in lin
    assert voc[voc.index("--device") + 1] == lin[lin.index("--device") + 1] == "auto"
    assert "--num-gpus" not in sweep.job_specs(cfg, 1)[0].argv
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
    assert sweep.main([*base, "--tasks", "voc", "--device", "cpu", "--gpus-per-job", "1"]) == 2
    assert "--gpus-per-job 1 with --device cpu" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_real_sweep_without_cuda_stops_before_submitting(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "ck.pth")
    argv = ["--checkpoint", str(ckpt), "--tasks", "voc,linear:cifar10", "--results", str(tmp_path / "r"),
            "--output", str(tmp_path / "o")]
    assert sweep.main(argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == ("transfer.sweep: error: the jobs would run on CPU (no CUDA device is visible here) and this "
                    "is not a demo sweep: pass --device cpu to run them on CPU anyway")
    assert not (tmp_path / "o").exists()


def _cfg(*argv: str, executor: str = "slurm", demo: bool = False) -> sweep.SweepConfig:
    return sweep.SweepConfig(checkpoint="ck", tasks=[], widths=[1.0], executor=executor, results="r", output="o",
                             demo=demo, **dict(zip(argv[::2], argv[1::2])))


def test_gpus_per_job_defaults_and_the_no_silent_cpu_rule():
    assert sweep.job_gpus(_cfg(), cuda_visible=False) == 1  # Slurm: 1 GPU unless asked otherwise
    assert sweep.job_gpus(_cfg("gpus_per_job", 4), cuda_visible=False) == 4
    assert sweep.job_gpus(_cfg("device", "cpu"), cuda_visible=False) == 0  # CPU only when asked
    assert sweep.job_gpus(_cfg(executor="local"), cuda_visible=True) == 1  # else submitit hides the GPUs
    assert sweep.job_gpus(_cfg(executor="local", demo=True), cuda_visible=False) == 0  # demo: CPU allowed
    for cfg, cuda, message in [
        (_cfg("gpus_per_job", 0), True, "--gpus-per-job 0) and this is not a demo sweep: pass --device cpu"),
        (_cfg(executor="local"), False, "no CUDA device is visible here) and this is not a demo sweep"),
        (_cfg("gpus_per_job", 1, executor="local", demo=True), False, "no CUDA device is visible here for the"),
        (_cfg("device", "cuda", executor="local", demo=True), False, "pass --device cpu"),
    ]:
        with pytest.raises(sweep.UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
            sweep.job_gpus(cfg, cuda_visible=cuda)


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch) -> Path:
    """An ``sbatch`` on PATH that accepts each submission as job 4242, 4243, ... and runs nothing (no Slurm
    needed to see what submitit asks for); ``fail`` in its folder makes it refuse as Slurm does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "sbatch"
    script.write_text(f"""#!/bin/sh
if [ -e {bin_dir}/fail ]; then echo "sbatch: error: Invalid generic resource (gres) specification" >&2; exit 1; fi
n=$(cat {bin_dir}/count 2>/dev/null || echo 4241); n=$((n + 1)); echo $n > {bin_dir}/count
echo "Submitted batch job $n"
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def _sbatch_files(sw: sweep.Sweep) -> dict[str, list[str]]:
    """Group -> the #SBATCH lines of the file submitit wrote into the array's job folder."""
    out = {}
    for t in sw.jobs:
        array = t.job.job_id.split("_")[0]
        text = (Path(sw.cfg.output) / "logs" / array / f"{array}_submission.sh").read_text()
        out[t.spec.task.group] = [ln for ln in text.splitlines() if ln.startswith("#SBATCH")]
    return out


def test_slurm_jobs_request_gpus_and_matching_cpus_in_the_sbatch_file(tmp_path, fake_sbatch, capsys):
    ckpt = write_checkpoint(tmp_path / "ck.pth", stem="imagenet")

    def submitted(name: str, *extra: str) -> sweep.Sweep:
        cfg = sweep.parse_args(["--checkpoint", str(ckpt), "--tasks", "voc,linear:cifar10", "--widths", "1,0.5",
                                "--executor", "slurm", "--results", str(tmp_path / name / "r"),
                                "--output", str(tmp_path / name / "o"), *extra])
        sw = sweep.Sweep(cfg)
        sw.submit()
        return sw

    # make sweep EXECUTOR=slurm GPUS=2: detection jobs get 2 GPUs and 16 CPUs, linear jobs 1 GPU and 8 CPUs
    sw = submitted("g2", "--gpus-per-job", "2")
    files = _sbatch_files(sw)
    assert {"#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=16", "#SBATCH --array=0-1%2",
            "#SBATCH --job-name=us3l-detection", "#SBATCH --ntasks-per-node=1"} <= set(files["detection"])
    assert {"#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8"} <= set(files["linear"])
    voc = sw.jobs[0].spec.argv
    assert voc[voc.index("--num-gpus") + 1] == "2" and voc[voc.index("--device") + 1] == "auto"
    out = capsys.readouterr().out
    assert "2 detection jobs as Slurm array 4242 (2 GPUs, 16 CPUs each)" in out
    assert "2 linear jobs as Slurm array 4243 (1 GPU, 8 CPUs each)" in out
    # the default: one GPU per job on Slurm; --cpus-per-gpu scales the CPUs
    files = _sbatch_files(submitted("default", "--cpus-per-gpu", "6"))
    assert {"#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=6"} <= set(files["detection"])
    # CPU jobs only when asked: no GPU line, --device cpu passed to every job
    sw = submitted("cpu", "--device", "cpu", "--cpus-per-job", "2")
    for lines in _sbatch_files(sw).values():
        assert "#SBATCH --cpus-per-task=2" in lines
        assert not any(ln.startswith(("#SBATCH --gpus", "#SBATCH --gres")) for ln in lines)
    assert all(t.spec.argv[t.spec.argv.index("--device") + 1] == "cpu" for t in sw.jobs)


def test_sbatch_refusal_is_one_line_exit_2(tmp_path, fake_sbatch, capsys):
    (fake_sbatch / "fail").touch()
    ckpt = write_checkpoint(tmp_path / "ck.pth", stem="imagenet")
    assert sweep.main(["--checkpoint", str(ckpt), "--tasks", "voc", "--executor", "slurm",
                       "--results", str(tmp_path / "r"), "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "transfer.sweep: error: sbatch refused the detection jobs: "
        "sbatch: error: Invalid generic resource (gres) specification")


def test_local_sweep_end_to_end(tmp_path, capsys):
    """2 tasks x 2 widths on the local executor: the missing dataset's jobs fail with their log paths, the
    others complete; a second run submits nothing for the completed task."""
    write_cifar10(tmp_path / "data", n_train=100, n_test=50)
    ckpt = write_checkpoint(tmp_path / "ck.pth")
    argv = ["--checkpoint", str(ckpt), "--widths", "0.5,0.25", "--results", str(tmp_path / "r"),
            "--output", str(tmp_path / "o"), "--max-parallel", "2", "--poll-s", "0.5", "--cpus-per-job", "1",
            "--device", "cpu",
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
