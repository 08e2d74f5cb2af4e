"""Sweeps: task parsing, planning specs (identity decides what is done), job arguments, GPUs and CPUs per job
(the sbatch file submitit writes, no silent CPU), requeue checkpoints, trials, and local sweeps end to end."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from support.layouts import write_checkpoint, write_cifar10

import us3l
from transfer import linear, sweep
from transfer.sweep import JobRunner, Task, failure_reason, parse_tasks, parse_widths
from us3l.jobs import make_record, read_records, write_record


def test_parse_tasks_and_widths():
    assert parse_tasks("voc,coco,linear:cifar100") == [Task("voc", "voc"), Task("coco", "coco"),
                                                       Task("linear:cifar100", "linear", "cifar100")]
    for bad in ("linear:mnist", "knn+augment:cifar10", "segmentation", "linear", "voc,voc"):
        with pytest.raises(sweep.UsageError):
            parse_tasks(bad)
    assert parse_widths("1.0,0.75,0.5,0.25") == [1.0, 0.75, 0.5, 0.25]
    with pytest.raises(sweep.UsageError):
        parse_widths("1.0,half")


def _sweep(ckpt: Path, root: Path, *argv: str) -> sweep.Sweep:
    return sweep.Sweep(sweep.parse_args(["--checkpoint", str(ckpt), "--results", str(root / "r"), "--output",
                                         str(root / "o"), "--device", "cpu", *argv]), out=lambda _: None)


def _write(root: Path, job: sweep.Planned, error: str | None = None) -> None:
    write_record(root / "r", make_record(job.spec, metrics={} if error else {"top1": 1.0}, cost={}, provenance={},
                                         wall_time_s=0.0, error=error))


def test_done_means_a_record_of_the_same_spec(tmp_path):
    """Skipped: a job whose spec has an ok record. Another width, protocol, dataset, seed, task or demo flag is
    another spec; a failed record is retried."""
    ckpt = write_checkpoint(tmp_path / "ck.pth", stem="imagenet")
    sw = _sweep(ckpt, tmp_path, "--tasks", "linear:cifar10", "--widths", "0.5,0.25")
    assert [j.label for j in sw.planned] == ["linear:cifar10 w=0.5", "linear:cifar10 w=0.25"] and not sw.skipped
    _write(tmp_path, sw.planned[0])
    _write(tmp_path, sw.planned[1], error="Diverged: loss is nan")
    sw = _sweep(ckpt, tmp_path, "--tasks", "linear:cifar10,linear:cifar100", "--widths", "0.5,0.25")
    assert [j.label for j in sw.skipped] == ["linear:cifar10 w=0.5"]  # not cifar100, nor the failed one
    assert [t.planned.label for t in sw.jobs] == ["linear:cifar10 w=0.25", "linear:cifar100 w=0.5",
                                                 "linear:cifar100 w=0.25"]
    assert sw.failed_before == {sw.jobs[0].planned.spec.id}
    for other in (["--linear-args=--augment"], ["--linear-args", "--epochs 50"], ["--seed", "1"]):
        assert not _sweep(ckpt, tmp_path, "--tasks", "linear:cifar10", "--widths", "0.5", *other).skipped
    sw = _sweep(ckpt, tmp_path, "--tasks", "linear:cifar10", "--widths", "0.5", "--trials", "2")
    assert [j.label for j in sw.planned] == ["linear:cifar10 seed=0 w=0.5", "linear:cifar10 seed=1 w=0.5"]
    assert [j.spec.seed for j in sw.skipped] == [0]
    # detection: the demo flag and the task are part of the spec
    demo = _sweep(ckpt, tmp_path, "--tasks", "voc,coco", "--widths", "0.25", "--demo")
    _write(tmp_path, demo.planned[0])
    assert [j.label for j in _sweep(ckpt, tmp_path, "--tasks", "voc,coco", "--widths", "0.25", "--demo").skipped] \
        == ["voc w=0.25"]
    assert not _sweep(ckpt, tmp_path, "--tasks", "voc", "--widths", "0.25").skipped  # a real run is wanted


def test_job_specs_and_requeue_checkpoint(tmp_path):
    ckpt = write_checkpoint(tmp_path / "ck.pth", stem="imagenet")
    cfg = sweep.parse_args(["--checkpoint", str(ckpt), "--tasks", "voc,linear:dtd", "--widths", "1,0.5",
                            "--results", str(tmp_path / "r"), "--output", str(tmp_path / "o"), "--gpus-per-job", "2",
                            "--linear-args", "--epochs 7", "--detection-args", "SOLVER.MAX_ITER 10"])
    jobs = sweep.plan(cfg, sweep.grid_cells(cfg), 2)
    assert [j.label for j in jobs] == ["voc w=1", "voc w=0.5", "linear:dtd w=1", "linear:dtd w=0.5"]
    voc, lin = jobs[1], jobs[3]
    assert (voc.spec.task, voc.spec.width, voc.spec.protocol["max_iter"]) == ("voc", 0.5, 10)
    assert voc.spec.overrides == ("SOLVER.MAX_ITER", "10") and voc.spec.checkpoint_sha256 == us3l.file_sha256(ckpt)
    assert voc.run.output == str(tmp_path / "o" / "detection") and voc.run.num_gpus == 2
    assert (lin.spec.dataset, lin.spec.protocol["epochs"]) == ("dtd", 7) and not hasattr(lin.run, "output")
    assert voc.run.device == lin.run.device == "auto"
    assert voc.command.startswith("python -m detection.train --task voc --checkpoint ") and "--width 0.5" in voc.command
    assert sweep.plan(cfg, sweep.grid_cells(cfg), 1)[0].run.num_gpus == 1
    again = JobRunner(voc).checkpoint().function
    assert again.job.run.resume and again.attempt == 2 and again.job.spec == voc.spec
    assert again.checkpoint().function.job.run.argv.count("--resume") == 1
    assert JobRunner(lin).checkpoint().function.job == lin  # the feature cache makes reruns cheap
    # --random-init: the same jobs from random initialisation, other specs
    cfg.random_init = True
    rows = [j.row for j in sweep.plan(cfg, sweep.grid_cells(cfg), 1)]
    assert rows == ["voc"] * 2 + ["voc random-init"] * 2 + ["linear:dtd"] * 2 + ["linear:dtd random-init"] * 2


def test_failure_reason_prefers_the_tasks_error_line():
    exc = "Traceback (most recent call last):\n  File ...\nRuntimeError: linear:dtd w=1: exited with status 2\n"
    assert failure_reason(exc, "progress\ntransfer.linear: error: dataset 'dtd' not found\n") == \
        "transfer.linear: error: dataset 'dtd' not found"
    assert failure_reason(exc, "") == "RuntimeError: linear:dtd w=1: exited with status 2"


def test_bad_input_exits_2(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "ck.pth", stem="imagenet")
    base = ["--checkpoint", str(ckpt), "--results", str(tmp_path / "r"), "--output", str(tmp_path / "o")]
    assert sweep.main([*base, "--tasks", "linear:cifar10", "--widths", "1.0,0.1"]) == 2
    assert "[0.25, 1]" in capsys.readouterr().err
    assert sweep.main([*base, "--tasks", "linear:cifar10", "--demo"]) == 2
    assert "linear:shapes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        sweep.main([*base, "--tasks", "linear:mnist"])
    assert e.value.code == 2 and "linear:DATASET" in capsys.readouterr().err
    assert sweep.main([*base, "--tasks", "voc", "--device", "cpu", "--gpus-per-job", "1"]) == 2
    assert "--gpus-per-job 1 with --device cpu" in capsys.readouterr().err
    assert sweep.main([*base, "--tasks", "linear:cifar10", "--device", "cpu", "--linear-args", "--seed 3"]) == 2
    assert "--linear-args sets --seed, which the sweep sets for every job" in capsys.readouterr().err
    assert sweep.main([*base, "--tasks", "voc", "--device", "cpu", "--detection-args", "SEED 3"]) == 2
    assert "voc w=1: the seed is given twice" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_real_sweep_without_cuda_stops_before_submitting(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "ck.pth", stem="imagenet")
    argv = ["--checkpoint", str(ckpt), "--tasks", "voc,linear:cifar10", "--results", str(tmp_path / "r"),
            "--output", str(tmp_path / "o")]
    assert sweep.main(argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == ("python -m transfer.sweep: error: the jobs would run on CPU (no CUDA device is visible here) "
                    "and this is not a demo sweep: pass --device cpu to run them on CPU anyway")
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
        out[t.planned.task.group] = [ln for ln in text.splitlines() if ln.startswith("#SBATCH")]
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
    voc = sw.jobs[0].planned.run
    assert voc.num_gpus == 2 and voc.device == "auto" and "--num-gpus 2" in sw.jobs[0].planned.command
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
    assert all(t.planned.run.device == "cpu" for t in sw.jobs)


def test_sbatch_refusal_is_one_line_exit_2(tmp_path, fake_sbatch, capsys):
    (fake_sbatch / "fail").touch()
    ckpt = write_checkpoint(tmp_path / "ck.pth", stem="imagenet")
    assert sweep.main(["--checkpoint", str(ckpt), "--tasks", "voc", "--executor", "slurm",
                       "--results", str(tmp_path / "r"), "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "python -m transfer.sweep: error: sbatch refused the detection jobs: "
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
    assert sorted((r["spec"]["dataset"], r["spec"]["width"]) for r in records) == [("cifar10", 0.25), ("cifar10", 0.5)]
    assert all(r["spec"]["checkpoint_sha256"] == us3l.file_sha256(ckpt) for r in records)
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


def test_sweep_skips_same_specs_runs_changed_ones_and_trials(tmp_path, capsys):
    """A record written by the linear CLI is the sweep's own job (same spec, same identity); ``--widths 0.3333333``
    is done on the second sweep; ``--trials 2`` gives one record per seed; a changed --lr is a new run."""
    write_cifar10(tmp_path / "data", n_train=100, n_test=50)
    ckpt = write_checkpoint(tmp_path / "ck.pth")
    results = tmp_path / "r"
    assert linear.main(["--dataset", "cifar10", "--checkpoint", str(ckpt), "--width", "0.5", "--results", str(results),
                        "--data-root", str(tmp_path / "data"), "--epochs", "2", "--lr", "0.1", "--device", "cpu"]) == 0
    [by_cli] = read_records(results)
    argv = ["--checkpoint", str(ckpt), "--tasks", "linear:cifar10", "--results", str(results),
            "--output", str(tmp_path / "o"), "--poll-s", "0.5", "--cpus-per-job", "1", "--device", "cpu"]
    data = f"--data-root {tmp_path / 'data'} --epochs 2"
    capsys.readouterr()
    assert sweep.main([*argv, "--widths", "0.5,0.3333333", "--trials", "2", "--linear-args", f"{data} --lr 0.1"]) == 0
    out = capsys.readouterr().out
    assert out.count("skip ") == 1 and f"skip linear:cifar10 seed=0 w=0.5: run {by_cli['id']} already" in out
    records = read_records(results)
    assert sorted((r["spec"]["width"], r["spec"]["seed"]) for r in records) == [
        (0.3333333, 0), (0.3333333, 1), (0.5, 0), (0.5, 1)]
    assert len({r["id"] for r in records}) == 4 and all(r["status"] == "ok" for r in records)
    logs = "".join(p.read_text() for p in (tmp_path / "o" / "logs").glob("*/*_log.out"))
    assert "python -m transfer.linear --dataset cifar10 --checkpoint" in logs and "--width 0.3333333 " in logs
    # the same sweep again: every spec has its record, 1/3 written out included
    assert sweep.main([*argv, "--widths", "0.3333333,0.5", "--trials", "2", "--linear-args", f"{data} --lr 0.1"]) == 0
    out = capsys.readouterr().out
    assert "nothing to submit: all 4 jobs have records" in out and out.count("skip ") == 4
    # another learning rate: another spec, a new run beside the old records, none overwritten
    before = {r["_path"]: r["finished_at"] for r in records}
    assert sweep.main([*argv, "--widths", "0.3333333", "--linear-args", f"{data} --lr 0.05"]) == 0
    assert "skip " not in capsys.readouterr().out
    after = read_records(results)
    assert len(after) == 5 and {r["_path"]: r["finished_at"] for r in after if r["_path"] in before} == before
    [new] = [r for r in after if r["_path"] not in before]
    assert (new["spec"]["protocol"]["lr"], new["spec"]["width"]) == (0.05, 0.3333333)


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
    assert sorted(r["spec"]["task"] for r in records) == ["linear", "voc"] and all(r["spec"]["demo"] for r in records)
    assert (tmp_path / "o" / "detection").is_dir()
    figures, summary = plot.render(tmp_path / "r", tmp_path / "plots")
    assert {f.name for f in figures} == {"demo-voc.png", "demo-linear.png"} and "## Benchmark" not in summary


def test_suite_plans_one_line_per_method_with_per_width_checkpoints(tmp_path, capsys):
    """A suite's methods become the sweep's cells: a slimmable checkpoint at every width, a fixed-width family
    one checkpoint per width, random initialisation as its own method; the records say which method ran."""
    from us3l.models import us_resnet18

    slim = write_checkpoint(tmp_path / "us3l.pth", stem="imagenet")
    fixed = {}
    for w in (0.5, 0.25):
        fixed[w] = us3l.save_checkpoint(tmp_path / f"byol_w{int(w * 100):03d}.pth",
                                        us_resnet18(num_classes=0, width_range=(w, w)), method="byol", config={},
                                        provenance={})
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"arch: resnet18\nwidths: [0.5, 0.25]\ntasks: [linear:cifar10]\nbaseline: random init\n"
                     f"methods:\n  US3L: {{checkpoint: {slim}}}\n"
                     f"  BYOL: {{checkpoints: {{0.5: {fixed[0.5]}, 0.25: {fixed[0.25]}}}}}\n"
                     f"  random init: {{checkpoint: {slim}, random_init: true}}\n")
    sw = sweep.Sweep(sweep.parse_args(["--suite", str(suite), "--results", str(tmp_path / "r"), "--output",
                                       str(tmp_path / "o"), "--device", "cpu"]), out=lambda _: None)
    got = [(j.row, j.spec.width, j.spec.checkpoint_sha256, j.spec.random_init) for j in sw.planned]
    sha = {p: us3l.file_sha256(p) for p in (slim, fixed[0.5], fixed[0.25])}
    assert got == [("US3L: linear:cifar10", 0.5, sha[slim], False), ("US3L: linear:cifar10", 0.25, sha[slim], False),
                   ("BYOL: linear:cifar10", 0.5, sha[fixed[0.5]], False),
                   ("BYOL: linear:cifar10", 0.25, sha[fixed[0.25]], False),
                   ("random init: linear:cifar10", 0.5, sha[slim], True),
                   ("random init: linear:cifar10", 0.25, sha[slim], True)]
    for bad, message in ((["--checkpoint", str(slim)], "drop --checkpoint"), (["--demo"], "suite on real data")):
        with pytest.raises(SystemExit):
            sweep.parse_args(["--suite", str(suite), *bad])
        assert message in capsys.readouterr().err
    (tmp_path / "byol_w025.pth").unlink()
    assert sweep.main(["--suite", str(suite), "--results", str(tmp_path / "r"), "--device", "cpu"]) == 2
    assert "byol_w025.pth" in capsys.readouterr().err
