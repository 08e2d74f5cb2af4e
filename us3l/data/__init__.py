"""Datasets and transforms shared by the stages (no Detectron2 import).

- :mod:`.root`: where datasets live (``DATA_ROOT``, Detectron2's ``DETECTRON2_DATASETS``) and the one
  :class:`DatasetMissingError`.
- :mod:`.catalog`: every dataset by name, its expected layout and how it is built: recognition splits for
  pretraining and evaluation, your own ``imagefolder:PATH`` and ``coco:NAME=...`` sets, Detectron2's built-in names.
- :mod:`.transforms`: SimCLR views for pretraining, evaluation's transforms and input size.
- :mod:`.shapes`: the demo data, procedural shapes for classification and for detection (VOC/COCO writers).

The names below are the package's public API; import them from ``us3l.data``.
"""

from .catalog import (
    CIFAR10,
    CIFAR100,
    COCO_SET_FORM,
    PRETRAIN_DATASETS,
    SPECS,
    SPLITS,
    CocoSet,
    DatasetSpec,
    Flowers102,
    build_dataset,
    build_pretrain_dataset,
    check_builtin,
    data_folders,
    image_folder,
    is_image_folder,
    num_classes,
    spec,
)
from .root import DatasetMissingError, data_root, detection_root
from .shapes import DETECTION_CLASSES, DETECTION_SPLITS, SHAPE_CLASSES, ShapesDataset, write_shapes
from .transforms import MEAN_STD, TwoViews, augment_transform, eval_transform, input_size, simclr_augmentation

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "COCO_SET_FORM",
    "DETECTION_CLASSES",
    "DETECTION_SPLITS",
    "MEAN_STD",
    "PRETRAIN_DATASETS",
    "SHAPE_CLASSES",
    "SPECS",
    "SPLITS",
    "CocoSet",
    "DatasetMissingError",
    "DatasetSpec",
    "Flowers102",
    "ShapesDataset",
    "TwoViews",
    "augment_transform",
    "build_dataset",
    "build_pretrain_dataset",
    "check_builtin",
    "data_folders",
    "data_root",
    "detection_root",
    "eval_transform",
    "image_folder",
    "input_size",
    "is_image_folder",
    "num_classes",
    "simclr_augmentation",
    "spec",
    "write_shapes",
]
