"""Tiny pretraining runs as subprocesses: a config on the shapes data, the command, and what a run leaves."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import yaml

from support import ROOT

TINY = {
    "preset": "us3l", "arch": "resnet18", "stem": "imagenet", "width_range": [0.25, 1.0], "dataset": "shapes",
    "image_size": 32, "batch_size": 8, "lr": 0.1, "proj_hidden": 32, "proj_dim": 16, "aux_hidden": 32,
    "num_workers": 0, "amp": False, "log_every": 1, "deterministic": True, "device": "cpu",
}


def run_env() -> dict[str, str]:
    """The environment of a pretraining subprocess: this repository importable, one thread."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def tiny_config(tmp_path: Path, name: str, **changes) -> Path:
    """A TINY config file ``tmp_path/name.yaml`` with ``changes``, its data under ``tmp_path/data``."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**TINY, "data_root": str(tmp_path / "data"), **changes}))
    return path


def pretrain_cmd(cfg: Path, out: Path, *extra: str) -> list[str]:
    """``python -m pretrain`` on ``cfg`` into ``out``."""
    return [sys.executable, "-m", "pretrain", "--config", str(cfg), f"output_dir={out}", *extra]


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a backbone checkpoint."""
    return torch.load(path, weights_only=True)["state_dict"]


def run_losses(run: Path) -> list[float]:
    """The losses a run logged, one per metrics line."""
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
