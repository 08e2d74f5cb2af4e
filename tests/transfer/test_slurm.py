"""Sweeps on the real single-node Slurm of scripts/slurm_up.sh: a job array, preemption and requeue,
no resubmission, and a failing job reported with its log path. Skipped when Slurm is not up."""

from __future__ import annotations

import subprocess

from support import ROOT
from support.layouts import write_checkpoint, write_cifar10, write_cifar100
from support.slurm import NEEDS_SLURM, preempt, release_requeued, slurm_unusable, wait_for

from transfer import sweep
from us3l.jobs import read_records

pytestmark = NEEDS_SLURM


def test_slurm_sweep_preemption_rerun_and_failure(tmp_path, capsys):
    data = tmp_path / "data"
    write_cifar10(data, n_train=100, n_test=50)
    write_cifar100(data, n_train=100, n_test=50)
    ckpt = write_checkpoint(tmp_path / "ck.pth")
    results, output = tmp_path / "results", tmp_path / "sweep"
    # --augment passes every epoch through the backbone, so a job runs long enough to be preempted mid-run
    argv = ["--checkpoint", str(ckpt), "--executor", "slurm", "--results", str(results), "--output", str(output),
            "--device", "cpu", "--cpus-per-job", "1", "--poll-s", "0.5", "--linear-args",
            f"--augment --epochs 15 --batch-size 50 --lr 0.1 --data-root {data}"]

    # 1. 2 tasks x 2 widths as one job array; job 0 is preempted mid-run the way Slurm signals before a
    #    timeout (USR2 to the job's steps): submitit checkpoints, requeues, and the job completes.
    cfg = sweep.parse_args([*argv, "--tasks", "linear:cifar10,linear:cifar100", "--widths", "0.5,0.25"])
    sw = sweep.Sweep(cfg)
    sw.submit()
    assert len({t.job.job_id.split("_")[0] for t in sw.jobs}) == 1 and len(sw.jobs) == 4  # one array
    victim = sw.jobs[0].job
    wait_for(lambda: "linear cifar10 w=0.5" in (victim.stderr() or ""), 120, "job 0 to start training")
    preempt(victim, 60)
    release_requeued(victim.job_id)
    assert sw.wait() == 0
    log = victim.stdout()
    assert "attempt 1" in log and "attempt 2" in log and "attempt 3" not in log
    assert "Caught signal SIGUSR2" in log + (victim.stderr() or "")
    records = read_records(results)
    assert sorted((r["spec"]["dataset"], r["spec"]["width"]) for r in records) == [
        ("cifar10", 0.25), ("cifar10", 0.5), ("cifar100", 0.25), ("cifar100", 0.5)]
    assert all(r["spec"]["task"] == "linear" and r["spec"]["protocol"]["augment"] for r in records)
    capsys.readouterr()

    # 2. The same sweep again submits nothing.
    assert sweep.main([*argv, "--tasks", "linear:cifar10,linear:cifar100", "--widths", "0.5,0.25"]) == 0
    out = capsys.readouterr().out
    assert "nothing to submit" in out and "submitted" not in out

    # 3. A job given a missing dataset fails with its log path reported; the other job completes.
    assert sweep.main([*argv, "--tasks", "linear:cifar10,linear:dtd", "--widths", "0.75"]) == 1
    out = capsys.readouterr().out
    [failed] = [ln for ln in out.splitlines() if ln.startswith("FAILED ")]
    assert failed.startswith("FAILED linear:dtd w=0.75: python -m transfer.linear: error: dataset 'dtd' not found")
    log = out.split("log: ", 1)[1].splitlines()[0]
    assert "dataset 'dtd' not found" in open(log).read()
    assert any(r["spec"]["dataset"] == "cifar10" and r["spec"]["width"] == 0.75 for r in read_records(results))
    assert "5/6 jobs have results" not in out and "1/2 jobs have results" in out


def test_gpu_sweep_asks_slurm_for_gpus(tmp_path, capsys):
    """``make sweep EXECUTOR=slurm GPUS=1`` on this cluster, which has no GPUs: the sbatch file submitit wrote
    asks for one GPU and 8 CPUs per detection job, and Slurm's refusal is one line, exit status 2."""
    ckpt = write_checkpoint(tmp_path / "ck.pth", stem="imagenet")
    assert sweep.main(["--checkpoint", str(ckpt), "--tasks", "voc", "--widths", "0.5", "--executor", "slurm",
                       "--gpus-per-job", "1", "--results", str(tmp_path / "r"), "--output", str(tmp_path / "o")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("python -m transfer.sweep: error: sbatch refused the detection jobs: ") and "gres" in line
    [sbatch] = (tmp_path / "o" / "logs").glob(".submission_file_*.sh")  # left where submitit wrote it
    lines = sbatch.read_text().splitlines()
    assert {"#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8"} <= set(lines)


def test_slurm_up_is_idempotent():
    """Running the start script on a live cluster changes nothing: same daemons, the node still accepts jobs."""
    def pids() -> list[str]:
        return [open(f"/run/{d}.pid").read().strip() for d in ("slurmctld", "slurmd")]

    before = pids()
    script = ROOT / "scripts" / "slurm_up.sh"
    run = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "debug" and pids() == before
    assert not slurm_unusable()
