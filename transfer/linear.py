"""Linear evaluation of a slimmable backbone at one width.

The backbone is exported at the width with BatchNorm calibrated on the target's training set and kept
frozen in eval mode; its features are extracted once and cached (see :mod:`transfer.features`), then a linear
classifier is trained on them with the paper's protocol (SGD momentum 0.9, no weight decay, lr 30,
100 epochs, lr /10 at 60% and 80% of the epochs, batch 256). ``--augment`` instead trains on random
crops and flips passed through the backbone every epoch. ImageNet (``--dataset imagenet``) follows the protocol
the paper cites, SimSiam's: LARS, global batch 4096, lr 0.1 x batch / 256, cosine schedule, 90 epochs, no weight
decay, RandomResizedCrop + flip through the backbone (``--augment`` on), resize 256 / centre crop 224 for
validation. The optimizer and schedule go into the spec's protocol, so into the record.

The input size follows the checkpoint's pretraining image size unless the dataset's protocol fixes it (ImageNet:
224); ``--image-size`` overrides; the size used is in the spec (``protocol.image_size``) and the record's cost.

Several GPUs: ``torchrun --nproc_per_node N -m transfer.linear ...`` (NCCL; gloo on CPU). Each process takes its
share of every global batch, the classifier's gradients are averaged (DistributedDataParallel), process 0 evaluates
and writes the record. Every epoch the classifier, optimizer and epoch go atomically into the run directory
(``--run-dir``, default RESULTS/../runs/linear/<spec id>); a killed run started again resumes there (batch order and
augmentations are seeded per epoch, so the result is the uninterrupted one); a finished run removes its state.

Top-1 (and top-5) on the test split go into a results record (:mod:`us3l.jobs`). ``--random-init`` evaluates a
randomly initialised network of the checkpoint's architecture instead (the reference). A NaN or infinite loss ends
the job with exit status 1 and a failed record.

Like every program here it runs on CUDA, or on CPU only for ``--demo`` or when asked with ``--device cpu``:
a real evaluation passes the whole dataset through a ResNet at 224 px (every epoch with ``--augment``),
hours on CPU, so a silent fallback would cost as much as it does for detection.

Usage: python -m transfer.linear --dataset cifar100 --checkpoint CKPT --width 0.5 --results DIR [--seed N]
[--device cpu] [--image-size N] [--augment]   (DATASET: a name, or imagefolder:PATH)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import us3l
from us3l import data as D
from us3l.checkpoint import atomic_torch_save
from us3l.device import device_info, resolve_device
from us3l.errors import Diverged, UsageError, run_cli
from us3l.jobs import (
    JobSpec,
    command_line,
    make_record,
    provenance,
    split_metrics,
    write_record,
)
from us3l.lars import LARS
from us3l.models import USResNet

from .features import Features, cache_key, extract, fingerprint, load_cached, save_cached

Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]
PROG = "python -m transfer.linear"
OPTIMIZERS = ("sgd", "lars")
SCHEDULES = ("step", "cosine")


@dataclass(frozen=True)
class Protocol:
    """The linear classifier's training protocol (defaults: the paper's)."""

    epochs: int = 100
    lr: float = 30.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: tuple[float, ...] = (0.6, 0.8)  # fractions of the epochs where lr is divided by 10 (step schedule)
    batch_size: int = 256  # global, over all processes
    optimizer: str = "sgd"  # sgd or lars (us3l.lars, SimSiam's)
    schedule: str = "step"  # step (milestones) or cosine (per epoch, to 0)
    seed: int = 0

    def milestone_epochs(self) -> list[int]:
        return [round(f * self.epochs) for f in self.milestones]

    @classmethod
    def of(cls, spec: JobSpec) -> Protocol:
        """The protocol of a linear job's spec."""
        p = spec.protocol
        return cls(epochs=p["epochs"], lr=p["lr"], momentum=p["momentum"], weight_decay=p["weight_decay"],
                   milestones=tuple(p["milestones"]), batch_size=p["batch_size"], optimizer=p["optimizer"],
                   schedule=p["schedule"], seed=spec.seed)


# SimSiam's linear evaluation (main_lincls.py), the protocol the paper's Table 4 cites.
IMAGENET_BASE_LR = 0.1  # per 256 images
IMAGENET_PROTOCOL = Protocol(epochs=90, lr=IMAGENET_BASE_LR * 4096 / 256, milestones=(), batch_size=4096,
                             optimizer="lars", schedule="cosine")


def default_protocol(dataset: str) -> Protocol:
    """The protocol a dataset is evaluated with unless the command line says otherwise."""
    return IMAGENET_PROTOCOL if dataset == "imagenet" else Protocol()


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the torchrun job the environment describes (NCCL on CUDA, one GPU per process; gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():  # long timeout: process 0 alone extracts cached features
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=6))
    return Dist(dist.get_rank(), dist.get_world_size()), device


def make_optimizer(params: Iterable[nn.Parameter], protocol: Protocol) -> torch.optim.Optimizer:
    """SGD or LARS with the protocol's lr, momentum and weight decay."""
    kind = LARS if protocol.optimizer == "lars" else torch.optim.SGD
    return kind(params, lr=protocol.lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay)


def make_schedule(opt: torch.optim.Optimizer, protocol: Protocol) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: lr /10 at the milestones, or cosine from lr to 0 over the epochs (SimSiam's)."""
    if protocol.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=protocol.epochs)
    return torch.optim.lr_scheduler.MultiStepLR(opt, protocol.milestone_epochs(), gamma=0.1)


def fit_linear(batches: Batches, dim: int, classes: int, protocol: Protocol, device: torch.device,
               desc: str = "linear", state: Path | None = None, job: str = "", ddp: Dist = Dist()) -> nn.Linear:
    """Train ``nn.Linear(dim, classes)`` on ``batches(epoch)`` (feature, label) pairs with ``protocol``.

    ``state``: after every epoch the classifier, optimizer and epoch are saved there (by process 0), and a state
    of the same ``job`` found there is resumed. ``Diverged`` when the loss or the weights become NaN or infinite
    (checked once per epoch).
    """
    gen = torch.Generator().manual_seed(protocol.seed)
    clf = nn.Linear(dim, classes)
    with torch.no_grad():
        clf.weight.normal_(0.0, 0.01, generator=gen)
        clf.bias.zero_()
    clf.to(device)
    opt = make_optimizer(clf.parameters(), protocol)
    sched = make_schedule(opt, protocol)
    start = 0
    if state is not None and state.is_file():
        saved = torch.load(state, map_location="cpu", weights_only=True)
        if saved.get("job") == job:
            start = saved["epoch"]
            clf.load_state_dict(saved["classifier"])
            with warnings.catch_warnings():  # stepping the schedule before the optimizer is the point here
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(start):  # the schedule's own arithmetic, as in the uninterrupted run
                    sched.step()
            opt.load_state_dict(saved["optimizer"])
    model = clf if ddp.world == 1 else DistributedDataParallel(clf, device_ids=[device] if device.type == "cuda"
                                                              else None)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in tqdm(range(start, protocol.epochs), desc=desc, unit="epoch", leave=False, disable=not ddp.main):
        finite = torch.ones((), dtype=torch.bool, device=device)
        for x, y in batches(epoch):
            loss = loss_fn(model(x), y)
            finite &= torch.isfinite(loss.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        finite &= all(torch.isfinite(p).all() for p in clf.parameters())
        if ddp.world > 1:
            flag = finite.to(torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = flag.bool()
        if not finite:
            raise Diverged(f"the linear classifier's loss became NaN or infinite in epoch {epoch + 1} "
                           f"(lr {protocol.lr:g})")
        if state is not None and ddp.main:
            atomic_torch_save({"job": job, "epoch": epoch + 1, "classifier": clf.state_dict(),
                               "optimizer": opt.state_dict()}, state)
    return clf


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def epoch_order(n: int, protocol: Protocol, epoch: int, ddp: Dist = Dist()) -> torch.Tensor:
    """This process's items of an epoch, in order: its share (every ``world``-th) of each global batch of one
    shuffle common to all processes (a last global batch smaller than the world is dropped)."""
    order = torch.randperm(n, generator=_epoch_generator(protocol.seed, epoch))
    if ddp.world == 1:
        return order
    b = protocol.batch_size
    return torch.cat([order[i:i + b][ddp.rank::ddp.world] for i in range(0, n, b) if n - i >= ddp.world])


def cached_batches(feats: Features, protocol: Protocol, device: torch.device, ddp: Dist = Dist()) -> Batches:
    """Shuffled minibatches of cached features (the same order as :func:`backbone_batches`)."""
    x, y = feats.x.to(device), feats.y.to(device)
    local = protocol.batch_size // ddp.world

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = epoch_order(len(y), protocol, epoch, ddp).to(device)
        for i in range(0, len(perm), local):
            idx = perm[i:i + local]
            yield x[idx], y[idx]

    return batches


def backbone_batches(backbone: nn.Module, dataset: Dataset, protocol: Protocol, device: torch.device,
                     workers: int, ddp: Dist = Dist()) -> Batches:
    """Shuffled minibatches passed through the frozen ``backbone`` in eval mode every epoch (same order as cached).

    Random augmentations are seeded by (seed, epoch, rank), so a resumed run draws the uninterrupted run's."""
    backbone.eval()

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = epoch_order(len(dataset), protocol, epoch, ddp).tolist()
        torch.manual_seed((protocol.seed * 100_003 + epoch) * 1_009 + ddp.rank)  # transforms (and workers' seeds)
        loader = DataLoader(dataset, batch_size=protocol.batch_size // ddp.world, sampler=order, num_workers=workers,
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
    """Where and how a linear or kNN job runs: nothing here changes its result (that is the spec's)."""

    results: str
    data_root: str | None = None
    cache_dir: str | None = None
    workers: int | None = None
    extract_batch_size: int = 256
    device: str = "auto"
    argv: tuple[str, ...] = ()  # the equivalent command line's arguments (for the log and the record)
    run_dir: str | None = None  # the classifier's per-epoch state (default RESULTS/../runs/linear/<spec id>)


class Evaluation:
    """A recognition job's frozen backbone: calibrated export at the width, cached features, the linear probe."""

    def __init__(self, spec: JobSpec, run: LinearRun) -> None:
        self.spec, self.run_settings = spec, run
        self.ck = us3l.load_checkpoint(spec.checkpoint)
        spec.check_checkpoint(self.ck.sha256)
        self.ddp, self.device = init_distributed(resolve_device(run.device, allow_cpu=spec.demo))
        self.width = spec.width
        self.workers = run.workers if run.workers is not None else (8 if self.device.type == "cuda" else 0)
        self.root = Path(run.data_root) if run.data_root else D.data_root()
        self.cache_dir = Path(run.cache_dir) if run.cache_dir else Path(run.results).parent / "cache" / "linear"
        self.image_size = spec.protocol["image_size"]
        self.transform = D.eval_transform(self.image_size, spec.dataset)
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
            self._fingerprint = fingerprint(folders)
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

    def backbone(self, synced: bool = False) -> nn.Module:
        """The exported backbone at the width, BatchNorm calibrated on the training split (built once). ``synced``
        (called by every process of a torchrun job together): every process then holds process 0's."""
        if self._backbone is None:
            model = self.model().to(self.device)
            gen = torch.Generator().manual_seed(self.spec.seed)
            loader = DataLoader(self.data["train"], batch_size=self.calibration["batch_size"], shuffle=True,
                                num_workers=self.workers, generator=gen)
            us3l.calibrate_bn(model, self.width, loader, self.calibration["batches"], self.device)
            self._backbone = us3l.export_subnet(model, self.width).eval()
        if synced and self.ddp.world > 1:
            for t in self._backbone.state_dict().values():
                dist.broadcast(t, 0)
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

    def shared_features(self, split: str) -> Features:
        """:meth:`features` in every process of a torchrun job: process 0 extracts, the others read its entry."""
        if self.ddp.world == 1:
            return self.features(split)
        feats = self.features(split) if self.ddp.main else None
        dist.barrier()
        return feats if feats is not None else self.features(split)

    def train_batches(self, protocol: Protocol) -> Batches:
        """The classifier's training batches: cached features, or augmented images through the backbone."""
        if not self.spec.protocol["augment"]:
            return cached_batches(self.shared_features("train"), protocol, self.device, self.ddp)
        transform = D.augment_transform(self.ck.stem, self.image_size, self.spec.dataset)
        data = D.build_dataset(self.spec.dataset, "train", transform, self.root)
        return backbone_batches(self.backbone(synced=True), data, protocol, self.device, self.workers, self.ddp)

    def state_path(self) -> Path:
        run_dir = self.run_settings.run_dir or Path(self.run_settings.results).parent / "runs" / "linear" / self.spec.id
        return Path(run_dir) / "classifier_state.pth"

    def linear(self) -> dict[str, float]:
        """Train the linear classifier and return its test accuracies (process 0; the others return {})."""
        protocol = Protocol.of(self.spec)
        dim = us3l.channel_plan(self.ck.arch, self.width).feature_dim
        state = self.state_path()
        clf = fit_linear(self.train_batches(protocol), dim, self.num_classes, protocol, self.device,
                         desc=f"linear {self.spec.dataset} w={self.width:g}", state=state, job=self.spec.id,
                         ddp=self.ddp)
        if not self.ddp.main:
            return {}
        metrics = accuracy(clf, self.features("test"), self.device)
        state.unlink(missing_ok=True)
        return metrics


def evaluate(spec: JobSpec, run: LinearRun, measure: Callable[[Evaluation], dict[str, float]] = Evaluation.linear,
             program: str = "transfer.linear", required: tuple[str, ...] = ("top1",)) -> dict[str, Any] | None:
    """Run one job (``measure`` of its :class:`Evaluation`) and write its record; returns the record (``_path``: its
    file), or None in a torchrun process other than 0 (process 0 writes the record).

    Bad input raises a ``UsageError`` before anything is written. A failure while training (``Diverged``
    or any other exception) writes a failed record, then propagates (``Diverged`` naming the record).
    """
    start = time.time()
    ev = Evaluation(spec, run)
    size = ev.image_size
    params, macs = us3l.count_params_macs(ev.ck.arch, ev.width, input_size=size, num_classes=0, stem=ev.ck.stem)

    def write(metrics: dict[str, float], undefined: list[str], error: str | None) -> dict[str, Any]:
        prov = provenance(spec, command=command_line(program, run.argv),
                          device=device_info(ev.device, ev.ddp.world), precision="float32",  # no autocast
                          world_size=ev.ddp.world,
                          data={"root": str(ev.root), "train_size": len(ev.data["train"]),
                                "test_size": len(ev.data["test"]), "num_classes": ev.num_classes,
                                "transform": repr(ev.transform)})
        record = make_record(spec, metrics=metrics, undefined_metrics=undefined, error=error,
                             cost={"backbone_params": params, "backbone_macs": macs, "input_size": size},
                             provenance=prov, wall_time_s=time.time() - start)
        record["_path"] = str(write_record(run.results, record))
        return record

    try:
        measured = measure(ev)
        if not ev.ddp.main:
            return None
        metrics, undefined = split_metrics(measured, required=required)
    except Exception as e:
        if not ev.ddp.main:
            raise
        failed = write({}, [], f"{type(e).__name__}: {e}")
        if isinstance(e, Diverged):
            raise Diverged(f"diverged: {e}; failed record -> {failed['_path']}") from None
        raise
    return write(metrics, undefined, None)


def dataset_name(text: str) -> str:
    """``--dataset``'s value: a known name or ``imagefolder:PATH`` (argparse type)."""
    try:
        return D.spec(text).name
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments linear and kNN evaluation share: dataset, backbone, width, input size, calibration, where."""
    p.add_argument("--dataset", required=True, type=dataset_name,
                   help=f"one of {', '.join(D.SPECS)}, or imagefolder:PATH (PATH/train/<class>/, PATH/val/<class>/)")
    p.add_argument("--checkpoint", required=True, help="backbone checkpoint (make pretrain writes backbone.pth)")
    p.add_argument("--width", required=True, type=float, help="width in the checkpoint's range, e.g. 0.5")
    p.add_argument("--results", required=True, help="results directory (one JSON record per job)")
    p.add_argument("--demo", action="store_true", help="built-in demo data (shapes); tags the record as demo")
    p.add_argument("--random-init", action="store_true",
                   help="a randomly initialised network of the checkpoint's architecture (seeded by --seed)")
    p.add_argument("--image-size", type=int,
                   help="input size (default: the dataset protocol's, else the checkpoint's pretraining size)")
    p.add_argument("--data-root", help="datasets root (default: DATA_ROOT or the project's datasets/)")
    p.add_argument("--cache-dir", help="feature cache (default: RESULTS/../cache/linear)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds calibration, classifier init and batch order (and --random-init's weights)")
    p.add_argument("--calib-batches", type=int, default=20,
                   help="BatchNorm calibration batches from the training split")
    p.add_argument("--calib-batch-size", type=int, default=128, help="images per calibration batch")
    p.add_argument("--workers", type=int, help="data loader workers (default: 0 on CPU, 8 on CUDA)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA; CPU only with --demo), cuda, cuda:N, or cpu to run a real evaluation on CPU")


def check_job_arguments(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Argument errors of :func:`add_job_arguments`' options (exit 2 through argparse)."""
    for name in ("calib_batches", "calib_batch_size", "image_size"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.seed < 0:
        p.error("--seed must be >= 0")


def job_spec(a: argparse.Namespace, ck: us3l.BackboneCheckpoint | None, task: str,
             protocol: dict[str, Any]) -> JobSpec:
    """The spec of a parsed command line (``protocol`` plus the shared input size and calibration settings)."""
    info = D.spec(a.dataset)
    if a.demo and not info.demo:
        raise UsageError(f"--demo evaluates the built-in demo data (--dataset shapes), not {a.dataset!r}; "
                         f"drop --demo for real datasets")
    ck = ck if ck is not None else us3l.load_checkpoint(a.checkpoint)
    protocol = {**protocol, "image_size": D.input_size(ck, a.dataset, a.image_size),
                "calib_batches": a.calib_batches, "calib_batch_size": a.calib_batch_size}
    return JobSpec.for_checkpoint(ck, task=task, dataset=a.dataset, width=a.width, seed=a.seed, demo=info.demo,
                                  random_init=a.random_init, protocol=protocol)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_job_arguments(p)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crops + flips through the backbone every epoch instead of cached features "
                        "(default: on for imagenet, off otherwise)")
    p.add_argument("--epochs", type=int, help="default: 100 (imagenet: 90)")
    p.add_argument("--lr", type=float, help="default: 30 (imagenet: 0.1 x batch size / 256)")
    p.add_argument("--batch-size", type=int, help="global batch size; default: 256 (imagenet: 4096)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="default: sgd (imagenet: lars)")
    p.add_argument("--schedule", choices=SCHEDULES, help="default: step (imagenet: cosine)")
    p.add_argument("--run-dir", help="the classifier's per-epoch state (default RESULTS/../runs/linear/<spec id>)")
    a = p.parse_args(argv)
    check_job_arguments(p, a)
    for name in ("epochs", "batch_size"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.lr is not None and a.lr <= 0:  # NaN passes: it diverges, and the job fails with a failed record
        p.error("--lr must be > 0")
    return a


def linear_protocol(a: argparse.Namespace) -> Protocol:
    """The dataset's default protocol with the command line's changes (ImageNet's lr follows its batch size)."""
    base = default_protocol(a.dataset)
    batch = a.batch_size or base.batch_size
    lr = a.lr if a.lr is not None else (IMAGENET_BASE_LR * batch / 256 if a.dataset == "imagenet" else base.lr)
    return replace(base, epochs=a.epochs or base.epochs, lr=lr, batch_size=batch,
                   optimizer=a.optimizer or base.optimizer, schedule=a.schedule or base.schedule)


def make_job(argv: Sequence[str], ck: us3l.BackboneCheckpoint | None = None) -> tuple[JobSpec, LinearRun]:
    """The spec and run settings of a command line (``ck``: the loaded ``--checkpoint``, to skip reading it).

    Argument errors exit with status 2 (argparse); bad input raises a ``UsageError``."""
    a = parse_args(argv)
    protocol = {k: v for k, v in asdict(linear_protocol(a)).items() if k != "seed"}
    protocol["augment"] = a.augment if a.augment is not None else a.dataset == "imagenet"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if protocol["batch_size"] % world:
        raise UsageError(f"--batch-size {protocol['batch_size']} does not split over {world} processes")
    spec = job_spec(a, ck, "linear", protocol)
    run = LinearRun(results=a.results, data_root=a.data_root, cache_dir=a.cache_dir, workers=a.workers,
                    device=a.device, argv=tuple(argv), run_dir=a.run_dir)
    return spec, run


def linear_job(spec: JobSpec, run: LinearRun) -> None:
    """Evaluate, record, and print the result line (process 0)."""
    record = evaluate(spec, run)
    if record is not None:
        m = record["metrics"]
        print(f"linear {spec.dataset} width {spec.width:g}: top-1 {m['top1']:.2f}"
              + (f", top-5 {m['top5']:.2f}" if "top5" in m else "") + f" -> {record['_path']}")


def run_job(spec: JobSpec, run: LinearRun) -> int:
    """Run a linear job (what a sweep submits); returns the exit status: 0, 1 when it failed (with a failed
    record), 2 for bad input (one line, nothing written)."""
    return run_cli(PROG, lambda: linear_job(spec, run))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad input, with a one-line error; 1 when it failed)."""
    return run_cli(PROG, lambda: linear_job(*make_job(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
