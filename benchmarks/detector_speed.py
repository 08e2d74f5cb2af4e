"""Whole-detector cost at several widths, fixed (paper) versus scaled (``MODEL.US3L.SCALE_HEADS``) heads.

For each image size, head setting and width: the detector's parameters and GMACs and its inference latency
on one image, split into the network and the post-processing (:mod:`detection.cost`). Proposal and
detection counts are pinned (the box head always sees ``POST_NMS_TOPK_TEST`` boxes, the mask head
``DETECTIONS_PER_IMAGE``), so the network's work does not depend on the random weights; post-processing
still does and is reported apart. BatchNorm is folded into the convolutions, denormals are flushed, each
model is built from seed 0, and after a warm-up the variants are timed round-robin ``--repeats`` times per
thread count; the best (minimum) of each figure is reported. Ratios are to width 1.0 with the same heads.
The image is VOC-shaped: 4:3, its short side the test size. ``--timer cpu`` (one thread only) times the
calling thread's CPU time instead of wall time: on a machine shared with other jobs it leaves out the time
they take from the run (not the cache and memory bandwidth they share).

    PYTHONPATH=. python benchmarks/detector_speed.py [--task voc] [--sizes 800,512] [--threads 1,2] [--repeats 5]
        [--timer wall|cpu]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from tqdm import tqdm

import detection.d2compat  # noqa: F401

# isort: split
from detectron2.modeling import build_model

from detection.config import build_config
from detection.cost import Clock, detector_params_macs, fold_batchnorm, staged_inference

BN = ["MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN", "MODEL.ROI_BOX_HEAD.NORM", "BN",
      "MODEL.ROI_MASK_HEAD.NORM", "BN"]
HEADS = {"fixed": False, "scaled": True}
GOAL = 1.3  # scaled heads at the smallest width: latency ratio <= GOAL x MACs ratio


def build(task: str, arch: str, width: float, scaled: bool, device: str) -> torch.nn.Module:
    """The detector of ``task``'s config at ``width`` (seed 0, BatchNorm folded, eval mode)."""
    torch.manual_seed(0)
    cfg = build_config(task, arch=arch, width=width, device=device,
                       opts=[*BN, "MODEL.US3L.SCALE_HEADS", str(scaled)])
    return fold_batchnorm(build_model(cfg).eval())


def table(rows: dict, widths: list[float]) -> list[str]:
    """Markdown rows for one (threads, size): each head setting at each width, ratios to width 1.0."""
    out = ["| heads | width | params (M) | GMACs | MACs ratio | network ms | ratio | post ms | total ms | ratio "
           "| detections |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for heads in HEADS:
        ref = rows[(heads, widths[0])]
        for w in widths:
            r = rows[(heads, w)]
            out.append(f"| {heads} | {w:g} | {r['params'] / 1e6:.1f} | {r['macs'] / 1e9:.1f} "
                       f"| {r['macs'] / ref['macs']:.3f} | {r['network']:.0f} | {r['network'] / ref['network']:.3f} "
                       f"| {r['post']:.0f} | {r['total']:.0f} | {r['total'] / ref['total']:.3f} | {r['dets']} |")
    return out


def goal_line(rows: dict, widths: list[float], threads: str, size: int) -> str:
    full, small = rows[("scaled", widths[0])], rows[("scaled", widths[-1])]
    macs = small["macs"] / full["macs"]
    net, tot = small["network"] / full["network"], small["total"] / full["total"]
    return (f"{threads}, {size} px, scaled heads at {widths[-1]:g}: MACs ratio {macs:.3f}; network latency "
            f"ratio {net:.3f} = {net / macs:.2f}x it, total {tot:.3f} = {tot / macs:.2f}x it "
            f"(goal <= {GOAL}x: network {'met' if net / macs <= GOAL else 'NOT met'}, "
            f"total {'met' if tot / macs <= GOAL else 'NOT met'})")


@torch.inference_mode()
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="voc", choices=("voc", "coco"))
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--widths", default="1.0,0.75,0.5,0.25", help="first one is the reference")
    p.add_argument("--sizes", default="800,512", help="short sides of the image (800: the configs' test size)")
    p.add_argument("--threads", default="1,2", help="CPU thread counts, each timed in turn")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--timer", default="wall", choices=("wall", "cpu"),
                   help="cpu: the thread's CPU time (CPU, one thread only), not counting time other jobs take")
    args = p.parse_args(argv)
    widths = [float(w) for w in args.widths.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    cuda = args.device == "cuda"
    threads = [torch.get_num_threads()] if cuda else [int(t) for t in args.threads.split(",")]
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if args.timer == "cpu" and (cuda or threads != [1]):
        p.error("--timer cpu times one CPU thread: use --device cpu --threads 1")
    timer = time.thread_time if args.timer == "cpu" else time.perf_counter
    torch.set_flush_denormal(True)
    load_before = os.getloadavg()
    models = {(h, w): build(args.task, args.arch, w, s, args.device) for h, s in HEADS.items() for w in widths}
    g = torch.Generator().manual_seed(0)
    images = {s: torch.rand(3, s, round(s * 4 / 3), generator=g) * 255 for s in sizes}
    torch.set_num_threads(threads[0])
    cost = {(k, s): detector_params_macs(m, *images[s].shape[-2:]) for k, m in models.items() for s in sizes}
    report = []
    for n in threads:
        torch.set_num_threads(n)
        keys = [(k, s) for s in sizes for k in models]
        for k, s in keys:  # warm-up at this thread count
            staged_inference(models[k], images[s])
        times: dict = {key: [] for key in keys}
        dets: dict = {}
        for _ in tqdm(range(args.repeats), desc=f"{n} threads"):  # round-robin: load hits every variant alike
            for k, s in keys:
                clock = Clock(sync, timer)
                dets[(k, s)] = len(staged_inference(models[k], images[s], clock=clock))
                times[(k, s)].append(clock.laps)
        where = args.device if cuda else f"CPU, {n} thread{'s' * (n > 1)}{', CPU time' * (args.timer == 'cpu')}"
        for s in sizes:
            rows = {}
            for k in models:
                laps = times[(k, s)]
                rows[k] = {"params": cost[(k, s)][0], "macs": cost[(k, s)][1], "dets": dets[(k, s)],
                           **{part: 1000 * min(t[part] for t in laps) for part in ("network", "post")},
                           "total": 1000 * min(t["network"] + t["post"] for t in laps)}
            h, w = images[s].shape[-2:]
            report += [f"\n{args.task} {args.arch}, {h}x{w} image, {where}, best of {args.repeats}",
                       *table(rows, widths), goal_line(rows, widths, where, s)]
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (1 min)")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
