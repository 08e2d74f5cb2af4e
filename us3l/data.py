"""Datasets and augmentations shared by the stages.

- :func:`data_root`: where datasets live (``$DATA_ROOT``, else ``./datasets``).
- :class:`ShapesDataset`: a procedural labelled set of coloured shapes, deterministic from a seed,
  written to disk once (PNG files plus ``labels.txt``) so every stage reads the same images.
- :func:`simclr_augmentation`: SimCLR augmentations (CIFAR setup; ImageNet adds Gaussian blur).
- :func:`build_pretrain_dataset`: shapes, CIFAR-10/100 (torchvision's on-disk format), ImageNet's
  folders, or your own ``imagefolder:PATH`` (:func:`image_folder`); a missing directory is a
  :class:`DatasetMissingError` naming the layout.
"""

from __future__ import annotations

import math
import os
import pickle
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset
from torchvision import datasets as tvd
from torchvision import transforms as T

SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring", "star")
SPLIT_SIZES = {"train": 2400, "test": 600}
PRETRAIN_DATASETS = ("shapes", "cifar10", "cifar100", "imagenet")
MEAN_STD = {
    "shapes": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class DatasetMissingError(ValueError):
    """A dataset directory is missing or does not have the expected layout."""


def data_root() -> Path:
    """Root directory of the datasets: ``$DATA_ROOT`` if set, else ``./datasets``."""
    return Path(os.environ.get("DATA_ROOT") or "datasets")


# ----------------------------------------------------------------------------------------------
# Shapes


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, angle: float,
                color: tuple[int, int, int], thickness: int) -> None:
    def polygon(n: int, radius: float, phase: float) -> list[tuple[float, float]]:
        return [(cx + radius * math.cos(phase + 2 * math.pi * k / n),
                 cy + radius * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]

    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=color, width=thickness)
    elif kind == "square":
        draw.polygon(polygon(4, r * 1.2, angle + math.pi / 4), fill=color)
    elif kind == "triangle":
        draw.polygon(polygon(3, r * 1.25, angle), fill=color)
    elif kind == "star":
        outer, inner = polygon(5, r * 1.3, angle), polygon(5, r * 0.5, angle + math.pi / 5)
        draw.polygon([p for pair in zip(outer, inner) for p in pair], fill=color)
    elif kind == "cross":
        for a in (angle, angle + math.pi / 2):
            dx, dy = r * math.cos(a), r * math.sin(a)
            draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=color, width=thickness)
    else:  # pragma: no cover - SHAPE_CLASSES is closed
        raise ValueError(kind)


def render_shape(kind: str, image_size: int, rng: random.Random) -> Image.Image:
    """One RGB image of ``kind``: a bright shape of random colour, position, size and rotation on a
    dark background of random colour (the class is the shape, never the colour)."""
    bg = tuple(rng.randrange(0, 70) for _ in range(3))
    fg = tuple(rng.randrange(150, 256) for _ in range(3))
    img = Image.new("RGB", (image_size, image_size), bg)
    r = image_size * rng.uniform(0.22, 0.34)
    cx = rng.uniform(r * 1.1, image_size - r * 1.1)
    cy = rng.uniform(r * 1.1, image_size - r * 1.1)
    thickness = max(2, round(r * 0.35))
    _draw_shape(ImageDraw.Draw(img), kind, cx, cy, r, rng.uniform(0, 2 * math.pi), fg, thickness)
    return img


SHAPES_VERSION = 2  # bump when rendering changes: sets on disk are named by it, so stale ones are never read


class ShapesDataset(Dataset):
    """Procedural shape classification set (``SHAPE_CLASSES``), written to disk once.

    Layout: ``<root>/v<version>-<split>-<image_size>px-seed<seed>/{images/NNNNN.png, labels.txt}``; the
    directory appears atomically (written in a temp dir, then renamed), so concurrent processes
    and interrupted writes never see a partial set. Items are ``(PIL RGB image, int label)``.
    """

    classes = SHAPE_CLASSES

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None,
                 image_size: int = 32, seed: int = 0, size: int | None = None) -> None:
        if split not in SPLIT_SIZES:
            raise ValueError(f"unknown shapes split {split!r}; expected one of {sorted(SPLIT_SIZES)}")
        if image_size < 16:
            raise ValueError(f"shapes image_size must be >= 16, got {image_size}")
        self.root, self.split, self.transform = Path(root), split, transform
        self.image_size, self.seed = image_size, seed
        self.size = SPLIT_SIZES[split] if size is None else int(size)
        name = f"v{SHAPES_VERSION}-{split}-{image_size}px-seed{seed}" + ("" if size is None else f"-n{self.size}")
        self.dir = self.root / name
        if not (self.dir / "labels.txt").is_file():
            self._generate()
        self.samples = self._read_labels()

    def _generate(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        split_seed = {"train": 0, "test": 1}[self.split]
        rng = random.Random(f"shapes/{self.seed}/{split_seed}/{self.image_size}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.dir.name}.", dir=self.root))
        try:
            (tmp / "images").mkdir()
            lines = []
            for i in range(self.size):
                label = i % len(SHAPE_CLASSES)
                render_shape(SHAPE_CLASSES[label], self.image_size, rng).save(tmp / "images" / f"{i:05d}.png")
                lines.append(f"images/{i:05d}.png {label}\n")
            (tmp / "labels.txt").write_text("".join(lines))
            try:
                tmp.rename(self.dir)
            except OSError:  # another process finished first: keep its copy
                if not (self.dir / "labels.txt").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _read_labels(self) -> list[tuple[Path, int]]:
        samples = []
        for line in (self.dir / "labels.txt").read_text().splitlines():
            rel, label = line.rsplit(" ", 1)
            samples.append((self.dir / rel, int(label)))
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        with Image.open(path) as f:
            img = f.convert("RGB")
        return (self.transform(img) if self.transform is not None else img), label


# ----------------------------------------------------------------------------------------------
# Augmentations


def simclr_augmentation(image_size: int, dataset: str = "cifar100", blur: bool | None = None) -> T.Compose:
    """SimCLR augmentation of one view.

    RandomResizedCrop (scale 0.2-1), horizontal flip, colour jitter 0.4/0.4/0.4/0.1 with p=0.8,
    grayscale with p=0.2, and on ImageNet (``blur=None`` means "if dataset is imagenet") Gaussian
    blur with p=0.5 (kernel ~10% of the image, sigma 0.1-2.0); then normalisation.
    """
    if dataset not in MEAN_STD:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(MEAN_STD)}")
    mean, std = MEAN_STD[dataset]
    ops: list = [
        T.RandomResizedCrop(image_size, scale=(0.2, 1.0)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    if blur if blur is not None else dataset == "imagenet":
        kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)
        ops.append(T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


def eval_transform(image_size: int, dataset: str = "cifar100") -> T.Compose:
    """Deterministic evaluation transform: resize (and centre-crop for ImageNet), normalise."""
    mean, std = MEAN_STD[dataset]
    if dataset == "imagenet":
        resize = [T.Resize(int(round(image_size / 0.875))), T.CenterCrop(image_size)]
    else:
        resize = [T.Resize((image_size, image_size))]
    return T.Compose([*resize, T.ToTensor(), T.Normalize(mean, std)])


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


# ----------------------------------------------------------------------------------------------
# Pretraining datasets

_LAYOUTS = {
    "cifar10": "<DATA_ROOT>/cifar-10-batches-py/ (torchvision's CIFAR10 format: data_batch_1..5, test_batch)",
    "cifar100": "<DATA_ROOT>/cifar-100-python/ (torchvision's CIFAR100 format: train, test, meta)",
    "imagenet": "<DATA_ROOT>/imagenet/train/<class>/<image> (ImageNet-style folders)",
}


def _require(path: Path, dataset: str) -> None:
    if not path.exists():
        raise DatasetMissingError(
            f"dataset {dataset!r} not found at {path}; expected {_LAYOUTS[dataset]} "
            "(set DATA_ROOT, or use DEMO=1 for the built-in shapes set)"
        )


def _unhashed(cls: type) -> type:
    """A torchvision CIFAR reader whose files are checked for presence, not md5 (a corrupt file still
    fails to unpickle); lets small hand-made files in the same format load too."""
    return type(cls.__name__, (cls,), {
        "__doc__": f"torchvision's {cls.__name__} reader without md5 checks.",
        "train_list": [[name, None] for name, _ in cls.train_list],
        "test_list": [[name, None] for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None},
    })


CIFAR10 = _unhashed(tvd.CIFAR10)
CIFAR100 = _unhashed(tvd.CIFAR100)


class Flowers102(tvd.Flowers102):
    """torchvision's Flowers-102 reader checking ``imagelabels.mat`` / ``setid.mat`` for presence, not md5
    (a corrupt file still fails to load), like the CIFAR readers above."""

    _file_dict = {key: (name, None) for key, (name, _) in tvd.Flowers102._file_dict.items()}


IMAGEFOLDER = "imagefolder:"
IMAGEFOLDER_LAYOUT = "PATH/train/<class>/<image> and PATH/val/<class>/<image> (or test/), the same class folders"


def is_image_folder(name: str) -> bool:
    """Whether ``name`` is a user folder dataset, ``imagefolder:PATH``."""
    return name.startswith(IMAGEFOLDER)


def image_folder(name: str, split: str) -> tvd.ImageFolder:
    """Split ``train`` (``PATH/train``) or ``test`` (``PATH/val``, else ``PATH/test``) of ``imagefolder:PATH``.

    A missing folder, a split without class folders or images, or test classes that differ from the
    training classes is a one-line :class:`DatasetMissingError` naming what is missing.
    """
    path = Path(name[len(IMAGEFOLDER):]).expanduser()
    where = f"{name}: expected {IMAGEFOLDER_LAYOUT}"
    if not name[len(IMAGEFOLDER):] or not path.is_dir():
        raise DatasetMissingError(f"{where}; {path} is not a folder")
    candidates = ["train"] if split == "train" else ["val", "test"]
    found = [path / c for c in candidates if (path / c).is_dir()]
    if not found:
        raise DatasetMissingError(f"{where}; {path} has no {' or '.join(f'{c}/' for c in candidates)} folder")
    try:
        ds = tvd.ImageFolder(str(found[0]))
    except (FileNotFoundError, OSError) as e:
        raise DatasetMissingError(f"{where}; {found[0]}: {str(e).splitlines()[0]}") from None
    if split != "train":
        train_classes = sorted(p.name for p in (path / "train").iterdir() if p.is_dir()) \
            if (path / "train").is_dir() else ds.classes
        if ds.classes != train_classes:
            missing, extra = sorted(set(train_classes) - set(ds.classes)), sorted(set(ds.classes) - set(train_classes))
            raise DatasetMissingError(f"{where}; {found[0]} has other class folders than train/ "
                                      f"(missing {missing}, extra {extra})")
    return ds


def build_pretrain_dataset(name: str, root: str | Path | None = None, image_size: int = 32,
                           seed: int = 0) -> Dataset:
    """The unlabelled training images of ``name`` (items are ``(PIL image, label)``; labels unused)."""
    root = Path(root) if root is not None else data_root()
    if name == "shapes":
        return ShapesDataset(root / "shapes", "train", image_size=image_size, seed=seed)
    if name in ("cifar10", "cifar100"):
        folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
        _require(root / folder, name)
        cls = CIFAR10 if name == "cifar10" else CIFAR100
        try:
            return cls(str(root), train=True, download=False)
        except (RuntimeError, OSError, pickle.UnpicklingError, EOFError) as e:
            raise DatasetMissingError(f"dataset {name!r} at {root / folder} is unreadable ({e}); "
                                      f"expected {_LAYOUTS[name]}") from e
    if name == "imagenet":
        _require(root / "imagenet" / "train", name)
        return tvd.ImageFolder(str(root / "imagenet" / "train"))
    if is_image_folder(name):
        return image_folder(name, "train")
    raise ValueError(f"unknown dataset {name!r}; expected one of {PRETRAIN_DATASETS}")
