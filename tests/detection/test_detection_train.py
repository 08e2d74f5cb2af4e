"""detection.train end to end on the demo sets: errors before training (no silent CPU), COCO record, kill and
resume, seeded deterministic runs, bfloat16 AMP on CPU, and resumes that would change the precision."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from support import ROOT

import detection.d2compat  # noqa: F401

# isort: split
from detectron2.config import CfgNode, get_cfg
from detectron2.data.datasets.pascal_voc import load_voc_instances
from pycocotools.coco import COCO

import us3l
from detection.config import add_us3l_config
from detection.convert import convert
from detection.train import Trainer, checkpoint_precision, main, make_job
from us3l.data import DETECTION_CLASSES as SHAPE_CLASSES
from us3l.data import check_builtin, write_shapes
from us3l.jobs import read_records

# A tiny schedule on top of --demo: few iterations, one calibration batch.
TINY = ["MODEL.US3L.CALIBRATION_BATCHES", "1", "TEST.PRECISE_BN.NUM_ITER", "2"]


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
    assert main(["--task", "voc", "--checkpoint", str(ckpt), "--width", "0.5", "--demo", "--device", "cpu",
                 "--num-gpus", "2", *out]) == 2
    assert "on CPU use --num-gpus 1" in capsys.readouterr().err
    assert not (tmp_path / "det" / "voc-demo").exists() and not (tmp_path / "res").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_real_run_without_cuda_stops_naming_device_cpu(tmp_path, ckpt, capsys):
    out = ["--output", str(tmp_path / "det"), "--results", str(tmp_path / "res")]
    assert main(["--task", "voc", "--checkpoint", str(ckpt), "--width", "0.5", *out]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == ("python -m detection.train: error: no CUDA device is visible and this is not a demo run "
                    "(it would train on CPU): "
                    "pass --device cpu to run it on CPU anyway")
    assert main(["--task", "voc", "--checkpoint", str(ckpt), "--width", "0.5", "--demo", "--device", "cuda",
                 *out]) == 2
    assert "pass --device cpu" in capsys.readouterr().err
    assert not (tmp_path / "det").exists() and not (tmp_path / "res").exists()


def _cfg_of(path: Path) -> CfgNode:
    """The config a run directory's ``config.yaml`` holds."""
    cfg = add_us3l_config(get_cfg())
    cfg.merge_from_file(str(path))
    return cfg


def _strict(text: str) -> dict:
    def reject(name: str) -> None:
        raise ValueError(f"{name} in a record")

    return json.loads(text, parse_constant=reject)


def test_coco_demo_writes_box_and_mask_record(tmp_path, ckpt, capsys):
    rc = main(["--task", "coco", "--checkpoint", str(ckpt), "--width", "0.5", "--demo",
               "--output", str(tmp_path / "det"), "--results", str(tmp_path / "res"),
               "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "100", *TINY])
    assert rc == 0
    [rec] = read_records(tmp_path / "res")
    assert rec == {**_strict(open(rec["_path"]).read()), "_path": rec["_path"]}  # no NaN: strict JSON
    spec, cost = rec["spec"], rec["cost"]
    assert spec["task"] == "coco" and spec["dataset"] == "shapes_coco_test" and spec["demo"] is True
    named = set(rec["metrics"]) | set(rec["undefined_metrics"])  # APl: no large objects in the demo set
    assert {"box_AP", "box_AP50", "box_APl", "mask_AP", "mask_AP75", "mask_APs"} <= named
    assert {"box_AP", "mask_AP"} <= set(rec["metrics"]) and rec["status"] == "ok"
    assert (spec["width"], spec["arch"]) == (0.5, "resnet18")
    assert spec["checkpoint_sha256"] == us3l.file_sha256(ckpt)
    # the cost: the backbone's and the whole detector's, at the test size (the demo's 128 px)
    assert cost["input_size"] == 128
    assert (cost["backbone_params"], cost["backbone_macs"]) == us3l.count_params_macs("resnet18", 0.5, 128,
                                                                                      num_classes=0)
    run_dir = Path(rec["provenance"]["run_dir"])
    cfg = _cfg_of(run_dir / "config.yaml")
    assert cost["detector_params"] == sum(p.numel() for p in Trainer.build_model(cfg).parameters())
    assert cost["detector_params"] > cost["backbone_params"]  # and FPN, RPN and box/mask heads
    assert cost["detector_macs"] > cost["backbone_macs"]  # and heads on 100 proposals and 100 detections
    # the run directory carries the spec's identity; a relaunch into it with another spec is refused
    assert run_dir.name == f"w0.5000-{rec['id']}" and json.loads((run_dir / "job.json").read_text())["spec_id"]
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    capsys.readouterr()
    assert main(["--task", "coco", "--checkpoint", str(ckpt), "--width", "0.5", "--demo", "--run-dir", str(run_dir),
                 "--output", str(tmp_path / "det"), "--results", str(tmp_path / "res"),
                 "SOLVER.MAX_ITER", "5", "SOLVER.CHECKPOINT_PERIOD", "100", *TINY]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"python -m detection.train: error: {run_dir} holds run {rec['id']}, not this job's ")
    assert "protocol.max_iter" in line and "overrides" in line
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before  # nothing written
    assert len(read_records(tmp_path / "res")) == 1


def test_diverged_run_exits_1_with_a_failed_record(tmp_path, ckpt, capsys):
    """A NaN or infinite loss (Detectron2's FloatingPointError) ends the run: exit 1, one line, and a failed record
    with no metric but the detector's cost."""
    assert main(["--task", "voc", "--checkpoint", str(ckpt), "--width", "0.25", "--demo",
                 "--output", str(tmp_path / "det"), "--results", str(tmp_path / "res"),
                 "SOLVER.BASE_LR", "1e30", "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "100", *TINY]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("python -m detection.train: error: diverged: ") and "NaN" in line
    assert line.endswith(f"failed record in {tmp_path}/res")
    [rec] = read_records(tmp_path / "res")
    assert (rec["status"], rec["metrics"]) == ("failed", {}) and rec["error"].startswith("FloatingPointError: ")
    assert rec["cost"]["detector_params"] > rec["cost"]["backbone_params"] > 0
    assert rec == {**_strict(open(rec["_path"]).read()), "_path": rec["_path"]}


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
        found = list((tmp_path / "det").glob("voc-demo/w0.2500-*/model_0000003.pth"))
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
    assert (rec["spec"]["task"], rec["spec"]["dataset"], rec["spec"]["demo"]) == ("voc", "shapes_voc_test", True)
    assert set(rec["metrics"]) == {"AP", "AP50", "AP75"}
    assert json.loads((run_dir / "job.json").read_text())["resume"] is True


# Seeded runs: 10 iterations with every iteration's losses in metrics.json, and detections at any score so
# that AP is not zero after so short a schedule.
SEEDED = ["SEED", "7", "SOLVER.MAX_ITER", "10", "SOLVER.CHECKPOINT_PERIOD", "5", "SOLVER.LOG_PERIOD", "1",
          "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", *TINY]


def _seeded_argv(root: Path, ckpt: Path, name: str, flags: tuple[str, ...] = (),
                 opts: tuple[str, ...] = ()) -> list[str]:
    return ["--task", "voc", "--checkpoint", str(ckpt), "--width", "0.25", "--demo", "--deterministic",
            "--output", str(root / name), "--results", str(root / name / "res"), *flags, *SEEDED, *opts]


def _seeded(root: Path, ckpt: Path, name: str, flags: tuple[str, ...] = (), opts: tuple[str, ...] = ()) -> int:
    return main(_seeded_argv(root, ckpt, name, flags, opts))


def _run_dir(root: Path, name: str) -> Path:
    [run_dir] = (root / name).glob("voc-demo/w0.2500-*")
    return run_dir


def _losses(run_dir: Path) -> list[dict[str, float]]:
    lines = [json.loads(ln) for ln in (run_dir / "metrics.json").read_text().splitlines()]
    return [{k: v for k, v in ln.items() if k.startswith("loss") or k == "total_loss"}
            for ln in lines if "total_loss" in ln]


@contextlib.contextmanager
def _global_state_restored() -> Iterator[None]:
    """In-process runs set deterministic mode and PYTHONHASHSEED: leave no global state behind."""
    env = dict(os.environ)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(env)
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2:]


@pytest.fixture(scope="module")
def seeded_runs(module_dir, ckpt):
    """Runs a and b (float32) and c (SOLVER.AMP.ENABLED: bfloat16 on CPU), all seed 7 and --deterministic."""
    root = module_dir / "seeded"
    root.mkdir()
    with _global_state_restored():
        for name, opts in (("a", ()), ("b", ()), ("c", ("SOLVER.AMP.ENABLED", "True"))):
            assert _seeded(root, ckpt, name, opts=opts) == 0
    return root, {n: (_losses(_run_dir(root, n)), read_records(root / n / "res")[0]) for n in "abc"}


def test_same_seed_deterministic_runs_repeat_losses_and_ap(seeded_runs):
    _, runs = seeded_runs
    (losses_a, rec_a), (losses_b, rec_b) = runs["a"], runs["b"]
    assert len(losses_a) == 10 and len(losses_a[0]) >= 5  # every iteration, every loss term
    assert losses_a == losses_b  # bitwise: same seed, deterministic kernels
    assert len({ln["total_loss"] for ln in losses_a}) == 10  # and they are real per-iteration values
    assert rec_a["metrics"] == rec_b["metrics"] and rec_a["metrics"]["AP50"] > 0
    prov = rec_a["provenance"]
    assert (rec_a["spec"]["seed"], prov["precision"], rec_a["spec"]["protocol"]["deterministic"]) == (7, "float32",
                                                                                                      True)
    assert (prov["device"]["type"], prov["device"]["count"]) == ("cpu", 1) and prov["device"]["name"]


def test_amp_on_cpu_trains_in_bfloat16(seeded_runs):
    root, runs = seeded_runs
    (fp32, _), (bf16, rec) = runs["a"], runs["c"]
    assert rec["provenance"]["precision"] == "amp-bfloat16"
    assert checkpoint_precision(_run_dir(root, "c") / "model_final.pth") == "amp-bfloat16"
    assert checkpoint_precision(_run_dir(root, "a") / "model_final.pth") == "float32"
    # same model and data in another arithmetic: close at the first step, not equal
    assert fp32[0]["total_loss"] != bf16[0]["total_loss"]
    assert abs(fp32[0]["total_loss"] - bf16[0]["total_loss"]) < 0.05 * fp32[0]["total_loss"]


def test_resume_in_another_precision_stops_before_any_work(seeded_runs, ckpt, tmp_path, capsys):
    """The AMP flag is part of a run's spec: another flag is another run with its own directory, and a relaunch
    into this one is refused. The same spec resumed on another device type (a CUDA float16 AMP checkpoint
    resumed on CPU, where AMP means bfloat16) is refused by the precision check."""
    root, _ = seeded_runs
    for name, copy in (("a", "a"), ("c", "c"), ("c", "cuda")):
        shutil.copytree(root / name, tmp_path / copy)
    capsys.readouterr()

    def refused(name: str, flags: tuple[str, ...], amp: str) -> str:
        run_dir = _run_dir(tmp_path, name)
        before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
        with _global_state_restored():
            assert _seeded(tmp_path, ckpt, name, ("--resume", *flags), ("SOLVER.AMP.ENABLED", amp)) == 2
        assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before  # nothing written
        [line] = capsys.readouterr().err.strip().splitlines()
        return line

    a_dir = _run_dir(tmp_path, "a")
    other, _ = make_job(_seeded_argv(tmp_path, ckpt, "a", (), ("SOLVER.AMP.ENABLED", "True")))
    assert not a_dir.name.endswith(other.id)  # another spec, another directory
    line = refused("a", ("--run-dir", str(a_dir)), "True")
    assert f"holds run {a_dir.name.split('-')[1]}, not this job's {other.id}" in line and "protocol.amp" in line
    # a checkpoint of Detectron2's CUDA AMPTrainer (fp32 <-> AMP resumes crashed with KeyError: 'grad_scaler')
    last = _run_dir(tmp_path, "cuda") / "model_final.pth"
    state = torch.load(last, map_location="cpu")
    del state["trainer"]["_trainer"]["precision"]
    state["trainer"]["_trainer"]["grad_scaler"] = {"scale": 65536.0, "growth_factor": 2.0}
    torch.save(state, last)
    line = refused("cuda", (), "True")
    assert "was trained in amp-float16, this run would continue in amp-bfloat16" in line
    assert "SOLVER.AMP.ENABLED True" in line
    # the same precision resumes the bfloat16 run: nothing left to train, evaluated and recorded again
    with _global_state_restored():
        assert _seeded(tmp_path, ckpt, "c", ("--resume",), ("SOLVER.AMP.ENABLED", "True")) == 0
    log = (_run_dir(tmp_path, "c") / "log.txt").read_text()
    assert "training from iteration 10 to 10" in log  # resumed at the end, did not start over
    [rec] = read_records(tmp_path / "c" / "res")
    assert rec["provenance"]["precision"] == "amp-bfloat16"
