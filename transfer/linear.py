"""Linear evaluation of a slimmable backbone at one width.

The backbone is exported at the width with BatchNorm calibrated on the target's training set and kept
frozen; its features are extracted once and cached (see :mod:`transfer.features`), then a linear
classifier is trained on them with the paper's protocol (SGD momentum 0.9, no weight decay, lr 30,
100 epochs, lr /10 at 60% and 80% of the epochs, batch 256). ``--augment`` instead trains on random
crops and flips passed through the backbone every epoch. Top-1 (and top-5) on the test split go into
a results record, with the device, precision (float32 throughout) and seed.

Like every program here it runs on CUDA, or on CPU only for ``--demo`` or when asked with ``--device cpu``:
a real evaluation passes the whole dataset through a ResNet at 224 px (every epoch with ``--augment``),
hours on CPU, so a silent fallback would cost as much as it does for detection.

Usage: python -m transfer.linear --dataset cifar100 --checkpoint CKPT --width 0.5 --results DIR [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import us3l
from us3l.device import DeviceError, device_info, resolve_device

from . import datasets as D
from .features import Features, cache_key, extract, load_cached, save_cached
from .results import make_record, write_record

Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass(frozen=True)
class Protocol:
    """The linear classifier's training protocol (defaults: the paper's)."""

    epochs: int = 100
    lr: float = 30.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: tuple[float, ...] = (0.6, 0.8)  # fractions of the epochs where lr is divided by 10
    batch_size: int = 256
    seed: int = 0

    def milestone_epochs(self) -> list[int]:
        return [round(f * self.epochs) for f in self.milestones]


def fit_linear(batches: Batches, dim: int, classes: int, protocol: Protocol, device: torch.device,
               desc: str = "linear") -> nn.Linear:
    """Train ``nn.Linear(dim, classes)`` on ``batches(epoch)`` (feature, label) pairs with ``protocol``."""
    gen = torch.Generator().manual_seed(protocol.seed)
    clf = nn.Linear(dim, classes)
    with torch.no_grad():
        clf.weight.normal_(0.0, 0.01, generator=gen)
        clf.bias.zero_()
    clf.to(device)
    opt = torch.optim.SGD(clf.parameters(), lr=protocol.lr, momentum=protocol.momentum,
                          weight_decay=protocol.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, protocol.milestone_epochs(), gamma=0.1)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in tqdm(range(protocol.epochs), desc=desc, unit="epoch", leave=False):
        for x, y in batches(epoch):
            loss = loss_fn(clf(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return clf


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def cached_batches(feats: Features, protocol: Protocol, device: torch.device) -> Batches:
    """Shuffled minibatches of cached features (the same order as :func:`backbone_batches`)."""
    x, y = feats.x.to(device), feats.y.to(device)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(len(y), generator=_epoch_generator(protocol.seed, epoch)).to(device)
        for i in range(0, len(y), protocol.batch_size):
            idx = perm[i:i + protocol.batch_size]
            yield x[idx], y[idx]

    return batches


def backbone_batches(backbone: nn.Module, dataset: Dataset, protocol: Protocol, device: torch.device,
                     workers: int) -> Batches:
    """Shuffled minibatches passed through the frozen ``backbone`` every epoch (same order as cached)."""
    backbone.eval()

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(dataset), generator=_epoch_generator(protocol.seed, epoch)).tolist()
        loader = DataLoader(dataset, batch_size=protocol.batch_size, sampler=order, num_workers=workers,
                            pin_memory=device.type == "cuda")
        for images, labels in loader:
            with torch.no_grad():
                x = backbone(images.to(device, non_blocking=True)).float().flatten(1)
            yield x, torch.as_tensor(labels, dtype=torch.int64).to(device)

    return batches


@torch.no_grad()
def accuracy(clf: nn.Module, feats: Features, device: torch.device, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracies in percent (k larger than the number of classes is left out)."""
    logits = torch.cat([clf(x.to(device)).cpu() for x in feats.x.split(4096)])
    ks = tuple(k for k in ks if k <= logits.shape[1])
    top = logits.topk(max(ks), dim=1).indices
    hit = top == feats.y[:, None]
    return {f"top{k}": 100.0 * hit[:, :k].any(1).float().mean().item() for k in ks}


@dataclass
class LinearConfig:
    """One linear evaluation job."""

    dataset: str
    checkpoint: str
    width: float
    results: str
    demo: bool = False
    augment: bool = False
    data_root: str | None = None
    cache_dir: str | None = None
    calib_batches: int = 20
    calib_batch_size: int = 128
    extract_batch_size: int = 256
    workers: int | None = None
    device: str = "auto"
    protocol: Protocol = Protocol()


class UsageError(ValueError):
    """Bad input to a linear evaluation (reported as one line, exit status 2)."""


class Evaluation:
    """A checkpoint at one width on one dataset: calibrated export, cached features, linear probes."""

    def __init__(self, cfg: LinearConfig) -> None:
        self.cfg = cfg
        spec = D.spec(cfg.dataset)
        if cfg.demo and not spec.demo:
            raise UsageError(f"--demo evaluates the built-in demo data (--dataset shapes), not {cfg.dataset!r}; "
                             f"drop --demo for real datasets")
        self.spec = spec
        self.device = resolve_device(cfg.device, allow_cpu=spec.demo)
        self.ck = us3l.load_checkpoint(cfg.checkpoint)
        try:
            self.width = self.ck.check_width(cfg.width)
        except ValueError as e:
            raise UsageError(str(e)) from None
        self.workers = cfg.workers if cfg.workers is not None else (8 if self.device.type == "cuda" else 0)
        self.root = Path(cfg.data_root) if cfg.data_root else D.default_data_root()
        self.cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.results).parent / "cache" / "linear"
        self.transform = D.eval_transform(self.ck.stem, cfg.dataset)
        self.data = {s: D.build_dataset(cfg.dataset, s, self.transform, self.root) for s in D.SPLITS}
        self.num_classes = D.num_classes(cfg.dataset, self.data["train"])
        self.calibration = {"split": "train", "batches": cfg.calib_batches, "batch_size": cfg.calib_batch_size,
                            "seed": cfg.protocol.seed, "transform": repr(self.transform)}
        self._backbone: nn.Module | None = None
        self._fingerprint: str | None = None

    def key(self, split: str) -> dict[str, Any]:
        if self._fingerprint is None:
            folders = D.data_folders(self.cfg.dataset, self.root, list(self.data.values()))
            self._fingerprint = D.fingerprint(folders)
        return cache_key(checkpoint_sha256=self.ck.sha256, width=self.width, dataset=self.cfg.dataset, split=split,
                         data=self._fingerprint, transform=repr(self.transform), calibration=self.calibration)

    def backbone(self) -> nn.Module:
        """The exported backbone at the width, BatchNorm calibrated on the training split (built once)."""
        if self._backbone is None:
            model = self.ck.build_model().to(self.device)
            gen = torch.Generator().manual_seed(self.cfg.protocol.seed)
            loader = DataLoader(self.data["train"], batch_size=self.cfg.calib_batch_size, shuffle=True,
                                num_workers=self.workers, generator=gen)
            us3l.calibrate_bn(model, self.width, loader, self.cfg.calib_batches, self.device)
            self._backbone = us3l.export_subnet(model, self.width).eval()
        return self._backbone

    def features(self, split: str) -> Features:
        """Features of ``split`` from the cache, extracted and stored on a miss."""
        key = self.key(split)
        feats = load_cached(self.cache_dir, key)
        if feats is None:
            feats = extract(self.backbone(), self.data[split], batch_size=self.cfg.extract_batch_size,
                            workers=self.workers, device=self.device, desc=f"{split} features w={self.width:g}")
            save_cached(self.cache_dir, key, feats)
        return feats

    def train_batches(self) -> Batches:
        """The classifier's training batches: cached features, or augmented images through the backbone."""
        if not self.cfg.augment:
            return cached_batches(self.features("train"), self.cfg.protocol, self.device)
        data = D.build_dataset(self.cfg.dataset, "train", D.augment_transform(self.ck.stem, self.cfg.dataset),
                               self.root)
        return backbone_batches(self.backbone(), data, self.cfg.protocol, self.device, self.workers)

    def run(self) -> dict[str, float]:
        """Train the linear classifier and return its test accuracies."""
        test = self.features("test")
        clf = fit_linear(self.train_batches(), test.x.shape[1], self.num_classes, self.cfg.protocol, self.device,
                         desc=f"linear {self.cfg.dataset} w={self.width:g}")
        return accuracy(clf, test, self.device)


def evaluate(cfg: LinearConfig) -> dict[str, Any]:
    """Run one linear evaluation and write its results record; returns the record."""
    start = time.time()
    ev = Evaluation(cfg)
    metrics = ev.run()
    size = D.input_size(ev.ck.stem, cfg.dataset)
    params, macs = us3l.count_params_macs(ev.ck.arch, ev.width, input_size=size, num_classes=0, stem=ev.ck.stem)
    config = {"protocol": asdict(cfg.protocol), "augment": cfg.augment, "input_size": size,
              "transform": repr(ev.transform), "calibration": ev.calibration, "num_classes": ev.num_classes,
              "train_size": len(ev.data["train"]), "test_size": len(ev.data["test"]), "data_root": str(ev.root),
              "device": str(ev.device)}
    record = make_record("linear-augment" if cfg.augment else "linear", cfg.dataset, ev.width, metrics,
                         demo=ev.spec.demo, checkpoint=str(ev.ck.path), checkpoint_sha256=ev.ck.sha256,
                         method=ev.ck.method, arch=ev.ck.arch, params=params, macs=macs, config=config,
                         wall_time_s=time.time() - start, seed=cfg.protocol.seed, precision="float32",  # no autocast
                         device=device_info(ev.device))
    record["_path"] = str(write_record(cfg.results, record))
    return record


def parse_args(argv: list[str] | None) -> LinearConfig:
    p = argparse.ArgumentParser(prog="python -m transfer.linear", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=sorted(D.SPECS))
    p.add_argument("--checkpoint", required=True, help="backbone checkpoint (make pretrain writes backbone.pth)")
    p.add_argument("--width", required=True, type=float, help="width in the checkpoint's range, e.g. 0.5")
    p.add_argument("--results", required=True, help="results directory (one JSON record per job)")
    p.add_argument("--demo", action="store_true", help="built-in demo data (shapes); tags the record as demo")
    p.add_argument("--augment", action="store_true",
                   help="random crop + flip through the backbone every epoch instead of cached features")
    p.add_argument("--data-root", help="datasets root (default: DATA_ROOT or the project's datasets/)")
    p.add_argument("--cache-dir", help="feature cache (default: RESULTS/../cache/linear)")
    p.add_argument("--epochs", type=int, default=Protocol.epochs)
    p.add_argument("--lr", type=float, default=Protocol.lr)
    p.add_argument("--batch-size", type=int, default=Protocol.batch_size)
    p.add_argument("--seed", type=int, default=Protocol.seed)
    p.add_argument("--calib-batches", type=int, default=LinearConfig.calib_batches,
                   help="BatchNorm calibration batches from the training split")
    p.add_argument("--workers", type=int, help="data loader workers (default: 0 on CPU, 8 on CUDA)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA; CPU only with --demo), cuda, cuda:N, or cpu to run a real evaluation on CPU")
    a = p.parse_args(argv)
    for name in ("epochs", "batch_size", "calib_batches"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.lr <= 0:
        p.error("--lr must be > 0")
    protocol = Protocol(epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, seed=a.seed)
    return LinearConfig(dataset=a.dataset, checkpoint=a.checkpoint, width=a.width, results=a.results, demo=a.demo,
                        augment=a.augment, data_root=a.data_root, cache_dir=a.cache_dir,
                        calib_batches=a.calib_batches, workers=a.workers, device=a.device, protocol=protocol)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad input, with a one-line error)."""
    cfg = parse_args(argv)
    try:
        record = evaluate(cfg)
    except (UsageError, DeviceError, D.DatasetMissing, us3l.CheckpointError) as e:
        print(f"transfer.linear: error: {e}", file=sys.stderr)
        return 2
    m = record["metrics"]
    print(f"linear {cfg.dataset} width {record['width']:g}: top-1 {m['top1']:.2f}"
          + (f", top-5 {m['top5']:.2f}" if "top5" in m else "") + f" -> {record['_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
