"""Sweeps over tasks, widths and seeds through submitit: one job per spec, locally or on Slurm.

``python -m transfer.sweep --checkpoint CKPT --tasks voc,coco,linear:cifar100 --widths 1.0,0.5 [--seed S]
[--trials N] [--random-init] --executor local|slurm --results DIR --output DIR [--demo] [--device auto|cuda|cpu]
[--partition P --gpus-per-job G --cpus-per-gpu C ...]``

Every job is planned as data before anything is submitted: the task's own command-line parser turns the
sweep's arguments (with ``--linear-args`` / ``--knn-args`` / ``--detection-args``) into a validated
:class:`us3l.jobs.JobSpec`, and submitit pickles the task's ``run_job`` with that spec; the job's log prints the
equivalent command line. A job whose spec already has a record (same identity, status ok) is not submitted
again; any changed hyper-parameter or override makes another spec, so another run and record. Widths cross as
numbers.
``--trials N`` runs seeds S..S+N-1 (default 0..N-1) as separate jobs and records. ``--random-init`` adds the
same jobs from random initialisation of the checkpoint's architecture (the reference).

Jobs run on GPUs: a detection job gets ``--gpus-per-job`` GPUs (default 1 on Slurm, and locally when CUDA
is visible) and a linear or kNN job one, each with ``--cpus-per-gpu`` CPUs per GPU; they run on CPU only with
``--device cpu``, which every job is given. A non-demo sweep whose jobs would find no CUDA device stops
before submitting anything (exit status 2).

On Slurm, the detection jobs go in one job array and the linear jobs in another (an array's jobs share one
resource request); a preempted or timed-out job checkpoints through submitit and is requeued (detection
jobs then continue from their last checkpoint; linear jobs resume their classifier's per-epoch state and re-read
their cached features). While it waits
the sweep shows a status table; a failed job is reported with its log path while the others go on.
Exit status: 0 when every job has a result, 1 when some failed, 2 for bad input.
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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import submitit
import torch

import us3l
from us3l.data import SPECS
from us3l.data import spec as dataset_spec
from us3l.device import DEVICE_CHOICES
from us3l.errors import UsageError, run_cli
from us3l.jobs import JobSpec, command_line, read_records

from .suites import Suite, SuiteError, load_suite, suite_jobs

DETECTION_TASKS = ("voc", "coco")
RECOGNITION_TASKS = ("linear", "knn")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROG = "python -m transfer.sweep"


@dataclass(frozen=True)
class Task:
    """One task of a sweep: ``voc``, ``coco``, ``linear:<dataset>``, ``linear+augment:<dataset>`` (``--augment``:
    crops and flips through the backbone every epoch) or ``knn:<dataset>``; the dataset is a name or
    ``imagefolder:PATH``."""

    name: str
    kind: str
    dataset: str | None = None
    augment: bool = False

    @property
    def module(self) -> str:
        """The program that runs it: its ``make_job(argv, ck)`` plans a job, its ``run_job(spec, run)`` runs one."""
        return {"linear": "transfer.linear", "knn": "transfer.knn"}.get(self.kind, "detection.train")

    @property
    def group(self) -> str:
        """The resource group (one Slurm array each): ``detection`` or ``linear`` (linear and kNN jobs)."""
        return "linear" if self.kind in RECOGNITION_TASKS else "detection"


def parse_tasks(text: str) -> list[Task]:
    """``voc,coco,linear:cifar100,linear+augment:cifar10,knn:imagefolder:/data/x`` -> tasks (``UsageError`` naming
    the accepted forms)."""
    tasks = []
    for name in (t.strip() for t in text.split(",")):
        head, _, dataset = name.partition(":")
        kind, plus, option = head.partition("+")
        try:
            known = bool(dataset) and bool(dataset_spec(dataset))
        except ValueError:
            known = False
        if kind in DETECTION_TASKS and not dataset and not plus:
            tasks.append(Task(name, kind))
        elif kind in RECOGNITION_TASKS and known and (not plus or (kind, option) == ("linear", "augment")):
            tasks.append(Task(name, kind, dataset, augment=bool(plus)))
        else:
            raise UsageError(f"unknown task {name!r}; expected voc, coco, linear:DATASET, linear+augment:DATASET or "
                             f"knn:DATASET with DATASET one of {', '.join(SPECS)} or imagefolder:PATH")
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
class Cell:
    """One (task, backbone, width) point of a sweep, run once per seed. The backbone is ``checkpoint``'s, or with
    ``random_init`` a random network of its architecture; ``row`` is its row in the status table. The grid of
    ``--checkpoint``/``--tasks``/``--widths`` is a list of cells (:func:`grid_cells`); so is a suite's methods."""

    task: Task
    checkpoint: str
    width: float
    random_init: bool = False
    row: str = ""


@dataclass(frozen=True)
class Planned:
    """One job of a sweep: its task, validated spec, run settings (``LinearRun`` or ``DetectionRun``), table row."""

    task: Task
    spec: JobSpec
    run: Any
    row: str

    @property
    def label(self) -> str:
        return f"{self.row} w={self.spec.width:g}"

    @property
    def command(self) -> str:
        """The equivalent command line."""
        return command_line(self.task.module, self.run.argv)


class JobRunner:
    """The callable a submitit job runs: its task's ``run_job(spec, run)``; checkpointable for requeueing.

    On preemption or timeout submitit calls :meth:`checkpoint`, pickles what it returns and requeues the
    job, which then runs the next attempt (detection resuming from its run directory).
    """

    def __init__(self, job: Planned, threads: int | None = None, attempt: int = 1) -> None:
        self.job, self.threads, self.attempt = job, threads, attempt

    def __call__(self) -> str:
        print(f"[us3l sweep] {self.job.label} (run {self.job.spec.id}): attempt {self.attempt}: {self.job.command}",
              flush=True)
        if self.threads:
            torch.set_num_threads(self.threads)
        status = importlib.import_module(self.job.task.module).run_job(self.job.spec, self.job.run)
        if status:
            raise RuntimeError(f"{self.job.label}: {self.job.command} exited with status {status}")
        return self.job.label

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        job = self.job
        if job.task.group == "detection" and not job.run.resume:
            job = replace(job, run=replace(job.run, resume=True, argv=("--resume", *job.run.argv)))
        return submitit.helpers.DelayedSubmission(JobRunner(job, self.threads, self.attempt + 1))


@dataclass
class SweepConfig:
    checkpoint: str
    tasks: list[Task]
    widths: list[float]
    executor: str
    results: str
    output: str
    seeds: list[int] = field(default_factory=lambda: [0])
    random_init: bool = False
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
    knn_args: list[str] = field(default_factory=list)
    detection_args: list[str] = field(default_factory=list)
    slurm_extra: dict[str, str] = field(default_factory=dict)
    poll_s: float = 5.0
    suite: Suite | None = None  # when given, its methods are the cells (checkpoint/tasks/widths come from it)


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


def suite_cells(suite: Suite) -> list[Cell]:
    """The cells of a suite: each method's checkpoint(s) at its widths on every task (``SuiteError`` naming a
    missing or mismatched checkpoint)."""
    jobs = suite_jobs(suite)
    return [Cell(parse_tasks(j.task_name)[0], j.checkpoint, j.width, j.random_init, f"{j.method}: {j.task_name}")
            for j in jobs]


def grid_cells(cfg: SweepConfig) -> list[Cell]:
    """Every task at every width on ``--checkpoint`` (and from random initialisation with ``--random-init``)."""
    if cfg.suite is not None:
        return suite_cells(cfg.suite)
    inits = (False, True) if cfg.random_init else (False,)
    return [Cell(task, cfg.checkpoint, w, random_init, f"{task.name}{' random-init' if random_init else ''}")
            for task in cfg.tasks for random_init in inits for w in cfg.widths]


# What the sweep sets on every job's command line: --linear-args / --detection-args must not set them again.
SWEEP_FLAGS = {"--checkpoint", "--weights", "--width", "--seed", "--results", "--output", "--device", "--demo",
               "--random-init", "--dataset", "--task", "--num-gpus", "--resume", "--run-dir"}


def job_argv(cfg: SweepConfig, cell: Cell, seed: int, gpus: int) -> list[str]:
    """The command line of one job of ``cell`` (the width as Python's shortest exact text: it parses back equal)."""
    common = ["--checkpoint", str(Path(cell.checkpoint).resolve()), "--width", repr(float(cell.width)),
              "--seed", str(seed), "--results", str(Path(cfg.results).resolve()), "--device", cfg.device,
              *(["--demo"] if cfg.demo else []), *(["--random-init"] if cell.random_init else [])]
    if cell.task.kind == "knn":
        return ["--dataset", cell.task.dataset, *common, *cfg.knn_args]
    if cell.task.kind == "linear":
        return ["--dataset", cell.task.dataset, *common, *(["--augment"] if cell.task.augment else []),
                *cfg.linear_args]
    gpus_arg = ["--num-gpus", str(gpus)] if gpus > 1 else []
    return ["--task", cell.task.kind, *common, "--output", str(Path(cfg.output).resolve() / "detection"), *gpus_arg,
            *cfg.detection_args]


def plan(cfg: SweepConfig, cells: list[Cell], gpus: int) -> list[Planned]:
    """Every job of ``cells`` at every seed, each spec built and validated by its task's own parser (``UsageError``
    naming the job otherwise); detection jobs use ``gpus`` GPUs. Jobs with one identity are planned once."""
    for name, extra in (("linear-args", cfg.linear_args), ("knn-args", cfg.knn_args),
                        ("detection-args", cfg.detection_args)):
        taken = sorted({a.split("=", 1)[0] for a in extra} & SWEEP_FLAGS)
        if taken:
            raise UsageError(f"--{name} sets {', '.join(taken)}, which the sweep sets for every job "
                             f"(use the sweep's own options, e.g. --seed/--trials, --widths, --device)")
    checkpoints: dict[str, us3l.BackboneCheckpoint] = {}
    jobs: dict[str, Planned] = {}
    for cell in cells:
        if cell.checkpoint not in checkpoints:
            checkpoints[cell.checkpoint] = us3l.load_checkpoint(cell.checkpoint)
        program = importlib.import_module(cell.task.module)
        for seed in cfg.seeds:
            row = cell.row or cell.task.name
            row += f" seed={seed}" if len(cfg.seeds) > 1 else ""
            try:
                spec, run = program.make_job(job_argv(cfg, cell, seed, gpus), checkpoints[cell.checkpoint])
            except UsageError as e:
                raise UsageError(f"{row} w={cell.width:g}: {e}") from None
            jobs.setdefault(spec.id, Planned(cell.task, spec, run, row))
    return list(jobs.values())


@dataclass
class Tracked:
    """A submitted job and what the sweep knows about it."""

    planned: Planned
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
        self.cfg, self.out = cfg, out
        if cfg.demo:
            real = [t.name for t in cfg.tasks if t.kind in RECOGNITION_TASKS and not dataset_spec(t.dataset).demo]
            if real:
                raise UsageError(f"--demo runs on the built-in data; {', '.join(real)} is a real dataset "
                                 f"(use linear:shapes, or drop --demo)")
        try:
            self.gpus, no_gpus = job_gpus(cfg, torch.cuda.is_available()), None
        except UsageError as e:  # reported after the jobs' own input errors
            self.gpus, no_gpus = 0, e
        self.planned = plan(cfg, grid_cells(cfg), self.gpus)
        if no_gpus:
            raise no_gpus
        records = read_records(cfg.results) if Path(cfg.results).is_dir() else []
        done = {r["id"] for r in records if r["status"] == "ok"}
        self.failed_before = {r["id"] for r in records if r["status"] == "failed"}
        self.skipped = [p for p in self.planned if p.spec.id in done]
        self.jobs = [Tracked(p) for p in self.planned if p.spec.id not in done]
        self.executors = {g: self._executor(g) for g in dict.fromkeys(t.planned.task.group for t in self.jobs)}

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

    def _runner(self, job: Planned) -> JobRunner:
        return JobRunner(job, threads=self.cfg.cpus_per_job)

    def submit(self) -> None:
        """Submit the jobs without results: one array per resource group on Slurm (``UsageError`` when sbatch
        refuses it), up to ``max_parallel`` at a time locally."""
        for p in self.skipped:
            self.out(f"skip {p.label}: run {p.spec.id} already has a record in {self.cfg.results}")
        for t in self.jobs:
            if t.planned.spec.id in self.failed_before:
                self.out(f"retry {t.planned.label}: run {t.planned.spec.id} failed before")
        if not self.jobs:
            self.out(f"nothing to submit: all {len(self.planned)} jobs have records in {self.cfg.results}")
            return
        _ensure_importable()
        if self.cfg.executor == "local":
            self._submit_local()
            return
        arrays: list[str] = []
        for group, ex in self.executors.items():
            tracked = [t for t in self.jobs if t.planned.task.group == group]
            try:
                with ex.batch():
                    futures = [ex.submit(self._runner(t.planned)) for t in tracked]
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
                t.job, t.state = self.executors[t.planned.task.group].submit(self._runner(t.planned)), "RUNNING"
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
        self.out(f"FAILED {t.planned.label}: {t.error}\n  log: {t.job.paths.stderr}")

    def table(self) -> str:
        """The status table: one row per task (and seed, backbone), one column per width."""
        state = {(p.row, p.spec.width): "done (kept)" for p in self.skipped}
        state.update({(t.planned.row, t.planned.spec.width): t.state.lower() for t in self.jobs})
        rows_of = list(dict.fromkeys(p.row for p in self.planned))
        widths = list(dict.fromkeys(p.spec.width for p in self.planned))
        head = ["task"] + [f"w={w:g}" for w in widths]
        rows = [[row] + [state.get((row, w), "") for w in widths] for row in rows_of]
        size = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        return "\n".join("  ".join(c.ljust(n) for c, n in zip(r, size)).rstrip() for r in [head, *rows])

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
            self.out(f"failed: {t.planned.label}: {t.error}\n  log: {t.job.paths.stderr if t.job else '-'}")
        done = len(self.planned) - len(failed)
        self.out(f"{done}/{len(self.planned)} jobs have results in {self.cfg.results}"
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
    p.add_argument("--checkpoint", help="slimmable backbone checkpoint (or --suite)")
    p.add_argument("--tasks", help="comma-separated: voc, coco, linear:DATASET, linear+augment:DATASET, knn:DATASET "
                                   "(DATASET: a name or imagefolder:PATH) (or --suite)")
    p.add_argument("--widths", default="1.0,0.75,0.5,0.25")
    p.add_argument("--suite", help="suite file (suites/*.yaml): its methods' checkpoints, tasks and widths")
    p.add_argument("--output-root", default="output", help="what $OUTPUT stands for in the suite (default output)")
    p.add_argument("--seed", type=int, default=0, help="seed of every job (the first seed with --trials)")
    p.add_argument("--trials", type=int, default=1, help="run seeds SEED..SEED+N-1, one job and record each")
    p.add_argument("--random-init", action="store_true",
                   help="also run every job from random initialisation of the checkpoint's architecture")
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
    p.add_argument("--knn-args", default="", help="extra arguments of every kNN job, e.g. '--k 10,20'")
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
    if a.seed < 0:
        p.error(f"--seed must be >= 0, got {a.seed}")
    for name in ("trials", "gpus_per_job", "cpus_per_gpu", "cpus_per_job", "mem_gb", "timeout_min", "max_parallel"):
        value = getattr(a, name)
        if value is not None and value < (0 if name == "gpus_per_job" else 1):
            p.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    suite = None
    if a.suite:
        if a.checkpoint or a.tasks or a.random_init:
            p.error("--suite names the checkpoints, tasks and baselines: drop --checkpoint/--tasks/--random-init")
        try:
            suite = load_suite(a.suite, a.output_root)
        except SuiteError as e:
            p.error(str(e))
        if a.demo and not suite.demo:
            p.error(f"--demo with {a.suite}, a suite on real data: drop --demo or use a demo suite")
        a.demo, a.checkpoint, a.tasks = suite.demo, "", ",".join(suite.tasks)
        a.widths = ",".join(map(repr, suite.widths))
    elif not (a.checkpoint and a.tasks):
        p.error("give --checkpoint and --tasks, or --suite")
    try:
        tasks, widths = parse_tasks(a.tasks), parse_widths(a.widths)
    except UsageError as e:
        p.error(str(e))
    return SweepConfig(checkpoint=a.checkpoint, tasks=tasks, suite=suite, widths=widths, executor=a.executor,
                       results=a.results,
                       output=a.output, seeds=list(range(a.seed, a.seed + a.trials)), random_init=a.random_init,
                       demo=a.demo, device=a.device, partition=a.partition,
                       gpus_per_job=a.gpus_per_job, cpus_per_gpu=a.cpus_per_gpu, cpus_per_job=a.cpus_per_job,
                       mem_gb=a.mem_gb, timeout_min=a.timeout_min, max_parallel=a.max_parallel,
                       linear_args=shlex.split(a.linear_args), knn_args=shlex.split(a.knn_args),
                       detection_args=shlex.split(a.detection_args),
                       slurm_extra=extra, poll_s=a.poll_s)


def run_sweep(cfg: SweepConfig) -> int:
    """Submit the jobs without results, wait for them and print the table; 1 when a job failed."""
    if cfg.executor == "slurm" and subprocess.run(["which", "sbatch"], capture_output=True).returncode != 0:
        raise UsageError("--executor slurm needs Slurm's sbatch on PATH (bash scripts/slurm_up.sh starts a local "
                         "one), or use --executor local")
    sweep = Sweep(cfg)
    sweep.submit()
    if not sweep.jobs:
        print(sweep.table())
        return 0
    return sweep.wait()


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    return run_cli(PROG, lambda: run_sweep(cfg))


if __name__ == "__main__":
    from transfer.sweep import main as _main  # jobs must pickle transfer.sweep's classes, not __main__'s

    sys.exit(_main())
