"""Image transforms of every stage: SimCLR views for pretraining (:class:`TwoViews`), and evaluation's
deterministic transform, training augmentation and input size."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset
from torchvision import transforms as T

from us3l.checkpoint import BackboneCheckpoint

from .catalog import spec

MEAN_STD = {
    "shapes": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def _normalize(dataset: str) -> list:
    """To tensor and the dataset's normalisation (ImageNet's for datasets without their own statistics)."""
    mean, std = MEAN_STD.get(dataset, MEAN_STD["imagenet"])
    return [T.ToTensor(), T.Normalize(mean, std)]


# ---------------------------------------------------------------- pretraining


def simclr_augmentation(image_size: int, dataset: str = "cifar100", blur: bool | None = None) -> T.Compose:
    """SimCLR augmentation of one view.

    RandomResizedCrop (scale 0.2-1), horizontal flip, colour jitter 0.4/0.4/0.4/0.1 with p=0.8,
    grayscale with p=0.2, and on ImageNet (``blur=None`` means "if dataset is imagenet") Gaussian
    blur with p=0.5 (kernel ~10% of the image, sigma 0.1-2.0); then normalisation.
    """
    if dataset not in MEAN_STD:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(MEAN_STD)}")
    ops: list = [
        T.RandomResizedCrop(image_size, scale=(0.2, 1.0)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    if blur if blur is not None else dataset == "imagenet":
        kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)
        ops.append(T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    return T.Compose(ops + _normalize(dataset))


class TwoViews(Dataset):
    """Two augmented views of each image of ``base`` (its labels are dropped).

    Each item's augmentation is seeded from ``(seed, epoch, index)``, so views do not depend on
    worker count, process count or order: a resumed or distributed run sees the same views.
    """

    def __init__(self, base: Dataset, transform: Callable, seed: int = 0) -> None:
        self.base, self.transform, self.seed = base, transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.base[index][0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
            return self.transform(img), self.transform(img)


# ---------------------------------------------------------------- evaluation


def pretrain_size(ck: BackboneCheckpoint) -> int:
    """The image size ``ck`` was pretrained at (provenance, else config); 32 for the CIFAR stem and 224 otherwise
    when the checkpoint does not say."""
    for source in (ck.provenance, ck.config):
        if isinstance(source.get("image_size"), int):
            return source["image_size"]
    return 32 if ck.stem == "cifar" else 224


def input_size(ck: BackboneCheckpoint, dataset: str, override: int | None = None) -> int:
    """The evaluation input size: ``override`` (``--image-size``), else the size the dataset's protocol fixes
    (ImageNet: 224), else the checkpoint's pretraining size (a network evaluated at the scale it saw)."""
    if override is not None:
        return override
    return spec(dataset).eval_size or pretrain_size(ck)


def eval_transform(size: int, dataset: str) -> T.Compose:
    """Deterministic transform at ``size``: from 224 px up the ImageNet convention (resize ``size / 0.875``, so
    256 at 224, centre crop), below it the whole image resized and centre-cropped (low-resolution pretraining sees
    whole images: CIFAR, the demo shapes, 32/64 px ImageNet); the dataset's normalisation (else ImageNet's)."""
    resize = round(size / 0.875) if size >= 224 else size
    return T.Compose([T.Resize(resize), T.CenterCrop(size), *_normalize(dataset)])


def augment_transform(stem: str, size: int, dataset: str) -> T.Compose:
    """Training transform of linear evaluation's ``--augment`` at ``size``: CIFAR stem, random crop with 4 px
    padding and flip; ImageNet stem, RandomResizedCrop and flip (SimSiam's linear protocol)."""
    norm = _normalize(dataset)
    if stem == "cifar":
        return T.Compose([T.Resize(size), T.CenterCrop(size), T.RandomCrop(size, padding=4),
                          T.RandomHorizontalFlip(), *norm])
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *norm])
