"""Exact weight transfer: slimmable checkpoint -> calibrated export at width W -> Detectron2 weight file.

``python -m detection.convert CKPT --width W [--calibration-batches N] --calibration-images DIR -o FILE.pkl``

The ``.pkl`` is a Detectron2 weight file (``{"model": {name: ndarray}, "__author__", ...}``) with the
backbone's tensors under Detectron2's ResNet names (``stem.conv1.weight``, ``res2.0.conv1.norm.running_mean``,
``res3.0.shortcut.weight`` ...) and a ``"us3l"`` entry recording arch, width, channels and source.
Detectron2's own loader silently skips tensors whose shape differs; :func:`load_backbone_weights`
instead fails on any missing, unexpected or mis-shaped backbone tensor and on a width mismatch.
"""

from __future__ import annotations

import argparse
import os
import pickle
import random
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T
from tqdm import tqdm

import us3l
from us3l.atomic import atomic_path
from us3l.channels import channel_plan
from us3l.checkpoint import state_mismatch
from us3l.data import MEAN_STD, DatasetMissingError
from us3l.errors import UsageError, run_cli

FORMAT = "us3l-d2-backbone"
VERSION = 1
AUTHOR = "us3l-bench detection.convert"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
PROG = "python -m detection.convert"


class WeightsError(UsageError):
    """A Detectron2 weight file is not ours, or does not fit the model/config it is loaded into."""


# ------------------------------------------------------------------ names


def d2_name(tv_name: str) -> str:
    """Detectron2 ResNet name of a torchvision ResNet parameter/buffer name."""
    parts = tv_name.split(".")
    if parts[0] == "conv1":
        return "stem.conv1." + ".".join(parts[1:])
    if parts[0] == "bn1":
        return "stem.conv1.norm." + ".".join(parts[1:])
    if parts[0].startswith("layer") and len(parts) >= 4:
        stage = f"res{int(parts[0][5:]) + 1}.{parts[1]}"
        kind, rest = parts[2], ".".join(parts[3:])
        if kind.startswith("conv"):
            return f"{stage}.{kind}.{rest}"
        if kind.startswith("bn"):
            return f"{stage}.conv{kind[2:]}.norm.{rest}"
        if kind == "downsample":
            sub, rest = parts[3], ".".join(parts[4:])
            return f"{stage}.shortcut.{rest}" if sub == "0" else f"{stage}.shortcut.norm.{rest}"
    raise ValueError(f"no Detectron2 name for torchvision tensor {tv_name!r}")


def to_d2_state(tv_state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A torchvision ResNet backbone state dict under Detectron2 names (``num_batches_tracked`` dropped)."""
    out = {}
    for k, v in tv_state.items():
        if k.endswith("num_batches_tracked"):
            continue
        if k.startswith("fc."):
            raise ValueError(f"backbone export has a classifier tensor {k!r}; export with num_classes=0")
        out[d2_name(k)] = v.detach().cpu().numpy()
    return out


# ------------------------------------------------------------------ calibration data


def pixel_stats(checkpoint_config: Any) -> tuple[list[float], list[float]]:
    """Detectron2 PIXEL_MEAN/PIXEL_STD (0-255 scale) of the data the checkpoint was pretrained on.

    The first ``dataset`` value found in the checkpoint's config that names a known pretraining set
    (``us3l.data.MEAN_STD``) decides; otherwise ImageNet's (torchvision) statistics.
    """
    def find(obj: Any) -> str | None:
        if isinstance(obj, dict):
            if isinstance(obj.get("dataset"), str) and obj["dataset"] in MEAN_STD:
                return obj["dataset"]
            for v in obj.values():
                hit = find(v)
                if hit:
                    return hit
        return None

    mean, std = MEAN_STD[find(checkpoint_config) or "imagenet"]
    return [round(255 * m, 4) for m in mean], [round(255 * s, 4) for s in std]


def image_files(root: str | os.PathLike) -> list[Path]:
    """All image files under ``root`` (sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetMissingError(f"calibration image folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetMissingError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return files


def calibration_batches(files: Sequence[str | os.PathLike], *, num_batches: int, batch_size: int, size: int,
                        pixel_mean: Sequence[float], pixel_std: Sequence[float],
                        seed: int = 0) -> Iterator[torch.Tensor]:
    """Batches of RGB images (short side resized to ``size``, centre crop), normalised like the detector."""
    order = list(files)
    random.Random(seed).shuffle(order)
    tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(),
                    T.Normalize([m / 255 for m in pixel_mean], [s / 255 for s in pixel_std])])
    for b in range(num_batches):
        chunk = [order[(b * batch_size + i) % len(order)] for i in range(batch_size)]
        batch = []
        for f in chunk:
            with Image.open(f) as im:
                batch.append(tf(im.convert("RGB")))
        yield torch.stack(batch)


# ------------------------------------------------------------------ conversion


def export_at_width(ck: us3l.BackboneCheckpoint, width: float, batches: Iterator[torch.Tensor] | None,
                    num_batches: int, device: str = "cpu") -> nn.Module:
    """Calibrated static export of the checkpoint at ``width`` (eval mode, on CPU).

    ``num_batches=0`` keeps the checkpoint's stored BatchNorm statistics (no calibration).
    """
    width = ck.check_width(width)
    model = ck.build_model().to(device)
    if num_batches > 0:
        if batches is None:
            raise ValueError("calibration needs images (num_batches > 0 but no batches given)")
        us3l.calibrate_bn(model, width, tqdm(batches, total=num_batches, desc=f"calibrate BN @ {width:g}"),
                          num_batches, device=device)
    model.eval()
    net = us3l.export_subnet(model, width).cpu().eval()
    del model  # the full-width slimmable model on ``device``: free it before the detector is built
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return net


def convert(ck: us3l.BackboneCheckpoint, width: float, out: str | os.PathLike, *,
            batches: Iterator[torch.Tensor] | None = None, num_batches: int = 0, calibration: dict | None = None,
            device: str = "cpu") -> Path:
    """Write the Detectron2 weight file of ``ck`` at ``width`` to ``out`` atomically; returns its path."""
    width = ck.check_width(width)
    net = export_at_width(ck, width, batches, num_batches, device=device)
    mean, std = pixel_stats(ck.config)
    payload = {
        "model": to_d2_state(net.state_dict()),
        "__author__": AUTHOR,
        "matching_heuristics": True,  # names are unprefixed, as in Detectron2's model-zoo backbones
        "us3l": {
            "format": FORMAT, "version": VERSION, "arch": ck.arch, "stem": ck.stem, "width": width,
            "channels": channel_plan(ck.arch, width).layers, "method": ck.method,
            "source_checkpoint": str(ck.path), "source_sha256": ck.sha256,
            "calibration": {"num_batches": num_batches, **(calibration or {})},
            "pixel_mean": mean, "pixel_std": std,
        },
    }
    out = Path(out)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
    return out


# ------------------------------------------------------------------ loading


def read_weights(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a weight file written by :func:`convert`; :class:`WeightsError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file; expected a .pkl written by `python -m detection.convert`")
    try:
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same explanation
        raise WeightsError(f"{path}: not a readable pickle ({type(e).__name__}); expected a .pkl written by "
                           "`python -m detection.convert`") from None
    meta = data.get("us3l") if isinstance(data, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(data.get("model"), dict):
        raise WeightsError(f"{path}: not a us3l backbone weight file (no {FORMAT!r} entry); convert a "
                           "checkpoint with `python -m detection.convert CKPT --width W -o FILE.pkl`")
    if meta.get("version", 0) > VERSION:
        raise WeightsError(f"{path}: weight file version {meta.get('version')} is newer than this us3l-bench reads")
    return data


def check_weights_fit(data: dict[str, Any], arch: str, width: float, path: str | os.PathLike = "") -> None:
    """The file must have been converted for ``arch`` at ``width``."""
    meta = data["us3l"]
    if meta["arch"] != arch:
        raise WeightsError(f"{path}: converted from a {meta['arch']}, but the config builds a {arch}")
    if abs(float(meta["width"]) - float(width)) > 1e-9:
        raise WeightsError(f"{path}: converted at width {float(meta['width']):g}, but the config's width is "
                           f"{float(width):g}; convert again with --width {float(width):g} or use --width "
                           f"{float(meta['width']):g}")


def check_norm_loadable(norm: str) -> None:
    """Converted weights carry BatchNorm statistics: a GroupNorm backbone cannot take them (``WeightsError``)."""
    if norm == "GN":
        raise WeightsError("MODEL.RESNETS.NORM 'GN': a GroupNorm backbone cannot load the converted BatchNorm "
                           "weights (running statistics calibrated at the width; GroupNorm has none); use 'BN', "
                           "'SyncBN' or 'FrozenBN', or train the GroupNorm backbone with --random-init")


def find_bottom_up(model: nn.Module) -> tuple[str, nn.Module]:
    """(name, module) of the Detectron2 ResNet inside ``model`` (``backbone.bottom_up`` for FPN)."""
    from detectron2.modeling.backbone import ResNet

    import detection.d2compat  # noqa: F401

    model = model.module if hasattr(model, "module") else model
    for name, m in model.named_modules():
        if isinstance(m, ResNet):
            return name, m
    raise WeightsError("the model has no Detectron2 ResNet backbone to load into")


def load_backbone_weights(model: nn.Module, data: dict[str, Any], path: str | os.PathLike = "") -> str:
    """Load the file's tensors into the model's ResNet strictly; returns the backbone's module name.

    Every backbone tensor (``num_batches_tracked`` aside) must be in the file with its exact shape,
    and the file must hold nothing else: otherwise :class:`WeightsError` lists what differs.
    """
    name, resnet = find_bottom_up(model)
    if any(isinstance(m, nn.GroupNorm) for m in resnet.modules()):
        check_norm_loadable("GN")
    target = {k: v for k, v in resnet.state_dict().items() if not k.endswith("num_batches_tracked")}
    source = data["model"]
    problems = state_mismatch({k: tuple(v.shape) for k, v in target.items()},
                              {k: tuple(np.shape(v)) for k, v in source.items()})
    if problems:
        raise WeightsError(f"{path}: backbone tensors do not match the model's {name}: " + "; ".join(problems))
    state = {k: torch.as_tensor(np.asarray(v)) for k, v in source.items()}
    result = resnet.load_state_dict(state, strict=False)
    leftover = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if leftover or result.unexpected_keys:
        raise WeightsError(f"{path}: loading left {leftover} missing and {result.unexpected_keys} unexpected")
    return name


# ------------------------------------------------------------------ CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m detection.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="slimmable backbone checkpoint (backbone.pth)")
    p.add_argument("--width", type=float, required=True, help="width to export at (within the checkpoint's range)")
    p.add_argument("-o", "--output", required=True, help="Detectron2 weight file to write (.pkl)")
    p.add_argument("--calibration-batches", type=int, default=50,
                   help="BatchNorm calibration batches at the width (0: keep the stored statistics)")
    p.add_argument("--calibration-images", help="folder of images to calibrate on (searched recursively)")
    p.add_argument("--batch-size", type=int, default=16, help="calibration batch size")
    p.add_argument("--size", type=int, default=224, help="calibration image size (short side resize, centre crop)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def convert_command(args: argparse.Namespace) -> None:
    """The conversion a command line asks for (``UsageError`` for bad input, before anything is written)."""
    if not args.output.endswith(".pkl"):
        raise UsageError("--output must end in .pkl (a Detectron2 weight file)")
    if args.calibration_batches < 0 or args.batch_size < 1:
        raise UsageError("--calibration-batches must be >= 0 and --batch-size >= 1")
    if args.calibration_batches > 0 and not args.calibration_images:
        raise UsageError("calibration needs --calibration-images DIR (or --calibration-batches 0 to keep the "
                         "checkpoint's stored BatchNorm statistics)")
    ck = us3l.load_checkpoint(args.checkpoint)
    ck.check_width(args.width)
    batches, calibration = None, {}
    if args.calibration_batches > 0:
        mean, std = pixel_stats(ck.config)
        files = image_files(args.calibration_images)
        batches = calibration_batches(files, num_batches=args.calibration_batches, batch_size=args.batch_size,
                                      size=args.size, pixel_mean=mean, pixel_std=std)
        calibration = {"images": str(args.calibration_images), "batch_size": args.batch_size, "size": args.size}
    out = convert(ck, args.width, args.output, batches=batches, num_batches=args.calibration_batches,
                  calibration=calibration, device=args.device)
    print(f"wrote {out} ({ck.arch} at width {args.width:g})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(PROG, lambda: convert_command(args))


if __name__ == "__main__":
    sys.exit(main())
