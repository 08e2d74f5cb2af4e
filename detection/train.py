"""Fine-tune and evaluate a detector on a slimmable backbone at one width; one results record per run.

``python -m detection.train --task voc|coco (--checkpoint CKPT --width W | --weights FILE.pkl)
[--random-init] [--device auto|cuda|cpu] [--num-gpus N] [--deterministic] [--resume] [--demo]
[--results DIR] [--output DIR] [KEY VALUE ...]``

VOC: Faster R-CNN R50-FPN evaluated by Detectron2's ``PascalVOCDetectionEvaluator`` (AP, AP50, AP75).
COCO: Mask R-CNN R50-FPN evaluated by ``COCOEvaluator`` with pycocotools (box and mask AP, AP50, AP75,
APs, APm, APl). The architecture comes from the checkpoint. The run directory is deterministic from
(task, demo, source, width), so ``--resume`` (and a requeued job) continues from ``last_checkpoint``.
``--random-init`` trains the same schedule from random initialisation (the checkpoint only fixes
arch and input normalisation). Every input problem is reported before training starts (exit status 2),
including a real (non-demo) run that finds no CUDA device: it runs on CPU only with ``--device cpu``.
``SOLVER.AMP.ENABLED`` trains in float16 autocast on CUDA and bfloat16 autocast on CPU; ``SEED`` is
applied in every process; a resume must keep the run's precision. The record carries device, precision
and seed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import detection.d2compat  # noqa: F401  (before any detectron2 import)

# isort: split
import detectron2.utils.comm as comm
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultTrainer, SimpleTrainer, hooks, launch
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from detectron2.utils.logger import setup_logger

import detection.backbone  # noqa: F401  (registers the us3l backbones)
import us3l
from detection.config import build_config, precision
from detection.convert import (
    WeightsError,
    calibration_batches,
    check_norm_loadable,
    check_weights_fit,
    convert,
    load_backbone_weights,
    pixel_stats,
    read_weights,
)
from detection.datasets import check_dataset, image_files_of, register_shapes
from detection.hooks import bound_checkpoints
from transfer.results import make_record, write_json_atomic, write_record
from us3l.atomic import atomic_path
from us3l.device import DEVICE_CHOICES, device_info, resolve_device

logger = logging.getLogger("us3l.detection")


@dataclass
class Job:
    """Everything a (possibly spawned) training worker needs."""

    task: str
    demo: bool
    width: float
    arch: str
    run_dir: str
    results_dir: str
    datasets_dir: str
    weights: str | None  # converted .pkl, None for random init
    resume: bool
    deterministic: bool = False
    source: dict[str, Any] = field(default_factory=dict)  # checkpoint, checkpoint_sha256, method


class CPUAutocastTrainer(SimpleTrainer):
    """The CPU twin of Detectron2's CUDA-only ``AMPTrainer``: the forward pass in bfloat16 autocast.

    bfloat16 has float32's exponent range, so no gradient scaling is needed. The state records the
    precision, so that a resume in another precision is refused (see :func:`checkpoint_precision`).
    """

    def run_step(self) -> None:
        assert self.model.training, "[CPUAutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_dict = self.model(data)
            losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "precision": "amp-bfloat16"}


class Trainer(DefaultTrainer):
    """Detectron2's trainer with the VOC or pycocotools-based COCO evaluator, bfloat16 AMP on CPU, metrics
    written every ``SOLVER.LOG_PERIOD`` iterations, and the step's state (optimizer, grad scaler, precision)
    in its checkpoints, as Detectron2 after 0.6 does (0.6 saves only the iteration and the hooks)."""

    def __init__(self, cfg: CfgNode) -> None:
        cpu_amp = cfg.SOLVER.AMP.ENABLED and cfg.MODEL.DEVICE == "cpu"
        with warnings.catch_warnings():
            if cpu_amp:  # the CUDA GradScaler of the AMPTrainer replaced below says it disables itself
                warnings.filterwarnings("ignore", message=".*GradScaler")
            super().__init__(cfg)
        if cpu_amp:
            t = self._trainer  # an AMPTrainer, whose step asserts CUDA; nothing has been read from its loader
            self._trainer = CPUAutocastTrainer(t.model, t.data_loader, t.optimizer)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "_trainer": self._trainer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:  # absent from checkpoints of Detectron2 0.6's own DefaultTrainer
            self._trainer.load_state_dict(state_dict["_trainer"])

    def build_writers(self) -> list:
        period = self.cfg.SOLVER.LOG_PERIOD
        return [CommonMetricPrinter(self.max_iter, window_size=period),
                JSONWriter(str(Path(self.cfg.OUTPUT_DIR) / "metrics.json"), window_size=period),
                TensorboardXWriter(self.cfg.OUTPUT_DIR, window_size=period)]

    def build_hooks(self) -> list:
        out = super().build_hooks()
        for h in out:
            if isinstance(h, hooks.PeriodicWriter):
                h._period = self.cfg.SOLVER.LOG_PERIOD  # DefaultTrainer hard-codes 20
        return bound_checkpoints(out, self.cfg.SOLVER.CHECKPOINTS_TO_KEEP)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None):
        if MetadataCatalog.get(dataset_name).evaluator_type == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        out = output_folder or str(Path(cfg.OUTPUT_DIR) / "inference")
        return COCOEvaluator(dataset_name, tasks=tasks, distributed=True, output_dir=out, use_fast_impl=False)


def flatten_metrics(task: str, results: dict[str, dict[str, float]]) -> dict[str, float]:
    """VOC: AP, AP50, AP75. COCO: box_* and mask_* for AP, AP50, AP75, APs, APm, APl (per-class APs dropped)."""
    if task == "voc":
        return {k: float(results["bbox"][k]) for k in ("AP", "AP50", "AP75")}
    out = {}
    for kind, prefix in (("bbox", "box"), ("segm", "mask")):
        for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            if kind in results:
                out[f"{prefix}_{k}"] = float(results[kind][k])
    return out


def run_dir_for(output: str, task: str, demo: bool, tag: str, width: float) -> Path:
    """Deterministic run directory of (task, demo, source tag, width)."""
    return Path(output) / f"{task}{'-demo' if demo else ''}" / tag / f"w{width:.4f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m detection.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=("voc", "coco"))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="slimmable backbone checkpoint (converted at --width before training)")
    src.add_argument("--weights", help="Detectron2 weight file from `python -m detection.convert`")
    p.add_argument("--width", type=float, help="backbone width (required with --checkpoint)")
    p.add_argument("--random-init", action="store_true",
                   help="with --checkpoint: same arch and schedule, random initialisation (baseline)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="auto: CUDA, or CPU only for --demo runs; cpu: run a real benchmark on CPU anyway")
    p.add_argument("--num-gpus", type=int, default=1, help="CUDA processes on this machine (1 with --device cpu)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (torch.use_deterministic_algorithms, warning where CUDA has none)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last_checkpoint")
    p.add_argument("--demo", action="store_true", help="procedural demo sets and a CPU-scale schedule")
    p.add_argument("--results", default="output/results", help="results directory (one JSON record per run)")
    p.add_argument("--output", default="output/detection", help="root of the run directories")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="Detectron2 config overrides: KEY VALUE ...")
    return p.parse_args(argv)


class UsageError(ValueError):
    """Bad command-line input."""


def checkpoint_precision(path: Path) -> str | None:
    """The precision a Detectron2 training checkpoint was written in: our CPU trainer records it, Detectron2's
    ``AMPTrainer`` leaves a ``grad_scaler`` (float16 autocast), ``SimpleTrainer`` neither (float32). None
    when the checkpoint holds no step state (Detectron2 0.6's own trainer), which then cannot clash."""
    trainer = torch.load(path, map_location="cpu", mmap=True).get("trainer", {})
    if "_trainer" not in trainer:
        return None
    state = trainer["_trainer"]
    if "precision" in state:
        return str(state["precision"])
    return "amp-float16" if "grad_scaler" in state else "float32"


def check_resume_precision(run_dir: Path, wanted: str) -> None:
    """Refuse to resume ``run_dir`` in another precision than it was trained in (``UsageError``)."""
    marker = run_dir / "last_checkpoint"
    if not marker.is_file():
        return
    last = run_dir / marker.read_text().strip()
    if not last.is_file():
        return  # Detectron2 then starts from the weights, as it does for a fresh run
    was = checkpoint_precision(last)
    if was is not None and was != wanted:
        amp = "True" if was.startswith("amp") else "False"
        raise UsageError(f"--resume: {last} was trained in {was}, this run would continue in {wanted}; resume "
                         f"on the same device type with SOLVER.AMP.ENABLED {amp}, or drop --resume to start over")


def prepare(args: argparse.Namespace) -> tuple[CfgNode, Job]:
    """Validate every input, build the config and convert the backbone; nothing trains here."""
    device = resolve_device(args.device, allow_cpu=args.demo).type
    if args.num_gpus < 1:
        raise UsageError("--num-gpus must be >= 1")
    if device == "cpu" and args.num_gpus > 1:
        raise UsageError(f"--num-gpus {args.num_gpus} needs CUDA (Detectron2 launches several processes with "
                         f"NCCL only); on CPU use --num-gpus 1")
    if args.num_gpus > 1 and torch.cuda.device_count() < args.num_gpus:
        raise UsageError(f"--num-gpus {args.num_gpus} but {torch.cuda.device_count()} CUDA devices are visible")
    data = None
    if args.checkpoint:
        if args.width is None:
            raise UsageError("--checkpoint needs --width W")
        ck = us3l.load_checkpoint(args.checkpoint)
        width = ck.check_width(args.width)
        if ck.stem != "imagenet":
            raise UsageError(f"{ck.path}: detection needs an ImageNet-stem backbone, this one has the {ck.stem} stem")
        arch, pixel = ck.arch, pixel_stats(ck.config)
        if args.random_init:
            source = {"checkpoint": "", "checkpoint_sha256": f"scratch{arch.removeprefix('resnet')}",
                      "method": "random-init"}
            tag = f"scratch-{arch}"
        else:
            source = {"checkpoint": str(ck.path), "checkpoint_sha256": ck.sha256, "method": ck.method}
            tag = ck.sha256[:12]
    else:
        if args.random_init:
            raise UsageError("--random-init goes with --checkpoint (which fixes arch and normalisation)")
        data = read_weights(args.weights)
        meta = data["us3l"]
        width = float(meta["width"]) if args.width is None else float(args.width)
        check_weights_fit(data, meta["arch"], width, args.weights)
        arch, pixel = meta["arch"], (meta["pixel_mean"], meta["pixel_std"])
        source = {"checkpoint": meta["source_checkpoint"], "checkpoint_sha256": meta["source_sha256"],
                  "method": meta["method"]}
        tag = "weights-" + us3l.file_sha256(args.weights)[:12]

    cfg = build_config(args.task, arch=arch, width=width, demo=args.demo, opts=args.opts, device=device,
                       pixel=pixel)
    if not args.random_init:
        check_norm_loadable(cfg.MODEL.RESNETS.NORM)
    if cfg.SEED < 0:
        cfg.SEED = int.from_bytes(os.urandom(4), "big") % 2**31  # drawn once, applied in every process, recorded
    run_dir = run_dir_for(args.output, args.task, args.demo, tag, width)
    cfg.OUTPUT_DIR = str(run_dir)
    if args.resume:
        check_resume_precision(run_dir, precision(cfg))
    datasets_dir = str(Path(args.output) / "datasets")
    if args.demo:
        register_shapes(datasets_dir)
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        check_dataset(name)
        if name not in DatasetCatalog.list():
            raise UsageError(f"dataset {name!r} is not registered with Detectron2")
    weights = None
    if args.weights:
        weights = str(Path(args.weights).resolve())
    elif not args.random_init:
        weights = str(run_dir / "backbone.pkl")
        existing = None
        if Path(weights).exists():
            try:
                existing = read_weights(weights)
                check_weights_fit(existing, arch, width, weights)
                if existing["us3l"]["source_sha256"] != ck.sha256:
                    existing = None
            except WeightsError:
                existing = None
        if existing is None:
            convert_for_training(ck, width, cfg, weights, device)
    cfg.freeze()
    run_dir.mkdir(parents=True, exist_ok=True)
    job = Job(task=args.task, demo=args.demo, width=width, arch=arch, run_dir=str(run_dir),
              results_dir=args.results, datasets_dir=datasets_dir, weights=weights, resume=args.resume,
              deterministic=args.deterministic, source=source)
    return cfg, job


def convert_for_training(ck: us3l.BackboneCheckpoint, width: float, cfg: CfgNode, out: str, device: str) -> None:
    """Calibrated conversion at ``width`` on the first training set's images."""
    files = image_files_of(cfg.DATASETS.TRAIN[0])
    n, bs = cfg.MODEL.US3L.CALIBRATION_BATCHES, cfg.MODEL.US3L.CALIBRATION_BATCH_SIZE
    size = cfg.INPUT.MIN_SIZE_TEST
    batches = calibration_batches(files, num_batches=n, batch_size=bs, size=size,
                                  pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD)
    convert(ck, width, out, batches=batches, num_batches=n, device=device,
            calibration={"dataset": cfg.DATASETS.TRAIN[0], "batch_size": bs, "size": size})


def make_deterministic() -> None:
    """Deterministic kernels where PyTorch has them (in this process); a warning, not an error, for the CUDA
    ops without one (e.g. torchvision's ROIAlign backward), which would otherwise stop every run at once."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def worker(cfg: CfgNode, job: Job) -> None:
    """One training process: seed, build, load the backbone strictly, resume, train, evaluate, record."""
    setup_logger(output=job.run_dir, distributed_rank=comm.get_rank(), name="detectron2")
    setup_logger(output=job.run_dir, distributed_rank=comm.get_rank(), name="us3l")
    if job.demo:
        register_shapes(job.datasets_dir)
    seed_all_rng(cfg.SEED + comm.get_rank())  # as Detectron2's default_setup does
    if job.deterministic:
        make_deterministic()
    logger.info("seed %d (+ rank), precision %s, deterministic %s", cfg.SEED, precision(cfg), job.deterministic)
    start = time.time()
    trainer = Trainer(cfg)
    cfg = trainer.cfg  # scaled to this world size by REFERENCE_WORLD_SIZE (batch, LR, iterations)
    if job.weights:
        where = load_backbone_weights(trainer.model, read_weights(job.weights), job.weights)
        logger.info("loaded %s into %s: no missing, unexpected or mis-shaped backbone tensors", job.weights, where)
    trainer.resume_or_load(resume=job.resume)
    logger.info("training from iteration %d to %d", trainer.start_iter, trainer.max_iter)
    trainer.train()
    results = getattr(trainer, "_last_eval_results", None)
    if not comm.is_main_process():
        return
    if not results:
        raise RuntimeError("evaluation produced no results")
    metrics = flatten_metrics(job.task, results)
    params, macs = us3l.count_params_macs(job.arch, job.width, input_size=224, num_classes=0)
    record = make_record(
        job.task, cfg.DATASETS.TEST[0], job.width, metrics, demo=job.demo, params=params, macs=macs,
        arch=job.arch, wall_time_s=time.time() - start, seed=cfg.SEED, precision=precision(cfg),
        device=device_info(cfg.MODEL.DEVICE, comm.get_world_size()),
        config={"run_dir": job.run_dir, "weights": job.weights, "max_iter": cfg.SOLVER.MAX_ITER,
                "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH, "base_lr": cfg.SOLVER.BASE_LR,
                "world_size": comm.get_world_size(), "train": list(cfg.DATASETS.TRAIN),
                "mask_on": cfg.MODEL.MASK_ON, "fpn_channels": cfg.MODEL.FPN.OUT_CHANNELS,
                "deterministic": job.deterministic},
        **job.source,
    )
    write_json_atomic(Path(job.run_dir) / "metrics_final.json", record)
    path = write_record(job.results_dir, record)
    logger.info("results %s -> %s", metrics, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.deterministic:
        make_deterministic()  # before the conversion's CUDA work; spawned workers call it again
    try:
        cfg, job = prepare(args)
    except (ValueError, FileNotFoundError) as e:  # CheckpointError, WeightsError, DatasetMissingError, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    with atomic_path(Path(job.run_dir) / "config.yaml") as tmp:
        Path(tmp).write_text(cfg.dump())
    write_json_atomic(Path(job.run_dir) / "job.json", asdict(job))
    launch(worker, args.num_gpus, dist_url="auto", args=(cfg, job))
    return 0


if __name__ == "__main__":
    sys.exit(main())
