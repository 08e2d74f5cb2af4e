"""Table 7 configurations of the objective on ``shapes`` at CPU scale: do sub-networks collapse?

For each configuration: train ``--iters`` iterations (ResNet-18, ImageNet stem, 32 px, fixed
sandwich of 3 widths so that only the loss switches differ), then print the final loss, the
projection std per trained width (0 = collapsed; ~1/sqrt(D) for spread-out unit vectors) over the
last iterations, and a linear-probe accuracy per width (BN calibrated at that width, logistic
regression on frozen pooled features of the shapes train split, accuracy on its test split).

    python benchmarks/collapse.py [--iters 60 --batch 64 --threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import us3l
from us3l.data import ShapesDataset, TwoViews, data_root, eval_transform, simclr_augmentation
from us3l.samplers import build_sampler
from us3l.ssl import SSLModel, preset_config

# name -> switches (Table 7's columns: base loss, distillation loss, auxiliary head, momentum targets)
CONFIGS: dict[str, dict] = {
    "random init, no training (reference)": {},
    "infonce / mse, no head, no momentum": {"momentum_base": False, "momentum_sub": False, "aux_head": "off"},
    "mse(simsiam) / mse, no head, no momentum": {"base_loss": "mse", "momentum_base": False,
                                                 "momentum_sub": False, "aux_head": "off"},
    "infonce / infonce, no head, no momentum": {"distill_loss": "infonce", "momentum_base": False,
                                                "momentum_sub": False, "aux_head": "off"},
    "infonce+momentum / mse, no head, self target": {"momentum_sub": False, "aux_head": "off"},
    "infonce+momentum / mse, no head, momentum target": {"aux_head": "off"},
    "infonce+momentum / mse, shared head, momentum target": {"aux_head": "shared"},
    "infonce+momentum / mse, new head, momentum target (US3L)": {"aux_head": "new"},
}
PROBE_WIDTHS = (1.0, 0.75, 0.5, 0.25)


@torch.no_grad()
def features(backbone, loader) -> tuple[torch.Tensor, torch.Tensor]:
    backbone.eval()
    xs, ys = [], []
    for x, y in loader:
        xs.append(backbone(x))
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def linear_probe(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                 classes: int, steps: int = 300) -> float:
    """Multinomial logistic regression (full-batch Adam on standardised features); test accuracy."""
    (xtr, ytr), (xte, yte) = train, test
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    clf = torch.nn.Linear(xtr.shape[1], classes)
    opt = torch.optim.Adam(clf.parameters(), lr=0.01, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(clf(xtr), ytr).backward()
        opt.step()
    return (clf(xte).argmax(1) == yte).float().mean().item()


def run(name: str, switches: dict, iters: int, args, views, probe_train, probe_test, calib) -> None:
    torch.manual_seed(0)
    cfg = preset_config("us3l", sampler="sandwich3", proj_hidden=512, proj_dim=128, aux_hidden=512,
                        pred_hidden=128, **switches)
    model = SSLModel(cfg, "resnet18", "imagenet")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=args.lr, momentum=0.9,
                          weight_decay=1e-4)
    sampler = build_sampler("sandwich3", max(iters, 1), (0.25, 1.0), seed=0)
    loader = DataLoader(views, batch_size=args.batch, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    start, it, last = time.perf_counter(), 0, []
    model.train()
    while it < iters:
        for x1, x2 in loader:
            opt.zero_grad(set_to_none=True)
            out = model.train_step(x1, x2, sampler.widths(it), lambda loss: loss.backward())
            opt.step()
            last = (last + [out])[-5:]
            it += 1
            if it == iters:
                break
    n = max(len(last), 1)
    loss, std_max, std_mid, std_min = (sum(o.loss for o in last) / n, sum(o.proj_std[0] for o in last) / n,
                                       sum(o.proj_std[1] for o in last) / n, sum(o.proj_std[-1] for o in last) / n)
    backbone = model.encoder.backbone
    accs = []
    for w in PROBE_WIDTHS:
        us3l.calibrate_bn(backbone, w, calib, num_batches=4)
        accs.append(linear_probe(features(backbone, probe_train), features(backbone, probe_test), 6))
    us3l.set_width(backbone, 1.0)
    print(f"{name:58s} {loss:7.3f} {std_max:6.3f} {std_mid:6.3f} {std_min:6.3f}  "
          + " ".join(f"{a * 100:5.1f}" for a in accs) + f"   ({time.perf_counter() - start:.0f} s)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--only", default="", help="run only configurations whose name contains this")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = data_root() / "shapes"
    views = TwoViews(ShapesDataset(root, "train", image_size=32), simclr_augmentation(32, "shapes"))
    train = ShapesDataset(root, "train", transform=eval_transform(32, "shapes"), image_size=32)
    test = ShapesDataset(root, "test", transform=eval_transform(32, "shapes"), image_size=32)
    probe_train = DataLoader(torch.utils.data.Subset(train, range(1200)), batch_size=200)
    probe_test = DataLoader(test, batch_size=200)
    calib = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(1))
    print(f"shapes, ResNet-18 32px, {args.iters} iterations of batch {args.batch}, sandwich of 3 widths; "
          f"std = projection std (last 5 iterations), probe = linear-probe test accuracy (%)")
    print(f"{'configuration (base / distill, head, distill target)':58s} {'loss':>7s} {'std@1':>6s} "
          f"{'std@U':>6s} {'std@.25':>6s}  " + " ".join(f"{w:>5g}" for w in PROBE_WIDTHS))
    for name, switches in CONFIGS.items():
        if args.only in name:
            iters = 0 if "no training" in name else args.iters
            run(name, switches, iters, args, views, probe_train, probe_test, calib)


if __name__ == "__main__":
    main()
