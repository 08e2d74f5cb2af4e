"""The pretraining loop: data, model, optimizer, resume, logging, checkpoints."""

from __future__ import annotations

import contextlib
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

import us3l
from us3l.data import DatasetMissingError, TwoViews, build_pretrain_dataset, is_image_folder, simclr_augmentation
from us3l.device import DeviceError, device_info, resolve_device
from us3l.device import precision_name as device_precision
from us3l.group_reg import GroupRegularizer, regularized_parameters
from us3l.models import build_model
from us3l.ssl import SSLModel

from . import distributed as D
from .config import ConfigError, PretrainConfig
from .metrics import RunLogger
from .state import load_state, restore_scaler, save_state, set_rng_state


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite (exit status 1; the last good checkpoint is kept)."""


def exit_status(run: Callable[[], object]) -> int:
    """Run a program's work: 0 when it finishes; a bad configuration prints one line and gives 2, a
    diverged run (the last good checkpoint kept) one line and 1."""
    try:
        run()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


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
    try:  # the CPU is a silent fallback only for the built-in demo data
        device = resolve_device(cfg.device, allow_cpu=cfg.dataset == "shapes", cpu_flag="device=cpu")
    except DeviceError as e:
        raise ConfigError(str(e)) from e
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
    ssl_cfg = cfg.objective()
    run_dir = Path(cfg.output_dir) / config_name
    last_path, backbone_path = run_dir / "last.pth", run_dir / "backbone.pth"
    config_dict = cfg.to_dict()
    # Everything that can fail on bad input is checked before anything is written.
    if cfg.batch_size % info.world_size:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by {info.world_size} processes")
    try:
        base = build_pretrain_dataset(cfg.dataset, cfg.data_root, cfg.image_size, cfg.seed)
    except DatasetMissingError as e:
        raise ConfigError(str(e)) from e
    iters_per_epoch = len(base) // cfg.batch_size
    if iters_per_epoch == 0:
        raise ConfigError(f"dataset {cfg.dataset!r} has {len(base)} images, fewer than batch_size {cfg.batch_size}")
    total = cfg.iterations or cfg.epochs * iters_per_epoch
    state = load_state(last_path, config_dict) if last_path.exists() else None

    torch.manual_seed(cfg.seed)
    dtype = torch.float64 if cfg.precision == "float64" else torch.float32
    model = SSLModel(ssl_cfg, cfg.arch, cfg.stem, cfg.width_range).to(device, dtype)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    if cfg.sync_bn and info.world_size > 1:
        D.convert_sync_bn(model)
    reg = None
    if ssl_cfg.regularizer == "group":
        reg = GroupRegularizer(model.encoder.backbone, cfg.weight_decay, ssl_cfg.group_alpha, ssl_cfg.groups,
                               ramp_iters=int(cfg.group_ramp * total), schedule=ssl_cfg.group_schedule)
    optimizer = torch.optim.SGD(_param_groups(model, cfg, reg is not None), lr=cfg.lr, momentum=cfg.momentum)
    amp_dtype, precision = autocast_dtype(cfg, device), precision_name(cfg, device)
    # float16 needs loss scaling; bfloat16 has float32's range and does not.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    start, forwards = 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_scaler(scaler, state["scaler"])
        set_rng_state(state["rng"])
        start, forwards = int(state["iteration"]), int(state["forwards"])
    if start >= total and backbone_path.exists():
        if info.is_main:
            print(f"{run_dir}: already complete ({total} iterations); backbone checkpoint {backbone_path}")
        return backbone_path

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config_dict, sort_keys=False))
    D.barrier()
    log = RunLogger(run_dir, info.is_main, start)
    sampler = ssl_cfg.make_sampler(total, cfg.width_range, cfg.seed)
    views = TwoViews(base, simclr_augmentation(cfg.image_size, _augmentation_name(cfg.dataset)), seed=cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()

    def batches() -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        it = start
        while it < total:
            epoch, first = divmod(it, iters_per_epoch)
            views.epoch = epoch
            loader = DataLoader(views, batch_sampler=GlobalBatches(len(base), cfg.batch_size, info, cfg.seed, epoch,
                                                                   first),
                                num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
            for x1, x2 in loader:
                yield it, *(x.to(device, dtype, non_blocking=True, memory_format=memory_format) for x in (x1, x2))
                it += 1
                if it >= total:
                    return

    if start:
        was = state.get("precision", "unrecorded")
        log.info(f"resumed from {last_path} at iteration {start}/{total}"
                 + (f" (written in {was}, continuing in {precision})" if was != precision else ""))
    log.info(f"{cfg.preset}: {cfg.arch} ({cfg.stem} stem) widths [{cfg.width_range[0]:g}, {cfg.width_range[1]:g}], "
             f"{cfg.dataset} {len(base)} images at {cfg.image_size}px, global batch {cfg.batch_size}, "
             f"{total} iterations, {info.world_size} process(es) on {device}, {precision}")
    model.train()
    bar = tqdm(total=total, initial=start, disable=not info.is_main, dynamic_ncols=True, desc="pretrain")
    stage, window_start, window_iters, skipped = None, time.perf_counter(), 0, 0
    for it, x1, x2 in batches():
        if sampler.stage(it) != stage:
            stage = sampler.stage(it)
            log.info(f"iteration {it}: stage {stage}, min width {sampler.min_width_at(it):g}")
        widths = sampler.widths(it)
        lr = lr_at(cfg, it, total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        out = model.train_step(x1, x2, widths, backward=lambda loss: scaler.scale(loss).backward(),
                               gather=D.gather, autocast=autocast)
        forwards += len(widths)
        if not math.isfinite(out.loss):
            bar.close()
            kept = f"last good checkpoint {last_path}" if last_path.exists() else "no checkpoint was written"
            raise TrainingDiverged(f"loss became {out.loss} at iteration {it} (per width {out.losses}); "
                                   f"training stopped, {kept}; lower lr or check the data")
        alpha = reg.alpha_at(it) if reg is not None else 0.0
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        skipped += apply_gradients(optimizer, scaler, params, reg, alpha)
        window_iters += 1
        done = it + 1
        if done % cfg.log_every == 0 or done == total:
            elapsed = time.perf_counter() - window_start
            ips = window_iters * cfg.batch_size / max(elapsed, 1e-9)
            roles = {"max": out.proj_std[0]}
            if len(out.proj_std) > 1:
                roles["min"] = out.proj_std[-1]
            log.record({"iteration": done, "epoch": it // iters_per_epoch, "loss": out.loss,
                        "loss_per_width": out.losses, "widths": out.widths, "min_width": min(widths),
                        "proj_std": out.proj_std, "proj_std_by_role": roles, "lr": lr, "group_alpha": alpha,
                        "images_per_s": ips, "student_forwards": forwards, "precision": precision,
                        "loss_scale": scale, "skipped_steps": skipped, "peak_memory_mb": peak_memory_mb(device)})
            bar.set_postfix(loss=f"{out.loss:.3f}", min_w=f"{min(widths):.2f}", img_s=f"{ips:.0f}")
            window_start, window_iters = time.perf_counter(), 0
        bar.update(1)
        stop = should_stop is not None and D.broadcast_flag(should_stop(), device)
        if done % cfg.checkpoint_every == 0 or done == total or stop:
            if info.is_main:
                save_state(last_path, iteration=done, model=model, optimizer=optimizer, scaler=scaler,
                           config=config_dict, forwards=forwards, precision=precision)
            D.barrier()
        if stop and done < total:
            bar.close()
            log.info(f"stop requested: state saved at iteration {done}/{total} in {last_path}")
            log.close()
            raise Interrupted(done)
    bar.close()
    log.info(f"student forwards: {forwards} over {total} iterations ({forwards / total:g} per iteration)")
    if info.is_main:
        backbone = build_model(cfg.arch, stem=cfg.stem, num_classes=0, width_range=cfg.width_range)
        backbone.load_state_dict(model.encoder.backbone.state_dict())
        us3l.save_checkpoint(backbone_path, backbone, method=cfg.preset, config=config_dict, provenance={
            "iteration": total, "epoch": total / iters_per_epoch, "dataset": cfg.dataset,
            "data_root": str(cfg.data_root) if cfg.data_root else None, "image_size": cfg.image_size,
            "images_seen": total * cfg.batch_size, "student_forwards": forwards, "world_size": info.world_size,
            "device": device_info(device, info.world_size), "precision": precision, "torch": str(torch.__version__)})
        log.info(f"backbone checkpoint: {backbone_path}")
    log.close()
    D.barrier()
    return backbone_path
