"""Evaluation-only runs: re-evaluate a finished ``detection.train`` run from one of its checkpoints.

``python -m detection.train --task voc --eval-only --weights RUN_DIR/model_final.pth [--demo] [KEY VALUE ...]``
rebuilds the detector from the run's own ``config.yaml`` (so scaled heads, width and architecture are the
trained ones), loads every tensor of the checkpoint strictly, and evaluates with the run's evaluator.
``KEY VALUE`` overrides may change test-time options only (``TEST.*``, ``*_TEST`` keys such as
``INPUT.MIN_SIZE_TEST`` or ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``, ``MODEL.RPN.NMS_THRESH``, ``DATASETS.TEST``):
anything else would describe another model or another training, and is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

import detection.d2compat  # noqa: F401  (before any detectron2 import)

# isort: split
from detectron2.config import CfgNode, get_cfg

from detection.config import add_us3l_config, config_value, merge_overrides
from detection.convert import WeightsError
from detection.datasets import check_dataset, register_job_datasets
from us3l.checkpoint import file_sha256
from us3l.device import resolve_device
from us3l.errors import UsageError
from us3l.jobs import JobSpec

RUN_CONFIG = "config.yaml"
RUN_JOB = "job.json"
EVAL_DIR = "eval-only"  # evaluator outputs (COCO's inference files) go here, not over the training run's


def is_test_option(key: str) -> bool:
    """True for config keys that only change how a trained detector is evaluated."""
    return (key.startswith("TEST.") or key.endswith("_TEST") or key in ("DATASETS.TEST", "MODEL.RPN.NMS_THRESH"))


def check_test_options(opts: list[str]) -> list[str]:
    """The override keys of ``opts`` (KEY VALUE pairs); ``UsageError`` for any that is not a test-time option."""
    if len(opts) % 2:
        raise UsageError(f"overrides must be KEY VALUE pairs, got an odd number: {opts}")
    keys = list(opts[0::2])
    bad = [k for k in keys if not is_test_option(k)]
    if bad:
        raise UsageError(f"--eval-only takes test-time options only (TEST.*, *_TEST keys, MODEL.RPN.NMS_THRESH, "
                         f"DATASETS.TEST); {', '.join(bad)} would change the trained model or its training")
    return keys


def run_dir_of(weights: str | os.PathLike) -> Path:
    """The ``detection.train`` run directory holding ``weights``; ``WeightsError`` when it is not one."""
    weights = Path(weights)
    if not weights.is_file():
        raise WeightsError(f"--eval-only: {weights}: no such file; pass RUN_DIR/model_final.pth of a finished run")
    run_dir = weights.resolve().parent
    if not (run_dir / RUN_CONFIG).is_file():
        raise WeightsError(f"--eval-only: {run_dir} has no {RUN_CONFIG}: --weights must be a checkpoint "
                           "(model_final.pth, model_NNNNNNN.pth) inside a detection.train run directory")
    if not (run_dir / RUN_JOB).is_file():
        raise WeightsError(f"--eval-only: {run_dir} has no {RUN_JOB} (the run's spec): it was not written by this "
                           "version of detection.train")
    return run_dir


def eval_config(run_dir: Path, opts: list[str], device: str) -> tuple[CfgNode, dict[str, Any]]:
    """The run's config with test-time ``opts`` applied, on ``device``; returns it and {key: value} of ``opts``.

    The config file already holds the scaled head channels: nothing is derived from the width again.
    """
    keys = check_test_options(opts)
    cfg = add_us3l_config(get_cfg())
    cfg.merge_from_file(str(run_dir / RUN_CONFIG))
    merge_overrides(cfg, opts, "--eval-only override")
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    cfg.OUTPUT_DIR = str(run_dir / EVAL_DIR)
    cfg.freeze()
    node_values = {}
    for key in keys:
        node = config_value(cfg, key)
        node_values[key] = list(node) if isinstance(node, tuple) else node
    return cfg, node_values


def load_detector_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a ``detection.train`` checkpoint's ``model`` state into ``model``: every tensor, every shape."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise WeightsError(f"{path}: not a Detectron2 training checkpoint (no 'model' state)")
    target = model.module if hasattr(model, "module") else model
    try:
        target.load_state_dict({k: torch.as_tensor(v) for k, v in state["model"].items()}, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise WeightsError(f"{path} does not fit the run's detector: {detail}") from None


def eval_protocol(weights: str | os.PathLike, options: dict[str, Any]) -> dict[str, Any]:
    """What the record says about an evaluation-only run: which weights, and the test-time options given."""
    return {"weights": Path(weights).name, "weights_sha256": file_sha256(weights), "test_options": options}


# detection.train's flags that would describe another training, with the argparse attribute each sets.
TRAINING_FLAGS = {"checkpoint": "--checkpoint", "width": "--width", "random_init": "--random-init", "seed": "--seed",
                  "resume": "--resume", "run_dir": "--run-dir", "deterministic": "--deterministic",
                  "dataset": "--dataset", "test_dataset": "--test-dataset"}


def eval_spec(run_dir: Path, cfg: CfgNode, args: argparse.Namespace, options: dict[str, Any]) -> JobSpec:
    """The trained run's spec, evaluated on ``cfg``'s test set, its protocol extended by :func:`eval_protocol`:
    another identity than the training run's, so the re-evaluation is a record of its own."""
    held = json.loads((run_dir / RUN_JOB).read_text())["spec"]
    spec = JobSpec(**held)
    if spec.task != args.task:
        raise UsageError(f"--eval-only: {run_dir} is a {spec.task} run, not {args.task}: use --task {spec.task}")
    if spec.demo != args.demo:
        raise UsageError(f"--eval-only: {run_dir} is {'a' if spec.demo else 'not a'} demo run: "
                         f"{'add' if spec.demo else 'drop'} --demo")
    return dataclasses.replace(spec, dataset=cfg.DATASETS.TEST[0],
                               protocol={**spec.protocol, "eval_only": eval_protocol(args.weights, options)})


def prepare_eval(args: argparse.Namespace) -> tuple[CfgNode, JobSpec, str]:
    """Check an ``--eval-only`` command line (``detection.train``'s arguments) and the run it names; returns the
    evaluation config, its spec and the datasets directory. Bad input raises ``UsageError``."""
    if not args.weights:
        raise UsageError("--eval-only needs --weights RUN_DIR/model_final.pth (a finished detection.train run)")
    given = [flag for attr, flag in TRAINING_FLAGS.items() if getattr(args, attr)]
    if given:
        raise UsageError(f"--eval-only evaluates the run as it was trained: drop {', '.join(given)}")
    if args.num_gpus != 1:
        raise UsageError("--eval-only runs in one process: drop --num-gpus")
    run_dir = run_dir_of(args.weights)
    cfg, options = eval_config(run_dir, list(args.opts), resolve_device(args.device, allow_cpu=args.demo).type)
    spec = eval_spec(run_dir, cfg, args, options)
    datasets_dir = str(Path(args.output) / "datasets")
    register_job_datasets(spec, datasets_dir)
    for name in cfg.DATASETS.TEST:
        check_dataset(name)
    return cfg, spec, datasets_dir
