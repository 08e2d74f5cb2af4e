"""The GPU check: the real programs with the real configs on synthetic files in the real layouts.

``python benchmarks/gpu_check.py --out DIR [--cpu]`` (``scripts/gpu_check.sh``) runs, each as its own
process so memory peaks are per run:
- ResNet-50 pretraining with ``pretrain/configs/imagenet_r50.yaml`` on a synthetic ImageNet folder,
  AMP on: the config's US3L preset (channels_last off and on) and plain ``simclr``; images/s, peak
  memory, finite losses;
- Faster R-CNN with the VOC config at widths 1.0 and 0.25 on the US3L checkpoint: s/iteration, memory, AP;
- one linear evaluation (CIFAR-10 layout) at width 0.5: wall time and top-1.
It writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md``. ``--cpu`` runs the same steps at CPU sizes (a
few iterations, 32 px images, ``device=cpu``): the rehearsal test runs it so the script cannot rot.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the real-layout fixture writers

from support.layouts import write_cifar10, write_imagenet, write_voc  # noqa: E402

from pretrain.config import load_raw  # noqa: E402

CONFIG = ROOT / "pretrain" / "configs" / "imagenet_r50.yaml"
# Only sizes change between the modes.
SIZES = {
    "gpu": {"pretrain": ["iterations=30", "log_every=10", "num_workers=12"], "images_per_class": 3840,
            "det_iters": 50, "det_sizes": ["SOLVER.IMS_PER_BATCH", "8", "SOLVER.REFERENCE_WORLD_SIZE", "0",
                                            "TEST.PRECISE_BN.NUM_ITER", "20"],
            "linear": ["--epochs", "10"], "cifar": (2000, 500)},
    "cpu": {"pretrain": ["iterations=2", "log_every=1", "num_workers=0", "batch_size=4", "image_size=32",
                         "device=cpu"],
            "images_per_class": 8, "det_iters": 4,
            "det_sizes": ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST",
                          "64", "INPUT.MAX_SIZE_TEST", "128", "SOLVER.IMS_PER_BATCH", "2",
                          "SOLVER.REFERENCE_WORLD_SIZE", "0", "TEST.PRECISE_BN.NUM_ITER", "2",
                          "MODEL.US3L.CALIBRATION_BATCHES", "1"],
            "linear": ["--epochs", "2", "--device", "cpu"], "cifar": (20, 10)},
}


def _run(cmd: list[str], env: dict[str, str], log: Path) -> float:
    """Run ``cmd``, its output to ``log``; returns the wall time (raises with the log's tail on failure)."""
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(cmd, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{' '.join(cmd)} exited with {done.returncode}; log {log}:\n{tail}")
    return time.perf_counter() - start


def pretrain(mode: str, work: Path, env: dict[str, str], preset: str, channels_last: bool) -> dict[str, Any]:
    name = f"{preset}{'-cl' if channels_last else ''}"
    out = work / "pretrain" / name
    cmd = [sys.executable, "-m", "pretrain", "--config", str(CONFIG), f"output_dir={out}",
           *([] if preset == "config" else [f"preset={preset}"]),
           f"data_root={work / 'data'}", "checkpoint_every=1000", f"channels_last={str(channels_last).lower()}",
           *SIZES[mode]["pretrain"]]
    wall = _run(cmd, env, work / f"pretrain-{name}.log")
    (out / CONFIG.stem / "last.pth").unlink()  # 540 MB of resumable state a throughput check never reads
    records = [json.loads(x) for x in (out / CONFIG.stem / "metrics.jsonl").read_text().splitlines()]
    steady = records[1:] or records  # the first window includes start-up
    return {"preset": load_raw(CONFIG)["preset"] if preset == "config" else preset,
            "channels_last": channels_last, "iterations": records[-1]["iteration"],
            "images_per_s": sum(r["images_per_s"] for r in steady) / len(steady),
            "peak_memory_mb": records[-1]["peak_memory_mb"], "precision": records[-1]["precision"],
            "loss_finite": all(math.isfinite(r["loss"]) for r in records), "last_loss": records[-1]["loss"],
            "wall_s": wall, "checkpoint": str(out / CONFIG.stem / "backbone.pth")}


def detection(mode: str, work: Path, env: dict[str, str], checkpoint: str, width: float) -> dict[str, Any]:
    out = work / "detection"
    iters = SIZES[mode]["det_iters"]
    cmd = [sys.executable, "-m", "detection.train", "--task", "voc", "--checkpoint", checkpoint, "--width", str(width),
           "--device", "cpu" if mode == "cpu" else "cuda", "--results", str(work / "results"), "--output", str(out),
           "SOLVER.MAX_ITER", str(iters), "SOLVER.CHECKPOINT_PERIOD", "100000", "TEST.EVAL_PERIOD", "0",
           *SIZES[mode]["det_sizes"]]
    wall = _run(cmd, env, work / f"detection-w{width}.log")
    for path in out.rglob("model_*.pth"):  # the fine-tuned detector is not part of the check
        path.unlink()
    [metrics_file] = [p for p in out.rglob("metrics.json") if f"w{width:.4f}" in str(p)]
    rows = [json.loads(x) for x in metrics_file.read_text().splitlines() if '"time"' in x]
    times = [r["time"] for r in rows if r["iteration"] >= min(5, iters - 2)]  # Detectron2 times from iteration 2
    log = metrics_file.with_name("log.txt").read_text()
    mem = [int(m) for m in re.findall(r"max_mem: (\d+)M", log)]
    [record] = [json.loads(p.read_text()) for p in (work / "results").glob("voc-*.json")
                if abs(json.loads(p.read_text())["spec"]["width"] - width) < 1e-9]
    return {"width": width, "iterations": iters, "s_per_iter": sum(times) / len(times),
            "max_mem_mb": max(mem) if mem else None, "AP50": record["metrics"].get("AP50"), "wall_s": wall}


def linear(mode: str, work: Path, env: dict[str, str], checkpoint: str) -> dict[str, Any]:
    results = work / "results-linear"
    cmd = [sys.executable, "-m", "transfer.linear", "--dataset", "cifar10", "--checkpoint", checkpoint, "--width",
           "0.5", "--results", str(results), "--data-root", str(work / "data"), *SIZES[mode]["linear"]]
    wall = _run(cmd, env, work / "linear.log")
    [record] = [json.loads(p.read_text()) for p in results.glob("*.json")]
    return {"dataset": "cifar10", "width": 0.5, "top1": record["metrics"]["top1"], "wall_s": wall}


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU check ({report['mode']}, {report['device']})", "",
             "| pretraining | channels_last | precision | img/s | peak MB | loss finite |", "|---|---|---|---|---|---|"]
    for r in report["pretrain"]:
        lines.append(f"| {r['preset']} | {r['channels_last']} | {r['precision']} | {r['images_per_s']:.1f} | "
                     f"{r['peak_memory_mb']:.0f} | {r['loss_finite']} |")
    lines += ["", f"us3l / simclr img/s ratio: {report['us3l_over_simclr_img_s']:.3f}; "
                  f"channels_last speed-up: {report['channels_last_speedup']:.3f}", "",
              "| detection (VOC config) | s/iter | max mem MB | AP50 |", "|---|---|---|---|"]
    for r in report["detection"]:
        lines.append(f"| width {r['width']} | {r['s_per_iter']:.3f} | {r['max_mem_mb'] or '-'} | {r['AP50']:.1f} |")
    lin = report["linear"]
    lines += ["", f"linear {lin['dataset']} w={lin['width']}: top-1 {lin['top1']:.1f} in {lin['wall_s']:.1f} s",
              f"total wall time {report['wall_s']:.0f} s", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for gpu_check.json, gpu_check.md and the logs")
    p.add_argument("--cpu", action="store_true", help="CPU sizes (CI runs this so the script cannot rot)")
    a = p.parse_args(argv)
    import torch

    mode = "cpu" if a.cpu else "gpu"
    if mode == "gpu" and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device is visible; pass --cpu for the CPU rehearsal", file=sys.stderr)
        return 2
    start = time.perf_counter()
    work = Path(a.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    write_imagenet(work / "data", n_train=SIZES[mode]["images_per_class"])
    write_voc(work / "data")
    n_train, n_test = SIZES[mode]["cifar"]
    write_cifar10(work / "data", n_train=n_train, n_test=n_test)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "DETECTRON2_DATASETS": str(work / "data"), "DATA_ROOT": str(work / "data")}
    report: dict[str, Any] = {"mode": mode, "device": torch.cuda.get_device_name(0) if mode == "gpu" else "cpu",
                              "torch": torch.__version__, "pretrain": [], "detection": []}

    def save() -> None:  # after every step, so a run cut short still leaves its figures
        report["wall_s"] = time.perf_counter() - start
        (work / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")

    # "config": the US3L preset the real config names
    for preset, cl in (("config", False), ("config", True), ("simclr", False)):
        report["pretrain"].append(pretrain(mode, work, env, preset, cl))
        save()
    runs = report["pretrain"]
    report["us3l_over_simclr_img_s"] = runs[0]["images_per_s"] / runs[2]["images_per_s"]
    report["channels_last_speedup"] = runs[1]["images_per_s"] / runs[0]["images_per_s"]
    for w in (1.0, 0.25):
        report["detection"].append(detection(mode, work, env, runs[0]["checkpoint"], w))
        save()
    report["linear"] = linear(mode, work, env, runs[0]["checkpoint"])
    save()
    (work / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(r["loss_finite"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
