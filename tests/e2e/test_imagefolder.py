"""Your own data: ``imagefolder:PATH`` for pretraining and recognition, with one-line errors for bad folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from support.layouts import write_checkpoint

import us3l
from pretrain.__main__ import main as pretrain_main
from transfer import knn, linear
from us3l.data import DatasetMissingError, build_dataset, build_pretrain_dataset, num_classes
from us3l.jobs import read_records

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ("cats", "dogs", "owls")


def write_folder(root: Path, splits: dict[str, int], classes: tuple[str, ...] = CLASSES) -> Path:
    """``root/<split>/<class>/<i>.png``: one flat colour per class plus noise."""
    rng = np.random.default_rng(0)
    for split, n in splits.items():
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(rng.normal(60 + 80 * c, 20, size=(24, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def test_recognition_splits_and_classes(tmp_path):
    folder = write_folder(tmp_path / "mine", {"train": 4, "val": 2})
    name = f"imagefolder:{folder}"
    train, test = build_dataset(name, "train"), build_dataset(name, "test")
    assert (len(train), len(test)) == (12, 6) and num_classes(name, train) == 3
    assert train.classes == list(CLASSES) and sorted(set(test.targets)) == [0, 1, 2]
    # test/ serves when there is no val/
    folder2 = write_folder(tmp_path / "other", {"train": 2, "test": 1})
    assert len(build_dataset(f"imagefolder:{folder2}", "test")) == 3


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "is not a folder"),
    (lambda p: write_folder(p, {"val": 1}), "has no train/ folder"),
    (lambda p: write_folder(p, {"train": 1}), "has no val/ or test/ folder"),
    (lambda p: (write_folder(p, {"train": 1}), write_folder(p, {"val": 1}, CLASSES[:2])), "missing ['owls']"),
    (lambda p: ((p / "train").mkdir(parents=True), write_folder(p, {"val": 1})), "find any class folder"),
])
def test_bad_folders_are_one_line_errors(tmp_path, make, message):
    folder = tmp_path / "bad"
    make(folder)
    with pytest.raises(DatasetMissingError) as e:
        for split in ("train", "test"):
            build_dataset(f"imagefolder:{folder}", split)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert "PATH/train/<class>/<image>" in str(e.value)


def test_pretraining_on_an_image_folder(tmp_path):
    folder = write_folder(tmp_path / "mine", {"train": 6, "val": 1})
    with pytest.raises(DatasetMissingError, match="is not a folder"):
        build_pretrain_dataset(f"imagefolder:{tmp_path / 'nope'}")
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(yaml.safe_dump({
        "preset": "us3l", "arch": "resnet18", "stem": "imagenet", "dataset": f"imagefolder:{folder}",
        "image_size": 32, "batch_size": 6, "iterations": 2, "proj_hidden": 32, "proj_dim": 16, "aux_hidden": 32,
        "num_workers": 0, "amp": False, "device": "cpu", "log_every": 1, "checkpoint_every": 2}))
    assert pretrain_main(["--config", str(cfg), f"output_dir={tmp_path / 'out'}"]) == 0
    ck = us3l.load_checkpoint(tmp_path / "out" / "mine" / "backbone.pth")
    assert ck.provenance["dataset"] == f"imagefolder:{folder}" and ck.provenance["images_seen"] == 12


def test_linear_and_knn_on_an_image_folder(tmp_path, capsys):
    folder = write_folder(tmp_path / "mine", {"train": 10, "val": 4})
    ckpt = write_checkpoint(tmp_path / "ck.pth")  # CIFAR stem: evaluated at 32 px
    common = ["--dataset", f"imagefolder:{folder}", "--checkpoint", str(ckpt), "--width", "0.5", "--results",
              str(tmp_path / "r"), "--device", "cpu", "--calib-batches", "1"]
    assert linear.main([*common, "--epochs", "30", "--lr", "0.1"]) == 0
    assert knn.main(common) == 0
    recs = {r["spec"]["task"]: r for r in read_records(tmp_path / "r")}
    assert sorted(recs) == ["knn", "linear"]
    for r in recs.values():
        assert r["spec"]["dataset"] == f"imagefolder:{folder}" and r["provenance"]["data"]["num_classes"] == 3
        assert (r["provenance"]["data"]["train_size"], r["provenance"]["data"]["test_size"]) == (30, 12)
    assert recs["knn"]["metrics"]["knn20_top1"] == 100.0  # one flat colour per class
    assert recs["linear"]["metrics"]["top1"] > 60
    # a bad folder: one line, exit 2, nothing written
    capsys.readouterr()
    bad = [*common]
    bad[1], bad[bad.index("--results") + 1] = f"imagefolder:{tmp_path / 'nope'}", str(tmp_path / "r2")
    assert knn.main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a folder" in err and len(err.splitlines()) == 1 and not (tmp_path / "r2").exists()
