"""Fine-tune and evaluate a detector on a slimmable backbone at one width; one results record per run.

``python -m detection.train --task voc|coco (--checkpoint CKPT --width W | --weights FILE.pkl)
[--random-init] [--seed N] [--device auto|cuda|cpu] [--num-gpus N] [--deterministic] [--resume] [--demo]
[--dataset coco:NAME=ANNOTATIONS.json,IMAGES_DIR --test-dataset coco:NAME=...] [--results DIR] [--output DIR]
[--run-dir DIR] [KEY VALUE ...]``
``python -m detection.train --task voc|coco --eval-only --weights RUN_DIR/model_final.pth [--demo] [KEY VALUE ...]``

VOC: Faster R-CNN R50-FPN evaluated by Detectron2's ``PascalVOCDetectionEvaluator`` (AP, AP50, AP75).
COCO: Mask R-CNN R50-FPN evaluated by ``COCOEvaluator`` with pycocotools (box and mask AP, AP50, AP75,
APs, APm, APl). The architecture comes from the checkpoint. The command line becomes a job spec
(:mod:`us3l.jobs`: the schedule, the overrides, the seed and a digest of the whole resolved config); the
run directory ``OUTPUT/<task>[-demo]/w<width>-<spec id>`` carries its identity, so ``--resume`` (and a
requeued job) continues from ``last_checkpoint``, and a directory holding another spec's run is refused.
``--random-init`` trains the same schedule from random initialisation (the checkpoint only fixes
arch and input normalisation). Every input problem is reported before training starts (exit status 2),
including a real (non-demo) run that finds no CUDA device: it runs on CPU only with ``--device cpu``.
``SOLVER.AMP.ENABLED`` trains in float16 autocast on CUDA and bfloat16 autocast on CPU; ``SEED`` is
applied in every process; a resume must keep the run's precision. A NaN or infinite loss or metric ends
the run with exit status 1 and a failed record. The record carries the whole detector's parameters and
MACs at the test size beside the backbone's. ``--dataset``/``--test-dataset`` train and evaluate ``--task coco``
on your own COCO-format sets (classes from the annotation file; boxes only, Faster R-CNN, when it has no
segmentation). ``--eval-only`` re-evaluates a finished run's checkpoint with
test-time overrides only, into a record of its own (:mod:`detection.evaluate`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import detection.d2compat  # noqa: F401  (before any detectron2 import)

# isort: split
import detectron2.utils.comm as comm
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
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
from detection.cost import detector_params_macs
from detection.datasets import check_dataset, image_files_of, register_job_datasets
from detection.evaluate import load_detector_weights, prepare_eval
from detection.hooks import bound_checkpoints
from us3l.atomic import atomic_path
from us3l.data import COCO_SET_FORM, CocoSet
from us3l.device import DEVICE_CHOICES, device_info, resolve_device
from us3l.errors import Diverged, UsageError, run_cli
from us3l.jobs import (
    JobSpec,
    canonical,
    checked_width,
    command_line,
    make_record,
    provenance,
    spec_diff,
    split_metrics,
    write_json_atomic,
    write_record,
)

logger = logging.getLogger("us3l.detection")
PROG = "python -m detection.train"


@dataclass(frozen=True)
class DetectionRun:
    """Where and how a detection job runs: nothing here changes its result (that is the spec's)."""

    results: str
    output: str
    run_dir: str | None = None  # None: OUTPUT/<task>[-demo]/w<width>-<spec id>
    device: str = "auto"
    num_gpus: int = 1
    resume: bool = False
    weights: str | None = None  # --weights: a converted .pkl instead of converting --checkpoint
    argv: tuple[str, ...] = ()  # the equivalent command line's arguments (for the log and the record)


@dataclass
class Job:
    """Everything a (possibly spawned) training worker needs."""

    spec: JobSpec
    run_dir: str
    results_dir: str
    datasets_dir: str
    weights: str | None  # converted .pkl, None for random init
    resume: bool
    command: str

    def to_json(self) -> dict[str, Any]:
        """What ``job.json`` in the run directory holds: the spec (canonical), its id, the run's settings."""
        return {**asdict(self), "spec": self.spec.to_dict(), "spec_id": self.spec.id}


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


def run_dir_for(output: str, spec: JobSpec) -> Path:
    """The run directory of ``spec``: ``OUTPUT/<task>[-demo]/w<width>-<spec id>``."""
    return Path(output) / f"{spec.task}{'-demo' if spec.demo else ''}" / f"w{spec.width:.4f}-{spec.id}"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=("voc", "coco"))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="slimmable backbone checkpoint (converted at --width before training)")
    src.add_argument("--weights", help="Detectron2 weight file from `python -m detection.convert`; with --eval-only, "
                                       "a checkpoint in a finished run's directory (RUN_DIR/model_final.pth)")
    p.add_argument("--width", type=float, help="backbone width (required with --checkpoint)")
    p.add_argument("--random-init", action="store_true",
                   help="with --checkpoint: same arch and schedule, random initialisation (baseline)")
    p.add_argument("--seed", type=int, help="SEED of the run (default: the config's, 0)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="auto: CUDA, or CPU only for --demo runs; cpu: run a real benchmark on CPU anyway")
    p.add_argument("--num-gpus", type=int, default=1, help="CUDA processes on this machine (1 with --device cpu)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (torch.use_deterministic_algorithms, warning where CUDA has none)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last_checkpoint")
    p.add_argument("--demo", action="store_true", help="procedural demo sets and a CPU-scale schedule")
    p.add_argument("--dataset", metavar=COCO_SET_FORM, help="--task coco: train on your own COCO-format set")
    p.add_argument("--test-dataset", metavar=COCO_SET_FORM, help="the COCO-format set to evaluate on (with --dataset)")
    p.add_argument("--eval-only", action="store_true",
                   help="re-evaluate the run of --weights RUN_DIR/model_*.pth (test-time overrides only), one process")
    p.add_argument("--results", default="output/results", help="results directory (one JSON record per run)")
    p.add_argument("--output", default="output/detection", help="root of the run directories")
    p.add_argument("--run-dir", help="run directory (default: OUTPUT/<task>[-demo]/w<width>-<spec id>); one that "
                                     "holds another spec's run is refused")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="Detectron2 config overrides: KEY VALUE ...")
    return p.parse_args(argv)


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


def describe_coco_sets(task: str, train: str | None, test: str | None) -> dict[str, dict[str, Any]]:
    """``--dataset``/``--test-dataset`` checked and read once: ``{"train": ..., "test": ...}`` (empty without)."""
    if train is None and test is None:
        return {}
    if train is None or test is None:
        raise UsageError(f"--dataset and --test-dataset go together: give both, each {COCO_SET_FORM}")
    if task != "coco":
        raise UsageError("a COCO-format set trains with --task coco (Mask R-CNN, or Faster R-CNN when its "
                         "annotations have no segmentation)")
    sets = {"train": CocoSet.parse(train), "test": CocoSet.parse(test)}
    if sets["train"].name == sets["test"].name:
        raise UsageError(f"--dataset and --test-dataset are both named {sets['train'].name!r}: name them apart")
    out = {split: {"name": s.name, **s.describe()} for split, s in sets.items()}
    if out["train"]["categories"] != out["test"]["categories"]:
        raise UsageError(f"{sets['train'].name!r} and {sets['test'].name!r} have different categories: "
                         f"{out['train']['categories']} vs {out['test']['categories']}")
    return out


def apply_coco_sets(cfg: CfgNode, coco_sets: dict[str, dict[str, Any]], overrides: Sequence[str]) -> None:
    """Point ``cfg`` at the COCO-format sets: datasets, number of classes, masks only if annotated."""
    explicit = set(overrides[0::2])
    if explicit & {"DATASETS.TRAIN", "DATASETS.TEST"}:
        raise UsageError("give your datasets with --dataset/--test-dataset, not DATASETS.TRAIN/TEST overrides")
    train, test = coco_sets["train"], coco_sets["test"]
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train["name"],), (test["name"],)
    classes = len(train["categories"])
    if "MODEL.ROI_HEADS.NUM_CLASSES" in explicit and cfg.MODEL.ROI_HEADS.NUM_CLASSES != classes:
        raise UsageError(f"MODEL.ROI_HEADS.NUM_CLASSES {cfg.MODEL.ROI_HEADS.NUM_CLASSES}, but {train['name']!r} "
                         f"has {classes} categories: drop the override")
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = classes
    if cfg.MODEL.MASK_ON and not train["segmentation"]:
        if "MODEL.MASK_ON" in explicit:
            raise UsageError(f"MODEL.MASK_ON True, but {train['json']} has no segmentation to train masks on")
        cfg.MODEL.MASK_ON = False


def resolve_config(task: str, arch: str, width: float, pixel: tuple[list[float], list[float]], *, demo: bool,
                   overrides: Sequence[str], seed: int | None, device: str,
                   coco_sets: dict[str, dict[str, Any]] | None = None) -> CfgNode:
    """The run's config: the task's, the overrides, your COCO-format sets (:func:`describe_coco_sets`), then
    ``seed`` (``--seed``) as ``SEED`` when given."""
    cfg = build_config(task, arch=arch, width=width, demo=demo, opts=list(overrides), device=device, pixel=pixel)
    if coco_sets:
        apply_coco_sets(cfg, coco_sets, overrides)
    if seed is not None:
        cfg.SEED = seed
    if cfg.SEED < 0:
        raise UsageError(f"SEED {cfg.SEED} would draw another seed at every launch, so a relaunch could not find "
                         f"its run: give one with --seed N")
    return cfg


def schedule(cfg: CfgNode, *, deterministic: bool, weights_sha256: str | None,
             coco_sets: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The spec's protocol: the schedule's values (for people), your COCO-format sets (files, their sha256,
    categories) and a digest of the whole resolved config less device and output directory (for identity: any
    change of a config file, annotation file or override makes another run)."""
    resolved = cfg.clone()
    resolved.defrost()
    resolved.MODEL.DEVICE, resolved.OUTPUT_DIR = "", ""
    s, i, us3l_cfg = cfg.SOLVER, cfg.INPUT, cfg.MODEL.US3L
    return {"train": list(cfg.DATASETS.TRAIN), "max_iter": s.MAX_ITER, "ims_per_batch": s.IMS_PER_BATCH,
            "base_lr": s.BASE_LR, "steps": list(s.STEPS), "warmup_iters": s.WARMUP_ITERS,
            "weight_decay": s.WEIGHT_DECAY, "momentum": s.MOMENTUM, "reference_world_size": s.REFERENCE_WORLD_SIZE,
            "amp": s.AMP.ENABLED, "min_size_train": list(i.MIN_SIZE_TRAIN), "max_size_train": i.MAX_SIZE_TRAIN,
            "min_size_test": i.MIN_SIZE_TEST, "max_size_test": i.MAX_SIZE_TEST, "mask_on": cfg.MODEL.MASK_ON,
            "fpn_channels": cfg.MODEL.FPN.OUT_CHANNELS, "scale_heads": us3l_cfg.SCALE_HEADS,
            "calibration_batches": us3l_cfg.CALIBRATION_BATCHES,
            "calibration_batch_size": us3l_cfg.CALIBRATION_BATCH_SIZE, "deterministic": deterministic,
            "weights_sha256": weights_sha256,
            "config_sha256": hashlib.sha256(resolved.dump().encode()).hexdigest()[:16],
            **({"coco_sets": coco_sets} if coco_sets else {})}


@dataclass(frozen=True)
class Backbone:
    """What a run's backbone fixes: architecture, width, input normalisation, and where it comes from."""

    arch: str
    width: float
    pixel: tuple[list[float], list[float]]
    ck: us3l.BackboneCheckpoint | None = None  # --checkpoint
    weights_meta: dict[str, Any] | None = None  # --weights: the converted file's us3l metadata
    weights_sha256: str | None = None


def backbone_of(args: argparse.Namespace, ck: us3l.BackboneCheckpoint | None) -> Backbone:
    """The backbone of ``--checkpoint`` (``ck`` if already loaded) at ``--width``, or of ``--weights``."""
    if args.checkpoint:
        if args.width is None:
            raise UsageError("--checkpoint needs --width W")
        ck = ck if ck is not None else us3l.load_checkpoint(args.checkpoint)
        width = checked_width(ck, args.width)
        if ck.stem != "imagenet":
            raise UsageError(f"{ck.path}: detection needs an ImageNet-stem backbone, this one has the {ck.stem} stem")
        return Backbone(ck.arch, width, pixel_stats(ck.config), ck=ck)
    if args.random_init:
        raise UsageError("--random-init goes with --checkpoint (which fixes arch and normalisation)")
    data = read_weights(args.weights)
    meta = data["us3l"]
    width = float(meta["width"]) if args.width is None else float(args.width)
    check_weights_fit(data, meta["arch"], width, args.weights)
    return Backbone(meta["arch"], width, (meta["pixel_mean"], meta["pixel_std"]), weights_meta=meta,
                    weights_sha256=us3l.file_sha256(args.weights))


def make_job(argv: Sequence[str], ck: us3l.BackboneCheckpoint | None = None) -> tuple[JobSpec, DetectionRun]:
    """The spec and run settings of a command line (``ck``: the loaded ``--checkpoint``, to skip reading it).

    Checks what the result depends on (checkpoint or weights, width, config and overrides, seed); what
    depends on the machine (device, datasets) is checked by :func:`prepare`. Argument errors exit with
    status 2 (argparse); bad input raises a ``UsageError``.
    """
    args = parse_args(argv)
    if args.num_gpus < 1:
        raise UsageError("--num-gpus must be >= 1")
    if args.seed is not None and "SEED" in args.opts[0::2]:
        raise UsageError("the seed is given twice, by --seed and by a SEED override: give it once")
    bb = backbone_of(args, ck)
    coco_sets = describe_coco_sets(args.task, args.dataset, args.test_dataset)
    cfg = resolve_config(args.task, bb.arch, bb.width, bb.pixel, demo=args.demo, overrides=args.opts,
                         seed=args.seed, device="cpu", coco_sets=coco_sets)  # the device is the machine's
    if not args.random_init:
        check_norm_loadable(cfg.MODEL.RESNETS.NORM)
    fields = {"task": args.task, "dataset": cfg.DATASETS.TEST[0], "width": bb.width, "seed": cfg.SEED,
              "demo": args.demo, "overrides": args.opts,
              "protocol": schedule(cfg, deterministic=args.deterministic, weights_sha256=bb.weights_sha256,
                                   coco_sets=coco_sets)}
    if bb.ck is not None:
        spec = JobSpec.for_checkpoint(bb.ck, random_init=args.random_init, **fields)
    else:
        meta = bb.weights_meta
        spec = JobSpec(checkpoint=meta["source_checkpoint"], checkpoint_sha256=meta["source_sha256"],
                       method=meta["method"], arch=bb.arch, **fields)
    run = DetectionRun(results=args.results, output=args.output, run_dir=args.run_dir, device=args.device,
                       num_gpus=args.num_gpus, resume=args.resume,
                       weights=str(Path(args.weights).resolve()) if args.weights else None, argv=tuple(argv))
    return spec, run


def check_run_dir(run_dir: Path, spec: JobSpec) -> None:
    """Refuse a run directory that holds another spec's run (``UsageError``, one line naming what differs)."""
    path = run_dir / "job.json"
    if not path.is_file():
        return
    held = json.loads(path.read_text())
    if held.get("spec_id") != spec.id:
        differ = ", ".join(spec_diff(held.get("spec") or {}, spec.to_dict())) or "their identity"
        raise UsageError(f"{run_dir} holds run {held.get('spec_id')}, not this job's {spec.id} (they differ in "
                         f"{differ}): give another --run-dir, or none for this job's own directory")


def check_machine(run: DetectionRun, demo: bool) -> str:
    """The device type this job runs on here (``UsageError`` when it cannot: no CUDA, too few GPUs)."""
    device = resolve_device(run.device, allow_cpu=demo).type
    if device == "cpu" and run.num_gpus > 1:
        raise UsageError(f"--num-gpus {run.num_gpus} needs CUDA (Detectron2 launches several processes with "
                         f"NCCL only); on CPU use --num-gpus 1")
    if run.num_gpus > 1 and torch.cuda.device_count() < run.num_gpus:
        raise UsageError(f"--num-gpus {run.num_gpus} but {torch.cuda.device_count()} CUDA devices are visible")
    return device


def config_here(spec: JobSpec, run: DetectionRun, device: str) -> tuple[CfgNode, us3l.BackboneCheckpoint | None]:
    """The job's config on this machine, and its checkpoint (None with ``--weights``); ``UsageError`` unless the
    spec still resolves to itself here (same config files, overrides, weights)."""
    ck = None
    if run.weights:
        meta = read_weights(run.weights)["us3l"]
        arch, pixel = meta["arch"], (meta["pixel_mean"], meta["pixel_std"])
    else:
        ck = us3l.load_checkpoint(spec.checkpoint)
        spec.check_checkpoint(ck.sha256)
        arch, pixel = ck.arch, pixel_stats(ck.config)
    coco_sets = spec.protocol.get("coco_sets", {})
    cfg = resolve_config(spec.task, arch, spec.width, pixel, demo=spec.demo, overrides=spec.overrides,
                         seed=spec.seed, device=device, coco_sets=coco_sets)
    weights_sha256 = us3l.file_sha256(run.weights) if run.weights else None
    here = schedule(cfg, deterministic=spec.protocol["deterministic"], weights_sha256=weights_sha256,
                    coco_sets=coco_sets)
    if canonical(here) != canonical(spec.protocol):
        differ = ", ".join(spec_diff(canonical(here), canonical(spec.protocol)))
        raise UsageError(f"the job resolves to another config here than when it was specified ({differ} differ: "
                         f"changed config files, weights or Detectron2?): specify it again")
    return cfg, ck


def check_datasets(cfg: CfgNode, spec: JobSpec, datasets_dir: str) -> None:
    """Register the job's datasets and check each is on disk (``DatasetMissingError`` naming what is missing)."""
    register_job_datasets(spec, datasets_dir)
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        check_dataset(name)


def backbone_weights(spec: JobSpec, run: DetectionRun, ck: us3l.BackboneCheckpoint | None, cfg: CfgNode,
                     run_dir: Path) -> str | None:
    """The Detectron2 weight file the job starts from: ``--weights``, the run directory's conversion of the
    checkpoint at the width (made now, calibrated, unless one from the same checkpoint is there), or None for
    random initialisation."""
    if run.weights:
        return run.weights
    if spec.random_init:
        return None
    weights = run_dir / "backbone.pkl"
    if weights.exists():
        try:
            existing = read_weights(weights)
            check_weights_fit(existing, ck.arch, spec.width, weights)
            if existing["us3l"]["source_sha256"] == ck.sha256:
                return str(weights)
        except WeightsError:
            pass  # not a usable conversion: convert again
    convert_for_training(ck, spec.width, cfg, str(weights), cfg.MODEL.DEVICE)
    return str(weights)


def prepare(spec: JobSpec, run: DetectionRun) -> tuple[CfgNode, Job]:
    """Check the machine, the spec's config here, the run directory and the datasets; convert the backbone.
    Nothing trains here, and nothing is written before every check has passed."""
    cfg, ck = config_here(spec, run, check_machine(run, spec.demo))
    run_dir = Path(run.run_dir) if run.run_dir else run_dir_for(run.output, spec)
    check_run_dir(run_dir, spec)
    cfg.OUTPUT_DIR = str(run_dir)
    if run.resume:
        check_resume_precision(run_dir, precision(cfg))
    datasets_dir = str(Path(run.output) / "datasets")
    check_datasets(cfg, spec, datasets_dir)
    weights = backbone_weights(spec, run, ck, cfg, run_dir)
    cfg.freeze()
    run_dir.mkdir(parents=True, exist_ok=True)
    job = Job(spec=spec, run_dir=str(run_dir), results_dir=run.results, datasets_dir=datasets_dir, weights=weights,
              resume=run.resume, command=command_line("detection.train", run.argv))
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


def detection_cost(model: torch.nn.Module, cfg: CfgNode, spec: JobSpec) -> dict[str, int]:
    """Parameters and MACs of the backbone alone and of the whole detector, on one square image of the test size
    (the detector's with its proposal and detection counts pinned, see :mod:`detection.cost`)."""
    size = cfg.INPUT.MIN_SIZE_TEST
    params, macs = us3l.count_params_macs(spec.arch, spec.width, input_size=size, num_classes=0)
    model = getattr(model, "module", model)  # unwrapped from DistributedDataParallel
    detector_params, detector_macs = detector_params_macs(model, size, size)
    return {"backbone_params": params, "backbone_macs": macs, "input_size": size,
            "detector_params": detector_params, "detector_macs": detector_macs}


def write_result(job: Job, cfg: CfgNode, cost: dict[str, int], start: float, metrics: dict[str, float],
                 undefined: list[str], error: str | None = None) -> Path:
    """The run's record: into the results directory and, as ``metrics_final.json``, the run directory."""
    world = comm.get_world_size()
    prov = provenance(job.spec, command=job.command, device=device_info(cfg.MODEL.DEVICE, world),
                      precision=precision(cfg), world_size=world, run_dir=job.run_dir, weights=job.weights)
    record = make_record(job.spec, metrics=metrics, undefined_metrics=undefined, error=error, cost=cost,
                         provenance=prov, wall_time_s=time.time() - start)
    write_json_atomic(Path(job.run_dir) / "metrics_final.json", record)
    return write_record(job.results_dir, record)


REQUIRED_METRICS = {"voc": ("AP", "AP50", "AP75"), "coco": ("box_AP", "box_AP50", "box_AP75")}


def train_and_evaluate(trainer: Trainer, job: Job) -> tuple[dict[str, float], list[str]]:
    """Load the backbone strictly, resume, train, evaluate: (metrics, undefined metrics) on the main process."""
    if job.weights:
        where = load_backbone_weights(trainer.model, read_weights(job.weights), job.weights)
        logger.info("loaded %s into %s: no missing, unexpected or mis-shaped backbone tensors", job.weights, where)
    trainer.resume_or_load(resume=job.resume)
    logger.info("training from iteration %d to %d", trainer.start_iter, trainer.max_iter)
    trainer.train()
    results = getattr(trainer, "_last_eval_results", None)
    if not comm.is_main_process():
        return {}, []
    if not results:
        raise RuntimeError("evaluation produced no results")
    return split_metrics(flatten_metrics(job.spec.task, results), REQUIRED_METRICS[job.spec.task])


def worker(cfg: CfgNode, job: Job) -> None:
    """One training process: seed, build, train, evaluate, record. A failure leaves a failed record; a NaN or
    infinite loss (Detectron2's ``FloatingPointError``) or metric raises ``Diverged``."""
    setup_logger(output=job.run_dir, distributed_rank=comm.get_rank(), name="detectron2")
    setup_logger(output=job.run_dir, distributed_rank=comm.get_rank(), name="us3l")
    register_job_datasets(job.spec, job.datasets_dir)
    seed_all_rng(cfg.SEED + comm.get_rank())  # as Detectron2's default_setup does
    deterministic = job.spec.protocol["deterministic"]
    if deterministic:
        make_deterministic()
    logger.info("run %s: seed %d (+ rank), precision %s, deterministic %s", job.spec.id, cfg.SEED, precision(cfg),
                deterministic)
    start = time.time()
    trainer = Trainer(cfg)
    cfg = trainer.cfg  # scaled to this world size by REFERENCE_WORLD_SIZE (batch, LR, iterations)
    cost = detection_cost(trainer.model, cfg, job.spec) if comm.is_main_process() else {}
    try:
        metrics, undefined = train_and_evaluate(trainer, job)
    except Exception as e:
        if comm.is_main_process():
            write_result(job, cfg, cost, start, {}, [], error=f"{type(e).__name__}: {e}")
        if isinstance(e, FloatingPointError):
            raise Diverged(str(e).splitlines()[0]) from None
        raise
    if comm.is_main_process():
        path = write_result(job, cfg, cost, start, metrics, undefined)
        logger.info("results %s -> %s", metrics, path)


def train_job(spec: JobSpec, run: DetectionRun) -> None:
    """Check, then train and evaluate a detection job: ``UsageError`` before anything is written, ``Diverged``
    (a failed record written) when a loss or metric is not finite."""
    if spec.protocol["deterministic"]:
        make_deterministic()  # before the conversion's CUDA work; spawned workers call it again
    cfg, job = prepare(spec, run)
    with atomic_path(Path(job.run_dir) / "config.yaml") as tmp:
        Path(tmp).write_text(cfg.dump())
    write_json_atomic(Path(job.run_dir) / "job.json", job.to_json())
    try:
        launch(worker, run.num_gpus, dist_url="auto", args=(cfg, job))
    except Diverged as e:
        raise Diverged(f"diverged: {e}; failed record in {job.results_dir}") from None


def run_job(spec: JobSpec, run: DetectionRun) -> int:
    """Run a detection job (what a sweep submits); its exit status: 0, 1 when it failed (with a failed record),
    2 for bad input (one line, nothing written)."""
    return run_cli(PROG, lambda: train_job(spec, run))


def eval_worker(cfg: CfgNode, job: Job) -> None:
    """``--eval-only``: build the run's detector, load ``job.weights`` strictly, evaluate, record."""
    setup_logger(output=job.run_dir, distributed_rank=comm.get_rank(), name="detectron2")
    register_job_datasets(job.spec, job.datasets_dir)
    start = time.time()
    model = Trainer.build_model(cfg)
    load_detector_weights(model, job.weights)
    results = Trainer.test(cfg, model)
    if comm.is_main_process():
        metrics, undefined = split_metrics(flatten_metrics(job.spec.task, results), REQUIRED_METRICS[job.spec.task])
        path = write_result(job, cfg, detection_cost(model, cfg, job.spec), start, metrics, undefined)
        logger.info("eval-only %s: %s -> %s", job.weights, metrics, path)


def evaluate_only(argv: Sequence[str]) -> None:
    """``--eval-only``: re-evaluate a finished run into a record of its own (``UsageError`` before anything runs)."""
    args = parse_args(argv)
    cfg, spec, datasets_dir = prepare_eval(args)
    job = Job(spec=spec, run_dir=cfg.OUTPUT_DIR, results_dir=args.results, datasets_dir=datasets_dir,
              weights=str(Path(args.weights).resolve()), resume=False, command=command_line("detection.train", argv))
    Path(job.run_dir).mkdir(parents=True, exist_ok=True)
    launch(eval_worker, 1, dist_url="auto", args=(cfg, job))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def body() -> None:
        if parse_args(argv).eval_only:
            evaluate_only(argv)
        else:
            train_job(*make_job(argv))

    return run_cli(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
