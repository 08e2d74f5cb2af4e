"""Pretraining on the local single-node Slurm (scripts/slurm_up.sh): one job of 2 CPU tasks (gloo),
signalled mid-way, saves its state, is requeued by submitit and resumes; its backbone is bitwise equal
to an uninterrupted 2-process run. Skipped when Slurm is not up."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from support import ROOT
from support.pretrain_runs import pretrain_cmd, run_env, tiny_config, weights_of
from support.slurm import NEEDS_SLURM, preempt, release_requeued, wait_for

from pretrain import slurm

pytestmark = NEEDS_SLURM


def _metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def test_preempted_two_task_job_requeues_and_matches_an_uninterrupted_run(tmp_path):
    cfg = tiny_config(tmp_path, "slurmrun", iterations=24, checkpoint_every=1000, batch_size=8)
    ref = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          *pretrain_cmd(cfg, tmp_path / "ref")[1:]], env=run_env(), capture_output=True, text=True,
                         cwd=ROOT)
    assert ref.returncode == 0, ref.stderr[-3000:]

    job = slurm.submit(str(cfg), [f"output_dir={tmp_path / 'slurm'}"], gpus_per_node=0, tasks_per_node=2,
                       cpus_per_task=1, timeout_min=60)
    run = tmp_path / "slurm" / "slurmrun"
    wait_for(lambda: len(_metrics(run)) >= 5, 180, "the job to train 5 iterations")
    preempt(job, 90)
    saved_at = torch.load(run / "last.pth", weights_only=True)["iteration"]
    assert 5 <= saved_at < 24  # saved at the signal, not at a periodic checkpoint (every 1000)
    release_requeued(job.job_id)
    wait_for(lambda: job.paths.result_pickle.exists() and (run / "backbone.pth").exists(), 300, "the job to finish")
    time.sleep(1)
    log = job.stdout()
    assert "attempt 1" in log and "attempt 2" in log and "attempt 3" not in log
    assert f"resumed from {run / 'last.pth'} at iteration {saved_at}/24" in (run / "train.log").read_text()
    assert [r["iteration"] for r in _metrics(run)] == list(range(1, 25))  # no gap, no duplicate

    a, b = weights_of(tmp_path / "ref" / "slurmrun" / "backbone.pth"), weights_of(run / "backbone.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise
    ck = torch.load(run / "backbone.pth", weights_only=True)
    assert ck["provenance"]["world_size"] == 2


def test_submission_errors_before_anything_is_queued(tmp_path, capsys):
    cfg = tiny_config(tmp_path, "bad", batch_size=9, device="cpu")
    assert slurm.main(["--config", str(cfg), "--gpus-per-node", "0", "--tasks-per-node", "2",
                       f"output_dir={tmp_path}"]) == 2
    assert "batch_size 9 is not divisible by 2 tasks" in capsys.readouterr().err
    cfg = tiny_config(tmp_path, "gpu", device="auto", dataset="cifar100", stem="cifar")
    assert slurm.main(["--config", str(cfg), "--gpus-per-node", "0", f"output_dir={tmp_path}"]) == 2
    assert "pass device=cpu" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() and not (tmp_path / "gpu").exists()
