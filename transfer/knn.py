"""k-nearest-neighbour classification of frozen features (the InstDisc / DINO monitor).

Features are L2-normalised; each test sample takes its ``k`` most cosine-similar training samples,
each voting for its class with weight ``exp(similarity / T)``; the class with the largest total wins.

``python -m transfer.knn`` evaluates one width of a checkpoint this way (k = 20 and 200, T = 0.07): the backbone
is exported and BatchNorm-calibrated exactly as for linear evaluation, and the features come from the same cache
(:mod:`transfer.features`), so after a linear job of the same width kNN takes seconds. It writes a record of task
``knn`` (metrics ``knn20_top1``, ``knn200_top1``) through :mod:`us3l.jobs`; sweeps run it as ``knn:DATASET``.

Usage: python -m transfer.knn --dataset cifar10 --checkpoint CKPT --width 0.5 --results DIR [--k 20,200]
[--temperature 0.07] [--image-size N] [--device cpu]   (DATASET: a name, or imagefolder:PATH)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch
import torch.nn.functional as F

import us3l
from us3l.errors import run_cli
from us3l.jobs import JobSpec

from .linear import Evaluation, LinearRun, add_job_arguments, check_job_arguments, evaluate, job_spec

PROG = "python -m transfer.knn"
KS = (20, 200)
TEMPERATURE = 0.07


@torch.no_grad()
def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, k: int,
                temperature: float = TEMPERATURE, num_classes: int | None = None,
                chunk: int = 1024) -> torch.Tensor:
    """Predicted class of every row of ``test_x`` (weighted vote of its ``k`` nearest training rows)."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"kNN needs k >= 1 and temperature > 0, got k={k}, T={temperature}")
    classes = num_classes or int(train_y.max()) + 1
    k = min(k, len(train_y))
    train = F.normalize(train_x.float(), dim=1)
    out = []
    for part in F.normalize(test_x.float(), dim=1).split(chunk):
        sim, idx = (part @ train.t()).topk(k, dim=1)
        votes = torch.zeros(len(part), classes, dtype=sim.dtype, device=sim.device)
        votes.scatter_add_(1, train_y[idx], (sim / temperature).exp())
        out.append(votes.argmax(dim=1))
    return torch.cat(out)


def knn_top1(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
             ks: tuple[int, ...] = KS, temperature: float = TEMPERATURE) -> dict[str, float]:
    """Top-1 accuracy in percent for each ``k``: ``{"knn20_top1": ..., "knn200_top1": ...}``."""
    classes = int(max(train_y.max(), test_y.max())) + 1
    return {f"knn{k}_top1": 100.0 * (knn_predict(train_x, train_y, test_x, k, temperature, classes) == test_y)
            .float().mean().item() for k in ks}


def measure(ev: Evaluation) -> dict[str, float]:
    """kNN top-1 of an evaluation's (cached) train and test features on its device."""
    train, test = ev.features("train"), ev.features("test")
    p = ev.spec.protocol
    dev = ev.device
    return knn_top1(train.x.to(dev), train.y.to(dev), test.x.to(dev), test.y.to(dev), ks=tuple(p["ks"]),
                    temperature=p["temperature"])


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k takes comma-separated integers, got {text!r}") from None
    if not ks or min(ks) < 1 or len(set(ks)) != len(ks):
        raise argparse.ArgumentTypeError(f"--k takes distinct integers >= 1, got {text!r}")
    return ks


def make_job(argv: Sequence[str], ck: us3l.BackboneCheckpoint | None = None) -> tuple[JobSpec, LinearRun]:
    """The spec and run settings of a command line (``ck``: the loaded ``--checkpoint``, to skip reading it).

    Argument errors exit with status 2 (argparse); bad input raises a ``UsageError``."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_job_arguments(p)
    p.add_argument("--k", type=_ks, default=KS, help="neighbours, comma-separated (default 20,200)")
    p.add_argument("--temperature", type=float, default=TEMPERATURE, help="vote temperature T (default 0.07)")
    a = p.parse_args(argv)
    check_job_arguments(p, a)
    if not a.temperature > 0:
        p.error("--temperature must be > 0")
    spec = job_spec(a, ck, "knn", {"ks": list(a.k), "temperature": a.temperature})
    return spec, LinearRun(results=a.results, data_root=a.data_root, cache_dir=a.cache_dir, workers=a.workers,
                           device=a.device, argv=tuple(argv))


def knn_job(spec: JobSpec, run: LinearRun) -> None:
    """Evaluate, record, and print the result line."""
    first = f"knn{spec.protocol['ks'][0]}_top1"
    record = evaluate(spec, run, measure, program="transfer.knn", required=(first,))
    assert record is not None  # kNN runs in one process
    m = record["metrics"]
    print(f"knn {spec.dataset} width {spec.width:g}: " + ", ".join(f"k={k} top-1 {m[f'knn{k}_top1']:.2f}"
                                                                 for k in spec.protocol["ks"])
          + f" ({record['wall_time_s']:.1f} s) -> {record['_path']}")


def run_job(spec: JobSpec, run: LinearRun) -> int:
    """Run a kNN job (what a sweep submits); returns the exit status: 0, 1 when it failed (with a failed record),
    2 for bad input (one line, nothing written)."""
    return run_cli(PROG, lambda: knn_job(spec, run))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad input, with a one-line error; 1 when it failed)."""
    return run_cli(PROG, lambda: knn_job(*make_job(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
