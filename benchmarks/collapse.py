"""Table 7 loss designs on real images at CPU scale: do sub-networks collapse, and do they learn?

Data: scikit-learn's handwritten digits (1,797 real 8x8 grey scans of 10 digits, UCI optical
recognition set; ``pip install scikit-learn``), upsampled to 32 px, split 1,200 train / 597 test with a
fixed permutation. Pretraining sees the train images without labels, two views each (random scale,
rotation, translation, contrast and noise; no flips).

For each configuration: train ``--iters`` iterations (ResNet-18, ImageNet stem, fixed sandwich of 3
widths and plain weight decay, so that only the loss switches differ), then report the loss summed
over widths and the projection std per trained width (0 = collapsed; 1/sqrt(D) for spread-out unit
vectors), both averaged over the last 10 iterations, and a linear probe per width (BN calibrated at
that width, logistic regression on frozen pooled features of the train split, accuracy on the test
split; chance 10%). The first row is the same network untrained.

    python benchmarks/collapse.py [--iters 100 --batch 64 --threads 1 --only SUBSTRING]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

import us3l
from us3l.ssl import SSLModel, preset_config

HEADS = {"proj_hidden": 512, "proj_dim": 128, "aux_hidden": 512, "pred_hidden": 512}
_T7 = {"sampler": "sandwich", "num_widths": 3, "regularizer": "weight_decay"}
# label -> (preset, keys); the rows of tests/us3l/test_ablations.py's Table 7 that the paper's observations turn on.
CONFIGS: dict[str, tuple[str, dict]] = {
    "random init, no training": ("us3l", _T7),
    "US+SimSiam: SimSiam, shared predictor, base target": ("us_simsiam", {}),
    "SimSiam, no head, base target": ("us_simsiam", {"aux_head": "off"}),
    "US+SimCLR: NT-Xent, cosine distillation, base target": ("us_simclr", {}),
    "NT-Xent, InfoNCE distillation, base target": ("us_simclr", {"distill_loss": "infonce"}),
    "Eq. 2, momentum target, no head": ("us3l", {**_T7, "aux_head": "off"}),
    "Eq. 2, momentum target, shared head g": ("us3l", {**_T7, "aux_head": "shared"}),
    "Eq. 2, momentum target, new head g (US3L)": ("us3l", _T7),
}
PROBE_WIDTHS = (1.0, 0.75, 0.5, 0.25)


def load_digits_split(size: int = 32, train: int = 1200) -> tuple[torch.Tensor, ...]:
    """Digits as normalised 3 x size x size images and labels, split by a fixed permutation."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise SystemExit("benchmarks/collapse.py needs scikit-learn for its digits: pip install scikit-learn") from e
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[perm[:train]], y[perm[:train]], x[perm[train:]], y[perm[train:]]


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One random view per image: scale 0.75-1.15, rotation +-20 deg, shift +-15%, contrast, noise."""
    n = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=g)

    scale, angle = u(0.75, 1.15), u(-20.0, 20.0) * math.pi / 180
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, u(-0.15, 0.15)], 1), torch.stack([sin, cos, u(-0.15, 0.15)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    out = out * u(0.6, 1.4).view(n, 1, 1, 1) + 0.3 * u(-1.0, 1.0).view(n, 1, 1, 1)
    return out + 0.2 * torch.randn(out.shape, generator=g)


@torch.no_grad()
def features(backbone, x: torch.Tensor) -> torch.Tensor:
    backbone.eval()
    return torch.cat([backbone(b) for b in x.split(256)])


def linear_probe(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor, steps: int = 300) -> float:
    """Multinomial logistic regression (full-batch Adam on standardised features); test accuracy."""
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    torch.manual_seed(0)
    clf = torch.nn.Linear(xtr.shape[1], int(ytr.max()) + 1)
    opt = torch.optim.Adam(clf.parameters(), lr=0.01, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(clf(xtr), ytr).backward()
        opt.step()
    with torch.no_grad():
        return (clf(xte).argmax(1) == yte).float().mean().item()


def train(preset: str, keys: dict, iters: int, args, xtr: torch.Tensor) -> tuple[SSLModel, list]:
    torch.manual_seed(0)
    cfg = preset_config(preset, **{**keys, **HEADS})
    model = SSLModel(cfg, "resnet18", "imagenet")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=args.lr, momentum=0.9,
                          weight_decay=5e-4)
    sampler = cfg.make_sampler(max(iters, 1), (0.25, 1.0), seed=0)
    g = torch.Generator().manual_seed(0)
    last = []
    model.train()
    for it in range(iters):
        idx = torch.randint(len(xtr), (args.batch,), generator=g)
        opt.zero_grad(set_to_none=True)
        out = model.train_step(augment(xtr[idx], g), augment(xtr[idx], g), sampler.widths(it),
                               lambda loss: loss.backward())
        opt.step()
        last = (last + [out])[-10:]
    return model, last


def evaluate(model: SSLModel, data: tuple[torch.Tensor, ...]) -> list[float]:
    xtr, ytr, xte, yte = data
    backbone, accs = model.encoder.backbone, []
    for w in PROBE_WIDTHS:
        us3l.calibrate_bn(backbone, w, xtr.split(100), num_batches=12)
        accs.append(linear_probe(features(backbone, xtr), ytr, features(backbone, xte), yte))
    us3l.set_width(backbone, 1.0)
    return accs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--only", default="", help="run only configurations whose label contains this")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_digits_split()
    print(f"digits (scikit-learn), ResNet-18 32 px, {args.iters} iterations of batch {args.batch}, lr {args.lr}, "
          f"sandwich of 3, weight decay 5e-4; loss and std over the last 10 iterations; probe = test accuracy (%)")
    print("| configuration (base, distillation, head, target) | loss | std@1 | std@U | std@.25 | probe "
          + " / ".join(f"{w:g}" for w in PROBE_WIDTHS) + " | s |")
    print("|---|---|---|---|---|---|---|")
    for label, (preset, keys) in CONFIGS.items():
        if args.only not in label:
            continue
        start = time.perf_counter()
        iters = 0 if label.startswith("random init") else args.iters
        model, last = train(preset, keys, iters, args, data[0])
        accs = evaluate(model, data)
        stats = "- | - | - | -"
        if last:
            n = len(last)
            stats = " | ".join(f"{sum(f(o) for o in last) / n:.3f}" for f in (
                lambda o: o.loss, lambda o: o.proj_std[0], lambda o: o.proj_std[1], lambda o: o.proj_std[-1]))
        print(f"| {label} | {stats} | " + " / ".join(f"{a * 100:.1f}" for a in accs)
              + f" | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
