"""Small on-disk datasets and checkpoints for the transfer tests (and checks that the real readers take them)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torchvision

import us3l
from transfer.datasets import CIFAR10, CIFAR100
from us3l.models import us_resnet18

# One bright, distinct colour per class: linearly separable after any reasonable backbone.
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [128, 128, 0], [0, 0, 128]], dtype=np.float32)


def _images(labels: np.ndarray, seed: int) -> np.ndarray:
    """CIFAR rows (N x 3072, channel-major) of noisy images in their class's colour."""
    rng = np.random.default_rng(seed)
    base = PALETTE[labels % len(PALETTE)][:, :, None].repeat(1024, axis=2)  # N x 3 x 1024
    noisy = base + rng.normal(0, 40, size=base.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8).reshape(len(labels), 3072)


def write_cifar10(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` in CIFAR-10's pickle format (5 train batches, test batch, meta)."""
    folder = root / "cifar-10-batches-py"
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
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        labels = np.arange(n) % 10
        with open(folder / name, "wb") as f:
            pickle.dump({"data": _images(labels, s), "fine_labels": labels.tolist()}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)]}, f)
    return folder


def write_checkpoint(path: Path, seed: int = 0, stem: str = "cifar") -> Path:
    """A random-init ResNet-18 backbone checkpoint (range [0.25, 1])."""
    import torch

    torch.manual_seed(seed)
    return us3l.save_checkpoint(path, us_resnet18(stem=stem, num_classes=0), method="test", config={},
                                provenance={"seed": seed})


def test_torchvision_reads_written_cifar10(tmp_path):
    write_cifar10(tmp_path, n_train=50, n_test=20)
    train, test = CIFAR10(str(tmp_path), train=True), CIFAR10(str(tmp_path), train=False)
    assert (len(train), len(test)) == (50, 20)
    img, label = train[13]
    assert img.size == (32, 32) and label == 3
    assert issubclass(CIFAR10, torchvision.datasets.CIFAR10)
    assert np.abs(np.asarray(img, dtype=np.float32).mean((0, 1)) - PALETTE[3]).max() < 25


def test_torchvision_reads_written_cifar100(tmp_path):
    write_cifar100(tmp_path, n_train=30, n_test=10)
    ds = CIFAR100(str(tmp_path), train=False)
    assert len(ds) == 10 and len(ds.classes) == 100 and ds[4][1] == 4
