"""detection.train end to end on the demo sets: errors before training, COCO record, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import detection.d2compat  # noqa: F401

# isort: split
from detectron2.data.datasets.pascal_voc import load_voc_instances
from pycocotools.coco import COCO

import us3l
from detection.convert import convert
from detection.datasets import SHAPE_CLASSES, check_builtin, write_shapes
from detection.train import main
from transfer.results import read_records

ROOT = Path(__file__).resolve().parents[1]
# A tiny schedule on top of --demo: few iterations, one calibration batch.
TINY = ["MODEL.US3L.CALIBRATION_BATCHES", "1", "TEST.PRECISE_BN.NUM_ITER", "2"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "backbone.pth"
    us3l.save_checkpoint(path, us3l.models.us_resnet18(num_classes=0), method="test",
                         config={"data": {"dataset": "shapes"}}, provenance={})
    return path


def test_shapes_sets_are_deterministic_and_read_by_real_loaders(tmp_path):
    splits = {"train": 5, "test": 3}
    a = write_shapes(tmp_path / "a", "voc", seed=3, splits=splits, size=64)
    b = write_shapes(tmp_path / "b", "voc", seed=3, splits=splits, size=64)
    c = write_shapes(tmp_path / "c", "coco", seed=3, splits=splits, size=64)
    for f in sorted((a / "Annotations").iterdir()):
        assert f.read_bytes() == (b / "Annotations" / f.name).read_bytes()
    assert not list(tmp_path.glob(".*"))  # no temporary directories left behind
    voc = load_voc_instances(str(a), "train", list(SHAPE_CLASSES))
    coco = COCO(str(c / "annotations" / "instances_train.json"))
    assert len(voc) == 5 and len(coco.getImgIds()) == 5
    for d, img_id in zip(voc, sorted(coco.getImgIds())):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        assert len(anns) == len(d["annotations"]) >= 1
        for ann, inst in zip(anns, d["annotations"]):
            x, y, w, h = ann["bbox"]
            assert max(abs(x - inst["bbox"][0]), abs(x + w - inst["bbox"][2])) <= 1.0  # same box, VOC rounding
            assert SHAPE_CLASSES[ann["category_id"] - 1] == SHAPE_CLASSES[inst["category_id"]]
            assert coco.annToMask(ann).sum() > 0.3 * w * h  # polygons fill their boxes


def test_missing_builtin_dataset_names_path_layout_and_demo(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"voc_2007_trainval.*VOC2007.*trainval.txt.*DEMO=1"):
        check_builtin("voc_2007_trainval")


def test_input_errors_before_any_training(tmp_path, ckpt, capsys):
    out = ["--output", str(tmp_path / "det"), "--results", str(tmp_path / "res")]
    assert main(["--task", "voc", "--checkpoint", str(ckpt), "--width", "0.2", "--demo", *out]) == 2
    assert "width 0.2 is outside the range [0.25, 1]" in capsys.readouterr().err
    bogus = tmp_path / "bogus.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bogus)
    assert main(["--task", "voc", "--checkpoint", str(bogus), "--width", "0.5", "--demo", *out]) == 2
    assert "not a us3l backbone checkpoint" in capsys.readouterr().err
    pkl = convert(us3l.load_checkpoint(ckpt), 0.5, tmp_path / "w05.pkl")
    assert main(["--task", "voc", "--weights", str(pkl), "--width", "0.25", "--demo", *out]) == 2
    assert "converted at width 0.5, but the config's width is 0.25" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--task", "voc", "--width", "0.5"])  # neither --checkpoint nor --weights
    assert e.value.code == 2
    assert not (tmp_path / "det" / "voc-demo").exists() and not (tmp_path / "res").exists()


def test_coco_demo_writes_box_and_mask_record(tmp_path, ckpt):
    rc = main(["--task", "coco", "--checkpoint", str(ckpt), "--width", "0.5", "--demo",
               "--output", str(tmp_path / "det"), "--results", str(tmp_path / "res"),
               "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "100", *TINY])
    assert rc == 0
    [rec] = read_records(tmp_path / "res")
    assert rec["task"] == "coco" and rec["dataset"] == "shapes_coco_test" and rec["demo"] is True
    assert {"box_AP", "box_AP50", "box_APl", "mask_AP", "mask_AP75", "mask_APs"} <= set(rec["metrics"])
    assert (rec["width"], rec["arch"]) == (0.5, "resnet18")
    assert (rec["params"], rec["macs"]) == us3l.count_params_macs("resnet18", 0.5, 224, num_classes=0)
    assert rec["checkpoint_sha256"] == us3l.file_sha256(ckpt)


def _train_cmd(tmp_path: Path, ckpt: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "detection.train", "--task", "voc", "--checkpoint", str(ckpt), "--width", "0.25",
            "--demo", "--output", str(tmp_path / "det"), "--results", str(tmp_path / "res"), *extra,
            "SOLVER.MAX_ITER", "14", "SOLVER.CHECKPOINT_PERIOD", "4", *TINY]


def test_killed_run_resumes_and_finishes(tmp_path, ckpt):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(_train_cmd(tmp_path, ckpt), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    first = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "det").glob("voc-demo/*/w0.2500/model_0000003.pth"))
        if found and (found[0].parent / "last_checkpoint").exists():
            first = found[0]
            break
        time.sleep(0.1)
    assert first is not None, "no first checkpoint appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = first.parent
    assert not (tmp_path / "res").exists()  # a killed run writes no record
    assert not (run_dir / "model_final.pth").exists()

    done = subprocess.run(_train_cmd(tmp_path, ckpt, "--resume"), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    started = [line for line in (done.stdout + done.stderr).splitlines() if "training from iteration" in line]
    resumed_at = int(started[0].split("training from iteration ")[1].split()[0])
    assert resumed_at >= 4  # continued after the checkpoint, did not start over
    assert (run_dir / "model_final.pth").exists()
    [rec] = read_records(tmp_path / "res")
    assert rec["task"] == "voc" and rec["dataset"] == "shapes_voc_test" and rec["demo"] is True
    assert set(rec["metrics"]) == {"AP", "AP50", "AP75"}
    assert json.loads((run_dir / "job.json").read_text())["resume"] is True
