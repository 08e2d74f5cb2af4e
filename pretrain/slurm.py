"""Pretraining as one multi-task Slurm job through submitit, checkpointed and requeued on preemption.

``python -m pretrain.slurm --config FILE [--nodes N] [--gpus-per-node G] [--partition P] [key=value ...]``
(``make pretrain EXECUTOR=slurm NODES=N GPUS=G [PARTITION=P]``).

The job runs N x G tasks (one per GPU; ``--tasks-per-node`` for CPU tasks); each task takes its
torch.distributed rank and rendezvous from submitit's job environment and runs the ordinary training
loop. Slurm signals USR2 before a time limit (``--signal``) or on preemption: every task then finishes
its iteration, the state is saved to ``last.pth`` at that iteration, and submitit requeues the job,
which resumes from ``last.pth``. Requeues after preemption are unlimited; after time limits at most
``--max-timeouts`` (submitit counts them).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

import submitit
import torch

from us3l.errors import RunFailed, UsageError, run_cli

from .config import ConfigError, load_config
from .train import Interrupted, train


class PretrainJob:
    """The callable each Slurm task runs; submitit pickles it and calls :meth:`checkpoint` on a signal."""

    def __init__(self, config: str, overrides: list[str], attempt: int = 1) -> None:
        self.config, self.overrides, self.attempt = config, list(overrides), attempt

    def __call__(self) -> str:
        dist_env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        if os.environ.get("SLURM_CPUS_PER_TASK"):
            torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))
        # submitit's handler checkpoints and requeues at once, wherever the loop is; ours only asks the
        # loop to stop after its iteration, then hands over to submitit's with the state saved.
        requeue_handler = signal.getsignal(signal.SIGUSR2)
        stop = threading.Event()
        signal.signal(signal.SIGUSR2, lambda signum, frame: stop.set())
        print(f"[us3l pretrain] attempt {self.attempt}: rank {dist_env.rank}/{dist_env.world_size}, "
              f"python -m pretrain --config {self.config} {' '.join(self.overrides)}", flush=True)
        cfg = load_config(self.config, self.overrides)
        try:
            return str(train(cfg, Path(self.config).stem, should_stop=stop.is_set))
        except Interrupted as e:
            print(f"[us3l pretrain] {e}", flush=True)
            if dist_env.rank == 0 and callable(requeue_handler):
                requeue_handler(signal.SIGUSR2, None)  # checkpoint() below, `scontrol requeue`, exit
            time.sleep(120)  # other tasks: the requeue ends the job step
            raise

    def checkpoint(self, *args: object, **kwargs: object) -> submitit.helpers.DelayedSubmission:
        """The next attempt: the same run, which resumes from its ``last.pth``."""
        return submitit.helpers.DelayedSubmission(PretrainJob(self.config, self.overrides, self.attempt + 1))


def _absolute_output(overrides: list[str]) -> list[str]:
    """Overrides with ``output_dir`` made absolute (the job may start in another directory)."""
    out = [o for o in overrides if not o.startswith("output_dir=")]
    given = [o.partition("=")[2] for o in overrides if o.startswith("output_dir=")]
    return [*out, f"output_dir={Path(given[-1] if given else 'output/pretrain').resolve()}"]


def submit(config: str, overrides: list[str], *, nodes: int = 1, gpus_per_node: int = 1,
           tasks_per_node: int | None = None, cpus_per_task: int | None = None, partition: str | None = None,
           timeout_min: int = 3 * 24 * 60, max_timeouts: int = 3, folder: str | None = None) -> submitit.Job:
    """Validate the run locally, then submit it as one job of ``nodes x tasks_per_node`` tasks."""
    overrides = _absolute_output(list(overrides))
    cfg = load_config(config, overrides)
    tasks = tasks_per_node or max(gpus_per_node, 1)
    if gpus_per_node and tasks != gpus_per_node:
        raise ConfigError(f"--tasks-per-node {tasks} must equal --gpus-per-node {gpus_per_node} (one task per GPU)")
    if not gpus_per_node and cfg.device != "cpu":
        raise ConfigError("--gpus-per-node 0 runs on the CPU: pass device=cpu to mean it, or request GPUs")
    world = nodes * tasks
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by {world} tasks ({nodes} x {tasks})")
    name = Path(config).stem
    run_dir = Path(cfg.output_dir) / name
    ex = submitit.AutoExecutor(folder=folder or run_dir / "slurm" / "%j", cluster="slurm",
                               slurm_max_num_timeout=max_timeouts)
    params = {"name": f"us3l-pretrain-{name}", "nodes": nodes, "tasks_per_node": tasks,
              "cpus_per_task": cpus_per_task or (8 if gpus_per_node else 1), "timeout_min": timeout_min,
              "slurm_signal_delay_s": 180}
    if gpus_per_node:
        params["gpus_per_node"] = gpus_per_node
    if partition:
        params["slurm_partition"] = partition
    ex.update_parameters(**params)
    return ex.submit(PretrainJob(str(Path(config).resolve()), overrides))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pretrain.slurm", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML file, e.g. pretrain/configs/imagenet_r50.yaml")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=1, help="GPUs per node, one task each (0: CPU tasks)")
    p.add_argument("--tasks-per-node", type=int, help="tasks per node (default: one per GPU, else 1)")
    p.add_argument("--cpus-per-task", type=int, help="CPUs per task (default 8 with GPUs, else 1)")
    p.add_argument("--partition")
    p.add_argument("--timeout-min", type=int, default=3 * 24 * 60, help="time limit of one attempt")
    p.add_argument("--max-timeouts", type=int, default=3, help="requeues after hitting the time limit")
    p.add_argument("--wait", action="store_true", help="wait for the job to finish")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. batch_size=64")
    a = p.parse_args(argv)
    for name in ("nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "timeout_min", "max_timeouts"):
        value = getattr(a, name)
        if value is not None and value < (0 if name in ("gpus_per_node", "max_timeouts") else 1):
            p.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    return run_cli(p.prog, lambda: submit_and_wait(a))


def submit_and_wait(a: argparse.Namespace) -> None:
    """Submit the job of the command line ``a``; with ``--wait``, wait for its backbone checkpoint."""
    try:
        job = submit(a.config, a.overrides, nodes=a.nodes, gpus_per_node=a.gpus_per_node,
                     tasks_per_node=a.tasks_per_node, cpus_per_task=a.cpus_per_task, partition=a.partition,
                     timeout_min=a.timeout_min, max_timeouts=a.max_timeouts)
    except RuntimeError as e:  # submitit: no sbatch/srun on this machine
        raise UsageError(f"{e} (bash scripts/slurm_up.sh starts a local Slurm)") from None
    print(f"submitted Slurm job {job.job_id}; logs: {job.paths.stdout.parent}")
    if not a.wait:
        return
    while not job.paths.result_pickle.exists():
        time.sleep(10)
    try:
        print(f"backbone checkpoint: {job.result()}")
    except submitit.core.utils.FailedJobError as e:
        raise RunFailed(f"job {job.job_id} failed; see {job.paths.stderr}\n{e}") from None


if __name__ == "__main__":
    from pretrain.slurm import main as _main  # the job must pickle pretrain.slurm's class, not __main__'s

    sys.exit(_main())
