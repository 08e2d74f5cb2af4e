"""The local single-node Slurm of scripts/slurm_up.sh: whether it takes jobs, and waiting on a job's state."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest


def slurm_unusable() -> str:
    """Why Slurm is unusable, or '' when the local cluster accepts jobs."""
    if not shutil.which("sbatch"):
        return "Slurm is not installed"
    try:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10).stdout
    except (subprocess.TimeoutExpired, OSError):
        return "Slurm's controller does not answer"
    if not any(s.startswith(("idle", "mix", "alloc")) for s in state.split()):
        return f"no Slurm node accepts jobs (sinfo: {state.strip() or 'nothing'})"
    return ""


SLURM_REASON = slurm_unusable()
# The marks of a test module that needs the local Slurm: skipped, naming the fix, when it is not up.
SKIP_REASON = f"{SLURM_REASON}: run `bash scripts/slurm_up.sh` (as root) first"
NEEDS_SLURM = [pytest.mark.slurm, pytest.mark.skipif(bool(SLURM_REASON), reason=SKIP_REASON)]


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true; AssertionError naming ``what`` after ``timeout`` seconds."""
    end = time.time() + timeout
    while not predicate():
        if time.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def preempt(job: Any, timeout: float) -> None:
    """Send ``job`` the USR2 Slurm sends before preemption and wait until submitit has requeued it. scancel keeps
    retrying while the job requeues itself, so it is stopped once the signal has landed."""
    signal = subprocess.Popen(["scancel", "--signal", "USR2", job.job_id], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: "Requeued job" in (job.stdout() or ""), timeout, "the requeue")
    finally:
        signal.kill()
        signal.wait()


def release_requeued(job_id: str) -> None:
    """Start a requeued job now: Slurm holds one for about two minutes (BeginTime). Nothing to do when it is
    already running again."""
    try:
        wait_for(lambda: "PENDING" in slurm_state(job_id), 30, "the job to be pending again")
    except AssertionError:
        return
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)


def slurm_state(job_id: str) -> str:
    """``squeue``'s state and reason of a job (empty once it has left the queue)."""
    out = subprocess.run(["squeue", "-h", "-r", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True).stdout
    return out.strip()
