"""Your own COCO-format detection sets: ``--dataset coco:NAME=ANNOTATIONS.json,IMAGES_DIR`` with a test split
likewise, trained and evaluated by ``detection.train`` (boxes only when the annotations have no masks), and
one-line errors for what is malformed or missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import detection.d2compat  # noqa: F401

# isort: split
from detectron2.config import CfgNode, get_cfg

from detection.config import add_us3l_config
from detection.train import main
from us3l.data import write_shapes
from us3l.jobs import read_records

TINY = ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "100", "MODEL.US3L.CALIBRATION_BATCHES", "1",
        "TEST.PRECISE_BN.NUM_ITER", "2"]
CLASSES = ("tile", "disc", "wedge")  # the shapes, renamed: the classes come from the annotation file


def own_set(root: Path, masks: bool, drop_class: bool = False) -> dict[str, str]:
    """A COCO-format set in a layout of the user's choosing: ``root/ann/{fit,holdout}.json``,
    ``root/pictures/{fit,holdout}/``; categories renamed, segmentation dropped unless ``masks``."""
    src = write_shapes(root / "src", "coco", seed=5, splits={"train": 12, "test": 6}, size=96)
    (root / "ann").mkdir()
    (root / "pictures").mkdir()
    out = {}
    for split, name in (("train", "fit"), ("test", "holdout")):
        data = json.loads((src / "annotations" / f"instances_{split}.json").read_text())
        data["categories"] = [{"id": c["id"], "name": CLASSES[c["id"] - 1]} for c in data["categories"]]
        if drop_class and split == "test":
            data["categories"] = data["categories"][:2]
        for a in data["annotations"]:
            if not masks:
                del a["segmentation"]
        (src / split).rename(root / "pictures" / name)
        (root / "ann" / f"{name}.json").write_text(json.dumps(data))
        tag = "m" if masks else "b"
        out[split] = f"coco:mine_{name}_{tag}={root / 'ann' / f'{name}.json'},{root / 'pictures' / name}"
    return out


def _cfg(path: Path) -> CfgNode:
    cfg = add_us3l_config(get_cfg())
    cfg.merge_from_file(str(path))
    return cfg


@pytest.mark.parametrize("masks", [False, True], ids=["boxes", "masks"])
def test_own_coco_set_trains_and_evaluates(tmp_path, ckpt, masks):
    sets = own_set(tmp_path / "data", masks)
    out = ["--output", str(tmp_path / "det"), "--results", str(tmp_path / "res")]
    rc = main(["--task", "coco", "--checkpoint", str(ckpt), "--width", "0.5", "--demo", "--dataset", sets["train"],
               "--test-dataset", sets["test"], *out, *TINY])
    assert rc == 0
    [rec] = read_records(tmp_path / "res")
    spec = rec["spec"]
    assert spec["dataset"] == f"mine_holdout_{'m' if masks else 'b'}" and rec["status"] == "ok"
    coco_sets = spec["protocol"]["coco_sets"]
    assert coco_sets["train"]["categories"] == list(CLASSES) and coco_sets["train"]["num_images"] == 12
    assert coco_sets["test"]["json"] == str((tmp_path / "data" / "ann" / "holdout.json").resolve())
    cfg = _cfg(Path(rec["provenance"]["run_dir"]) / "config.yaml")
    assert cfg.DATASETS.TRAIN == (f"mine_fit_{'m' if masks else 'b'}",)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3 and cfg.MODEL.MASK_ON is masks
    # evaluated by pycocotools on the holdout set: box AP always, mask AP only when the set has masks
    assert "box_AP" in rec["metrics"] and ("mask_AP" in rec["metrics"]) is masks
    # --eval-only of the finished run evaluates the same set again
    final = Path(rec["provenance"]["run_dir"]) / "model_final.pth"
    assert main(["--task", "coco", "--eval-only", "--weights", str(final), "--demo", *out]) == 0
    again = [r for r in read_records(tmp_path / "res") if r["id"] != rec["id"]]
    assert len(again) == 1 and again[0]["metrics"]["box_AP"] == pytest.approx(rec["metrics"]["box_AP"], abs=1e-6)


def _error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    return line


def test_bad_own_sets_are_refused_in_one_line(tmp_path, ckpt, capsys):
    sets = own_set(tmp_path / "data", masks=False)
    base = ["--checkpoint", str(ckpt), "--width", "0.5", "--demo", "--output", str(tmp_path / "det"),
            "--results", str(tmp_path / "res")]
    coco = ["--task", "coco", *base]
    train, test = sets["train"], sets["test"]
    assert "coco:NAME=ANNOTATIONS.json,IMAGES_DIR" in _error(capsys, [*coco, "--dataset", "mine.json",
                                                                      "--test-dataset", test])
    assert "go together" in _error(capsys, [*coco, "--dataset", train])
    assert "--task coco" in _error(capsys, ["--task", "voc", *base, "--dataset", train, "--test-dataset", test])
    missing = train.replace("fit.json", "nope.json")
    assert "nope.json does not exist" in _error(capsys, [*coco, "--dataset", missing, "--test-dataset", test])
    no_dir = train.replace("pictures/fit", "pictures/gone")
    assert "image folder" in _error(capsys, [*coco, "--dataset", no_dir, "--test-dataset", test])
    # an image the annotation file lists is not in the folder
    next((tmp_path / "data" / "pictures" / "fit").iterdir()).unlink()
    assert "1 of 12 images" in _error(capsys, [*coco, "--dataset", train, "--test-dataset", test])
    # not a COCO annotation file
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    line = _error(capsys, [*coco, "--dataset", f"coco:bad={bad},{tmp_path}", "--test-dataset", test])
    assert "not a COCO annotation file" in line and "'annotations'" in line
    assert "built-in" in _error(capsys, [*coco, "--dataset", train.replace("mine_fit_b", "coco_2017_train"),
                                         "--test-dataset", test])
    assert not (tmp_path / "res").exists() or not list((tmp_path / "res").iterdir())


def test_categories_must_agree_and_masks_need_segmentation(tmp_path, ckpt, capsys):
    sets = own_set(tmp_path / "data", masks=False, drop_class=True)
    coco = ["--task", "coco", "--checkpoint", str(ckpt), "--width", "0.5", "--demo", "--output",
            str(tmp_path / "det"), "--results", str(tmp_path / "res"), "--dataset", sets["train"]]
    assert "different categories" in _error(capsys, [*coco, "--test-dataset", sets["test"]])
    ok = own_set(tmp_path / "data2", masks=False)
    coco[-1] = ok["train"]
    assert "no segmentation" in _error(capsys, [*coco, "--test-dataset", ok["test"], "MODEL.MASK_ON", "True"])
    assert "NUM_CLASSES" in _error(capsys, [*coco, "--test-dataset", ok["test"], "MODEL.ROI_HEADS.NUM_CLASSES", "5"])
    assert "DATASETS" in _error(capsys, [*coco, "--test-dataset", ok["test"], "DATASETS.TEST", "('x',)"])
