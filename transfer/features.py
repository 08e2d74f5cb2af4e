"""Frozen-backbone features, extracted once and cached on disk under a key of everything they depend on.

The key holds the checkpoint's SHA-256, the width, the dataset, its split, a fingerprint of its
files (:func:`fingerprint`), the transform and the BatchNorm calibration settings. The file name carries the
key's digest and the file stores the key itself, so a stale entry (any of those changed) is never read back. An entry
also names the job that wrote it (its spec id); jobs that differ only in the classifier's protocol share it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from us3l.checkpoint import atomic_torch_save
from us3l.jobs import dataset_slug

CACHE_VERSION = 1


@dataclass
class Features:
    """Features and labels of one split."""

    x: torch.Tensor  # [N, D] float32
    y: torch.Tensor  # [N] int64


def cache_key(**fields: Any) -> dict[str, Any]:
    """The key of a cache entry: the given fields and the cache format version."""
    return {"cache_version": CACHE_VERSION, **fields}


def cache_path(cache_dir: str | os.PathLike, key: dict[str, Any]) -> Path:
    """Where the entry of ``key`` lives: ``<dataset>-<split>-w<width>-<digest>.pt``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return Path(cache_dir) / f"{dataset_slug(key['dataset'])}-{key['split']}-w{float(key['width']):.4f}-{digest}.pt"


def load_cached(cache_dir: str | os.PathLike, key: dict[str, Any]) -> Features | None:
    """The cached features of ``key``, or None when absent, unreadable or stored under another key."""
    path = cache_path(cache_dir, key)
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a corrupt entry is recomputed
        return None
    if not isinstance(obj, dict) or obj.get("key") != json.loads(json.dumps(key)):
        return None
    return Features(obj["x"], obj["y"])


def save_cached(cache_dir: str | os.PathLike, key: dict[str, Any], feats: Features, written_by: str) -> Path:
    """Store ``feats`` under ``key`` atomically (temporary file + rename); ``written_by``: the job's spec id."""
    path = cache_path(cache_dir, key)
    atomic_torch_save({"key": key, "x": feats.x, "y": feats.y, "written_by": written_by}, path)
    return path


@torch.no_grad()
def extract(backbone: nn.Module, dataset: Dataset, *, batch_size: int, workers: int,
            device: torch.device, desc: str = "features") -> Features:
    """Pooled fp32 features of every item of ``dataset`` (in order) through ``backbone`` in eval mode."""
    backbone.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    xs, ys = [], []
    for images, labels in tqdm(loader, desc=desc, leave=False, unit="batch"):
        xs.append(backbone(images.to(device, non_blocking=True)).float().flatten(1).cpu())
        ys.append(torch.as_tensor(labels, dtype=torch.int64))
    return Features(torch.cat(xs), torch.cat(ys))


def fingerprint(folders: list[Path]) -> str:
    """A digest of the files under ``folders`` (path, size, mtime): changes when the data changes."""
    digest = hashlib.sha256()
    for base in folders:
        for p in sorted(base.rglob("*")):
            if p.is_file():
                st = p.stat()
                digest.update(f"{p.relative_to(base.parent)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()
