"""Linear evaluation with the feature cache versus through the backbone every epoch, 9 widths, one run.

Both arms use the same calibrated export per width, the same protocol (paper: lr 30, 100 epochs, steps
at 60/80, batch 256) and the same shuffling, so top-1 must agree; the cached arm pays one extraction
(written to and read back from the on-disk cache) where the other passes every image through the
backbone every epoch. Prints per-width times and top-1, the speed-up ratio and the largest top-1 gap.

Usage: PYTHONPATH=. python benchmarks/linear_cache.py [--checkpoint CKPT] [--train-size 200] [--epochs 100]
(default checkpoint: the demo's output/pretrain/demo_shapes/backbone.pth, else a random-init ResNet-18)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

import us3l
from transfer.features import cache_key, extract, load_cached, save_cached
from transfer.linear import Protocol, accuracy, backbone_batches, cached_batches, fit_linear
from us3l import data as D

DEMO_CKPT = Path("output/pretrain/demo_shapes/backbone.pth")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--data-root", type=Path, help="default: DATA_ROOT or ./datasets (shapes are generated there)")
    p.add_argument("--train-size", type=int, default=200, help="first N training images of the shapes set")
    p.add_argument("--epochs", type=int, default=100)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="linear_cache_"))
    ckpt = a.checkpoint or (DEMO_CKPT if DEMO_CKPT.is_file() else None)
    if ckpt is None:
        torch.manual_seed(0)
        ckpt = us3l.save_checkpoint(tmp / "random.pth", us3l.models.us_resnet18(num_classes=0), method="random-init",
                                    config={}, provenance={})
    ck = us3l.load_checkpoint(ckpt)
    root = a.data_root or D.data_root()
    size = D.input_size(ck, "shapes")
    tf = D.eval_transform(size, "shapes")
    train = Subset(D.build_dataset("shapes", "train", tf, root), range(a.train_size))
    test = D.build_dataset("shapes", "test", tf, root)
    protocol = Protocol(epochs=a.epochs)
    dev = torch.device("cpu")
    widths = [round(0.25 + i * 0.75 / 8, 5) for i in range(9)]
    print(f"checkpoint {ckpt} ({ck.arch}, {ck.stem} stem); shapes {len(train)} train / {len(test)} test at "
          f"{size} px; {protocol.epochs} epochs; torch threads {torch.get_num_threads()}")
    print(f"{'width':>7} {'cached s':>9} {'backbone s':>11} {'ratio':>6} {'top1 cached':>12} {'top1 backbone':>14}")
    total_c = total_b = 0.0
    gaps = []
    for w in widths:
        model = ck.build_model()
        loader = DataLoader(train, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0))
        us3l.calibrate_bn(model, w, loader, 20)
        net = us3l.export_subnet(model, w).eval()
        test_feats = extract(net, test, batch_size=256, workers=0, device=dev)

        t0 = time.perf_counter()
        key = cache_key(checkpoint_sha256=ck.sha256, width=w, dataset="shapes", split="train", n=len(train))
        save_cached(tmp / "cache", key, extract(net, train, batch_size=256, workers=0, device=dev))
        feats = load_cached(tmp / "cache", key)
        clf = fit_linear(cached_batches(feats, protocol, dev), feats.x.shape[1], 6, protocol, dev)
        top_c = accuracy(clf, test_feats, dev)["top1"]
        t_c = time.perf_counter() - t0

        t0 = time.perf_counter()
        clf = fit_linear(backbone_batches(net, train, protocol, dev, 0), feats.x.shape[1], 6, protocol, dev)
        top_b = accuracy(clf, test_feats, dev)["top1"]
        t_b = time.perf_counter() - t0

        total_c, total_b = total_c + t_c, total_b + t_b
        gaps.append(abs(top_c - top_b))
        print(f"{w:7.4f} {t_c:9.2f} {t_b:11.2f} {t_b / t_c:6.1f} {top_c:12.2f} {top_b:14.2f}", flush=True)
    print(f"total: cached {total_c:.1f} s, through the backbone {total_b:.1f} s -> {total_b / total_c:.1f}x faster; "
          f"largest top-1 gap {max(gaps):.2f} points")


if __name__ == "__main__":
    main()
