"""The fixtures of tests/support/layouts.py are read by the project's real loaders: torchvision's readers
through us3l.data, and Detectron2's built-in VOC/COCO names and evaluators."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from support import ROOT
from support.layouts import (
    COCO_CATEGORIES,
    DTD_CLASSES,
    FLOWERS_CLASSES,
    IMAGENET_WNIDS,
    PALETTE,
    PETS_BREEDS,
    VOC_CLASSES,
    write_all,
)
from torchvision import datasets as tvd

from us3l.data import build_dataset, build_pretrain_dataset


@pytest.fixture(scope="module")
def root(module_dir) -> Path:
    write_all(module_dir)
    return module_dir


def _nearest_palette(image: Image.Image) -> int:
    """The palette class of an image's border (the background of a class image): median colour."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    frame = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return int(np.argmin(((PALETTE - np.median(frame, 0)) ** 2).sum(1)))


def _labels(ds) -> list[int]:
    return [ds[i][1] for i in range(len(ds))]


def test_write_all_is_fast_and_deterministic(tmp_path):
    t0 = time.perf_counter()
    paths = write_all(tmp_path / "a")
    elapsed = time.perf_counter() - t0
    time.sleep(1.1)  # a time stamp written into any file (scipy's .mat header) would now differ
    write_all(tmp_path / "b")

    def digest(base: Path) -> str:
        h = hashlib.sha256()
        for p in sorted(base.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(base)).encode() + p.read_bytes())
        return h.hexdigest()

    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert elapsed < 10, f"write_all took {elapsed:.1f} s"
    assert {p.relative_to(tmp_path / "a").as_posix() for p in paths.values()} == {
        "imagenet", "VOC2007", "VOC2012", "coco", "cifar-10-batches-py", "cifar-100-python", "flowers-102",
        "oxford-iiit-pet", "dtd/dtd"}


# ---------------------------------------------------------------- recognition


@pytest.mark.parametrize("name, n_train, n_test, n_classes", [
    ("cifar10", 200, 100, 10), ("cifar100", 200, 100, 10),
    ("pets", 4 * len(PETS_BREEDS), 3 * len(PETS_BREEDS), len(PETS_BREEDS)),
    ("dtd", 4 * len(DTD_CLASSES), 3 * len(DTD_CLASSES), len(DTD_CLASSES)),
])
def test_build_dataset_reads_fixture(root, name, n_train, n_test, n_classes):
    train, test = build_dataset(name, "train", root=root), build_dataset(name, "test", root=root)
    assert (len(train), len(test)) == (n_train, n_test)
    for ds in (train, test):
        labels = _labels(ds)
        assert sorted(set(labels)) == list(range(n_classes))
        assert all(_nearest_palette(ds[i][0]) == labels[i] for i in range(len(ds)))  # colour = class


def test_pets_and_dtd_class_names(root):
    pets = tvd.OxfordIIITPet(str(root), "test", target_types=("category", "binary-category", "segmentation"))
    assert pets.classes == ["Abyssinian", "American Bulldog", "American Pit Bull Terrier", "Basset Hound"]
    image, (label, species, trimap) = pets[0]
    assert (label, species) == (0, 0) and trimap.size == image.size
    assert set(np.unique(np.asarray(trimap)).tolist()) == {1, 2, 3}
    assert tvd.DTD(str(root), "val").classes == list(DTD_CLASSES)


def test_flowers102_reads_fixture(root):
    """The project's Flowers-102 reader checks the .mat files' presence, not the published files' md5."""
    train, test = build_dataset("flowers102", "train", root=root), build_dataset("flowers102", "test", root=root)
    assert (len(train), len(test)) == (5 * FLOWERS_CLASSES, 3 * FLOWERS_CLASSES)
    for ds in (train, test):
        labels = _labels(ds)
        assert sorted(set(labels)) == list(range(FLOWERS_CLASSES))
        assert all(_nearest_palette(ds[i][0]) == labels[i] for i in range(len(ds)))
    with pytest.raises(RuntimeError, match="not found or corrupted"):  # torchvision's own reader: md5 differs
        tvd.Flowers102(str(root), "val")


def test_imagenet_pretrain_reader(root):
    ds = build_pretrain_dataset("imagenet", root)
    assert ds.classes == list(IMAGENET_WNIDS) and len(ds) == 8 * len(IMAGENET_WNIDS)
    assert all(ds[i][0].mode == "RGB" for i in range(len(ds)))  # greyscale and CMYK files included
    modes = {Image.open(p).mode for p, _ in ds.samples}
    assert modes == {"RGB", "L", "CMYK"}
    assert all(_nearest_palette(ds[i][0]) == ds[i][1] for i in range(len(ds)) if i not in (0, 8))
    val = tvd.ImageFolder(str(root / "imagenet" / "val"))
    assert val.classes == list(IMAGENET_WNIDS) and len(val) == 2 * len(IMAGENET_WNIDS)


# ---------------------------------------------------------------- VOC and COCO files


@pytest.mark.parametrize("year, split, n", [("2007", "trainval", 14), ("2007", "test", 12), ("2012", "trainval", 12)])
def test_voc_splits_hold_every_class(root, year, split, n):
    base = root / f"VOC{year}"
    ids = (base / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    assert len(ids) == n
    easy = set()
    for i in ids:
        xml = ET.parse(base / "Annotations" / f"{i}.xml").getroot()
        w, h = (int(xml.find(f"size/{k}").text) for k in ("width", "height"))
        assert Image.open(base / "JPEGImages" / f"{i}.jpg").size == (w, h)
        for obj in xml.findall("object"):
            x0, y0, x1, y1 = (int(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax"))
            assert 1 <= x0 < x1 <= w and 1 <= y0 < y1 <= h
            if obj.find("difficult").text == "0":
                easy.add(obj.find("name").text)
    assert easy == set(VOC_CLASSES)


@pytest.mark.parametrize("split", ["train2017", "val2017"])
def test_coco_json_with_pycocotools(root, split):
    coco = COCO(str(root / "coco" / "annotations" / f"instances_{split}.json"))
    assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == [c[:2] for c in COCO_CATEGORIES]
    anns = coco.loadAnns(coco.getAnnIds())
    assert {a["category_id"] for a in anns if not a["iscrowd"]} == {c[0] for c in COCO_CATEGORIES}
    assert sum(a["iscrowd"] for a in anns) == 1
    areas = np.array([a["area"] for a in anns if not a["iscrowd"]])
    assert (areas < 32**2).any() and ((areas > 32**2) & (areas < 96**2)).any() and (areas > 96**2).any()
    for a in anns:
        img = coco.imgs[a["image_id"]]
        m = coco.annToMask(a)
        assert m.shape == (img["height"], img["width"]) and m.any()
        if a["iscrowd"]:
            assert int(m.sum()) == a["area"] and mask_util.toBbox(coco.annToRLE(a)).tolist() == a["bbox"]
        else:
            assert abs(int(m.sum()) - a["area"]) <= 0.25 * a["area"] + 20
    for img in coco.imgs.values():
        assert Image.open(root / "coco" / split / img["file_name"]).size == (img["width"], img["height"])


# ---------------------------------------------------------------- Detectron2's built-in names

_D2_SCRIPT = textwrap.dedent("""
    import json
    import torch
    import detection.datasets  # noqa: F401  (Detectron2 importable without _C)
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.detection_utils import check_image_size, read_image
    from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
    from detectron2.structures import BitMasks, Boxes, BoxMode, Instances, PolygonMasks

    def gt_as_prediction(d, masks):
        anns = [a for a in d["annotations"] if not a.get("iscrowd", 0)]
        inst = Instances((d["height"], d["width"]))
        inst.pred_boxes = Boxes(torch.tensor([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                                              for a in anns], dtype=torch.float32))
        inst.scores = torch.ones(len(anns))
        inst.pred_classes = torch.tensor([a["category_id"] for a in anns])
        if masks:
            polys = PolygonMasks([a["segmentation"] for a in anns])
            inst.pred_masks = BitMasks.from_polygon_masks(polys, d["height"], d["width"]).tensor
        return {"instances": inst}

    out = {}
    for name in ("voc_2007_trainval", "voc_2012_trainval", "voc_2007_test", "coco_2017_train", "coco_2017_val"):
        dicts = DatasetCatalog.get(name)
        for d in dicts:
            check_image_size(d, read_image(d["file_name"]))
        anns = [a for d in dicts for a in d["annotations"]]
        out[name] = {"images": len(dicts), "objects": len(anns), "crowd": sum(a.get("iscrowd", 0) for a in anns),
                     "classes": sorted({a["category_id"] for a in anns}),
                     "thing_classes": list(MetadataCatalog.get(name).thing_classes),
                     "root": d["file_name"]}
        if name in ("voc_2007_test", "coco_2017_val"):
            if name.startswith("voc"):
                ev = PascalVOCDetectionEvaluator(name)
            else:
                ev = COCOEvaluator(name, tasks=("bbox", "segm"), distributed=False, use_fast_impl=False)
            ev.reset()
            for d in dicts:
                ev.process([{"image_id": d["image_id"]}], [gt_as_prediction(d, name.startswith("coco"))])
            out[name]["eval"] = ev.evaluate()
    # The training data path of the project's real configs: DatasetMapper over both train sets.
    from detectron2.data import build_detection_train_loader
    from detection.config import build_config
    for task in ("voc", "coco"):
        cfg = build_config(task, arch="resnet50", width=0.25, opts=[
            "INPUT.MIN_SIZE_TRAIN", "(64,)", "SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_WORKERS", "0"])
        batch = next(iter(build_detection_train_loader(cfg)))
        out[task + "_batch"] = {"datasets": list(cfg.DATASETS.TRAIN), "images": len(batch),
                                "fields": sorted(batch[0]["instances"].get_fields()),
                                "objects": min(len(b["instances"]) for b in batch)}
    print("RESULT " + json.dumps(out))
""")


def test_detectron2_builtin_names_read_fixture(root):
    """DETECTRON2_DATASETS is read when Detectron2 registers its built-in names (at import): a subprocess."""
    env = {**os.environ, "DETECTRON2_DATASETS": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _D2_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    for name, images in (("voc_2007_trainval", 14), ("voc_2012_trainval", 12), ("voc_2007_test", 12)):
        assert out[name]["images"] == images and out[name]["classes"] == list(range(20))
        assert out[name]["thing_classes"] == list(VOC_CLASSES)
        assert out[name]["root"].startswith(str(root / f"VOC{name[4:8]}" / "JPEGImages"))
    for name in ("coco_2017_train", "coco_2017_val"):
        assert out[name]["images"] == 28 and out[name]["classes"] == list(range(80)) and out[name]["crowd"] == 1
        assert out[name]["thing_classes"] == [c[1] for c in COCO_CATEGORIES]
        folder = {"coco_2017_train": "train2017", "coco_2017_val": "val2017"}[name]
        assert out[name]["root"].startswith(str(root / "coco" / folder))
    assert out["voc_batch"]["datasets"] == ["voc_2007_trainval", "voc_2012_trainval"]
    assert out["voc_batch"]["fields"] == ["gt_boxes", "gt_classes"]
    assert out["voc_batch"]["images"] == 4 and out["voc_batch"]["objects"] >= 2  # batches are randomly drawn
    assert out["coco_batch"]["fields"] == ["gt_boxes", "gt_classes", "gt_masks"]
    assert out["coco_batch"]["images"] == 4 and out["coco_batch"]["objects"] >= 3
    # The real evaluators score the ground truth as a perfect detector.
    assert out["voc_2007_test"]["eval"]["bbox"] == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0})
    for task in ("bbox", "segm"):
        summary = {k: v for k, v in out["coco_2017_val"]["eval"][task].items() if not k.startswith("AP-")}
        assert summary == pytest.approx({k: 100.0 for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}), task
