"""Detection datasets: Detectron2's built-in VOC/COCO names, your own COCO-format sets, the demo sets.

A COCO-format set of your own is named on the command line as ``coco:NAME=ANNOTATIONS.json,IMAGES_DIR``
(:class:`CocoSet`); it is checked (the annotation file's keys, categories, every image on disk) and
registered with Detectron2's COCO loader under ``NAME`` in every process that needs it.

``shapes_voc`` and ``shapes_coco`` are small sets of procedural images (squares, circles, triangles
on a noisy background) with boxes and polygons, deterministic from a seed. They are written to
disk in the real VOCdevkit layout (XML, ImageSets, JPEGImages) and COCO JSON format and registered
through Detectron2's own VOC and COCO loaders, so the real parsers and evaluators run on them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw

import detection.d2compat  # noqa: F401  (before any detectron2 import)

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.datasets.pascal_voc import register_pascal_voc

SHAPE_CLASSES = ("square", "circle", "triangle")
DEMO_SEED = 0
DEMO_IMAGE_SIZE = 128
DEMO_SPLITS = {"train": 240, "test": 48}

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
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetMissingError(FileNotFoundError):
    """A dataset the config names is not on disk."""


def datasets_root() -> Path:
    """Detectron2's dataset root: ``$DETECTRON2_DATASETS`` (default ``datasets``)."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def check_builtin(name: str) -> None:
    """Raise :class:`DatasetMissingError` naming path, layout and ``DEMO=1`` if ``name`` is not on disk."""
    if name not in BUILTIN_LAYOUT:
        return
    probes, layout = BUILTIN_LAYOUT[name]
    root = datasets_root()
    missing = [p for p in probes if not (root / p).exists()]
    if missing:
        raise DatasetMissingError(
            f"dataset {name!r} not found: {root / missing[0]} is missing; expected {root}/{layout} "
            f"(DETECTRON2_DATASETS={root}); download it there, set DETECTRON2_DATASETS, or run with DEMO=1 "
            "(--demo) for the built-in demo sets"
        )


def check_dataset(name: str) -> None:
    """Built-in layout (:func:`check_builtin`), registration, then the files of a COCO-format set: both its
    annotation file and its image folder must exist, so that neither is found missing mid-training."""
    check_builtin(name)
    if name not in DatasetCatalog.list():
        raise DatasetMissingError(f"dataset {name!r} is not registered with Detectron2")
    meta = MetadataCatalog.get(name)
    json_file, image_root = getattr(meta, "json_file", None), getattr(meta, "image_root", None)
    if json_file and not Path(json_file).is_file():
        raise DatasetMissingError(f"COCO-format dataset {name!r}: annotation file {json_file} does not exist")
    if image_root and not Path(image_root).is_dir():
        raise DatasetMissingError(f"COCO-format dataset {name!r}: image folder {image_root} does not exist "
                                  f"(annotations: {json_file}); put the images there")


class DatasetSpecError(ValueError):
    """A ``coco:NAME=ANNOTATIONS.json,IMAGES_DIR`` argument that is malformed or names an unusable set."""


COCO_SET_FORM = "coco:NAME=ANNOTATIONS.json,IMAGES_DIR"


@dataclass(frozen=True)
class CocoSet:
    """A COCO-format detection set on disk, registered with Detectron2 under ``name``."""

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
            raise DatasetSpecError(f"dataset {text!r}: expected {COCO_SET_FORM}")
        if name in BUILTIN_LAYOUT or name.startswith(("shapes_", "coco_20", "voc_20")):
            raise DatasetSpecError(f"dataset {text!r}: {name!r} is a built-in dataset name; pick another NAME")
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
            raise DatasetSpecError(f"dataset {self.name!r}: {self.json_file} is not JSON ({e})") from None
        missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
        if missing:
            raise DatasetSpecError(f"dataset {self.name!r}: {self.json_file} is not a COCO annotation file "
                                   f"(no {', '.join(repr(k) for k in missing)})")
        if not data["categories"] or not data["images"]:
            raise DatasetSpecError(f"dataset {self.name!r}: {self.json_file} lists no "
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

    def register(self) -> None:
        """Register with Detectron2's COCO loader (once per process; a name taken by another set is refused)."""
        if self.name in DatasetCatalog.list():
            meta = MetadataCatalog.get(self.name)
            if (getattr(meta, "json_file", None), getattr(meta, "image_root", None)) != (self.json_file,
                                                                                            self.image_root):
                raise DatasetSpecError(f"dataset name {self.name!r} is already registered with other files; "
                                       f"pick another NAME")
            return
        register_coco_instances(self.name, {}, self.json_file, self.image_root)


def register_job_datasets(demo: bool, coco_sets: dict[str, dict[str, Any]], datasets_dir: str) -> None:
    """Register what a job reads, in the process that runs it: the demo sets (``demo``) and its COCO-format sets
    (``{split: {"name", "json", "images", ...}}``, as :meth:`CocoSet.describe` described them)."""
    if demo:
        register_shapes(datasets_dir)
    for s in coco_sets.values():
        CocoSet(s["name"], s["json"], s["images"]).register()


def image_files_of(name: str) -> list[str]:
    """The image files of a registered set, read without parsing its annotations.

    VOC-format sets: the split file's ids under ``JPEGImages``. COCO-format sets: every image in the image
    folder (images without annotations included; the annotation file, hundreds of MB for COCO train, is
    left for the training loader to read once). Other sets: through their Detectron2 loader.
    """
    meta = MetadataCatalog.get(name)
    dirname, split, image_root = (getattr(meta, k, None) for k in ("dirname", "split", "image_root"))
    if dirname and split:
        ids = (Path(dirname) / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        return [str(Path(dirname) / "JPEGImages" / f"{i}.jpg") for i in ids]
    if image_root:
        return sorted(str(p) for p in Path(image_root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return [d["file_name"] for d in DatasetCatalog.get(name)]


# ---------------------------------------------------------------- procedural shapes


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of one shape (a circle is a 24-gon)."""
    n = {"square": 4, "triangle": 3, "circle": 24}[kind]
    start = angle if kind != "circle" else 0.0
    return [(cx + r * math.cos(start + 2 * math.pi * k / n), cy + r * math.sin(start + 2 * math.pi * k / n))
            for k in range(n)]


def _overlaps(box: Sequence[float], boxes: list[Sequence[float]], margin: float = 2.0) -> bool:
    return any(box[0] < b[2] + margin and b[0] < box[2] + margin and box[1] < b[3] + margin
               and b[1] < box[3] + margin for b in boxes)


def make_shapes_image(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[dict]]:
    """One image and its objects ``{"cls", "polygon", "box" (x0, y0, x1, y1)}``."""
    background = rng.integers(0, 256, size=3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    objects: list[dict] = []
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(20):
            kind = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
            r = float(rng.uniform(0.08, 0.22) * size)
            cx, cy = (float(v) for v in rng.uniform(r + 1, size - r - 1, size=2))
            poly = _polygon(kind, cx, cy, r, float(rng.uniform(0, 2 * math.pi)))
            xs, ys = [p[0] for p in poly], [p[1] for p in poly]
            box = (max(0.0, min(xs)), max(0.0, min(ys)), min(float(size), max(xs)), min(float(size), max(ys)))
            if not _overlaps(box, [o["box"] for o in objects]):
                break
        else:
            continue
        color = tuple(int(c) for c in (background + rng.integers(80, 176, size=3)) % 256)
        draw.polygon(poly, fill=color)
        objects.append({"cls": kind, "polygon": poly, "box": box})
    return image, objects


def _generate(seed: int, splits: dict[str, int], size: int):
    """Yield ``(split, index, image, objects)`` deterministically from ``seed``."""
    for s, (split, count) in enumerate(sorted(splits.items())):
        rng = np.random.default_rng([seed, s])
        for i in range(count):
            image, objects = make_shapes_image(rng, size)
            yield split, i, image, objects


def _voc_xml(file_id: str, size: int, objects: list[dict]) -> ET.ElementTree:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "shapes_voc"
    ET.SubElement(root, "filename").text = f"{file_id}.jpg"
    sz = ET.SubElement(root, "size")
    for tag, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(sz, tag).text = str(value)
    for obj in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = obj["cls"]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = "0"
        ET.SubElement(node, "difficult").text = "0"
        bb = ET.SubElement(node, "bndbox")
        x0, y0, x1, y1 = obj["box"]
        # VOC boxes are 1-based inclusive pixel indices.
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bb, tag).text = str(int(round(value)))
    return ET.ElementTree(root)


def _write_voc(dest: Path, seed: int, splits: dict[str, int], size: int) -> None:
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    ids: dict[str, list[str]] = {split: [] for split in splits}
    for split, i, image, objects in _generate(seed, splits, size):
        file_id = f"{split}_{i:05d}"
        image.save(dest / "JPEGImages" / f"{file_id}.jpg", quality=95)
        _voc_xml(file_id, size, objects).write(dest / "Annotations" / f"{file_id}.xml")
        ids[split].append(file_id)
    for split, names in ids.items():
        (dest / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")


def _write_coco(dest: Path, seed: int, splits: dict[str, int], size: int) -> None:
    categories = [{"id": k + 1, "name": c, "supercategory": "shape"} for k, c in enumerate(SHAPE_CLASSES)]
    (dest / "annotations").mkdir(parents=True, exist_ok=True)
    data = {split: {"images": [], "annotations": [], "categories": categories} for split in splits}
    for split, i, image, objects in _generate(seed, splits, size):
        (dest / split).mkdir(exist_ok=True)
        file_name = f"{i:05d}.jpg"
        image.save(dest / split / file_name, quality=95)
        d = data[split]
        image_id = i + 1
        d["images"].append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for obj in objects:
            x0, y0, x1, y1 = obj["box"]
            flat = [round(v, 2) for p in obj["polygon"] for v in p]
            area = 0.5 * abs(sum(p[0] * q[1] - q[0] * p[1]
                                 for p, q in zip(obj["polygon"], obj["polygon"][1:] + obj["polygon"][:1])))
            d["annotations"].append({
                "id": len(d["annotations"]) + 1, "image_id": image_id,
                "category_id": SHAPE_CLASSES.index(obj["cls"]) + 1,
                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                "area": round(area, 2), "segmentation": [flat], "iscrowd": 0,
            })
    for split, d in data.items():
        (dest / "annotations" / f"instances_{split}.json").write_text(json.dumps(d))


def write_shapes(dest: str | os.PathLike, fmt: str, seed: int = DEMO_SEED,
                 splits: dict[str, int] | None = None, size: int = DEMO_IMAGE_SIZE) -> Path:
    """Write a shapes set in ``fmt`` ("voc" or "coco") at ``dest`` unless it is already there.

    The set is built in a temporary sibling directory and renamed into place, so a concurrent or
    interrupted writer never leaves a half-written set at ``dest``.
    """
    dest = Path(dest)
    if (dest / "DONE").exists():
        return dest
    writer = {"voc": _write_voc, "coco": _write_coco}[fmt]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        writer(tmp, seed, dict(splits or DEMO_SPLITS), size)
        (tmp / "DONE").write_text(json.dumps({"seed": seed, "size": size, "splits": splits or DEMO_SPLITS}))
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / "DONE").exists():  # not a concurrent writer that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def register_shapes(root: str | os.PathLike) -> dict[str, str]:
    """Write (if needed) and register the demo sets under ``root``; returns {name: directory}.

    Names: ``shapes_voc_train``/``shapes_voc_test`` (Detectron2's VOC loader, evaluator
    ``pascal_voc``) and ``shapes_coco_train``/``shapes_coco_test`` (its COCO JSON loader).
    """
    root = Path(root)
    voc = write_shapes(root / "shapes_voc", "voc")
    coco = write_shapes(root / "shapes_coco", "coco")
    for split in DEMO_SPLITS:
        name = f"shapes_voc_{split}"
        if name not in DatasetCatalog.list():
            register_pascal_voc(name, str(voc), split, 2012, class_names=list(SHAPE_CLASSES))
            MetadataCatalog.get(name).evaluator_type = "pascal_voc"
        name = f"shapes_coco_{split}"
        if name not in DatasetCatalog.list():
            register_coco_instances(name, {}, str(coco / "annotations" / f"instances_{split}.json"),
                                    str(coco / split))
    return {"shapes_voc": str(voc), "shapes_coco": str(coco)}
