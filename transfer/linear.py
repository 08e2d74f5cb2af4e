"""Linear evaluation of a slimmable backbone at one width.

The backbone is exported at the width with BatchNorm calibrated on the target's training set and kept
frozen; its features are extracted once and cached (see :mod:`transfer.features`), then a linear
classifier is trained on them with the paper's protocol (SGD momentum 0.9, no weight decay, lr 30,
100 epochs, lr /10 at 60% and 80% of the epochs, batch 256). ``--augment`` instead trains on random
crops and flips passed through the backbone every epoch. Top-1 (and top-5) on the test split go into
a results record (:mod:`us3l.jobs`). ``--random-init`` evaluates a randomly initialised network of the
checkpoint's architecture instead (the reference). A NaN or infinite loss ends the job with exit status 1
and a failed record.

Like every program here it runs on CUDA, or on CPU only for ``--demo`` or when asked with ``--device cpu``:
a real evaluation passes the whole dataset through a ResNet at 224 px (every epoch with ``--augment``),
hours on CPU, so a silent fallback would cost as much as it does for detection.

Usage: python -m transfer.linear --dataset cifar100 --checkpoint CKPT --width 0.5 --results DIR [--seed N]
[--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import us3l
from us3l.device import DeviceError, device_info, resolve_device
from us3l.jobs import (
    Diverged,
    JobSpec,
    SpecError,
    command_line,
    make_record,
    provenance,
    record_name,
    split_metrics,
    write_record,
)
from us3l.models import USResNet

from . import datasets as D
from .features import Features, cache_key, extract, load_cached, save_cached

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

    @classmethod
    def of(cls, spec: JobSpec) -> Protocol:
        """The protocol of a linear job's spec."""
        p = spec.protocol
        return cls(epochs=p["epochs"], lr=p["lr"], momentum=p["momentum"], weight_decay=p["weight_decay"],
                   milestones=tuple(p["milestones"]), batch_size=p["batch_size"], seed=spec.seed)


def fit_linear(batches: Batches, dim: int, classes: int, protocol: Protocol, device: torch.device,
               desc: str = "linear") -> nn.Linear:
    """Train ``nn.Linear(dim, classes)`` on ``batches(epoch)`` (feature, label) pairs with ``protocol``.

    ``Diverged`` when the loss or the weights become NaN or infinite (checked once per epoch).
    """
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
        finite = torch.ones((), dtype=torch.bool, device=device)
        for x, y in batches(epoch):
            loss = loss_fn(clf(x), y)
            finite &= torch.isfinite(loss.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if not (finite and all(torch.isfinite(p).all() for p in clf.parameters())):
            raise Diverged(f"the linear classifier's loss became NaN or infinite in epoch {epoch + 1} "
                           f"(lr {protocol.lr:g})")
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



@dataclass(frozen=True)
class LinearRun:
    """Where and how a linear job runs: nothing here changes its result (that is the spec's)."""

    results: str
    data_root: str | None = None
    cache_dir: str | None = None
    workers: int | None = None
    extract_batch_size: int = 256
    device: str = "auto"
    argv: tuple[str, ...] = ()  # the equivalent command line's arguments (for the log and the record)


class UsageError(ValueError):
    """Bad input to a linear evaluation (reported as one line, exit status 2)."""


USAGE_ERRORS = (UsageError, SpecError, DeviceError, D.DatasetMissing, us3l.CheckpointError)


class Evaluation:
    """A linear job: calibrated export at the width, cached features, the linear probe."""

    def __init__(self, spec: JobSpec, run: LinearRun) -> None:
        self.spec, self.run_settings = spec, run
        self.protocol = Protocol.of(spec)
        self.device = resolve_device(run.device, allow_cpu=spec.demo)
        self.ck = us3l.load_checkpoint(spec.checkpoint)
        spec.check_checkpoint(self.ck.sha256)
        self.width = spec.width
        self.workers = run.workers if run.workers is not None else (8 if self.device.type == "cuda" else 0)
        self.root = Path(run.data_root) if run.data_root else D.default_data_root()
        self.cache_dir = Path(run.cache_dir) if run.cache_dir else Path(run.results).parent / "cache" / "linear"
        self.transform = D.eval_transform(self.ck.stem, spec.dataset)
        self.data = {s: D.build_dataset(spec.dataset, s, self.transform, self.root) for s in D.SPLITS}
        self.num_classes = D.num_classes(spec.dataset, self.data["train"])
        self.calibration = {"split": "train", "batches": spec.protocol["calib_batches"],
                            "batch_size": spec.protocol["calib_batch_size"], "seed": spec.seed,
                            "transform": repr(self.transform)}
        self._backbone: nn.Module | None = None
        self._fingerprint: str | None = None

    def key(self, split: str) -> dict[str, Any]:
        if self._fingerprint is None:
            folders = D.data_folders(self.spec.dataset, self.root, list(self.data.values()))
            self._fingerprint = D.fingerprint(folders)
        return cache_key(checkpoint_sha256=self.ck.sha256, random_init=self.spec.random_init, width=self.width,
                         dataset=self.spec.dataset, split=split, data=self._fingerprint,
                         transform=repr(self.transform), calibration=self.calibration)

    def model(self) -> USResNet:
        """The slimmable network: the checkpoint's, or with ``random_init`` a fresh one seeded by the spec."""
        if not self.spec.random_init:
            return self.ck.build_model()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.spec.seed)
            return USResNet(self.ck.arch, stem=self.ck.stem, num_classes=0, width_range=self.ck.width_range)

    def backbone(self) -> nn.Module:
        """The exported backbone at the width, BatchNorm calibrated on the training split (built once)."""
        if self._backbone is None:
            model = self.model().to(self.device)
            gen = torch.Generator().manual_seed(self.spec.seed)
            loader = DataLoader(self.data["train"], batch_size=self.calibration["batch_size"], shuffle=True,
                                num_workers=self.workers, generator=gen)
            us3l.calibrate_bn(model, self.width, loader, self.calibration["batches"], self.device)
            self._backbone = us3l.export_subnet(model, self.width).eval()
        return self._backbone

    def features(self, split: str) -> Features:
        """Features of ``split`` from the cache, extracted and stored on a miss."""
        key = self.key(split)
        feats = load_cached(self.cache_dir, key)
        if feats is None:
            feats = extract(self.backbone(), self.data[split], batch_size=self.run_settings.extract_batch_size,
                            workers=self.workers, device=self.device, desc=f"{split} features w={self.width:g}")
            save_cached(self.cache_dir, key, feats, written_by=self.spec.id)
        return feats

    def train_batches(self) -> Batches:
        """The classifier's training batches: cached features, or augmented images through the backbone."""
        if not self.spec.protocol["augment"]:
            return cached_batches(self.features("train"), self.protocol, self.device)
        data = D.build_dataset(self.spec.dataset, "train", D.augment_transform(self.ck.stem, self.spec.dataset),
                               self.root)
        return backbone_batches(self.backbone(), data, self.protocol, self.device, self.workers)

    def run(self) -> dict[str, float]:
        """Train the linear classifier and return its test accuracies."""
        test = self.features("test")
        clf = fit_linear(self.train_batches(), test.x.shape[1], self.num_classes, self.protocol, self.device,
                         desc=f"linear {self.spec.dataset} w={self.width:g}")
        return accuracy(clf, test, self.device)


def evaluate(spec: JobSpec, run: LinearRun) -> dict[str, Any]:
    """Run one linear job and write its record; returns the record (``_path``: its file).

    Bad input raises one of ``USAGE_ERRORS`` before anything is written. A failure while training (``Diverged``
    or any other exception) writes a failed record, then propagates.
    """
    start = time.time()
    ev = Evaluation(spec, run)
    size = D.input_size(ev.ck.stem, spec.dataset)
    params, macs = us3l.count_params_macs(ev.ck.arch, ev.width, input_size=size, num_classes=0, stem=ev.ck.stem)

    def write(metrics: dict[str, float], undefined: list[str], error: str | None) -> dict[str, Any]:
        prov = provenance(spec, command=command_line("transfer.linear", run.argv), device=device_info(ev.device),
                          precision="float32", world_size=1,  # no autocast
                          data={"root": str(ev.root), "train_size": len(ev.data["train"]),
                                "test_size": len(ev.data["test"]), "num_classes": ev.num_classes,
                                "transform": repr(ev.transform)})
        record = make_record(spec, metrics=metrics, undefined_metrics=undefined, error=error,
                             cost={"backbone_params": params, "backbone_macs": macs, "input_size": size},
                             provenance=prov, wall_time_s=time.time() - start)
        record["_path"] = str(write_record(run.results, record))
        return record

    try:
        metrics, undefined = split_metrics(ev.run(), required=("top1",))
    except Exception as e:
        write({}, [], f"{type(e).__name__}: {e}")
        raise
    return write(metrics, undefined, None)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m transfer.linear", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=sorted(D.SPECS))
    p.add_argument("--checkpoint", required=True, help="backbone checkpoint (make pretrain writes backbone.pth)")
    p.add_argument("--width", required=True, type=float, help="width in the checkpoint's range, e.g. 0.5")
    p.add_argument("--results", required=True, help="results directory (one JSON record per job)")
    p.add_argument("--demo", action="store_true", help="built-in demo data (shapes); tags the record as demo")
    p.add_argument("--augment", action="store_true",
                   help="random crop + flip through the backbone every epoch instead of cached features")
    p.add_argument("--random-init", action="store_true",
                   help="a randomly initialised network of the checkpoint's architecture (seeded by --seed)")
    p.add_argument("--data-root", help="datasets root (default: DATA_ROOT or the project's datasets/)")
    p.add_argument("--cache-dir", help="feature cache (default: RESULTS/../cache/linear)")
    p.add_argument("--epochs", type=int, default=Protocol.epochs)
    p.add_argument("--lr", type=float, default=Protocol.lr)
    p.add_argument("--batch-size", type=int, default=Protocol.batch_size)
    p.add_argument("--seed", type=int, default=Protocol.seed,
                   help="seeds calibration, classifier init and batch order (and --random-init's weights)")
    p.add_argument("--calib-batches", type=int, default=20,
                   help="BatchNorm calibration batches from the training split")
    p.add_argument("--calib-batch-size", type=int, default=128, help="images per calibration batch")
    p.add_argument("--workers", type=int, help="data loader workers (default: 0 on CPU, 8 on CUDA)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA; CPU only with --demo), cuda, cuda:N, or cpu to run a real evaluation on CPU")
    a = p.parse_args(argv)
    for name in ("epochs", "batch_size", "calib_batches", "calib_batch_size"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.lr <= 0:  # NaN passes: it diverges, and the job fails with a failed record
        p.error("--lr must be > 0")
    if a.seed < 0:
        p.error("--seed must be >= 0")
    return a


def make_job(argv: Sequence[str], ck: us3l.BackboneCheckpoint | None = None) -> tuple[JobSpec, LinearRun]:
    """The spec and run settings of a command line (``ck``: the loaded ``--checkpoint``, to skip reading it).

    Argument errors exit with status 2 (argparse); bad input raises one of ``USAGE_ERRORS``."""
    a = parse_args(argv)
    info = D.spec(a.dataset)
    if a.demo and not info.demo:
        raise UsageError(f"--demo evaluates the built-in demo data (--dataset shapes), not {a.dataset!r}; "
                         f"drop --demo for real datasets")
    ck = ck if ck is not None else us3l.load_checkpoint(a.checkpoint)
    protocol = {k: v for k, v in asdict(Protocol(epochs=a.epochs, lr=a.lr, batch_size=a.batch_size)).items()
                if k != "seed"}
    protocol.update(augment=a.augment, calib_batches=a.calib_batches, calib_batch_size=a.calib_batch_size)
    spec = JobSpec.for_checkpoint(ck, task="linear", dataset=a.dataset, width=a.width, seed=a.seed, demo=info.demo,
                                  random_init=a.random_init, protocol=protocol)
    run = LinearRun(results=a.results, data_root=a.data_root, cache_dir=a.cache_dir, workers=a.workers,
                    device=a.device, argv=tuple(argv))
    return spec, run


def run_job(spec: JobSpec, run: LinearRun) -> int:
    """Run a linear job (what a sweep submits); returns the exit status: 0, 1 when it failed (with a failed
    record), 2 for bad input (one line, nothing written)."""
    try:
        record = evaluate(spec, run)
    except USAGE_ERRORS as e:
        print(f"transfer.linear: error: {e}", file=sys.stderr)
        return 2
    except Diverged as e:
        path = Path(run.results) / record_name(spec.to_dict())
        print(f"transfer.linear: error: diverged: {e}; failed record -> {path}", file=sys.stderr)
        return 1
    m = record["metrics"]
    print(f"linear {spec.dataset} width {spec.width:g}: top-1 {m['top1']:.2f}"
          + (f", top-5 {m['top5']:.2f}" if "top5" in m else "") + f" -> {record['_path']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad input, with a one-line error; 1 when it failed)."""
    try:
        spec, run = make_job(sys.argv[1:] if argv is None else argv)
    except USAGE_ERRORS as e:
        print(f"transfer.linear: error: {e}", file=sys.stderr)
        return 2
    return run_job(spec, run)


if __name__ == "__main__":
    sys.exit(main())
