"""The rehearsal: the real make targets with the real config files, on tiny datasets written in the real
on-disk layouts under a temporary DATA_ROOT / DETECTRON2_DATASETS. Only sizes change (iterations,
batch, image size) and the device (device=cpu / --device cpu); AMP runs as bfloat16 autocast, two
processes as gloo. Each step must leave its checkpoint or record; a failure here is a failure of the
path users run. The tests run in file order and build on each other (pretrain -> voc/coco/linear ->
sweep -> plot)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from support import ROOT
from support.layouts import write_all
from support.slurm import SKIP_REASON, SLURM_REASON

import us3l

# Sizes only: the real configs otherwise (schedules, heads, evaluators).
PRETRAIN_SIZES = ("device=cpu amp=true batch_size=4 image_size=32 iterations=2 num_workers=0 checkpoint_every=2 "
                  "log_every=1")
# ARGS reach a shell command line: shell-quoted.
DETECTION_SIZES = shlex.join(
    "SOLVER.MAX_ITER 4 SOLVER.IMS_PER_BATCH 2 SOLVER.REFERENCE_WORLD_SIZE 0 SOLVER.CHECKPOINT_PERIOD 1000 "
    "INPUT.MIN_SIZE_TRAIN (64,) INPUT.MAX_SIZE_TRAIN 128 INPUT.MIN_SIZE_TEST 64 INPUT.MAX_SIZE_TEST 128 "
    "TEST.PRECISE_BN.NUM_ITER 2 MODEL.US3L.CALIBRATION_BATCHES 1 DATALOADER.NUM_WORKERS 0 "
    # after 4 iterations no class score passes the usual 0.05 (1/81 for COCO): score every detection
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0 TEST.DETECTIONS_PER_IMAGE 20".split())
LINEAR_SIZES = "--epochs 2"


class World:
    """The temporary data root, output directory and environment of the rehearsal."""

    def __init__(self, base: Path) -> None:
        self.data, self.out = base / "data", base / "out"
        write_all(self.data)
        self.env = {**os.environ, "DATA_ROOT": str(self.data), "DETECTRON2_DATASETS": str(self.data),
                    "OMP_WAIT_POLICY": "PASSIVE"}
        self.r50 = self.out / "pretrain" / "imagenet_r50" / "backbone.pth"
        self.r18 = self.out / "pretrain" / "cifar100_r18" / "backbone.pth"

    def make(self, target: str, **variables: str) -> str:
        args = [f"{k}={v}" for k, v in {"OUTPUT": str(self.out), **variables}.items()]
        done = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), target, *args], env=self.env,
                              capture_output=True, text=True)
        assert done.returncode == 0, (f"make {target} {shlex.join(args)} failed:\n"
                                      f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
        self.drop_training_state()
        return done.stdout + done.stderr

    def drop_training_state(self) -> None:
        """Remove what no later step reads: resumable pretraining state (last.pth, 540 MB for ResNet-50) and
        detection checkpoints. Backbones and records stay."""
        for pattern in ("last.pth", "model_*.pth"):
            for path in self.out.rglob(pattern):
                path.unlink()

    def records(self, task: str, dataset: str | None = None) -> list[dict]:
        found = [json.loads(p.read_text()) for p in (self.out / "results").glob("*.json")]
        return [r for r in found if r["spec"]["task"] == task and (dataset is None or r["spec"]["dataset"] == dataset)]


@pytest.fixture(scope="module")
def world(module_dir) -> World:
    return World(module_dir)


@pytest.mark.parametrize("config, arch", [("imagenet_r50", "resnet50"), ("cifar100_r18", "resnet18")])
def test_make_pretrain_real_config_amp_two_processes(world, config, arch):
    world.make("pretrain", PRETRAIN_CONFIG=f"pretrain/configs/{config}.yaml", GPUS="2", ARGS=PRETRAIN_SIZES)
    run = world.out / "pretrain" / config
    ck = us3l.load_checkpoint(run / "backbone.pth")
    preset = yaml.safe_load((ROOT / "pretrain" / "configs" / f"{config}.yaml").read_text())["preset"]
    assert ck.arch == arch and ck.method == preset and ck.method.startswith("us3l")
    assert ck.provenance["world_size"] == 2 and ck.provenance["precision"] == "amp-bfloat16"
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["precision"] for m in metrics] == ["amp-bfloat16"] * 2
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)


@pytest.mark.parametrize("task, width", [("voc", "0.25"), ("coco", "0.5")])
def test_make_detection_real_config_on_the_new_checkpoint(world, task, width):
    world.make(task, WIDTH=width, CKPT=str(world.r50), DEVICE="cpu", ARGS=DETECTION_SIZES)
    [record] = world.records(task)
    spec = record["spec"]
    assert spec["width"] == float(width) and spec["checkpoint_sha256"] == us3l.file_sha256(world.r50)
    keys = {"AP", "AP50", "AP75"} if task == "voc" else {"box_AP", "mask_AP", "box_AP50", "mask_AP50"}
    assert keys <= set(record["metrics"])


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "flowers102", "pets", "dtd"])
def test_make_linear_on_each_recognition_dataset(world, dataset):
    ckpt = world.r18 if dataset.startswith("cifar") else world.r50
    world.make("linear", DATASET=dataset, WIDTH="0.5", CKPT=str(ckpt), DEVICE="cpu", ARGS=LINEAR_SIZES)
    [record] = world.records("linear", dataset)
    assert 0.0 <= record["metrics"]["top1"] <= 100.0 and record["spec"]["checkpoint_sha256"] == us3l.file_sha256(ckpt)


@pytest.mark.slurm
@pytest.mark.skipif(bool(SLURM_REASON), reason=SKIP_REASON)
def test_make_sweep_on_slurm_then_plot(world):
    results = world.out / "sweep-results"
    world.make("sweep", EXECUTOR="slurm", CKPT=str(world.r50), TASKS="voc,linear:pets", WIDTHS="0.25", DEVICE="cpu",
               RESULTS=str(results), ARGS=f"--cpus-per-job 1 --poll-s 1 "
                                          f"--detection-args {shlex.quote(DETECTION_SIZES)} "
                                          f"--linear-args {shlex.quote(LINEAR_SIZES)}")
    tasks = sorted((json.loads(p.read_text())["spec"]["task"], json.loads(p.read_text())["spec"]["dataset"])
                   for p in results.glob("*.json"))
    assert tasks == [("linear", "pets"), ("voc", "voc_2007_test")]
    world.make("plot", RESULTS=str(results))
    assert (world.out / "plots" / "summary.md").is_file() and list((world.out / "plots").glob("*.png"))


def test_gpu_check_script_in_cpu_mode(world):
    out = world.out / "gpu_check"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out), "--cpu"], env=world.env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    us3l_preset = yaml.safe_load((ROOT / "pretrain" / "configs" / "imagenet_r50.yaml").read_text())["preset"]
    assert [(r["preset"], r["channels_last"]) for r in report["pretrain"]] == [
        (us3l_preset, False), (us3l_preset, True), ("simclr", False)]
    assert all(r["loss_finite"] and r["images_per_s"] > 0 for r in report["pretrain"])
    assert [d["width"] for d in report["detection"]] == [1.0, 0.25] and all(
        d["s_per_iter"] > 0 for d in report["detection"])
    assert f"| {us3l_preset} |" in (out / "gpu_check.md").read_text()
