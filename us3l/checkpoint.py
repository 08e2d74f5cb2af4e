"""The slimmable backbone checkpoint: one validated ``torch.save`` file (see DESIGN.md)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path
from .channels import ARCHS, DIVISOR, check_width, check_width_range
from .errors import UsageError
from .models import STEMS, USResNet

FORMAT = "us3l-backbone"
VERSION = 1
MAKE_ONE = "a us3l backbone checkpoint written by `make pretrain` (or us3l.save_checkpoint)"


class CheckpointError(UsageError):
    """A file is not a valid us3l backbone checkpoint."""


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through a temporary file in the same directory and a rename."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save_checkpoint(path: str | os.PathLike, model: USResNet, *, method: str, config: dict[str, Any],
                    provenance: dict[str, Any]) -> Path:
    """Write ``model``'s full-width backbone weights (no classifier) as a backbone checkpoint."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": model.arch,
        "stem": model.stem,
        "width_range": [float(w) for w in model.width_range],
        "divisor": DIVISOR,
        "state_dict": state,
        "method": method,
        "config": config,
        "provenance": provenance,
    }
    return atomic_torch_save(payload, path)


@dataclass
class BackboneCheckpoint:
    """A validated backbone checkpoint."""

    path: Path
    sha256: str
    arch: str
    stem: str
    width_range: tuple[float, float]
    divisor: int
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    method: str
    config: dict[str, Any] = field(repr=False)
    provenance: dict[str, Any]

    def check_width(self, width: float) -> float:
        """``width`` as a float, or ``WidthError`` naming the range this checkpoint was trained for."""
        return check_width(width, *self.width_range, of=f" this checkpoint ({self.path}) was trained for")

    def build_model(self) -> USResNet:
        """The slimmable backbone (no classifier) at full width with these weights."""
        model = USResNet(self.arch, stem=self.stem, num_classes=0, width_range=self.width_range)
        model.load_state_dict(self.state_dict, strict=True)
        return model


def state_mismatch(expected: dict[str, tuple], found: dict[str, tuple | str]) -> list[str]:
    """What differs between two {name: shape} maps: missing, unexpected and mis-shaped names."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if found[k] != expected[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} mis-shaped (e.g. {k}: {found[k]}, expected {expected[k]})")
    return problems


def _describe(obj: Any) -> str:
    """What a loaded object that is not our checkpoint looks like."""
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return f"a plain state dict of {len(obj)} tensors (e.g. torchvision weights)"
    if isinstance(obj, dict) and "format" in obj:
        return f"a file of format {obj['format']!r}"
    if isinstance(obj, dict):
        keys = ", ".join(sorted(map(str, obj))[:6])
        return f"a dict with keys [{keys}] (a training-state file? use the run's backbone.pth)"
    return f"a {type(obj).__name__}"


def _check_state(path: Path, arch: str, stem: str, state: Any) -> None:
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'state_dict' is a {type(state).__name__}, expected a dict of tensors")
    reference = USResNet(arch, stem=stem, num_classes=0).state_dict()
    problems = state_mismatch({k: tuple(v.shape) for k, v in reference.items()},
                              {k: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                               for k, v in state.items()})
    if problems:
        raise CheckpointError(f"{path}: weights do not match a full-width {arch} ({stem} stem): "
                              + "; ".join(problems))


def load_checkpoint(path: str | os.PathLike, arch: str | None = None) -> BackboneCheckpoint:
    """Load and validate a backbone checkpoint (format, version, arch, stem, width range, shapes).

    ``arch``, if given, is the architecture the caller expects. Any file that is not a valid
    checkpoint raises :class:`CheckpointError` saying what it is and what was expected.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; expected {MAKE_ONE}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same explanation
        raise CheckpointError(f"{path}: not a readable torch file, possibly truncated or corrupt "
                              f"({type(e).__name__}); expected {MAKE_ONE}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: is {_describe(obj)}, not {MAKE_ONE}")
    version = obj.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version!r} is not supported (this us3l-bench reads "
                              f"versions up to {VERSION}); update us3l-bench")
    for key in ("arch", "stem", "width_range", "divisor", "state_dict", "method", "config", "provenance"):
        if key not in obj:
            raise CheckpointError(f"{path}: checkpoint lacks the field {key!r}; it is incomplete")
    if obj["arch"] not in ARCHS:
        raise CheckpointError(f"{path}: unknown arch {obj['arch']!r}; expected one of {sorted(ARCHS)}")
    if arch is not None and obj["arch"] != arch:
        raise CheckpointError(f"{path}: checkpoint holds a {obj['arch']}, expected a {arch}")
    if obj["stem"] not in STEMS:
        raise CheckpointError(f"{path}: unknown stem {obj['stem']!r}; expected one of {STEMS}")
    rng = obj["width_range"]
    try:
        lo, hi = rng if isinstance(rng, (list, tuple)) else ()
        width_range = check_width_range(lo, hi)
    except (TypeError, ValueError):  # not two numbers, or WidthError
        raise CheckpointError(f"{path}: width range {rng!r} is invalid; expected [min, max] with 0 < min <= max "
                              "<= 1") from None
    if obj["divisor"] != DIVISOR:
        raise CheckpointError(f"{path}: channel divisor {obj['divisor']!r} differs from this library's {DIVISOR}")
    _check_state(path, obj["arch"], obj["stem"], obj["state_dict"])
    return BackboneCheckpoint(
        path=path,
        sha256=file_sha256(path),
        arch=obj["arch"],
        stem=obj["stem"],
        width_range=width_range,
        divisor=obj["divisor"],
        state_dict=obj["state_dict"],
        method=str(obj["method"]),
        config=obj["config"],
        provenance=obj["provenance"],
    )
