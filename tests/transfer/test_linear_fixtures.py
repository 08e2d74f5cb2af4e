"""torchvision's CIFAR readers (through us3l.data) take the CIFAR pickles of tests/support/layouts.py."""

from __future__ import annotations

import numpy as np
import torchvision
from support.layouts import PALETTE, write_cifar10, write_cifar100

from us3l.data import CIFAR10, CIFAR100


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
