"""Sweeps over tasks and widths through submitit: one job per (task, width), locally or on Slurm.

``python -m transfer.sweep --checkpoint CKPT --tasks voc,coco,linear:cifar100 --widths 1.0,0.5
--executor local|slurm --results DIR --output DIR [--demo] [--device auto|cuda|cpu]
[--partition P --gpus-per-job G --cpus-per-gpu C ...]``

Jobs run on GPUs: a detection job gets ``--gpus-per-job`` GPUs (default 1 on Slurm, and locally when CUDA
is visible) and a linear job one, each with ``--cpus-per-gpu`` CPUs per GPU; they run on CPU only with
``--device cpu``, which every job is given. A non-demo sweep whose jobs would find no CUDA device stops
before submitting anything (exit status 2).

A job whose results record already exists is not submitted again. On Slurm, the detection jobs go in
one job array and the linear jobs in another (an array's jobs share one resource request);
a preempted or timed-out job checkpoints through submitit and is requeued (detection jobs then continue
from their last checkpoint with ``--resume``; linear jobs re-read their cached features). While it
waits the sweep shows a status table; a failed job is reported with its log path while the others go
on. Exit status: 0 when every job has a result, 1 when some failed, 2 for bad input.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
import torch

from us3l.device import DEVICE_CHOICES

from .results import read_records

DETECTION_TASKS = ("voc", "coco")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class UsageError(ValueError):
    """Bad input to a sweep (one line, exit status 2)."""


@dataclass(frozen=True)
class Task:
    """One task of a sweep: ``voc``, ``coco`` or ``linear:<dataset>``."""

    name: str
    kind: str
    dataset: str | None = None

    @property
    def module(self) -> str:
        return "transfer.linear" if self.kind == "linear" else "detection.train"

    @property
    def group(self) -> str:
        """The resource group (one Slurm array each): ``detection`` or ``linear``."""
        return "linear" if self.kind == "linear" else "detection"


def parse_tasks(text: str) -> list[Task]:
    """``voc,coco,linear:cifar100`` -> tasks (``UsageError`` naming the accepted forms)."""
    from .datasets import SPECS

    tasks = []
    for name in (t.strip() for t in text.split(",")):
        kind, _, dataset = name.partition(":")
        if kind in DETECTION_TASKS and not dataset:
            tasks.append(Task(name, kind))
        elif kind == "linear" and dataset in SPECS:
            tasks.append(Task(name, kind, dataset))
        else:
            raise UsageError(f"unknown task {name!r}; expected voc, coco or linear:DATASET with DATASET one of "
                             f"{', '.join(SPECS)}")
    if len(set(tasks)) != len(tasks):
        raise UsageError(f"--tasks lists a task twice: {text}")
    return tasks


def parse_widths(text: str) -> list[float]:
    try:
        widths = [float(w) for w in text.split(",")]
    except ValueError:
        raise UsageError(f"--widths must be comma-separated numbers like 1.0,0.75,0.5,0.25, got {text!r}") from None
    if len(set(widths)) != len(widths):
        raise UsageError(f"--widths lists a width twice: {text}")
    return widths


@dataclass(frozen=True)
class JobSpec:
    """One (task, width) job: the module whose ``main(argv)`` it runs."""

    task: Task
    width: float
    argv: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.task.name} w={self.width:g}"


def has_result(records: list[dict[str, Any]], spec: JobSpec, sha256: str, demo: bool) -> bool:
    """Whether ``records`` hold the result of ``spec`` for the checkpoint with hash ``sha256``."""
    linear_task = "linear-augment" if "--augment" in spec.argv else "linear"
    for r in records:
        if r.get("checkpoint_sha256") != sha256 or abs(float(r.get("width", -1)) - spec.width) > 1e-9:
            continue
        if spec.task.kind == "linear":
            if r.get("task") == linear_task and r.get("dataset") == spec.task.dataset:
                return True
        elif r.get("task") == spec.task.kind and bool(r.get("demo")) == demo:
            return True
    return False


class TaskRunner:
    """The callable a submitit job runs: ``<module>.main(argv)``; checkpointable for requeueing.

    On preemption or timeout submitit calls :meth:`checkpoint`, pickles what it returns and requeues
    the job, which then runs the next attempt (detection with ``--resume``).
    """

    def __init__(self, module: str, argv: Sequence[str], label: str, threads: int | None = None,
                 attempt: int = 1) -> None:
        self.module, self.argv, self.label = module, tuple(argv), label
        self.threads, self.attempt = threads, attempt

    def __call__(self) -> str:
        print(f"[us3l sweep] {self.label}: attempt {self.attempt}: python -m {self.module} "
              f"{shlex.join(self.argv)}", flush=True)
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        status = importlib.import_module(self.module).main(list(self.argv))
        if status:
            raise RuntimeError(f"{self.label}: python -m {self.module} exited with status {status}")
        return self.label

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        argv = self.argv
        if self.module == "detection.train" and "--resume" not in argv:
            argv = (*argv, "--resume")
        nxt = TaskRunner(self.module, argv, self.label, self.threads, self.attempt + 1)
        return submitit.helpers.DelayedSubmission(nxt)


@dataclass
class SweepConfig:
    checkpoint: str
    tasks: list[Task]
    widths: list[float]
    executor: str
    results: str
    output: str
    demo: bool = False
    device: str = "auto"
    partition: str | None = None
    gpus_per_job: int | None = None  # None: see job_gpus
    cpus_per_gpu: int = 8
    cpus_per_job: int | None = None
    mem_gb: int | None = None
    timeout_min: int = 24 * 60
    max_parallel: int | None = None
    linear_args: list[str] = field(default_factory=list)
    detection_args: list[str] = field(default_factory=list)
    slurm_extra: dict[str, str] = field(default_factory=dict)
    poll_s: float = 5.0


def job_gpus(cfg: SweepConfig, cuda_visible: bool) -> int:
    """GPUs per detection job (a linear job gets at most one), or ``UsageError`` when the jobs would run on
    CPU without ``--device cpu`` (or a demo sweep's ``--device auto``). ``cuda_visible``: here, for local jobs."""
    if cfg.device == "cpu":
        if cfg.gpus_per_job:
            raise UsageError(f"--gpus-per-job {cfg.gpus_per_job} with --device cpu: drop one of them")
        return 0
    if cfg.gpus_per_job is not None:
        gpus = cfg.gpus_per_job
    else:
        gpus = 1 if cfg.executor == "slurm" or cuda_visible else 0
    if cfg.executor == "local" and gpus and not cuda_visible:
        raise UsageError(f"--gpus-per-job {gpus} but no CUDA device is visible here for the local jobs: "
                         f"pass --device cpu to run them on CPU")
    if gpus == 0 and (cfg.device == "cuda" or not cfg.demo):
        where = "no CUDA device is visible here" if cfg.executor == "local" else "--gpus-per-job 0"
        raise UsageError(f"the jobs would run on CPU ({where}) and this is not a demo sweep: pass --device cpu "
                         f"to run them on CPU anyway" + ("" if cfg.executor == "local" else ", or --gpus-per-job G"))
    return gpus


def job_specs(cfg: SweepConfig, gpus: int) -> list[JobSpec]:
    """Every (task, width) job of the sweep, tasks outer, widths inner; detection jobs use ``gpus`` GPUs."""
    specs = []
    demo = ["--demo"] if cfg.demo else []
    for task in cfg.tasks:
        for w in cfg.widths:
            common = ["--checkpoint", str(Path(cfg.checkpoint).resolve()), "--width", f"{w:g}",
                      "--results", str(Path(cfg.results).resolve()), "--device", cfg.device, *demo]
            if task.kind == "linear":
                argv = ["--dataset", task.dataset, *common, *cfg.linear_args]
            else:
                gpus_arg = ["--num-gpus", str(gpus)] if gpus > 1 else []
                argv = ["--task", task.kind, *common, "--output", str(Path(cfg.output).resolve() / "detection"),
                        *gpus_arg, *cfg.detection_args]
            specs.append(JobSpec(task, w, tuple(argv)))
    return specs


@dataclass
class Tracked:
    """A submitted job and what the sweep knows about it."""

    spec: JobSpec
    job: submitit.Job | None = None
    state: str = "QUEUED"  # QUEUED (not yet submitted), then the scheduler's state, then DONE/FAILED
    error: str = ""
    unseen: int = 0  # consecutive polls a Slurm job was neither in the queue nor finished


_ERROR_LINE = re.compile(r"(^|: )error: ")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b")


def failure_reason(exception_text: str, stderr_text: str) -> str:
    """One line saying why a job failed: the task's own ``error:`` line, else the exception's last line."""
    for line in reversed(stderr_text.splitlines()):
        if _ERROR_LINE.search(line):
            return line.strip()
    lines = [ln.strip() for ln in exception_text.splitlines() if _EXCEPTION_LINE.match(ln.strip())]
    return lines[-1] if lines else "no error message (see the log)"


class Sweep:
    """Plan, submit and wait for the jobs of one sweep."""

    def __init__(self, cfg: SweepConfig, out: Callable[[str], None] = print) -> None:
        import us3l

        self.cfg, self.out = cfg, out
        try:
            ck = us3l.load_checkpoint(cfg.checkpoint)
        except us3l.CheckpointError as e:
            raise UsageError(str(e)) from None
        for w in cfg.widths:
            try:
                ck.check_width(w)
            except ValueError as e:
                raise UsageError(str(e)) from None
        if cfg.demo:
            from .datasets import SPECS

            real = [t.name for t in cfg.tasks if t.kind == "linear" and not SPECS[t.dataset].demo]
            if real:
                raise UsageError(f"--demo runs on the built-in data; {', '.join(real)} is a real dataset "
                                 f"(use linear:shapes, or drop --demo)")
        self.sha256 = ck.sha256
        self.gpus = job_gpus(cfg, torch.cuda.is_available())
        self.specs = job_specs(cfg, self.gpus)
        records = read_records(cfg.results) if Path(cfg.results).is_dir() else []
        self.skipped = [s for s in self.specs if has_result(records, s, self.sha256, cfg.demo)]
        self.jobs = [Tracked(s) for s in self.specs if s not in self.skipped]
        self.executors = {g: self._executor(g) for g in dict.fromkeys(t.spec.task.group for t in self.jobs)}

    def resources(self, group: str) -> tuple[int, int | None]:
        """(GPUs, CPUs) of one job of ``group``: a linear job uses one GPU; ``--cpus-per-gpu`` CPUs per GPU
        unless ``--cpus-per-job`` says otherwise (CPU jobs: the scheduler's default)."""
        gpus = self.gpus if group == "detection" else min(self.gpus, 1)
        return gpus, self.cfg.cpus_per_job or (self.cfg.cpus_per_gpu * gpus if gpus else None)

    def _executor(self, group: str) -> submitit.Executor:
        cfg = self.cfg
        gpus, cpus = self.resources(group)
        folder = Path(cfg.output) / "logs" / "%j"
        params: dict[str, Any] = {"timeout_min": cfg.timeout_min, "gpus_per_node": gpus or None,
                                  "cpus_per_task": cpus, "mem_gb": cfg.mem_gb}
        if cfg.executor == "local":
            ex = submitit.AutoExecutor(folder=folder, cluster="local")
        else:
            ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
            params.update({"tasks_per_node": 1, "slurm_array_parallelism": cfg.max_parallel or 256,
                           "slurm_signal_delay_s": 120, "slurm_partition": cfg.partition})
            if cfg.slurm_extra:
                params["slurm_additional_parameters"] = dict(cfg.slurm_extra)
        ex.update_parameters(name=f"us3l-{group}", **{k: v for k, v in params.items() if v is not None})
        return ex

    def _runner(self, spec: JobSpec) -> TaskRunner:
        return TaskRunner(spec.task.module, spec.argv, spec.label, threads=self.cfg.cpus_per_job)

    def submit(self) -> None:
        """Submit the jobs without results: one array per resource group on Slurm (``UsageError`` when sbatch
        refuses it), up to ``max_parallel`` at a time locally."""
        for s in self.skipped:
            self.out(f"skip {s.label}: result already in {self.cfg.results}")
        if not self.jobs:
            self.out(f"nothing to submit: all {len(self.specs)} (task, width) jobs have results in {self.cfg.results}")
            return
        _ensure_importable()
        if self.cfg.executor == "local":
            self._submit_local()
            return
        arrays: list[str] = []
        for group, ex in self.executors.items():
            tracked = [t for t in self.jobs if t.spec.task.group == group]
            try:
                with ex.batch():
                    futures = [ex.submit(self._runner(t.spec)) for t in tracked]
            except submitit.core.utils.FailedJobError as e:
                reason = str(e).strip().splitlines()[-1] if str(e).strip() else "no message"
                already = f" (array {', '.join(arrays)} was submitted and keeps running)" if arrays else ""
                raise UsageError(f"sbatch refused the {group} jobs: {reason}{already}") from None
            arrays.append(futures[0].job_id.split("_")[0])
            for t, job in zip(tracked, futures):
                t.job, t.state = job, "PENDING"
            gpus, cpus = self.resources(group)
            self.out(f"submitted {len(futures)} {group} jobs as Slurm array {arrays[-1]} ({gpus} GPU"
                     f"{'' if gpus == 1 else 's'}, {cpus or 'default'} CPUs each); "
                     f"logs in {Path(self.cfg.output) / 'logs'}")

    def _submit_local(self) -> None:
        limit = self.cfg.max_parallel or 1
        running = sum(1 for t in self.jobs if t.state == "RUNNING")
        for t in self.jobs:
            if running >= limit:
                break
            if t.state == "QUEUED":
                t.job, t.state = self.executors[t.spec.task.group].submit(self._runner(t.spec)), "RUNNING"
                running += 1

    def poll(self) -> bool:
        """Update every job's state; returns True when all jobs are finished."""
        queue = _squeue_states() if self.cfg.executor == "slurm" else {}
        for t in self.jobs:
            if t.job is None or t.state in ("DONE", "FAILED"):
                continue
            # on Slurm the result file alone tells (submitit's sacct fallback fails without accounting)
            if t.job.paths.result_pickle.exists() if self.cfg.executor == "slurm" else t.job.done():
                self._finish(t)
            elif self.cfg.executor == "slurm":
                state = queue.get(t.job.job_id)
                t.unseen = 0 if state or t.job.paths.result_pickle.exists() else t.unseen + 1
                if state:
                    t.state = state
                elif t.unseen >= 3:  # left the queue without a result (cancelled, node failure)
                    t.state, t.error = "FAILED", "the job left the Slurm queue without writing a result"
                    self._report_failure(t)
        if self.cfg.executor == "local":
            self._submit_local()
        return all(t.state in ("DONE", "FAILED") for t in self.jobs)

    def _finish(self, t: Tracked) -> None:
        try:
            exc = t.job.exception()
        except Exception as e:  # noqa: BLE001 - an unreadable result is a failure of that job
            exc = e
        if exc is None:
            t.state = "DONE"
            return
        t.state, t.error = "FAILED", failure_reason(str(exc), t.job.stderr() or "")
        self._report_failure(t)

    def _report_failure(self, t: Tracked) -> None:
        self.out(f"FAILED {t.spec.label}: {t.error}\n  log: {t.job.paths.stderr}")

    def table(self) -> str:
        """The status table: one row per task, one column per width."""
        state = {(s.task.name, s.width): "done (kept)" for s in self.skipped}
        state.update({(t.spec.task.name, t.spec.width): t.state.lower() for t in self.jobs})
        head = ["task"] + [f"w={w:g}" for w in self.cfg.widths]
        rows = [[task.name] + [state.get((task.name, w), "") for w in self.cfg.widths] for task in self.cfg.tasks]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        return "\n".join("  ".join(c.ljust(n) for c, n in zip(r, widths)).rstrip() for r in [head, *rows])

    def wait(self) -> int:
        """Poll until every job is finished, showing the table when it changes; returns the exit status."""
        last = ""
        live = sys.stdout.isatty()
        while True:
            finished = self.poll()
            now = self.table()
            if now != last:
                if live and last:
                    sys.stdout.write(f"\x1b[{last.count(chr(10)) + 1}F\x1b[J")
                self.out(now)
                last = now
            if finished:
                break
            time.sleep(self.cfg.poll_s)
        failed = [t for t in self.jobs if t.state == "FAILED"]
        for t in failed:
            self.out(f"failed: {t.spec.label}: {t.error}\n  log: {t.job.paths.stderr if t.job else '-'}")
        done = len(self.specs) - len(failed)
        self.out(f"{done}/{len(self.specs)} jobs have results in {self.cfg.results}"
                 + (f"; {len(failed)} failed (rerun the sweep to retry them)" if failed else ""))
        return 1 if failed else 0


def _ensure_importable() -> None:
    """Jobs unpickle this module and import the task modules: put the project on their PYTHONPATH."""
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(PROJECT_ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *[p for p in paths if p]])


def _squeue_states() -> dict[str, str]:
    """Job id (``123`` or array task ``123_4``) -> Slurm state, for this user's queued and running jobs."""
    out = subprocess.run(["squeue", "-h", "--me", "-r", "-o", "%i %T"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return dict(line.split(None, 1) for line in out.splitlines() if line.strip())


def parse_args(argv: list[str] | None) -> SweepConfig:
    p = argparse.ArgumentParser(prog="python -m transfer.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--tasks", required=True, help="comma-separated: voc, coco, linear:DATASET")
    p.add_argument("--widths", default="1.0,0.75,0.5,0.25")
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument("--results", default="output/results")
    p.add_argument("--output", default="output/sweep", help="job logs and detection run directories")
    p.add_argument("--demo", action="store_true", help="built-in demo data (passed to every job)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="passed to every job; cpu: run the jobs on CPU (no GPUs requested)")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--gpus-per-job", type=int,
                   help="GPUs of a detection job (linear jobs: 1); default 1 on Slurm, locally 1 when CUDA is visible")
    p.add_argument("--cpus-per-gpu", type=int, default=8, help="CPUs requested per GPU of a job")
    p.add_argument("--cpus-per-job", type=int, help="CPUs (and torch threads) per job, instead of --cpus-per-gpu")
    p.add_argument("--mem-gb", type=int)
    p.add_argument("--timeout-min", type=int, default=24 * 60, help="time limit per job (requeued on timeout)")
    p.add_argument("--max-parallel", type=int, help="jobs running at once (local default 1, Slurm 256)")
    p.add_argument("--linear-args", default="", help="extra arguments of every linear job, e.g. '--epochs 50'")
    p.add_argument("--detection-args", default="", help="extra arguments of every detection job")
    p.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                   help="additional sbatch option, e.g. qos=high or account=vision (repeatable)")
    p.add_argument("--poll-s", type=float, default=5.0, help="seconds between status checks")
    a = p.parse_args(argv)
    extra = {}
    for item in a.slurm_extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--slurm-extra takes KEY=VALUE, got {item!r}")
        extra[key] = value
    for name in ("gpus_per_job", "cpus_per_gpu", "cpus_per_job", "mem_gb", "timeout_min", "max_parallel"):
        value = getattr(a, name)
        if value is not None and value < (0 if name == "gpus_per_job" else 1):
            p.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    try:
        tasks, widths = parse_tasks(a.tasks), parse_widths(a.widths)
    except UsageError as e:
        p.error(str(e))
    return SweepConfig(checkpoint=a.checkpoint, tasks=tasks, widths=widths, executor=a.executor, results=a.results,
                       output=a.output, demo=a.demo, device=a.device, partition=a.partition,
                       gpus_per_job=a.gpus_per_job, cpus_per_gpu=a.cpus_per_gpu, cpus_per_job=a.cpus_per_job,
                       mem_gb=a.mem_gb, timeout_min=a.timeout_min, max_parallel=a.max_parallel,
                       linear_args=shlex.split(a.linear_args), detection_args=shlex.split(a.detection_args),
                       slurm_extra=extra, poll_s=a.poll_s)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    if cfg.executor == "slurm" and subprocess.run(["which", "sbatch"], capture_output=True).returncode != 0:
        print("transfer.sweep: error: --executor slurm needs Slurm's sbatch on PATH "
              "(bash scripts/slurm_up.sh starts a local one), or use --executor local", file=sys.stderr)
        return 2
    try:
        sweep = Sweep(cfg)
        sweep.submit()
    except UsageError as e:
        print(f"transfer.sweep: error: {e}", file=sys.stderr)
        return 2
    if not sweep.jobs:
        print(sweep.table())
        return 0
    return sweep.wait()


if __name__ == "__main__":
    from transfer.sweep import main as _main  # jobs must pickle transfer.sweep's classes, not __main__'s

    sys.exit(_main())
