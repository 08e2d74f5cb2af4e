"""Weighted kNN voting against cases computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from transfer.knn import knn_predict, knn_top1


def test_weighted_vote_by_hand():
    # unit training vectors at angles 0, 10, 80, 90 degrees; classes 0, 0, 1, 1 ... and one far class-1 point
    angles = [0.0, 10.0, 80.0, 90.0]
    train = torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles])
    labels = torch.tensor([0, 0, 1, 1])
    query = torch.tensor([[math.cos(math.radians(50.0)), math.sin(math.radians(50.0))]])
    # k=4, T=0.07: votes class 0 = e^(cos50/T) + e^(cos40/T), class 1 = e^(cos30/T) + e^(cos40/T)
    assert knn_predict(train, labels, query, k=4).item() == 1
    # k=1: the single nearest is 80 (30 degrees away) -> class 1; query at 30 degrees -> nearest 10 -> class 0
    q30 = torch.tensor([[math.cos(math.radians(30.0)), math.sin(math.radians(30.0))]])
    assert knn_predict(train, labels, q30, k=1).item() == 0
    # weighting matters: two class-0 points slightly nearer than three class-1 points, T small -> class 0 wins
    train2 = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.9, 0.5], [0.9, -0.5], [0.8, 0.6]])
    labels2 = torch.tensor([0, 0, 1, 1, 1])
    q = torch.tensor([[1.0, 0.0]])
    assert knn_predict(train2, labels2, q, k=5, temperature=0.01).item() == 0
    # with a large temperature the weights even out and the majority (class 1) wins
    assert knn_predict(train2, labels2, q, k=5, temperature=100.0).item() == 1


def test_scale_invariance_and_top1_keys():
    torch.manual_seed(0)
    centers = torch.randn(3, 8) * 5
    y = torch.arange(3).repeat_interleave(20)
    x = centers[y] + 0.1 * torch.randn(60, 8)
    acc = knn_top1(x[::2], y[::2], x[1::2] * 7.0, y[1::2], ks=(1, 20))
    assert acc == {"knn1_top1": 100.0, "knn20_top1": 100.0}
    with pytest.raises(ValueError, match="k >= 1"):
        knn_predict(x, y, x, k=0)


def test_cli_shares_linears_feature_cache_and_sweeps_plan_knn_and_augment(tmp_path):
    from support.layouts import write_checkpoint, write_cifar10

    from transfer import knn, linear
    from transfer.sweep import UsageError, grid_cells, parse_args, parse_tasks, plan
    from us3l.jobs import read_records

    write_cifar10(tmp_path / "data", n_train=60, n_test=30)
    ckpt = write_checkpoint(tmp_path / "ck.pth")
    common = ["--dataset", "cifar10", "--checkpoint", str(ckpt), "--width", "0.25", "--results", str(tmp_path / "r"),
              "--data-root", str(tmp_path / "data"), "--device", "cpu", "--calib-batches", "1"]
    assert linear.main([*common, "--epochs", "1"]) == 0
    entries = sorted((tmp_path / "cache").rglob("*.pt"))
    assert knn.main(common) == 0
    assert sorted((tmp_path / "cache").rglob("*.pt")) == entries  # read linear's features, extracted nothing
    [rec] = [r for r in read_records(tmp_path / "r") if r["spec"]["task"] == "knn"]
    assert set(rec["metrics"]) == {"knn20_top1", "knn200_top1"} and rec["spec"]["protocol"]["ks"] == [20, 200]
    assert rec["spec"]["protocol"]["temperature"] == 0.07 and rec["cost"]["input_size"] == 32
    cfg = parse_args(["--checkpoint", str(ckpt), "--tasks", "knn:cifar10,linear:cifar10,linear+augment:cifar10",
                      "--widths", "0.25", "--results", str(tmp_path / "r"), "--output", str(tmp_path / "o"),
                      "--device", "cpu", "--linear-args", f"--data-root {tmp_path / 'data'}",
                      "--knn-args", f"--data-root {tmp_path / 'data'} --k 5"])
    jobs = {p.task.name: p.spec for p in plan(cfg, grid_cells(cfg), 0)}
    assert jobs["knn:cifar10"].task == "knn" and jobs["knn:cifar10"].protocol["ks"] == [5]
    assert jobs["linear:cifar10"].protocol["augment"] is False
    assert jobs["linear+augment:cifar10"].protocol["augment"] is True
    with pytest.raises(UsageError, match="linear\\+augment:DATASET"):
        parse_tasks("knn+augment:cifar10")
    assert parse_tasks("knn:imagefolder:/data/birds")[0].dataset == "imagefolder:/data/birds"
