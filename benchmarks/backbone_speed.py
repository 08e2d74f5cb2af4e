"""CPU inference latency of the detector's bottom-up network and of the whole detector at several widths.

For each width: the MACs ratio to width 1.0 beside the measured latency ratio of (a) the static
Detectron2 bottom-up ResNet built from the channel plan, (b) the same sub-network run through the
slimmable model with ``set_width`` (sliced weights every call), and (c) the whole Faster R-CNN FPN
detector (VOC config) on one image. After a warm-up, variants are timed round-robin ``--repeats``
times and the best (minimum) time is reported: the figure most robust to load from other processes.
Denormal floats are flushed to zero so that random weights cannot hit the slow denormal path.

    PYTHONPATH=. python benchmarks/backbone_speed.py [--arch resnet50] [--size 512] [--repeats 7]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from tqdm import tqdm

import detection.d2compat  # noqa: F401

# isort: split
from detectron2.modeling import build_model

import us3l
from detection.backbone import resnet_from_plan
from detection.config import build_config
from us3l.channels import channel_plan


def time_once(fn: Callable[[], object], times: list[float]) -> None:
    t = time.perf_counter()
    fn()
    times.append((time.perf_counter() - t) * 1000)


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--widths", default="1.0,0.75,0.5,0.25")
    p.add_argument("--size", type=int, default=512, help="square input size")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    widths = [float(w) for w in args.widths.split(",")]
    x = torch.randn(1, 3, args.size, args.size)
    image = [{"image": (torch.rand(3, args.size, args.size) * 255), "height": args.size, "width": args.size}]

    slim = us3l.models.build_model(args.arch, num_classes=0, width_range=(min(widths), 1.0)).eval()
    variants: dict[tuple[str, float], Callable[[], object]] = {}
    for w in widths:
        static = resnet_from_plan(channel_plan(args.arch, w), norm="BN").eval()
        cfg = build_config("voc", arch=args.arch, width=w, opts=["MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN",
                                                                   "MODEL.ROI_BOX_HEAD.NORM", "BN"])
        detector = build_model(cfg).eval()

        def run_slim(w: float = w) -> object:
            us3l.set_width(slim, w)
            return slim.forward_stages(x)

        variants[("static", w)] = lambda m=static: m(x)
        variants[("set_width", w)] = run_slim
        variants[("detector", w)] = lambda m=detector: m(image)
    for fn in variants.values():  # warm-up
        fn()
    times: dict[tuple[str, float], list[float]] = {k: [] for k in variants}
    for _ in tqdm(range(args.repeats), desc="timing"):  # round-robin: load hits every variant alike
        for key, fn in variants.items():
            time_once(fn, times[key])
    ms = {k: min(v) for k, v in times.items()}
    macs_full = us3l.count_params_macs(args.arch, 1.0, args.size, num_classes=0)[1]

    print(f"{args.arch}, input {args.size}x{args.size}, batch 1, {args.threads} threads, "
          f"best of {args.repeats}, denormals flushed")
    print("| width | backbone GMACs | MACs ratio | static bottom-up ms | ratio | set_width ms | ratio "
          "| static / set_width | detector ms | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for w in widths:
        macs = us3l.count_params_macs(args.arch, w, args.size, num_classes=0)[1]
        s, u, d = ms[("static", w)], ms[("set_width", w)], ms[("detector", w)]
        print(f"| {w:g} | {macs / 1e9:.2f} | {macs / macs_full:.3f} | {s:.1f} | {s / ms[('static', 1.0)]:.3f} "
              f"| {u:.1f} | {u / ms[('set_width', 1.0)]:.3f} | {s / u:.2f} | {d:.1f} "
              f"| {d / ms[('detector', 1.0)]:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
