"""Tiny datasets in the exact on-disk layouts of the real ones (and a backbone checkpoint), for tests.

Every writer takes a root directory (the ``DATA_ROOT`` / ``DETECTRON2_DATASETS`` of a run), writes a few
small images per class deterministically from ``seed`` and returns the dataset's folder. The files are
what the real readers expect: torchvision's CIFAR pickles, ``Flowers102``/``OxfordIIITPet``/``DTD``
folders, an ImageNet ``ImageFolder``, VOCdevkit XML, COCO 2017 instances JSON. Recognition images carry
their class in their colour; detection images carry objects whose colour and shape give their class,
drawn exactly where their annotations say. Each detection split holds every class of its dataset, as the
real ones do (so per-class APs are defined), and the COCO splits hold small, medium and large objects
and a crowd region.

Not collected by pytest (no ``test_`` prefix): import it from tests as ``from real_layouts import ...``.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw

Point = tuple[float, float]

# One bright, distinct colour per class: linearly separable after any reasonable backbone.
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [128, 128, 0], [0, 0, 128]], dtype=np.float32)
SHAPE_KINDS = ("triangle", "square", "pentagon", "hexagon", "circle", "star", "cross", "diamond")

IMAGENET_WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361")  # tench, goldfish, two sharks
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
# (id, name, supercategory) of COCO 2017's 80 instance categories: ids 1-90 with 10 gaps.
_COCO_GROUPS = (
    ("person", "person"),
    ("vehicle", "bicycle car motorcycle airplane bus train truck boat"),
    ("outdoor", "traffic_light fire_hydrant stop_sign parking_meter bench"),
    ("animal", "bird cat dog horse sheep cow elephant bear zebra giraffe"),
    ("accessory", "backpack umbrella handbag tie suitcase"),
    ("sports", "frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
               "tennis_racket"),
    ("kitchen", "bottle wine_glass cup fork knife spoon bowl"),
    ("food", "banana apple sandwich orange broccoli carrot hot_dog pizza donut cake"),
    ("furniture", "chair couch potted_plant bed dining_table toilet"),
    ("electronic", "tv laptop mouse remote keyboard cell_phone"),
    ("appliance", "microwave oven toaster sink refrigerator"),
    ("indoor", "book clock vase scissors teddy_bear hair_drier toothbrush"),
)
_COCO_MISSING_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
COCO_CATEGORIES: tuple[tuple[int, str, str], ...] = tuple(
    (cat_id, name.replace("_", " "), group)
    for cat_id, (group, name) in zip(
        (i for i in range(1, 91) if i not in _COCO_MISSING_IDS),
        ((g, n) for g, names in _COCO_GROUPS for n in names.split()),
    )
)
FLOWERS_CLASSES = 4  # labels 1..4 of the 102
PETS_BREEDS = (("Abyssinian", 1, 1), ("american_bulldog", 2, 1), ("american_pit_bull_terrier", 2, 2),
               ("basset_hound", 2, 3))  # (breed, species 1=cat 2=dog, breed id within species), class ids 1..4
DTD_CLASSES = ("banded", "blotchy", "braided", "bubbly")


# ---------------------------------------------------------------- drawing


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[Point]:
    """Vertices of a shape of circumradius ``r`` centred at (cx, cy) (a circle is a 24-gon)."""
    sides = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6, "circle": 24}
    if kind in sides:
        radii = [r] * sides[kind]
    elif kind == "star":
        radii = [r, r * 0.45] * 5
    elif kind == "cross":
        radii = [r, r * 0.35] * 4
    else:  # diamond: a rhombus twice as long as it is wide
        radii = [r, r * 0.5, r, r * 0.5]
    n = len(radii)
    return [(cx + rad * math.cos(angle + 2 * math.pi * k / n), cy + rad * math.sin(angle + 2 * math.pi * k / n))
            for k, rad in enumerate(radii)]


def _noisy(rng: np.random.Generator, colour: np.ndarray, width: int, height: int, sigma: float) -> Image.Image:
    pixels = colour + rng.normal(0, sigma, size=(height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _class_image(rng: np.random.Generator, label: int, width: int, height: int) -> tuple[Image.Image, list[Point]]:
    """A recognition image of class ``label``: its palette colour (noisy) behind its shape in the
    complementary colour, at a random place, size and angle. Returns the image and the shape's outline."""
    colour = PALETTE[label % len(PALETTE)]
    image = _noisy(rng, colour, width, height, 30)
    r = float(rng.uniform(0.25, 0.4) * min(width, height))
    cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
    poly = _polygon(SHAPE_KINDS[label % len(SHAPE_KINDS)], cx, cy, r, float(rng.uniform(0, 2 * math.pi)))
    ImageDraw.Draw(image).polygon(poly, fill=tuple(int(255 - c) for c in colour))
    return image, poly


def _size(rng: np.random.Generator, low: int = 40, high: int = 64) -> tuple[int, int]:
    """A random (width, height): images are not square, so a swapped width and height shows."""
    return int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))


def _save_jpeg(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=90)


def _bounds(poly: list[Point]) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    return min(xs), min(ys), max(xs), max(ys)


def _place(rng: np.random.Generator, width: int, height: int, r: float,
           taken: list[tuple[float, float, float, float]]) -> tuple[float, float, float]:
    """A centre for a shape of circumradius ``r`` inside the image, clear of the ``taken`` boxes
    (shrinking the shape until it fits); returns (cx, cy, r)."""
    r = min(r, (min(width, height) - 4) / 2)
    while r >= 1:
        for _ in range(30):
            cx, cy = rng.uniform(r + 1, width - r - 1), rng.uniform(r + 1, height - r - 1)
            box = (cx - r, cy - r, cx + r, cy + r)
            if not any(box[0] < b[2] + 2 and b[0] < box[2] + 2 and box[1] < b[3] + 2 and b[1] < box[3] + 2
                       for b in taken):
                taken.append(box)
                return float(cx), float(cy), r
        r *= 0.8
    raise ValueError(f"no room left for another shape in a {width}x{height} image")


def _scene(rng: np.random.Generator, width: int, height: int,
           objects: list[tuple[int, float]]) -> tuple[Image.Image, list[dict]]:
    """A detection image: a dark noisy background and one filled shape per ``(class index, radius)``,
    its colour and kind given by the class. Returns the image and ``{"cls", "polygon"}`` per object
    (vertices rounded to 0.01 px, as drawn)."""
    image = _noisy(rng, rng.uniform(0, 60, size=3), width, height, 10)
    draw = ImageDraw.Draw(image)
    taken: list[tuple[float, float, float, float]] = []
    out = []
    for cls, radius in sorted(objects, key=lambda o: -o[1]):  # largest first: they always fit
        cx, cy, r = _place(rng, width, height, radius, taken)
        kind = SHAPE_KINDS[(cls // len(PALETTE)) % len(SHAPE_KINDS)]
        poly = [(round(x, 2), round(y, 2)) for x, y in _polygon(kind, cx, cy, r, float(rng.uniform(0, 2 * math.pi)))]
        draw.polygon(poly, fill=tuple(int(c) for c in PALETTE[cls % len(PALETTE)]))
        out.append({"cls": cls, "polygon": poly})
    return image, out


def _round_robin(n_images: int, per_image: int, n_classes: int, offset: int = 0) -> list[list[int]]:
    """Class indices of ``per_image`` objects per image, cycling through all classes."""
    return [[(offset + i * per_image + j) % n_classes for j in range(per_image)] for i in range(n_images)]


# ---------------------------------------------------------------- CIFAR


def _images(labels: np.ndarray, seed: int) -> np.ndarray:
    """CIFAR rows (N x 3072, channel-major) of noisy images in their class's colour."""
    rng = np.random.default_rng(seed)
    base = PALETTE[labels % len(PALETTE)][:, :, None].repeat(1024, axis=2)  # N x 3 x 1024
    noisy = base + rng.normal(0, 40, size=base.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8).reshape(len(labels), 3072)


def write_cifar10(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` in CIFAR-10's pickle format (5 train batches, test batch, meta)."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_labels = np.arange(n_train) % 10
    chunks = np.array_split(np.arange(n_train), 5)
    images = _images(train_labels, seed)
    for i, idx in enumerate(chunks, start=1):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": images[idx], "labels": train_labels[idx].tolist()}, f)
    test_labels = np.arange(n_test) % 10
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": _images(test_labels, seed + 1), "labels": test_labels.tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return folder


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """``root/cifar-100-python`` in CIFAR-100's pickle format; only the first 10 classes are used."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        labels = np.arange(n) % 10
        with open(folder / name, "wb") as f:
            pickle.dump({"data": _images(labels, s), "fine_labels": labels.tolist()}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)]}, f)
    return folder


# ---------------------------------------------------------------- ImageNet


def write_imagenet(root: Path, n_train: int = 8, n_val: int = 2, seed: int = 0) -> Path:
    """``root/imagenet/{train,val}/<wnid>/*.JPEG`` (ImageFolder) for the classes ``IMAGENET_WNIDS``,
    ``n_train``/``n_val`` images per class. Like the real train set, one image is greyscale and one
    CMYK (readers must convert to RGB)."""
    folder = Path(root) / "imagenet"
    rng = np.random.default_rng([seed, 1])
    for label, wnid in enumerate(IMAGENET_WNIDS):
        for i in range(n_train):
            image, _ = _class_image(rng, label, *_size(rng, 48, 64))
            if (label, i) == (0, 0):
                image = image.convert("L")
            elif (label, i) == (1, 0):
                image = image.convert("CMYK")
            _save_jpeg(image, folder / "train" / wnid / f"{wnid}_{1000 + 7 * i}.JPEG")
        for i in range(n_val):
            image, _ = _class_image(rng, label, *_size(rng, 48, 64))
            _save_jpeg(image, folder / "val" / wnid / f"ILSVRC2012_val_{label * n_val + i + 1:08d}.JPEG")
    return folder


# ---------------------------------------------------------------- Pascal VOC


def _voc_box(poly: list[Point], width: int, height: int) -> tuple[int, int, int, int]:
    """VOC's 1-based inclusive pixel box of the pixels a polygon covers."""
    x0, y0, x1, y1 = _bounds(poly)
    return (max(1, math.floor(x0) + 1), max(1, math.floor(y0) + 1),
            min(width, math.ceil(x1)), min(height, math.ceil(y1)))


def _voc_xml(folder: str, file_id: str, width: int, height: int, objects: list[dict]) -> ET.ElementTree:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = f"{file_id}.jpg"
    source = ET.SubElement(root, "source")
    for tag, text in (("database", f"The {folder} Database"), ("annotation", f"PASCAL {folder}"),
                      ("image", "flickr")):
        ET.SubElement(source, tag).text = text
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        node = ET.SubElement(root, "object")
        box = _voc_box(obj["polygon"], width, height)
        truncated = box[0] == 1 or box[1] == 1 or box[2] == width or box[3] == height
        for tag, text in (("name", VOC_CLASSES[obj["cls"]]), ("pose", "Unspecified"),
                          ("truncated", str(int(truncated))), ("difficult", str(int(obj["difficult"])))):
            ET.SubElement(node, tag).text = text
        bndbox = ET.SubElement(node, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bndbox, tag).text = str(value)
    return ET.ElementTree(root)


def _write_voc_split(dest: Path, rng: np.random.Generator, ids: list[str], offset: int) -> None:
    """Images and XML for ``ids``, two or three objects each, every class at least once not difficult."""
    seen: set[int] = set()
    for file_id, classes in zip(ids, _round_robin(len(ids), 2, len(VOC_CLASSES), offset)):
        if len(seen) == len(VOC_CLASSES):
            classes = [*classes, int(rng.integers(len(VOC_CLASSES)))]
        width, height = _size(rng, 48, 64)
        image, objects = _scene(rng, width, height, [(c, float(rng.uniform(6, 13))) for c in classes])
        for obj in objects:  # a class's first object is never difficult, some later ones are
            obj["difficult"] = obj["cls"] in seen and rng.random() < 0.3
            seen.add(obj["cls"])
        _save_jpeg(image, dest / "JPEGImages" / f"{file_id}.jpg")
        (dest / "Annotations").mkdir(parents=True, exist_ok=True)
        _voc_xml(dest.name, file_id, width, height, objects).write(dest / "Annotations" / f"{file_id}.xml")


def _write_image_sets(dest: Path, splits: dict[str, list[str]]) -> None:
    main = dest / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    for split, ids in splits.items():
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))


def write_voc(root: Path, n_2007_trainval: int = 14, n_2007_test: int = 12, n_2012_trainval: int = 12,
              seed: int = 0) -> dict[str, Path]:
    """``root/VOC2007`` (trainval, test) and ``root/VOC2012`` (trainval) VOCdevkit folders:
    ``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml``, ``ImageSets/Main/{train,val,trainval[,test]}.txt``.
    Every split holds every one of the 20 classes (at least 10 images per split)."""
    if min(n_2007_trainval, n_2007_test, n_2012_trainval) < 10:
        raise ValueError("every VOC split needs at least 10 images to hold all 20 classes")
    root = Path(root)
    voc07, voc12 = root / "VOC2007", root / "VOC2012"
    rng = np.random.default_rng([seed, 2])
    ids07 = [f"{i:06d}" for i in range(1, n_2007_trainval + n_2007_test + 1)]
    test07 = sorted(rng.choice(ids07, n_2007_test, replace=False).tolist())  # interleaved, as in VOC2007
    trainval07 = sorted(set(ids07) - set(test07))
    trainval12 = [f"2008_{i:06d}" for i in range(8, 8 + 3 * n_2012_trainval, 3)]
    for dest, ids, offset in ((voc07, trainval07, 0), (voc07, test07, 7), (voc12, trainval12, 3)):
        _write_voc_split(dest, rng, ids, offset)
    _write_image_sets(voc07, {"train": trainval07[::2], "val": trainval07[1::2], "trainval": trainval07,
                              "test": test07})
    _write_image_sets(voc12, {"train": trainval12[::2], "val": trainval12[1::2], "trainval": trainval12})
    return {"VOC2007": voc07, "VOC2012": voc12}


# ---------------------------------------------------------------- COCO


def _shoelace(poly: list[Point]) -> float:
    return 0.5 * abs(sum(p[0] * q[1] - q[0] * p[1] for p, q in zip(poly, poly[1:] + poly[:1])))


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a binary H x W mask (column-major runs, starting with a 0 run)."""
    flat = mask.astype(bool).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _coco_crowd(rng: np.random.Generator, image: Image.Image, taken: list[tuple[float, float, float, float]]) -> dict:
    """A crowd region (a cluster of small person-coloured blobs) drawn into ``image``: its RLE annotation."""
    width, height = image.size
    cx, cy, r = _place(rng, width, height, 12.0, taken)
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(6):
        bx, by = cx + rng.uniform(-r, r) * 0.6, cy + rng.uniform(-r, r) * 0.6
        draw.ellipse([bx - r * 0.35, by - r * 0.35, bx + r * 0.35, by + r * 0.35], fill=1)
    m = np.asarray(mask, dtype=np.uint8)
    image.paste(tuple(int(c) for c in PALETTE[0]), mask=mask.point(lambda v: 255 * v))
    ys, xs = np.nonzero(m)
    bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    return {"segmentation": uncompressed_rle(m), "area": int(m.sum()), "bbox": bbox, "iscrowd": 1,
            "category_id": COCO_CATEGORIES[0][0]}


def _coco_annotation(obj: dict) -> dict:
    x0, y0, x1, y1 = _bounds(obj["polygon"])
    return {"segmentation": [[v for p in obj["polygon"] for v in p]], "area": round(_shoelace(obj["polygon"]), 2),
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)], "iscrowd": 0,
            "category_id": COCO_CATEGORIES[obj["cls"]][0]}


def _coco_split(rng: np.random.Generator, dest: Path, n_images: int, first_id: int, offset: int) -> dict:
    """Images in ``dest`` and their "images" and "annotations": three objects an image, cycling through the
    80 categories, one each of radius small / medium / large (mostly in COCO's area ranges of the same
    names); the first image adds a crowd region."""
    images, annotations = [], []
    for i, classes in enumerate(_round_robin(n_images, 3, len(COCO_CATEGORIES), offset)):
        radii = [float(rng.uniform(*((5, 9), (22, 30), (78, 86))[(i + j) % 3])) for j in range(3)]
        width, height = (224, 192) if i % 2 else (192, 224)
        image, objects = _scene(rng, width, height, list(zip(classes, radii)))
        anns = [_coco_annotation(o) for o in objects]
        if i == 0:
            anns.append(_coco_crowd(rng, image, [_bounds(o["polygon"]) for o in objects]))
        image_id = first_id + 13 * i
        file_name = f"{image_id:012d}.jpg"
        _save_jpeg(image, dest / file_name)
        images.append({"license": 1, "file_name": file_name, "height": height, "width": width,
                       "coco_url": f"http://images.cocodataset.org/{dest.name}/{file_name}",
                       "date_captured": "2013-11-14 16:28:13", "flickr_url": "", "id": image_id})
        annotations += [{**a, "image_id": image_id} for a in anns]
    return {"images": images, "annotations": annotations}


def write_coco(root: Path, n_train: int = 28, n_val: int = 28, seed: int = 0) -> Path:
    """``root/coco/{train2017,val2017}/<12-digit id>.jpg`` and ``root/coco/annotations/instances_{train,val}2017.json``
    with COCO's 80 categories and their real ids, polygon segmentations, bbox, area, iscrowd. Each split
    holds every category (at least 27 images per split)."""
    if min(n_train, n_val) < 27:
        raise ValueError("every COCO split needs at least 27 images to hold all 80 categories")
    folder = Path(root) / "coco"
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"supercategory": group, "id": cat_id, "name": name} for cat_id, name, group in COCO_CATEGORIES]
    rng = np.random.default_rng([seed, 3])
    for split, n, first_id, offset in (("train2017", n_train, 9, 0), ("val2017", n_val, 139, 40)):
        data = _coco_split(rng, folder / split, n, first_id, offset)
        for k, ann in enumerate(data["annotations"]):
            ann["id"] = first_id * 1000 + k
        info = {"description": "us3l-bench fixture in the COCO 2017 format", "url": "http://cocodataset.org",
                "version": "1.0", "year": 2017, "contributor": "COCO Consortium", "date_created": "2017/09/01"}
        licenses = [{"url": "http://creativecommons.org/licenses/by/2.0/", "id": 1, "name": "Attribution License"}]
        payload = {"info": info, "licenses": licenses, **data, "categories": categories}
        (folder / "annotations" / f"instances_{split}.json").write_text(json.dumps(payload))
    return folder


# ---------------------------------------------------------------- Flowers-102, Pets, DTD


def _savemat(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``scipy.io.savemat`` with a fixed header text (scipy stamps the current time into it)."""
    import io

    from scipy.io import savemat

    buf = io.BytesIO()
    savemat(buf, arrays)
    header = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 2009"
    path.write_bytes(header.ljust(116, b" ") + buf.getvalue()[116:])


def write_flowers102(root: Path, n_train: int = 3, n_val: int = 2, n_test: int = 3, seed: int = 0) -> Path:
    """``root/flowers-102/jpg/image_NNNNN.jpg``, ``imagelabels.mat`` ("labels": 1 x N, 1-based) and
    ``setid.mat`` ("trnid", "valid", "tstid": 1-based image ids), as torchvision's ``Flowers102`` reads
    them; labels 1..``FLOWERS_CLASSES`` with the given images per class and split, ids interleaved."""
    folder = Path(root) / "flowers-102"
    rng = np.random.default_rng([seed, 4])
    per_class = n_train + n_val + n_test
    labels = np.repeat(np.arange(1, FLOWERS_CLASSES + 1), per_class)
    order = rng.permutation(len(labels))  # image k (1-based k+1) has label labels[order[k]]
    image_labels = labels[order]
    split_of = np.tile(np.repeat([0, 1, 2], [n_train, n_val, n_test]), FLOWERS_CLASSES)[order]
    for k, label in enumerate(image_labels, start=1):
        _save_jpeg(_class_image(rng, int(label) - 1, *_size(rng))[0], folder / "jpg" / f"image_{k:05d}.jpg")
    _savemat(folder / "imagelabels.mat", {"labels": image_labels.astype(np.uint8)[None, :]})
    ids = {key: (np.flatnonzero(split_of == s) + 1).astype(np.uint16)[None, :]
           for s, key in enumerate(("trnid", "valid", "tstid"))}
    _savemat(folder / "setid.mat", ids)
    return folder


def write_pets(root: Path, n_trainval: int = 4, n_test: int = 3, seed: int = 0) -> Path:
    """``root/oxford-iiit-pet/images/<Breed>_<n>.jpg``, ``annotations/{trainval,test}.txt`` (lines
    "<image> <class id> <species> <breed id>", 1-based) and ``annotations/trimaps/<image>.png``
    (1 pet, 2 background, 3 border), for the first four breeds ``PETS_BREEDS``."""
    folder = Path(root) / "oxford-iiit-pet"
    (folder / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 5])
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    for label, (breed, species, breed_id) in enumerate(PETS_BREEDS):
        for n in range(1, n_trainval + n_test + 1):
            name = f"{breed}_{n}"
            image, poly = _class_image(rng, label, *_size(rng))
            _save_jpeg(image, folder / "images" / f"{name}.jpg")
            trimap = Image.new("L", image.size, 2)
            ImageDraw.Draw(trimap).polygon(poly, fill=1, outline=3)
            trimap.save(folder / "annotations" / "trimaps" / f"{name}.png")
            lines["trainval" if n <= n_trainval else "test"].append(f"{name} {label + 1} {species} {breed_id}\n")
    for split, rows in lines.items():
        (folder / "annotations" / f"{split}.txt").write_text("".join(rows))
    return folder


def write_dtd(root: Path, n_train: int = 2, n_val: int = 2, n_test: int = 3, seed: int = 0) -> Path:
    """``root/dtd/dtd/images/<class>/<class>_NNNN.jpg`` and ``labels/{train,val,test}1.txt`` (lines
    "<class>/<file>"), as torchvision's ``DTD`` reads partition 1, for the classes ``DTD_CLASSES``."""
    folder = Path(root) / "dtd" / "dtd"
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 6])
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    for label, cls in enumerate(DTD_CLASSES):
        for n, split in enumerate(splits, start=1):
            name = f"{cls}_{n * 7:04d}.jpg"
            _save_jpeg(_class_image(rng, label, *_size(rng))[0], folder / "images" / cls / name)
            lines[split].append(f"{cls}/{name}\n")
    for split, rows in lines.items():
        (folder / "labels" / f"{split}1.txt").write_text("".join(rows))
    return folder


# ---------------------------------------------------------------- everything, and a checkpoint


def write_all(root: Path, seed: int = 0) -> dict[str, Path]:
    """Every dataset above under ``root`` (use it as both ``DATA_ROOT`` and ``DETECTRON2_DATASETS``);
    returns {name: folder}."""
    root = Path(root)
    return {
        "imagenet": write_imagenet(root, seed=seed),
        **write_voc(root, seed=seed),
        "coco": write_coco(root, seed=seed),
        "cifar10": write_cifar10(root, seed=seed),
        "cifar100": write_cifar100(root, seed=seed),
        "flowers102": write_flowers102(root, seed=seed),
        "pets": write_pets(root, seed=seed),
        "dtd": write_dtd(root, seed=seed),
    }


def write_checkpoint(path: Path, seed: int = 0, stem: str = "cifar") -> Path:
    """A random-init ResNet-18 backbone checkpoint (range [0.25, 1])."""
    import torch

    import us3l
    from us3l.models import us_resnet18

    torch.manual_seed(seed)
    return us3l.save_checkpoint(path, us_resnet18(stem=stem, num_classes=0), method="test", config={},
                                provenance={"seed": seed})
