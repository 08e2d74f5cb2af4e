"""Detectron2 registration of the detection datasets; their catalogue and the demo sets' writers are us3l.data's.

- :func:`check_dataset`: a name the config gives is on disk (built-in layouts, :func:`us3l.data.check_builtin`)
  and registered.
- :func:`register_shapes`: the demo sets ``shapes_voc_*`` and ``shapes_coco_*`` (written once by
  :func:`us3l.data.write_shapes`), through Detectron2's own VOC and COCO loaders, so the real parsers and
  evaluators run on them.
- :func:`register_coco_set`: your own COCO-format set (:class:`us3l.data.CocoSet`, from
  ``coco:NAME=ANNOTATIONS.json,IMAGES_DIR``), in every process that needs it (:func:`register_job_datasets`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import detection.d2compat  # noqa: F401  (before any detectron2 import)

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.datasets.pascal_voc import register_pascal_voc

from us3l.data import (
    DETECTION_CLASSES,
    DETECTION_SPLITS,
    CocoSet,
    DatasetMissingError,
    check_builtin,
    write_shapes,
)
from us3l.errors import UsageError
from us3l.jobs import JobSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


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


def _registered_files(name: str, *keys: str) -> tuple[Any, ...] | None:
    """The metadata ``keys`` (file locations) ``name`` is registered with; None when it is not registered."""
    if name not in DatasetCatalog.list():
        return None
    meta = MetadataCatalog.get(name)
    return tuple(getattr(meta, k, None) for k in keys)


def register_coco_set(coco: CocoSet) -> None:
    """Register ``coco`` with Detectron2's COCO loader (once per process; a name taken by another set is refused)."""
    registered = _registered_files(coco.name, "json_file", "image_root")
    if registered is None:
        register_coco_instances(coco.name, {}, coco.json_file, coco.image_root)
    elif registered != (coco.json_file, coco.image_root):
        raise UsageError(f"dataset name {coco.name!r} is already registered with other files; pick another NAME")


def register_job_datasets(spec: JobSpec, datasets_dir: str) -> None:
    """Register what ``spec`` reads, in the process that runs it: the demo sets (written under ``datasets_dir``
    for a demo job) and its COCO-format sets (``protocol["coco_sets"]``, as :meth:`CocoSet.describe` described
    them)."""
    if spec.demo:
        register_shapes(datasets_dir)
    for s in spec.protocol.get("coco_sets", {}).values():
        register_coco_set(CocoSet(s["name"], s["json"], s["images"]))


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


def register_shapes(root: str | os.PathLike) -> dict[str, str]:
    """Write (if needed) and register the demo sets under ``root``; returns {name: directory}.

    Names: ``shapes_voc_train``/``shapes_voc_test`` (Detectron2's VOC loader, evaluator
    ``pascal_voc``) and ``shapes_coco_train``/``shapes_coco_test`` (its COCO JSON loader).
    """
    root = Path(root)
    voc = write_shapes(root / "shapes_voc", "voc")
    coco = write_shapes(root / "shapes_coco", "coco")
    for split in DETECTION_SPLITS:
        name = f"shapes_voc_{split}"
        if _unregister_unless(name, dirname=str(voc)):
            register_pascal_voc(name, str(voc), split, 2012, class_names=list(DETECTION_CLASSES))
            MetadataCatalog.get(name).evaluator_type = "pascal_voc"
        name, json_file = f"shapes_coco_{split}", str(coco / "annotations" / f"instances_{split}.json")
        if _unregister_unless(name, json_file=json_file):
            register_coco_instances(name, {}, json_file, str(coco / split))
    return {"shapes_voc": str(voc), "shapes_coco": str(coco)}


def _unregister_unless(name: str, **files: str) -> bool:
    """Whether ``name`` needs registering: it is not registered, or registered with other ``files`` (the demo sets
    written under another root by an earlier job in this process), which registration is removed."""
    registered = _registered_files(name, *files)
    if registered == tuple(files.values()):
        return False
    if registered is not None:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    return True
