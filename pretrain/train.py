"""The pretraining loop: :func:`build_run` once, :func:`step` per iteration, :func:`after_step` for the
periodic actions (log, checkpoint, stop on request), :func:`finish` to export the backbone."""

from __future__ import annotations

import contextlib
import math
import os
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

import us3l
from us3l.data import TwoViews, build_pretrain_dataset, is_image_folder, simclr_augmentation
from us3l.device import device_info, resolve_device
from us3l.device import precision_name as device_precision
from us3l.errors import Diverged
from us3l.group_reg import GroupRegularizer, regularized_parameters
from us3l.models import build_model
from us3l.samplers import Sampler as WidthSampler
from us3l.ssl import SSLModel, StepOutput

from . import distributed as D
from .config import ConfigError, PretrainConfig
from .metrics import RunLogger
from .state import load_state, restore_scaler, save_state, set_rng_state


class GlobalBatches(Sampler[list[int]]):
    """This process's share of each global batch of one epoch, from batch ``start`` on.

    The epoch's order is a permutation seeded by ``(seed, epoch)``; global batch ``b`` is split in
    rank order, so N processes together see exactly the batches of one process.
    """

    def __init__(self, size: int, batch_size: int, info: D.DistInfo, seed: int, epoch: int, start: int = 0) -> None:
        self.size, self.batch_size, self.info = size, batch_size, info
        self.seed, self.epoch, self.start = seed, epoch, start

    def __len__(self) -> int:
        return self.size // self.batch_size - self.start

    def __iter__(self) -> Iterator[list[int]]:
        perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        local = self.batch_size // self.info.world_size
        for b in range(self.start, self.size // self.batch_size):
            chunk = perm[b * self.batch_size:(b + 1) * self.batch_size]
            yield chunk[self.info.rank * local:(self.info.rank + 1) * local].tolist()


def lr_at(cfg: PretrainConfig, iteration: int, total: int) -> float:
    """Linear warmup over ``warmup_iters``, then cosine decay to 0 at ``total``."""
    if iteration < cfg.warmup_iters:
        return cfg.lr * (iteration + 1) / cfg.warmup_iters
    progress = (iteration - cfg.warmup_iters) / max(1, total - cfg.warmup_iters)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA memory allocated by tensors on a GPU, the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def autocast_dtype(cfg: PretrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``amp: true`` (float16 on CUDA, bfloat16 on CPU), or None without AMP."""
    if not cfg.amp or cfg.precision != "float32":
        return None
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def _dtype(cfg: PretrainConfig) -> torch.dtype:
    return torch.float64 if cfg.precision == "float64" else torch.float32


def _memory_format(cfg: PretrainConfig) -> torch.memory_format:
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def precision_name(cfg: PretrainConfig, device: torch.device) -> str:
    """What the run computes in: ``float64``, else the library's name for float32 with or without AMP."""
    return "float64" if cfg.precision == "float64" else device_precision(device.type, cfg.amp)


def apply_gradients(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, params: list[torch.nn.Parameter],
                    reg: GroupRegularizer | None, alpha: float) -> bool:
    """Average the accumulated gradients over processes, unscale, add group regularization, step.

    The gradients are reduced while still scaled, so every process sees the same inf/NaN and the
    scaler skips the step on all processes or on none. Returns whether the step was skipped.
    """
    D.average_gradients(params)
    scaler.unscale_(optimizer)
    if reg is not None:
        reg.add_grad_(alpha)
    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    return scale is not None and scaler.get_scale() < scale


def _param_groups(model: SSLModel, cfg: PretrainConfig, group_reg: bool) -> list[dict]:
    """Backbone conv/BN parameters get no optimizer weight decay under group regularization."""
    special = {id(p) for p in regularized_parameters(model.encoder.backbone)} if group_reg else set()
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if id(p) in special], "weight_decay": 0.0},
        {"params": [p for p in trainable if id(p) not in special], "weight_decay": cfg.weight_decay},
    ]


def _augmentation_name(dataset: str) -> str:
    """The augmentation (normalisation, blur) of a pretraining set: ImageNet's for image folders."""
    if is_image_folder(dataset):
        return "imagenet"
    return {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet"}.get(dataset, "shapes")


class Interrupted(Exception):
    """Training stopped early on request (a Slurm preemption or time-limit signal) after saving its state."""

    def __init__(self, iteration: int) -> None:
        super().__init__(f"stopped at iteration {iteration} on request; state saved for resuming")
        self.iteration = iteration


def train(cfg: PretrainConfig, config_name: str, should_stop: Callable[[], bool] | None = None) -> Path:
    """Run (or resume) pretraining; returns the path of the backbone checkpoint.

    ``should_stop`` is polled after every iteration (agreed over processes); when it returns True the
    state is saved to ``last.pth`` and :class:`Interrupted` is raised.
    """
    # the CPU is a silent fallback only for the built-in demo data
    device = resolve_device(cfg.device, allow_cpu=cfg.dataset == "shapes", cpu_flag="device=cpu")
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    info = D.init_distributed(device.type)
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
        device = torch.device("cuda", info.local_rank)
    try:
        return _train(cfg, config_name, device, info, should_stop)
    finally:
        D.cleanup()


def _train(cfg: PretrainConfig, config_name: str, device: torch.device, info: D.DistInfo,
           should_stop: Callable[[], bool] | None) -> Path:
    run = build_run(cfg, config_name, device, info)
    if run.iteration >= run.total and run.backbone_path.exists():
        if info.is_main:
            print(f"{run.run_dir}: already complete ({run.total} iterations); backbone checkpoint {run.backbone_path}")
        return run.backbone_path
    with begin(run) as monitor:
        for x1, x2 in batches(run):
            after_step(run, monitor, step(run, x1, x2), should_stop)
        finish(run, monitor)
    D.barrier()
    return run.backbone_path


@dataclass
class Run:
    """One pretraining run between iterations: what it trains, with what, and how far it got."""

    cfg: PretrainConfig
    device: torch.device
    info: D.DistInfo
    run_dir: Path
    config: dict[str, Any]  # the resolved config, as written to config.yaml and checked on resume
    data: Dataset  # the images, before augmentation
    model: SSLModel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    reg: GroupRegularizer | None
    sampler: WidthSampler
    total: int  # iterations of the whole run
    iteration: int = 0  # iterations completed
    forwards: int = 0  # student forwards so far
    skipped: int = 0  # optimizer steps the loss scaler skipped since this process started
    resumed_precision: str | None = None  # what the resumed state was written in

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pth"

    @property
    def backbone_path(self) -> Path:
        return self.run_dir / "backbone.pth"

    @property
    def iters_per_epoch(self) -> int:
        return len(self.data) // self.cfg.batch_size

    @property
    def precision(self) -> str:
        return precision_name(self.cfg, self.device)

    @cached_property
    def params(self) -> list[torch.nn.Parameter]:
        """The trainable parameters (fixed for the run: the momentum encoder never trains)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def autocast(self) -> contextlib.AbstractContextManager:
        amp_dtype = autocast_dtype(self.cfg, self.device)
        return torch.autocast(self.device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()


def build_run(cfg: PretrainConfig, config_name: str, device: torch.device, info: D.DistInfo) -> Run:
    """Check the inputs, build data, model, optimizer and scaler, and restore ``last.pth`` if present.

    Everything that can fail on bad input fails here, before anything is written.
    """
    if cfg.batch_size % info.world_size:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by {info.world_size} processes")
    data = build_pretrain_dataset(cfg.dataset, cfg.data_root, cfg.image_size, cfg.seed)
    iters_per_epoch = len(data) // cfg.batch_size
    if iters_per_epoch == 0:
        raise ConfigError(f"dataset {cfg.dataset!r} has {len(data)} images, fewer than batch_size {cfg.batch_size}")
    total = cfg.iterations or cfg.epochs * iters_per_epoch
    run_dir, config, ssl_cfg = Path(cfg.output_dir) / config_name, cfg.to_dict(), cfg.objective()
    state = load_state(run_dir / "last.pth", config) if (run_dir / "last.pth").exists() else None

    torch.manual_seed(cfg.seed)
    model = SSLModel(ssl_cfg, cfg.arch, cfg.stem, cfg.width_range).to(device, _dtype(cfg))
    model.to(memory_format=_memory_format(cfg))
    if cfg.sync_bn and info.world_size > 1:
        D.convert_sync_bn(model)
    reg = None
    if ssl_cfg.regularizer == "group":
        reg = GroupRegularizer(model.encoder.backbone, cfg.weight_decay, ssl_cfg.group_alpha, ssl_cfg.groups,
                               ramp_iters=int(cfg.group_ramp * total), schedule=ssl_cfg.group_schedule)
    optimizer = torch.optim.SGD(_param_groups(model, cfg, reg is not None), lr=cfg.lr, momentum=cfg.momentum)
    # float16 needs loss scaling; bfloat16 has float32's range and does not.
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype(cfg, device) == torch.float16)
    run = Run(cfg, device, info, run_dir, config, data, model, optimizer, scaler, reg,
              ssl_cfg.make_sampler(total, cfg.width_range, cfg.seed), total)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_scaler(scaler, state["scaler"])
        set_rng_state(state["rng"])
        run.iteration, run.forwards = int(state["iteration"]), int(state["forwards"])
        run.resumed_precision = state.get("precision", "unrecorded")
    return run


def batches(run: Run) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This process's two views of each remaining iteration's images, on the run's device, dtype and layout."""
    cfg, info = run.cfg, run.info
    views = TwoViews(run.data, simclr_augmentation(cfg.image_size, _augmentation_name(cfg.dataset)), seed=cfg.seed)
    it = run.iteration
    while it < run.total:
        epoch, first = divmod(it, run.iters_per_epoch)
        views.epoch = epoch
        order = GlobalBatches(len(run.data), cfg.batch_size, info, cfg.seed, epoch, first)
        for x1, x2 in DataLoader(views, batch_sampler=order, num_workers=cfg.num_workers,
                                 pin_memory=run.device.type == "cuda"):
            yield tuple(x.to(run.device, _dtype(cfg), non_blocking=True, memory_format=_memory_format(cfg))
                        for x in (x1, x2))
            it += 1
            if it >= run.total:
                return


@dataclass
class StepMetrics:
    """What one iteration computed (``out``) and the schedule it ran with."""

    iteration: int  # the iteration that ran (0-based)
    out: StepOutput
    lr: float
    group_alpha: float
    loss_scale: float  # the loss scale the gradients were computed at (1.0 without scaling)

    @property
    def loss(self) -> float:
        return self.out.loss


def step(run: Run, x1: torch.Tensor, x2: torch.Tensor) -> StepMetrics:
    """Iteration ``run.iteration`` on the two views ``x1``, ``x2``: forward/backward at the sampled widths,
    then reduce, unscale, regularize and step; :class:`~us3l.errors.Diverged` on a non-finite loss."""
    it = run.iteration
    widths = run.sampler.widths(it)
    lr = lr_at(run.cfg, it, run.total)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.optimizer.zero_grad(set_to_none=True)
    out = run.model.train_step(x1, x2, widths, backward=lambda loss: run.scaler.scale(loss).backward(),
                               gather=D.gather, autocast=run.autocast)
    run.forwards += len(widths)
    if not math.isfinite(out.loss):
        kept = f"last good checkpoint {run.last_path}" if run.last_path.exists() else "no checkpoint was written"
        raise Diverged(f"loss became {out.loss} at iteration {it} (per width {out.losses}); "
                       f"training stopped, {kept}; lower lr or check the data")
    alpha = run.reg.alpha_at(it) if run.reg is not None else 0.0
    scale = run.scaler.get_scale() if run.scaler.is_enabled() else 1.0
    run.skipped += apply_gradients(run.optimizer, run.scaler, run.params, run.reg, alpha)
    run.iteration += 1
    return StepMetrics(it, out, lr, alpha, scale)


class Monitor:
    """The run's log, progress bar, current sampling stage and throughput window (main process writes)."""

    def __init__(self, run: Run) -> None:
        self.log = RunLogger(run.run_dir, run.info.is_main, run.iteration)
        self.bar = tqdm(total=run.total, initial=run.iteration, disable=not run.info.is_main, dynamic_ncols=True,
                        desc="pretrain")
        self.stage: int | None = None
        self.window_start, self.window_iters = time.perf_counter(), 0

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
        self.log.close()

    def info(self, message: str) -> None:
        self.log.info(message)

    def update(self, run: Run, m: StepMetrics) -> None:
        """Note a new sampling stage; every ``log_every`` iterations, record the metrics."""
        it, done = m.iteration, m.iteration + 1
        if run.sampler.stage(it) != self.stage:
            self.stage = run.sampler.stage(it)
            self.info(f"iteration {it}: stage {self.stage}, min width {run.sampler.min_width_at(it):g}")
        self.window_iters += 1
        if done % run.cfg.log_every == 0 or done == run.total:
            ips = self.window_iters * run.cfg.batch_size / max(time.perf_counter() - self.window_start, 1e-9)
            self.log.record(_record(run, m, ips))
            self.bar.set_postfix(loss=f"{m.loss:.3f}", min_w=f"{min(m.out.widths):.2f}", img_s=f"{ips:.0f}")
            self.window_start, self.window_iters = time.perf_counter(), 0
        self.bar.update(1)


def _record(run: Run, m: StepMetrics, images_per_s: float) -> dict[str, Any]:
    """One line of ``metrics.jsonl``: the iteration's losses and schedule, the run's counters and throughput."""
    out = m.out
    roles = {"max": out.proj_std[0]}
    if len(out.proj_std) > 1:
        roles["min"] = out.proj_std[-1]
    return {"iteration": m.iteration + 1, "epoch": m.iteration // run.iters_per_epoch, "loss": out.loss,
            "loss_per_width": out.losses, "widths": out.widths, "min_width": min(out.widths),
            "proj_std": out.proj_std, "proj_std_by_role": roles, "lr": m.lr, "group_alpha": m.group_alpha,
            "images_per_s": images_per_s, "student_forwards": run.forwards, "precision": run.precision,
            "loss_scale": m.loss_scale, "skipped_steps": run.skipped, "peak_memory_mb": peak_memory_mb(run.device)}


def begin(run: Run) -> Monitor:
    """Create the run directory and its ``config.yaml``, open the log and say what is about to run."""
    cfg = run.cfg
    if run.info.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / "config.yaml").write_text(yaml.safe_dump(run.config, sort_keys=False))
    D.barrier()
    monitor = Monitor(run)
    if run.resumed_precision is not None:
        was, now = run.resumed_precision, run.precision
        monitor.info(f"resumed from {run.last_path} at iteration {run.iteration}/{run.total}"
                     + (f" (written in {was}, continuing in {now})" if was != now else ""))
    monitor.info(f"{cfg.preset}: {cfg.arch} ({cfg.stem} stem) widths [{cfg.width_range[0]:g}, {cfg.width_range[1]:g}], "
                 f"{cfg.dataset} {len(run.data)} images at {cfg.image_size}px, global batch {cfg.batch_size}, "
                 f"{run.total} iterations, {run.info.world_size} process(es) on {run.device}, {run.precision}")
    run.model.train()
    return monitor


def after_step(run: Run, monitor: Monitor, m: StepMetrics, should_stop: Callable[[], bool] | None) -> None:
    """The periodic actions: log, checkpoint every ``checkpoint_every`` iterations, and stop when asked
    (``should_stop`` agreed over processes: save, then raise :class:`Interrupted`)."""
    monitor.update(run, m)
    stop = should_stop is not None and D.any_process(should_stop(), run.device)
    done = run.iteration
    if done % run.cfg.checkpoint_every == 0 or done == run.total or stop:
        if run.info.is_main:
            save_state(run.last_path, iteration=done, model=run.model, optimizer=run.optimizer, scaler=run.scaler,
                       config=run.config, forwards=run.forwards, precision=run.precision)
        D.barrier()
    if stop and done < run.total:
        monitor.info(f"stop requested: state saved at iteration {done}/{run.total} in {run.last_path}")
        raise Interrupted(done)


def finish(run: Run, monitor: Monitor) -> None:
    """Export the student backbone as ``backbone.pth``: a us3l checkpoint with the run's provenance."""
    cfg, total = run.cfg, run.total
    monitor.info(f"student forwards: {run.forwards} over {total} iterations ({run.forwards / total:g} per iteration)")
    if not run.info.is_main:
        return
    backbone = build_model(cfg.arch, stem=cfg.stem, num_classes=0, width_range=cfg.width_range)
    backbone.load_state_dict(run.model.encoder.backbone.state_dict())
    us3l.save_checkpoint(run.backbone_path, backbone, method=cfg.preset, config=run.config, provenance={
        "iteration": total, "epoch": total / run.iters_per_epoch, "dataset": cfg.dataset,
        "data_root": str(cfg.data_root) if cfg.data_root else None, "image_size": cfg.image_size,
        "images_seen": total * cfg.batch_size, "student_forwards": run.forwards, "world_size": run.info.world_size,
        "device": device_info(run.device, run.info.world_size), "precision": run.precision,
        "torch": str(torch.__version__)})
    monitor.info(f"backbone checkpoint: {run.backbone_path}")
