"""Cost of one pretraining iteration: US3L (each dynamic-sampling stage) vs the US-Net sampler vs SimCLR.

Same model, batch and heads; only the sampler (and, for SimCLR, the objective) changes. Prints
seconds per iteration, backbone forwards per iteration (student / momentum teacher), and the
full-run cost ratio US3L / US-Net, where a US3L run spends a quarter of its iterations in each stage.

    python benchmarks/pretrain_cost.py [--arch resnet18 --image-size 32 --batch 64 --iters 4]
"""

from __future__ import annotations

import argparse
import time

import torch

from us3l.samplers import DynamicSampler, build_sampler
from us3l.ssl import SSLModel, preset_config


def measure(preset: str, sampler_iters: list[int], width_sampler, args, **switches) -> tuple[float, float, float]:
    """(seconds per iteration, student forwards per iteration, teacher forwards per iteration)."""
    torch.manual_seed(0)
    cfg = preset_config(preset, proj_hidden=args.proj_hidden, proj_dim=args.proj_dim, aux_hidden=args.proj_hidden,
                        **switches)
    model = SSLModel(cfg, args.arch, args.stem)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    calls = {"student": 0, "teacher": 0}
    model.encoder.backbone.register_forward_hook(lambda *a: calls.__setitem__("student", calls["student"] + 1))
    if model.momentum_encoder is not None:
        model.momentum_encoder.backbone.register_forward_hook(
            lambda *a: calls.__setitem__("teacher", calls["teacher"] + 1))
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g)
    x2 = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g)

    def step(it: int) -> None:
        opt.zero_grad(set_to_none=True)
        model.train_step(x1, x2, width_sampler.widths(it), lambda loss: loss.backward())
        opt.step()

    step(sampler_iters[0])  # warm-up (allocations, oneDNN primitives)
    calls.update(student=0, teacher=0)
    start = time.perf_counter()
    for it in sampler_iters:
        step(it)
    seconds = (time.perf_counter() - start) / len(sampler_iters)
    return seconds, calls["student"] / len(sampler_iters), calls["teacher"] / len(sampler_iters)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--stem", default="imagenet")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=4, help="timed iterations per configuration")
    p.add_argument("--proj-hidden", type=int, default=512)
    p.add_argument("--proj-dim", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{args.arch} ({args.stem} stem), {args.image_size}px, batch {args.batch} x 2 views, "
          f"{args.iters} timed iterations each, {torch.get_num_threads()} threads")
    total = 400  # a notional run; the stage of iteration i is floor(4 i / total)
    dynamic = DynamicSampler(total, 0.25, 1.0)
    rows = []
    for stage in range(4):
        first = stage * total // 4
        its = list(range(first, first + args.iters))
        s, fs, ft = measure("us3l", its, dynamic, args)
        rows.append((f"us3l stage {stage} (min {dynamic.min_width_at(first):g})", s, fs, ft))
    usnet = build_sampler("usnet", total, (0.25, 1.0))
    rows.append(("us3l objective, US-Net sampler (4)", *measure("us3l", list(range(args.iters)), usnet, args,
                                                              sampler="usnet")))
    rows.append(("simclr, width 1.0", *measure("simclr", list(range(args.iters)), build_sampler("single", 1, (1, 1)),
                                              args)))
    print(f"{'configuration':40s} {'s/iter':>8s} {'student fwd/it':>15s} {'teacher fwd/it':>15s}")
    for name, s, fs, ft in rows:
        print(f"{name:40s} {s:8.3f} {fs:15.2f} {ft:15.2f}")
    us3l_run = sum(r[1] for r in rows[:4]) / 4
    us3l_fwd = sum(r[2] for r in rows[:4]) / 4
    usnet_s, usnet_fwd = rows[4][1], rows[4][2]
    simclr_s = rows[5][1]
    print(f"full run, per iteration: us3l {us3l_run:.3f} s ({us3l_fwd:g} student forwards), "
          f"US-Net sampler {usnet_s:.3f} s ({usnet_fwd:g})")
    print(f"ratio us3l / US-Net = {us3l_run / usnet_s:.3f} (time), {us3l_fwd / usnet_fwd:.3f} (student forwards); "
          f"us3l / simclr = {us3l_run / simclr_s:.2f}")


if __name__ == "__main__":
    main()
