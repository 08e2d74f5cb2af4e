"""Datasets and augmentations: shapes on disk, determinism, CIFAR on-disk format, clear errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from us3l.data import (
    SHAPE_CLASSES,
    DatasetMissingError,
    ShapesDataset,
    TwoViews,
    build_pretrain_dataset,
    data_root,
    simclr_augmentation,
)


def test_data_root_env(monkeypatch, tmp_path):
    monkeypatch.delenv("DATA_ROOT", raising=False)
    assert str(data_root()) == "datasets"
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    assert data_root() == tmp_path


def test_shapes_written_once_deterministic_and_balanced(tmp_path):
    ds = ShapesDataset(tmp_path / "a", "train", image_size=32, size=60)
    assert len(ds) == 60 and ds.classes == SHAPE_CLASSES
    img, label = ds[7]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (32, 32)
    assert isinstance(label, int)
    labels = [lab for _, lab in ds.samples]
    assert np.bincount(labels).tolist() == [10] * len(SHAPE_CLASSES)
    # On disk: PNG files and a labels file; nothing temporary left behind.
    assert (ds.dir / "labels.txt").is_file() and len(list((ds.dir / "images").glob("*.png"))) == 60
    assert [p.name for p in (tmp_path / "a").iterdir()] == [ds.dir.name]
    # Same seed elsewhere: identical pixels; other seed or split: different images.
    again = ShapesDataset(tmp_path / "b", "train", image_size=32, size=60)
    assert np.array_equal(np.asarray(ds[5][0]), np.asarray(again[5][0]))
    other = ShapesDataset(tmp_path / "b", "train", image_size=32, size=60, seed=1)
    test = ShapesDataset(tmp_path / "b", "test", image_size=32, size=60)
    assert not np.array_equal(np.asarray(ds[5][0]), np.asarray(other[5][0]))
    assert not np.array_equal(np.asarray(ds[5][0]), np.asarray(test[5][0]))
    # A second instance reads the files rather than regenerating them.
    mtime = (ds.dir / "labels.txt").stat().st_mtime_ns
    ShapesDataset(tmp_path / "a", "train", image_size=32, size=60)
    assert (ds.dir / "labels.txt").stat().st_mtime_ns == mtime


def test_shapes_transform_and_bad_split(tmp_path):
    ds = ShapesDataset(tmp_path, "test", transform=lambda im: torch.tensor(np.asarray(im)), size=12)
    assert ds[0][0].shape == (32, 32, 3)
    with pytest.raises(ValueError, match="split"):
        ShapesDataset(tmp_path, "val")


def test_two_views_seeded_per_item(tmp_path):
    ds = ShapesDataset(tmp_path, "train", size=12)
    views = TwoViews(ds, simclr_augmentation(32, "shapes"), seed=3)
    a1, b1 = views[4]
    torch.manual_seed(123)  # global RNG state must not matter
    a2, b2 = views[4]
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert a1.shape == (3, 32, 32) and not torch.equal(a1, b1)
    views.epoch = 1
    assert not torch.equal(views[4][0], a1)


def test_simclr_augmentation_ops():
    names = [type(t).__name__ for t in simclr_augmentation(32, "cifar100").transforms]
    assert "RandomResizedCrop" in names and "RandomGrayscale" in names
    assert all("Blur" not in repr(t) for t in simclr_augmentation(32, "cifar100").transforms)
    assert any("GaussianBlur" in repr(t) for t in simclr_augmentation(224, "imagenet").transforms)
    crop = simclr_augmentation(32, "cifar100").transforms[0]
    assert crop.scale == (0.2, 1.0)
    jitter = simclr_augmentation(32, "cifar100").transforms[2]
    assert jitter.p == 0.8


def test_cifar100_on_disk_format(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = np.random.default_rng(0).integers(0, 256, (4, 3072), dtype=np.uint8)
    for split in ("train", "test"):
        with open(folder / split, "wb") as f:
            pickle.dump({"data": data, "fine_labels": [0, 1, 2, 3]}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    ds = build_pretrain_dataset("cifar100", tmp_path)
    assert len(ds) == 4 and ds[2][0].size == (32, 32) and ds[2][1] == 2


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagenet"])
def test_missing_dataset_message(tmp_path, name):
    with pytest.raises(DatasetMissingError) as err:
        build_pretrain_dataset(name, tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "DEMO=1" in msg and "expected" in msg and "\n" not in msg


def test_corrupt_cifar_is_clear_error(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(b"not a pickle")
    with pytest.raises(DatasetMissingError, match="unreadable"):
        build_pretrain_dataset("cifar100", tmp_path)


def test_concurrent_generation_leaves_one_complete_set(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        sets = list(pool.map(lambda _: ShapesDataset(tmp_path, "train", size=120), range(3)))
    assert all(len(s) == 120 for s in sets)
    assert [p.name for p in tmp_path.iterdir()] == [sets[0].dir.name]  # no temp dirs left behind
    assert all(np.array_equal(np.asarray(s[9][0]), np.asarray(sets[0][9][0])) for s in sets)
