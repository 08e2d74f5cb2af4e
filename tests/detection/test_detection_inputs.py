"""detection.train input checks (GroupNorm backbone, COCO image folder), dataset file listing, checkpoint pruning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import detection.d2compat  # noqa: F401

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from detection.datasets import check_dataset, image_files_of, register_shapes
from detection.hooks import prune_checkpoints
from detection.train import main
from us3l.data import DatasetMissingError


def test_group_norm_backbone_is_refused_before_anything_is_written(tmp_path, ckpt, capsys):
    out = ["--output", str(tmp_path / "det"), "--results", str(tmp_path / "res")]
    rc = main(["--task", "voc", "--checkpoint", str(ckpt), "--width", "0.5", "--demo", *out,
               "MODEL.RESNETS.NORM", "GN"])
    assert rc == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "a GroupNorm backbone cannot load the converted BatchNorm weights" in line and "--random-init" in line
    assert not (tmp_path / "det" / "voc-demo").exists() and not (tmp_path / "res").exists()


def test_coco_set_without_its_image_folder_is_reported(tmp_path, monkeypatch, ckpt, capsys):
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "annotations" / "instances_train2017.json").write_text("{}")
    (tmp_path / "coco" / "annotations" / "instances_val2017.json").write_text("{}")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(DatasetMissingError, match=r"coco/train2017 is missing"):
        check_dataset("coco_2017_train")
    rc = main(["--task", "coco", "--checkpoint", str(ckpt), "--width", "0.5", "--device", "cpu",
               "--output", str(tmp_path / "det"), "--results", str(tmp_path / "res")])
    assert rc == 2 and "coco/train2017 is missing" in capsys.readouterr().err
    # a COCO-format set registered by hand: its image_root is checked too
    (tmp_path / "mine.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    register_coco_instances("test_inputs_mine", {}, str(tmp_path / "mine.json"), str(tmp_path / "no_images"))
    with pytest.raises(DatasetMissingError, match="image folder .*no_images does not exist"):
        check_dataset("test_inputs_mine")


def test_image_files_match_the_loaders_without_reading_annotations(tmp_path, monkeypatch):
    register_shapes(tmp_path)
    for name in ("shapes_voc_train", "shapes_coco_train"):
        loaded = [d["file_name"] for d in DatasetCatalog.get(name)]
        monkeypatch.setattr(DatasetCatalog, "get", lambda n: pytest.fail(f"{n}: annotations parsed"))
        assert image_files_of(name) == loaded
        monkeypatch.undo()


def test_demo_sets_follow_the_latest_root_in_one_process(tmp_path):
    """A second job in the same process (sweeps, tests) with another datasets dir reads its own copy, not the
    first job's, which may be gone."""
    register_shapes(tmp_path / "a")
    register_shapes(tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    for name in ("shapes_voc_test", "shapes_coco_test"):
        files = [d["file_name"] for d in DatasetCatalog.get(name)]
        assert files and all(f.startswith(str(tmp_path / "b")) and Path(f).is_file() for f in files)
        check_dataset(name)
    assert MetadataCatalog.get("shapes_voc_test").evaluator_type == "pascal_voc"


def test_prune_keeps_the_newest_periodic_checkpoints_and_final(tmp_path):
    for it in (3, 7, 11, 15):
        (tmp_path / f"model_{it:07d}.pth").write_bytes(b"x")
    for other in ("model_final.pth", "backbone.pkl", "model_0000003.pth.tmp"):
        (tmp_path / other).write_bytes(b"x")
    (tmp_path / "last_checkpoint").write_text("model_0000003.pth")  # e.g. being resumed from: never deleted
    removed = prune_checkpoints(tmp_path, 2)
    assert [p.name for p in removed] == ["model_0000007.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "backbone.pkl", "last_checkpoint", "model_0000003.pth", "model_0000003.pth.tmp", "model_0000011.pth",
        "model_0000015.pth", "model_final.pth"]
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    assert [p.name for p in prune_checkpoints(tmp_path, 1)] == ["model_0000003.pth", "model_0000011.pth"]
    with pytest.raises(ValueError, match="keep must be >= 1"):
        prune_checkpoints(tmp_path, 0)
