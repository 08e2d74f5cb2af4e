"""The demo data: procedural coloured shapes, deterministic from a seed, written to disk once.

- Classification (:class:`ShapesDataset`, :data:`SHAPE_CLASSES`): one bright shape on a dark background
  per image, PNG files plus ``labels.txt``; the demo pretraining and linear/kNN evaluation read it.
- Detection (:func:`write_shapes`, :data:`DETECTION_CLASSES`): squares, circles and triangles on a noisy
  background with boxes and polygons, in the real VOCdevkit layout (XML, ImageSets, JPEGImages) or COCO JSON,
  so Detectron2's own parsers and evaluators run on them (registration: ``detection/datasets.py``).

Both renderers draw from :func:`regular_polygon` and write through one atomic directory writer. Their pixels
are part of the demo's results: any change to a random draw or a drawing call changes the demo checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

Point = tuple[float, float]

SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring", "star")
SPLIT_SIZES = {"train": 2400, "test": 600}
SHAPES_VERSION = 2  # bump when rendering changes: sets on disk are named by it, so stale ones are never read

DETECTION_CLASSES = ("square", "circle", "triangle")
DETECTION_SEED = 0
DETECTION_IMAGE_SIZE = 128
DETECTION_SPLITS = {"train": 240, "test": 48}


def regular_polygon(cx: float, cy: float, r: float, n: int, phase: float) -> list[Point]:
    """The ``n`` vertices of a regular polygon of circumradius ``r`` centred at (cx, cy), the first at ``phase``."""
    return [(cx + r * math.cos(phase + 2 * math.pi * k / n), cy + r * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def _write_once(dest: Path, marker: str, fill: Callable[[Path], None]) -> None:
    """Unless ``dest/marker`` exists, ``fill`` a temporary sibling of ``dest`` (writing ``marker`` last) and rename
    it to ``dest``: concurrent and interrupted writers never leave a partial directory at ``dest``."""
    if (dest / marker).is_file():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        fill(tmp)
        try:
            tmp.rename(dest)
        except OSError:  # another process finished first: keep its copy
            if not (dest / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- classification


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, angle: float,
                color: tuple[int, ...], thickness: int) -> None:
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=color, width=thickness)
    elif kind == "square":
        draw.polygon(regular_polygon(cx, cy, r * 1.2, 4, angle + math.pi / 4), fill=color)
    elif kind == "triangle":
        draw.polygon(regular_polygon(cx, cy, r * 1.25, 3, angle), fill=color)
    elif kind == "star":
        outer = regular_polygon(cx, cy, r * 1.3, 5, angle)
        inner = regular_polygon(cx, cy, r * 0.5, 5, angle + math.pi / 5)
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
        _write_once(self.dir, "labels.txt", self._fill)
        self.samples = self._read_labels()

    def _fill(self, tmp: Path) -> None:
        split_seed = {"train": 0, "test": 1}[self.split]
        rng = random.Random(f"shapes/{self.seed}/{split_seed}/{self.image_size}")
        (tmp / "images").mkdir()
        lines = []
        for i in range(self.size):
            label = i % len(SHAPE_CLASSES)
            render_shape(SHAPE_CLASSES[label], self.image_size, rng).save(tmp / "images" / f"{i:05d}.png")
            lines.append(f"images/{i:05d}.png {label}\n")
        (tmp / "labels.txt").write_text("".join(lines))

    def _read_labels(self) -> list[tuple[Path, int]]:
        samples = []
        for line in (self.dir / "labels.txt").read_text().splitlines():
            rel, label = line.rsplit(" ", 1)
            samples.append((self.dir / rel, int(label)))
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple:
        path, label = self.samples[index]
        with Image.open(path) as f:
            img = f.convert("RGB")
        return (self.transform(img) if self.transform is not None else img), label


# ---------------------------------------------------------------- detection


def _detection_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[Point]:
    """Vertices of one detection shape (a circle is a 24-gon, unrotated)."""
    n = {"square": 4, "triangle": 3, "circle": 24}[kind]
    return regular_polygon(cx, cy, r, n, angle if kind != "circle" else 0.0)


def _overlaps(box: Sequence[float], boxes: list[Sequence[float]], margin: float = 2.0) -> bool:
    return any(box[0] < b[2] + margin and b[0] < box[2] + margin and box[1] < b[3] + margin
               and b[1] < box[3] + margin for b in boxes)


def render_detection_image(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[dict]]:
    """One image and its objects ``{"cls", "polygon", "box" (x0, y0, x1, y1)}``: up to three non-overlapping
    shapes of ``DETECTION_CLASSES`` on a noisy background."""
    background = rng.integers(0, 256, size=3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    objects: list[dict] = []
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(20):
            kind = DETECTION_CLASSES[int(rng.integers(len(DETECTION_CLASSES)))]
            r = float(rng.uniform(0.08, 0.22) * size)
            cx, cy = (float(v) for v in rng.uniform(r + 1, size - r - 1, size=2))
            poly = _detection_polygon(kind, cx, cy, r, float(rng.uniform(0, 2 * math.pi)))
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


def _detection_images(seed: int, splits: dict[str, int], size: int) -> Iterator[tuple[str, int, Image.Image, list]]:
    """Yield ``(split, index, image, objects)`` deterministically from ``seed``."""
    for s, (split, count) in enumerate(sorted(splits.items())):
        rng = np.random.default_rng([seed, s])
        for i in range(count):
            image, objects = render_detection_image(rng, size)
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
    for split, i, image, objects in _detection_images(seed, splits, size):
        file_id = f"{split}_{i:05d}"
        image.save(dest / "JPEGImages" / f"{file_id}.jpg", quality=95)
        _voc_xml(file_id, size, objects).write(dest / "Annotations" / f"{file_id}.xml")
        ids[split].append(file_id)
    for split, names in ids.items():
        (dest / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")


def _write_coco(dest: Path, seed: int, splits: dict[str, int], size: int) -> None:
    categories = [{"id": k + 1, "name": c, "supercategory": "shape"} for k, c in enumerate(DETECTION_CLASSES)]
    for sub in ("annotations", *splits):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    data = {split: {"images": [], "annotations": [], "categories": categories} for split in splits}
    for split, i, image, objects in _detection_images(seed, splits, size):
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
                "category_id": DETECTION_CLASSES.index(obj["cls"]) + 1,
                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                "area": round(area, 2), "segmentation": [flat], "iscrowd": 0,
            })
    for split, d in data.items():
        (dest / "annotations" / f"instances_{split}.json").write_text(json.dumps(d))


def write_shapes(dest: str | os.PathLike, fmt: str, seed: int = DETECTION_SEED,
                 splits: dict[str, int] | None = None, size: int = DETECTION_IMAGE_SIZE) -> Path:
    """Write the detection shapes set in ``fmt`` ("voc" or "coco") at ``dest`` unless it is already there
    (``dest/DONE``), atomically."""
    dest = Path(dest)
    writer = {"voc": _write_voc, "coco": _write_coco}[fmt]

    def fill(tmp: Path) -> None:
        writer(tmp, seed, dict(splits or DETECTION_SPLITS), size)
        (tmp / "DONE").write_text(json.dumps({"seed": seed, "size": size, "splits": splits or DETECTION_SPLITS}))

    _write_once(dest, "DONE", fill)
    return dest
