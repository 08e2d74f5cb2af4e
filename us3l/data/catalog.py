"""The datasets the stages read, by name: where each is expected on disk and how it is built.

Recognition (pretraining, linear and kNN evaluation): :data:`SPECS` names each dataset's folder under the
data root, its layout and classes. :func:`build_dataset` builds its train split (the protocol's training
data: ``train+val`` where the dataset has a validation split) or test split; :func:`build_pretrain_dataset`
its training images for pretraining. torchvision's readers (``download=False``; CIFAR and Flowers-102 check
their files' presence rather than their md5), ImageNet's folders, the demo shapes, and your own folders
``imagefolder:PATH``.

Detection: Detectron2's built-in VOC/COCO names and their layouts under ``DETECTRON2_DATASETS``
(:func:`check_builtin`), and your own COCO-format sets ``coco:NAME=ANNOTATIONS.json,IMAGES_DIR``
(:class:`CocoSet`). Registering them with Detectron2 is ``detection/datasets.py``'s job.

Data that is not there raises :class:`DatasetMissingError` naming the path and the expected layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import ConcatDataset, Dataset
from torchvision import datasets as tvd

from us3l.errors import UsageError

from .root import DatasetMissingError, data_root, detection_root
from .shapes import ShapesDataset

# ---------------------------------------------------------------- recognition

SPLITS = ("train", "test")
PRETRAIN_DATASETS = ("shapes", "cifar10", "cifar100", "imagenet")
SHAPES_SIZE = 32  # the demo shapes' native size (the demo pretraining's image_size), read by evaluation


@dataclass(frozen=True)
class DatasetSpec:
    """How one recognition dataset is found and split."""

    name: str
    folder: str  # under the data root
    layout: str  # what the folder must contain
    num_classes: int  # 0: read from the built dataset
    demo: bool = False
    eval_size: int | None = None  # the input size its evaluation protocol fixes, if any


SPECS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("cifar10", "cifar-10-batches-py", "data_batch_1..5, test_batch, batches.meta", 10),
        DatasetSpec("cifar100", "cifar-100-python", "train, test, meta", 100),
        DatasetSpec("flowers102", "flowers-102", "jpg/, imagelabels.mat, setid.mat", 102),
        DatasetSpec("pets", "oxford-iiit-pet", "images/, annotations/trainval.txt, annotations/test.txt", 37),
        DatasetSpec("dtd", "dtd/dtd", "images/, labels/train1.txt, val1.txt, test1.txt", 47),
        # ImageNet linear evaluation: resize 256, centre crop 224.
        DatasetSpec("imagenet", "imagenet", "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (ImageFolder)", 1000,
                    eval_size=224),
        DatasetSpec("shapes", "shapes", "generated on first use (us3l.data.ShapesDataset)", 0, demo=True),
    ]
}

IMAGEFOLDER = "imagefolder:"
IMAGEFOLDER_LAYOUT = "PATH/train/<class>/<image> and PATH/val/<class>/<image> (or test/), the same class folders"


def is_image_folder(name: str) -> bool:
    """Whether ``name`` is a user folder dataset, ``imagefolder:PATH``."""
    return name.startswith(IMAGEFOLDER)


def spec(name: str) -> DatasetSpec:
    """The spec of dataset ``name`` (a known name or ``imagefolder:PATH``), or ``ValueError`` listing them."""
    if is_image_folder(name):
        return DatasetSpec(name, name[len(IMAGEFOLDER):], IMAGEFOLDER_LAYOUT, 0)
    if name not in SPECS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(SPECS)} or imagefolder:PATH")
    return SPECS[name]


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


def _missing(name: str, folder: Path, problem: str) -> DatasetMissingError:
    return DatasetMissingError(
        f"dataset {name!r} {problem}; expected {folder} holding {SPECS[name].layout} (torchvision's layout; "
        f"download it there, or set DATA_ROOT / --data-root), or run the demo on the built-in data with DEMO=1")


def _read(name: str, root: Path, split: str, transform: Callable | None) -> Dataset:
    r = str(root)
    if name == "cifar10":
        return CIFAR10(r, train=split == "train", transform=transform, download=False)
    if name == "cifar100":
        return CIFAR100(r, train=split == "train", transform=transform, download=False)
    if name == "flowers102":
        if split == "train":
            return ConcatDataset([Flowers102(r, s, transform=transform, download=False) for s in ("train", "val")])
        return Flowers102(r, "test", transform=transform, download=False)
    if name == "pets":
        return tvd.OxfordIIITPet(r, "trainval" if split == "train" else "test", transform=transform, download=False)
    if name == "dtd":
        if split == "train":
            return ConcatDataset([tvd.DTD(r, s, transform=transform, download=False) for s in ("train", "val")])
        return tvd.DTD(r, "test", transform=transform, download=False)
    if name == "imagenet":  # torchvision's default loader converts ImageNet's greyscale and CMYK JPEGs to RGB
        return tvd.ImageFolder(str(root / "imagenet" / ("train" if split == "train" else "val")), transform=transform)
    raise AssertionError(name)  # spec() admits only the names above


def build_dataset(name: str, split: str, transform: Callable | None = None,
                  root: str | os.PathLike | None = None) -> Dataset:
    """Split ``split`` ("train" or "test") of dataset ``name`` under ``root`` (default: the data root)."""
    spec(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if is_image_folder(name):
        ds = image_folder(name, split)
        ds.transform = transform
        return ds
    root = Path(root) if root is not None else data_root()
    if name == "shapes":
        return ShapesDataset(root / "shapes", split=split, transform=transform, image_size=SHAPES_SIZE)
    folder = root / SPECS[name].folder
    if not folder.is_dir():
        raise _missing(name, folder, f"not found at {folder}")
    try:
        return _read(name, root, split, transform)
    # torchvision's "Dataset not found or corrupted", unreadable files, corrupt pickles
    except (RuntimeError, OSError, pickle.UnpicklingError, EOFError) as e:
        cause = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _missing(name, folder, f"at {folder} is unreadable ({cause})") from None


def build_pretrain_dataset(name: str, root: str | Path | None = None, image_size: int = 32,
                           seed: int = 0) -> Dataset:
    """The training images of ``name`` for pretraining (items are ``(PIL image, label)``; labels unused); the demo
    shapes at ``image_size`` from ``seed``."""
    if name not in PRETRAIN_DATASETS and not is_image_folder(name):
        raise ValueError(f"unknown dataset {name!r}; expected one of {PRETRAIN_DATASETS}")
    if name == "shapes":
        root = Path(root) if root is not None else data_root()
        return ShapesDataset(root / "shapes", "train", image_size=image_size, seed=seed)
    return build_dataset(name, "train", root=root)


def num_classes(name: str, dataset: Dataset) -> int:
    """Number of classes of a built dataset."""
    return spec(name).num_classes or len(dataset.classes)


def data_folders(name: str, root: str | os.PathLike, built: list[Dataset]) -> list[Path]:
    """The folders holding the files of ``built`` splits of ``name``."""
    if name == "shapes":
        return sorted({ds.dir for ds in built})
    if is_image_folder(name):
        return [Path(spec(name).folder)]
    return [Path(root) / SPECS[name].folder]


# ---------------------------------------------------------------- detection

# Detectron2's built-in names this project uses: (paths that must exist under DETECTRON2_DATASETS, layout).
BUILTIN_LAYOUT = {
    "voc_2007_trainval": (("VOC2007/JPEGImages", "VOC2007/Annotations", "VOC2007/ImageSets/Main/trainval.txt"),
                          "VOC2007/{JPEGImages,Annotations,ImageSets/Main/trainval.txt}"),
    "voc_2012_trainval": (("VOC2012/JPEGImages", "VOC2012/Annotations", "VOC2012/ImageSets/Main/trainval.txt"),
                          "VOC2012/{JPEGImages,Annotations,ImageSets/Main/trainval.txt}"),
    "voc_2007_test": (("VOC2007/JPEGImages", "VOC2007/Annotations", "VOC2007/ImageSets/Main/test.txt"),
                      "VOC2007/{JPEGImages,Annotations,ImageSets/Main/test.txt}"),
    "coco_2017_train": (("coco/annotations/instances_train2017.json", "coco/train2017"),
                        "coco/{train2017/,annotations/instances_train2017.json}"),
    "coco_2017_val": (("coco/annotations/instances_val2017.json", "coco/val2017"),
                      "coco/{val2017/,annotations/instances_val2017.json}"),
}


def check_builtin(name: str) -> None:
    """Raise :class:`DatasetMissingError` naming path, layout and ``DEMO=1`` if the built-in ``name`` is not on
    disk (other names pass)."""
    if name not in BUILTIN_LAYOUT:
        return
    probes, layout = BUILTIN_LAYOUT[name]
    root = detection_root()
    missing = [p for p in probes if not (root / p).exists()]
    if missing:
        raise DatasetMissingError(
            f"dataset {name!r} not found: {root / missing[0]} is missing; expected {root}/{layout} "
            f"(DETECTRON2_DATASETS={root}); download it there, set DETECTRON2_DATASETS, or run with DEMO=1 "
            "(--demo) for the built-in demo sets"
        )


COCO_SET_FORM = "coco:NAME=ANNOTATIONS.json,IMAGES_DIR"


@dataclass(frozen=True)
class CocoSet:
    """A COCO-format detection set of your own on disk, named ``name``."""

    name: str
    json_file: str
    image_root: str

    @classmethod
    def parse(cls, text: str) -> CocoSet:
        """``coco:NAME=ANNOTATIONS.json,IMAGES_DIR`` (paths made absolute); the files must exist."""
        kind, _, rest = text.partition(":")
        name, _, paths = rest.partition("=")
        json_file, _, image_root = paths.partition(",")
        if kind != "coco" or not name or not json_file or not image_root or "," in image_root:
            raise UsageError(f"dataset {text!r}: expected {COCO_SET_FORM}")
        if name in BUILTIN_LAYOUT or name.startswith(("shapes_", "coco_20", "voc_20")):
            raise UsageError(f"dataset {text!r}: {name!r} is a built-in dataset name; pick another NAME")
        if not Path(json_file).is_file():
            raise DatasetMissingError(f"dataset {name!r}: annotation file {json_file} does not exist")
        if not Path(image_root).is_dir():
            raise DatasetMissingError(f"dataset {name!r}: image folder {image_root} does not exist")
        return cls(name, str(Path(json_file).resolve()), str(Path(image_root).resolve()))

    def describe(self) -> dict[str, Any]:
        """Read the annotation file once: its categories (names in id order), counts, whether it has masks,
        its sha256; every image it lists must be in the image folder (one-line errors otherwise)."""
        raw = Path(self.json_file).read_bytes()
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise UsageError(f"dataset {self.name!r}: {self.json_file} is not JSON ({e})") from None
        missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
        if missing:
            raise UsageError(f"dataset {self.name!r}: {self.json_file} is not a COCO annotation file "
                                   f"(no {', '.join(repr(k) for k in missing)})")
        if not data["categories"] or not data["images"]:
            raise UsageError(f"dataset {self.name!r}: {self.json_file} lists no "
                                   f"{'categories' if not data['categories'] else 'images'}")
        absent = [im["file_name"] for im in data["images"] if not (Path(self.image_root) / im["file_name"]).is_file()]
        if absent:
            raise DatasetMissingError(f"dataset {self.name!r}: {len(absent)} of {len(data['images'])} images listed in "
                                      f"{self.json_file} are not in {self.image_root} (first: {absent[0]})")
        return {"json": self.json_file, "images": self.image_root,
                "categories": [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])],
                "num_images": len(data["images"]), "num_annotations": len(data["annotations"]),
                "segmentation": any(a.get("segmentation") for a in data["annotations"]),
                "json_sha256": hashlib.sha256(raw).hexdigest()}
